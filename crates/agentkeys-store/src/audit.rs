//! The audit hash chain (SPEC §7).
//!
//! `hash = hex(SHA-256(prev_hash ‖ canonical(event)))` where `prev_hash` is the 64-hex hash of
//! the previous event ([`GENESIS_HASH`] for the first) and `canonical(event)` is the JSON object
//! `{actor, details, kind, master, outcome, seq, time}` with keys sorted at every depth and no
//! whitespace. Anyone with an export can recompute it; `agentkeys-broker audit verify` does.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::AuditEvent;

/// `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The fields of an event the hash covers, as strings: computable both from an event about to
/// be written ([`crate::NewAuditEvent::hashed`]) and from a stored one, whatever version wrote
/// it ([`AuditEvent::hashed`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hashed<'a> {
    pub time: i64,
    pub kind: &'a str,
    pub actor: Option<&'a str>,
    pub master: Option<&'a str>,
    pub outcome: &'a str,
    pub details: &'a Value,
}

/// The canonical bytes of an event at position `seq`.
pub fn canonical(seq: u64, event: Hashed<'_>) -> String {
    let value = serde_json::json!({
        "seq": seq,
        "time": event.time,
        "kind": event.kind,
        "actor": event.actor,
        "master": event.master,
        "outcome": event.outcome,
        "details": event.details,
    });
    let mut out = String::with_capacity(256);
    write_canonical(&value, &mut out);
    out
}

pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// Sorted keys at every level regardless of serde_json's `preserve_order` feature, which any
/// crate in the build could switch on.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Which of a master's events to read ([`crate::Store::audit_for_master`]).
///
/// Pages run oldest first: events with `seq > after_seq`, in seq order, at most `limit`; the
/// next page starts after the last seq returned. Filters combine with AND: `kind` and `actor`
/// match exactly, and `since <= time < until` (unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub after_seq: u64,
    pub limit: u32,
    pub kind: Option<String>,
    pub actor: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// Where a chain stops being valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit event seq {seq} is invalid: {reason}")]
pub struct ChainBreak {
    pub seq: u64,
    pub reason: String,
}

/// Incremental verifier: feed events in seq order, starting from the first.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    next_seq: u64,
    prev_hash: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            next_seq: 1,
            prev_hash: GENESIS_HASH.to_owned(),
        }
    }
}

impl ChainVerifier {
    pub fn check(&mut self, event: &AuditEvent) -> Result<(), ChainBreak> {
        let fail = |reason: &str| ChainBreak {
            seq: event.seq,
            reason: reason.to_owned(),
        };
        if event.seq != self.next_seq {
            return Err(ChainBreak {
                seq: self.next_seq,
                reason: format!("missing; the next stored event is seq {}", event.seq),
            });
        }
        if event.prev_hash != self.prev_hash {
            return Err(fail("prev_hash does not match the previous event's hash"));
        }
        if chain_hash(&self.prev_hash, &canonical(event.seq, event.hashed())) != event.hash {
            return Err(fail(
                "its content does not match its hash (modified after it was written)",
            ));
        }
        self.next_seq += 1;
        self.prev_hash = event.hash.clone();
        Ok(())
    }

    /// Number of events verified so far.
    pub fn verified(&self) -> u64 {
        self.next_seq - 1
    }

    pub fn head_hash(&self) -> &str {
        &self.prev_hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditKind, NewAuditEvent, Outcome};

    fn event(kind: AuditKind) -> NewAuditEvent {
        NewAuditEvent {
            time: 1_700_000_000,
            kind,
            actor: Some("a".into()),
            master: None,
            outcome: Outcome::Ok,
            details: serde_json::json!({"z": 1, "a": {"y": [2, {"b": 1, "a": 0}], "x": "é\""}}),
        }
    }

    #[test]
    fn canonical_form_sorts_keys_at_every_depth() {
        assert_eq!(
            canonical(7, event(AuditKind::Mint).hashed()),
            r#"{"actor":"a","details":{"a":{"x":"é\"","y":[2,{"a":0,"b":1}]},"z":1},"kind":"mint","master":null,"outcome":"ok","seq":7,"time":1700000000}"#
        );
    }

    fn chain(kinds: &[AuditKind]) -> Vec<AuditEvent> {
        let mut prev = GENESIS_HASH.to_owned();
        kinds
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let seq = i as u64 + 1;
                let e = event(*k);
                let hash = chain_hash(&prev, &canonical(seq, e.hashed()));
                AuditEvent {
                    seq,
                    time: e.time,
                    kind: e.kind.to_string(),
                    actor: e.actor,
                    master: e.master,
                    outcome: e.outcome.to_string(),
                    details: e.details,
                    prev_hash: std::mem::replace(&mut prev, hash.clone()),
                    hash,
                }
            })
            .collect()
    }

    #[test]
    fn verifier_accepts_a_chain_and_names_the_first_bad_event() {
        let events = chain(&[
            AuditKind::Mint,
            AuditKind::GrantCreated,
            AuditKind::AgentPaired,
        ]);
        let mut v = ChainVerifier::default();
        for e in &events {
            v.check(e).unwrap();
        }
        assert_eq!(v.verified(), 3);

        let mut tampered = events.clone();
        tampered[1].outcome = "denied".into();
        let mut v = ChainVerifier::default();
        v.check(&tampered[0]).unwrap();
        assert_eq!(v.check(&tampered[1]).unwrap_err().seq, 2);

        let mut v = ChainVerifier::default();
        v.check(&events[0]).unwrap();
        let gap = v.check(&events[2]).unwrap_err();
        assert_eq!(
            gap.seq, 2,
            "a deleted event is named by the seq that is missing"
        );
    }
}
