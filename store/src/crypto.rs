//! Tokens at rest: AES-256-GCM with a random 96-bit nonce per value. Stored as
//! `nonce || ciphertext+tag`, with the id of the key beside it, so that several keys can be
//! accepted during a rotation (the first one encrypts).
//!
//! Every ciphertext is bound to its place ([`Binding`]: connection id, user id, provider and
//! column) as associated data: a ciphertext copied into another row or column (by a support tool,
//! an SQL injection elsewhere, a restored backup) no longer decrypts, so a backend acting for one
//! user can never be handed another user's token. The row's `token_format` says how a value was
//! sealed: [`FORMAT_BOUND`] for bound values, [`FORMAT_LEGACY`] for values sealed before binding
//! existed, which are never served and which `worker rotate-token-key` re-seals bound.

use aes_gcm::{
    Aes256Gcm, Nonce,
    aead::{Aead, Generate, KeyInit, Payload},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use entity::Ciphertext;
use settings::secret::Redacted;
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 12;

/// `token_format` of values sealed without associated data (before binding existed).
pub const FORMAT_LEGACY: i16 = 1;
/// `token_format` of values bound to their row and column.
pub const FORMAT_BOUND: i16 = 2;

/// Which token column a value is sealed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenColumn {
    AccessToken,
    RefreshToken,
}

impl TokenColumn {
    fn as_str(self) -> &'static str {
        match self {
            Self::AccessToken => "access_token",
            Self::RefreshToken => "refresh_token",
        }
    }
}

/// Where a sealed value lives: what its associated data binds it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub connection_id: uuid::Uuid,
    pub user_id: uuid::Uuid,
    pub provider: crate::Provider,
    pub column: TokenColumn,
}

impl Binding {
    /// The same place, another column.
    pub fn column(self, column: TokenColumn) -> Self {
        Self { column, ..self }
    }

    /// The associated data: the format version, then each field, unambiguously separated.
    fn associated_data(&self) -> Vec<u8> {
        format!(
            "clerk-sync token v{FORMAT_BOUND}\0{}\0{}\0{}\0{}",
            self.connection_id,
            self.user_id,
            self.provider.as_str(),
            self.column.as_str()
        )
        .into_bytes()
    }
}

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
    #[error(
        "stored token does not decrypt for its row: it was altered, or moved from another row or column (or sealed under another key with the same id)"
    )]
    Corrupt,
    #[error(
        "stored token is in the legacy format (not bound to its row) and is not served; run `worker rotate-token-key` to re-seal stored tokens"
    )]
    Legacy,
    #[error("stored token has unknown format {0}")]
    UnknownFormat(i16),
    #[error("encryption failed")]
    Encrypt,
}

#[derive(Clone, Debug)]
struct Key {
    id: String,
    cipher: Redacted<Aes256Gcm>,
}

/// The configured keys. `Debug` shows only their ids.
#[derive(Clone, Debug)]
pub struct TokenCipher {
    keys: Vec<Key>,
}

/// An encrypted value and the id of the key that sealed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub blob: Ciphertext,
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
    /// `TOKEN_ENCRYPTION_KEY` through `lookup` (unset or blank: none).
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Option<Self>, KeyError> {
        lookup("TOKEN_ENCRYPTION_KEY")
            .filter(|k| !k.trim().is_empty())
            .map(|keys| Self::from_setting(&keys))
            .transpose()
    }

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
                    cipher: Redacted::new(cipher),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys })
    }

    /// The id of the key that encrypts.
    pub fn primary_key_id(&self) -> &str {
        self.keys.first().map(|k| k.id.as_str()).unwrap_or_default()
    }

    /// Encrypts under the first key with a fresh random nonce, bound to `binding`
    /// ([`FORMAT_BOUND`]).
    pub fn seal(&self, plaintext: &str, binding: &Binding) -> Result<Sealed, CryptoError> {
        let key = self.keys.first().ok_or(CryptoError::Encrypt)?;
        let nonce = Nonce::generate();
        let aad = binding.associated_data();
        let ciphertext = key
            .cipher
            .expose()
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Encrypt)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        blob.extend_from_slice(nonce.as_slice());
        blob.extend_from_slice(&ciphertext);
        Ok(Sealed {
            key_id: key.id.clone(),
            blob: Ciphertext(blob),
        })
    }

    /// Decrypts a value stored in `format` under any configured key. Only bound values are
    /// opened: a legacy value is [`CryptoError::Legacy`] (see [`Self::open_legacy`]).
    pub fn open(
        &self,
        key_id: &str,
        blob: &[u8],
        format: i16,
        binding: &Binding,
    ) -> Result<String, CryptoError> {
        match format {
            FORMAT_BOUND => self.decrypt_with(key_id, blob, &binding.associated_data()),
            FORMAT_LEGACY => Err(CryptoError::Legacy),
            other => Err(CryptoError::UnknownFormat(other)),
        }
    }

    /// Decrypts a value sealed before binding existed. For re-sealing them only
    /// (`worker rotate-token-key`), never to serve a token.
    pub fn open_legacy(&self, key_id: &str, blob: &[u8]) -> Result<String, CryptoError> {
        self.decrypt_with(key_id, blob, &[])
    }

    fn decrypt_with(&self, key_id: &str, blob: &[u8], aad: &[u8]) -> Result<String, CryptoError> {
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
            .expose()
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Corrupt)?;
        String::from_utf8(plaintext).map_err(|_| CryptoError::Corrupt)
    }

    /// Encrypts without binding, as values were sealed before [`FORMAT_BOUND`]: only for tests
    /// of the migration of such values.
    #[doc(hidden)]
    pub fn seal_legacy_for_tests(&self, plaintext: &str) -> Result<Sealed, CryptoError> {
        let key = self.keys.first().ok_or(CryptoError::Encrypt)?;
        let nonce = Nonce::generate();
        let ciphertext = key
            .cipher
            .expose()
            .encrypt(&nonce, plaintext.as_bytes())
            .map_err(|_| CryptoError::Encrypt)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        Ok(Sealed {
            key_id: key.id.clone(),
            blob: Ciphertext(blob),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Provider;

    const A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const B: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    fn place() -> Binding {
        Binding {
            connection_id: uuid::Uuid::from_u128(1),
            user_id: uuid::Uuid::from_u128(2),
            provider: Provider::Google,
            column: TokenColumn::AccessToken,
        }
    }

    #[test]
    fn a_token_round_trips_and_is_not_stored_in_clear() {
        let cipher = TokenCipher::from_setting(A).expect("key");
        let sealed = cipher.seal("ya29.secret-token", &place()).expect("seal");
        assert!(!sealed.blob.0.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            cipher
                .open(&sealed.key_id, &sealed.blob.0, FORMAT_BOUND, &place())
                .expect("open"),
            "ya29.secret-token"
        );
        let again = cipher.seal("ya29.secret-token", &place()).expect("seal");
        assert_ne!(sealed.blob.0, again.blob.0, "a fresh nonce per value");
    }

    #[test]
    fn a_value_moved_to_another_row_user_provider_or_column_does_not_open() {
        let cipher = TokenCipher::from_setting(A).expect("key");
        let sealed = cipher.seal("ya29.bob", &place()).expect("seal");
        let elsewhere = [
            Binding {
                connection_id: uuid::Uuid::from_u128(9),
                ..place()
            },
            Binding {
                user_id: uuid::Uuid::from_u128(9),
                ..place()
            },
            Binding {
                provider: Provider::Microsoft,
                ..place()
            },
            place().column(TokenColumn::RefreshToken),
        ];
        for binding in elsewhere {
            assert!(matches!(
                cipher.open(&sealed.key_id, &sealed.blob.0, FORMAT_BOUND, &binding),
                Err(CryptoError::Corrupt)
            ));
        }
    }

    #[test]
    fn legacy_values_are_never_served_but_can_be_resealed() {
        let cipher = TokenCipher::from_setting(A).expect("key");
        let legacy = cipher.seal_legacy_for_tests("ya29.old").expect("seal");
        assert!(matches!(
            cipher.open(&legacy.key_id, &legacy.blob.0, FORMAT_LEGACY, &place()),
            Err(CryptoError::Legacy)
        ));
        assert!(matches!(
            cipher.open(&legacy.key_id, &legacy.blob.0, FORMAT_BOUND, &place()),
            Err(CryptoError::Corrupt)
        ));
        assert_eq!(
            cipher
                .open_legacy(&legacy.key_id, &legacy.blob.0)
                .expect("legacy"),
            "ya29.old"
        );
        assert!(matches!(
            cipher.open(&legacy.key_id, &legacy.blob.0, 7, &place()),
            Err(CryptoError::UnknownFormat(7))
        ));
    }

    #[test]
    fn after_rotation_old_values_still_decrypt_and_new_ones_use_the_new_key() {
        let old = TokenCipher::from_setting(A).expect("key");
        let sealed = old.seal("tok", &place()).expect("seal");
        let rotated = TokenCipher::from_setting(&format!("{B} {A}")).expect("keys");
        assert_eq!(
            rotated
                .open(&sealed.key_id, &sealed.blob.0, FORMAT_BOUND, &place())
                .expect("old key"),
            "tok"
        );
        assert_ne!(
            rotated.seal("tok", &place()).expect("seal").key_id,
            sealed.key_id
        );
        let only_new = TokenCipher::from_setting(B).expect("key");
        assert!(matches!(
            only_new.open(&sealed.key_id, &sealed.blob.0, FORMAT_BOUND, &place()),
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
        let mut sealed = cipher.seal("tok", &place()).expect("seal");
        let last = sealed.blob.0.len() - 1;
        sealed.blob.0[last] ^= 1;
        assert!(matches!(
            cipher.open(&sealed.key_id, &sealed.blob.0, FORMAT_BOUND, &place()),
            Err(CryptoError::Corrupt)
        ));
    }
}
