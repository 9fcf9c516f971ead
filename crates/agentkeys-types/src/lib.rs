//! Wire types and rules shared by the AgentKeys broker and its clients.
//!
//! Nothing here does I/O: the broker and the `agentkeys` client both depend on this crate so the
//! JSON they exchange, the identity derivation that names every S3 prefix, and the claim rules
//! that AWS STS enforces are written down once.

pub mod api;
pub mod audit;
pub mod aws_tags;
pub mod claims;
pub mod error_kind;
pub mod identity;
pub mod login;
pub mod pairing;

pub use api::ErrorBody;
pub use error_kind::ErrorKind;
pub use identity::{OmniAccount, WalletAddress};

/// Lowercase hex of `bytes`, as every digest and random id here is written.
///
/// Not `hex::encode`, which collects a `char` at a time: three digests are written on every
/// mint (the token's hash, the jti, the audit chain's hash), ≈ 5,000 instructions a mint that
/// way against ≈ 300 through `encode_to_slice`.
pub fn lower_hex(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    // `out` is exactly twice as long as `bytes`, the one way encoding could fail.
    let encoded = hex::encode_to_slice(bytes, &mut out);
    debug_assert!(encoded.is_ok());
    // Hex digits are ASCII: never the empty fallback.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn lower_hex_is_hex_encode() {
        for bytes in [&b""[..], b"\x00\xff", b"agentkeys", &[0xab; 32]] {
            assert_eq!(super::lower_hex(bytes), hex::encode(bytes));
        }
    }
}

#[cfg(test)]
mod properties;
