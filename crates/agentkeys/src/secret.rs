//! Bearer secrets (session tokens, AWS secret keys and session tokens, the credentials
//! endpoint's token, a pending sign-in's request id and PKCE verifier) are
//! `secrecy::SecretString`: a redacted `Debug`, no `Display`, zeroed on drop, and read only
//! through `expose_secret()` where the secret is sent or written on purpose.
//!
//! `secrecy` serializes no string secret by design; the few documents that must hold one (the
//! session file, the pending sign-in, the `credential_process` document and its cache) name
//! [`serde_str`] on the field, so every place a secret is written is visible in a
//! `#[serde(with = …)]`.

pub use secrecy::{ExposeSecret, SecretString};

/// `#[serde(with = "crate::secret::serde_str")]`: the secret as a plain JSON string, so the
/// files written before this type existed read back unchanged.
pub mod serde_str {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{ExposeSecret, SecretString};

    pub fn serialize<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(secret.expose_secret())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        String::deserialize(d).map(SecretString::from)
    }
}

/// Whether two secrets are the same value, for the `PartialEq` of the types that hold one
/// (`SecretString` has none, so that comparing secrets is a visible choice).
pub fn same(a: &SecretString, b: &SecretString) -> bool {
    a.expose_secret() == b.expose_secret()
}
