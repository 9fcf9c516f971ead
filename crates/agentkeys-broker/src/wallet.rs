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

#[cfg(test)]
mod properties {
    //! The SIWE message and its answer, by property (docs/reliability.md).

    use agentkeys_wallet::WalletKey;
    use proptest::prelude::*;

    use super::*;

    fn issuer(port: u16) -> Issuer {
        Issuer::parse(&format!("http://127.0.0.1:{port}"), true).unwrap()
    }

    fn challenge(address: &WalletAddress, message: String, expires_at: i64) -> Challenge {
        Challenge {
            id: "0".repeat(32),
            address: address.to_string(),
            message,
            created_at: 0,
            expires_at,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

        /// A message built for any address, chain, nonce and time parses back to the same
        /// fields, and a signature over it by that wallet verifies to that wallet; another
        /// statement, signer or an expired challenge each get their own error.
        #[test]
        fn messages_round_trip_and_answers_verify(
            port in 1024u16..,
            chain_id in 1u64..=i64::MAX as u64,
            nonce in "[a-zA-Z0-9]{8,32}",
            issued_at in 0i64..4_000_000_000,
            ttl in 1i64..3600,
            statement in "[A-Za-z0-9 .,]{1,60}",
        ) {
            let key = WalletKey::random();
            let address: WalletAddress = format!("0x{}", hex::encode(key.address())).parse().unwrap();
            let text = message(&issuer(port), &address, statement.clone(), chain_id, &nonce, issued_at, issued_at + ttl).unwrap();
            let parsed: siwe::Message = text.parse().unwrap();
            prop_assert_eq!(parsed.address, address.bytes());
            prop_assert_eq!(parsed.chain_id, chain_id);
            prop_assert_eq!(&parsed.nonce, &nonce);
            prop_assert_eq!(parsed.statement.as_deref(), Some(statement.as_str()));
            prop_assert_eq!(parsed.to_string(), text.clone());

            let signature: [u8; 65] = key.sign_message(text.as_bytes()).unwrap().as_bytes();
            let c = challenge(&address, text.clone(), issued_at + ttl);
            prop_assert_eq!(verify(&c, &statement, &signature, issued_at), Ok(address.clone()));
            prop_assert_eq!(verify(&c, &format!("{statement}!"), &signature, issued_at), Err(SignInError::WrongPurpose));
            prop_assert_eq!(verify(&c, &statement, &signature, issued_at + ttl), Err(SignInError::Expired));
            let other: [u8; 65] = WalletKey::random().sign_message(text.as_bytes()).unwrap().as_bytes();
            prop_assert_eq!(verify(&c, &statement, &other, issued_at), Err(SignInError::WrongSigner));
        }

        /// Arbitrary stored text and signatures never panic: a challenge whose message is not
        /// SIWE is unknown.
        #[test]
        fn arbitrary_messages_and_signatures_never_panic(text in ".{0,300}", sig in prop::collection::vec(any::<u8>(), 65), s in ".{0,140}") {
            let address: WalletAddress = "0x0000000000000000000000000000000000000001".parse().unwrap();
            let signature: [u8; 65] = sig.try_into().unwrap();
            let c = challenge(&address, text.clone(), 10);
            if text.parse::<siwe::Message>().is_err() {
                prop_assert_eq!(verify(&c, "x", &signature, 0), Err(SignInError::UnknownChallenge));
            } else {
                let _ = verify(&c, "x", &signature, 0);
            }
            let _ = parse_signature(&s);
        }

        /// Signatures: `0x` + 130 hex (any case) parse to their bytes; anything else is None.
        #[test]
        fn signatures_parse_exactly(bytes in prop::collection::vec(any::<u8>(), 65), upper in any::<bool>()) {
            let hexed = if upper { hex::encode_upper(&bytes) } else { hex::encode(&bytes) };
            prop_assert_eq!(parse_signature(&format!("0x{hexed}")).map(|s| s.to_vec()), Some(bytes.clone()));
            prop_assert_eq!(parse_signature(&hexed), None);
            prop_assert_eq!(parse_signature(&format!("0x{}", &hexed[2..])), None);
            prop_assert_eq!(parse_signature(&format!("0x{hexed}00")), None);
        }
    }
}
