//! Wallet sign-in: EIP-4361 messages, EIP-191 signatures. The `siwe` crate formats, parses
//! and verifies; this module decides what goes into a message and what a valid answer is.

use std::str::FromStr;

use agentkeys_store::Challenge;
use agentkeys_types::WalletAddress;

use crate::config::Issuer;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignInError {
    #[error("the challenge is unknown or was already used; request a new one")]
    UnknownChallenge,
    #[error("the challenge expired; request a new one")]
    Expired,
    #[error("the signature is not from the challenged address")]
    WrongSigner,
    #[error("the challenge was issued for another purpose; request one for this action")]
    WrongPurpose,
}

/// The message a wallet signs for challenge `id`.
pub fn message(
    issuer: &Issuer,
    address: &WalletAddress,
    statement: String,
    chain_id: u64,
    nonce: &str,
    issued_at: i64,
    expires_at: i64,
) -> Result<String, String> {
    let ts = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map(siwe::TimeStamp::from)
            .map_err(|e| e.to_string())
    };
    let msg = siwe::Message {
        domain: issuer
            .authority
            .parse()
            .map_err(|e: axum::http::uri::InvalidUri| e.to_string())?,
        address: address.bytes(),
        statement: Some(statement),
        uri: iri_string::types::UriString::from_str(&issuer.url).map_err(|e| e.to_string())?,
        version: siwe::Version::V1,
        chain_id,
        nonce: nonce.to_owned(),
        issued_at: ts(issued_at)?,
        expiration_time: Some(ts(expires_at)?),
        not_before: None,
        request_id: None,
        resources: vec![],
    };
    Ok(msg.to_string())
}

/// Parses `0x` + 130 hex into the 65 signature bytes.
pub fn parse_signature(s: &str) -> Option<[u8; 65]> {
    let hex_part = s.strip_prefix("0x")?;
    let mut out = [0u8; 65];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

/// Checks an answer to a challenge that was just taken from the store (so it is single use
/// whatever the outcome) and was issued for `statement`. Returns the signing wallet.
pub fn verify(
    challenge: &Challenge,
    statement: &str,
    signature: &[u8; 65],
    now: i64,
) -> Result<WalletAddress, SignInError> {
    if now >= challenge.expires_at {
        return Err(SignInError::Expired);
    }
    let msg: siwe::Message = challenge
        .message
        .parse()
        .map_err(|_| SignInError::UnknownChallenge)?;
    if msg.statement.as_deref() != Some(statement) {
        return Err(SignInError::WrongPurpose);
    }
    msg.verify_eip191(signature)
        .map_err(|_| SignInError::WrongSigner)?;
    challenge
        .address
        .parse()
        .map_err(|_| SignInError::WrongSigner)
}

/// A SIWE nonce: alphanumeric, at least 8 characters (EIP-4361); 128 bits here.
pub fn nonce() -> String {
    crate::session::random_id()
}
