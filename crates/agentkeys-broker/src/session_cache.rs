//! Sessions the mint has seen live, by token hash: what a mint needs to build its claims
//! without reading the session from the store before its transaction.
//!
//! Why: every mint reads its session again inside the gate's transaction (gates 1 and 2), and
//! that read is the one that decides. The read before it only supplies the claims' facts and
//! rejects unknown bearers; with the writer committing hundreds of times a second, each such
//! read met a cold SQLite page cache and cost ≈ 8 µs, a sixth of the mint's work outside the
//! writer (docs/performance.md).
//!
//! Only what never changes in a session is trusted from here: its token hash, kind, actor,
//! master, wallet and expiry. Revocation and an agent's status change; they are decided in the
//! transaction, never from this copy. A session the transaction finds not live is forgotten,
//! so a revoked bearer costs at most one recorded refusal per broker before it is refused at
//! the door again like any unknown token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentkeys_store::Session;

/// Entries kept at most. When full, the expired ones go; if none has, the cache starts over
/// (the next mint of each session reads the store once more).
const CAPACITY: usize = 200_000;

#[derive(Default)]
pub struct SessionCache {
    entries: Mutex<HashMap<String, Arc<Session>>>,
}

impl SessionCache {
    /// The session with this token hash, if it was seen live and has not expired at `now`.
    pub fn get(&self, token_hash: &str, now: i64) -> Option<Arc<Session>> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(token_hash)
            .filter(|s| s.expires_at > now)
            .cloned()
    }

    /// Remembers a session the store just returned live.
    pub fn insert(&self, session: Arc<Session>, now: i64) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= CAPACITY {
            entries.retain(|_, s| s.expires_at > now);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(session.token_hash.clone(), session);
    }

    /// Forgets a session that is no longer live (revoked, expired, gone).
    pub fn forget(&self, token_hash: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(token_hash);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkeys_store::ActorKind;

    fn session(hash: &str, expires_at: i64) -> Arc<Session> {
        let omni: agentkeys_types::OmniAccount =
            "1111111111111111111111111111111111111111111111111111111111111111"
                .parse()
                .expect("an omni account");
        Arc::new(Session {
            token_hash: hash.into(),
            kind: ActorKind::Master,
            omni: omni.clone(),
            wallet: None,
            master: omni,
            created_at: 0,
            expires_at,
            revoked_at: None,
            via: None,
            agent_status: None,
        })
    }

    #[test]
    fn an_expired_session_is_not_returned_and_a_forgotten_one_is_gone() {
        let cache = SessionCache::default();
        cache.insert(session("a", 100), 0);
        cache.insert(session("b", 100), 0);
        assert!(cache.get("a", 99).is_some());
        assert!(cache.get("a", 100).is_none(), "expired at its expiry");
        cache.forget("b");
        assert!(cache.get("b", 0).is_none());
        assert!(cache.get("c", 0).is_none());
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first() {
        let cache = SessionCache::default();
        for i in 0..CAPACITY {
            let expires = if i % 2 == 0 { 10 } else { 1_000 };
            cache.insert(session(&i.to_string(), expires), 0);
        }
        cache.insert(session("new", 1_000), 50);
        assert_eq!(cache.len(), CAPACITY / 2 + 1, "the expired half went");
        assert!(cache.get("1", 50).is_some() && cache.get("new", 50).is_some());
    }
}
