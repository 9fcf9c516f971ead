//! Email and OIDC sign-in: what binds a sign-in to the client that started it.
//!
//! The client keeps a random verifier and sends only its S256 hash at the start (RFC 7636's
//! PKCE, reused here between our own client and broker). The user then sees a one-time code,
//! in the email or through the provider's redirect to the client's loopback listener, and the
//! client collects the session with both. A request id alone releases nothing, and a code alone
//! releases nothing: the session reaches only the party that started the sign-in and also saw
//! the code.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::api::ChallengePurpose;

/// The statement of a wallet sign-in message (EIP-4361).
pub const SIGN_IN_STATEMENT: &str = "Sign in to AgentKeys.";

/// What a wallet is asked to agree to: a sign-in, or (a step-up) linking one identity. The
/// statement is part of the signed text, so the broker accepts a signature only for the
/// purpose it was asked for, and the CLI signs only what the user asked for.
pub fn challenge_statement(purpose: Option<&ChallengePurpose>) -> String {
    match purpose {
        None => SIGN_IN_STATEMENT.to_owned(),
        Some(ChallengePurpose::LinkEmail(email)) => {
            format!("Link the email address {email} to my AgentKeys account.")
        }
        Some(ChallengePurpose::LinkOidc(provider)) => {
            format!("Link my {provider} sign-in to my AgentKeys account.")
        }
        Some(ChallengePurpose::ApproveAccess(a)) => {
            let uses = match a.max_uses {
                Some(1) => "1 mint".to_owned(),
                Some(n) => format!("{n} mints"),
                None => "unlimited mints".to_owned(),
            };
            format!(
                "Approve access request {}: agent {} ({}) may use {}/ for {uses} until {}.",
                a.request_id, a.agent_label, a.agent, a.scope_tag, a.expires_at
            )
        }
    }
}

/// Wrong codes a request tolerates before it is dead (the code has about 39 bits).
pub const CODE_ATTEMPTS: u32 = 5;

/// The S256 challenge of a verifier: base64url (unpadded) of its SHA-256.
pub fn code_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
pub fn valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// The shape of an S256 challenge: 43 base64url characters.
pub fn valid_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Longest loopback redirect URI accepted.
pub const MAX_REDIRECT_URI: usize = 128;

/// Checks an RFC 8252 §7.3 loopback redirect: `http://127.0.0.1:<port>/<path>` or
/// `http://[::1]:<port>/<path>`, a non-zero port, a plain path, no query or fragment. Anything
/// else could send the code to another host. Written by hand because the accepted language is
/// this small and a general URL parser would accept far more (userinfo, hostnames).
pub fn check_loopback_redirect(uri: &str) -> Result<(), &'static str> {
    if uri.len() > MAX_REDIRECT_URI {
        return Err("the redirect URI is too long");
    }
    let rest = uri
        .strip_prefix("http://127.0.0.1:")
        .or_else(|| uri.strip_prefix("http://[::1]:"))
        .ok_or("the redirect URI must be http://127.0.0.1:<port>/… or http://[::1]:<port>/…")?;
    let (port, path) = rest
        .split_once('/')
        .ok_or("the redirect URI needs a path after the port")?;
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0);
    if !port_ok {
        return Err("the redirect URI's port must be 1-65535");
    }
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
    {
        return Err("the redirect URI's path may hold only letters, digits and / - _ .");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(valid_challenge(&code_challenge("x")));
        assert!(valid_verifier(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        ));
        assert!(!valid_verifier("short"));
        assert!(!valid_verifier(&"a".repeat(129)));
        assert!(!valid_verifier(&format!("{}+", "a".repeat(43))));
        assert!(!valid_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c="
        ));
    }

    #[test]
    fn only_loopback_redirects() {
        for ok in [
            "http://127.0.0.1:5000/callback",
            "http://[::1]:1/x",
            "http://127.0.0.1:65535/a/b-c_d.e",
        ] {
            assert_eq!(check_loopback_redirect(ok), Ok(()), "{ok}");
        }
        for bad in [
            "https://127.0.0.1:5000/callback",
            "http://localhost:5000/callback",
            "http://127.0.0.1.evil.example:5000/",
            "http://127.0.0.1:5000@evil.example/",
            "http://127.0.0.1:0/callback",
            "http://127.0.0.1:65536/callback",
            "http://127.0.0.1:5000",
            "http://127.0.0.1:/x",
            "http://127.0.0.1:5000/cb?x=1",
            "http://127.0.0.1:5000/cb#f",
            "http://127.0.0.1:5000/%2e",
            "http://10.0.0.1:5000/callback",
        ] {
            assert!(check_loopback_redirect(bad).is_err(), "{bad}");
        }
        assert!(check_loopback_redirect(&format!("http://[::1]:1/{}", "a".repeat(200))).is_err());
    }
}
