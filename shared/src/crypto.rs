//! CD keys at rest: AES-256-GCM with a key from configuration. Each ciphertext
//! is bound to its order item (the item id is the associated data), so a key
//! copied onto another item does not decrypt.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the encryption key must be the base64 of exactly 32 bytes")]
    BadKey,
    #[error("the stored key could not be decrypted (wrong keys.encryption_key, or altered data)")]
    Decrypt,
}

#[derive(Clone)]
pub struct KeyCipher(Aes256Gcm);

impl std::fmt::Debug for KeyCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyCipher([redacted])")
    }
}

impl KeyCipher {
    pub fn from_base64(key: &str) -> Result<Self, CryptoError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| CryptoError::BadKey)?;
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        Aes256Gcm::new_from_slice(&bytes)
            .map(KeyCipher)
            .map_err(|_| CryptoError::BadKey)
    }

    /// `nonce (12 bytes) || ciphertext+tag`.
    pub fn encrypt(&self, plaintext: &str, bound_to: &[u8]) -> Vec<u8> {
        let nonce_bytes: [u8; 12] = rand::random();
        let nonce = Nonce::from(nonce_bytes);
        // Encryption with a valid key and in-memory buffers does not fail.
        let sealed = self
            .0
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: bound_to,
                },
            )
            .unwrap_or_default();
        let mut out = nonce_bytes.to_vec();
        out.extend(sealed);
        out
    }

    pub fn decrypt(&self, blob: &[u8], bound_to: &[u8]) -> Result<String, CryptoError> {
        if blob.len() < 12 {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, sealed) = blob.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| CryptoError::Decrypt)?;
        let plain = self
            .0
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: bound_to,
                },
            )
            .map_err(|_| CryptoError::Decrypt)?;
        String::from_utf8(plain).map_err(|_| CryptoError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn round_trips_and_is_bound_to_its_item() {
        let c = KeyCipher::from_base64(KEY).expect("key");
        let blob = c.encrypt("ABCDE-12345", b"item-1");
        assert!(
            !blob.windows(11).any(|w| w == b"ABCDE-12345"),
            "not stored in clear"
        );
        assert_eq!(
            c.decrypt(&blob, b"item-1").expect("decrypts"),
            "ABCDE-12345"
        );
        assert!(c.decrypt(&blob, b"item-2").is_err());
    }

    #[test]
    fn rejects_short_keys() {
        assert!(KeyCipher::from_base64("c2hvcnQ=").is_err());
    }
}
