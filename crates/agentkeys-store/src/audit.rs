//! The audit hash chain (SPEC §7).
//!
//! `hash = hex(SHA-256(prev_hash ‖ canonical(event)))` where `prev_hash` is the 64-hex hash of
//! the previous event ([`GENESIS_HASH`] for the first) and `canonical(event)` is the JSON object
//! `{actor, details, kind, master, outcome, seq, time}` in the event's [`HashFormat`]: today
//! RFC 8785 (JSON Canonicalization Scheme), so anyone with an export can recompute a hash with
//! an off-the-shelf JCS library and SHA-256; `agentkeys-broker audit verify` does. Each event
//! records its format, so a chain begun under an earlier one still verifies.

use serde::{Deserialize, Serialize};
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

/// How an event's canonical bytes are made; stored with each event.
/// Serialized as its number (`"hash_format": 2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "i64", try_from = "i64")]
pub enum HashFormat {
    /// Keys sorted (by UTF-8 bytes) at every depth, no whitespace, serde_json's escaping and
    /// numbers. Events written before RFC 8785 was adopted.
    SortedKeys = 1,
    /// RFC 8785 (keys sorted by UTF-16 code units, ECMAScript numbers and escaping).
    Jcs = 2,
}

impl HashFormat {
    /// The format of every event written now.
    pub const CURRENT: HashFormat = HashFormat::Jcs;

    pub fn from_stored(value: i64) -> Option<HashFormat> {
        match value {
            1 => Some(HashFormat::SortedKeys),
            2 => Some(HashFormat::Jcs),
            _ => None,
        }
    }

    /// Events exported before the format was recorded are all of the first.
    pub fn legacy() -> HashFormat {
        HashFormat::SortedKeys
    }
}

impl From<HashFormat> for i64 {
    fn from(format: HashFormat) -> i64 {
        format as i64
    }
}

impl TryFrom<i64> for HashFormat {
    type Error = String;

    fn try_from(value: i64) -> Result<Self, String> {
        HashFormat::from_stored(value).ok_or_else(|| format!("unknown audit hash format {value}"))
    }
}

/// The canonical bytes of an event at position `seq`, in `format`.
pub fn canonical(format: HashFormat, seq: u64, event: Hashed<'_>) -> String {
    match format {
        HashFormat::SortedKeys => {
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
            write_sorted_keys(&value, &mut out);
            out
        }
        // Serialized from borrowed fields: building a `Value` first would copy the details of
        // every event the writer appends.
        HashFormat::Jcs => {
            let fields = CanonicalFields {
                seq,
                time: event.time,
                kind: event.kind,
                actor: event.actor,
                master: event.master,
                outcome: event.outcome,
                details: event.details,
            };
            // Strings, integers and a `Value` always serialize; the fallback keeps this total.
            serde_json_canonicalizer::to_string(&fields)
                .unwrap_or_else(|_| serde_json::to_string(&fields).unwrap_or_default())
        }
    }
}

/// The object [`HashFormat::Jcs`] hashes; the canonicalizer orders its members.
#[derive(Serialize)]
struct CanonicalFields<'a> {
    seq: u64,
    time: i64,
    kind: &'a str,
    actor: Option<&'a str>,
    master: Option<&'a str>,
    outcome: &'a str,
    details: &'a Value,
}

pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// [`HashFormat::SortedKeys`], written by hand because it is no standard: kept only so that
/// events written under it still verify. Sorted regardless of serde_json's `preserve_order`
/// feature, which any crate in the build could switch on.
fn write_sorted_keys(value: &Value, out: &mut String) {
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
                write_sorted_keys(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted_keys(v, out);
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
        let canonical = canonical(event.hash_format, event.seq, event.hashed());
        if chain_hash(&self.prev_hash, &canonical) != event.hash {
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
    fn the_first_format_sorts_keys_at_every_depth() {
        assert_eq!(
            canonical(HashFormat::SortedKeys, 7, event(AuditKind::Mint).hashed()),
            r#"{"actor":"a","details":{"a":{"x":"é\"","y":[2,{"a":0,"b":1}]},"z":1},"kind":"mint","master":null,"outcome":"ok","seq":7,"time":1700000000}"#
        );
    }

    /// The example of RFC 8785 §3.2.2 (numbers, escapes, literals), through the format the
    /// chain uses now: what any JCS library produces.
    #[test]
    fn the_current_format_is_rfc_8785() {
        let input = r#"{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]}"#;
        let details: Value = serde_json::from_str(input).unwrap();
        let e = NewAuditEvent {
            details,
            ..event(AuditKind::Mint)
        };
        assert_eq!(
            canonical(HashFormat::CURRENT, 7, e.hashed()),
            concat!(
                r#"{"actor":"a","details":{"literals":[null,true,false],"#,
                r#""numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"#,
                r#""string":"€$\u000f\nA'B\"\\\\\"/"},"#,
                r#""kind":"mint","master":null,"outcome":"ok","seq":7,"time":1700000000}"#
            )
        );
        // Where the formats differ (serde_json writes 1.0, RFC 8785 writes 1), each event is
        // verified in its own.
        let e = NewAuditEvent {
            details: serde_json::json!({"float": 1.0}),
            ..event(AuditKind::Mint)
        };
        let (first, current) = (
            canonical(HashFormat::SortedKeys, 7, e.hashed()),
            canonical(HashFormat::Jcs, 7, e.hashed()),
        );
        assert!(first.contains(r#"{"float":1.0}"#), "{first}");
        assert!(current.contains(r#"{"float":1}"#), "{current}");
    }

    fn chain(kinds: &[AuditKind]) -> Vec<AuditEvent> {
        chain_in(kinds, |_| HashFormat::CURRENT)
    }

    fn chain_in(kinds: &[AuditKind], format: impl Fn(u64) -> HashFormat) -> Vec<AuditEvent> {
        let mut prev = GENESIS_HASH.to_owned();
        kinds
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let seq = i as u64 + 1;
                let mut e = event(*k);
                e.details["float"] = serde_json::json!(1.0);
                let hash_format = format(seq);
                let hash = chain_hash(&prev, &canonical(hash_format, seq, e.hashed()));
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
                    hash_format,
                }
            })
            .collect()
    }

    /// A chain begun before RFC 8785 and continued under it verifies; an event that claims the
    /// other format does not.
    #[test]
    fn a_chain_that_changed_format_verifies_event_by_event() {
        let kinds = [AuditKind::Mint, AuditKind::GrantCreated, AuditKind::Mint];
        let events = chain_in(&kinds, |seq| {
            if seq < 3 {
                HashFormat::SortedKeys
            } else {
                HashFormat::Jcs
            }
        });
        let mut v = ChainVerifier::default();
        for e in &events {
            v.check(e).unwrap();
        }
        let mut relabelled = events.clone();
        relabelled[2].hash_format = HashFormat::SortedKeys;
        let mut v = ChainVerifier::default();
        v.check(&relabelled[0]).unwrap();
        v.check(&relabelled[1]).unwrap();
        assert_eq!(v.check(&relabelled[2]).unwrap_err().seq, 3);
        // Exports from before the format was recorded read as the first format.
        let mut old: serde_json::Value = serde_json::to_value(&events[0]).unwrap();
        assert_eq!(old["hash_format"], 1);
        old.as_object_mut().unwrap().remove("hash_format");
        let parsed: AuditEvent = serde_json::from_value(old).unwrap();
        assert_eq!(parsed.hash_format, HashFormat::SortedKeys);
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
