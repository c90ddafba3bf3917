//! Delivery drivers. Each runs one delivery and classifies the result
//! (`ErrorClass`), so the retry decision never depends on parsing messages.

pub mod discord;
pub mod payment;
pub mod rcon;
pub mod supplier;

use courier_shared::error::ErrorClass;

/// How one run of a driver ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverOutcome {
    Succeeded {
        response: String,
    },
    Failed {
        class: ErrorClass,
        error: String,
        response: Option<String>,
        /// The action may have happened despite the error (RCON: the command was written).
        maybe_sent: bool,
    },
}

impl DriverOutcome {
    pub fn permanent(error: impl Into<String>) -> Self {
        DriverOutcome::Failed {
            class: ErrorClass::Permanent,
            error: error.into(),
            response: None,
            maybe_sent: false,
        }
    }
}
