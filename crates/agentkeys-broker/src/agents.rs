//! Agent pairing: device proofs and pairing codes. The HTTP handlers in
//! `http/routes/agents.rs` call these and the store.

use agentkeys_types::WalletAddress;
use agentkeys_types::pairing::{
    CODE_ALPHABET, CODE_LEN, PROOF_MAX_SKEW_SECONDS, ProofAction, proof_message,
};
use alloy_primitives::Signature;
use rand::Rng;

/// Lifetime of a pairing request.
pub const PAIRING_TTL_SECONDS: i64 = 600;
/// How often a device should poll.
pub const POLL_INTERVAL_SECONDS: u64 = 2;
/// Approval attempts a master may make per window, so codes cannot be guessed.
pub const APPROVE_ATTEMPTS: u64 = 20;
pub const APPROVE_WINDOW_SECONDS: i64 = 600;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("signature must be 0x followed by 130 hex digits (65 bytes)")]
    Malformed,
    #[error(
        "the proof's timestamp is more than {PROOF_MAX_SKEW_SECONDS} s from the broker's clock; check the device clock"
    )]
    Skewed,
    #[error("the signature is not from the device key")]
    WrongSigner,
}

/// Checks that `device` signed the proof message for `action` at `timestamp_ms`.
pub fn verify_proof(
    issuer: &str,
    action: ProofAction,
    device: &WalletAddress,
    pairing_id: Option<&str>,
    timestamp_ms: i64,
    signature: &str,
    now: i64,
) -> Result<(), ProofError> {
    let bytes = crate::wallet::parse_signature(signature).ok_or(ProofError::Malformed)?;
    if (timestamp_ms / 1000 - now).abs() > PROOF_MAX_SKEW_SECONDS {
        return Err(ProofError::Skewed);
    }
    let sig = Signature::try_from(&bytes[..]).map_err(|_| ProofError::Malformed)?;
    let message = proof_message(issuer, action, device.as_str(), pairing_id, timestamp_ms);
    let signer = sig
        .recover_address_from_msg(message.as_bytes())
        .map_err(|_| ProofError::WrongSigner)?;
    if signer.as_slice() == device.bytes() {
        Ok(())
    } else {
        Err(ProofError::WrongSigner)
    }
}

/// A fresh code a person reads and types (normalised form, no separator): pairing codes, and
/// the one-time codes of email and OIDC sign-ins.
pub fn new_code() -> String {
    let mut rng = rand::rng();
    (0..CODE_LEN)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_use_the_alphabet() {
        let c = new_code();
        assert_eq!(
            agentkeys_types::pairing::normalize_code(&c).as_deref(),
            Some(c.as_str())
        );
        assert_ne!(new_code(), new_code());
    }
}
