//! Tokens at rest: AES-256-GCM with a random 96-bit nonce per value. Stored as
//! `nonce || ciphertext+tag`, with the id of the key beside it, so that several keys can be
//! accepted during a rotation (the first one encrypts).

use aes_gcm::{
    Aes256Gcm, Nonce,
    aead::{Aead, Generate, KeyInit},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 12;

/// `TOKEN_ENCRYPTION_KEY` cannot be used. Never carries the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("TOKEN_ENCRYPTION_KEY is not set: generate one with `openssl rand -base64 32`")]
    Missing,
    #[error(
        "TOKEN_ENCRYPTION_KEY: key {position} of {count} is not base64 of exactly 32 bytes; generate one with `openssl rand -base64 32`"
    )]
    Invalid { position: usize, count: usize },
}

/// Encrypting or decrypting failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "token encrypted under key {0:?}, which is not in TOKEN_ENCRYPTION_KEY; add the old key back (after the new first one) and re-encrypt"
    )]
    UnknownKey(String),
    #[error("stored token is corrupt or was encrypted under another key with the same id")]
    Corrupt,
    #[error("encryption failed")]
    Encrypt,
}

struct Key {
    id: String,
    cipher: Aes256Gcm,
}

/// The configured keys. `Debug` shows only their ids.
pub struct TokenCipher {
    keys: Vec<Key>,
}

impl std::fmt::Debug for TokenCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("TokenCipher")
            .field("key_ids", &ids)
            .finish()
    }
}

/// An encrypted value and the id of the key that sealed it.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub blob: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sealed {{ key_id: {:?}, {} bytes }}",
            self.key_id,
            self.blob.len()
        )
    }
}

/// The id of a key: the first 16 hex digits of its SHA-256 (reveals nothing usable).
fn key_id(key: &[u8]) -> String {
    Sha256::digest(key)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl TokenCipher {
    /// Parses `TOKEN_ENCRYPTION_KEY`: one or more base64 keys of 32 bytes, space separated.
    pub fn from_setting(value: &str) -> Result<Self, KeyError> {
        let parts: Vec<&str> = value.split_whitespace().collect();
        if parts.is_empty() {
            return Err(KeyError::Missing);
        }
        let count = parts.len();
        let keys = parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let invalid = KeyError::Invalid {
                    position: i + 1,
                    count,
                };
                let bytes = STANDARD.decode(part).map_err(|_| KeyError::Invalid {
                    position: i + 1,
                    count,
                })?;
                if bytes.len() != 32 {
                    return Err(invalid);
                }
                let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| KeyError::Invalid {
                    position: i + 1,
                    count,
                })?;
                Ok(Key {
                    id: key_id(&bytes),
                    cipher,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys })
    }

    /// The id of the key that encrypts.
    pub fn primary_key_id(&self) -> &str {
        self.keys.first().map(|k| k.id.as_str()).unwrap_or_default()
    }

    /// Encrypts under the first key with a fresh random nonce.
    pub fn encrypt(&self, plaintext: &str) -> Result<Sealed, CryptoError> {
        let key = self.keys.first().ok_or(CryptoError::Encrypt)?;
        let nonce = Nonce::generate();
        let ciphertext = key
            .cipher
            .encrypt(&nonce, plaintext.as_bytes())
            .map_err(|_| CryptoError::Encrypt)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        blob.extend_from_slice(nonce.as_slice());
        blob.extend_from_slice(&ciphertext);
        Ok(Sealed {
            key_id: key.id.clone(),
            blob,
        })
    }

    /// Decrypts a value sealed under any configured key.
    pub fn decrypt(&self, key_id: &str, blob: &[u8]) -> Result<String, CryptoError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        if blob.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Corrupt);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| CryptoError::Corrupt)?;
        let plaintext = key
            .cipher
            .decrypt(&nonce, ciphertext)
            .map_err(|_| CryptoError::Corrupt)?;
        String::from_utf8(plaintext).map_err(|_| CryptoError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const B: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    #[test]
    fn a_token_round_trips_and_is_not_stored_in_clear() {
        let cipher = TokenCipher::from_setting(A).expect("key");
        let sealed = cipher.encrypt("ya29.secret-token").expect("encrypt");
        assert!(!sealed.blob.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            cipher
                .decrypt(&sealed.key_id, &sealed.blob)
                .expect("decrypt"),
            "ya29.secret-token"
        );
        let again = cipher.encrypt("ya29.secret-token").expect("encrypt");
        assert_ne!(sealed.blob, again.blob, "a fresh nonce per value");
    }

    #[test]
    fn after_rotation_old_values_still_decrypt_and_new_ones_use_the_new_key() {
        let old = TokenCipher::from_setting(A).expect("key");
        let sealed = old.encrypt("tok").expect("encrypt");
        let rotated = TokenCipher::from_setting(&format!("{B} {A}")).expect("keys");
        assert_eq!(
            rotated
                .decrypt(&sealed.key_id, &sealed.blob)
                .expect("old key"),
            "tok"
        );
        assert_ne!(
            rotated.encrypt("tok").expect("encrypt").key_id,
            sealed.key_id
        );
        let only_new = TokenCipher::from_setting(B).expect("key");
        assert!(matches!(
            only_new.decrypt(&sealed.key_id, &sealed.blob),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let err = TokenCipher::from_setting("c2hvcnQ=").expect_err("too short");
        assert!(err.to_string().contains("TOKEN_ENCRYPTION_KEY"));
        assert!(!err.to_string().contains("c2hvcnQ"));
        assert!(!format!("{:?}", TokenCipher::from_setting(A).expect("key")).contains(A));
    }

    #[test]
    fn tampered_ciphertext_is_rejected() {
        let cipher = TokenCipher::from_setting(A).expect("key");
        let mut sealed = cipher.encrypt("tok").expect("encrypt");
        let last = sealed.blob.len() - 1;
        sealed.blob[last] ^= 1;
        assert!(matches!(
            cipher.decrypt(&sealed.key_id, &sealed.blob),
            Err(CryptoError::Corrupt)
        ));
    }
}
