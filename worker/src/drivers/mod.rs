//! Delivery drivers. Each runs one delivery and classifies the result
//! (`ErrorClass`), so the retry decision never depends on parsing messages.

pub mod alert;
pub mod discord;
pub mod download;
pub mod email;
pub mod payment;
pub mod rcon;
pub mod supplier;
pub mod webhook;

pub use courier_shared::domain::fulfilment::DriverOutcome;

/// A failure worth another attempt, with nothing sent.
pub(crate) fn transient(error: String) -> DriverOutcome {
    DriverOutcome::Failed {
        class: courier_shared::error::ErrorClass::Transient,
        error,
        response: None,
        maybe_sent: false,
    }
}

/// An error and its causes, as one line.
pub(crate) fn full_error(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
