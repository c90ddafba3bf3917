//! The CA bundle used for TLS to RabbitMQ and Redis (`tls.ca_file`).
//!
//! The transports are rustls with the ring provider; without a bundle they
//! trust Mozilla's roots (webpki-roots), which is what the managed services
//! of the large clouds present.

use std::sync::Arc;

use crate::config::{ConfigError, TlsSettings};

/// The PEM text of `tls.ca_file`, read once at start-up (or none).
#[derive(Clone, Debug, Default)]
pub struct CaBundle(Option<Arc<str>>);

impl CaBundle {
    /// Reads and checks `tls.ca_file`; an unreadable file or one without a
    /// certificate is a configuration error naming the key.
    pub fn load(settings: &TlsSettings) -> Result<Self, ConfigError> {
        let Some(path) = &settings.ca_file else {
            return Ok(CaBundle(None));
        };
        let invalid = |reason: String| ConfigError::Invalid {
            key: "tls.ca_file",
            reason,
        };
        let pem = std::fs::read_to_string(path).map_err(|e| invalid(format!("{path}: {e}")))?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(invalid(format!("{path} holds no PEM certificate")));
        }
        Ok(CaBundle(Some(pem.into())))
    }

    pub fn pem(&self) -> Option<&str> {
        self.0.as_deref()
    }
}
