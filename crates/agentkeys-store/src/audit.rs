//! The audit hash chain (SPEC §7).
//!
//! `hash = hex(SHA-256(prev_hash ‖ canonical(event)))` where `prev_hash` is the 64-hex hash of
//! the previous event ([`GENESIS_HASH`] for the first) and `canonical(event)` is the JSON object
//! `{actor, details, kind, master, outcome, seq, time}` in the event's [`HashFormat`]: today
//! RFC 8785 (JSON Canonicalization Scheme), so anyone with an export can recompute a hash with
//! an off-the-shelf JCS library and SHA-256; `agentkeys-broker audit verify` does. Each event
//! records its format, so a chain begun under an earlier one still verifies.

use std::ops::Range;

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
    canonical_text(format, seq, event).text
}

/// An event's canonical bytes and, when that part of them is also the JSON of its details
/// (same value, valid JSON), where it lies: a writer can store it rather than serialize the
/// details a second time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalText {
    pub text: String,
    details: Option<Range<usize>>,
}

impl CanonicalText {
    /// The details' JSON inside [`Self::text`], if it was written there as such.
    pub fn details(&self) -> Option<&str> {
        self.details.clone().and_then(|r| self.text.get(r))
    }

    /// The JSON text a backend stores for `details` (the value this text was made from): the
    /// part of [`Self::text`] that already is it, else `details` serialized.
    pub fn details_json<'a>(&'a self, details: &Value) -> std::borrow::Cow<'a, str> {
        match self.details() {
            Some(json) => std::borrow::Cow::Borrowed(json),
            None => std::borrow::Cow::Owned(details.to_string()),
        }
    }
}

/// [`canonical`], keeping the span of the details' JSON where there is one.
pub fn canonical_text(format: HashFormat, seq: u64, event: Hashed<'_>) -> CanonicalText {
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
            CanonicalText {
                text: out,
                details: None,
            }
        }
        HashFormat::Jcs => jcs::fast(seq, event).unwrap_or_else(|| CanonicalText {
            text: jcs::reference(seq, event),
            details: None,
        }),
    }
}

/// RFC 8785 for [`HashFormat::Jcs`].
///
/// The library (`serde_json_canonicalizer`) is the reference, but it serializes every member
/// into a buffer of its own, sorts them through a `BTreeSet` after parsing each key again, and
/// formats every integer through a double: measured ≈ 8.3 µs per event on the audit writer's
/// single thread, about 6 % of a mint's CPU. `fast` writes the same bytes straight into one
/// buffer for what the broker writes: details of objects, arrays, strings, booleans, null and
/// integers within ±2^53. Anything else (floats, larger integers, a `seq` or `time` beyond
/// 2^53) goes to the library; `fast_path_writes_the_bytes_of_the_library` holds the two equal.
mod jcs {
    use std::cmp::Ordering;

    use serde::Serialize;
    use serde_json::Value;

    use super::{CanonicalText, Hashed};

    /// Integers up to this magnitude are exact doubles, which RFC 8785 (ECMAScript's
    /// `Number.prototype.toString`) writes as their plain decimal digits. Beyond it the double
    /// is rounded and printed with trailing zeros (2^60 as `1152921504606847000`).
    const MAX_EXACT: u64 = 1 << 53;

    /// The object the library hashes; it orders the members itself.
    #[derive(Serialize)]
    pub(super) struct CanonicalFields<'a> {
        pub seq: u64,
        pub time: i64,
        pub kind: &'a str,
        pub actor: Option<&'a str>,
        pub master: Option<&'a str>,
        pub outcome: &'a str,
        pub details: &'a Value,
    }

    pub(super) fn fields(seq: u64, event: Hashed<'_>) -> CanonicalFields<'_> {
        CanonicalFields {
            seq,
            time: event.time,
            kind: event.kind,
            actor: event.actor,
            master: event.master,
            outcome: event.outcome,
            details: event.details,
        }
    }

    pub(super) fn reference(seq: u64, event: Hashed<'_>) -> String {
        let fields = fields(seq, event);
        // Strings, integers and a `Value` always serialize; the fallback keeps this total.
        serde_json_canonicalizer::to_string(&fields)
            .unwrap_or_else(|_| serde_json::to_string(&fields).unwrap_or_default())
    }

    /// The members in RFC 8785 order (UTF-16 code units; all ASCII here, so alphabetical):
    /// actor, details, kind, master, outcome, seq, time. `None` outside the domain above.
    pub(super) fn fast(seq: u64, event: Hashed<'_>) -> Option<CanonicalText> {
        if seq > MAX_EXACT || event.time.unsigned_abs() > MAX_EXACT {
            return None;
        }
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"actor\":");
        optional_string(&mut out, event.actor)?;
        out.extend_from_slice(b",\"details\":");
        let start = out.len();
        value(&mut out, event.details)?;
        let details = start..out.len();
        out.extend_from_slice(b",\"kind\":");
        string(&mut out, event.kind)?;
        out.extend_from_slice(b",\"master\":");
        optional_string(&mut out, event.master)?;
        out.extend_from_slice(b",\"outcome\":");
        string(&mut out, event.outcome)?;
        out.extend_from_slice(b",\"seq\":");
        integer(&mut out, seq)?;
        out.extend_from_slice(b",\"time\":");
        integer(&mut out, event.time)?;
        out.push(b'}');
        let text = String::from_utf8(out).ok()?;
        Some(CanonicalText {
            text,
            details: Some(details),
        })
    }

    /// serde_json's escaping is ECMAScript's `JSON.stringify` that RFC 8785 §3.2.2.2 requires:
    /// `\"`, `\\`, `\b \f \n \r \t`, other controls as lowercase `\u00xx`, nothing else.
    fn string(out: &mut Vec<u8>, s: &str) -> Option<()> {
        serde_json::to_writer(out, s).ok()
    }

    fn optional_string(out: &mut Vec<u8>, s: Option<&str>) -> Option<()> {
        match s {
            Some(s) => string(out, s),
            None => {
                out.extend_from_slice(b"null");
                Some(())
            }
        }
    }

    fn integer(out: &mut Vec<u8>, n: impl Serialize) -> Option<()> {
        serde_json::to_writer(out, &n).ok()
    }

    fn value(out: &mut Vec<u8>, v: &Value) -> Option<()> {
        match v {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Number(n) => {
                // Floats (even 1.0, which RFC 8785 writes as 1) go to the library.
                let i = n.as_i64().filter(|i| i.unsigned_abs() <= MAX_EXACT)?;
                integer(out, i)?;
            }
            Value::String(s) => string(out, s)?,
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    value(out, item)?;
                }
                out.push(b']');
            }
            Value::Object(map) => {
                // serde_json's map is sorted by bytes, which is RFC 8785's order for the
                // broker's ASCII keys; but `preserve_order` (any crate may enable it) keeps
                // insertion order, and bytes and UTF-16 differ beyond U+E000: check, else sort.
                let ordered = map
                    .iter()
                    .is_sorted_by(|a, b| utf16_order(a.0, b.0) == Ordering::Less);
                if ordered {
                    members(out, map.iter())?;
                } else {
                    let mut entries: Vec<_> = map.iter().collect();
                    entries.sort_unstable_by(|a, b| utf16_order(a.0, b.0));
                    members(out, entries.into_iter())?;
                }
            }
        }
        Some(())
    }

    fn members<'a>(
        out: &mut Vec<u8>,
        entries: impl Iterator<Item = (&'a String, &'a Value)>,
    ) -> Option<()> {
        out.push(b'{');
        for (i, (k, v)) in entries.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, k)?;
            out.push(b':');
            value(out, v)?;
        }
        out.push(b'}');
        Some(())
    }

    /// RFC 8785 §3.2.3: keys compare as UTF-16 code units. Bytes (code points) give the same
    /// order unless the first difference is a character at or above U+E000 against one beyond
    /// U+FFFF (a surrogate pair, D800–DFFF, sorts first): impossible when either is ASCII.
    fn utf16_order(a: &str, b: &str) -> Ordering {
        if a.is_ascii() || b.is_ascii() {
            a.as_bytes().cmp(b.as_bytes())
        } else {
            a.encode_utf16().cmp(b.encode_utf16())
        }
    }
}

pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical.as_bytes());
    agentkeys_types::lower_hex(&h.finalize())
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
/// next page starts after the last seq returned, or after [`AuditListing::searched_to`].
/// Filters combine with AND: `kind` and `actor` match exactly, and `since <= time < until`
/// (unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub after_seq: u64,
    pub limit: u32,
    pub kind: Option<String>,
    pub actor: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// A page of a master's events ([`crate::Store::audit_for_master`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditListing {
    /// Oldest first, at most the query's `limit`.
    pub events: Vec<AuditEvent>,
    /// Set when the backend stopped searching before the log's end with fewer than `limit`
    /// events, to bound one page's work: every event up to this seq was considered, and the
    /// next page starts after it. Always after the query's `after_seq`.
    pub searched_to: Option<u64>,
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

    /// A mint's details as the broker writes them go through the fast path, to the bytes any
    /// JCS library writes; their JSON in it is what the writer stores.
    #[test]
    fn a_mint_event_takes_the_fast_path() {
        let details = serde_json::json!({
            "jti": "4f1c2a9be0d34c7f8a6e5d2c1b0a9f8e", "aud": "sts.amazonaws.com",
            "exp": 1_700_000_900, "kid": "Zk3Jd8", "role_arn": null,
            "session": "0123456789abcdef", "grant": "grant-7",
        });
        let e = NewAuditEvent {
            time: 1_700_000_000,
            kind: AuditKind::Mint,
            actor: Some("omni-é".into()),
            master: Some("0xAbC".into()),
            outcome: Outcome::Ok,
            details,
        };
        let details_json = concat!(
            r#"{"aud":"sts.amazonaws.com","exp":1700000900,"grant":"grant-7","#,
            r#""jti":"4f1c2a9be0d34c7f8a6e5d2c1b0a9f8e","kid":"Zk3Jd8","role_arn":null,"#,
            r#""session":"0123456789abcdef"}"#
        );
        let expected = format!(
            r#"{{"actor":"omni-é","details":{details_json},"kind":"mint","master":"0xAbC","outcome":"ok","seq":42,"time":1700000000}}"#
        );
        let fast = jcs::fast(42, e.hashed()).expect("a mint is in the fast path's domain");
        assert_eq!(fast.text, expected);
        assert_eq!(fast.details(), Some(details_json));
        assert_eq!(jcs::reference(42, e.hashed()), expected);
        assert_eq!(canonical(HashFormat::Jcs, 42, e.hashed()), expected);

        // A denied mint: the grant absent, a reason, an escaped string.
        let e = NewAuditEvent {
            actor: None,
            outcome: Outcome::Denied,
            details: serde_json::json!({"session": null, "reason": "rate_limited\n\u{1}\"/"}),
            ..e
        };
        let expected = concat!(
            r#"{"actor":null,"details":{"reason":"rate_limited\n\u0001\"/","session":null},"#,
            r#""kind":"mint","master":"0xAbC","outcome":"denied","seq":43,"time":1700000000}"#
        );
        assert!(jcs::fast(43, e.hashed()).is_some());
        assert_eq!(canonical(HashFormat::Jcs, 43, e.hashed()), expected);
        assert_eq!(jcs::reference(43, e.hashed()), expected);
    }

    /// Where bytes and UTF-16 disagree (U+E000 sorts after U+10000 in UTF-16, before it in
    /// UTF-8), and where numbers stop being plain integers, the output is RFC 8785's.
    #[test]
    fn keys_sort_by_utf16_and_large_numbers_are_doubles() {
        const EXACT: i64 = 1 << 53;
        let details = serde_json::json!({
            "\u{e000}": 1, "\u{10000}": 2, "b": [EXACT, -EXACT], "a": 0,
        });
        let e = NewAuditEvent {
            details,
            ..event(AuditKind::Mint)
        };
        let text = canonical_text(HashFormat::Jcs, 1, e.hashed());
        assert!(text.details().is_some(), "in the fast path's domain");
        assert_eq!(
            text.details(),
            Some(
                "{\"a\":0,\"b\":[9007199254740992,-9007199254740992],\"\u{10000}\":2,\"\u{e000}\":1}"
            )
        );
        assert_eq!(text.text, jcs::reference(1, e.hashed()));

        // Beyond 2^53 a number is the double nearest it, as ECMAScript prints it.
        let e = NewAuditEvent {
            details: serde_json::json!({"n": EXACT + 1, "m": 1u64 << 60, "f": 1.0}),
            ..event(AuditKind::Mint)
        };
        assert!(jcs::fast(1, e.hashed()).is_none());
        let text = canonical_text(HashFormat::Jcs, 1 << 60, e.hashed());
        assert_eq!(text.details(), None);
        assert_eq!(
            text.text,
            concat!(
                r#"{"actor":"a","details":{"f":1,"m":1152921504606847000,"n":9007199254740992},"#,
                r#""kind":"mint","master":null,"outcome":"ok","seq":1152921504606847000,"time":1700000000}"#
            )
        );
        let e = NewAuditEvent {
            time: -EXACT - 1,
            ..event(AuditKind::Mint)
        };
        assert!(jcs::fast(1, e.hashed()).is_none());
        assert!(
            canonical(HashFormat::Jcs, 1, e.hashed()).ends_with(r#""time":-9007199254740992}"#)
        );
    }

    mod fast_path {
        use proptest::prelude::*;
        use serde_json::Value;

        use super::super::{HashFormat, Hashed, canonical, jcs};

        const EXACT: i64 = 1 << 53;

        fn any_char() -> impl Strategy<Value = char> {
            prop_oneof![
                4 => proptest::char::range('a', 'd'),
                1 => proptest::char::range('\0', '\u{1f}'),
                1 => prop::sample::select(vec!['"', '\\', '/', '\u{7f}', 'é', '€', '\u{2028}']),
                1 => proptest::char::range('\u{e000}', '\u{ffff}'),
                1 => proptest::char::range('\u{10000}', '\u{10ffff}'),
                1 => any::<char>(),
            ]
        }

        fn any_string() -> impl Strategy<Value = String> {
            prop::collection::vec(any_char(), 0..6).prop_map(|c| c.into_iter().collect())
        }

        fn any_number() -> impl Strategy<Value = Value> {
            prop_oneof![
                3 => (-1000i64..1000).prop_map(Value::from),
                1 => (EXACT - 3..=EXACT + 3).prop_map(Value::from),
                1 => (-EXACT - 3..=-EXACT + 3).prop_map(Value::from),
                1 => any::<i64>().prop_map(Value::from),
                1 => any::<u64>().prop_map(Value::from),
                1 => prop::sample::select(vec![
                    0.1, 1.0, -0.0, 1e21, 1e20, 1e-6, 1e-7, 5e-324, f64::MAX, -f64::MAX,
                    f64::MIN_POSITIVE, 9007199254740993.0, 333_333_333.333_333_3,
                ])
                .prop_map(Value::from),
                1 => any::<f64>().prop_map(Value::from),
            ]
        }

        fn any_details() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any_number(),
                any_string().prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::vec((any_string(), inner), 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn any_seq() -> impl Strategy<Value = u64> {
            let exact = EXACT as u64;
            prop_oneof![1u64..1_000_000, exact - 2..=exact + 2, any::<u64>()]
        }

        fn any_time() -> impl Strategy<Value = i64> {
            prop_oneof![
                0i64..4_000_000_000,
                EXACT - 2..=EXACT + 2,
                -EXACT - 2..=-EXACT + 2,
                any::<i64>(),
            ]
        }

        /// The fast path's domain restated: every number an integer within ±2^53.
        fn exact_integers(v: &Value) -> bool {
            match v {
                Value::Number(n) => n
                    .as_u64()
                    .map(|u| u <= EXACT as u64)
                    .or(n.as_i64().map(|i| i >= -EXACT))
                    .unwrap_or(false),
                Value::Array(items) => items.iter().all(exact_integers),
                Value::Object(map) => map.values().all(exact_integers),
                _ => true,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            /// Wherever the fast path answers, it writes the library's bytes (and the details'
            /// JSON it hands back parses to the details); `canonical` always does.
            #[test]
            fn fast_path_writes_the_bytes_of_the_library(
                details in any_details(),
                actor in proptest::option::of(any_string()),
                master in proptest::option::of(any_string()),
                kind in any_string(),
                outcome in any_string(),
                seq in any_seq(),
                time in any_time(),
            ) {
                let event = Hashed {
                    time,
                    kind: &kind,
                    actor: actor.as_deref(),
                    master: master.as_deref(),
                    outcome: &outcome,
                    details: &details,
                };
                let library = serde_json_canonicalizer::to_string(&jcs::fields(seq, event))
                    .expect("a Value always canonicalizes");
                let fast = jcs::fast(seq, event);
                let in_domain = seq <= EXACT as u64
                    && time.unsigned_abs() <= EXACT as u64
                    && exact_integers(&details);
                prop_assert_eq!(fast.is_some(), in_domain);
                if let Some(fast) = fast {
                    prop_assert_eq!(&fast.text, &library);
                    let stored: Value = serde_json::from_str(fast.details().unwrap_or("!"))
                        .expect("the details' JSON parses");
                    prop_assert_eq!(stored, details.clone());
                }
                prop_assert_eq!(canonical(HashFormat::Jcs, seq, event), library);
            }
        }
    }
}
