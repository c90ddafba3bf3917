//! RCON command templates: `give {username} diamond {quantity}`.
//!
//! A placeholder is `{name}` where `name` is letters and underscores. Unknown
//! names are rejected when the product is saved, so a typo never reaches a game
//! server. Anything else in braces (Minecraft NBT such as `{display:{Name:"x"}}`)
//! is literal text, so there is no escape syntax to learn.
//!
//! Values are checked when rendered: only `A-Z a-z 0-9 _ . @ + -` may be
//! substituted, because a customer-supplied username such as `bob; op bob`
//! would otherwise become a second console command on Source servers.

use std::collections::HashMap;

/// Every placeholder a template may use, with the order field that supplies it.
pub const PLACEHOLDERS: &[(&str, &str)] = &[
    ("username", "game.username"),
    ("uuid", "game.uuid"),
    ("quantity", "items[].quantity"),
    ("order_number", "order_number"),
    ("order_id", "id"),
    ("email", "customer.email"),
    ("discord_user_id", "discord_user_id"),
    ("sku", "items[].product"),
    ("delivery_id", "delivery id"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(&'static str),
}

/// A parsed command template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "unknown placeholder `{{{name}}}`; known placeholders: {}",
        known_list()
    )]
    UnknownPlaceholder { name: String },
    #[error("the template is empty")]
    Empty,
    #[error("the template contains a line break or control character")]
    ControlCharacter,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("`{field}` is required by the command template (placeholder `{{{placeholder}}}`)")]
    Missing {
        placeholder: &'static str,
        field: &'static str,
    },
    #[error(
        "`{field}` may only contain letters, digits and `_ . @ + -` to be used in a game server command"
    )]
    Unsafe {
        placeholder: &'static str,
        field: &'static str,
    },
}

fn known_list() -> String {
    PLACEHOLDERS
        .iter()
        .map(|(n, _)| format!("{{{n}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The longest value order validation lets through for each placeholder.
pub fn max_value_len(placeholder: &str) -> usize {
    match placeholder {
        "username" => 32,
        "uuid" | "order_id" | "delivery_id" => 36,
        // At most 10,000.
        "quantity" => 5,
        "order_number" => 14,
        "email" => 255,
        "discord_user_id" => 20,
        "sku" => 64,
        _ => 255,
    }
}

fn lookup(name: &str) -> Option<(&'static str, &'static str)> {
    PLACEHOLDERS.iter().copied().find(|(n, _)| *n == name)
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        if source.trim().is_empty() {
            return Err(TemplateError::Empty);
        }
        if source.chars().any(char::is_control) {
            return Err(TemplateError::ControlCharacter);
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = source;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphabetic() || c == '_'))
                .unwrap_or(after.len());
            if name_len > 0 && after[name_len..].starts_with('}') {
                let name = &after[..name_len];
                let (known, _) = lookup(name).ok_or_else(|| TemplateError::UnknownPlaceholder {
                    name: name.to_owned(),
                })?;
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Var(known));
                rest = &after[name_len + 1..];
            } else {
                literal.push('{');
                rest = after;
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { parts })
    }

    /// The longest command this template can render: its text plus, for each
    /// placeholder, the longest value accepted for that field (a username is
    /// at most 32 bytes, an e-mail 255, …). A product whose template can
    /// render longer than its game server accepts is refused when saved.
    pub fn max_rendered_len(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(text) => text.len(),
                Part::Var(name) => max_value_len(name),
            })
            .sum()
    }

    /// Placeholders the template uses, in order of first use.
    pub fn placeholders(&self) -> Vec<&'static str> {
        let mut seen = Vec::new();
        for part in &self.parts {
            if let Part::Var(name) = part
                && !seen.contains(name)
            {
                seen.push(*name);
            }
        }
        seen
    }

    /// Substitutes `values`; a missing or unsafe value names the order field to fix.
    pub fn render(&self, values: &HashMap<&'static str, String>) -> Result<String, RenderError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Var(name) => {
                    let field = lookup(name).map_or("", |(_, f)| f);
                    let value =
                        values
                            .get(name)
                            .filter(|v| !v.is_empty())
                            .ok_or(RenderError::Missing {
                                placeholder: name,
                                field,
                            })?;
                    if !value.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '+' | '-')
                    }) {
                        return Err(RenderError::Unsafe {
                            placeholder: name,
                            field,
                        });
                    }
                    out.push_str(value);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_longest_rendering_counts_each_placeholder_at_its_longest() {
        let t = Template::parse("give {username} diamond {quantity}").expect("parses");
        assert_eq!(t.max_rendered_len(), "give  diamond ".len() + 32 + 5);
        let t = Template::parse("mail {email}").expect("parses");
        assert_eq!(t.max_rendered_len(), 5 + 255);
    }

    use super::*;

    fn values() -> HashMap<&'static str, String> {
        HashMap::from([
            ("username", "Notch".to_owned()),
            ("quantity", "3".to_owned()),
        ])
    }

    #[test]
    fn renders_known_placeholders() {
        let t = Template::parse("give {username} diamond {quantity}").expect("valid");
        assert_eq!(
            t.render(&values()).expect("renders"),
            "give Notch diamond 3"
        );
        assert_eq!(t.placeholders(), vec!["username", "quantity"]);
    }

    #[test]
    fn rejects_unknown_placeholders_at_parse_time() {
        let err = Template::parse("give {usrname} diamond").expect_err("typo");
        assert_eq!(
            err,
            TemplateError::UnknownPlaceholder {
                name: "usrname".into()
            }
        );
        assert!(err.to_string().contains("{username}"));
    }

    #[test]
    fn nbt_braces_are_literal() {
        let src = r#"give {username} diamond_sword{display:{Name:'"Sword"'}} 1"#;
        let t = Template::parse(src).expect("valid");
        assert_eq!(
            t.render(&values()).expect("renders"),
            r#"give Notch diamond_sword{display:{Name:'"Sword"'}} 1"#
        );
    }

    #[test]
    fn missing_and_unsafe_values_name_the_field() {
        let t = Template::parse("lp user {username} parent add vip").expect("valid");
        let err = t.render(&HashMap::new()).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "`game.username` is required by the command template (placeholder `{username}`)"
        );
        let mut v = values();
        v.insert("username", "bob; op bob".into());
        assert!(matches!(
            t.render(&v),
            Err(RenderError::Unsafe {
                field: "game.username",
                ..
            })
        ));
    }

    #[test]
    fn rejects_control_characters_and_empty() {
        assert_eq!(
            Template::parse("say hi\nop bob"),
            Err(TemplateError::ControlCharacter)
        );
        assert_eq!(Template::parse("  "), Err(TemplateError::Empty));
    }
}
