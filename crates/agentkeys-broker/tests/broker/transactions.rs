//! The broker's decisions (`gate`, `agents`, `sign_in`, `session`) run against a real store,
//! each inside `store.transact`, as the routes call them: what each decides, what it writes
//! (audit events included) and that it writes nothing when it refuses. SQLite in a temp dir,
//! or a fresh PostgreSQL schema with `AGENTKEYS_TEST_DATABASE=postgres://…`.

use std::sync::Arc;

use agentkeys_broker::access::{self, OpenOutcome, PendingRequest};
use agentkeys_broker::agents::{self, ApproveOutcome, ClaimOutcome, RenewOutcome};
use agentkeys_broker::gate::{Gate, GateOutcome, GrantUse, LiveCheck, NotLive};
use agentkeys_broker::session;
use agentkeys_broker::session::SessionSlot;
use agentkeys_broker::sign_in::{self, LoginClaim};
use agentkeys_store::audit::ChainVerifier;
use agentkeys_store::{
    AccessRequest, ActorKind, AgentStatus, AuditKind, Grant, IdentityRef, LoginKey, LoginRequest,
    NewAuditEvent, Outcome, PairingRequest, RateWindow, Session, Store, StoreError,
};
use agentkeys_types::OmniAccount;
use serde_json::json;

struct Fixture {
    store: Arc<dyn Store>,
    /// Holds the SQLite file.
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = match crate::app::test_database().await {
            Some(url) => url,
            None => format!("sqlite://{}", dir.path().join("store.db").display()),
        };
        let store = agentkeys_store::open(&url).await.unwrap();
        Self { store, _dir: dir }
    }
}

/// A stable test omni for a name.
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

/// The refusal of `kind`, as the broker writes it: same kind, outcome `denied`.
fn denied(kind: AuditKind, n: i64) -> NewAuditEvent {
    NewAuditEvent {
        outcome: Outcome::Denied,
        ..event(kind, n)
    }
}

/// A master's session of `omni("omni")`.
fn session(hash: &str, expires_at: i64) -> Session {
    Session {
        token_hash: hash.into(),
        kind: ActorKind::Master,
        omni: omni("omni"),
        wallet: Some("0xabc".into()),
        master: omni("omni"),
        created_at: 0,
        expires_at,
        revoked_at: None,
        via: None,
        agent_status: None,
    }
}

fn slot(hash: &str) -> SessionSlot {
    SessionSlot {
        token_hash: hash.into(),
        created_at: 0,
        expires_at: 10_000,
    }
}

fn pairing(id: &str, code: &str, expires_at: i64) -> PairingRequest {
    PairingRequest {
        id: id.into(),
        code: code.into(),
        device_address: "0xdevice".into(),
        created_at: 0,
        expires_at,
        last_proof_ms: 0,
        agent: None,
        claimed_at: None,
    }
}

fn login(id_hash: &str, link_to: Option<(&OmniAccount, &str)>) -> LoginRequest {
    LoginRequest {
        id_hash: id_hash.into(),
        method: "email".into(),
        subject: "alice@example.com".into(),
        link_token_hash: link_to.is_none().then(|| format!("link-{id_hash}")),
        state: None,
        oidc_nonce: None,
        oidc_verifier: None,
        link_to: link_to.map(|(m, _)| m.clone()),
        link_to_wallet: link_to.map(|(_, w)| w.to_owned()),
        created_at: 0,
        expires_at: 600,
        verified_type: None,
        verified_value: None,
        verified_at: None,
        claimed_at: None,
        client_challenge: Some("challenge".into()),
        code_hash: Some(format!("code-{id_hash}")),
        code_attempts: 0,
        redirect_uri: None,
    }
}

// ---- writes the routes make before a decision -----------------------------------------------

async fn create_session(store: &dyn Store, s: Session, e: NewAuditEvent) -> u64 {
    store
        .transact(move |tx| {
            tx.insert_session(&s)?;
            tx.append(&e)
        })
        .await
        .unwrap()
}

async fn create_pairing(store: &dyn Store, p: PairingRequest, e: NewAuditEvent) {
    store
        .transact(move |tx| {
            tx.insert_pairing(&p)?;
            tx.append(&e)
        })
        .await
        .unwrap();
}

async fn create_login(store: &dyn Store, l: LoginRequest, e: Option<NewAuditEvent>) {
    store
        .transact(move |tx| {
            tx.insert_login(&l)?;
            if let Some(e) = &e {
                tx.append(e)?;
            }
            Ok(())
        })
        .await
        .unwrap();
}

// ---- the decisions, each in a transaction of its own ----------------------------------------

async fn approve(
    store: &dyn Store,
    code: &str,
    master: &OmniAccount,
    label: &str,
    now: i64,
) -> ApproveOutcome {
    let (code, master, label) = (code.to_owned(), master.clone(), label.to_owned());
    let e = event(AuditKind::AgentPaired, now);
    store
        .transact(move |tx| agents::approve(tx, &code, &master, &label, now, &e))
        .await
        .unwrap()
}

async fn claim(store: &dyn Store, id: &str, proof_ms: i64, now: i64, hash: &str) -> ClaimOutcome {
    let (id, slot) = (id.to_owned(), slot(hash));
    let e = event(AuditKind::AgentSessionIssued, proof_ms);
    store
        .transact(move |tx| agents::claim(tx, &id, proof_ms, now, &slot, &e))
        .await
        .unwrap()
}

async fn renew(store: &dyn Store, agent: &OmniAccount, proof_ms: i64, hash: &str) -> RenewOutcome {
    let (agent, slot) = (agent.clone(), slot(hash));
    let e = event(AuditKind::AgentSessionIssued, proof_ms);
    store
        .transact(move |tx| agents::renew(tx, &agent, proof_ms, &slot, &e))
        .await
        .unwrap()
}

async fn set_status(
    store: &dyn Store,
    master: &OmniAccount,
    agent: &OmniAccount,
    status: AgentStatus,
    now: i64,
) -> Option<agentkeys_store::Agent> {
    let (master, agent) = (master.clone(), agent.clone());
    let e = event(AuditKind::AgentSuspended, now);
    store
        .transact(move |tx| agents::set_status(tx, &master, &agent, status, now, &e))
        .await
        .unwrap()
}

async fn revoke(store: &dyn Store, hash: &str, now: i64) -> bool {
    let hash = hash.to_owned();
    let e = event(AuditKind::SessionLogout, now);
    store
        .transact(move |tx| session::revoke(tx, &hash, now, &e))
        .await
        .unwrap()
}

async fn redeem_code(
    store: &dyn Store,
    id_hash: &str,
    code_hash: &str,
    max_attempts: u32,
    now: i64,
    hash: &str,
) -> LoginClaim {
    let (id_hash, code_hash, slot) = (id_hash.to_owned(), code_hash.to_owned(), slot(hash));
    let e = event(AuditKind::SignInWallet, now);
    store
        .transact(move |tx| {
            sign_in::redeem_code(tx, &id_hash, &code_hash, max_attempts, now, &slot, e)
        })
        .await
        .unwrap()
}

async fn redeem_link(store: &dyn Store, link_hash: &str, now: i64, hash: &str) -> LoginClaim {
    let (link_hash, slot) = (link_hash.to_owned(), slot(hash));
    let e = event(AuditKind::SignInWallet, now);
    store
        .transact(move |tx| sign_in::redeem_link(tx, &link_hash, now, &slot, e))
        .await
        .unwrap()
}

async fn verify(store: &dyn Store, id_hash: &str, sub: &str, code_hash: &str, now: i64) -> bool {
    let (id_hash, code_hash) = (id_hash.to_owned(), code_hash.to_owned());
    let identity = IdentityRef {
        identity_type: "oauth2_corp".into(),
        identity_value: sub.into(),
    };
    let e = event(AuditKind::SignInOidcVerified, now);
    store
        .transact(move |tx| sign_in::verify(tx, &id_hash, &identity, &code_hash, now, &e))
        .await
        .unwrap()
}

async fn fail(store: &dyn Store, id_hash: &str, now: i64) -> bool {
    let id_hash = id_hash.to_owned();
    let e = event(AuditKind::SignInOidcVerified, now);
    store
        .transact(move |tx| sign_in::fail(tx, &id_hash, now, &e))
        .await
        .unwrap()
}

async fn unlink(store: &dyn Store, master: &OmniAccount, email: &str, now: i64) -> Option<u64> {
    let master = master.clone();
    let identity = IdentityRef {
        identity_type: "email".into(),
        identity_value: email.into(),
    };
    let e = event(AuditKind::IdentityUnlinked, now);
    store
        .transact(move |tx| sign_in::unlink(tx, &master, &identity, now, e))
        .await
        .unwrap()
}

async fn purge(store: &dyn Store, requests_before: i64, sessions_before: i64) -> u64 {
    store
        .transact(move |tx| tx.purge_expired(requests_before, sessions_before))
        .await
        .unwrap()
}

/// Verifies the whole chain; how many events it holds.
async fn verify_chain(store: &dyn Store) -> u64 {
    let mut v = ChainVerifier::default();
    for e in store.audit_events(0, 1_000_000).await.unwrap() {
        v.check(&e).unwrap();
    }
    v.verified()
}

async fn kinds_and_outcomes(store: &dyn Store) -> Vec<(String, String)> {
    store
        .audit_events(0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.outcome))
        .collect()
}

async fn kinds(store: &dyn Store) -> Vec<String> {
    store
        .audit_events(0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

/// A pending pairing `p1` approved as `master`'s agent `bot`; the agent's omni.
async fn paired_bot(store: &dyn Store, master: &OmniAccount) -> OmniAccount {
    create_pairing(
        store,
        pairing("p1", "ABCDEFGH", 600),
        event(AuditKind::AgentPairingRequested, 1),
    )
    .await;
    let ApproveOutcome::Approved(agent) = approve(store, "ABCDEFGH", master, "bot", 1).await else {
        panic!("not approved")
    };
    agent.omni
}

// ---- sessions -------------------------------------------------------------------------------

#[tokio::test]
async fn sessions_are_stored_with_their_event_and_revoked_once() {
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    assert_eq!(
        create_session(s, session("h1", 1000), event(AuditKind::SignInWallet, 1)).await,
        1
    );
    assert_eq!(s.session("h1").await.unwrap().unwrap(), session("h1", 1000));
    assert!(revoke(s, "h1", 10).await);
    assert!(!revoke(s, "h1", 11).await, "already revoked");
    assert_eq!(s.session("h1").await.unwrap().unwrap().revoked_at, Some(10));
    assert_eq!(
        verify_chain(s).await,
        2,
        "the no-op revocation wrote no event"
    );
    assert!(!revoke(s, "never", 12).await);

    // A duplicate session hash fails, and the event written before it in the same transaction
    // goes with it.
    let (dup, e) = (session("h1", 1000), event(AuditKind::SignInWallet, 4));
    let stored = s
        .transact(move |tx| {
            tx.append(&e)?;
            tx.insert_session(&dup)
        })
        .await;
    assert!(stored.is_err());
    assert_eq!(verify_chain(s).await, 2);
    assert_eq!(s.session("h1").await.unwrap().unwrap().revoked_at, Some(10));
}

#[tokio::test]
async fn revoke_every_session_but_one() {
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    for h in ["a", "b", "c"] {
        create_session(s, session(h, 1000), event(AuditKind::SignInWallet, 1)).await;
    }
    // Another actor's session is not touched.
    create_session(
        s,
        Session {
            omni: omni("other"),
            master: omni("other"),
            ..session("d", 1000)
        },
        event(AuditKind::SignInWallet, 1),
    )
    .await;
    let revoke_all = |keep: Option<&'static str>, now: i64| {
        let e = event(AuditKind::SessionLogoutAll, now);
        async move {
            s.transact(move |tx| session::revoke_all(tx, &omni("omni"), keep, now, &e))
                .await
                .unwrap()
        }
    };
    assert_eq!(s.sessions_of(&omni("omni"), 10).await.unwrap().len(), 3);
    assert_eq!(revoke_all(Some("b"), 10).await, 2);
    let live: Vec<String> = s
        .sessions_of(&omni("omni"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.token_hash)
        .collect();
    assert_eq!(live, ["b"]);
    assert_eq!(s.session("a").await.unwrap().unwrap().revoked_at, Some(10));
    assert_eq!(s.sessions_of(&omni("other"), 10).await.unwrap().len(), 1);
    assert_eq!(verify_chain(s).await, 5, "four sign-ins, one logout_all");

    assert_eq!(revoke_all(Some("b"), 11).await, 0);
    assert_eq!(verify_chain(s).await, 5, "revoking nothing writes no event");
    assert_eq!(revoke_all(None, 12).await, 1);
    assert!(s.sessions_of(&omni("omni"), 12).await.unwrap().is_empty());
}

// ---- pairing and agents ---------------------------------------------------------------------

#[tokio::test]
async fn pairing_goes_pending_approved_claimed_once() {
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    let master = omni("master");
    create_pairing(
        s,
        pairing("p1", "ABCDEFGH", 600),
        event(AuditKind::AgentPairingRequested, 1),
    )
    .await;
    assert_eq!(claim(s, "p1", 1, 10, "s0").await, ClaimOutcome::Pending);
    assert_eq!(
        claim(s, "p1", 1, 10, "s0").await,
        ClaimOutcome::StaleProof,
        "a replayed proof is refused"
    );
    assert!(s.session("s0").await.unwrap().is_none());

    // Wrong code, then the right one; a second approval of the same code finds nothing.
    assert_eq!(
        approve(s, "ZZZZZZZZ", &master, "bot", 20).await,
        ApproveOutcome::UnknownCode
    );
    let ApproveOutcome::Approved(agent) = approve(s, "ABCDEFGH", &master, "bot", 20).await else {
        panic!("not approved")
    };
    assert_eq!(
        (agent.device_address.as_str(), agent.status),
        ("0xdevice", AgentStatus::Active)
    );
    assert_eq!(agent.omni, OmniAccount::for_agent(&master, "bot"));
    assert_eq!(agent.master, master);
    assert_eq!(
        s.pairing("p1").await.unwrap().unwrap().agent,
        Some(agent.omni.clone())
    );
    assert_eq!(
        approve(s, "ABCDEFGH", &master, "bot", 20).await,
        ApproveOutcome::UnknownCode
    );

    let ClaimOutcome::Claimed(a) = claim(s, "p1", 2, 10, "s1").await else {
        panic!("not claimed")
    };
    assert_eq!(a.omni, agent.omni);
    let got = s.session("s1").await.unwrap().unwrap();
    assert_eq!(
        (got.kind, &got.omni, &got.master, got.wallet),
        (ActorKind::Agent, &agent.omni, &master, None)
    );
    assert_eq!(
        claim(s, "p1", 3, 10, "s2").await,
        ClaimOutcome::AlreadyClaimed,
        "the session is handed out once"
    );
    assert!(s.session("s2").await.unwrap().is_none());

    // Labels are never reused for the same master.
    create_pairing(
        s,
        pairing("p2", "HGFEDCBA", 600),
        event(AuditKind::AgentPairingRequested, 3),
    )
    .await;
    assert_eq!(
        approve(s, "HGFEDCBA", &master, "bot", 30).await,
        ApproveOutcome::LabelTaken
    );
    assert_eq!(s.pairing("p2").await.unwrap().unwrap().agent, None);
    assert_eq!(s.agents_of(&master).await.unwrap().len(), 1);
    // ... but another master may use it.
    assert!(matches!(
        approve(s, "HGFEDCBA", &omni("other"), "bot", 30).await,
        ApproveOutcome::Approved(_)
    ));
    assert_eq!(
        kinds(s).await,
        [
            "agent.pairing_requested",
            "agent.paired",
            "agent.session_issued",
            "agent.pairing_requested",
            "agent.paired"
        ]
    );
    assert_eq!(verify_chain(s).await, 5);
}

#[tokio::test]
async fn expired_pairings_are_gone() {
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    let master = omni("m");
    create_pairing(
        s,
        pairing("p1", "ABCDEFGH", 600),
        event(AuditKind::AgentPairingRequested, 1),
    )
    .await;
    assert_eq!(
        approve(s, "ABCDEFGH", &master, "bot", 600).await,
        ApproveOutcome::UnknownCode
    );
    assert_eq!(claim(s, "p1", 5, 600, "s").await, ClaimOutcome::Gone);

    // Approved in time but never collected: the session is not handed out after expiry.
    create_pairing(
        s,
        pairing("p2", "HGFEDCBA", 600),
        event(AuditKind::AgentPairingRequested, 4),
    )
    .await;
    assert!(matches!(
        approve(s, "HGFEDCBA", &master, "bot", 10).await,
        ApproveOutcome::Approved(_)
    ));
    assert_eq!(claim(s, "p2", 6, 600, "s2").await, ClaimOutcome::Gone);
    assert!(s.session("s2").await.unwrap().is_none());
    assert_eq!(
        kinds(s).await,
        [
            "agent.pairing_requested",
            "agent.pairing_requested",
            "agent.paired"
        ]
    );

    assert_eq!(purge(s, 601, 601).await, 2);
    assert!(s.pairing("p1").await.unwrap().is_none());
    assert!(s.pairing("p2").await.unwrap().is_none());
    assert_eq!(verify_chain(s).await, 3, "audit events are never purged");
}

#[tokio::test]
async fn agent_lifecycle_belongs_to_its_master_and_removal_revokes_sessions() {
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    let master = omni("master");
    let bot = paired_bot(s, &master).await;
    assert!(matches!(
        claim(s, "p1", 1, 2, "s1").await,
        ClaimOutcome::Claimed(_)
    ));
    let events = verify_chain(s).await;

    assert!(
        set_status(s, &omni("someone-else"), &bot, AgentStatus::Suspended, 3)
            .await
            .is_none(),
        "another master cannot touch the agent"
    );
    assert_eq!(
        s.agent(&bot).await.unwrap().unwrap().status,
        AgentStatus::Active
    );
    assert_eq!(verify_chain(s).await, events, "the refusal wrote nothing");

    let a = set_status(s, &master, &bot, AgentStatus::Suspended, 3).await;
    assert_eq!(a.unwrap().status, AgentStatus::Suspended);
    assert_eq!(s.agents_of(&master).await.unwrap().len(), 1);
    assert!(
        s.session("s1").await.unwrap().unwrap().revoked_at.is_none(),
        "suspension keeps sessions"
    );

    let a = set_status(s, &master, &bot, AgentStatus::Removed, 5).await;
    assert_eq!(a.unwrap().status, AgentStatus::Removed);
    assert_eq!(s.session("s1").await.unwrap().unwrap().revoked_at, Some(5));
    assert!(
        set_status(s, &master, &bot, AgentStatus::Active, 6)
            .await
            .is_none(),
        "removal is final"
    );
    assert_eq!(
        s.agent(&bot).await.unwrap().unwrap().status,
        AgentStatus::Removed
    );
    assert_eq!(
        verify_chain(s).await,
        events + 2,
        "suspend and remove are audited, the refusals are not"
    );
}

#[tokio::test]
async fn a_paired_agent_gets_new_sessions_only_with_fresh_proofs_while_active() {
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    let master = omni("master");
    let bot = paired_bot(s, &master).await;
    assert!(matches!(
        renew(s, &bot, 100, "s1").await,
        RenewOutcome::Issued(_)
    ));
    let got = s.session("s1").await.unwrap().unwrap();
    assert_eq!(
        (&got.omni, &got.master, got.kind),
        (&bot, &master, ActorKind::Agent)
    );
    assert_eq!(renew(s, &bot, 100, "s2").await, RenewOutcome::StaleProof);
    assert_eq!(renew(s, &bot, 99, "s2").await, RenewOutcome::StaleProof);
    assert!(s.session("s2").await.unwrap().is_none());
    set_status(s, &master, &bot, AgentStatus::Suspended, 3)
        .await
        .unwrap();
    assert!(matches!(
        renew(s, &bot, 101, "s3").await,
        RenewOutcome::NotActive(_)
    ));
    assert!(s.session("s3").await.unwrap().is_none());
    assert_eq!(
        renew(s, &omni("nobody"), 1, "s4").await,
        RenewOutcome::Unknown
    );
    assert_eq!(
        kinds(s).await,
        [
            "agent.pairing_requested",
            "agent.paired",
            "agent.session_issued",
            "agent.suspended"
        ],
        "only the issued session is audited"
    );
}

// ---- email and OIDC sign-in -----------------------------------------------------------------

#[tokio::test]
async fn email_logins_redeem_once_by_code_or_link_and_honour_links() {
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    let wallet_master = omni("wallet-master");
    // An unlinked identity signs in as a master of its own; wrong codes are counted.
    create_login(
        s,
        login("r1", None),
        Some(event(AuditKind::SignInEmailRequested, 1)),
    )
    .await;
    assert_eq!(
        redeem_code(s, "r1", "wrong", 3, 5, "t1").await,
        LoginClaim::WrongCode { attempts_left: 2 }
    );
    assert_eq!(
        s.login(LoginKey::IdHash("r1"))
            .await
            .unwrap()
            .unwrap()
            .code_attempts,
        1
    );
    assert!(s.session("t1").await.unwrap().is_none());
    let LoginClaim::SignedIn(own) = redeem_code(s, "r1", "code-r1", 3, 7, "t1").await else {
        panic!("not signed in")
    };
    assert_eq!(own.omni, OmniAccount::derive("email", "alice@example.com"));
    assert_eq!(own.wallet, None);
    assert_eq!(s.session("t1").await.unwrap().unwrap(), own);
    assert_eq!(
        redeem_code(s, "r1", "code-r1", 3, 8, "t2").await,
        LoginClaim::AlreadyClaimed
    );
    // Its link was for the same request: used up with it.
    assert_eq!(
        redeem_link(s, "link-r1", 8, "t2").await,
        LoginClaim::AlreadyClaimed
    );
    assert!(s.session("t2").await.unwrap().is_none());

    // Too many wrong codes kill a request, even for the right code.
    create_login(s, login("dead", None), None).await;
    for left in [1, 0] {
        assert_eq!(
            redeem_code(s, "dead", "x", 2, 5, "d").await,
            LoginClaim::WrongCode {
                attempts_left: left
            }
        );
    }
    assert_eq!(
        redeem_code(s, "dead", "code-dead", 2, 5, "d").await,
        LoginClaim::Gone
    );
    assert!(s.session("d").await.unwrap().is_none());

    // A wallet master links it; a link request has no link token, only the code completes it.
    create_login(
        s,
        login("r2", Some((&wallet_master, "0xabc"))),
        Some(event(AuditKind::IdentityLinkRequested, 7)),
    )
    .await;
    let LoginClaim::Linked(i) = redeem_code(s, "r2", "code-r2", 3, 10, "unused").await else {
        panic!("not linked")
    };
    assert_eq!(
        (&i.master, i.master_wallet.as_str()),
        (&wallet_master, "0xabc")
    );
    assert!(
        s.session("unused").await.unwrap().is_none(),
        "linking creates no session"
    );
    // Even a link request that had a browser link could not be completed by it.
    create_login(
        s,
        LoginRequest {
            link_token_hash: Some("link-r2b".into()),
            ..login("r2b", Some((&omni("intruder"), "0xbad")))
        },
        None,
    )
    .await;
    assert_eq!(redeem_link(s, "link-r2b", 10, "x").await, LoginClaim::Gone);
    assert!(s.session("x").await.unwrap().is_none());

    // A sign-in by the browser link is the wallet master's, and remembered as via the email.
    create_login(
        s,
        login("r3", None),
        Some(event(AuditKind::SignInEmailRequested, 10)),
    )
    .await;
    let LoginClaim::SignedIn(linked) = redeem_link(s, "link-r3", 12, "t3").await else {
        panic!("not signed in")
    };
    assert_eq!(
        (&linked.omni, linked.wallet.as_deref()),
        (&wallet_master, Some("0xabc"))
    );
    assert_eq!(
        linked.via,
        Some(IdentityRef {
            identity_type: "email".into(),
            identity_value: "alice@example.com".into(),
        })
    );
    // The wallet's own session is not via the email.
    create_session(
        s,
        Session {
            omni: wallet_master.clone(),
            master: wallet_master.clone(),
            ..session("own", 1000)
        },
        event(AuditKind::SignInWallet, 12),
    )
    .await;

    // Another master cannot take it over; the owner can unlink it, which revokes the
    // sessions obtained through it.
    create_login(
        s,
        login("r4", Some((&omni("other-master"), "0xdef"))),
        Some(event(AuditKind::IdentityLinkRequested, 13)),
    )
    .await;
    assert_eq!(
        redeem_code(s, "r4", "code-r4", 3, 15, "x").await,
        LoginClaim::LinkedElsewhere
    );
    assert_eq!(s.identities_of(&wallet_master).await.unwrap().len(), 1);
    assert!(
        s.identities_of(&omni("other-master"))
            .await
            .unwrap()
            .is_empty()
    );
    let before = verify_chain(s).await;
    assert_eq!(
        unlink(s, &omni("other-master"), "alice@example.com", 16).await,
        None
    );
    assert_eq!(
        verify_chain(s).await,
        before,
        "a refused unlink writes nothing"
    );
    assert_eq!(
        unlink(s, &wallet_master, "alice@example.com", 17).await,
        Some(1)
    );
    assert!(s.identities_of(&wallet_master).await.unwrap().is_empty());
    assert_eq!(s.session("t3").await.unwrap().unwrap().revoked_at, Some(17));
    assert!(
        s.session("own")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );
    assert!(
        s.session("t1").await.unwrap().unwrap().revoked_at.is_none(),
        "the email's own master is another actor"
    );
    let last = s.audit_events(0, 1000).await.unwrap().pop().unwrap();
    assert_eq!(last.kind, "identity.unlinked");
    assert_eq!(last.details["sessions_revoked"], 1);

    // Expired requests are gone.
    create_login(
        s,
        login("r5", None),
        Some(event(AuditKind::SignInEmailRequested, 18)),
    )
    .await;
    assert_eq!(
        redeem_code(s, "r5", "code-r5", 3, 600, "t5").await,
        LoginClaim::Gone
    );
    assert_eq!(redeem_link(s, "link-r5", 600, "t5").await, LoginClaim::Gone);
    assert!(s.session("t5").await.unwrap().is_none());
    verify_chain(s).await;
}

#[tokio::test]
async fn oidc_logins_are_verified_at_the_callback_and_fail_once() {
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    let oidc = |id: &str| LoginRequest {
        method: "oidc".into(),
        subject: "corp".into(),
        link_token_hash: None,
        state: Some(format!("state-{id}")),
        code_hash: None,
        ..login(id, None)
    };
    create_login(s, oidc("o1"), None).await;
    // No code exists before the provider's answer is verified.
    assert_eq!(
        redeem_code(s, "o1", "code-o1", 3, 5, "t").await,
        LoginClaim::WrongCode { attempts_left: 2 }
    );
    assert!(verify(s, "o1", "sub-1", "code-o1", 5).await);
    assert!(!verify(s, "o1", "sub-2", "other", 6).await, "single use");
    let o1 = s.login(LoginKey::State("state-o1")).await.unwrap().unwrap();
    assert_eq!(
        (o1.verified_value.as_deref(), o1.code_hash.as_deref()),
        (Some("sub-1"), Some("code-o1")),
        "the second callback changed nothing"
    );
    assert_eq!(
        redeem_code(s, "o1", "other", 3, 7, "t").await,
        LoginClaim::WrongCode { attempts_left: 1 }
    );
    let LoginClaim::SignedIn(own) = redeem_code(s, "o1", "code-o1", 3, 7, "t").await else {
        panic!("not signed in")
    };
    assert_eq!(own.omni, OmniAccount::derive("oauth2_corp", "sub-1"));
    assert_eq!(
        own.via,
        Some(IdentityRef {
            identity_type: "oauth2_corp".into(),
            identity_value: "sub-1".into(),
        })
    );
    assert_eq!(kinds(s).await, ["sign_in.oidc.verified", "sign_in.wallet"]);

    // A failure ends the request once: a second failure writes nothing.
    create_login(s, oidc("o2"), None).await;
    let before = verify_chain(s).await;
    assert!(fail(s, "o2", 8).await);
    assert!(!fail(s, "o2", 9).await);
    assert_eq!(verify_chain(s).await, before + 1);
    assert!(!verify(s, "o2", "sub-1", "c", 9).await);
    assert_eq!(
        redeem_code(s, "o2", "c", 3, 9, "t2").await,
        LoginClaim::Gone
    );
    // A verified request cannot fail any more.
    assert!(!fail(s, "o1", 10).await);
    assert_eq!(verify_chain(s).await, before + 1);
}

// ---- the gate -------------------------------------------------------------------------------

#[tokio::test]
async fn rate_limits_count_allowed_uses_per_window() {
    let f = Fixture::new().await;
    let windows = [
        RateWindow {
            seconds: 60,
            limit: 2,
        },
        RateWindow {
            seconds: 3600,
            limit: 3,
        },
    ];
    let t0 = 1_800_000_000; // a multiple of 3600: windows start here
    // As the mint does: one bucket per window, all named after the actor.
    let gate = |now: i64, actor: &'static str| {
        let store = f.store.clone();
        let gate = Gate::limits(windows.iter().map(|w| (actor.to_owned(), *w)).collect());
        async move {
            gate.append(
                store.as_ref(),
                now,
                event(AuditKind::Mint, now),
                denied(AuditKind::Mint, now),
            )
            .await
            .unwrap()
        }
    };
    assert!(matches!(
        gate(t0, "a").await,
        GateOutcome::Allowed { seq: 1 }
    ));
    assert!(matches!(
        gate(t0 + 1, "a").await,
        GateOutcome::Allowed { .. }
    ));
    assert_eq!(
        gate(t0 + 20, "a").await,
        GateOutcome::Limited {
            retry_after: 40,
            window_seconds: 60,
            seq: 3
        },
        "the denial is audited too"
    );
    assert!(
        matches!(gate(t0 + 20, "b").await, GateOutcome::Allowed { .. }),
        "actors are independent"
    );
    assert!(
        matches!(gate(t0 + 60, "a").await, GateOutcome::Allowed { .. }),
        "a new minute"
    );
    match gate(t0 + 61, "a").await {
        GateOutcome::Limited {
            retry_after,
            window_seconds,
            ..
        } => {
            assert_eq!((retry_after, window_seconds), (3600 - 61, 3600));
        }
        other => panic!("{other:?}"),
    }
    // Refusals were not counted: the hour holds the three allowed uses.
    let hour = windows[1];
    let counted = f
        .store
        .transact(move |tx| tx.window_count("a", hour, t0 + 61))
        .await
        .unwrap();
    assert_eq!(counted, 3);
    assert!(
        matches!(gate(t0 + 3600, "a").await, GateOutcome::Allowed { .. }),
        "a new hour"
    );
    assert_eq!(
        kinds_and_outcomes(f.store.as_ref()).await,
        [
            ("mint", "ok"),
            ("mint", "ok"),
            ("mint", "denied"),
            ("mint", "ok"),
            ("mint", "ok"),
            ("mint", "denied"),
            ("mint", "ok")
        ]
        .map(|(k, o)| (k.to_owned(), o.to_owned()))
    );
    assert_eq!(verify_chain(f.store.as_ref()).await, 7);
}

fn grant(id: &str, master: &OmniAccount, agent: &OmniAccount, max_uses: Option<i64>) -> Grant {
    Grant {
        id: id.into(),
        master: master.clone(),
        agent: agent.clone(),
        scope: "0xabc/inbox".into(),
        created_at: 1,
        expires_at: 1000,
        max_uses,
        uses: 0,
        revoked_at: None,
    }
}

async fn create_grant(store: &dyn Store, g: Grant) {
    let e = event(AuditKind::GrantCreated, 3);
    store
        .transact(move |tx| {
            tx.insert_grant(&g)?;
            tx.append(&e)
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_grant_use_is_consumed_with_the_audit_event_or_refused() {
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    let master = omni("master");
    let bot = paired_bot(s, &master).await;
    create_grant(s, grant("g1", &master, &bot, Some(1))).await;
    let window = RateWindow {
        seconds: 60,
        limit: 100,
    };
    let gate = |agent: &OmniAccount, now: i64| {
        let store = f.store.clone();
        let gate = Gate {
            live: None,
            buckets: vec![(bot.to_string(), window)],
            grant: Some(GrantUse {
                grant_id: "g1".into(),
                agent: agent.clone(),
            }),
        };
        async move {
            gate.append(
                store.as_ref(),
                now,
                event(AuditKind::Mint, now),
                denied(AuditKind::Mint, now),
            )
            .await
            .unwrap()
        }
    };
    assert!(
        matches!(
            gate(&omni("someone-else"), 10).await,
            GateOutcome::GrantUnavailable { .. }
        ),
        "not this agent's"
    );
    assert_eq!(s.grant("g1").await.unwrap().unwrap().uses, 0);
    assert!(matches!(gate(&bot, 10).await, GateOutcome::Allowed { .. }));
    assert!(
        matches!(gate(&bot, 11).await, GateOutcome::GrantUnavailable { .. }),
        "used up"
    );
    assert_eq!(s.grant("g1").await.unwrap().unwrap().uses, 1);
    let bucket = bot.to_string();
    let counted = s
        .transact(move |tx| tx.window_count(&bucket, window, 11))
        .await
        .unwrap();
    assert_eq!(counted, 1, "refused uses are not counted against the limit");
    let denials: Vec<String> = s
        .audit_events(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "mint" && e.outcome == "denied")
        .map(|e| e.details["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(denials, ["grant_unavailable", "grant_unavailable"]);

    // Revoked or expired grants are refused the same way.
    create_grant(s, grant("g2", &master, &bot, None)).await;
    let revoke_grant = |by: &OmniAccount, now: i64| {
        let by = by.clone();
        let e = event(AuditKind::GrantRevoked, now);
        s.transact(move |tx| {
            let revoked = tx.revoke_grant(&by, "g2", now)?;
            if revoked {
                tx.append(&e)?;
            }
            Ok(revoked)
        })
    };
    let gate2 = |now: i64| {
        let store = f.store.clone();
        let gate = Gate {
            grant: Some(GrantUse {
                grant_id: "g2".into(),
                agent: bot.clone(),
            }),
            ..Gate::default()
        };
        async move {
            gate.append(
                store.as_ref(),
                now,
                event(AuditKind::Mint, now),
                denied(AuditKind::Mint, now),
            )
            .await
            .unwrap()
        }
    };
    assert!(matches!(gate2(12).await, GateOutcome::Allowed { .. }));
    assert!(
        matches!(gate2(13).await, GateOutcome::Allowed { .. }),
        "no use limit"
    );
    assert!(
        !revoke_grant(&omni("someone-else"), 14).await.unwrap(),
        "only its master revokes it"
    );
    assert!(revoke_grant(&master, 14).await.unwrap());
    assert!(!revoke_grant(&master, 15).await.unwrap(), "once");
    assert!(matches!(
        gate2(16).await,
        GateOutcome::GrantUnavailable { .. }
    ));
    let g2 = s.grant("g2").await.unwrap().unwrap();
    assert_eq!((g2.uses, g2.revoked_at), (2, Some(14)));

    create_grant(s, grant("g3", &master, &bot, None)).await;
    let expired = Gate {
        grant: Some(GrantUse {
            grant_id: "g3".into(),
            agent: bot.clone(),
        }),
        ..Gate::default()
    };
    assert!(matches!(
        expired
            .append(
                s,
                1000,
                event(AuditKind::Mint, 1000),
                denied(AuditKind::Mint, 1000)
            )
            .await
            .unwrap(),
        GateOutcome::GrantUnavailable { .. }
    ));

    assert_eq!(s.grants_of(None, Some(&bot)).await.unwrap().len(), 3);
    let mine = s.grants_of(Some(&master), None).await.unwrap();
    assert_eq!(
        mine.iter().find(|g| g.id == "g2").unwrap().revoked_at,
        Some(14)
    );
    assert_eq!(
        kinds(s)
            .await
            .iter()
            .filter(|k| *k == "grant.revoked")
            .count(),
        1
    );
    verify_chain(s).await;
}

/// A mint reads its session, then races a logout / suspension / removal. Whatever commits
/// first, the gate re-checks inside its own transaction: a revocation that is already committed
/// refuses the mint and the refusal is audited.
#[tokio::test]
async fn the_gate_refuses_a_session_or_agent_that_stopped_being_live_after_the_read() {
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    let master = omni("omni");
    let window = RateWindow {
        seconds: 60,
        limit: 100,
    };
    let gate = |live: LiveCheck, now: i64| {
        let store = f.store.clone();
        let gate = Gate {
            buckets: vec![(live.session_token_hash.clone(), window)],
            live: Some(live),
            grant: None,
        };
        async move {
            gate.append(
                store.as_ref(),
                now,
                event(AuditKind::Mint, now),
                denied(AuditKind::Mint, now),
            )
            .await
            .unwrap()
        }
    };
    let of_session = |hash: &str| LiveCheck {
        session_token_hash: hash.into(),
    };

    // A master's session: live, then revoked (logout) before the gated append.
    create_session(s, session("m1", 1000), event(AuditKind::SignInWallet, 1)).await;
    let read = s.session("m1").await.unwrap().unwrap();
    assert!(read.revoked_at.is_none(), "the mint's read saw it live");
    assert!(matches!(
        gate(of_session("m1"), 10).await,
        GateOutcome::Allowed { .. }
    ));
    assert!(revoke(s, "m1", 11).await);
    assert!(matches!(
        gate(of_session("m1"), 12).await,
        GateOutcome::NotLive {
            reason: NotLive::Session,
            ..
        }
    ));
    // Expired and unknown sessions are refused the same way.
    create_session(s, session("m2", 20), event(AuditKind::SignInWallet, 2)).await;
    assert!(matches!(
        gate(of_session("m2"), 19).await,
        GateOutcome::Allowed { .. }
    ));
    assert!(matches!(
        gate(of_session("m2"), 20).await,
        GateOutcome::NotLive {
            reason: NotLive::Session,
            ..
        }
    ));
    assert!(matches!(
        gate(of_session("never"), 12).await,
        GateOutcome::NotLive {
            reason: NotLive::Session,
            ..
        }
    ));

    // An agent's session: its agent is suspended, then removed, between read and append.
    let bot = paired_bot(s, &master).await;
    assert!(matches!(
        claim(s, "p1", 5, 2, "a1").await,
        ClaimOutcome::Claimed(_)
    ));
    let of_agent = || of_session("a1");
    assert!(matches!(
        gate(of_agent(), 30).await,
        GateOutcome::Allowed { .. }
    ));
    set_status(s, &master, &bot, AgentStatus::Suspended, 31)
        .await
        .unwrap();
    assert!(matches!(
        gate(of_agent(), 32).await,
        GateOutcome::NotLive {
            reason: NotLive::AgentSuspended,
            ..
        }
    ));
    set_status(s, &master, &bot, AgentStatus::Active, 33)
        .await
        .unwrap();
    assert!(matches!(
        gate(of_agent(), 34).await,
        GateOutcome::Allowed { .. }
    ));
    set_status(s, &master, &bot, AgentStatus::Removed, 35)
        .await
        .unwrap();
    // Removal also revokes the agent's sessions: the session check refuses first.
    assert!(matches!(
        gate(of_agent(), 36).await,
        GateOutcome::NotLive {
            reason: NotLive::Session,
            ..
        }
    ));
    // A live session of an agent that is gone is refused as removed.
    let ghost = omni("ghost");
    create_session(
        s,
        Session {
            kind: ActorKind::Agent,
            omni: ghost.clone(),
            wallet: None,
            ..session("a2", 10_000)
        },
        event(AuditKind::SignInWallet, 6),
    )
    .await;
    assert!(matches!(
        gate(of_session("a2"), 37).await,
        GateOutcome::NotLive {
            reason: NotLive::AgentRemoved,
            ..
        }
    ));

    // Every refusal is in the chain with its reason, and no refused append was counted.
    let events = s.audit_events(0, 100).await.unwrap();
    let reasons: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "mint" && e.outcome == "denied")
        .map(|e| e.details["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "unauthenticated",
            "unauthenticated",
            "unauthenticated",
            "agent_suspended",
            "unauthenticated",
            "agent_removed"
        ]
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == "mint" && e.outcome == "ok")
            .count(),
        4
    );
    let counted = s
        .transact(move |tx| tx.window_count("a1", window, 36))
        .await
        .unwrap();
    assert_eq!(
        counted, 2,
        "the agent's two allowed mints, not its refusals"
    );
    verify_chain(s).await;
}

// ---- transactions as a whole ----------------------------------------------------------------

/// A decision's writes belong to the transaction of the closure that made it: when the closure
/// fails after the decision, none of them is kept, the audit event included.
#[tokio::test]
async fn a_failing_closure_rolls_back_everything_its_decision_wrote() {
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    let master = omni("master");
    create_pairing(
        s,
        pairing("p1", "ABCDEFGH", 600),
        event(AuditKind::AgentPairingRequested, 1),
    )
    .await;

    // Approve, then fail inside the same transaction.
    let (decided, outcome) = std::sync::mpsc::channel();
    let (m, e) = (master.clone(), event(AuditKind::AgentPaired, 2));
    let failed = s
        .transact(move |tx| -> agentkeys_store::Result<()> {
            let _ = decided.send(agents::approve(tx, "ABCDEFGH", &m, "bot", 2, &e)?);
            Err(StoreError::Database("the route changed its mind".into()))
        })
        .await;
    assert!(
        matches!(&failed, Err(StoreError::Database(m)) if m.contains("changed its mind")),
        "the closure's own error comes back: {failed:?}"
    );
    assert!(
        matches!(outcome.recv().unwrap(), ApproveOutcome::Approved(_)),
        "the decision had approved"
    );
    let bot = OmniAccount::for_agent(&master, "bot");
    assert!(s.agent(&bot).await.unwrap().is_none(), "no agent");
    assert!(s.agents_of(&master).await.unwrap().is_empty());
    assert_eq!(
        s.pairing("p1").await.unwrap().unwrap().agent,
        None,
        "the pairing is still pending"
    );
    assert_eq!(
        kinds(s).await,
        ["agent.pairing_requested"],
        "no audit event"
    );

    // Still pending, and the label not taken: the same approval succeeds now.
    assert!(matches!(
        approve(s, "ABCDEFGH", &master, "bot", 3).await,
        ApproveOutcome::Approved(_)
    ));

    // A claim that fails after its decision: no session, the pairing not collected, and not
    // even the device's proof recorded (the same proof collects it next).
    let (decided, outcome) = std::sync::mpsc::channel();
    let (slot1, e) = (slot("s1"), event(AuditKind::AgentSessionIssued, 4));
    let failed = s
        .transact(move |tx| -> agentkeys_store::Result<()> {
            let _ = decided.send(agents::claim(tx, "p1", 10, 4, &slot1, &e)?);
            Err(StoreError::Database("after the claim".into()))
        })
        .await;
    assert!(failed.is_err());
    assert!(matches!(outcome.recv().unwrap(), ClaimOutcome::Claimed(_)));
    assert!(s.session("s1").await.unwrap().is_none());
    assert_eq!(s.pairing("p1").await.unwrap().unwrap().claimed_at, None);
    assert!(matches!(
        claim(s, "p1", 10, 5, "s1").await,
        ClaimOutcome::Claimed(_)
    ));

    // A panic inside the closure is a failure like any other: the revocation is undone.
    let (decided, outcome) = std::sync::mpsc::channel();
    let e = event(AuditKind::SessionLogout, 6);
    let panicked = s
        .transact(move |tx| -> agentkeys_store::Result<()> {
            let _ = decided.send(session::revoke(tx, "s1", 6, &e)?);
            panic!("a bug in the route")
        })
        .await;
    assert!(panicked.is_err());
    assert!(outcome.recv().unwrap(), "the session had been revoked");
    assert!(s.session("s1").await.unwrap().unwrap().revoked_at.is_none());
    assert_eq!(
        kinds(s).await,
        [
            "agent.pairing_requested",
            "agent.paired",
            "agent.session_issued"
        ]
    );
    assert_eq!(verify_chain(s).await, 3);
}

/// Many mints race for the last uses of a grant, each in its own transaction: exactly
/// `max_uses` win, every other is refused and audited, and the chain stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_raced_by_concurrent_gates_is_used_exactly_max_uses_times() {
    const MAX_USES: i64 = 5;
    const RACERS: usize = 40;
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    let master = omni("master");
    let bot = paired_bot(s, &master).await;
    assert!(matches!(
        claim(s, "p1", 1, 2, "a1").await,
        ClaimOutcome::Claimed(_)
    ));
    create_grant(s, grant("g1", &master, &bot, Some(MAX_USES))).await;
    let before = verify_chain(s).await;
    let window = RateWindow {
        seconds: 3600,
        limit: 1000,
    };

    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let store = f.store.clone();
            let gate = Gate {
                live: Some(LiveCheck {
                    session_token_hash: "a1".into(),
                }),
                buckets: vec![(bot.to_string(), window)],
                grant: Some(GrantUse {
                    grant_id: "g1".into(),
                    agent: bot.clone(),
                }),
            };
            let now = 10 + (i % 3) as i64;
            tokio::spawn(async move {
                gate.append(
                    store.as_ref(),
                    now,
                    event(AuditKind::Mint, now),
                    denied(AuditKind::Mint, now),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut allowed = 0;
    let mut unavailable = 0;
    for racer in racers {
        match racer.await.unwrap() {
            GateOutcome::Allowed { .. } => allowed += 1,
            GateOutcome::GrantUnavailable { .. } => unavailable += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(allowed, MAX_USES);
    assert_eq!(unavailable, RACERS as i64 - MAX_USES);
    assert_eq!(s.grant("g1").await.unwrap().unwrap().uses, MAX_USES);
    let bucket = bot.to_string();
    let counted = s
        .transact(move |tx| tx.window_count(&bucket, window, 12))
        .await
        .unwrap();
    assert_eq!(
        counted, MAX_USES as u64,
        "only the allowed uses were counted"
    );

    let events = s.audit_events(0, 1_000_000).await.unwrap();
    let new = &events[before as usize..];
    assert_eq!(
        new.iter()
            .filter(|e| e.kind == "mint" && e.outcome == "ok")
            .count() as i64,
        MAX_USES
    );
    assert!(
        new.iter()
            .filter(|e| e.kind == "mint" && e.outcome == "denied")
            .all(|e| e.details["reason"] == "grant_unavailable")
    );
    assert_eq!(new.len(), RACERS, "one event per racer");
    assert_eq!(verify_chain(s).await, before + RACERS as u64);
}

// ---- access requests --------------------------------------------------------------------------

fn access_request(id: &str, master: &OmniAccount, agent: &OmniAccount) -> AccessRequest {
    AccessRequest {
        id: id.into(),
        agent: agent.clone(),
        master: master.clone(),
        scope: "inbox".into(),
        max_uses: Some(2),
        ttl_seconds: 3600,
        reason: "r".into(),
        created_at: 5,
        expires_at: 600,
        decision: None,
        decided_at: None,
        grant_id: None,
    }
}

#[tokio::test]
async fn access_requests_open_under_the_pending_limit_and_are_decided_once_by_their_master() {
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    let (master, stranger) = (omni("master"), omni("stranger"));
    let bot = paired_bot(s, &master).await;
    let open = |id: &'static str| {
        let r = access_request(id, &master, &bot);
        let (ok, no) = (
            event(AuditKind::AccessRequested, 5),
            denied(AuditKind::AccessRequested, 5),
        );
        s.transact(move |tx| access::open(tx, &r, 2, &ok, &no))
    };
    assert_eq!(open("r1").await.unwrap(), OpenOutcome::Opened);
    assert_eq!(open("r2").await.unwrap(), OpenOutcome::Opened);
    assert_eq!(open("r3").await.unwrap(), OpenOutcome::TooManyPending(2));
    assert_eq!(
        s.access_request("r3").await.unwrap(),
        None,
        "a refusal stores nothing"
    );

    // Only its master finds it pending; the decision is taken once.
    let (m, st) = (master.clone(), stranger.clone());
    let found = s
        .transact(move |tx| {
            Ok((
                PendingRequest::check(tx, &st, "r1", 10)?.is_some(),
                PendingRequest::check(tx, &m, "r1", 600)?.is_some(),
                PendingRequest::check(tx, &m, "r1", 10)?.is_some(),
            ))
        })
        .await
        .unwrap();
    assert_eq!(found, (false, false, true), "stranger, expired, master");
    let approve_once = |n: i64| {
        let (m, g) = (
            master.clone(),
            grant(&format!("g{n}"), &master, &bot, Some(2)),
        );
        let (created, approved) = (
            event(AuditKind::GrantCreated, n),
            event(AuditKind::AccessApproved, n),
        );
        s.transact(move |tx| match PendingRequest::check(tx, &m, "r1", 10)? {
            Some(p) => access::approve(tx, p, g, 10, &created, &approved).map(Some),
            None => Ok(None),
        })
    };
    let (first, second) = tokio::join!(approve_once(1), approve_once(2));
    let made: Vec<Grant> = [first.unwrap(), second.unwrap()]
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(made.len(), 1, "two racing approvals make one grant");
    let r1 = s.access_request("r1").await.unwrap().unwrap();
    assert_eq!(r1.grant_id.as_deref(), Some(made[0].id.as_str()));
    assert_eq!(s.grants_of(Some(&master), None).await.unwrap().len(), 1);

    // Denying a decided request does nothing; denying a pending one frees a slot.
    let deny = |id: &'static str| {
        let m = master.clone();
        let e = event(AuditKind::AccessDenied, 20);
        s.transact(move |tx| match PendingRequest::check(tx, &m, id, 20)? {
            Some(p) => access::deny(tx, p, 20, &e),
            None => Ok(false),
        })
    };
    assert!(!deny("r1").await.unwrap());
    assert!(deny("r2").await.unwrap());
    assert_eq!(open("r4").await.unwrap(), OpenOutcome::Opened);
    let k = kinds_and_outcomes(s).await;
    for (kind, outcome, n) in [
        ("access.requested", "ok", 3),
        ("access.requested", "denied", 1),
        ("access.approved", "ok", 1),
        ("access.denied", "ok", 1),
    ] {
        let seen = k.iter().filter(|(a, b)| a == kind && b == outcome).count();
        assert_eq!(seen, n, "{kind} {outcome}: {k:?}");
    }
    verify_chain(s).await;
}
