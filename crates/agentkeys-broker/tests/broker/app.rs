//! `TestApp`: one running broker per test, and the helpers every test uses.

use std::path::PathBuf;
use std::sync::Arc;

use agentkeys_broker::clock::{Clock, ManualClock};
use agentkeys_broker::config::{EmailLimits, Issuer, Settings};
use agentkeys_broker::http::client_ip::TrustedProxies;
use agentkeys_broker::limiter::{Limits, Rate};
use agentkeys_broker::state::AppState;
use agentkeys_store::RateWindow;
use agentkeys_types::api::{SessionIssued, WalletChallengeResponse};
use agentkeys_wallet::WalletKey;
use reqwest::StatusCode;
use serde_json::{Value, json};

pub struct TestApp {
    pub url: String,
    pub state: AppState,
    pub clock: Arc<ManualClock>,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    /// Holds the key-encryption key on PostgreSQL: never inside the data dir.
    _kek_dir: tempfile::TempDir,
    _server: tokio::task::JoinHandle<()>,
}

/// A temp dir the broker accepts as its data dir: 0700, whatever the umask made it.
pub fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// `command` with no `BROKER_*` variable of the caller's: a developer's settings must not leak
/// into a broker a test starts.
pub fn without_broker_env(mut command: std::process::Command) -> std::process::Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("BROKER_") {
            command.env_remove(k);
        }
    }
    command
}

/// A loopback port nothing listens on right now (a test's broker takes it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `agentkeys-broker` binary, with a clean environment.
pub fn broker_binary() -> std::process::Command {
    without_broker_env(std::process::Command::new(env!(
        "CARGO_BIN_EXE_agentkeys-broker"
    )))
}

/// With `AGENTKEYS_TEST_DATABASE=postgres://…`, a URL for a fresh schema of that database (one
/// per test, so tests never see each other's rows); `None` runs the test on SQLite.
pub async fn test_database() -> Option<String> {
    let admin = std::env::var("AGENTKEYS_TEST_DATABASE").ok()?;
    if !admin.starts_with("postgres") {
        return None;
    }
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("AGENTKEYS_TEST_DATABASE names a PostgreSQL that accepts connections");
    tokio::spawn(connection);
    let schema = format!("t_{}", agentkeys_broker::session::random_id());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let sep = if admin.contains('?') { '&' } else { '?' };
    Some(format!("{admin}{sep}options=-csearch_path%3D{schema}"))
}

/// A key-encryption key file (mode 0600) in `dir`.
pub fn write_kek(dir: &std::path::Path) -> PathBuf {
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("kek");
    let bytes: [u8; 32] = rand::random();
    std::fs::write(
        &path,
        base64::engine::general_purpose::STANDARD.encode(bytes),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Settings as `serve --dev` would resolve them, with overrides.
pub fn settings(dir: &std::path::Path, url: &str) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        data_dir: dir.to_path_buf(),
        issuer: Issuer::parse(url, true).unwrap(),
        dev: true,
        database_url: format!("sqlite://{}", dir.join("broker.db").display()),
        key_encryption_key_file: None,
        jwt_ttl_seconds: 300,
        audiences: vec!["sts.amazonaws.com".into(), "gcp-wif".into()],
        session_ttl_seconds: 43_200,
        challenge_ttl_seconds: 600,
        mint_rate_per_minute: 1000,
        mint_rate_per_hour: 10_000,
        body_limit_bytes: 65_536,
        jwks_max_age_seconds: 300,
        key_refresh_seconds: 1,
        log_json: false,
        email: None,
        login_ttl_seconds: 600,
        email_limits: EmailLimits {
            per_address: RateWindow {
                seconds: 600,
                limit: 5,
            },
            per_ip: RateWindow {
                seconds: 600,
                limit: 30,
            },
        },
        oidc_providers: vec![],
        sts_max_session_seconds: 3600,
        access_requests: agentkeys_broker::config::AccessRequestLimits {
            max_pending: 5,
            ttl_seconds: 900,
            reason_max_bytes: 500,
        },
        trusted_proxies: TrustedProxies::default(),
        // Out of the way unless a test is about them (every test client is 127.0.0.1).
        anonymous_limits: Limits {
            per_client: Rate::per_minute(1_000_000),
            global: Rate::per_second(1_000_000),
        },
        approve_limits: Limits {
            per_client: Rate::per_hour(1_000_000),
            global: Rate::per_minute(1_000_000),
        },
        anon_audit_window_seconds: 60,
        header_read_timeout: std::time::Duration::from_secs(10),
        request_timeout: std::time::Duration::from_secs(60),
        max_connections: 1024,
        metrics_token: None,
        metrics_listen: None,
    }
}

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        // Broker logs go to the test's captured output (shown when a test fails).
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("warn")
            .try_init();
        let dir = private_tempdir();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut s = settings(dir.path(), &url);
        let kek_dir = private_tempdir();
        if let Some(database_url) = test_database().await {
            s.database_url = database_url;
            s.key_encryption_key_file = Some(write_kek(kek_dir.path()));
        }
        tweak(&mut s);
        let clock = Arc::new(ManualClock::new(agentkeys_broker::clock::SystemClock.now()));
        let state = agentkeys_broker::prepare(s, clock.clone()).await.unwrap();
        let server = tokio::spawn(agentkeys_broker::http::serve(
            listener,
            state.clone(),
            std::future::pending(),
        ));
        let server = tokio::spawn(async move {
            let _ = server.await;
        });
        Self {
            url,
            state,
            clock,
            http: reqwest::Client::new(),
            dir,
            _kek_dir: kek_dir,
            _server: server,
        }
    }

    /// Whether this app's store is the SQLite file `broker.db` in its data dir (tests that
    /// open that file directly only run there).
    pub fn on_sqlite(&self) -> bool {
        self.state.settings.database_url.starts_with("sqlite:")
    }

    /// Runs SQL on the broker's database behind its back, as someone with access to the
    /// database (or a failing disk) would.
    pub async fn sql(&self, statements: &str) {
        let url = &self.state.settings.database_url;
        if self.on_sqlite() {
            let db = rusqlite::Connection::open(self.data_dir().join("broker.db")).unwrap();
            db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            db.execute_batch(statements).unwrap();
        } else {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client.batch_execute(statements).await.unwrap();
        }
    }

    /// Rows in `table`, counted behind the broker's back.
    pub async fn count_rows(&self, table: &str) -> i64 {
        let query = format!("SELECT count(*) FROM {table}");
        if self.on_sqlite() {
            let db = rusqlite::Connection::open(self.data_dir().join("broker.db")).unwrap();
            db.query_row(&query, [], |r| r.get(0)).unwrap()
        } else {
            let url = &self.state.settings.database_url;
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client.query_one(&query, &[]).await.unwrap().get(0)
        }
    }

    /// The `agentkeys-broker` binary, pointed at this app's store (data dir, database URL and
    /// key-encryption key) through its environment.
    pub fn broker_command(&self) -> std::process::Command {
        let settings = &self.state.settings;
        let mut c = broker_binary();
        c.env("BROKER_DATA_DIR", self.data_dir())
            .env("BROKER_DATABASE_URL", &settings.database_url);
        if let Some(kek) = &settings.key_encryption_key_file {
            c.env("BROKER_KEY_ENCRYPTION_KEY_FILE", kek);
        }
        c
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `post_json` with a session's bearer token.
    pub async fn post_json_as(&self, token: &str, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn challenge(&self, address: &str) -> WalletChallengeResponse {
        let r = self
            .post_json("/v1/auth/wallet/challenge", json!({"address": address}))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    pub async fn verify(&self, challenge_id: &str, signature: &str) -> reqwest::Response {
        self.post_json(
            "/v1/auth/wallet/verify",
            json!({"challenge_id": challenge_id, "signature": signature}),
        )
        .await
    }

    /// A full wallet sign-in with a fresh random key.
    pub async fn sign_in(&self) -> (WalletKey, SessionIssued) {
        let wallet = WalletKey::random();
        let session = self.sign_in_as(&wallet).await;
        (wallet, session)
    }

    pub async fn sign_in_as(&self, wallet: &WalletKey) -> SessionIssued {
        let c = self.challenge(&wallet.address().to_string()).await;
        let r = self
            .verify(&c.challenge_id, &sign(wallet, &c.message))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// A step-up for linking: `wallet` signs a challenge issued for `purpose` (e.g.
    /// `{"link_email": "bob@example.com"}`); returns the `wallet_proof` object.
    pub async fn wallet_proof(&self, wallet: &WalletKey, purpose: Value) -> Value {
        let r = self
            .post_json(
                "/v1/auth/wallet/challenge",
                serde_json::json!({"address": wallet.address().to_string(), "purpose": purpose}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let c: WalletChallengeResponse = r.json().await.unwrap();
        serde_json::json!({"challenge_id": c.challenge_id, "signature": sign(wallet, &c.message)})
    }

    /// `GET path` with the bearer token.
    pub async fn get_as(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// `POST /v1/session/logout` with the bearer token.
    pub async fn logout(&self, token: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/session/logout", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn mint(&self, token: &str, body: Option<Value>) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/v1/mint-oidc-jwt", self.url))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    /// Mints and returns the JWT, asserting success.
    pub async fn mint_jwt(&self, token: &str) -> String {
        let r = self.mint(token, None).await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        body["jwt"].as_str().unwrap().to_owned()
    }

    pub async fn jwks(&self) -> Value {
        self.get("/.well-known/jwks.json")
            .await
            .json()
            .await
            .unwrap()
    }

    /// Reloads the key ring now (the maintenance task does it every few seconds in `serve`).
    pub async fn reload_keys(&self) {
        self.state
            .keys
            .reload(self.state.store.as_ref(), self.clock.now())
            .await
            .unwrap();
    }

    pub async fn audit(&self) -> Vec<agentkeys_store::AuditEvent> {
        self.state.store.audit_events(0, 10_000).await.unwrap()
    }
}

/// EIP-191 `personal_sign` of the message, as 0x + 130 hex.
pub fn sign(wallet: &WalletKey, message: &str) -> String {
    let sig = wallet.sign_message(message.as_bytes()).unwrap();
    format!("0x{}", hex::encode(sig.as_bytes()))
}

/// Verifies a token the way a relying party would: JWKS fetched from the broker over HTTP,
/// key chosen by `kid`, ES256 only, issuer and audience checked.
pub async fn verify_jwt(app: &TestApp, token: &str, audience: &str) -> Result<Value, String> {
    let discovery: Value = app
        .get("/.well-known/openid-configuration")
        .await
        .json()
        .await
        .unwrap();
    let jwks_uri = discovery["jwks_uri"].as_str().unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet = app
        .http
        .get(jwks_uri)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} is not in the JWKS"))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[audience]);
    v.set_issuer(&[discovery["issuer"].as_str().unwrap()]);
    v.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "sub", "aud"]);
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

/// The error envelope of a response, asserting its shape.
pub async fn error_of(r: reqwest::Response) -> (StatusCode, String, String) {
    let status = r.status();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        ct.starts_with("application/json"),
        "{status}: content-type {ct}"
    );
    let body: Value = r.json().await.unwrap();
    let kind = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error kind in {body}"))
        .to_owned();
    let message = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {body}"))
        .to_owned();
    assert!(!message.is_empty());
    (status, kind, message)
}
