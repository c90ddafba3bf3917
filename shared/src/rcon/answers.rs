//! What game servers answer, as found in the wild: the texts that mean a
//! command was refused, and the player listings `require_online` reads.

use super::Dialect;

/// Answers that mean the server refused the command (running it again will
/// not help), by the start of the answer, case-insensitive. A game server's
/// `error_patterns` extend these.
pub fn refusals(dialect: Dialect) -> &'static [&'static str] {
    match dialect {
        Dialect::Minecraft => &[
            // Vanilla 1.13+.
            "Unknown or incomplete command",
            "Incorrect argument for command",
            "Unknown item",
            // Bukkit/Spigot and older vanilla.
            "Unknown command",
            // Third-party servers.
            "Command not found",
            "Invalid Syntax",
        ],
        Dialect::Source => &["Unknown command"],
    }
}

/// Whether `answer` says the command was refused.
pub fn is_refusal(dialect: Dialect, extra: &[String], answer: &str) -> bool {
    let a = answer.trim_start().to_lowercase();
    refusals(dialect)
        .iter()
        .map(|p| p.to_lowercase())
        .chain(extra.iter().map(|p| p.to_lowercase()))
        .any(|p| !p.is_empty() && a.starts_with(&p))
}

/// Answers that mean the command's target player is not there (offline):
/// the delivery waits and is tried again, as for `require_online`.
pub fn player_missing(dialect: Dialect) -> &'static [&'static str] {
    match dialect {
        Dialect::Minecraft => &[
            // Vanilla 1.13+.
            "No player was found",
            // Bukkit/Spigot and plugins.
            "That player cannot be found",
            "Player not found",
            "Can't find player",
        ],
        Dialect::Source => &[],
    }
}

/// Whether `answer` says the player the command is for is not online.
pub fn is_player_missing(dialect: Dialect, answer: &str) -> bool {
    let a = answer.trim_start().to_lowercase();
    player_missing(dialect)
        .iter()
        .any(|p| a.starts_with(&p.to_lowercase()))
}

/// The command that lists players when the game server names none.
pub fn default_online_command(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Minecraft => "list",
        Dialect::Source => "status",
    }
}

/// The players a listing names, or `None` when it is not a listing Courier
/// knows (then whether someone is online cannot be told).
///
/// Minecraft `list`: "There are 2 of a max of 20 players online: Alex, Steve",
/// "There are 0 of a max of 20 players online:", "There are no players
/// online.", Bukkit's "There are 2/20 players online:" with the names after
/// the colon (on the same or the next line; a `[rank]` prefix is dropped).
/// Source `status` (a line per player, the name in double quotes, under a
/// `# userid name …` header) and `users` ("<slot:userid:\"name\">" lines
/// and "N users").
pub fn players_online(dialect: Dialect, listing: &str) -> Option<Vec<String>> {
    let text = listing.trim();
    let lower = text.to_lowercase();
    match dialect {
        Dialect::Minecraft => {
            if lower.starts_with("there are no players online") || lower == "no players online." {
                return Some(Vec::new());
            }
            if !(lower.contains("players online") || lower.starts_with("online (")) {
                return None;
            }
            let (_, names) = text.split_once(':')?;
            Some(
                names
                    .split([',', '\n'])
                    .filter_map(|n| n.split_whitespace().last())
                    .map(|n| n.trim_start_matches(['[', ']']).to_owned())
                    .filter(|n| !n.is_empty())
                    .collect(),
            )
        }
        Dialect::Source => {
            let listing_like = lower.contains("# userid")
                || lower.contains("hostname:")
                || lower.lines().any(|l| l.trim().ends_with(" users"));
            if !listing_like {
                return None;
            }
            // `status`: player lines start with `#` (the `# userid name …`
            // header does not name one); `users`: `slot:userid:"name"` lines.
            // Other lines (`hostname: "…"`) may quote text too.
            let player_line = |l: &str| {
                let l = l.trim_start();
                let users_line = l.matches(':').count() >= 2
                    && l.split(':')
                        .take(2)
                        .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
                (l.starts_with('#') && !l.to_lowercase().starts_with("# userid")) || users_line
            };
            Some(
                text.lines()
                    .filter(|l| player_line(l))
                    .filter_map(|l| {
                        let start = l.find('"')?;
                        let rest = &l[start + 1..];
                        let end = rest.find('"')?;
                        Some(rest[..end].to_owned())
                    })
                    .filter(|n| !n.is_empty())
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_seen_in_the_wild_is_recognised() {
        for a in [
            "Unknown or incomplete command, see below for error",
            "Command not found",
            "Invalid Syntax. Usage: /give <player> <item> [amount]",
            "Unknown command. Type \"/help\" for help.",
        ] {
            assert!(is_refusal(Dialect::Minecraft, &[], a), "{a}");
        }
        assert!(is_refusal(
            Dialect::Source,
            &[],
            "Unknown command \"sm_foo\""
        ));
        assert!(!is_refusal(
            Dialect::Minecraft,
            &[],
            "Gave 3 [Diamond] to Alex"
        ));
        assert!(!is_refusal(Dialect::Minecraft, &[], ""));
        assert!(is_refusal(
            Dialect::Minecraft,
            &[],
            "Unknown item 'minecraft:diamnd'"
        ));
        assert!(is_player_missing(Dialect::Minecraft, "No player was found"));
        assert!(!is_player_missing(
            Dialect::Minecraft,
            "Gave 1 [Apple] to Alex"
        ));
        assert!(is_refusal(
            Dialect::Minecraft,
            &["That player is not online".into()],
            "that player is not online!"
        ));
    }

    #[test]
    fn reads_each_listing_format() {
        let mc = |s| players_online(Dialect::Minecraft, s);
        assert_eq!(
            mc("There are 2 of a max of 20 players online: Alex, Steve"),
            Some(vec!["Alex".into(), "Steve".into()])
        );
        assert_eq!(
            mc("There are 0 of a max of 20 players online:"),
            Some(vec![])
        );
        assert_eq!(mc("There are no players online."), Some(vec![]));
        assert_eq!(
            mc("There are 1/20 players online:\n[Admin] Notch"),
            Some(vec!["Notch".into()])
        );
        assert_eq!(mc(""), None, "a silent server cannot tell");
        assert_eq!(mc("Players: none"), None);
        let src = "hostname: \"Alex's server\"\n# userid name uniqueid\n#  2 \"Alex\" STEAM_1:0:1 00:10 50 0 active";
        assert_eq!(
            players_online(Dialect::Source, src),
            Some(vec!["Alex".into()])
        );
        assert_eq!(
            players_online(
                Dialect::Source,
                "<slot:userid:\"name\">\n0:2:\"Sam\"\n1 users"
            ),
            Some(vec!["Sam".into()])
        );
        assert_eq!(players_online(Dialect::Source, "Unknown command"), None);
    }
}
