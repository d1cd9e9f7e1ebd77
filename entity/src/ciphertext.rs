//! The stored form of an encrypted calendar token.

use sea_orm::DeriveValueType;

/// Nonce + AES-256-GCM ciphertext of a token, as stored in a `bytea` column. `Debug` shows only
/// its length, so rows and sealed values can be logged whole.
#[derive(Clone, PartialEq, Eq, DeriveValueType)]
pub struct Ciphertext(pub Vec<u8>);

impl std::fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ciphertext({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for Ciphertext {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl AsRef<[u8]> for Ciphertext {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_length_only() {
        let sealed = Ciphertext(b"nonce+ciphertext".to_vec());
        assert_eq!(format!("{sealed:?}"), "Ciphertext(16 bytes)");
    }
}
