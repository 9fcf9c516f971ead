//! Anonymous traffic cannot grow the audit log without bound or lock other users out (SPEC
//! §11.9): the in-memory limiter in front of the unauthenticated routes, the aggregated
//! `anonymous.denied` events, client IPs behind a trusted proxy, the purge of unused requests,
//! and the per-IP limit on pairing-code guesses.
//!
//! Test clients get their own loopback addresses (127.0.0.x: the whole /8 is local on Linux),
//! so "another client IP" is a real TCP peer, not a header.

use std::net::IpAddr;

use agentkeys_broker::clock::Clock;
use agentkeys_broker::http::client_ip::{TrustedProxies, parse_trusted_proxy};
use agentkeys_broker::limiter::{Limits, Rate};
use agentkeys_types::pairing::{ProofAction, proof_message};
use agentkeys_wallet::WalletKey;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::app::{TestApp, error_of, sign};

/// A client whose connections come from `ip`.
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn send(
    app: &TestApp,
    client: &reqwest::Client,
    method: Method,
    path: &str,
    body: Option<Value>,
    bearer: Option<&str>,
) -> reqwest::Response {
    let mut req = client.request(method, format!("{}{path}", app.url));
    if let Some(body) = body {
        req = req.json(&body);
    }
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap()
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// A well-formed session token nobody was issued.
fn made_up_token() -> String {
    format!("aks_{}", "A".repeat(43))
}

/// A device's signed request to open a pairing (a real proof: it passes verification and costs
/// a store write when admitted).
fn pairing_body(app: &TestApp) -> Value {
    let key = WalletKey::random();
    let address = key.address().to_string().to_lowercase();
    let ts = app.clock.now() * 1000;
    let msg = proof_message(&app.url, ProofAction::Pair, &address, None, ts);
    json!({"device_address": address, "timestamp_ms": ts, "signature": sign(&key, &msg)})
}

fn anonymous_limits(per_minute: u64) -> Limits {
    Limits {
        per_client: Rate::per_minute(per_minute),
        global: Rate::per_second(1_000_000),
    }
}

/// One request of each unauthenticated kind, as an attacker would repeat it.
fn attack(app: &TestApp, route: usize) -> (Method, String, Option<Value>, Option<String>) {
    let secret = "B".repeat(43);
    let hex = random_hex(16);
    let signature = format!("0x{}", random_hex(65));
    match route {
        0 => (
            Method::POST,
            "/v1/auth/wallet/challenge".into(),
            Some(json!({"address": WalletKey::random().address().to_string()})),
            None,
        ),
        1 => (
            Method::POST,
            "/v1/auth/wallet/verify".into(),
            Some(json!({"challenge_id": hex, "signature": signature})),
            None,
        ),
        2 => (
            Method::POST,
            "/v1/auth/email/start".into(),
            Some(json!({"email": "victim@example.com", "code_challenge": secret})),
            None,
        ),
        3 => (
            Method::POST,
            "/v1/auth/email/browser".into(),
            Some(json!({"token": secret})),
            None,
        ),
        4 => (
            Method::POST,
            "/v1/auth/email/collect".into(),
            Some(json!({"request_id": secret, "code": "ABCD-EFGH", "code_verifier": secret})),
            None,
        ),
        5 => (
            Method::POST,
            "/v1/auth/oidc/start".into(),
            Some(json!({"provider": "google", "code_challenge": secret})),
            None,
        ),
        6 => (
            Method::POST,
            "/v1/auth/oidc/collect".into(),
            Some(json!({"request_id": secret, "code": "ABCD-EFGH", "code_verifier": secret})),
            None,
        ),
        7 => (
            Method::GET,
            format!(
                "/auth/oidc/callback?state={secret}&error={}",
                "x".repeat(4096)
            ),
            None,
            None,
        ),
        8 => (
            Method::POST,
            "/v1/agents/pairing".into(),
            Some(pairing_body(app)),
            None,
        ),
        9 => (
            Method::POST,
            "/v1/agents/pairing/poll".into(),
            Some(
                json!({"pairing_id": hex, "timestamp_ms": app.clock.now() * 1000, "signature": signature}),
            ),
            None,
        ),
        10 => (
            Method::POST,
            "/v1/agents/session".into(),
            Some(
                json!({"agent_omni": format!("0x{}", random_hex(32)), "timestamp_ms": app.clock.now() * 1000, "signature": signature}),
            ),
            None,
        ),
        _ => (
            Method::POST,
            "/v1/mint-oidc-jwt".into(),
            None,
            Some(made_up_token()),
        ),
    }
}
const ROUTES: usize = 12;

#[tokio::test]
async fn a_flood_of_every_unauthenticated_route_is_refused_in_memory_and_others_still_mint() {
    const LIMIT: usize = 10;
    const FLOOD: usize = 30;
    let app = TestApp::start_with(|s| s.anonymous_limits = anonymous_limits(LIMIT as u64)).await;

    // A legitimate master signs in from its own address (two anonymous requests of its own).
    let legit = client_from("127.0.0.3");
    let wallet = WalletKey::random();
    let c: Value = send(
        &app,
        &legit,
        Method::POST,
        "/v1/auth/wallet/challenge",
        Some(json!({"address": wallet.address().to_string()})),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let session: Value = send(
        &app,
        &legit,
        Method::POST,
        "/v1/auth/wallet/verify",
        Some(json!({"challenge_id": c["challenge_id"], "signature": sign(&wallet, c["message"].as_str().unwrap())})),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let token = session["session_token"].as_str().unwrap().to_owned();

    let audit_before = app.audit().await.len();
    let challenges_before = app.count_rows("wallet_challenges").await;
    let pairings_before = app.count_rows("pairing_requests").await;
    let mut admitted_challenges = 0;
    let mut admitted_pairings = 0;
    for route in 0..ROUTES {
        // Each route from its own attacker address, so each is shown to be limited by itself.
        let attacker = client_from(&format!("127.0.0.{}", 10 + route));
        let mut limited = 0;
        for _ in 0..FLOOD {
            let (method, path, body, bearer) = attack(&app, route);
            let r = send(&app, &attacker, method, &path, body, bearer.as_deref()).await;
            match r.status() {
                StatusCode::TOO_MANY_REQUESTS => {
                    let retry: i64 = r.headers()["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(retry >= 1, "{path}: Retry-After {retry}");
                    assert_eq!(error_of(r).await.1, "rate_limited", "{path}");
                    limited += 1;
                }
                status => {
                    // 503 is email start on a broker without email; never a 500.
                    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
                    admitted_challenges += usize::from(route == 0 && status == StatusCode::OK);
                    admitted_pairings += usize::from(route == 8 && status == StatusCode::OK);
                }
            }
        }
        assert_eq!(
            limited,
            FLOOD - LIMIT,
            "route {route}: 429s after the limit"
        );
    }
    assert_eq!(admitted_challenges, LIMIT);
    assert_eq!(admitted_pairings, LIMIT);

    // The refused requests wrote nothing: only admitted ones left rows.
    assert_eq!(
        app.count_rows("wallet_challenges").await - challenges_before,
        LIMIT as i64
    );
    assert_eq!(
        app.count_rows("pairing_requests").await - pairings_before,
        LIMIT as i64
    );
    // The audit log grew by the admitted pairings (each a device's signed request) and, once
    // the aggregated denials are flushed, by at most one event per flooding address.
    agentkeys_broker::flush_denials(&app.state).await;
    let events = app.audit().await;
    let grown = events.len() - audit_before;
    assert!(
        grown <= LIMIT + ROUTES,
        "{grown} audit events from {} requests",
        ROUTES * FLOOD
    );
    let aggregated: Vec<_> = events[audit_before..]
        .iter()
        .filter(|e| e.kind == "anonymous.denied")
        .collect();
    assert_eq!(
        aggregated.len(),
        2,
        "one per address with denials to count (unknown challenges, mints): {aggregated:?}"
    );

    // The signed-in master, from its own address, mints as before.
    for _ in 0..3 {
        let r = send(
            &app,
            &legit,
            Method::POST,
            "/v1/mint-oidc-jwt",
            None,
            Some(&token),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_valid_session_is_never_limited_by_the_anonymous_limiter() {
    let app = TestApp::start_with(|s| s.anonymous_limits = anonymous_limits(3)).await;
    let (_, master) = app.sign_in().await; // two anonymous requests of 3
    for _ in 0..10 {
        let r = app.mint(&made_up_token(), None).await;
        assert!(matches!(
            r.status(),
            StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
        ));
    }
    assert_eq!(
        app.mint(&made_up_token(), None).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Same address, but with a live session: the mint is not anonymous.
    for _ in 0..5 {
        assert_eq!(
            app.mint(&master.session_token, None).await.status(),
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn unauthenticated_denials_are_aggregated_per_client_but_a_real_challenge_is_audited_alone() {
    let app = TestApp::start().await;
    let before = app.audit().await.len();
    for _ in 0..40 {
        assert_eq!(
            app.mint(&made_up_token(), None).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let r = app
            .verify(&random_hex(16), &format!("0x{}", random_hex(65)))
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        app.audit().await.len(),
        before,
        "nothing is chained per request"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"agentkeys_anonymous_denials_total{kind="mint.unauthenticated"}"#),
        "{metrics}"
    );

    // A wrong signature over a real challenge is an attempt on a real address: its own event.
    let victim = WalletKey::random();
    let c = app.challenge(&victim.address().to_string()).await;
    let r = app
        .verify(&c.challenge_id, &sign(&WalletKey::random(), &c.message))
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let events = app.audit().await;
    let failed = events.last().unwrap();
    assert_eq!(
        (failed.kind.as_str(), failed.outcome.as_str()),
        ("sign_in.wallet", "failed")
    );
    assert!(
        failed.details["address"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(&victim.address().to_string())
    );

    // The flush writes one event for this client with every count, then nothing more.
    agentkeys_broker::flush_denials(&app.state).await;
    let events = app.audit().await;
    let denied: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "anonymous.denied")
        .collect();
    assert_eq!(denied.len(), 1);
    let d = &denied[0].details;
    assert_eq!(d["ip"], "127.0.0.1");
    assert_eq!(d["count"], 80);
    assert_eq!(d["kinds"]["mint.unauthenticated"], 40);
    assert_eq!(d["kinds"]["sign_in.wallet.unknown_challenge"], 40);
    agentkeys_broker::flush_denials(&app.state).await;
    assert_eq!(app.audit().await.len(), events.len());
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_the_key() {
    let app = TestApp::start_with(|s| {
        s.anonymous_limits = anonymous_limits(3);
        s.trusted_proxies = TrustedProxies::new(vec![parse_trusted_proxy("127.0.0.1").unwrap()]);
    })
    .await;
    let app_ref = &app;
    let challenge_from = move |xff: &'static str| {
        let app = app_ref;
        async move {
            app.http
                .post(format!("{}/v1/auth/wallet/challenge", app.url))
                .header("x-forwarded-for", xff)
                .json(&json!({"address": WalletKey::random().address().to_string()}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for _ in 0..3 {
        assert_eq!(challenge_from("198.51.100.1").await, StatusCode::OK);
    }
    assert_eq!(
        challenge_from("198.51.100.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client behind the same proxy has its own bucket.
    assert_eq!(challenge_from("198.51.100.2").await, StatusCode::OK);
    // Entries the client wrote itself (left of what the proxy saw) change nothing.
    assert_eq!(
        challenge_from("203.0.113.50, 198.51.100.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Denials are recorded under the forwarded client too.
    let r = app
        .http
        .post(format!("{}/v1/mint-oidc-jwt", app.url))
        .header("x-forwarded-for", "198.51.100.9")
        .bearer_auth(made_up_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    agentkeys_broker::flush_denials(&app.state).await;
    let events = app.audit().await;
    let denied = events
        .iter()
        .find(|e| e.kind == "anonymous.denied")
        .unwrap();
    assert_eq!(denied.details["ip"], "198.51.100.9");
}

#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = TestApp::start_with(|s| {
        s.anonymous_limits = anonymous_limits(3);
        // A proxy elsewhere is trusted; the test client (127.0.0.1) is not it.
        s.trusted_proxies = TrustedProxies::new(vec![parse_trusted_proxy("10.0.0.0/8").unwrap()]);
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        // A fresh spoofed address each time would mean a fresh bucket if it were believed.
        let r = app
            .http
            .post(format!("{}/v1/auth/wallet/challenge", app.url))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .json(&json!({"address": WalletKey::random().address().to_string()}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

#[tokio::test]
async fn expired_challenges_and_pairing_requests_are_purged_by_the_maintenance_task() {
    let app = TestApp::start().await;
    let wallet = WalletKey::random();
    app.challenge(&wallet.address().to_string()).await;
    let r = app
        .post_json("/v1/agents/pairing", pairing_body(&app))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.count_rows("wallet_challenges").await, 1);
    assert_eq!(app.count_rows("pairing_requests").await, 1);

    let mut chores = agentkeys_broker::Maintenance::new(app.state.clone());
    // Not yet expired: a purge keeps them.
    app.clock.advance(agentkeys_broker::PURGE_EVERY_SECONDS);
    chores.tick().await;
    assert_eq!(app.count_rows("wallet_challenges").await, 1);
    // Past both lifetimes (600 s): the next due purge removes them, with no day of grace.
    app.clock.advance(600);
    chores.tick().await;
    assert_eq!(app.count_rows("wallet_challenges").await, 0);
    assert_eq!(app.count_rows("pairing_requests").await, 0);
}

#[tokio::test]
async fn many_masters_from_one_ip_cannot_guess_pairing_codes_past_the_per_ip_limit() {
    const PER_IP: usize = 5;
    let app = TestApp::start_with(|s| {
        s.approve_limits = Limits {
            per_client: Rate::per_hour(PER_IP as u64),
            global: Rate::per_minute(1_000_000),
        }
    })
    .await;
    // Masters cost nothing: the attacker makes several (each has its own 20 per 10 minutes).
    let mut masters = Vec::new();
    for _ in 0..4 {
        masters.push(app.sign_in().await.1.session_token);
    }
    let attacker = client_from("127.0.0.40");
    let app_ref = &app;
    let guess = move |client: reqwest::Client, token: String, n: usize| {
        let app = app_ref;
        async move {
            send(
                app,
                &client,
                Method::POST,
                "/v1/agents/pairing/approve",
                Some(json!({"code": "ABCD-EFGH", "label": format!("guess-{n}")})),
                Some(&token),
            )
            .await
            .status()
        }
    };
    let mut wrong = 0;
    let mut limited = 0;
    for (m, token) in masters.iter().enumerate() {
        for n in 0..4 {
            match guess(attacker.clone(), token.clone(), m * 10 + n).await {
                StatusCode::NOT_FOUND => wrong += 1,
                StatusCode::TOO_MANY_REQUESTS => limited += 1,
                other => panic!("{other}"),
            }
        }
    }
    assert_eq!((wrong, limited), (PER_IP, 16 - PER_IP));
    // Refused guesses were not even counted against the masters: only admitted ones are audited.
    let attempts = app
        .audit()
        .await
        .into_iter()
        .filter(|e| e.kind == "agent.approve_attempt")
        .count();
    assert_eq!(attempts, PER_IP);
    // A master elsewhere is not affected.
    assert_eq!(
        guess(client_from("127.0.0.41"), masters[0].clone(), 99).await,
        StatusCode::NOT_FOUND
    );
}
