//! Agent pairing: the messages a device key signs (EIP-191) to prove possession, and the code a
//! master types to approve. Shared so the broker and the `agentkeys` client cannot disagree on
//! a byte.

/// How far a proof's timestamp may be from the broker's clock, in seconds.
pub const PROOF_MAX_SKEW_SECONDS: i64 = 120;

/// Characters of a pairing code: no 0/O, 1/I/L, so it survives being read aloud.
pub const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
/// Characters in a code (shown as two groups of four).
pub const CODE_LEN: usize = 8;

/// What a proof is for; part of the signed text so a proof for one step is useless for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofAction {
    /// Opening a pairing request.
    Pair,
    /// Polling a pairing request for the agent's session.
    Poll,
    /// A paired agent asking for a new session (its old one expired or was logged out).
    Session,
}

/// The domain-separated message a device signs: the broker it talks to, the action, the
/// pairing (for polls) or the agent omni (for sessions) as `subject`, the device address and a
/// millisecond timestamp.
pub fn proof_message(
    issuer: &str,
    action: ProofAction,
    device: &str,
    pairing_id: Option<&str>,
    timestamp_ms: i64,
) -> String {
    let action = match action {
        ProofAction::Pair => "pair",
        ProofAction::Poll => "poll",
        ProofAction::Session => "session",
    };
    format!(
        "AgentKeys device proof\nbroker: {issuer}\naction: {action}\ndevice: {device}\npairing: {}\ntime: {timestamp_ms}",
        pairing_id.unwrap_or("-")
    )
}

/// Canonical form of a code the user typed: upper case, separators and spaces dropped.
pub fn normalize_code(input: &str) -> Option<String> {
    let code: String = input
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (code.len() == CODE_LEN && code.bytes().all(|b| CODE_ALPHABET.contains(&b))).then_some(code)
}

/// `ABCDEFGH` → `ABCD-EFGH`.
pub fn display_code(code: &str) -> String {
    if code.len() == CODE_LEN {
        format!("{}-{}", &code[..4], &code[4..])
    } else {
        code.to_owned()
    }
}

/// Agent labels: `^[a-z0-9-]{1,32}$` (SPEC §3).
pub fn valid_label(label: &str) -> bool {
    (1..=32).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_are_domain_separated() {
        let pair = proof_message("https://b", ProofAction::Pair, "0xabc", None, 1);
        let poll = proof_message("https://b", ProofAction::Poll, "0xabc", Some("p1"), 1);
        assert_ne!(pair, poll);
        assert!(pair.starts_with("AgentKeys device proof\nbroker: https://b\naction: pair\n"));
        assert_ne!(
            poll,
            proof_message("https://other", ProofAction::Poll, "0xabc", Some("p1"), 1)
        );
    }

    #[test]
    fn codes_normalize_and_reject_ambiguous_characters() {
        assert_eq!(normalize_code("abcd-efgh").as_deref(), Some("ABCDEFGH"));
        assert_eq!(normalize_code(" ABCD EFGH ").as_deref(), Some("ABCDEFGH"));
        assert_eq!(display_code("ABCDEFGH"), "ABCD-EFGH");
        for bad in [
            "",
            "ABCD-EFG",
            "ABCD-EFGHI",
            "ABCD-EF0H",
            "ABCD-EFIH",
            "ÄBCD-EFGH",
        ] {
            assert!(normalize_code(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn labels() {
        for ok in ["a", "scraper-1", &"x".repeat(32)] {
            assert!(valid_label(ok), "{ok}");
        }
        for bad in ["", "Upper", "under_score", "sp ace", &"x".repeat(33), "é"] {
            assert!(!valid_label(bad), "{bad}");
        }
    }
}
