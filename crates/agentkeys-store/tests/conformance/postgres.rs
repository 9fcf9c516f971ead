//! What only PostgreSQL has: several stores (broker instances) on one database at once, the
//! migration lock, the writer's reconnection. Runs when `AGENTKEYS_TEST_DATABASE=postgres://…`
//! is set (`scripts/postgres.sh start` prints one; CI sets it); on SQLite each test says it was
//! skipped. Each test works in a fresh schema of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use agentkeys_store::audit::ChainVerifier;
use agentkeys_store::{
    Agent, AgentStatus, AuditKind, Challenge, Grant, NewAuditEvent, Outcome, PostgresStore,
    RateWindow, Session, SigningKeyRecord, Store, StoreError,
};
use agentkeys_types::OmniAccount;
use agentkeys_types::api::ActorKind;
use serde_json::json;

const NOW: i64 = 1_700_000_000;

/// A fresh schema; dropped when this goes out of scope.
struct Schema {
    base: String,
    name: String,
}

impl Schema {
    async fn new() -> Option<Self> {
        let Ok(base) = std::env::var("AGENTKEYS_TEST_DATABASE") else {
            eprintln!("AGENTKEYS_TEST_DATABASE is unset: skipping (scripts/postgres.sh start)");
            return None;
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "smoke_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        exec(&base, &format!("CREATE SCHEMA {name}")).await;
        Some(Self { base, name })
    }

    fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-csearch_path%3D{}", self.base, self.name)
    }

    async fn open(&self) -> Arc<dyn Store> {
        agentkeys_store::open(&self.url()).await.unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // Best effort, on a thread of its own: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(exec(&base, &format!("DROP SCHEMA {name} CASCADE")));
        })
        .join();
    }
}

async fn exec(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    let _ = driver.await;
}

fn omni(n: u8) -> OmniAccount {
    OmniAccount::derive("smoke", &n.to_string())
}

fn event(kind: AuditKind, n: i64) -> NewAuditEvent {
    NewAuditEvent {
        time: NOW + n,
        kind,
        actor: Some(omni(1).to_string()),
        master: Some(omni(1).to_string()),
        outcome: Outcome::Ok,
        details: json!({ "n": n, "z": [1, {"b": 2, "a": "é"}] }),
    }
}

fn session(hash: &str) -> Session {
    Session {
        token_hash: hash.into(),
        kind: ActorKind::Master,
        omni: omni(1),
        wallet: Some("0xabc".into()),
        master: omni(1),
        created_at: NOW,
        expires_at: NOW + 3600,
        revoked_at: None,
        via: None,
        agent_status: None,
    }
}

fn agent() -> Agent {
    Agent {
        omni: omni(2),
        master: omni(1),
        label: "laptop".into(),
        device_address: "0xdef".into(),
        status: AgentStatus::Active,
        created_at: NOW,
        updated_at: NOW,
    }
}

fn grant(max_uses: Option<i64>) -> Grant {
    Grant {
        id: "g1".into(),
        master: omni(1),
        agent: omni(2),
        scope: "inbox".into(),
        created_at: NOW,
        expires_at: NOW + 3600,
        max_uses,
        uses: 0,
        revoked_at: None,
    }
}

fn challenge(id: &str) -> Challenge {
    Challenge {
        id: id.into(),
        address: "0xabc".into(),
        message: "sign me".into(),
        created_at: NOW,
        expires_at: NOW + 300,
    }
}

async fn verify_chain(store: &dyn Store) -> u64 {
    let mut v = ChainVerifier::default();
    for e in store.audit_events(0, 1_000_000).await.unwrap() {
        v.check(&e).unwrap();
    }
    v.verified()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_of_several_primitives_commits_together() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let store = schema.open().await;
    let seq = store
        .transact(|tx| {
            tx.insert_challenge(&challenge("c1"))?;
            tx.insert_session(&session("s1"))?;
            tx.insert_agent(&agent())?;
            tx.insert_grant(&grant(Some(3)))?;
            assert!(tx.label_taken(&omni(1), "laptop")?);
            assert!(tx.use_grant("g1", &omni(2), NOW)?);
            assert!(tx.revoke_session("s1", NOW)?);
            assert!(!tx.revoke_session("s1", NOW)?, "already revoked");
            tx.insert_signing_key(&SigningKeyRecord {
                kid: "k1".into(),
                public_jwk: "{}".into(),
                certificate: "cert".into(),
                sealed_private_key: Some(vec![0, 1, 2, 255]),
                created_at: NOW,
                activates_at: NOW,
                retired_at: None,
                withdrawn_at: None,
            })?;
            assert!(tx.reseal_signing_key("k1", &[9, 9])?);
            tx.append(&event(AuditKind::GrantCreated, 1))?;
            tx.append(&event(AuditKind::GrantRevoked, 2))
        })
        .await
        .unwrap();
    assert_eq!(seq, 2);

    let s = store.session("s1").await.unwrap().unwrap();
    assert_eq!(s.revoked_at, Some(NOW));
    assert_eq!(store.agent(&omni(2)).await.unwrap(), Some(agent()));
    assert_eq!(store.grant("g1").await.unwrap().unwrap().uses, 1);
    let keys = store.signing_keys().await.unwrap();
    assert_eq!(keys[0].sealed_private_key.as_deref(), Some(&[9u8, 9][..]));
    assert_eq!(verify_chain(store.as_ref()).await, 2);
    let events = store.audit_events(0, 10).await.unwrap();
    assert_eq!(events[1].details, event(AuditKind::GrantRevoked, 2).details);

    // A duplicate is a conflict, not a database failure.
    let dup = store
        .transact(|tx| tx.insert_challenge(&challenge("c1")))
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    store.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_closure_writes_nothing() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let store = schema.open().await;
    store
        .append_audit(event(AuditKind::GrantCreated, 0))
        .await
        .unwrap();
    let failed = store
        .transact(|tx| {
            tx.insert_challenge(&challenge("c1"))?;
            tx.insert_session(&session("s1"))?;
            tx.append(&event(AuditKind::AgentRemoved, 1))?;
            Err::<(), _>(StoreError::Conflict("the broker said no".into()))
        })
        .await;
    assert!(matches!(failed, Err(StoreError::Conflict(_))));
    assert!(store.session("s1").await.unwrap().is_none());
    let taken = store.transact(|tx| tx.take_challenge("c1")).await.unwrap();
    assert!(taken.is_none());
    // The chain continues from the last committed event: no gap where the dropped one was.
    assert_eq!(
        store
            .append_audit(event(AuditKind::GrantRevoked, 2))
            .await
            .unwrap(),
        2
    );
    assert_eq!(verify_chain(store.as_ref()).await, 2);
}

/// A closure that ignores a failed statement cannot commit what it did around it: the
/// statement aborted the work's savepoint, so the work fails, and only it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_that_ignores_a_failed_statement_still_fails_alone() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let store = schema.open().await;
    store
        .transact(|tx| tx.insert_challenge(&challenge("taken")))
        .await
        .unwrap();
    let ignoring = store.transact(|tx| {
        tx.insert_session(&session("s-ignoring"))?;
        let duplicate = tx.insert_challenge(&challenge("taken"));
        assert!(matches!(duplicate, Err(StoreError::Conflict(_))));
        tx.append(&event(AuditKind::AgentRemoved, 1))
    });
    let neighbour = store.transact(|tx| {
        tx.insert_session(&session("s-neighbour"))?;
        tx.append(&event(AuditKind::GrantCreated, 2))
    });
    let (ignoring, neighbour) = tokio::join!(ignoring, neighbour);
    assert!(ignoring.is_err(), "got {ignoring:?}");
    assert_eq!(neighbour.unwrap(), 1);
    assert!(store.session("s-ignoring").await.unwrap().is_none());
    assert!(store.session("s-neighbour").await.unwrap().is_some());
    assert_eq!(verify_chain(store.as_ref()).await, 1);
}

/// Rate counts are sent with a later statement; one PostgreSQL would refuse (a key with a NUL
/// byte, which a client's input could carry) must fail its own work, not the batch it rides in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_key_postgres_cannot_store_fails_its_work_alone() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let store = schema.open().await;
    let window = RateWindow {
        seconds: 60,
        limit: 10,
    };
    let mut tasks = Vec::new();
    for i in 0..32i64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = if i == 7 { "ip:\0evil" } else { "ip:fine" };
            store
                .transact(move |tx| {
                    tx.count_use(key, window, NOW)?;
                    tx.append(&event(AuditKind::Mint, i))
                })
                .await
        }));
    }
    let mut failed = 0;
    for task in tasks {
        if task.await.unwrap().is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 1);
    let counted = store
        .transact(move |tx| tx.window_count("ip:fine", window, NOW))
        .await
        .unwrap();
    assert_eq!(counted, 31);
    assert_eq!(verify_chain(store.as_ref()).await, 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_write_one_gapless_chain() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    // Opened together: the migration runs once, under the advisory lock.
    let (a, b) = tokio::join!(schema.open(), schema.open());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .transact(move |tx| {
                    tx.count_use(
                        "bucket",
                        RateWindow {
                            seconds: 60,
                            limit: 1000,
                        },
                        NOW,
                    )?;
                    tx.append(&event(AuditKind::Mint, i))
                })
                .await
                .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    assert_eq!(verify_chain(a.as_ref()).await, 200);
    assert_eq!(verify_chain(b.as_ref()).await, 200);
    let page = a
        .audit_for_master(
            omni(1).as_str(),
            agentkeys_store::AuditQuery {
                after_seq: 10,
                limit: 5,
                kind: Some("mint".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [11, 12, 13, 14, 15]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_is_used_exactly_max_uses_times_across_instances() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let (a, b) = (schema.open().await, schema.open().await);
    a.transact(|tx| {
        tx.insert_agent(&agent())?;
        tx.insert_grant(&grant(Some(7)))
    })
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .transact(|tx| tx.use_grant("g1", &omni(2), NOW))
                .await
                .unwrap()
        }));
    }
    let mut used = 0;
    for t in tasks {
        used += u32::from(t.await.unwrap());
    }
    assert_eq!(used, 7);
    assert_eq!(b.grant("g1").await.unwrap().unwrap().uses, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_counts_add_up_across_instances() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let (a, b) = (schema.open().await, schema.open().await);
    let window = RateWindow {
        seconds: 60,
        limit: 100,
    };
    let mut tasks = Vec::new();
    for i in 0..50 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .transact(move |tx| tx.count_use("actor", window, NOW))
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let counted = a
        .transact(move |tx| tx.window_count("actor", window, NOW))
        .await
        .unwrap();
    assert_eq!(counted, 50);
    // The next window starts again from zero.
    let next = b
        .transact(move |tx| {
            tx.count_use("actor", window, NOW + 60)?;
            tx.window_count("actor", window, NOW + 60)
        })
        .await
        .unwrap();
    assert_eq!(next, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_is_taken_once_across_instances() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let (a, b) = (schema.open().await, schema.open().await);
    a.transact(|tx| tx.insert_challenge(&challenge("c1")))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store.transact(|tx| tx.take_challenge("c1")).await.unwrap()
        }));
    }
    let mut taken = Vec::new();
    for t in tasks {
        taken.extend(t.await.unwrap());
    }
    assert_eq!(taken, [challenge("c1")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_newer_than_the_binary_is_refused() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    drop(schema.open().await);
    exec(
        &schema.url(),
        "INSERT INTO schema_migrations (version) VALUES (999)",
    )
    .await;
    let refused = PostgresStore::open(&schema.url()).await;
    assert!(matches!(refused, Err(StoreError::Migrate(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_reconnects_after_losing_its_connection() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    // Named after the schema, so only this test's writer is killed.
    let url = format!("{}&application_name={}", schema.url(), schema.name);
    let store = agentkeys_store::open(&url).await.unwrap();
    store
        .append_audit(event(AuditKind::GrantCreated, 0))
        .await
        .unwrap();
    exec(
        &schema.base,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = '{}-writer'",
            schema.name
        ),
    )
    .await;
    // The batch that finds the connection dead fails as a whole; the next one reconnects.
    let mut failures = 0;
    let seq = loop {
        match store.append_audit(event(AuditKind::AgentResumed, 1)).await {
            Ok(seq) => break seq,
            Err(StoreError::Commit(_) | StoreError::Unavailable(_)) if failures == 0 => {
                failures += 1
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(seq, 2);
    assert_eq!(verify_chain(store.as_ref()).await, 2);
}
