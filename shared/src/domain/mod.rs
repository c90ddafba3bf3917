//! Pure domain types: statuses and their state machines, ids, templates and
//! fulfilment actions. Nothing here touches the database or the network.

pub mod action;
pub mod delivery;
pub mod download;
pub mod fulfilment;
pub mod ids;
pub mod money;
pub mod order;
pub mod payment;
pub mod retry;
pub mod rollup;
pub mod template;
pub mod webhook;

/// A status change the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal {machine} transition from `{from}` to `{to}`")]
pub struct IllegalTransition {
    pub machine: &'static str,
    pub from: &'static str,
    pub to: &'static str,
}

/// At most `max` bytes of `s`, cut at a character boundary (`String::truncate`
/// panics inside a multi-byte character; a gateway's answer may hold any).
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A code point that is not text: C0 controls, DEL, C1 controls and the
/// noncharacters U+FFFE/U+FFFF. `lines` lets tab, LF and CR through (free
/// text may hold line breaks; a URI or a name never does).
pub fn is_non_text(c: char, lines: bool) -> bool {
    if lines && matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    c.is_control() || matches!(c, '\u{FFFE}' | '\u{FFFF}')
}

/// `s` with every non-text code point (NUL, which Postgres cannot store in
/// `text`/`jsonb`, among them) but tab and line breaks replaced by U+FFFD.
/// For text from the outside world that must be kept as it came — a game
/// server's or an API's answer, a verified webhook — where refusing is not
/// an option.
pub fn storable(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| is_non_text(c, true);
    if s.chars().any(bad) {
        std::borrow::Cow::Owned(
            s.chars()
                .map(|c| if bad(c) { '\u{FFFD}' } else { c })
                .collect(),
        )
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// A stored status string that is not one of the enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{value}`")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
}

/// Declares a status enum stored as snake_case text, with `as_str` and `FromStr`.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident, $label:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::domain::UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::domain::UnknownValue { kind: $label, value: s.to_owned() }),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::domain::UnknownValue;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use text_enum;

#[cfg(test)]
mod tests {
    #[test]
    fn storable_text_has_no_nul() {
        assert_eq!(super::storable("ok\0x\u{1}\n"), "ok\u{FFFD}x\u{FFFD}\n");
        assert!(matches!(
            super::storable("plain"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn clip_cuts_at_a_character_boundary() {
        assert_eq!(super::clip("héllo", 2), "h");
        assert_eq!(super::clip("héllo", 3), "hé");
        assert_eq!(super::clip("abc", 10), "abc");
        assert_eq!(super::clip("€", 2), "");
    }
}
