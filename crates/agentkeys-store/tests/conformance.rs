//! What every `Store` backend must do. Runs on SQLite today; a new backend runs the same
//! functions (call them with its `Arc<dyn Store>`).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use agentkeys_store::audit::ChainVerifier;
use agentkeys_store::{
    AgentSessionOutcome, ApproveOutcome, Challenge, ClaimOutcome, GateOutcome, LiveCheck,
    LoginClaim, LoginRequest, NewAuditEvent, NotLive, PairingRequest, RateWindow, Session,
    SigningKeyRecord, SqliteStore, Store, StoreError,
};
use serde_json::json;

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = agentkeys_store::open(&Self::url_in(&dir)).await.unwrap();
        Self { dir, store }
    }

    fn url_in(dir: &tempfile::TempDir) -> String {
        format!("sqlite://{}", dir.path().join("store.db").display())
    }

    fn url(&self) -> String {
        Self::url_in(&self.dir)
    }
}

fn event(kind: &str, n: i64) -> NewAuditEvent {
    NewAuditEvent {
        time: 1_700_000_000 + n,
        kind: kind.into(),
        actor: Some("actor".into()),
        master: Some("master".into()),
        outcome: "ok".into(),
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

fn session(hash: &str, expires_at: i64) -> Session {
    Session {
        token_hash: hash.into(),
        kind: "master".into(),
        omni: "omni".into(),
        wallet: Some("0xabc".into()),
        master: "omni".into(),
        created_at: 0,
        expires_at,
        revoked_at: None,
    }
}

async fn verify_chain(store: &dyn Store) -> u64 {
    let mut v = ChainVerifier::default();
    for e in store.audit_events(0, 1_000_000).await.unwrap() {
        v.check(&e).unwrap();
    }
    v.verified()
}

#[tokio::test]
async fn challenges_are_single_use() {
    let f = Fixture::new().await;
    f.store
        .insert_challenge(challenge("c1", 100))
        .await
        .unwrap();
    assert_eq!(
        f.store.take_challenge("c1").await.unwrap(),
        Some(challenge("c1", 100))
    );
    assert_eq!(f.store.take_challenge("c1").await.unwrap(), None);
    assert_eq!(f.store.take_challenge("never").await.unwrap(), None);
}

#[tokio::test]
async fn a_failing_operation_fails_alone_inside_a_shared_commit() {
    let f = Fixture::new().await;
    f.store
        .insert_challenge(challenge("dup", 100))
        .await
        .unwrap();
    // Queue several writes at once so they share a batch; the duplicate fails, the rest commit.
    let s = f.store.clone();
    let (a, b, c) = tokio::join!(
        s.insert_challenge(challenge("dup", 100)),
        s.append_audit(event("x", 1)),
        s.insert_challenge(challenge("fresh", 100)),
    );
    assert!(a.is_err());
    assert_eq!(b.unwrap(), 1);
    c.unwrap();
    assert!(f.store.take_challenge("fresh").await.unwrap().is_some());

    // An unknown key update is refused and its audit event is rolled back with it.
    let err = f
        .store
        .update_signing_key("nope", Some(1), None, event("key.retire", 2))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)));
    assert_eq!(verify_chain(f.store.as_ref()).await, 1);
}

#[tokio::test]
async fn sessions_are_stored_with_their_event_and_revoked_once() {
    let f = Fixture::new().await;
    let seq = f
        .store
        .create_session(session("h1", 1000), event("sign_in", 1))
        .await
        .unwrap();
    assert_eq!(seq, 1);
    let got = f.store.session("h1").await.unwrap().unwrap();
    assert_eq!(got, session("h1", 1000));
    assert!(
        f.store
            .revoke_session("h1", 10, event("logout", 2))
            .await
            .unwrap()
    );
    assert!(
        !f.store
            .revoke_session("h1", 11, event("logout", 3))
            .await
            .unwrap(),
        "already revoked"
    );
    assert_eq!(
        f.store.session("h1").await.unwrap().unwrap().revoked_at,
        Some(10)
    );
    assert_eq!(
        verify_chain(f.store.as_ref()).await,
        2,
        "the no-op revocation wrote no event"
    );

    // A duplicate session hash fails without writing its event.
    assert!(
        f.store
            .create_session(session("h1", 1000), event("sign_in", 4))
            .await
            .is_err()
    );
    assert_eq!(verify_chain(f.store.as_ref()).await, 2);
}

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
    let gate = |now: i64, actor: &'static str| {
        let store = f.store.clone();
        async move {
            store
                .rate_limited_append(
                    actor,
                    &windows,
                    now,
                    event("mint", now),
                    event("mint.denied", now),
                )
                .await
                .unwrap()
        }
    };
    assert!(matches!(gate(t0, "a").await, GateOutcome::Allowed { .. }));
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
    assert!(
        matches!(gate(t0 + 3600, "a").await, GateOutcome::Allowed { .. }),
        "a new hour"
    );
    let events = f.store.audit_events(0, 100).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "mint",
            "mint",
            "mint.denied",
            "mint",
            "mint",
            "mint.denied",
            "mint"
        ]
    );
}

#[tokio::test]
async fn concurrent_appends_form_one_gapless_chain() {
    let f = Fixture::new().await;
    let mut tasks = Vec::new();
    for t in 0..20 {
        let store = f.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                seqs.push(
                    store
                        .append_audit(event("burst", t * 100 + i))
                        .await
                        .unwrap(),
                );
            }
            seqs
        }));
    }
    let mut all: Vec<u64> = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (1..=500).collect::<Vec<u64>>());
    assert_eq!(verify_chain(f.store.as_ref()).await, 500);
}

#[tokio::test]
async fn two_processes_sharing_the_file_extend_the_same_chain() {
    // The broker and the `keys` command both write: each store must read the head inside its
    // own write transaction.
    let f = Fixture::new().await;
    let other = SqliteStore::open(&f.url()).await.unwrap();
    let (a, b) = tokio::join!(
        async {
            for i in 0..50 {
                f.store.append_audit(event("a", i)).await.unwrap();
            }
        },
        async {
            for i in 0..50 {
                other.append_audit(event("b", i)).await.unwrap();
            }
        }
    );
    let _ = (a, b);
    assert_eq!(verify_chain(f.store.as_ref()).await, 100);
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let f = Fixture::new().await;
    f.store
        .create_session(session("h", 99), event("sign_in", 1))
        .await
        .unwrap();
    let key = SigningKeyRecord {
        kid: "k1".into(),
        public_jwk: "{}".into(),
        certificate: "MII".into(),
        created_at: 1,
        activates_at: 2,
        retired_at: None,
        withdrawn_at: None,
    };
    f.store
        .insert_signing_key(key.clone(), event("key.generate", 2))
        .await
        .unwrap();
    f.store
        .update_signing_key("k1", Some(5), None, event("key.retire", 3))
        .await
        .unwrap();
    let url = f.url();
    drop(f.store);

    let reopened = agentkeys_store::open(&url).await.unwrap();
    assert!(reopened.session("h").await.unwrap().is_some());
    let keys = reopened.signing_keys().await.unwrap();
    assert_eq!(
        keys,
        vec![SigningKeyRecord {
            retired_at: Some(5),
            ..key
        }]
    );
    reopened.append_audit(event("after", 4)).await.unwrap();
    assert_eq!(
        verify_chain(reopened.as_ref()).await,
        4,
        "the chain continues from the stored head"
    );
}

#[tokio::test]
async fn purge_removes_only_expired_rows() {
    let f = Fixture::new().await;
    f.store
        .insert_challenge(challenge("old", 10))
        .await
        .unwrap();
    f.store
        .insert_challenge(challenge("new", 1000))
        .await
        .unwrap();
    f.store
        .create_session(session("old", 10), event("s", 1))
        .await
        .unwrap();
    f.store
        .create_session(session("new", 1000), event("s", 2))
        .await
        .unwrap();
    assert_eq!(f.store.purge_expired(500, 500).await.unwrap(), 2);
    assert!(f.store.take_challenge("old").await.unwrap().is_none());
    assert!(f.store.take_challenge("new").await.unwrap().is_some());
    assert!(f.store.session("old").await.unwrap().is_none());
    assert!(f.store.session("new").await.unwrap().is_some());
    assert_eq!(
        verify_chain(f.store.as_ref()).await,
        2,
        "audit events are never purged"
    );
}

#[tokio::test]
async fn only_sqlite_urls_open() {
    let err = agentkeys_store::open("postgres://localhost/x")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::UnsupportedUrl(_)));
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

fn agent_session(hash: &str) -> Session {
    Session {
        kind: "agent".into(),
        wallet: None,
        master: String::new(),
        ..session(hash, 10_000)
    }
}

#[tokio::test]
async fn pairing_goes_pending_approved_claimed_once() {
    let f = Fixture::new().await;
    f.store
        .create_pairing(pairing("p1", "ABCDEFGH", 600), event("pair", 1))
        .await
        .unwrap();
    let claim = |ms: i64, hash: &'static str| {
        let store = f.store.clone();
        async move {
            store
                .claim_pairing("p1", ms, 10, agent_session(hash), event("claim", ms))
                .await
                .unwrap()
        }
    };
    assert_eq!(claim(1, "s0").await, ClaimOutcome::Pending);
    assert_eq!(
        claim(1, "s0").await,
        ClaimOutcome::StaleProof,
        "a replayed proof is refused"
    );

    // Wrong code, then the right one; a second approval of the same code finds nothing.
    let approve = |code: &'static str, label: &'static str| {
        let store = f.store.clone();
        async move {
            store
                .approve_pairing(
                    code,
                    "master",
                    label,
                    &format!("omni-{label}"),
                    20,
                    event("approve", 2),
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(
        approve("ZZZZZZZZ", "bot").await,
        ApproveOutcome::UnknownCode
    );
    let ApproveOutcome::Approved(agent) = approve("ABCDEFGH", "bot").await else {
        panic!("not approved")
    };
    assert_eq!(
        (agent.device_address.as_str(), agent.status.as_str()),
        ("0xdevice", "active")
    );
    assert_eq!(
        approve("ABCDEFGH", "bot").await,
        ApproveOutcome::UnknownCode
    );

    let ClaimOutcome::Claimed(a) = claim(2, "s1").await else {
        panic!("not claimed")
    };
    assert_eq!(a.omni, "omni-bot");
    let s = f.store.session("s1").await.unwrap().unwrap();
    assert_eq!(
        (
            s.kind.as_str(),
            s.omni.as_str(),
            s.master.as_str(),
            s.wallet
        ),
        ("agent", "omni-bot", "master", None)
    );
    assert_eq!(
        claim(3, "s2").await,
        ClaimOutcome::AlreadyClaimed,
        "the session is handed out once"
    );
    assert!(f.store.session("s2").await.unwrap().is_none());

    // Labels are never reused for the same master.
    f.store
        .create_pairing(pairing("p2", "HGFEDCBA", 600), event("pair", 3))
        .await
        .unwrap();
    assert_eq!(
        f.store
            .approve_pairing(
                "HGFEDCBA",
                "master",
                "bot",
                "omni-bot2",
                30,
                event("approve", 4)
            )
            .await
            .unwrap(),
        ApproveOutcome::LabelTaken
    );
    assert_eq!(
        verify_chain(f.store.as_ref()).await,
        4,
        "pair, approve, claim, pair"
    );
}

#[tokio::test]
async fn expired_pairings_are_gone() {
    let f = Fixture::new().await;
    f.store
        .create_pairing(pairing("p1", "ABCDEFGH", 600), event("pair", 1))
        .await
        .unwrap();
    let outcome = f
        .store
        .approve_pairing("ABCDEFGH", "m", "bot", "o", 600, event("approve", 2))
        .await
        .unwrap();
    assert_eq!(outcome, ApproveOutcome::UnknownCode);
    let claimed = f
        .store
        .claim_pairing("p1", 5, 600, agent_session("s"), event("claim", 3))
        .await
        .unwrap();
    assert_eq!(claimed, ClaimOutcome::Gone);

    // Approved in time but never collected: the session is not handed out after expiry.
    f.store
        .create_pairing(pairing("p2", "HGFEDCBA", 600), event("pair", 4))
        .await
        .unwrap();
    let outcome = f
        .store
        .approve_pairing("HGFEDCBA", "m", "bot", "o", 10, event("approve", 5))
        .await
        .unwrap();
    assert!(matches!(outcome, ApproveOutcome::Approved(_)));
    let late = f
        .store
        .claim_pairing("p2", 6, 600, agent_session("s2"), event("claim", 6))
        .await
        .unwrap();
    assert_eq!(late, ClaimOutcome::Gone);
    assert!(f.store.session("s2").await.unwrap().is_none());
    assert_eq!(f.store.purge_expired(601, 601).await.unwrap(), 2);
    assert!(f.store.pairing("p1").await.unwrap().is_none());
}

#[tokio::test]
async fn agent_lifecycle_belongs_to_its_master_and_removal_revokes_sessions() {
    let f = Fixture::new().await;
    f.store
        .create_pairing(pairing("p1", "ABCDEFGH", 600), event("pair", 1))
        .await
        .unwrap();
    f.store
        .approve_pairing(
            "ABCDEFGH",
            "master",
            "bot",
            "omni-bot",
            1,
            event("approve", 2),
        )
        .await
        .unwrap();
    f.store
        .claim_pairing("p1", 1, 2, agent_session("s1"), event("claim", 3))
        .await
        .unwrap();

    let other = f
        .store
        .set_agent_status("someone-else", "omni-bot", "suspended", 3, event("x", 4))
        .await
        .unwrap();
    assert!(other.is_none(), "another master cannot touch the agent");
    let a = f
        .store
        .set_agent_status("master", "omni-bot", "suspended", 3, event("suspend", 4))
        .await
        .unwrap();
    assert_eq!(a.unwrap().status, "suspended");
    assert_eq!(f.store.agents_of("master").await.unwrap().len(), 1);
    assert!(
        f.store
            .session("s1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none(),
        "suspension keeps sessions"
    );

    let a = f
        .store
        .set_agent_status("master", "omni-bot", "removed", 5, event("remove", 5))
        .await
        .unwrap();
    assert_eq!(a.unwrap().status, "removed");
    assert_eq!(
        f.store.session("s1").await.unwrap().unwrap().revoked_at,
        Some(5)
    );
    assert!(
        f.store
            .set_agent_status("master", "omni-bot", "active", 6, event("resume", 6))
            .await
            .unwrap()
            .is_none(),
        "removal is final"
    );
}

#[tokio::test]
async fn revoke_every_session_but_one() {
    let f = Fixture::new().await;
    for h in ["a", "b", "c"] {
        f.store
            .create_session(session(h, 1000), event("sign_in", 1))
            .await
            .unwrap();
    }
    assert_eq!(f.store.sessions_of("omni", 10).await.unwrap().len(), 3);
    assert_eq!(
        f.store
            .revoke_sessions_of("omni", Some("b"), 10, event("logout_all", 2))
            .await
            .unwrap(),
        2
    );
    let live: Vec<String> = f
        .store
        .sessions_of("omni", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.token_hash)
        .collect();
    assert_eq!(live, ["b"]);
}

#[tokio::test]
async fn a_paired_agent_gets_new_sessions_only_with_fresh_proofs_while_active() {
    let f = Fixture::new().await;
    f.store
        .create_pairing(pairing("p1", "ABCDEFGH", 600), event("pair", 1))
        .await
        .unwrap();
    f.store
        .approve_pairing(
            "ABCDEFGH",
            "master",
            "bot",
            "omni-bot",
            1,
            event("approve", 2),
        )
        .await
        .unwrap();
    let renew = |ms: i64, hash: &'static str| {
        let store = f.store.clone();
        async move {
            store
                .agent_session("omni-bot", ms, agent_session(hash), event("renew", ms))
                .await
                .unwrap()
        }
    };
    assert!(matches!(
        renew(100, "s1").await,
        AgentSessionOutcome::Issued(_)
    ));
    let s = f.store.session("s1").await.unwrap().unwrap();
    assert_eq!(
        (s.omni.as_str(), s.master.as_str(), s.kind.as_str()),
        ("omni-bot", "master", "agent")
    );
    assert_eq!(renew(100, "s2").await, AgentSessionOutcome::StaleProof);
    assert!(f.store.session("s2").await.unwrap().is_none());
    f.store
        .set_agent_status("master", "omni-bot", "suspended", 3, event("suspend", 3))
        .await
        .unwrap();
    assert!(matches!(
        renew(101, "s3").await,
        AgentSessionOutcome::NotActive(_)
    ));
    let unknown = f
        .store
        .agent_session("nobody", 1, agent_session("s4"), event("renew", 4))
        .await
        .unwrap();
    assert_eq!(unknown, AgentSessionOutcome::Unknown);
}

fn login(id_hash: &str, link_to: Option<(&str, &str)>) -> LoginRequest {
    LoginRequest {
        id_hash: id_hash.into(),
        method: "email".into(),
        subject: "alice@example.com".into(),
        link_token_hash: link_to.is_none().then(|| format!("link-{id_hash}")),
        state: None,
        oidc_nonce: None,
        oidc_verifier: None,
        link_to: link_to.map(|(m, _)| m.to_owned()),
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

#[tokio::test]
async fn email_logins_redeem_once_by_code_or_link_and_honour_links() {
    let f = Fixture::new().await;
    let s = &f.store;
    // An unlinked identity signs in as a master of its own; wrong codes are counted.
    s.create_login(login("r1", None), Some(event("email.start", 1)))
        .await
        .unwrap();
    assert_eq!(
        s.redeem_login_code(
            "r1",
            "wrong",
            3,
            5,
            session("t1", 1000),
            event("sign_in", 2)
        )
        .await
        .unwrap(),
        LoginClaim::WrongCode { attempts_left: 2 }
    );
    assert_eq!(s.login("r1").await.unwrap().unwrap().code_attempts, 1);
    let LoginClaim::SignedIn(own) = s
        .redeem_login_code(
            "r1",
            "code-r1",
            3,
            7,
            session("t1", 1000),
            event("sign_in", 5),
        )
        .await
        .unwrap()
    else {
        panic!("not signed in")
    };
    assert_eq!(
        own.omni,
        agentkeys_types::OmniAccount::derive("email", "alice@example.com").as_str()
    );
    assert_eq!(own.wallet, None);
    assert!(s.session("t1").await.unwrap().is_some());
    assert_eq!(
        s.redeem_login_code(
            "r1",
            "code-r1",
            3,
            8,
            session("t2", 1000),
            event("sign_in", 6)
        )
        .await
        .unwrap(),
        LoginClaim::AlreadyClaimed
    );
    // Its link was for the same request: used up with it.
    assert_eq!(
        s.redeem_login_link("link-r1", 8, session("t2", 1000), event("sign_in", 6))
            .await
            .unwrap(),
        LoginClaim::AlreadyClaimed
    );

    // Too many wrong codes kill a request, even for the right code.
    s.create_login(login("dead", None), None).await.unwrap();
    for left in [1, 0] {
        assert_eq!(
            s.redeem_login_code("dead", "x", 2, 5, session("d", 1000), event("sign_in", 6))
                .await
                .unwrap(),
            LoginClaim::WrongCode {
                attempts_left: left
            }
        );
    }
    assert_eq!(
        s.redeem_login_code(
            "dead",
            "code-dead",
            2,
            5,
            session("d", 1000),
            event("sign_in", 6)
        )
        .await
        .unwrap(),
        LoginClaim::Gone
    );

    // A wallet master links it; a link request has no link token, only the code completes it.
    s.create_login(
        login("r2", Some(("wallet-master", "0xabc"))),
        Some(event("link.start", 7)),
    )
    .await
    .unwrap();
    let LoginClaim::Linked(i) = s
        .redeem_login_code(
            "r2",
            "code-r2",
            3,
            10,
            session("unused", 1000),
            event("identity.linked", 9),
        )
        .await
        .unwrap()
    else {
        panic!("not linked")
    };
    assert_eq!(
        (i.master.as_str(), i.master_wallet.as_str()),
        ("wallet-master", "0xabc")
    );
    assert!(
        s.session("unused").await.unwrap().is_none(),
        "linking creates no session"
    );

    // A sign-in by the browser link is the wallet master's, and remembered as via the email.
    s.create_login(login("r3", None), Some(event("email.start", 10)))
        .await
        .unwrap();
    let LoginClaim::SignedIn(linked) = s
        .redeem_login_link("link-r3", 12, session("t3", 1000), event("sign_in", 12))
        .await
        .unwrap()
    else {
        panic!("not signed in")
    };
    assert_eq!(
        (linked.omni.as_str(), linked.wallet.as_deref()),
        ("wallet-master", Some("0xabc"))
    );
    // The wallet's own session is not via the email.
    s.create_session(
        Session {
            omni: "wallet-master".into(),
            master: "wallet-master".into(),
            ..session("own", 1000)
        },
        event("sign_in.wallet", 12),
    )
    .await
    .unwrap();

    // Another master cannot take it over; the owner can unlink it, which revokes the
    // sessions obtained through it.
    s.create_login(
        login("r4", Some(("other-master", "0xdef"))),
        Some(event("link.start", 13)),
    )
    .await
    .unwrap();
    assert_eq!(
        s.redeem_login_code(
            "r4",
            "code-r4",
            3,
            15,
            session("x", 1000),
            event("identity.linked", 15)
        )
        .await
        .unwrap(),
        LoginClaim::LinkedElsewhere
    );
    assert_eq!(s.identities_of("wallet-master").await.unwrap().len(), 1);
    assert_eq!(
        s.unlink_identity(
            "other-master",
            "email",
            "alice@example.com",
            16,
            event("identity.unlinked", 16)
        )
        .await
        .unwrap(),
        None
    );
    assert_eq!(
        s.unlink_identity(
            "wallet-master",
            "email",
            "alice@example.com",
            17,
            event("identity.unlinked", 17)
        )
        .await
        .unwrap(),
        Some(1)
    );
    assert!(s.identities_of("wallet-master").await.unwrap().is_empty());
    assert!(s.session("t3").await.unwrap().unwrap().revoked_at.is_some());
    assert!(
        s.session("own")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );
    let last = s.audit_events(0, 1000).await.unwrap().pop().unwrap();
    assert_eq!(last.details["sessions_revoked"], 1);

    // Expired requests are gone.
    s.create_login(login("r5", None), Some(event("email.start", 18)))
        .await
        .unwrap();
    assert_eq!(
        s.redeem_login_code(
            "r5",
            "code-r5",
            3,
            600,
            session("t5", 1000),
            event("sign_in", 20)
        )
        .await
        .unwrap(),
        LoginClaim::Gone
    );
    assert_eq!(
        s.redeem_login_link("link-r5", 600, session("t5", 1000), event("sign_in", 20))
            .await
            .unwrap(),
        LoginClaim::Gone
    );
}

#[tokio::test]
async fn oidc_logins_are_verified_at_the_callback_and_fail_once() {
    let f = Fixture::new().await;
    let s = &f.store;
    let oidc = |id: &str| LoginRequest {
        method: "oidc".into(),
        subject: "corp".into(),
        link_token_hash: None,
        state: Some(format!("state-{id}")),
        code_hash: None,
        ..login(id, None)
    };
    s.create_login(oidc("o1"), None).await.unwrap();
    // No code exists before the provider's answer is verified.
    assert_eq!(
        s.redeem_login_code(
            "o1",
            "code-o1",
            3,
            5,
            session("t", 1000),
            event("sign_in", 1)
        )
        .await
        .unwrap(),
        LoginClaim::WrongCode { attempts_left: 2 }
    );
    assert!(
        s.verify_login(
            "o1",
            "oauth2_corp",
            "sub-1",
            "code-o1",
            5,
            event("verified", 2)
        )
        .await
        .unwrap()
    );
    assert!(
        !s.verify_login(
            "o1",
            "oauth2_corp",
            "sub-2",
            "other",
            6,
            event("verified", 3)
        )
        .await
        .unwrap(),
        "single use"
    );
    let LoginClaim::SignedIn(own) = s
        .redeem_login_code(
            "o1",
            "code-o1",
            3,
            7,
            session("t", 1000),
            event("sign_in", 4),
        )
        .await
        .unwrap()
    else {
        panic!("not signed in")
    };
    assert_eq!(
        own.omni,
        agentkeys_types::OmniAccount::derive("oauth2_corp", "sub-1").as_str()
    );

    // A failure ends the request once: a second failure writes nothing.
    s.create_login(oidc("o2"), None).await.unwrap();
    let before = s.audit_events(0, 1000).await.unwrap().len();
    assert!(s.fail_login("o2", 8, event("failed", 8)).await.unwrap());
    assert!(!s.fail_login("o2", 9, event("failed", 9)).await.unwrap());
    assert_eq!(s.audit_events(0, 1000).await.unwrap().len(), before + 1);
    assert!(
        !s.verify_login("o2", "oauth2_corp", "sub-1", "c", 9, event("verified", 9))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_masters_audit_is_its_own_events_filtered_and_paged_oldest_first() {
    let f = Fixture::new().await;
    let s = f.store.as_ref();
    let ev = |kind: &str, actor: &str, master: Option<&str>, n: i64| NewAuditEvent {
        time: 1_000 + n,
        kind: kind.into(),
        actor: Some(actor.into()),
        master: master.map(str::to_owned),
        outcome: "ok".into(),
        details: json!({ "n": n }),
    };
    // m1 and its agent a1, another master m2, and an event with no master.
    let plan = [
        ("sign_in", "m1", Some("m1")),
        ("sign_in", "m2", Some("m2")),
        ("mint", "a1", Some("m1")),
        ("mint", "m1", Some("m1")),
        ("sign_in", "x", None),
        ("mint", "a1", Some("m1")),
        ("mint", "m2", Some("m2")),
        ("agent.suspended", "m1", Some("m1")),
    ];
    for (n, (kind, actor, master)) in plan.iter().enumerate() {
        s.append_audit(ev(kind, actor, *master, n as i64))
            .await
            .unwrap();
    }
    let q = |after_seq: u64, limit: u32| agentkeys_store::AuditQuery {
        after_seq,
        limit,
        ..Default::default()
    };
    let seqs = |events: Vec<agentkeys_store::AuditEvent>| -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    };

    let all = s.audit_for_master("m1", q(0, 100)).await.unwrap();
    assert!(all.iter().all(|e| e.master.as_deref() == Some("m1")));
    assert_eq!(seqs(all), [1, 3, 4, 6, 8], "oldest first, only m1's");
    assert_eq!(
        seqs(s.audit_for_master("m2", q(0, 100)).await.unwrap()),
        [2, 7]
    );
    assert!(
        s.audit_for_master("nobody", q(0, 100))
            .await
            .unwrap()
            .is_empty()
    );

    // Paging by seq cursor.
    assert_eq!(
        seqs(s.audit_for_master("m1", q(0, 2)).await.unwrap()),
        [1, 3]
    );
    assert_eq!(
        seqs(s.audit_for_master("m1", q(3, 2)).await.unwrap()),
        [4, 6]
    );
    assert_eq!(seqs(s.audit_for_master("m1", q(6, 2)).await.unwrap()), [8]);
    assert!(s.audit_for_master("m1", q(8, 2)).await.unwrap().is_empty());
    assert!(
        s.audit_for_master("m1", q(u64::MAX, 2))
            .await
            .unwrap()
            .is_empty()
    );

    // Filters.
    let filtered =
        |kind: Option<&str>, actor: Option<&str>, since, until| agentkeys_store::AuditQuery {
            after_seq: 0,
            limit: 100,
            kind: kind.map(str::to_owned),
            actor: actor.map(str::to_owned),
            since,
            until,
        };
    assert_eq!(
        seqs(
            s.audit_for_master("m1", filtered(Some("mint"), None, None, None))
                .await
                .unwrap()
        ),
        [3, 4, 6]
    );
    assert_eq!(
        seqs(
            s.audit_for_master("m1", filtered(Some("mint"), Some("a1"), None, None))
                .await
                .unwrap()
        ),
        [3, 6]
    );
    // since inclusive, until exclusive (times are 1000 + index).
    assert_eq!(
        seqs(
            s.audit_for_master("m1", filtered(None, None, Some(1_003), Some(1_007)))
                .await
                .unwrap()
        ),
        [4, 6]
    );
    // Another master's agent filter finds nothing of m1's.
    assert!(
        s.audit_for_master("m2", filtered(None, Some("a1"), None, None))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_grant_use_is_consumed_with_the_audit_event_or_refused() {
    let f = Fixture::new().await;
    let s = &f.store;
    s.create_pairing(pairing("p1", "ABCDEFGH", 600), event("pair", 1))
        .await
        .unwrap();
    s.approve_pairing(
        "ABCDEFGH",
        "master",
        "bot",
        "omni-bot",
        1,
        event("approve", 2),
    )
    .await
    .unwrap();
    let grant = agentkeys_store::Grant {
        id: "g1".into(),
        master: "master".into(),
        agent: "omni-bot".into(),
        scope: "0xabc/inbox".into(),
        created_at: 1,
        expires_at: 1000,
        max_uses: Some(1),
        uses: 0,
        revoked_at: None,
    };
    s.create_grant(grant, event("grant.created", 3))
        .await
        .unwrap();
    let window = [(
        "omni-bot".to_owned(),
        RateWindow {
            seconds: 60,
            limit: 100,
        },
    )];
    let use_of = |agent: &str| agentkeys_store::GrantUse {
        grant_id: "g1".into(),
        agent: agent.into(),
    };
    let gate = |agent: &'static str, now: i64| {
        let store = s.clone();
        let window = window.clone();
        let grant_use = use_of(agent);
        async move {
            store
                .rate_limited_append_buckets(
                    &window,
                    Some(&grant_use),
                    now,
                    event("mint", now),
                    event("mint.denied", now),
                )
                .await
                .unwrap()
        }
    };
    assert!(
        matches!(
            gate("someone-else", 10).await,
            GateOutcome::GrantUnavailable { .. }
        ),
        "not this agent's"
    );
    assert!(matches!(
        gate("omni-bot", 10).await,
        GateOutcome::Allowed { .. }
    ));
    assert!(
        matches!(
            gate("omni-bot", 11).await,
            GateOutcome::GrantUnavailable { .. }
        ),
        "used up"
    );
    assert_eq!(s.grant("g1").await.unwrap().unwrap().uses, 1);
    let denied = s
        .audit_events(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "mint.denied")
        .count();
    assert_eq!(denied, 2);
    assert!(
        s.revoke_grant("master", "g1", 12, event("grant.revoked", 12))
            .await
            .unwrap()
    );
    assert!(
        !s.revoke_grant("master", "g1", 13, event("grant.revoked", 13))
            .await
            .unwrap()
    );
    assert_eq!(s.grants_of(None, Some("omni-bot")).await.unwrap().len(), 1);
    assert_eq!(
        s.grants_of(Some("master"), None).await.unwrap()[0].revoked_at,
        Some(12)
    );
}

#[tokio::test]
async fn unused_requests_are_purged_without_the_grace_sessions_keep() {
    let f = Fixture::new().await;
    f.store
        .insert_challenge(challenge("expired", 100))
        .await
        .unwrap();
    f.store
        .create_pairing(pairing("p1", "ABCDEFGH", 100), event("pair", 1))
        .await
        .unwrap();
    f.store
        .create_session(session("recent", 100), event("s", 2))
        .await
        .unwrap();
    // Requests expired at 100 go at once; sessions keep a grace period (cutoff 100 - grace).
    assert_eq!(f.store.purge_expired(101, 50).await.unwrap(), 2);
    assert!(f.store.take_challenge("expired").await.unwrap().is_none());
    assert!(f.store.pairing("p1").await.unwrap().is_none());
    assert!(f.store.session("recent").await.unwrap().is_some());
    assert_eq!(f.store.purge_expired(101, 101).await.unwrap(), 1);
    assert!(f.store.session("recent").await.unwrap().is_none());
}

/// A mint reads its session, then races a logout / suspension / removal. Whatever commits
/// first, the gate re-checks inside its own transaction: a revocation that is already committed
/// refuses the mint and the refusal is audited.
#[tokio::test]
async fn the_gate_refuses_a_session_or_agent_that_stopped_being_live_after_the_read() {
    let f = Fixture::new().await;
    let s = &f.store;
    let window = [(
        "omni".to_owned(),
        RateWindow {
            seconds: 60,
            limit: 100,
        },
    )];
    let gate = |live: LiveCheck, now: i64| {
        let store = s.clone();
        let window = window.clone();
        async move {
            store
                .gated_append(
                    Some(&live),
                    &window,
                    None,
                    now,
                    event("mint", now),
                    event("mint.denied", now),
                )
                .await
                .unwrap()
        }
    };
    let master = |hash: &str| LiveCheck {
        session_token_hash: hash.into(),
        agent: None,
    };

    // A master's session: live, then revoked (logout) before the gated append.
    s.create_session(session("m1", 1000), event("s", 1))
        .await
        .unwrap();
    let read = s.session("m1").await.unwrap().unwrap();
    assert!(read.revoked_at.is_none(), "the mint's read saw it live");
    assert!(matches!(
        gate(master("m1"), 10).await,
        GateOutcome::Allowed { .. }
    ));
    assert!(
        s.revoke_session("m1", 11, event("logout", 11))
            .await
            .unwrap()
    );
    assert!(matches!(
        gate(master("m1"), 12).await,
        GateOutcome::NotLive {
            reason: NotLive::Session,
            ..
        }
    ));
    // Expired and unknown sessions are refused the same way.
    s.create_session(session("m2", 20), event("s", 2))
        .await
        .unwrap();
    assert!(matches!(
        gate(master("m2"), 20).await,
        GateOutcome::NotLive {
            reason: NotLive::Session,
            ..
        }
    ));
    assert!(matches!(
        gate(master("never"), 12).await,
        GateOutcome::NotLive {
            reason: NotLive::Session,
            ..
        }
    ));

    // An agent's session: its agent is suspended, then removed, between read and append.
    s.create_pairing(pairing("p1", "ABCDEFGH", 600), event("pair", 3))
        .await
        .unwrap();
    s.approve_pairing(
        "ABCDEFGH",
        "omni",
        "bot",
        "omni-bot",
        1,
        event("approve", 4),
    )
    .await
    .unwrap();
    let claimed = s
        .claim_pairing("p1", 5, 2, agent_session("a1"), event("claim", 5))
        .await
        .unwrap();
    assert!(matches!(claimed, ClaimOutcome::Claimed(_)));
    let agent = || LiveCheck {
        session_token_hash: "a1".into(),
        agent: Some("omni-bot".into()),
    };
    assert!(matches!(
        gate(agent(), 30).await,
        GateOutcome::Allowed { .. }
    ));
    s.set_agent_status("omni", "omni-bot", "suspended", 31, event("suspend", 31))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        gate(agent(), 32).await,
        GateOutcome::NotLive {
            reason: NotLive::AgentSuspended,
            ..
        }
    ));
    s.set_agent_status("omni", "omni-bot", "active", 33, event("resume", 33))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        gate(agent(), 34).await,
        GateOutcome::Allowed { .. }
    ));
    s.set_agent_status("omni", "omni-bot", "removed", 35, event("remove", 35))
        .await
        .unwrap()
        .unwrap();
    // Removal also revokes the agent's sessions: the session check refuses first.
    assert!(matches!(
        gate(agent(), 36).await,
        GateOutcome::NotLive {
            reason: NotLive::Session,
            ..
        }
    ));
    // A live session of an agent that is gone is refused as removed.
    s.create_session(
        Session {
            omni: "omni-ghost".into(),
            ..agent_session("a2")
        },
        event("s", 6),
    )
    .await
    .unwrap();
    assert!(matches!(
        gate(
            LiveCheck {
                session_token_hash: "a2".into(),
                agent: Some("omni-ghost".into()),
            },
            37
        )
        .await,
        GateOutcome::NotLive {
            reason: NotLive::AgentRemoved,
            ..
        }
    ));

    // Every refusal is in the chain with its reason, and no refused append was counted.
    let events = s.audit_events(0, 100).await.unwrap();
    let reasons: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "mint.denied")
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
    assert_eq!(events.iter().filter(|e| e.kind == "mint").count(), 3);
    verify_chain(s.as_ref()).await;
}
