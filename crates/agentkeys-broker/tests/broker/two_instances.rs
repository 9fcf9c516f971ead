//! Two real broker processes on one database, as behind a load balancer: everything a client
//! starts on one instance finishes on the other, limits and grant uses add up across both, a
//! key rotated through one is used by both, and killing one with SIGKILL under load loses no
//! audit event of a token any client received. Runs on a shared SQLite file by default and on
//! PostgreSQL with `AGENTKEYS_TEST_DATABASE=postgres://…`; keys are sealed in the store under a
//! key-encryption key in both cases, so both instances sign with the same keys.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkeys_types::login::code_challenge;
use agentkeys_types::pairing::{ProofAction, proof_message};
use agentkeys_wallet::WalletKey;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{free_port, private_tempdir, sign, test_database, write_kek};

/// Per-minute mint limit of every actor, shared by both instances.
const MINT_LIMIT: u64 = 30;

struct Cluster {
    issuer: String,
    database_url: String,
    kek: PathBuf,
    _dirs: Vec<tempfile::TempDir>,
    a: Broker,
    b: Broker,
    http: reqwest::Client,
}

struct Broker {
    url: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn broker_command(database_url: &str, kek: &Path, data_dir: &Path) -> Command {
    let mut c = crate::app::broker_binary();
    c.env("BROKER_DATABASE_URL", database_url)
        .env("BROKER_KEY_ENCRYPTION_KEY_FILE", kek)
        .env("BROKER_DATA_DIR", data_dir);
    c
}

impl Broker {
    fn start(cluster_issuer: &str, database_url: &str, kek: &Path, data_dir: PathBuf) -> Self {
        let port = free_port();
        let log = data_dir.with_extension("log");
        let out = std::fs::File::create(&log).unwrap();
        let child = broker_command(database_url, kek, &data_dir)
            .args([
                "serve",
                "--dev",
                "--email-dev-log-links",
                "--log-format",
                "json",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--issuer", cluster_issuer])
            .env("BROKER_KEY_REFRESH_SECONDS", "1")
            .env("BROKER_MINT_RATE_PER_MINUTE", MINT_LIMIT.to_string())
            .env("BROKER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        let broker = Self {
            url: format!("http://127.0.0.1:{port}"),
            data_dir,
            log,
            child,
        };
        broker.wait_ready();
        broker
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            let ready = std::process::Command::new("curl")
                .args(["-fsS", "--max-time", "2", &format!("{}/readyz", self.url)])
                .output()
                .is_ok_and(|o| o.status.success());
            if ready {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "broker at {} not ready: {}",
                self.url,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last one-time code the development mailer wrote to this instance's log for `to`.
    fn mailed_code(&self, to: &str) -> Option<String> {
        let log = std::fs::File::open(&self.log).ok()?;
        BufReader::new(log)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .filter(|v| v["to"] == to)
            .filter_map(|v| v["code"].as_str().map(str::to_owned))
            .last()
    }
}

impl Cluster {
    async fn start() -> Self {
        let data = private_tempdir();
        let kek_dir = private_tempdir();
        let kek = write_kek(kek_dir.path());
        let database_url = match test_database().await {
            Some(url) => url,
            None => format!("sqlite://{}", data.path().join("shared.db").display()),
        };
        // Both instances answer as one issuer (the load balancer's URL); its port is A's.
        let issuer_port = free_port();
        let issuer = format!("http://127.0.0.1:{issuer_port}");
        // As an operator deploys: the schema first, then the first key, then the instances.
        let out = broker_command(&database_url, &kek, &data.path().join("a"))
            .arg("migrate")
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("is up to date"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = broker_command(&database_url, &kek, &data.path().join("a"))
            .args(["keys", "generate"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let a = Broker::start(&issuer, &database_url, &kek, data.path().join("a"));
        let b = Broker::start(&issuer, &database_url, &kek, data.path().join("b"));
        Self {
            issuer,
            database_url,
            kek,
            _dirs: vec![data, kek_dir],
            a,
            b,
            http: reqwest::Client::new(),
        }
    }

    async fn post(
        &self,
        on: &Broker,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> reqwest::Response {
        let mut r = self.http.post(format!("{}{path}", on.url)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap()
    }

    /// A wallet sign-in: the challenge from `issue`, answered on `answer`.
    async fn sign_in(&self, issue: &Broker, answer: &Broker) -> (WalletKey, String) {
        let wallet = WalletKey::random();
        let c: Value = self
            .post(
                issue,
                "/v1/auth/wallet/challenge",
                None,
                json!({"address": wallet.address().to_string()}),
            )
            .await
            .json()
            .await
            .unwrap();
        let body = json!({"challenge_id": c["challenge_id"], "signature": sign(&wallet, c["message"].as_str().unwrap())});
        let r = self
            .post(answer, "/v1/auth/wallet/verify", None, body)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let s: Value = r.json().await.unwrap();
        (wallet, s["session_token"].as_str().unwrap().to_owned())
    }

    fn keys(&self, args: &[&str]) -> String {
        let out = broker_command(&self.database_url, &self.kek, &self.a.data_dir)
            .arg("keys")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn jwt_part(jwt: &str, index: usize) -> Value {
    let part = jwt.split('.').nth(index).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn mint(http: &reqwest::Client, on: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let r = http
        .post(format!("{on}/v1/mint-oidc-jwt"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await;
    match r {
        Ok(r) => {
            let status = r.status();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Value::Null),
    }
}

async fn kids(http: &reqwest::Client, on: &Broker) -> Vec<String> {
    let jwks: Value = http
        .get(format!("{}/.well-known/jwks.json", on.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_behave_as_one_broker() {
    let cluster = Cluster::start().await;
    let (a, b, http) = (&cluster.a, &cluster.b, &cluster.http);

    // A wallet challenge issued by A verifies once on B, and never again on either.
    let wallet = WalletKey::random();
    let c: Value = cluster
        .post(
            a,
            "/v1/auth/wallet/challenge",
            None,
            json!({"address": wallet.address().to_string()}),
        )
        .await
        .json()
        .await
        .unwrap();
    let answer = json!({"challenge_id": c["challenge_id"], "signature": sign(&wallet, c["message"].as_str().unwrap())});
    let r = cluster
        .post(b, "/v1/auth/wallet/verify", None, answer.clone())
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let master: Value = r.json().await.unwrap();
    let master_token = master["session_token"].as_str().unwrap().to_owned();
    for replay_on in [a, b] {
        let r = cluster
            .post(replay_on, "/v1/auth/wallet/verify", None, answer.clone())
            .await;
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "a challenge answers once"
        );
    }

    // Pairing started on A, approved through B, collected by polling A.
    let device = WalletKey::random();
    let device_address = device.address().to_string().to_lowercase();
    let mut proof_ms = chrono_ms();
    let mut proof = |action, pairing: Option<&str>| {
        proof_ms += 1;
        let msg = proof_message(&cluster.issuer, action, &device_address, pairing, proof_ms);
        (proof_ms, sign(&device, &msg))
    };
    let (ts, sig) = proof(ProofAction::Pair, None);
    let started: Value = cluster
        .post(
            a,
            "/v1/agents/pairing",
            None,
            json!({"device_address": device_address, "timestamp_ms": ts, "signature": sig}),
        )
        .await
        .json()
        .await
        .unwrap();
    let pairing_id = started["pairing_id"].as_str().unwrap().to_owned();
    let r = cluster
        .post(
            b,
            "/v1/agents/pairing/approve",
            Some(&master_token),
            json!({"code": started["code"], "label": "worker"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (ts, sig) = proof(ProofAction::Poll, Some(&pairing_id));
    let r = cluster
        .post(
            a,
            "/v1/agents/pairing/poll",
            None,
            json!({"pairing_id": pairing_id, "timestamp_ms": ts, "signature": sig}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let polled: Value = r.json().await.unwrap();
    let agent_token = polled["session"]["session_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent_omni = polled["agent"]["agent_omni"].as_str().unwrap().to_owned();
    let (ts, sig) = proof(ProofAction::Poll, Some(&pairing_id));
    let again = cluster
        .post(
            b,
            "/v1/agents/pairing/poll",
            None,
            json!({"pairing_id": pairing_id, "timestamp_ms": ts, "signature": sig}),
        )
        .await;
    assert_eq!(
        again.status(),
        StatusCode::CONFLICT,
        "the agent's session is delivered once"
    );

    // An email sign-in started on A is collected on B with the mailed code, once.
    let verifier = "v".repeat(43);
    let started: Value = cluster
        .post(
            a,
            "/v1/auth/email/start",
            None,
            json!({"email": "carol@example.com", "code_challenge": code_challenge(&verifier)}),
        )
        .await
        .json()
        .await
        .unwrap();
    let code = a
        .mailed_code("carol@example.com")
        .expect("A's development mailer logged the code");
    let collect =
        json!({"request_id": started["request_id"], "code": code, "code_verifier": verifier});
    let r = cluster
        .post(b, "/v1/auth/email/collect", None, collect.clone())
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = cluster
        .post(a, "/v1/auth/email/collect", None, collect)
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "collected once, on either instance"
    );

    // Each instance keeps the sessions it has minted for in memory, but a mint's transaction
    // decides liveness: a logout and a suspension made through A are seen by B's next mint,
    // though B minted with both sessions a moment before.
    let (_, leaving) = cluster.sign_in(a, b).await;
    assert_eq!(
        mint(http, &b.url, &leaving, json!({})).await.0,
        StatusCode::OK
    );
    let r = cluster
        .post(a, "/v1/session/logout", Some(&leaving), json!({}))
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    for on in [&b.url, &b.url, &a.url] {
        let (status, body) = mint(http, on, &leaving, json!({})).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
        );
    }
    let on_agent = |action: &str| format!("/v1/agents/{agent_omni}/{action}");
    assert_eq!(
        mint(http, &b.url, &agent_token, json!({})).await.0,
        StatusCode::OK
    );
    let r = cluster
        .post(a, &on_agent("suspend"), Some(&master_token), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (status, body) = mint(http, &b.url, &agent_token, json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("agent_suspended"))
    );
    let r = cluster
        .post(a, &on_agent("resume"), Some(&master_token), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        mint(http, &b.url, &agent_token, json!({})).await.0,
        StatusCode::OK
    );

    // Rate limits add up: MINT_LIMIT per minute in total, whichever instance is asked.
    wait_for_fresh_minute().await;
    let (_, limited) = cluster.sign_in(b, a).await;
    let mut allowed = 0;
    for i in 0..MINT_LIMIT * 2 {
        let on = if i % 2 == 0 { &a.url } else { &b.url };
        let (status, _) = mint(http, on, &limited, json!({})).await;
        match status {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        allowed, MINT_LIMIT,
        "one limit across both instances, not one each"
    );

    // A grant with max_uses = k under concurrent mints on both instances is used exactly k times.
    let k = 5;
    let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let expires = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let r = cluster
        .post(
            a,
            "/v1/grants",
            Some(&master_token),
            json!({"agent": agent_omni, "scope": "inbox/", "expires_at": expires, "max_uses": k}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let grant: Value = r.json().await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (http, on) = (
            http.clone(),
            if i % 2 == 0 {
                a.url.clone()
            } else {
                b.url.clone()
            },
        );
        let (token, grant_id) = (agent_token.clone(), grant["grant_id"].clone());
        tasks.spawn(async move {
            mint(&http, &on, &token, json!({"grant_id": grant_id}))
                .await
                .0
        });
    }
    let mut used = 0;
    while let Some(status) = tasks.join_next().await {
        match status.unwrap() {
            StatusCode::OK => used += 1,
            StatusCode::FORBIDDEN => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        used, k,
        "exactly max_uses mints under the grant, across both instances"
    );

    // A key rotated through A's host is published by B, and both sign with it after the overlap.
    let old_kid = kids(http, b).await[0].clone();
    let rotated = cluster.keys(&["rotate", "--overlap-seconds", "3"]);
    let new_kid = rotated
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !kids(http, b).await.contains(&new_kid) {
        assert!(Instant::now() < deadline, "B never published {new_kid}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, rotating) = cluster.sign_in(a, b).await;
    for on in [&a.url, &b.url] {
        let (status, body) = mint(http, on, &rotating, json!({})).await;
        assert_eq!(status, StatusCode::OK);
        let kid = jwt_part(body["jwt"].as_str().unwrap(), 0)["kid"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(kid, new_kid, "{on} signs with the rotated key");
    }
    assert!(
        kids(http, a).await.contains(&old_kid),
        "the old key stays published for its tokens"
    );

    let received = kill_a_under_load(&cluster).await;

    // Every JWT any client received has its audit event, and the chain verifies.
    let store = agentkeys_store::open(&cluster.database_url).await.unwrap();
    let mut audited = HashSet::new();
    let mut verifier = agentkeys_store::audit::ChainVerifier::default();
    let mut after = 0;
    loop {
        let page = store.audit_events(after, 10_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            verifier.check(e).unwrap();
            if e.kind == "mint" && e.outcome == "ok" {
                audited.insert(e.details["jti"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    let missing: Vec<_> = received.iter().filter(|j| !audited.contains(*j)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} JWTs have no audit event",
        missing.len(),
        received.len()
    );
    let out = broker_command(&cluster.database_url, &cluster.kek, &cluster.b.data_dir)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An instance killed with SIGKILL right after counting mints, then restarted on the same
/// database, still counts them: the limit holds across a crash (on SQLite, the counts of the
/// last commits are in the journal the restart replays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uses_counted_before_a_sigkill_still_count_after_the_restart() {
    let mut cluster = Cluster::start().await;
    let (_, token) = cluster.sign_in(&cluster.a, &cluster.a).await;
    wait_for_fresh_minute().await;
    let before = 10;
    for _ in 0..before {
        let (status, _) = mint(&cluster.http, &cluster.a.url, &token, json!({})).await;
        assert_eq!(status, StatusCode::OK);
    }
    let status = Command::new("kill")
        .args(["-9", &cluster.a.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = cluster.a.child.wait();
    let data_dir = cluster.a.data_dir.clone();
    cluster.a = Broker::start(
        &cluster.issuer,
        &cluster.database_url,
        &cluster.kek,
        data_dir,
    );
    let mut allowed = 0;
    for _ in 0..MINT_LIMIT {
        match mint(&cluster.http, &cluster.a.url, &token, json!({}))
            .await
            .0
        {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(allowed, MINT_LIMIT - before, "the restart forgot no use");
}

/// Mints at 8 concurrent clients on each instance, SIGKILLs A in the middle, and keeps minting
/// on B: B must keep serving. Returns the jti of every JWT a client received.
async fn kill_a_under_load(cluster: &Cluster) -> Vec<String> {
    // Fresh masters, so the per-minute limit is not what stops them.
    let mut tokens = Vec::new();
    for _ in 0..16 {
        tokens.push(cluster.sign_in(&cluster.b, &cluster.b).await.1);
    }
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop_at = Instant::now() + Duration::from_secs(4);
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let after_kill_on_b = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let on = if i % 2 == 0 {
            cluster.a.url.clone()
        } else {
            cluster.b.url.clone()
        };
        let (http, received, killed, after_kill_on_b) = (
            cluster.http.clone(),
            received.clone(),
            killed.clone(),
            after_kill_on_b.clone(),
        );
        let on_b = i % 2 == 1;
        tasks.spawn(async move {
            // Bounded in count and time.
            for _ in 0..(MINT_LIMIT - 1) {
                if Instant::now() >= stop_at {
                    break;
                }
                let (status, body) = mint(&http, &on, &token, json!({})).await;
                if status == StatusCode::OK {
                    let jti = jwt_part(body["jwt"].as_str().unwrap(), 1)["jti"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    received.lock().unwrap().push(jti);
                    if on_b && killed.load(std::sync::atomic::Ordering::SeqCst) {
                        after_kill_on_b.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = cluster.a.child.id();
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    killed.store(true, std::sync::atomic::Ordering::SeqCst);
    while tasks.join_next().await.is_some() {}
    assert!(
        after_kill_on_b.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "B kept minting after A was killed"
    );
    received.lock().unwrap().clone()
}

/// Milliseconds since the epoch, for device proofs.
fn chrono_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Waits until at least 20 s remain in the current minute, so a burst stays in one window.
async fn wait_for_fresh_minute() {
    let second = time::OffsetDateTime::now_utc().second();
    if second > 40 {
        tokio::time::sleep(Duration::from_secs(u64::from(61 - second))).await;
    }
}
