//! Refusals of anonymous requests, counted in memory and written to the audit log as one
//! `anonymous.denied` event per client per window (SPEC §11.9).
//!
//! A mint without a valid session, a wallet verify naming no real challenge, or a provider's
//! `error=` at the OIDC callback proves nothing about anyone; writing each as its own chained
//! event let one client grow the append-only log (and load the single writer) at will. They
//! are still all counted: in metrics at once, and in the log at the next flush, which runs
//! every `BROKER_ANON_AUDIT_WINDOW_SECONDS` and at shutdown. Memory is bounded: beyond
//! [`MAX_TRACKED_SOURCES`] clients, the rest are counted together under `*`.

use agentkeys_types::audit::{AuditKind, Outcome};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use agentkeys_store::{NewAuditEvent, Store, StoreError};
use serde_json::json;

use crate::limiter::ClientKey;

/// Clients tracked between two flushes before new ones share the `*` tally.
pub const MAX_TRACKED_SOURCES: usize = 10_000;

/// What was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DenialKind {
    /// `POST /v1/mint-oidc-jwt` without a live session.
    MintUnauthenticated,
    /// `POST /v1/auth/wallet/verify` naming a challenge that does not exist (or was used).
    WalletUnknownChallenge,
}

impl DenialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DenialKind::MintUnauthenticated => "mint.unauthenticated",
            DenialKind::WalletUnknownChallenge => "sign_in.wallet.unknown_challenge",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Client(ClientKey),
    /// Everyone beyond the tracking cap.
    Overflow,
}

#[derive(Debug, Clone)]
struct Tally {
    count: u64,
    kinds: BTreeMap<DenialKind, u64>,
    first: i64,
    last: i64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.count += other.count;
        for (k, n) in other.kinds {
            *self.kinds.entry(k).or_default() += n;
        }
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }
}

/// The in-memory tallies. Shared by every request (`&self`).
pub struct Denials {
    max_sources: usize,
    tallies: Mutex<HashMap<Source, Tally>>,
}

impl Default for Denials {
    fn default() -> Self {
        Self::with_capacity(MAX_TRACKED_SOURCES)
    }
}

impl Denials {
    pub fn with_capacity(max_sources: usize) -> Self {
        Self {
            max_sources: max_sources.max(1),
            tallies: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one refusal of `kind` from `ip` at `now`. No store write; the next flush writes it.
    pub fn record(&self, ip: IpAddr, kind: DenialKind, now: i64) {
        metrics::counter!(crate::metrics::ANONYMOUS_DENIALS, "kind" => kind.as_str()).increment(1);
        let tally = Tally {
            count: 1,
            kinds: BTreeMap::from([(kind, 1)]),
            first: now,
            last: now,
        };
        self.add(Source::Client(ClientKey::from(ip)), tally);
    }

    fn add(&self, source: Source, tally: Tally) {
        let mut map = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        let source = if map.contains_key(&source) || map.len() < self.max_sources {
            source
        } else {
            Source::Overflow
        };
        match map.get_mut(&source) {
            Some(t) => t.merge(tally),
            None => {
                map.insert(source, tally);
            }
        }
    }

    /// Refusals counted and not yet written.
    pub fn pending(&self) -> u64 {
        self.tallies
            .lock()
            .map(|m| m.values().map(|t| t.count).sum())
            .unwrap_or_default()
    }

    /// Writes one `anonymous.denied` event per client counted since the last flush and forgets
    /// them. Events that could not be written are kept for the next flush, and the first error
    /// is returned. The appends run concurrently so they share the store's group commits.
    pub async fn flush(&self, store: &Arc<dyn Store>, now: i64) -> Result<usize, StoreError> {
        let drained: Vec<(Source, Tally)> = {
            let mut map = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
            map.drain().collect()
        };
        let mut tasks = tokio::task::JoinSet::new();
        for (source, tally) in drained {
            let store = store.clone();
            tasks.spawn(async move {
                let result = store.append_audit(event(source, &tally, now)).await;
                (source, tally, result)
            });
        }
        let mut written = 0;
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let Ok((source, tally, result)) = joined else {
                continue;
            };
            match result {
                Ok(_) => written += 1,
                Err(e) => {
                    self.add(source, tally);
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }
}

fn event(source: Source, tally: &Tally, now: i64) -> NewAuditEvent {
    let ip = match source {
        Source::Client(key) => key.to_string(),
        Source::Overflow => "*".to_owned(),
    };
    let kinds: serde_json::Map<String, serde_json::Value> = tally
        .kinds
        .iter()
        .map(|(k, n)| (k.as_str().to_owned(), json!(n)))
        .collect();
    NewAuditEvent {
        time: now,
        kind: AuditKind::AnonymousDenied,
        actor: None,
        master: None,
        outcome: Outcome::Denied,
        details: json!({
            "ip": ip,
            "count": tally.count,
            "kinds": kinds,
            "window": {"from": tally.first, "to": tally.last},
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[tokio::test]
    async fn one_event_per_client_per_flush_with_counts_and_a_bounded_overflow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = agentkeys_store::open(&url).await.expect("store");
        let d = Denials::with_capacity(2);
        for _ in 0..500 {
            d.record(ip("192.0.2.1"), DenialKind::MintUnauthenticated, 10);
        }
        d.record(ip("192.0.2.1"), DenialKind::WalletUnknownChallenge, 12);
        d.record(ip("2001:db8::1"), DenialKind::WalletUnknownChallenge, 11);
        d.record(ip("2001:db8::2"), DenialKind::WalletUnknownChallenge, 11);
        // Over the cap: these two share `*`.
        d.record(ip("198.51.100.1"), DenialKind::MintUnauthenticated, 13);
        d.record(ip("198.51.100.2"), DenialKind::MintUnauthenticated, 14);
        assert_eq!(d.pending(), 505);
        assert_eq!(d.flush(&store, 20).await.expect("flush"), 3);
        assert_eq!(d.pending(), 0);
        let events = store.audit_events(0, 100).await.expect("events");
        assert_eq!(events.len(), 3);
        let by_ip = |s: &str| {
            events
                .iter()
                .find(|e| e.details["ip"] == s)
                .unwrap_or_else(|| panic!("no event for {s}"))
        };
        let one = by_ip("192.0.2.1");
        assert_eq!(
            (one.kind.as_str(), one.outcome.as_str()),
            ("anonymous.denied", "denied")
        );
        assert_eq!(one.details["count"], 501);
        assert_eq!(one.details["kinds"]["mint.unauthenticated"], 500);
        assert_eq!(one.details["window"], json!({"from": 10, "to": 12}));
        assert_eq!(by_ip("2001:db8::/64").details["count"], 2);
        assert_eq!(by_ip("*").details["count"], 2);
        // Nothing new: nothing written.
        assert_eq!(d.flush(&store, 30).await.expect("flush"), 0);
    }
}
