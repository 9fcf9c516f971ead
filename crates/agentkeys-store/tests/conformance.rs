//! What every `Store` backend must do, tested through the trait only: each `Tx` primitive's
//! condition both ways, the transaction semantics of `transact`, and the reads.
//!
//! Runs on SQLite in a temporary directory. With `AGENTKEYS_TEST_DATABASE=postgres://…` every
//! test gets a fresh PostgreSQL schema instead; the few tests that are about SQLite's file say
//! so and return early elsewhere.

#![allow(clippy::unwrap_used)]

#[path = "conformance/postgres.rs"]
mod postgres;

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use agentkeys_store::audit::ChainVerifier;
use agentkeys_store::{
    AccessDecision, AccessRequest, ActorKind, Agent, AgentStatus, AuditEvent, AuditKind,
    AuditQuery, Challenge, Grant, Identity, IdentityRef, LoginKey, LoginRequest, NewAuditEvent,
    Outcome, PairingRequest, RateWindow, Result, Session, SessionFilter, SessionStanding,
    SigningKeyRecord, Store, StoreError, Tx,
};
use agentkeys_types::OmniAccount;
use serde_json::json;

// ---- fixture --------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Fixture {
    store: Arc<dyn Store>,
    url: String,
    backend: Backend,
    /// Keeps the SQLite file's directory alive as long as the fixture.
    dir: Option<tempfile::TempDir>,
}

impl Fixture {
    async fn new() -> Self {
        let admin = std::env::var("AGENTKEYS_TEST_DATABASE").unwrap_or_default();
        if admin.is_empty() {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("store.db").display());
            let store = agentkeys_store::open(&url).await.unwrap();
            return Self {
                store,
                url,
                backend: Backend::Sqlite,
                dir: Some(dir),
            };
        }
        assert!(
            admin.starts_with("postgres://") || admin.starts_with("postgresql://"),
            "AGENTKEYS_TEST_DATABASE must be a postgres:// URL (unset it to test SQLite)"
        );
        let url = fresh_postgres_url(&admin).await;
        let store = agentkeys_store::open(&url).await.unwrap();
        Self {
            store,
            url,
            backend: Backend::Postgres,
            dir: None,
        }
    }

    /// The SQLite file, when the backend is SQLite.
    fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        self.dir.as_ref().map(|d| d.path().join("store.db"))
    }
}

/// A schema of its own for one test, named in the URL's `search_path`.
async fn fresh_postgres_url(admin_url: &str) -> String {
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let schema = format!("t_{}", random_hex());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let sep = if admin_url.contains('?') { '&' } else { '?' };
    format!("{admin_url}{sep}options=-csearch_path%3D{schema}")
}

/// 128 random bits as hex, from the standard library's randomly keyed hasher.
fn random_hex() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = String::new();
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

// ---- values ---------------------------------------------------------------------------------

fn omni(name: &str) -> OmniAccount {
    OmniAccount::derive("test", name)
}

fn event(kind: AuditKind, n: i64) -> NewAuditEvent {
    NewAuditEvent {
        time: 1_700_000_000 + n,
        kind,
        actor: Some("actor".into()),
        master: Some("master".into()),
        outcome: Outcome::Ok,
        details: json!({ "n": n }),
    }
}

fn challenge(id: &str, expires_at: i64) -> Challenge {
    Challenge {
        id: id.into(),
        address: "0xabc".into(),
        message: "sign me".into(),
        created_at: 0,
        expires_at,
    }
}

fn session(hash: &str, who: &OmniAccount, expires_at: i64) -> Session {
    Session {
        token_hash: hash.into(),
        kind: ActorKind::Master,
        omni: who.clone(),
        wallet: Some("0xabc".into()),
        master: who.clone(),
        created_at: 0,
        expires_at,
        revoked_at: None,
        via: None,
        agent_status: None,
    }
}

fn email(value: &str) -> IdentityRef {
    IdentityRef {
        identity_type: "email".into(),
        identity_value: value.into(),
    }
}

fn agent(master: &OmniAccount, label: &str) -> Agent {
    Agent {
        omni: OmniAccount::for_agent(master, label),
        master: master.clone(),
        label: label.into(),
        device_address: "0xdev".into(),
        status: AgentStatus::Active,
        created_at: 10,
        updated_at: 10,
    }
}

fn pairing(id: &str, code: &str, expires_at: i64) -> PairingRequest {
    PairingRequest {
        id: id.into(),
        code: code.into(),
        device_address: "0xdev".into(),
        created_at: 0,
        expires_at,
        last_proof_ms: 10,
        agent: None,
        claimed_at: None,
    }
}

fn login(id_hash: &str, expires_at: i64) -> LoginRequest {
    LoginRequest {
        id_hash: id_hash.into(),
        method: "email".into(),
        subject: "a@example.com".into(),
        link_token_hash: Some(format!("link-{id_hash}")),
        state: Some(format!("state-{id_hash}")),
        oidc_nonce: None,
        oidc_verifier: None,
        link_to: None,
        link_to_wallet: None,
        created_at: 0,
        expires_at,
        verified_type: None,
        verified_value: None,
        verified_at: None,
        claimed_at: None,
        client_challenge: Some("challenge".into()),
        code_hash: Some("code".into()),
        code_attempts: 0,
        redirect_uri: None,
    }
}

fn grant(id: &str, a: &Agent, max_uses: Option<i64>, expires_at: i64) -> Grant {
    Grant {
        id: id.into(),
        master: a.master.clone(),
        agent: a.omni.clone(),
        scope: "inbox".into(),
        created_at: 1,
        expires_at,
        max_uses,
        uses: 0,
        revoked_at: None,
    }
}

fn key(kid: &str, activates_at: i64) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.into(),
        public_jwk: "{}".into(),
        certificate: "MII".into(),
        sealed_private_key: Some(vec![1, 2, 3, 0, 255]),
        created_at: 1,
        activates_at,
        retired_at: None,
        withdrawn_at: None,
    }
}

// ---- helpers --------------------------------------------------------------------------------

/// Runs `f` in one transaction and unwraps its result.
async fn tx<R, F>(store: &Arc<dyn Store>, f: F) -> R
where
    F: FnOnce(&mut dyn Tx) -> Result<R> + Send + 'static,
    R: Send + 'static,
{
    store.transact(f).await.unwrap()
}

fn assert_conflict<T: std::fmt::Debug>(result: Result<T>) {
    match result {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
}

async fn all_events(store: &dyn Store) -> Vec<AuditEvent> {
    store.audit_events(0, 1_000_000).await.unwrap()
}

/// The seqs of one page of `master`'s events, checked to be a short log's whole page.
async fn listed(store: &dyn Store, master: &str, query: AuditQuery) -> Vec<u64> {
    let page = store.audit_for_master(master, query).await.unwrap();
    assert_eq!(
        page.searched_to, None,
        "a short log's page does not stop short"
    );
    page.events.iter().map(|e| e.seq).collect()
}

/// Verifies the whole chain; how many events it holds.
async fn verify_chain(store: &dyn Store) -> u64 {
    let mut v = ChainVerifier::default();
    for e in all_events(store).await {
        v.check(&e).unwrap();
    }
    v.verified()
}

// ---- wallet challenges ----------------------------------------------------------------------

#[tokio::test]
async fn a_challenge_is_taken_once() {
    let f = Fixture::new().await;
    tx(&f.store, |t| t.insert_challenge(&challenge("c1", 100))).await;
    let (first, second, never) = tx(&f.store, |t| {
        Ok((
            t.take_challenge("c1")?,
            t.take_challenge("c1")?,
            t.take_challenge("never")?,
        ))
    })
    .await;
    assert_eq!(first, Some(challenge("c1", 100)));
    assert_eq!(second, None);
    assert_eq!(never, None);
    assert_eq!(
        tx(&f.store, |t| t.take_challenge("c1")).await,
        None,
        "taken for good"
    );
}

#[tokio::test]
async fn inserting_an_existing_key_is_a_conflict() {
    let f = Fixture::new().await;
    let m = omni("m");
    let a = agent(&m, "bot");
    let s = session("h", &m, 100);
    let p = pairing("p", "CODE", 100);
    let l = login("l", 100);
    let i = Identity {
        identity_type: "email".into(),
        identity_value: "a@example.com".into(),
        master: m.clone(),
        master_wallet: "0xabc".into(),
        linked_at: 1,
    };
    let g = grant("g", &a, None, 100);
    let k = key("k", 1);
    {
        let (a, s, p, l, i, g, k) = (
            a.clone(),
            s.clone(),
            p.clone(),
            l.clone(),
            i.clone(),
            g.clone(),
            k.clone(),
        );
        tx(&f.store, move |t| {
            t.insert_challenge(&challenge("c", 100))?;
            t.insert_session(&s)?;
            t.insert_agent(&a)?;
            t.insert_pairing(&p)?;
            t.insert_login(&l)?;
            t.insert_identity(&i)?;
            t.insert_grant(&g)?;
            t.insert_signing_key(&k)
        })
        .await;
    }
    let store = &f.store;
    assert_conflict(
        store
            .transact(|t| t.insert_challenge(&challenge("c", 100)))
            .await,
    );
    assert_conflict(store.transact(move |t| t.insert_session(&s)).await);
    let same = a.clone();
    assert_conflict(store.transact(move |t| t.insert_agent(&same)).await);
    // Another agent of the same master with the same label.
    let same_label = Agent {
        omni: omni("other-agent"),
        ..a.clone()
    };
    assert_conflict(store.transact(move |t| t.insert_agent(&same_label)).await);
    let same_id = p.clone();
    assert_conflict(store.transact(move |t| t.insert_pairing(&same_id)).await);
    let same_code = PairingRequest {
        id: "p2".into(),
        ..p
    };
    assert_conflict(store.transact(move |t| t.insert_pairing(&same_code)).await);
    let same_id = l.clone();
    assert_conflict(store.transact(move |t| t.insert_login(&same_id)).await);
    let same_link = LoginRequest {
        id_hash: "l2".into(),
        state: None,
        ..l.clone()
    };
    assert_conflict(store.transact(move |t| t.insert_login(&same_link)).await);
    let same_state = LoginRequest {
        id_hash: "l3".into(),
        link_token_hash: None,
        ..l
    };
    assert_conflict(store.transact(move |t| t.insert_login(&same_state)).await);
    let elsewhere = Identity {
        master: omni("other"),
        ..i
    };
    assert_conflict(store.transact(move |t| t.insert_identity(&elsewhere)).await);
    assert_conflict(store.transact(move |t| t.insert_grant(&g)).await);
    assert_conflict(store.transact(move |t| t.insert_signing_key(&k)).await);
    assert_eq!(verify_chain(store.as_ref()).await, 0);
}

// ---- sessions -------------------------------------------------------------------------------

#[tokio::test]
async fn sessions_read_back_as_written() {
    let f = Fixture::new().await;
    let m = omni("m");
    let a = agent(&m, "bot");
    let master_session = Session {
        via: Some(email("a@example.com")),
        ..session("h1", &m, 100)
    };
    let agent_session = Session {
        kind: ActorKind::Agent,
        omni: a.omni.clone(),
        master: m.clone(),
        wallet: None,
        revoked_at: Some(5),
        ..session("h2", &m, 100)
    };
    let (ms, ags, agent_row) = (master_session.clone(), agent_session.clone(), a.clone());
    let inside = tx(&f.store, move |t| {
        t.insert_agent(&agent_row)?;
        t.insert_session(&ms)?;
        t.insert_session(&ags)?;
        // A transaction sees its own writes.
        t.session_standing("h1")
    })
    .await;
    assert_eq!(inside, Some(master_session.standing()));
    assert_eq!(
        f.store.session("h1").await.unwrap(),
        Some(master_session.clone())
    );
    // An agent's session is read with its agent's status, in the store and in a transaction.
    let agent_session = Session {
        agent_status: Some(AgentStatus::Active),
        ..agent_session
    };
    assert_eq!(
        f.store.session("h2").await.unwrap(),
        Some(agent_session.clone())
    );
    let agent_omni = a.omni.clone();
    let suspended = tx(&f.store, move |t| {
        t.set_agent_status(&agent_omni, AgentStatus::Suspended, 10)?;
        t.session_standing("h2")
    })
    .await;
    assert_eq!(
        suspended.and_then(|s| s.agent_status),
        Some(AgentStatus::Suspended)
    );
    assert_eq!(f.store.session("none").await.unwrap(), None);
    assert_eq!(tx(&f.store, |t| t.session_standing("none")).await, None);
}

/// A standing read once and read again after each kind of change sees the change: in the
/// next transaction, in the same one, after another store on the database changed it, and not
/// after a work that changed it failed (SQLite's writer keeps the standings it read).
#[tokio::test]
async fn a_standing_read_again_sees_every_change_and_no_undone_one() {
    let f = Fixture::new().await;
    let other = agentkeys_store::open(&f.url).await.unwrap();
    let m = omni("m");
    let a = agent(&m, "bot");
    let agent_session = Session {
        kind: ActorKind::Agent,
        omni: a.omni.clone(),
        wallet: None,
        ..session("agent", &m, 100)
    };
    let rows = (a.clone(), agent_session);
    tx(&f.store, move |t| {
        t.insert_agent(&rows.0)?;
        t.insert_session(&rows.1)?;
        for hash in ["next", "same", "undone", "elsewhere", "expired"] {
            let expires_at = if hash == "expired" { 5 } else { 100 };
            t.insert_session(&session(hash, &omni("m"), expires_at))?;
        }
        Ok(())
    })
    .await;
    let standing = |store: &Arc<dyn Store>, hash: &'static str| {
        let store = store.clone();
        async move { tx(&store, move |t| t.session_standing(hash)).await }
    };
    let revoked = |s: Option<SessionStanding>| s.and_then(|s| s.revoked_at).is_some();
    // Each is read (and so kept) just before its change: any change clears what is kept.
    let read_once = |hash| {
        let kept = standing(&f.store, hash);
        async move { assert!(!revoked(kept.await), "{hash} read once") }
    };
    // The next transaction.
    read_once("next").await;
    tx(&f.store, |t| t.revoke_session("next", 10)).await;
    assert!(revoked(standing(&f.store, "next").await));
    let agent_omni = a.omni.clone();
    read_once("agent").await;
    tx(&f.store, move |t| {
        t.set_agent_status(&agent_omni, AgentStatus::Suspended, 10)
    })
    .await;
    assert_eq!(
        standing(&f.store, "agent")
            .await
            .and_then(|s| s.agent_status),
        Some(AgentStatus::Suspended)
    );
    // The same transaction.
    let same = tx(&f.store, |t| {
        let before = t.session_standing("same")?;
        t.revoke_session("same", 10)?;
        Ok((before, t.session_standing("same")?))
    })
    .await;
    assert!(!revoked(same.0) && revoked(same.1));
    // A work that revoked, read, then failed: nothing of it is seen after.
    read_once("undone").await;
    let failed = f
        .store
        .transact(|t| {
            t.revoke_session("undone", 10)?;
            assert!(
                t.session_standing("undone")?
                    .is_some_and(|s| s.revoked_at.is_some())
            );
            t.insert_session(&session("never", &omni("m"), 100))?;
            t.session_standing("never")?;
            Err::<(), _>(StoreError::Database("the work fails".into()))
        })
        .await;
    assert!(failed.is_err());
    assert!(!revoked(standing(&f.store, "undone").await));
    assert_eq!(standing(&f.store, "never").await, None);
    // Another store on the same database.
    read_once("elsewhere").await;
    tx(&other, |t| t.revoke_session("elsewhere", 10)).await;
    assert!(revoked(standing(&f.store, "elsewhere").await));
    // Purged.
    read_once("expired").await;
    tx(&f.store, |t| t.purge_expired(0, 50)).await;
    assert_eq!(standing(&f.store, "expired").await, None);
}

#[tokio::test]
async fn a_session_is_revoked_only_while_live() {
    let f = Fixture::new().await;
    let m = omni("m");
    let (live, expired) = (session("live", &m, 100), session("expired", &m, 50));
    tx(&f.store, move |t| {
        t.insert_session(&live)?;
        t.insert_session(&expired)
    })
    .await;
    let results = tx(&f.store, |t| {
        Ok([
            t.revoke_session("live", 60)?,
            t.revoke_session("live", 61)?,
            // Expiry is exclusive: at 50 the session is no longer live.
            t.revoke_session("expired", 50)?,
            t.revoke_session("unknown", 60)?,
        ])
    })
    .await;
    assert_eq!(results, [true, false, false, false]);
    assert_eq!(
        f.store.session("live").await.unwrap().unwrap().revoked_at,
        Some(60)
    );
    assert_eq!(
        f.store
            .session("expired")
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        None
    );
}

#[tokio::test]
async fn revoke_sessions_all_but_one() {
    let f = Fixture::new().await;
    let (m, other) = (omni("m"), omni("other"));
    let rows = [
        session("keep", &m, 100),
        session("a", &m, 100),
        session("b", &m, 100),
        session("expired", &m, 10),
        Session {
            revoked_at: Some(1),
            ..session("revoked", &m, 100)
        },
        session("others", &other, 100),
    ];
    tx(&f.store, move |t| {
        rows.iter().try_for_each(|s| t.insert_session(s))
    })
    .await;
    let mm = m.clone();
    let n = tx(&f.store, move |t| {
        t.revoke_sessions(&mm, SessionFilter::AllExcept(Some("keep")), 20)
    })
    .await;
    assert_eq!(n, 2);
    let store = f.store.as_ref();
    let revoked_at =
        |h: &'static str| async move { store.session(h).await.unwrap().unwrap().revoked_at };
    assert_eq!(revoked_at("keep").await, None);
    assert_eq!(revoked_at("a").await, Some(20));
    assert_eq!(revoked_at("b").await, Some(20));
    assert_eq!(revoked_at("expired").await, None);
    assert_eq!(revoked_at("revoked").await, Some(1));
    assert_eq!(revoked_at("others").await, None);

    let mm = m.clone();
    let (everything, again) = tx(&f.store, move |t| {
        Ok((
            t.revoke_sessions(&mm, SessionFilter::AllExcept(None), 21)?,
            t.revoke_sessions(&mm, SessionFilter::AllExcept(None), 21)?,
        ))
    })
    .await;
    assert_eq!((everything, again), (1, 0));
    assert_eq!(revoked_at("keep").await, Some(21));
    assert!(f.store.sessions_of(&m, 21).await.unwrap().is_empty());
    assert_eq!(f.store.sessions_of(&other, 21).await.unwrap().len(), 1);
}

#[tokio::test]
async fn revoke_sessions_obtained_through_one_identity() {
    let f = Fixture::new().await;
    let (m, other) = (omni("m"), omni("other"));
    let via = |h: &str, who: &OmniAccount, identity: Option<IdentityRef>, expires_at| Session {
        via: identity,
        ..session(h, who, expires_at)
    };
    let rows = [
        via("x1", &m, Some(email("x@example.com")), 100),
        via("x2", &m, Some(email("x@example.com")), 100),
        via("x-expired", &m, Some(email("x@example.com")), 10),
        via("y", &m, Some(email("y@example.com")), 100),
        via("wallet", &m, None, 100),
        via("x-other", &other, Some(email("x@example.com")), 100),
    ];
    tx(&f.store, move |t| {
        rows.iter().try_for_each(|s| t.insert_session(s))
    })
    .await;
    let mm = m.clone();
    let (n, again) = tx(&f.store, move |t| {
        let x = email("x@example.com");
        Ok((
            t.revoke_sessions(&mm, SessionFilter::Via(&x), 20)?,
            t.revoke_sessions(&mm, SessionFilter::Via(&x), 20)?,
        ))
    })
    .await;
    assert_eq!((n, again), (2, 0));
    let mut live: Vec<String> = f
        .store
        .sessions_of(&m, 20)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.token_hash)
        .collect();
    live.sort();
    assert_eq!(live, ["wallet", "y"]);
    assert!(
        f.store
            .session("x-other")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none(),
        "another actor's session through the same identity stays"
    );
}

#[tokio::test]
async fn sessions_of_lists_the_live_sessions_of_one_actor() {
    let f = Fixture::new().await;
    let (m, other) = (omni("m"), omni("other"));
    let rows = [
        Session {
            created_at: 2,
            ..session("second", &m, 100)
        },
        Session {
            created_at: 1,
            ..session("first", &m, 100)
        },
        session("expired", &m, 30),
        Session {
            revoked_at: Some(3),
            ..session("revoked", &m, 100)
        },
        session("others", &other, 100),
    ];
    tx(&f.store, move |t| {
        rows.iter().try_for_each(|s| t.insert_session(s))
    })
    .await;
    let hashes: Vec<String> = f
        .store
        .sessions_of(&m, 30)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.token_hash)
        .collect();
    assert_eq!(hashes, ["first", "second"], "oldest first");
}

// ---- agents ---------------------------------------------------------------------------------

#[tokio::test]
async fn agents_are_stored_listed_and_change_status() {
    let f = Fixture::new().await;
    let (m, other) = (omni("m"), omni("other"));
    let a = agent(&m, "bot");
    let b = Agent {
        created_at: 20,
        ..agent(&m, "alpha")
    };
    let c = agent(&other, "bot");
    let (a2, b2, c2) = (a.clone(), b.clone(), c.clone());
    tx(&f.store, move |t| {
        t.insert_agent(&b2)?;
        t.insert_agent(&a2)?;
        t.insert_agent(&c2)
    })
    .await;
    assert_eq!(f.store.agent(&a.omni).await.unwrap(), Some(a.clone()));
    assert_eq!(f.store.agent(&omni("nobody")).await.unwrap(), None);
    assert_eq!(
        f.store.agents_of(&m).await.unwrap(),
        [a.clone(), b.clone()],
        "in creation order"
    );

    let (ao, nobody) = (a.omni.clone(), omni("nobody"));
    let (set, unknown, read) = tx(&f.store, move |t| {
        Ok((
            t.set_agent_status(&ao, AgentStatus::Suspended, 30)?,
            t.set_agent_status(&nobody, AgentStatus::Suspended, 30)?,
            t.agent(&ao)?,
        ))
    })
    .await;
    assert!(set);
    assert!(!unknown);
    assert_eq!(
        read,
        Some(Agent {
            status: AgentStatus::Suspended,
            updated_at: 30,
            ..a.clone()
        })
    );
    let ao = a.omni.clone();
    assert!(
        tx(&f.store, move |t| t.set_agent_status(
            &ao,
            AgentStatus::Removed,
            40
        ))
        .await
    );
    assert_eq!(
        f.store.agent(&a.omni).await.unwrap().unwrap().status,
        AgentStatus::Removed
    );
}

#[tokio::test]
async fn a_label_stays_taken_after_its_agent_is_removed() {
    let f = Fixture::new().await;
    let (m, other) = (omni("m"), omni("other"));
    let a = agent(&m, "bot");
    let mm = m.clone();
    let before = tx(&f.store, move |t| {
        let before = t.label_taken(&mm, "bot")?;
        t.insert_agent(&a)?;
        t.set_agent_status(&a.omni, AgentStatus::Removed, 20)?;
        Ok(before)
    })
    .await;
    assert!(!before);
    let (mm, oo) = (m.clone(), other.clone());
    let (taken, other_master, other_label) = tx(&f.store, move |t| {
        Ok((
            t.label_taken(&mm, "bot")?,
            t.label_taken(&oo, "bot")?,
            t.label_taken(&mm, "bot2")?,
        ))
    })
    .await;
    assert!(taken);
    assert!(!other_master);
    assert!(!other_label);
}

#[tokio::test]
async fn agent_proofs_must_strictly_increase() {
    let f = Fixture::new().await;
    let a = agent(&omni("m"), "bot");
    let ao = a.omni.clone();
    let results = tx(&f.store, move |t| {
        t.insert_agent(&a)?;
        Ok([
            t.advance_agent_proof(&a.omni, 5)?,
            t.advance_agent_proof(&a.omni, 5)?,
            t.advance_agent_proof(&a.omni, 4)?,
            t.advance_agent_proof(&a.omni, 6)?,
            t.advance_agent_proof(&omni("nobody"), 100)?,
        ])
    })
    .await;
    assert_eq!(results, [true, false, false, true, false]);
    // The high-water mark is stored, not just checked within one transaction.
    let later = tx(&f.store, move |t| {
        Ok([
            t.advance_agent_proof(&ao, 6)?,
            t.advance_agent_proof(&ao, 7)?,
        ])
    })
    .await;
    assert_eq!(later, [false, true]);
}

// ---- pairing --------------------------------------------------------------------------------

#[tokio::test]
async fn a_pairing_is_pending_until_approved_or_expired() {
    let f = Fixture::new().await;
    let p = pairing("p1", "ABCDEFGH", 100);
    let stored = p.clone();
    let (found, expired, unknown) = tx(&f.store, move |t| {
        t.insert_pairing(&stored)?;
        Ok((
            t.pending_pairing("ABCDEFGH", 99)?,
            t.pending_pairing("ABCDEFGH", 100)?,
            t.pending_pairing("NOPE", 99)?,
        ))
    })
    .await;
    assert_eq!(found, Some(p.clone()));
    assert_eq!(expired, None, "expiry is exclusive");
    assert_eq!(unknown, None);
    assert_eq!(f.store.pairing("p1").await.unwrap(), Some(p.clone()));
    assert_eq!(f.store.pairing("p2").await.unwrap(), None);

    let a = agent(&omni("m"), "bot");
    let ao = a.omni.clone();
    let (set, again, pending_after) = tx(&f.store, move |t| {
        t.insert_agent(&a)?;
        Ok((
            t.set_pairing_agent("p1", &a.omni)?,
            t.set_pairing_agent("p1", &omni("someone-else"))?,
            t.pending_pairing("ABCDEFGH", 50)?,
        ))
    })
    .await;
    assert!(set);
    assert!(!again, "the first approval stands");
    assert_eq!(
        pending_after, None,
        "an approved request is no longer pending"
    );
    assert_eq!(
        f.store.pairing("p1").await.unwrap().unwrap().agent,
        Some(ao.clone())
    );
    let unknown = tx(&f.store, move |t| t.set_pairing_agent("nope", &ao)).await;
    assert!(!unknown);
}

#[tokio::test]
async fn only_a_pending_pairing_is_ended() {
    let f = Fixture::new().await;
    let a = agent(&omni("m"), "bot");
    let (p1, p2, p3) = (
        pairing("p1", "AAAAAAAA", 100),
        pairing("p2", "BBBBBBBB", 100),
        pairing("p3", "CCCCCCCC", 100),
    );
    let results = tx(&f.store, move |t| {
        t.insert_agent(&a)?;
        [&p1, &p2, &p3]
            .iter()
            .try_for_each(|p| t.insert_pairing(p))?;
        t.set_pairing_agent("p2", &a.omni)?;
        Ok([
            t.end_pairing("p1", 10)?,
            t.end_pairing("p1", 11)?,
            t.end_pairing("p2", 10)?,  // approved
            t.end_pairing("p3", 100)?, // expired
            t.end_pairing("nope", 10)?,
            t.pending_pairing("AAAAAAAA", 10)?.is_some(),
        ])
    })
    .await;
    assert_eq!(results, [true, false, false, false, false, false]);
    assert_eq!(f.store.pairing("p1").await.unwrap().unwrap().expires_at, 10);
    assert_eq!(
        f.store.pairing("p2").await.unwrap().unwrap().expires_at,
        100
    );
}

#[tokio::test]
async fn a_pairing_is_claimed_once_and_its_proofs_increase() {
    let f = Fixture::new().await;
    let results = tx(&f.store, |t| {
        t.insert_pairing(&pairing("p1", "ABCDEFGH", 100))?;
        Ok([
            // The stored request starts at last_proof_ms = 10.
            t.advance_pairing_proof("p1", 10)?,
            t.advance_pairing_proof("p1", 11)?,
            t.advance_pairing_proof("p1", 11)?,
            t.advance_pairing_proof("nope", 50)?,
            t.mark_pairing_claimed("p1", 30)?,
            t.mark_pairing_claimed("p1", 31)?,
            t.mark_pairing_claimed("nope", 31)?,
        ])
    })
    .await;
    assert_eq!(results, [false, true, false, false, true, false, false]);
    let p = f.store.pairing("p1").await.unwrap().unwrap();
    assert_eq!((p.last_proof_ms, p.claimed_at), (11, Some(30)));
}

// ---- logins and identities ------------------------------------------------------------------

#[tokio::test]
async fn a_login_is_found_by_each_of_its_keys() {
    let f = Fixture::new().await;
    let l = LoginRequest {
        method: "oidc".into(),
        subject: "google".into(),
        oidc_nonce: Some("nonce".into()),
        oidc_verifier: Some("verifier".into()),
        link_to: Some(omni("m")),
        link_to_wallet: Some("0xabc".into()),
        redirect_uri: Some("http://127.0.0.1:5000/cb".into()),
        code_attempts: 2,
        ..login("id", 100)
    };
    let stored = l.clone();
    let inside = tx(&f.store, move |t| {
        t.insert_login(&stored)?;
        t.login(LoginKey::State("state-id"))
    })
    .await;
    assert_eq!(inside, Some(l.clone()));
    for key in [
        LoginKey::IdHash("id"),
        LoginKey::LinkTokenHash("link-id"),
        LoginKey::State("state-id"),
    ] {
        assert_eq!(
            f.store.login(key).await.unwrap(),
            Some(l.clone()),
            "{key:?}"
        );
    }
    for key in [
        LoginKey::IdHash("link-id"),
        LoginKey::LinkTokenHash("id"),
        LoginKey::State("nope"),
    ] {
        assert_eq!(f.store.login(key).await.unwrap(), None, "{key:?}");
    }
}

#[tokio::test]
async fn a_login_is_verified_once_and_only_before_it_expires() {
    let f = Fixture::new().await;
    let results = tx(&f.store, |t| {
        t.insert_login(&login("l1", 100))?;
        t.insert_login(&login("l2", 100))?;
        let id = email("a@example.com");
        Ok([
            t.verify_login("l1", &id, "new-code", 50)?,
            t.verify_login("l1", &email("b@example.com"), "other", 51)?,
            t.verify_login("l2", &id, "new-code", 100)?,
            t.verify_login("nope", &id, "new-code", 50)?,
        ])
    })
    .await;
    assert_eq!(results, [true, false, false, false]);
    let l1 = f
        .store
        .login(LoginKey::IdHash("l1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            l1.verified_type.as_deref(),
            l1.verified_value.as_deref(),
            l1.verified_at,
            l1.code_hash.as_deref()
        ),
        (
            Some("email"),
            Some("a@example.com"),
            Some(50),
            Some("new-code")
        )
    );
    let l2 = f
        .store
        .login(LoginKey::IdHash("l2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (l2.verified_at, l2.code_hash.as_deref()),
        (None, Some("code"))
    );
}

#[tokio::test]
async fn only_a_live_unverified_uncollected_login_is_expired() {
    let f = Fixture::new().await;
    let results = tx(&f.store, |t| {
        for id in ["live", "verified", "claimed", "expired"] {
            let expires_at = if id == "expired" { 40 } else { 100 };
            t.insert_login(&login(id, expires_at))?;
        }
        let id = email("a@example.com");
        t.verify_login("verified", &id, "c", 10)?;
        t.mark_login_claimed("claimed", &id, 10)?;
        Ok([
            t.expire_login("live", 50)?,
            t.expire_login("live", 50)?,
            t.expire_login("verified", 50)?,
            t.expire_login("claimed", 50)?,
            t.expire_login("expired", 50)?,
            t.expire_login("nope", 50)?,
        ])
    })
    .await;
    assert_eq!(results, [true, false, false, false, false, false]);
    let store = f.store.as_ref();
    let expires = |id: &'static str| async move {
        store
            .login(LoginKey::IdHash(id))
            .await
            .unwrap()
            .unwrap()
            .expires_at
    };
    assert_eq!(expires("live").await, 50, "its expiry becomes now");
    assert_eq!(expires("verified").await, 100);
    assert_eq!(expires("expired").await, 40);
}

#[tokio::test]
async fn wrong_codes_are_counted_and_a_login_is_collected_once() {
    let f = Fixture::new().await;
    let results = tx(&f.store, |t| {
        t.insert_login(&login("fresh", 100))?;
        t.insert_login(&login("verified", 100))?;
        t.count_wrong_code("fresh")?;
        t.count_wrong_code("fresh")?;
        t.count_wrong_code("nope")?;
        let a = email("a@example.com");
        t.verify_login("verified", &a, "c", 10)?;
        Ok([
            t.mark_login_claimed("fresh", &a, 20)?,
            t.mark_login_claimed("fresh", &email("b@example.com"), 21)?,
            t.mark_login_claimed("verified", &a, 30)?,
            t.mark_login_claimed("nope", &a, 30)?,
        ])
    })
    .await;
    assert_eq!(results, [true, false, true, false]);
    let fresh = f
        .store
        .login(LoginKey::IdHash("fresh"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fresh.code_attempts, 2);
    assert_eq!(
        (
            fresh.claimed_at,
            fresh.verified_at,
            fresh.verified_value.as_deref()
        ),
        (Some(20), Some(20), Some("a@example.com")),
        "collecting an unverified request verifies it now"
    );
    let verified = f
        .store
        .login(LoginKey::IdHash("verified"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (verified.claimed_at, verified.verified_at),
        (Some(30), Some(10)),
        "an earlier verification keeps its time"
    );
}

#[tokio::test]
async fn an_identity_is_unlinked_only_by_its_master() {
    let f = Fixture::new().await;
    let (m, other) = (omni("m"), omni("other"));
    let linked = |value: &str, linked_at| Identity {
        identity_type: "email".into(),
        identity_value: value.into(),
        master: m.clone(),
        master_wallet: "0xabc".into(),
        linked_at,
    };
    let (a, b) = (linked("a@example.com", 2), linked("b@example.com", 1));
    let (a2, b2) = (a.clone(), b.clone());
    let read = tx(&f.store, move |t| {
        t.insert_identity(&a2)?;
        t.insert_identity(&b2)?;
        t.identity(&email("a@example.com"))
    })
    .await;
    assert_eq!(read, Some(a.clone()));
    assert_eq!(
        f.store.identities_of(&m).await.unwrap(),
        [b.clone(), a.clone()],
        "in link order"
    );
    assert!(f.store.identities_of(&other).await.unwrap().is_empty());

    let (mm, oo) = (m.clone(), other.clone());
    let results = tx(&f.store, move |t| {
        let id = email("a@example.com");
        Ok([
            t.delete_identity(&oo, &id)?,
            t.delete_identity(&mm, &id)?,
            t.delete_identity(&mm, &id)?,
        ])
    })
    .await;
    assert_eq!(results, [false, true, false]);
    assert_eq!(f.store.identities_of(&m).await.unwrap(), [b]);
    assert_eq!(
        tx(&f.store, |t| t.identity(&email("a@example.com"))).await,
        None
    );
}

// ---- grants ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_grant_is_used_at_most_max_uses_times_by_its_agent() {
    let f = Fixture::new().await;
    let m = omni("m");
    let (a, b) = (agent(&m, "a"), agent(&m, "b"));
    let g = grant("g", &a, Some(3), 100);
    let (a2, b2, g2) = (a.clone(), b.clone(), g.clone());
    let results = tx(&f.store, move |t| {
        t.insert_agent(&a2)?;
        t.insert_agent(&b2)?;
        t.insert_grant(&g2)?;
        Ok([
            t.use_grant("g", &b2.omni, 10)?,
            t.use_grant("g", &a2.omni, 10)?,
            t.use_grant("g", &a2.omni, 11)?,
            t.use_grant("g", &a2.omni, 12)?,
            t.use_grant("g", &a2.omni, 13)?,
            t.use_grant("nope", &a2.omni, 13)?,
        ])
    })
    .await;
    assert_eq!(results, [false, true, true, true, false, false]);
    assert_eq!(
        f.store.grant("g").await.unwrap(),
        Some(Grant { uses: 3, ..g })
    );
    assert_eq!(f.store.grant("nope").await.unwrap(), None);
}

#[tokio::test]
async fn an_expired_or_revoked_grant_is_not_used() {
    let f = Fixture::new().await;
    let (m, other) = (omni("m"), omni("other"));
    let a = agent(&m, "a");
    let unlimited = grant("unlimited", &a, None, 100);
    let revoked = grant("revoked", &a, None, 100);
    let (a2, mm, oo) = (a.clone(), m.clone(), other.clone());
    let (used, at_expiry, revoke_other, revoke, revoke_again, after) = tx(&f.store, move |t| {
        t.insert_agent(&a2)?;
        t.insert_grant(&unlimited)?;
        t.insert_grant(&revoked)?;
        let mut used = 0;
        for now in 0..50 {
            used += u32::from(t.use_grant("unlimited", &a2.omni, now)?);
        }
        Ok((
            used,
            t.use_grant("unlimited", &a2.omni, 100)?,
            t.revoke_grant(&oo, "revoked", 20)?,
            t.revoke_grant(&mm, "revoked", 20)?,
            t.revoke_grant(&mm, "revoked", 21)?,
            t.use_grant("revoked", &a2.omni, 22)?,
        ))
    })
    .await;
    assert_eq!(used, 50, "no max_uses: unlimited");
    assert!(!at_expiry, "expiry is exclusive");
    assert!(!revoke_other, "only its master revokes a grant");
    assert!(revoke);
    assert!(!revoke_again);
    assert!(!after);
    assert_eq!(
        f.store.grant("revoked").await.unwrap().unwrap().revoked_at,
        Some(20)
    );
    let nope = tx(&f.store, move |t| t.revoke_grant(&m, "nope", 1)).await;
    assert!(!nope);
}

#[tokio::test]
async fn grants_are_listed_by_master_and_by_agent() {
    let f = Fixture::new().await;
    let (m, n) = (omni("m"), omni("n"));
    let (a, b, c) = (agent(&m, "a"), agent(&m, "b"), agent(&n, "c"));
    let g1 = grant("g1", &a, None, 100);
    let g2 = Grant {
        created_at: 2,
        ..grant("g2", &b, Some(1), 100)
    };
    let g3 = Grant {
        created_at: 3,
        ..grant("g3", &c, None, 100)
    };
    let rows = (
        vec![a.clone(), b.clone(), c.clone()],
        vec![g2.clone(), g1.clone(), g3.clone()],
    );
    tx(&f.store, move |t| {
        rows.0.iter().try_for_each(|x| t.insert_agent(x))?;
        rows.1.iter().try_for_each(|g| t.insert_grant(g))
    })
    .await;
    let s = f.store.as_ref();
    assert_eq!(
        s.grants_of(Some(&m), None).await.unwrap(),
        [g1.clone(), g2.clone()]
    );
    assert_eq!(
        s.grants_of(None, Some(&b.omni)).await.unwrap(),
        std::slice::from_ref(&g2)
    );
    assert_eq!(
        s.grants_of(Some(&m), Some(&c.omni)).await.unwrap(),
        [],
        "both filters apply"
    );
    assert_eq!(s.grants_of(None, None).await.unwrap(), [g1, g2, g3]);
}

// ---- access requests ------------------------------------------------------------------------

fn access_request(id: &str, a: &Agent, created_at: i64, expires_at: i64) -> AccessRequest {
    AccessRequest {
        id: id.into(),
        agent: a.omni.clone(),
        master: a.master.clone(),
        scope: "inbox".into(),
        max_uses: Some(5),
        ttl_seconds: 3600,
        reason: "read today's invoices".into(),
        created_at,
        expires_at,
        decision: None,
        decided_at: None,
        grant_id: None,
    }
}

#[tokio::test]
async fn access_requests_read_back_and_count_pending_until_decided_or_expired() {
    let f = Fixture::new().await;
    let m = omni("m");
    let (a, b) = (agent(&m, "a"), agent(&m, "b"));
    let (r1, r2, r3) = (
        access_request("r1", &a, 1, 100),
        access_request("r2", &a, 2, 50),
        AccessRequest {
            max_uses: None,
            ..access_request("r3", &b, 3, 100)
        },
    );
    let rows = (a.clone(), b.clone(), [r1.clone(), r2.clone(), r3.clone()]);
    let (at_10, at_50, other_agent) = tx(&f.store, move |t| {
        t.insert_agent(&rows.0)?;
        t.insert_agent(&rows.1)?;
        rows.2.iter().try_for_each(|r| t.insert_access_request(r))?;
        Ok((
            t.pending_access_requests(&rows.0.omni, 10)?,
            // r2 expires at 50: not pending at 50.
            t.pending_access_requests(&rows.0.omni, 50)?,
            t.pending_access_requests(&rows.1.omni, 10)?,
        ))
    })
    .await;
    assert_eq!((at_10, at_50, other_agent), (2, 1, 1));
    assert_eq!(
        f.store.access_request("r3").await.unwrap(),
        Some(r3.clone())
    );
    assert_eq!(f.store.access_request("nope").await.unwrap(), None);
    let s = f.store.as_ref();
    assert_eq!(
        s.access_requests_of(Some(&m), None).await.unwrap(),
        [r1.clone(), r2.clone(), r3.clone()]
    );
    assert_eq!(
        s.access_requests_of(None, Some(&b.omni)).await.unwrap(),
        std::slice::from_ref(&r3)
    );
    assert_eq!(
        s.access_requests_of(Some(&omni("other")), None)
            .await
            .unwrap(),
        []
    );
}

#[tokio::test]
async fn an_access_request_is_decided_once_and_only_before_it_expires() {
    let f = Fixture::new().await;
    let m = omni("m");
    let a = agent(&m, "a");
    let g = grant("g", &a, Some(5), 1000);
    let (a2, g2) = (a.clone(), g.clone());
    let results = tx(&f.store, move |t| {
        t.insert_agent(&a2)?;
        t.insert_grant(&g2)?;
        t.insert_access_request(&access_request("r1", &a2, 1, 100))?;
        t.insert_access_request(&access_request("r2", &a2, 1, 100))?;
        Ok([
            t.decide_access_request("r1", AccessDecision::Approved, Some("g"), 10)?,
            // A second decision of either kind loses.
            t.decide_access_request("r1", AccessDecision::Denied, None, 11)?,
            t.decide_access_request("r1", AccessDecision::Approved, Some("g"), 11)?,
            // At its expiry a request can no longer be decided.
            t.decide_access_request("r2", AccessDecision::Denied, None, 100)?,
            t.decide_access_request("r2", AccessDecision::Denied, None, 99)?,
            t.decide_access_request("nope", AccessDecision::Denied, None, 1)?,
        ])
    })
    .await;
    assert_eq!(results, [true, false, false, false, true, false]);
    let r1 = f.store.access_request("r1").await.unwrap().unwrap();
    assert_eq!(
        (r1.decision, r1.decided_at, r1.grant_id.as_deref()),
        (Some(AccessDecision::Approved), Some(10), Some("g"))
    );
    assert!(!r1.is_pending(10));
    let r2 = f.store.access_request("r2").await.unwrap().unwrap();
    assert_eq!(
        (r2.decision, r2.decided_at, r2.grant_id),
        (Some(AccessDecision::Denied), Some(99), None)
    );
    let pending = tx(&f.store, move |t| t.pending_access_requests(&a.omni, 5)).await;
    assert_eq!(pending, 0);
}

// ---- signing keys ---------------------------------------------------------------------------

#[tokio::test]
async fn signing_keys_are_stored_retired_and_resealed() {
    let f = Fixture::new().await;
    let (old, new) = (key("old", 1), key("new", 5));
    let (o, n) = (old.clone(), new.clone());
    let results = tx(&f.store, move |t| {
        t.insert_signing_key(&o)?;
        t.insert_signing_key(&n)?;
        Ok([
            t.update_signing_key("old", Some(7), Some(8))?,
            t.update_signing_key("nope", Some(7), None)?,
            t.reseal_signing_key("new", &[9, 9])?,
            t.reseal_signing_key("nope", &[9, 9])?,
        ])
    })
    .await;
    assert_eq!(results, [true, false, true, false]);
    assert_eq!(
        f.store.signing_keys().await.unwrap(),
        [
            SigningKeyRecord {
                sealed_private_key: Some(vec![9, 9]),
                ..new
            },
            SigningKeyRecord {
                retired_at: Some(7),
                withdrawn_at: Some(8),
                ..old
            },
        ],
        "latest activation first"
    );
    let unsealed = SigningKeyRecord {
        sealed_private_key: None,
        ..key("file-key", 0)
    };
    let stored = unsealed.clone();
    tx(&f.store, move |t| t.insert_signing_key(&stored)).await;
    assert_eq!(f.store.signing_keys().await.unwrap()[2], unsealed);
}

// ---- rate limits ----------------------------------------------------------------------------

/// A mint's two windows: 10 a minute, 100 an hour.
fn minute_and_hour() -> (RateWindow, RateWindow) {
    let window = |seconds, limit| RateWindow { seconds, limit };
    (window(60, 10), window(3600, 100))
}

#[tokio::test]
async fn uses_are_counted_per_fixed_window() {
    let f = Fixture::new().await;
    let (minute, hour) = minute_and_hour();
    let counts = tx(&f.store, move |t| {
        let empty = t.window_count("a", minute, 120)?;
        for now in [120, 150, 179] {
            t.count_use("a", minute, now)?;
            t.count_use("a", hour, now)?;
        }
        t.count_use("b", minute, 130)?;
        Ok([
            empty,
            t.window_count("a", minute, 179)?,
            t.window_count("a", hour, 179)?,
            t.window_count("b", minute, 179)?,
            // 180 starts the next minute: the count restarts.
            t.window_count("a", minute, 180)?,
            t.window_count("a", hour, 180)?,
        ])
    })
    .await;
    assert_eq!(counts, [0, 3, 3, 1, 0, 3]);

    let later = tx(&f.store, move |t| {
        t.count_use("a", minute, 185)?;
        Ok([
            t.window_count("a", minute, 185)?,
            // The old window's count is gone, not added to.
            t.window_count("a", minute, 179)?,
            t.window_count("a", minute, 239)?,
            t.window_count("a", minute, 240)?,
        ])
    })
    .await;
    assert_eq!(later, [1, 0, 1, 0]);
}

/// A key's two windows counted together, as a mint counts them, whether both rows exist, one
/// (the key was counted in one window before) or none, and across a new minute.
#[tokio::test]
async fn a_keys_two_windows_are_counted_whichever_rows_exist() {
    let f = Fixture::new().await;
    let (minute, hour) = minute_and_hour();
    let pair = move |key: &str| vec![(key.to_owned(), minute), (key.to_owned(), hour)];
    let counts = tx(&f.store, move |t| {
        // Only the minute row of b, only the hour row of c, before their pairs.
        t.count_uses(&pair("b")[..1], 120)?;
        t.count_uses(&pair("c")[1..], 120)?;
        for key in ["a", "b", "c"] {
            t.count_uses(&pair(key), 130)?;
        }
        let same_minute = [
            t.window_counts(&pair("a"), 130)?,
            t.window_counts(&pair("b"), 130)?,
            t.window_counts(&pair("c"), 130)?,
        ];
        // A new minute restarts the minute row and goes on counting the hour row.
        t.count_uses(&pair("a"), 190)?;
        t.count_uses(&pair("a"), 191)?;
        Ok((same_minute, t.window_counts(&pair("a"), 191)?))
    })
    .await;
    assert_eq!(counts.0, [vec![1, 1], vec![2, 1], vec![1, 2]]);
    assert_eq!(counts.1, [2, 3]);
}

#[tokio::test]
async fn several_buckets_are_counted_and_read_in_one_call_in_order() {
    let f = Fixture::new().await;
    let (minute, hour) = minute_and_hour();
    let buckets = vec![
        ("email:x".to_owned(), minute),
        ("ip:1".to_owned(), minute),
        ("email:x".to_owned(), hour),
        // Two windows of one key side by side, as a mint counts them.
        ("actor:a".to_owned(), minute),
        ("actor:a".to_owned(), hour),
    ];
    let read = buckets.clone();
    let counts = tx(&f.store, move |t| {
        let empty = t.window_counts(&buckets, 120)?;
        t.count_uses(&buckets, 120)?;
        t.count_uses(&buckets[1..], 130)?;
        t.count_uses(&[], 130)?;
        Ok((
            empty,
            t.window_counts(&read, 130)?,
            t.window_counts(&read, 180)?,
        ))
    })
    .await;
    assert_eq!(counts.0, [0, 0, 0, 0, 0]);
    assert_eq!(counts.1, [1, 2, 2, 2, 2], "each bucket in the order asked");
    assert_eq!(
        counts.2,
        [0, 0, 2, 0, 2],
        "a new minute restarts only the minute windows"
    );
    assert!(tx(&f.store, |t| t.window_counts(&[], 0)).await.is_empty());
}

/// Counts in many commits (more than SQLite's journal holds before it folds the windows into
/// their rows), some in works that fail, some in a fresh window: after a reopen each window
/// holds exactly the uses of the works that committed.
#[tokio::test]
async fn counted_uses_survive_reopens_and_failed_works_count_none() {
    let mut f = Fixture::new().await;
    let (minute, hour) = minute_and_hour();
    let pair = move |key: &str| vec![(key.to_owned(), minute), (key.to_owned(), hour)];
    let failing = || StoreError::Database("the work fails after counting".into());
    for i in 0..300_i64 {
        let (a, b) = (pair("a"), pair(&format!("b{}", i % 7)));
        // 0..120 in the first minute, 120..300 in the next one.
        let now = if i < 120 { 60 } else { 120 };
        // c only once, early: its count must outlive the journal row that held it.
        let c = if i == 5 { pair("c") } else { vec![] };
        tx(&f.store, move |t| {
            t.count_uses(&a, now)?;
            t.count_uses(&b, now)?;
            t.count_uses(&c, now)
        })
        .await;
        if i % 50 == 0 {
            let a = pair("a");
            let failed = f
                .store
                .transact(move |t| {
                    t.count_uses(&a, now)?;
                    Err::<(), _>(failing())
                })
                .await;
            assert!(failed.is_err());
        }
    }
    // Concurrent works share batches: the failing ones among them count nothing either.
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = f.store.clone();
        let a = pair("a");
        tasks.push(tokio::spawn(async move {
            store
                .transact(move |t| {
                    t.count_uses(&a, 150)?;
                    if i % 4 == 0 { Err(failing()) } else { Ok(()) }
                })
                .await
                .is_ok()
        }));
    }
    let mut committed = 0;
    for task in tasks {
        committed += u64::from(task.await.unwrap());
    }
    assert_eq!(committed, 48);
    let read = |store: Arc<dyn Store>, key: &str| {
        let keys = pair(key);
        async move { tx(&store, move |t| t.window_counts(&keys, 150)).await }
    };
    let before = [
        read(f.store.clone(), "a").await,
        read(f.store.clone(), "b3").await,
        read(f.store.clone(), "c").await,
    ];
    assert_eq!(before[0], [180 + 48, 300 + 48]);
    assert_eq!(before[1], [26, 43], "b3: i = 3, 10, .. below 300");
    assert_eq!(before[2], [0, 1], "c: in the hour, not in this minute");
    let url = f.url.clone();
    f.store = agentkeys_store::open(&url).await.unwrap();
    let after = [
        read(f.store.clone(), "a").await,
        read(f.store.clone(), "b3").await,
        read(f.store.clone(), "c").await,
    ];
    assert_eq!(after, before, "after a reopen");
}

/// Two stores on one database, as two broker processes on one file or one PostgreSQL: each
/// window counts the uses of both, whichever counted last.
#[tokio::test]
async fn two_stores_on_one_database_count_together() {
    let f = Fixture::new().await;
    let other = agentkeys_store::open(&f.url).await.unwrap();
    let (minute, _) = minute_and_hour();
    let bucket = vec![("shared".to_owned(), minute)];
    for (i, store) in [&f.store, &other, &other, &f.store, &other]
        .into_iter()
        .enumerate()
    {
        let b = bucket.clone();
        let counts = tx(store, move |t| {
            let before = t.window_counts(&b, 60)?;
            t.count_uses(&b, 60)?;
            Ok(before)
        })
        .await;
        assert_eq!(counts, [i as u64], "use {i} sees every use before it");
    }
    let b = bucket.clone();
    assert_eq!(tx(&f.store, move |t| t.window_counts(&b, 60)).await, [5]);
}

// ---- housekeeping ---------------------------------------------------------------------------

#[tokio::test]
async fn purge_removes_only_expired_rows_and_never_audit() {
    let f = Fixture::new().await;
    let m = omni("m");
    let mm = m.clone();
    tx(&f.store, move |t| {
        t.insert_challenge(&challenge("old", 10))?;
        t.insert_challenge(&challenge("edge", 100))?;
        t.insert_challenge(&challenge("new", 1000))?;
        t.insert_pairing(&pairing("old", "OLD", 10))?;
        t.insert_pairing(&pairing("new", "NEW", 1000))?;
        t.insert_login(&login("old", 10))?;
        t.insert_login(&login("new", 1000))?;
        t.insert_session(&session("old", &mm, 10))?;
        t.insert_session(&session("grace", &mm, 60))?;
        t.insert_session(&session("new", &mm, 1000))?;
        t.append(&event(AuditKind::SignInWallet, 1))?;
        Ok(())
    })
    .await;
    // Requests that expired before 100 go; sessions keep a grace period (cutoff 50).
    assert_eq!(tx(&f.store, |t| t.purge_expired(100, 50)).await, 4);
    let s = f.store.as_ref();
    assert!(s.pairing("old").await.unwrap().is_none());
    assert!(s.pairing("new").await.unwrap().is_some());
    assert!(s.login(LoginKey::IdHash("old")).await.unwrap().is_none());
    assert!(s.login(LoginKey::IdHash("new")).await.unwrap().is_some());
    assert!(s.session("old").await.unwrap().is_none());
    assert!(s.session("grace").await.unwrap().is_some());
    assert!(s.session("new").await.unwrap().is_some());
    let taken = tx(&f.store, |t| {
        Ok([
            t.take_challenge("old")?.is_some(),
            t.take_challenge("edge")?.is_some(),
            t.take_challenge("new")?.is_some(),
        ])
    })
    .await;
    assert_eq!(
        taken,
        [false, true, true],
        "expired before the cutoff, not at it"
    );
    assert_eq!(tx(&f.store, |t| t.purge_expired(100, 100)).await, 1);
    assert!(s.session("grace").await.unwrap().is_none());
    assert_eq!(verify_chain(s).await, 1, "audit events are never purged");
}

// ---- audit ----------------------------------------------------------------------------------

#[tokio::test]
async fn audit_events_page_by_seq() {
    let f = Fixture::new().await;
    let seqs = tx(&f.store, |t| {
        (0..5)
            .map(|n| t.append(&event(AuditKind::GrantCreated, n)))
            .collect::<Result<Vec<_>>>()
    })
    .await;
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let s = f.store.as_ref();
    let page = |after, limit| async move {
        s.audit_events(after, limit)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(page(0, 2).await, [1, 2]);
    assert_eq!(page(2, 2).await, [3, 4]);
    assert_eq!(page(4, 2).await, [5]);
    assert!(page(5, 2).await.is_empty());
    assert!(page(u64::MAX, 2).await.is_empty());
    let stored = &s.audit_events(0, 1).await.unwrap()[0];
    let written = event(AuditKind::GrantCreated, 0);
    assert_eq!(
        (
            stored.time,
            stored.kind.as_str(),
            &stored.actor,
            &stored.master,
            stored.outcome.as_str(),
            &stored.details
        ),
        (
            written.time,
            written.kind.as_str(),
            &written.actor,
            &written.master,
            written.outcome.as_str(),
            &written.details
        )
    );
    assert_eq!(verify_chain(s).await, 5);
}

/// Details are stored as the JSON the hash was computed from when there is one, else as
/// serde_json writes them: either way they read back as written and the chain verifies.
#[tokio::test]
async fn audit_details_of_every_shape_read_back_and_verify() {
    let f = Fixture::new().await;
    let shapes = [
        json!({"jti": "j", "aud": "sts", "exp": 1_700_000_900, "role_arn": null, "grant": ["g"]}),
        // Keys UTF-8 and UTF-16 order differently; escapes; nesting.
        json!({"\u{e000}": 1, "\u{10000}": {"b": [true, false], "a": "\u{1}\n\"é€"}, "z": -9_007_199_254_740_992i64}),
        // Outside the directly written domain: floats, integers beyond 2^53.
        json!({"f": 0.1, "one": 1.0, "big": 9_007_199_254_740_993u64, "neg": -1e21}),
        json!("a bare string"),
    ];
    let written: Vec<NewAuditEvent> = shapes
        .iter()
        .enumerate()
        .map(|(n, details)| NewAuditEvent {
            details: details.clone(),
            ..event(AuditKind::Mint, n as i64)
        })
        .collect();
    let to_write = written.clone();
    tx(&f.store, move |t| {
        to_write
            .iter()
            .map(|e| t.append(e))
            .collect::<Result<Vec<_>>>()
    })
    .await;
    let stored: Vec<_> = f.store.audit_events(0, 10).await.unwrap();
    let stored: Vec<_> = stored.into_iter().map(|e| e.details).collect();
    assert_eq!(stored, shapes);
    assert_eq!(verify_chain(f.store.as_ref()).await, shapes.len() as u64);
}

/// A master's first event in a stretch of the log, appended by a work that then fails, takes
/// its index entry with it; the master's next event there must write the entry again, or the
/// listing would miss it (SQLite's writer remembers which masters it has recorded).
#[tokio::test]
async fn a_masters_event_after_a_rolled_back_one_is_listed() {
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    let mastered = |master: &str, n| NewAuditEvent {
        master: Some(master.into()),
        ..event(AuditKind::Mint, n)
    };
    let (first, kept, later) = (mastered("m", 1), mastered("m", 2), mastered("m", 3));
    let failed = f
        .store
        .transact(move |t| {
            t.append(&first)?;
            Err::<(), _>(StoreError::Database("the work fails".into()))
        })
        .await;
    assert!(failed.is_err());
    // Another master's event in between, so the log is not empty.
    s.append_audit(mastered("other", 4)).await.unwrap();
    s.append_audit(kept).await.unwrap();
    s.append_audit(later).await.unwrap();
    let all = || AuditQuery {
        limit: 100,
        ..AuditQuery::default()
    };
    assert_eq!(listed(s, "m", all()).await, [2, 3]);
    assert_eq!(listed(s, "other", all()).await, [1]);
}

#[tokio::test]
async fn a_masters_audit_is_its_own_events_filtered_and_paged_oldest_first() {
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    let ev = |kind: AuditKind, actor: &str, master: Option<&str>, n: i64| NewAuditEvent {
        time: 1_000 + n,
        kind,
        actor: Some(actor.into()),
        master: master.map(str::to_owned),
        outcome: Outcome::Ok,
        details: json!({ "n": n }),
    };
    // m1 and its agent a1, another master m2, and an event with no master.
    let plan = [
        (AuditKind::SignInWallet, "m1", Some("m1")),
        (AuditKind::SignInWallet, "m2", Some("m2")),
        (AuditKind::Mint, "a1", Some("m1")),
        (AuditKind::Mint, "m1", Some("m1")),
        (AuditKind::SignInWallet, "x", None),
        (AuditKind::Mint, "a1", Some("m1")),
        (AuditKind::Mint, "m2", Some("m2")),
        (AuditKind::AgentSuspended, "m1", Some("m1")),
    ];
    for (n, (kind, actor, master)) in plan.iter().enumerate() {
        s.append_audit(ev(*kind, actor, *master, n as i64))
            .await
            .unwrap();
    }
    let q = |after_seq: u64, limit: u32| AuditQuery {
        after_seq,
        limit,
        ..Default::default()
    };

    let all = s.audit_for_master("m1", q(0, 100)).await.unwrap().events;
    assert!(all.iter().all(|e| e.master.as_deref() == Some("m1")));
    let all: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(all, [1, 3, 4, 6, 8], "oldest first, only m1's");
    assert_eq!(listed(s, "m2", q(0, 100)).await, [2, 7]);
    assert!(listed(s, "nobody", q(0, 100)).await.is_empty());

    // Paging by seq cursor.
    assert_eq!(listed(s, "m1", q(0, 2)).await, [1, 3]);
    assert_eq!(listed(s, "m1", q(3, 2)).await, [4, 6]);
    assert_eq!(listed(s, "m1", q(6, 2)).await, [8]);
    assert!(listed(s, "m1", q(8, 2)).await.is_empty());
    assert!(listed(s, "m1", q(u64::MAX, 2)).await.is_empty());

    // Filters.
    let filtered = |kind: Option<&str>, actor: Option<&str>, since, until| AuditQuery {
        after_seq: 0,
        limit: 100,
        kind: kind.map(str::to_owned),
        actor: actor.map(str::to_owned),
        since,
        until,
    };
    assert_eq!(
        listed(s, "m1", filtered(Some("mint"), None, None, None)).await,
        [3, 4, 6]
    );
    assert_eq!(
        listed(s, "m1", filtered(Some("mint"), Some("a1"), None, None)).await,
        [3, 6]
    );
    // since inclusive, until exclusive (times are 1000 + index).
    assert_eq!(
        listed(s, "m1", filtered(None, None, Some(1_003), Some(1_007))).await,
        [4, 6]
    );
    // Another master's agent filter finds nothing of m1's.
    assert!(
        listed(s, "m2", filtered(None, Some("a1"), None, None))
            .await
            .is_empty()
    );
}

/// A listing over a log of thousands of events, where masters differ in how their events are
/// spread: one every few hundred events, one on most events, one only in a burst in the middle,
/// one only either side of a multiple of 1,024.
/// Paged with small limits, with and without a filter, each master gets exactly its events,
/// in seq order, from any cursor (SQLite finds them through a coarse per-block index).
#[tokio::test]
async fn a_masters_listing_pages_through_a_long_log_whatever_its_spread() {
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    const EVENTS: u64 = 4_500;
    // Seq n + 1 is the plan's event n; "edges" has the seqs either side of 1,024 and 3,072.
    let master_of = |n: u64| -> Option<&'static str> {
        if [1_022, 1_023, 1_024, 3_070, 3_071].contains(&n) {
            Some("edges")
        } else if n % 677 == 5 {
            Some("sparse")
        } else if (2_000..2_100).contains(&n) {
            Some("burst")
        } else if n % 10 == 3 {
            None
        } else {
            Some("dense")
        }
    };
    let plan: Vec<NewAuditEvent> = (0..EVENTS)
        .map(|n| NewAuditEvent {
            time: 1_000 + n as i64,
            kind: if n % 3 == 0 {
                AuditKind::SignInWallet
            } else {
                AuditKind::Mint
            },
            actor: Some("a".into()),
            master: master_of(n).map(str::to_owned),
            outcome: Outcome::Ok,
            details: json!({ "n": n }),
        })
        .collect();
    for chunk in plan.chunks(750) {
        let chunk = chunk.to_vec();
        tx(&f.store, move |t| {
            for e in &chunk {
                t.append(e)?;
            }
            Ok(())
        })
        .await;
    }
    let expected = |master: &str, kind: Option<AuditKind>, after: u64| -> Vec<u64> {
        (0..EVENTS)
            .filter(|&n| master_of(n) == Some(master))
            .filter(|&n| kind.is_none_or(|k| plan[n as usize].kind == k))
            .map(|n| n + 1)
            .filter(|&seq| seq > after)
            .collect()
    };
    for master in ["sparse", "dense", "burst", "edges", "nobody"] {
        for kind in [None, Some(AuditKind::SignInWallet)] {
            for (start, limit) in [(0, 7), (0, 1_000), (1_023, 1), (2_050, 3), (4_400, 50)] {
                let mut listed = Vec::new();
                let mut after = start;
                loop {
                    let query = AuditQuery {
                        after_seq: after,
                        limit,
                        kind: kind.map(|k| k.as_str().to_owned()),
                        ..Default::default()
                    };
                    let page = s.audit_for_master(master, query).await.unwrap();
                    let events = &page.events;
                    assert!(events.len() <= limit as usize);
                    assert!(events.iter().all(|e| e.master.as_deref() == Some(master)));
                    listed.extend(events.iter().map(|e| e.seq));
                    // Where the store bounded its search, or after the last event listed.
                    let next = match (page.searched_to, events.last()) {
                        (Some(to), _) => to,
                        (None, Some(last)) => last.seq,
                        (None, None) => break,
                    };
                    assert!(next > after, "{master}: the cursor stays at {after}");
                    after = next;
                    if listed.len() > EVENTS as usize {
                        panic!("{master}: the listing does not end");
                    }
                }
                assert_eq!(
                    listed,
                    expected(master, kind, start),
                    "{master}, kind {kind:?}, from {start} by {limit}"
                );
            }
        }
    }
}

// ---- transactions ---------------------------------------------------------------------------

#[tokio::test]
async fn a_transaction_that_fails_writes_nothing() {
    let f = Fixture::new().await;
    let m = omni("m");
    let mm = m.clone();
    let window = RateWindow {
        seconds: 60,
        limit: 5,
    };
    let err = f
        .store
        .transact(move |t| -> Result<()> {
            t.insert_challenge(&challenge("c", 100))?;
            t.insert_session(&session("s", &mm, 100))?;
            t.count_use("bucket", window, 10)?;
            t.append(&event(AuditKind::SignInWallet, 1))?;
            Err(StoreError::Conflict("the broker said no".into()))
        })
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict(msg) => assert_eq!(msg, "the broker said no", "its own error"),
        other => panic!("{other:?}"),
    }
    assert!(f.store.session("s").await.unwrap().is_none());
    assert!(all_events(f.store.as_ref()).await.is_empty());
    let (challenge, count, seq) = tx(&f.store, move |t| {
        Ok((
            t.take_challenge("c")?,
            t.window_count("bucket", window, 10)?,
            t.append(&event(AuditKind::GrantRevoked, 2))?,
        ))
    })
    .await;
    assert_eq!((challenge, count), (None, 0));
    assert_eq!(seq, 1, "the failed work's event took no place in the chain");
}

#[tokio::test]
async fn a_transaction_that_panics_writes_nothing_and_the_writer_goes_on() {
    let f = Fixture::new().await;
    let err = f
        .store
        .transact(|t| -> Result<()> {
            t.append(&event(AuditKind::AgentRemoved, 1))?;
            t.insert_challenge(&challenge("c", 100))?;
            panic!("a bug in the broker");
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    assert!(all_events(f.store.as_ref()).await.is_empty());
    let (seq, taken) = tx(&f.store, |t| {
        Ok((
            t.append(&event(AuditKind::AgentResumed, 2))?,
            t.take_challenge("c")?,
        ))
    })
    .await;
    assert_eq!((seq, taken), (1, None));
    assert_eq!(verify_chain(f.store.as_ref()).await, 1);
}

#[tokio::test]
async fn a_failing_work_fails_alone_among_concurrent_ones() {
    let f = Fixture::new().await;
    tx(&f.store, |t| t.insert_challenge(&challenge("dup", 100))).await;
    // Queued together, these share commits; every other one fails after writing.
    let mut tasks = Vec::new();
    for i in 0..64i64 {
        let store = f.store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .transact(move |t| {
                    t.append(&event(AuditKind::SessionLogout, i))?;
                    match i % 4 {
                        0 => t.insert_challenge(&challenge("dup", 100)),
                        1 => Err(StoreError::Conflict("refused".into())),
                        _ => t.insert_challenge(&challenge(&format!("c{i}"), 100)),
                    }
                })
                .await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        match i % 4 {
            0 | 1 => assert_conflict(result),
            _ => result.unwrap(),
        }
    }
    let events = all_events(f.store.as_ref()).await;
    assert_eq!(events.len(), 32);
    assert!(
        events
            .iter()
            .all(|e| e.details["n"].as_i64().unwrap() % 4 >= 2)
    );
    assert_eq!(verify_chain(f.store.as_ref()).await, 32, "gapless");
    let taken = tx(&f.store, |t| {
        let mut taken = 0;
        for i in 0..64 {
            taken += usize::from(t.take_challenge(&format!("c{i}"))?.is_some());
        }
        Ok(taken)
    })
    .await;
    assert_eq!(taken, 32);
}

/// Works queued together share one commit: those that fail, whether after queued writes only
/// (a count, an event) or after a write already sent (an insert), leave nothing behind, and
/// the others in the same batch commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_works_leave_nothing_and_the_rest_of_their_batch_commits() {
    let f = Fixture::new().await;
    let window = RateWindow {
        seconds: 3600,
        limit: 0,
    };
    let who = omni("batch");
    let mut tasks = Vec::new();
    for i in 0..96i64 {
        let store = f.store.clone();
        let who = who.clone();
        tasks.push(tokio::spawn(async move {
            let result = store
                .transact(move |t| {
                    t.count_use("batch", window, 0)?;
                    t.append(&event(AuditKind::Mint, i))?;
                    match i % 3 {
                        0 => Ok(i),
                        1 => Err(StoreError::Conflict("refused after counting".into())),
                        _ => {
                            t.insert_session(&session(&format!("s{i}"), &who, i64::MAX))?;
                            Err(StoreError::Conflict("refused after inserting".into()))
                        }
                    }
                })
                .await;
            (i, result)
        }));
    }
    for task in tasks {
        let (i, result) = task.await.unwrap();
        match i % 3 {
            0 => assert_eq!(result.unwrap(), i),
            _ => assert_conflict(result),
        }
    }
    let counted = tx(&f.store, move |t| t.window_count("batch", window, 0)).await;
    assert_eq!(counted, 32, "only the works that succeeded were counted");
    assert_eq!(verify_chain(f.store.as_ref()).await, 32);
    let mut kept: Vec<i64> = all_events(f.store.as_ref())
        .await
        .iter()
        .map(|e| e.details["n"].as_i64().unwrap())
        .collect();
    kept.sort_unstable();
    assert_eq!(kept, (0..96).step_by(3).collect::<Vec<i64>>());
    assert!(f.store.sessions_of(&who, 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_transactions_form_one_gapless_chain() {
    let f = Fixture::new().await;
    let mut tasks = Vec::new();
    for task in 0..64i64 {
        let store = f.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..20 {
                let n = task * 100 + i;
                seqs.push(
                    store
                        .transact(move |t| {
                            t.count_use(
                                "shared",
                                RateWindow {
                                    seconds: 3600,
                                    limit: 0,
                                },
                                0,
                            )?;
                            t.append(&event(AuditKind::Mint, n))
                        })
                        .await
                        .unwrap(),
                );
            }
            seqs
        }));
    }
    let mut all: Vec<u64> = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "a task's own writes stay in order"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=1280).collect::<Vec<u64>>());
    assert_eq!(verify_chain(f.store.as_ref()).await, 1280);
    let count = tx(&f.store, |t| {
        t.window_count(
            "shared",
            RateWindow {
                seconds: 3600,
                limit: 0,
            },
            0,
        )
    })
    .await;
    assert_eq!(count, 1280, "no lost update");
}

#[tokio::test]
async fn a_write_is_visible_to_reads_once_transact_returns() {
    let f = Fixture::new().await;
    let m = omni("m");
    for i in 0..50 {
        let hash = format!("s{i}");
        let s = session(&hash, &m, 100);
        let seq = tx(&f.store, move |t| {
            t.insert_session(&s)?;
            t.append(&event(AuditKind::SignInWallet, i))
        })
        .await;
        assert!(f.store.session(&hash).await.unwrap().is_some());
        assert_eq!(f.store.audit_events(seq - 1, 10).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let mut f = Fixture::new().await;
    let m = omni("m");
    let a = agent(&m, "bot");
    let g = grant("g", &a, Some(2), 100);
    let k = key("k", 1);
    let identity = Identity {
        identity_type: "email".into(),
        identity_value: "a@example.com".into(),
        master: m.clone(),
        master_wallet: "0xabc".into(),
        linked_at: 1,
    };
    let window = RateWindow {
        seconds: 60,
        limit: 5,
    };
    let rows = (
        session("h", &m, 99),
        a.clone(),
        g.clone(),
        k.clone(),
        identity.clone(),
    );
    tx(&f.store, move |t| {
        t.insert_session(&rows.0)?;
        t.insert_agent(&rows.1)?;
        t.advance_agent_proof(&rows.1.omni, 500)?;
        t.insert_grant(&rows.2)?;
        t.use_grant("g", &rows.1.omni, 5)?;
        t.insert_signing_key(&rows.3)?;
        t.insert_identity(&rows.4)?;
        t.insert_pairing(&pairing("p", "CODE", 100))?;
        t.insert_login(&login("l", 100))?;
        t.count_use("bucket", window, 10)?;
        t.append(&event(AuditKind::KeyGenerate, 1))?;
        t.append(&event(AuditKind::KeyRotate, 2))?;
        Ok(())
    })
    .await;
    let url = f.url.clone();
    f.store = agentkeys_store::open(&url).await.unwrap();
    let s = f.store.as_ref();

    assert_eq!(s.session("h").await.unwrap(), Some(session("h", &m, 99)));
    assert_eq!(s.agent(&a.omni).await.unwrap(), Some(a.clone()));
    assert_eq!(s.grant("g").await.unwrap(), Some(Grant { uses: 1, ..g }));
    assert_eq!(s.signing_keys().await.unwrap(), [k]);
    assert_eq!(s.identities_of(&m).await.unwrap(), [identity]);
    assert_eq!(
        s.pairing("p").await.unwrap(),
        Some(pairing("p", "CODE", 100))
    );
    assert_eq!(
        s.login(LoginKey::IdHash("l")).await.unwrap(),
        Some(login("l", 100))
    );
    let ao = a.omni.clone();
    let (count, stale, seq) = tx(&f.store, move |t| {
        Ok((
            t.window_count("bucket", window, 10)?,
            t.advance_agent_proof(&ao, 500)?,
            t.append(&event(AuditKind::AgentResumed, 3))?,
        ))
    })
    .await;
    assert_eq!((count, stale, seq), (1, false, 3));
    assert_eq!(
        verify_chain(f.store.as_ref()).await,
        3,
        "the chain continues from the stored head"
    );
}

#[tokio::test]
async fn two_stores_on_one_database_extend_the_same_chain() {
    // The broker and the `keys` command (or two broker replicas) both write: each store must
    // read the head inside its own write transaction.
    let f = Fixture::new().await;
    let other = agentkeys_store::open(&f.url).await.unwrap();
    let append_50 = |store: Arc<dyn Store>, kind: AuditKind| async move {
        for i in 0..50 {
            store.append_audit(event(kind, i)).await.unwrap();
        }
    };
    tokio::join!(
        append_50(f.store.clone(), AuditKind::KeyGenerate),
        append_50(other.clone(), AuditKind::KeyRotate)
    );
    assert_eq!(verify_chain(f.store.as_ref()).await, 100);
    assert_eq!(verify_chain(other.as_ref()).await, 100);
}

#[tokio::test]
async fn ping_answers() {
    let f = Fixture::new().await;
    f.store.ping().await.unwrap();
}

#[tokio::test]
async fn an_unknown_url_is_refused() {
    for url in ["mysql://localhost/x", "file:///tmp/x.db", "sqlite://"] {
        match agentkeys_store::open(url).await {
            Err(StoreError::UnsupportedUrl(u)) => assert_eq!(u, url),
            Err(other) => panic!("{url}: {other:?}"),
            Ok(_) => panic!("{url} opened"),
        }
    }
}

// ---- SQLite only ----------------------------------------------------------------------------

#[cfg(unix)]
#[tokio::test]
async fn the_sqlite_file_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new().await;
    let Some(path) = f.sqlite_path() else { return };
    tx(&f.store, |t| t.append(&event(AuditKind::GrantCreated, 1))).await;
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    for file in [path, wal.into()] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
}

#[tokio::test]
async fn a_stored_value_that_does_not_parse_is_an_error_not_a_panic() {
    let f = Fixture::new().await;
    let Some(path) = f.sqlite_path() else { return };
    let m = omni("m");
    tx(&f.store, move |t| t.insert_session(&session("h", &m, 100))).await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    // Past the CHECK on `kind`, as a damaged file or another writer could be.
    conn.pragma_update(None, "ignore_check_constraints", true)
        .unwrap();
    conn.execute(
        "UPDATE sessions SET omni = 'not an omni', kind = 'alien' WHERE token_hash = 'h'",
        [],
    )
    .unwrap();
    drop(conn);
    let err = f.store.session("h").await.unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    let err = f
        .store
        .transact(|t| t.session_standing("h"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    // The writer is still there.
    tx(&f.store, |t| t.append(&event(AuditKind::GrantCreated, 1))).await;
}

#[tokio::test]
async fn a_database_from_a_newer_binary_is_refused() {
    let f = Fixture::new().await;
    let Some(path) = f.sqlite_path() else { return };
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 999).unwrap();
    drop(conn);
    match agentkeys_store::open(&f.url).await {
        Err(StoreError::Migrate(msg)) => assert!(msg.contains("newer"), "{msg}"),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("opened a database of schema version 999"),
    }
}

#[tokio::test]
async fn the_fixture_runs_the_backend_it_was_asked_for() {
    let f = Fixture::new().await;
    let wanted = if std::env::var("AGENTKEYS_TEST_DATABASE").is_ok_and(|v| !v.is_empty()) {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    assert_eq!(f.backend, wanted);
    assert_eq!(f.sqlite_path().is_some(), f.backend == Backend::Sqlite);
}
