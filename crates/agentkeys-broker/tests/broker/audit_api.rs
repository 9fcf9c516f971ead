//! `GET /v1/audit` for masters, and the operator's export and signed checkpoints.

use agentkeys_broker::clock::Clock;
use agentkeys_store::audit::HashFormat;
use agentkeys_types::pairing::{ProofAction, proof_message};
use agentkeys_wallet::WalletKey;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{TestApp, error_of, sign};

async fn audit(app: &TestApp, token: &str, query: &str) -> reqwest::Response {
    app.get_as(token, &format!("/v1/audit{query}")).await
}

async fn page(app: &TestApp, token: &str, query: &str) -> Value {
    let r = audit(app, token, query).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Pairs a new agent under `master_token`; returns (agent session token, agent omni).
async fn pair(app: &TestApp, master_token: &str, label: &str) -> (String, String) {
    let key = WalletKey::random();
    let address = key.address().to_string().to_lowercase();
    let mut ms = app.clock.now() * 1000;
    let mut proof = |action, pairing: Option<&str>| {
        ms += 1;
        let msg = proof_message(&app.url, action, &address, pairing, ms);
        (ms, sign(&key, &msg))
    };
    let (ts, sig) = proof(ProofAction::Pair, None);
    let started: Value = app
        .post_json(
            "/v1/agents/pairing",
            json!({"device_address": address, "timestamp_ms": ts, "signature": sig}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = started["pairing_id"].as_str().unwrap().to_owned();
    let r = app
        .http
        .post(format!("{}/v1/agents/pairing/approve", app.url))
        .bearer_auth(master_token)
        .json(&json!({"code": started["code"], "label": label}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (ts, sig) = proof(ProofAction::Poll, Some(&id));
    let r = app
        .post_json(
            "/v1/agents/pairing/poll",
            json!({"pairing_id": id, "timestamp_ms": ts, "signature": sig}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    (
        body["session"]["session_token"]
            .as_str()
            .unwrap()
            .to_owned(),
        body["agent"]["agent_omni"].as_str().unwrap().to_owned(),
    )
}

fn kinds(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_master_reads_its_own_and_its_agents_events_only() {
    let app = TestApp::start().await;
    let (_, m) = app.sign_in().await;
    let (_, other) = app.sign_in().await;
    let (agent_token, agent_omni) = pair(&app, &m.session_token, "bot").await;
    app.mint_jwt(&m.session_token).await;
    app.mint_jwt(&agent_token).await;
    app.mint_jwt(&agent_token).await;
    app.mint_jwt(&other.session_token).await;

    let all = page(&app, &m.session_token, "").await;
    assert_eq!(all["next"], Value::Null);
    let events = all["events"].as_array().unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "oldest first");
    for e in events {
        let actor = e["actor"].as_str().unwrap();
        assert!(
            actor == m.omni_account || actor == agent_omni,
            "foreign event {e}"
        );
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(e["hash"].as_str().unwrap().len(), 64);
    }
    let k = kinds(&all);
    assert_eq!(k.iter().filter(|k| *k == "mint").count(), 3);
    assert!(k.iter().any(|k| k == "sign_in.wallet"));
    // No secret is in what a master reads.
    let text = all.to_string();
    assert!(!text.contains(&m.session_token) && !text.contains(&agent_token));
    assert!(!text.contains("eyJ"));

    // Filters.
    let agent_mints = page(
        &app,
        &m.session_token,
        &format!("?kind=mint&agent={agent_omni}"),
    )
    .await;
    assert_eq!(kinds(&agent_mints), ["mint", "mint"]);
    let mine = page(
        &app,
        &m.session_token,
        &format!("?kind=mint&agent={}", m.omni_account),
    )
    .await;
    assert_eq!(kinds(&mine).len(), 1);
    // The other master's agent filter on m's agent finds nothing.
    let none = page(&app, &other.session_token, &format!("?agent={agent_omni}")).await;
    assert_eq!(kinds(&none).len(), 0);
    let future = page(&app, &m.session_token, "?since=2999-01-01T00:00:00Z").await;
    assert_eq!(kinds(&future).len(), 0);
    let past = page(&app, &m.session_token, "?until=2000-01-01T00:00:00%2B00:00").await;
    assert_eq!(kinds(&past).len(), 0);

    // Paging: follow `next` to the same events.
    let mut after = 0;
    let mut paged = Vec::new();
    loop {
        let p = page(&app, &m.session_token, &format!("?limit=2&after={after}")).await;
        let events = p["events"].as_array().unwrap();
        assert!(events.len() <= 2);
        paged.extend(events.iter().map(|e| e["seq"].as_u64().unwrap()));
        match p["next"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(paged, seqs);

    // An agent cannot read its master's log.
    let (status, kind, _) = error_of(audit(&app, &agent_token, "").await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::FORBIDDEN, "masters_only")
    );
    let r = app.get("/v1/audit").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// A master whose events are spread thin over a long log, asking for a kind it never had, gets
/// a page that stops after a bounded search: no events, and a `next` to go on from. Following
/// `next` reaches the end and lists exactly its events. SQLite only: PostgreSQL's per-event
/// index finds the rows exactly, so its pages never stop short (the store's conformance suite
/// pages both backends through such a log).
#[tokio::test]
async fn a_sparse_masters_filtered_listing_stops_short_and_goes_on() {
    let app = TestApp::start().await;
    if !app.on_sqlite() {
        return;
    }
    let (_, m) = app.sign_in().await;
    let head = app.state.store.audit_events(0, 1_000).await.unwrap().len();
    // 300 blocks of 1,024 events by another master, with one mint in m's name ending each.
    let master = &m.omni_account;
    app.sql(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 307200)
         INSERT INTO audit_events
             (seq, time, kind, actor, master, outcome, details, prev_hash, hash, hash_format)
         SELECT {head} + i, 0, 'mint', 'x',
                CASE WHEN i % 1024 = 0 THEN '{master}' ELSE 'filler' END, 'ok', '{{}}', '', '', 2
         FROM n;
         INSERT OR IGNORE INTO audit_master_blocks (master, block)
         SELECT DISTINCT master, seq >> 10 FROM audit_events WHERE seq > {head};"
    ))
    .await;

    let first = page(&app, &m.session_token, "?kind=pairing.approved&limit=10").await;
    assert_eq!(first["events"].as_array().unwrap().len(), 0);
    let next = first["next"]
        .as_u64()
        .expect("a page that stopped short has a next");
    let query = format!("?kind=pairing.approved&limit=10&after={next}");
    let second = page(&app, &m.session_token, &query).await;
    assert_eq!(second["events"].as_array().unwrap().len(), 0);
    assert_eq!(
        second["next"],
        Value::Null,
        "the second page reaches the end"
    );

    // The mints in m's name, one per block: the pages follow one another and list each once.
    let mut mints = 0;
    let mut after = 0;
    loop {
        let query = format!("?kind=mint&limit=1000&after={after}");
        let p = page(&app, &m.session_token, &query).await;
        for e in p["events"].as_array().unwrap() {
            assert_eq!(e["actor"], "x", "only the mints put in m's name: {e}");
            mints += 1;
        }
        match p["next"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(mints, 300);
}

#[tokio::test]
async fn bad_audit_queries_are_400_with_the_envelope() {
    let app = TestApp::start().await;
    let (_, m) = app.sign_in().await;
    for q in [
        "?limit=0",
        "?limit=1001",
        "?limit=x",
        "?after=-1",
        "?after=1.5",
        "?kind=",
        "?kind=DROP%20TABLE",
        "?agent=bot",
        "?agent=ABCDEF",
        "?since=yesterday",
        "?until=1700000000",
        "?since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z",
        "?colour=blue",
        "?kind=%ZZ",
    ] {
        let (status, kind, message) = error_of(audit(&app, &m.session_token, q).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {message}");
        assert_eq!(kind, "invalid_request", "{q}");
    }
    assert_eq!(
        audit(&app, &m.session_token, "?limit=1000").await.status(),
        StatusCode::OK
    );
}

fn broker(app: &TestApp, args: &[&str]) -> std::process::Output {
    app.broker_command().args(args).output().unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test]
async fn the_ndjson_export_reverifies() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    for _ in 0..3 {
        app.mint_jwt(&s.session_token).await;
    }
    let text = ok(&broker(&app, &["audit", "export"]));
    let events: Vec<agentkeys_store::AuditEvent> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events, app.audit().await);
    assert_eq!(events.len(), 5);
    let mut v = agentkeys_store::audit::ChainVerifier::default();
    for e in &events {
        v.check(e).unwrap();
    }
    assert!(!text.contains(&s.session_token) && !text.contains("eyJ"));

    let tail = ok(&broker(&app, &["audit", "export", "--after", "3"]));
    let seqs: Vec<u64> = tail
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [4, 5]);
}

// Multi-threaded: the server must answer the child process's JWKS fetch while we wait on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_verifies_against_the_jwks_and_catches_tampering() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    for _ in 0..3 {
        app.mint_jwt(&s.session_token).await;
    }
    let jws = ok(&broker(&app, &["audit", "checkpoint"]))
        .trim()
        .to_owned();
    assert_eq!(jws.split('.').count(), 3);
    let dir = app.data_dir();
    let cp_file = dir.join("cp.jws");
    std::fs::write(&cp_file, &jws).unwrap();
    let jwks_file = dir.join("jwks.json");
    std::fs::write(&jwks_file, app.jwks().await.to_string()).unwrap();

    // The signature checks with jsonwebtoken and the published key.
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(app.jwks().await).unwrap();
    let cp = agentkeys_broker::checkpoint::verify_signature(&jws, &jwks).unwrap();
    assert_eq!(cp.seq, 5);
    assert_eq!(cp.head_hash, app.audit().await[4].hash);

    let verify = |file: &std::path::Path| {
        broker(
            &app,
            &[
                "audit",
                "verify-checkpoint",
                "--jwks-file",
                jwks_file.to_str().unwrap(),
                file.to_str().unwrap(),
            ],
        )
    };
    assert!(ok(&verify(&cp_file)).contains("checkpoint ok: seq 5"));
    // Over HTTP too.
    let by_url = broker(
        &app,
        &[
            "audit",
            "verify-checkpoint",
            "--jwks-url",
            &format!("{}/.well-known/jwks.json", app.url),
            cp_file.to_str().unwrap(),
        ],
    );
    ok(&by_url);

    // Later events do not invalidate it.
    app.mint_jwt(&s.session_token).await;
    ok(&verify(&cp_file));

    // A forged payload (same signature) fails.
    let parts: Vec<&str> = jws.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["seq"] = json!(4);
    claims["head_hash"] = json!(app.audit().await[3].hash);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.to_string()),
        parts[2]
    );
    let forged_file = dir.join("forged.jws");
    std::fs::write(&forged_file, forged).unwrap();
    let out = verify(&forged_file);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("signature"));

    // A rewritten row at that seq fails, even with the chain recomputed after it.
    app.sql("UPDATE audit_events SET outcome = 'denied' WHERE seq = 5")
        .await;
    let out = verify(&cp_file);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("seq 5"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rechain(&app).await;
    ok(&broker(&app, &["audit", "verify"]));
    let out = verify(&cp_file);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rewritten"), "{stderr}");

    // A truncated tail fails too.
    app.sql("DELETE FROM audit_events WHERE seq >= 5").await;
    let out = verify(&cp_file);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed"));
}

/// Recomputes every hash, as an attacker who rewrote history would.
async fn rechain(app: &TestApp) {
    rechain_in(app, None).await
}

/// Recomputes every hash, each in its own format or all in `format`.
async fn rechain_in(app: &TestApp, format: Option<HashFormat>) {
    use agentkeys_store::audit::{GENESIS_HASH, canonical, chain_hash};
    let events = app.state.store.audit_events(0, 1_000_000).await.unwrap();
    let mut prev = GENESIS_HASH.to_owned();
    let mut updates = String::new();
    for e in events {
        let format = format.unwrap_or(e.hash_format);
        let hash = chain_hash(&prev, &canonical(format, e.seq, e.hashed()));
        updates.push_str(&format!(
            "UPDATE audit_events SET prev_hash = '{prev}', hash = '{hash}', hash_format = {}
             WHERE seq = {};\n",
            i64::from(format),
            e.seq
        ));
        prev = hash;
    }
    app.sql(&updates).await;
}

/// A database upgraded from before RFC 8785 holds events of the first format: they still
/// verify, and the chain goes on from them in the current one.
#[tokio::test]
async fn a_chain_begun_before_rfc_8785_still_verifies() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    app.mint_jwt(&s.session_token).await;
    rechain_in(&app, Some(HashFormat::SortedKeys)).await;
    ok(&broker(&app, &["audit", "verify"]));
    let before = app.audit().await.len();
    app.mint_jwt(&s.session_token).await;
    let formats: Vec<i64> = app
        .audit()
        .await
        .iter()
        .map(|e| i64::from(e.hash_format))
        .collect();
    let mut expected = vec![1; before];
    expected.push(2);
    assert_eq!(formats, expected);
    ok(&broker(&app, &["audit", "verify"]));
    // Content changed under either format is caught.
    app.sql("UPDATE audit_events SET outcome = 'denied' WHERE seq = 1")
        .await;
    assert!(!broker(&app, &["audit", "verify"]).status.success());
}
