//! Use cases called by the API handlers and the worker consumers.

pub mod admin;
pub mod catalog;
pub mod deliverable;
pub mod fulfilment;
pub mod keys;
pub mod manual;
pub mod orders;
pub mod payments;
pub mod revoke;

/// Input that breaks a rule, with the JSON path of the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Free text a person typed (a name, a reason): at most `max` bytes, no
/// control characters (they would break the timeline and logs).
pub(crate) fn check_text(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(Invalid::new(
            field,
            format!("must be at most {max} characters, without control characters"),
        ));
    }
    Ok(())
}
