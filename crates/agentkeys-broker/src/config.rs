//! The settings registry: every setting of `agentkeys-broker serve` is one field here, with its
//! flag, its `BROKER_*` variable, its default and its help text. `docs/configuration.md` is
//! rendered from this registry ([`render_markdown`]) and a test keeps the two equal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agentkeys_store::RateWindow;
use agentkeys_types::claims::{AUDIENCE_STS, JWT_TTL_MAX_SECONDS, JWT_TTL_MIN_SECONDS};
use clap::{Args, CommandFactory};

use crate::http::client_ip::TrustedProxies;
use crate::limiter::{Limits, Rate};
use crate::metrics::MetricsToken;
use secrecy::{ExposeSecret, SecretString};

/// Settings of `agentkeys-broker serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    /// Address and port to listen on.
    #[arg(long, env = "BROKER_LISTEN", default_value = "127.0.0.1:8091", value_name = "ADDR",
          value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Directory for the SQLite database and the signing keys: created 0700 if missing (the
    /// database files 0600); an existing one that group or others can enter is refused.
    #[arg(
        long,
        env = "BROKER_DATA_DIR",
        default_value = "agentkeys-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// Issuer URL, byte-exact in every token and in discovery: https, no trailing slash.
    /// With --dev it defaults to http://<listen> (https://<listen> with --tls-cert).
    #[arg(long, env = "BROKER_ISSUER", value_name = "URL")]
    pub issuer: Option<String>,

    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key. Both files
    /// are checked before each handshake and reloaded when they change, so a renewed
    /// certificate is served without a restart. Leave unset when a proxy in front terminates
    /// TLS.
    #[arg(
        long,
        env = "BROKER_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert; readable by the broker's
    /// user only.
    #[arg(
        long,
        env = "BROKER_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Development mode: allows an http issuer on loopback and generates a signing key if none
    /// exists. Never use in production.
    #[arg(long, env = "BROKER_DEV", default_value_t = false)]
    pub dev: bool,

    /// Store URL: sqlite://PATH, or postgres://USER@HOST:PORT/DB for several instances on one
    /// PostgreSQL (then BROKER_KEY_ENCRYPTION_KEY_FILE is required). Defaults to the SQLite
    /// file broker.db in the data dir.
    #[arg(long, env = "BROKER_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,

    /// File with the key-encryption key (32 random bytes in base64, mode 0600: `openssl rand
    /// -base64 32`) that seals the private signing keys kept in the store. Required with
    /// PostgreSQL; with SQLite and no such file, private keys are files under the data dir's
    /// keys/. Keep it outside the data dir and its backups.
    #[arg(long, env = "BROKER_KEY_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    pub key_encryption_key_file: Option<PathBuf>,

    /// Lifetime of minted JWTs in seconds (60–3600).
    #[arg(long, env = "BROKER_OIDC_JWT_TTL_SECONDS", default_value_t = 300, value_name = "SECONDS",
          value_parser = parse_jwt_ttl)]
    pub oidc_jwt_ttl_seconds: u64,

    /// Audiences a mint may ask for, comma-separated; the first is the default.
    #[arg(long, env = "BROKER_AUDIENCES", default_value = AUDIENCE_STS, value_name = "LIST",
          value_delimiter = ',', value_parser = parse_audience)]
    pub audiences: Vec<String>,

    /// Lifetime of a session in seconds.
    #[arg(long, env = "BROKER_SESSION_TTL_SECONDS", default_value_t = 43_200, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(60..=2_592_000))]
    pub session_ttl_seconds: u64,

    /// Lifetime of a wallet sign-in challenge in seconds.
    #[arg(long, env = "BROKER_CHALLENGE_TTL_SECONDS", default_value_t = 600, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(30..=3600))]
    pub challenge_ttl_seconds: u64,

    /// Mints allowed per actor per minute.
    #[arg(long, env = "BROKER_MINT_RATE_PER_MINUTE", default_value_t = 120, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub mint_rate_per_minute: u64,

    /// Mints allowed per actor per hour.
    #[arg(long, env = "BROKER_MINT_RATE_PER_HOUR", default_value_t = 2000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub mint_rate_per_hour: u64,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "BROKER_BODY_LIMIT_BYTES", default_value_t = 65_536, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1024..=16_777_216))]
    pub body_limit_bytes: u64,

    /// `Cache-Control: max-age` of the JWKS, in seconds. Keep it below the rotation overlap.
    #[arg(long, env = "BROKER_JWKS_MAX_AGE_SECONDS", default_value_t = 300, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub jwks_max_age_seconds: u64,

    /// How often the signing keys are reloaded from the store, so a rotation made with
    /// `agentkeys-broker keys` takes effect without a restart.
    #[arg(long, env = "BROKER_KEY_REFRESH_SECONDS", default_value_t = 10, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub key_refresh_seconds: u64,

    /// SMTP server for sign-in links. Without it (and without --email-dev-log-links) email
    /// sign-in is off.
    #[arg(long, env = "BROKER_SMTP_HOST", value_name = "HOST")]
    pub smtp_host: Option<String>,

    /// SMTP port.
    #[arg(
        long,
        env = "BROKER_SMTP_PORT",
        default_value_t = 587,
        value_name = "PORT"
    )]
    pub smtp_port: u16,

    /// SMTP transport security: `starttls`, `tls`, or `none` (only for a relay on the same host).
    #[arg(
        long,
        env = "BROKER_SMTP_TLS",
        default_value = "starttls",
        value_name = "MODE"
    )]
    pub smtp_tls: SmtpTls,

    /// SMTP user name, if the server needs one.
    #[arg(long, env = "BROKER_SMTP_USERNAME", value_name = "NAME")]
    pub smtp_username: Option<String>,

    /// SMTP password. Prefer the environment variable: flags show up in process listings.
    #[arg(
        long,
        env = "BROKER_SMTP_PASSWORD",
        value_name = "SECRET",
        hide_env_values = true,
        value_parser = secret
    )]
    pub smtp_password: Option<SecretString>,

    /// Sender of sign-in emails.
    #[arg(
        long,
        env = "BROKER_SMTP_FROM",
        default_value = "AgentKeys <no-reply@localhost>",
        value_name = "MAILBOX"
    )]
    pub smtp_from: String,

    /// Development only (needs --dev): write sign-in links to the log instead of mailing them.
    #[arg(long, env = "BROKER_EMAIL_DEV_LOG_LINKS", default_value_t = false)]
    pub email_dev_log_links: bool,

    /// JSON file naming the OpenID Connect providers humans may sign in with:
    /// `{"providers": [{"name": "google", "client_id": "…", "client_secret_file": "/path"}]}`
    /// (`issuer` is required except for `google`; `client_secret` may stand in for the file).
    /// No name may be a prefix of another (`git` and `github` could share accounts).
    #[arg(long, env = "BROKER_OIDC_PROVIDERS_FILE", value_name = "FILE")]
    pub oidc_providers_file: Option<PathBuf>,

    /// Lifetime of an email link or OIDC login, in seconds.
    #[arg(long, env = "BROKER_LOGIN_TTL_SECONDS", default_value_t = 600, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(60..=3600))]
    pub login_ttl_seconds: u64,

    /// Sign-in emails one address may receive per email window (--email-rate-window-seconds).
    /// Anyone can ask for mail to any address, so a full window locks that address out of email
    /// sign-in until it ends: keep the window short.
    #[arg(long, env = "BROKER_EMAIL_RATE_PER_ADDRESS", default_value_t = 5, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub email_rate_per_address: u64,

    /// Sign-in emails one client IP (see --trusted-proxies) may request per email window.
    #[arg(long, env = "BROKER_EMAIL_RATE_PER_IP", default_value_t = 30, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub email_rate_per_ip: u64,

    /// The window of the two email limits above, in seconds.
    #[arg(long, env = "BROKER_EMAIL_RATE_WINDOW_SECONDS", default_value_t = 600, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(60..=86_400))]
    pub email_rate_window_seconds: u64,

    /// Proxies whose X-Forwarded-For the broker believes: comma-separated IPs or CIDR networks,
    /// e.g. the TLS proxy in front of it (127.0.0.1, or 10.0.0.0/8). Only when the TCP peer is
    /// one of them is the client the rightmost X-Forwarded-For address that is not itself listed;
    /// otherwise the peer is the client. Unset, X-Forwarded-For is ignored, and behind a proxy
    /// every client shares the proxy's per-IP limits.
    #[arg(long, env = "BROKER_TRUSTED_PROXIES", value_name = "LIST", value_delimiter = ',',
          value_parser = crate::http::client_ip::parse_trusted_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Unauthenticated requests (wallet, email and OIDC sign-in, pairing, agent sessions by
    /// device proof, mints without a valid session) one client IP may make per minute, as a
    /// burst of that size refilled evenly (IPv6: per /64). Over it: 429, no store write.
    #[arg(long, env = "BROKER_ANON_RATE_PER_IP_PER_MINUTE", default_value_t = 120, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub anon_rate_per_ip_per_minute: u64,

    /// Unauthenticated requests per second the broker accepts from all clients together. Bounds
    /// the store writes anonymous traffic can cause; a distributed flood can use it up, so set
    /// it well above the sign-in rate you expect.
    #[arg(long, env = "BROKER_ANON_RATE_GLOBAL_PER_SECOND", default_value_t = 200, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub anon_rate_global_per_second: u64,

    /// Pairing approvals (code guesses) one client IP may attempt per hour, whatever master
    /// signs them, on top of each master's 20 per 10 minutes.
    #[arg(long, env = "BROKER_PAIRING_APPROVE_RATE_PER_IP_PER_HOUR", default_value_t = 60, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub pairing_approve_rate_per_ip_per_hour: u64,

    /// Pairing approvals per minute from all clients together.
    #[arg(long, env = "BROKER_PAIRING_APPROVE_RATE_GLOBAL_PER_MINUTE", default_value_t = 300, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub pairing_approve_rate_global_per_minute: u64,

    /// Refused anonymous requests are written to the audit log as one `anonymous.denied` event
    /// per client IP per this many seconds, with counts (and at shutdown).
    #[arg(long, env = "BROKER_ANON_AUDIT_WINDOW_SECONDS", default_value_t = 60, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub anon_audit_window_seconds: u64,

    /// Time a client has to send a request's line and headers (and, on a kept-alive
    /// connection, to start its next request) before the connection is closed.
    #[arg(long, env = "BROKER_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub header_read_timeout_seconds: u64,

    /// Longest time one request may take, body included; then it is answered 408 and its
    /// connection closed. Bounds a client that sends its body slowly to hold a connection.
    #[arg(long, env = "BROKER_REQUEST_TIMEOUT_SECONDS", default_value_t = 60, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_seconds: u64,

    /// Connections served at once. Further connections wait in the kernel's listen queue until
    /// one closes; they are not refused.
    #[arg(long, env = "BROKER_MAX_CONNECTIONS", default_value_t = 1024, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Bearer token GET /metrics requires (compared in constant time). Without it, and without
    /// --metrics-listen, /metrics is open to anyone who reaches the listener: in production set
    /// one of the two. Prefer the environment variable: flags show up in process listings.
    #[arg(
        long,
        env = "BROKER_METRICS_TOKEN",
        value_name = "SECRET",
        hide_env_values = true,
        value_parser = secret
    )]
    pub metrics_token: Option<SecretString>,

    /// Serve /metrics on this address (e.g. a private interface) instead of on --listen.
    #[arg(long, env = "BROKER_METRICS_LISTEN", value_name = "ADDR", value_parser = parse_listen)]
    pub metrics_listen: Option<SocketAddr>,

    /// The longest STS session the cloud role allows (its MaxSessionDuration), in seconds.
    /// Grant responses state their worst-case exposure with it: JWT TTL + this.
    #[arg(long, env = "BROKER_STS_MAX_SESSION_SECONDS", default_value_t = 3600, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(900..=43_200))]
    pub sts_max_session_seconds: u64,

    /// Access requests an agent may have waiting for its master at once; more are refused
    /// until one is decided or expires.
    #[arg(long, env = "BROKER_ACCESS_REQUEST_MAX_PENDING", default_value_t = 5, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100))]
    pub access_request_max_pending: u64,

    /// How long an access request waits for its master's decision, in seconds; undecided
    /// after that, it is expired.
    #[arg(long, env = "BROKER_ACCESS_REQUEST_TTL_SECONDS", default_value_t = 900, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(60..=604_800))]
    pub access_request_ttl_seconds: u64,

    /// Longest reason an agent may give with an access request, in bytes (UTF-8).
    #[arg(long, env = "BROKER_ACCESS_REQUEST_REASON_MAX_BYTES", default_value_t = 500, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(16..=4096))]
    pub access_request_reason_max_bytes: u64,

    /// Log format: `text` or `json`.
    #[arg(
        long,
        env = "BROKER_LOG_FORMAT",
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
}

/// How the broker reaches its SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SmtpTls {
    Starttls,
    Tls,
    /// Plain text: only for a relay on the same host.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Secrets are parsed straight into a type whose `Debug` shows no value.
fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s))
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "not an address; use IP:PORT, for example 127.0.0.1:8091".to_owned())
}

fn parse_jwt_ttl(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (JWT_TTL_MIN_SECONDS..=JWT_TTL_MAX_SECONDS).contains(&n) => Ok(n),
        _ => Err(format!(
            "use a whole number of seconds from {JWT_TTL_MIN_SECONDS} to {JWT_TTL_MAX_SECONDS}"
        )),
    }
}

fn parse_audience(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 255 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            "each audience is 1–255 characters without spaces, for example sts.amazonaws.com"
                .into(),
        );
    }
    Ok(s.to_owned())
}

/// A setting that stops start-up: printed as one line naming the setting, the value and the fix.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {flag} ({env}) = {value:?}: {fix}")]
pub struct SettingError {
    pub flag: String,
    pub env: String,
    pub value: String,
    pub fix: String,
}

impl SettingError {
    fn new(id: &str, value: impl Into<String>, fix: impl Into<String>) -> Self {
        let (flag, env) = flag_and_env(id);
        Self {
            flag,
            env,
            value: value.into(),
            fix: fix.into(),
        }
    }
}

fn flag_and_env(id: &str) -> (String, String) {
    let cmd = crate::cli::Cli::command();
    let serve = cmd.find_subcommand("serve");
    let arg = serve.and_then(|s| s.get_arguments().find(|a| a.get_id() == id));
    match arg {
        Some(a) => (
            format!("--{}", a.get_long().unwrap_or(id)),
            a.get_env()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        None => (format!("--{id}"), String::new()),
    }
}

/// Turns a clap parse error about one value into a [`SettingError`] line; other clap errors
/// (help, unknown flags) are left to clap.
pub fn setting_error_from_clap(err: &clap::Error) -> Option<SettingError> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let arg = match err.get(ContextKind::InvalidArg)? {
        ContextValue::String(s) => s.clone(),
        _ => return None,
    };
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    // "--listen <ADDR>" → "listen"
    let long = arg
        .trim_start_matches('-')
        .split([' ', '='])
        .next()
        .unwrap_or_default()
        .replace('-', "_");
    let fix = match err.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(v)) => format!("use one of: {}", v.join(", ")),
        _ => {
            // clap keeps the value parser's own message as the error's source; its text ends
            // the rendered error's first line.
            let rendered = err.render().to_string();
            let first = rendered.lines().next().unwrap_or_default().to_owned();
            first
                .rsplit_once(": ")
                .map(|(_, m)| m.to_owned())
                .unwrap_or(first)
        }
    };
    Some(SettingError::new(&long, value, fix))
}

/// What `serve` runs with after every cross-setting rule has been checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Serve HTTPS with these files (`--tls-cert`, `--tls-key`); `None`: plain HTTP.
    pub tls: Option<crate::tls::TlsFiles>,
    pub data_dir: PathBuf,
    pub issuer: Issuer,
    pub dev: bool,
    pub database_url: String,
    pub key_encryption_key_file: Option<PathBuf>,
    pub jwt_ttl_seconds: i64,
    pub audiences: Vec<String>,
    pub session_ttl_seconds: i64,
    pub challenge_ttl_seconds: i64,
    pub mint_rate_per_minute: u64,
    pub mint_rate_per_hour: u64,
    pub body_limit_bytes: usize,
    pub jwks_max_age_seconds: u64,
    pub key_refresh_seconds: u64,
    pub log_json: bool,
    /// How sign-in links are delivered; `None` turns email sign-in off.
    pub email: Option<EmailDelivery>,
    pub login_ttl_seconds: i64,
    /// Email sign-in limits per address and per client IP.
    pub email_limits: EmailLimits,
    /// Whose X-Forwarded-For is believed (see `http::client_ip`).
    pub trusted_proxies: TrustedProxies,
    /// In-memory limits on unauthenticated requests, per client IP and overall.
    pub anonymous_limits: Limits,
    /// In-memory limits on pairing approvals (code guesses), per client IP and overall.
    pub approve_limits: Limits,
    pub anon_audit_window_seconds: u64,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub metrics_token: Option<MetricsToken>,
    pub metrics_listen: Option<SocketAddr>,
    pub sts_max_session_seconds: i64,
    /// Access requests: pending per agent, lifetime, reason size.
    pub access_requests: AccessRequestLimits,
    /// OpenID Connect providers for sign-in (discovered at start-up).
    pub oidc_providers: Vec<crate::oidc_login::ProviderConfig>,
}

/// The limits on agents' access requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessRequestLimits {
    pub max_pending: u64,
    pub ttl_seconds: i64,
    pub reason_max_bytes: usize,
}

/// How many sign-in emails one address, and one client IP, may cause per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmailLimits {
    pub per_address: RateWindow,
    pub per_ip: RateWindow,
}

#[derive(Debug, Clone)]
pub enum EmailDelivery {
    Smtp(crate::mailer::SmtpSettings),
    /// `--dev --email-dev-log-links`.
    Log,
}

/// The issuer URL and the parts of it SIWE needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    /// Byte-exact, no trailing slash.
    pub url: String,
    /// `host[:port]`, the EIP-4361 domain.
    pub authority: String,
}

impl Issuer {
    /// Parsed by the `url` crate (WHATWG rules, as verifiers parse it); kept byte for byte as
    /// given, since verifiers compare `iss` with the registered provider URL exactly.
    pub fn parse(url: &str, dev: bool) -> Result<Self, String> {
        use openidconnect::url::{Host, Url};
        if url.chars().any(char::is_whitespace) {
            return Err("the issuer may not contain spaces".into());
        }
        let parsed = Url::parse(url).map_err(|_| {
            "the issuer is an absolute URL such as https://broker.example.com".to_owned()
        })?;
        match parsed.scheme() {
            "https" => {}
            "http" if !dev => {
                return Err("the issuer must be https (AWS refuses other issuers); http is only allowed with --dev".into());
            }
            "http" => {
                let loopback = match parsed.host() {
                    Some(Host::Domain(d)) => d == "localhost",
                    Some(Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(Host::Ipv6(ip)) => ip.is_loopback(),
                    None => false,
                };
                if !loopback {
                    return Err(
                        "an http issuer must be on loopback (127.0.0.1, localhost or [::1])".into(),
                    );
                }
            }
            _ => {
                return Err(
                    "the issuer is an absolute URL such as https://broker.example.com".into(),
                );
            }
        }
        if url.ends_with('/') {
            return Err("remove the trailing slash: verifiers compare iss byte for byte".into());
        }
        if parsed.query().is_some()
            || parsed.fragment().is_some()
            || !parsed.username().is_empty()
            || parsed.password().is_some()
        {
            return Err("the issuer may not contain a query, fragment, user info or spaces".into());
        }
        let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
            return Err("the issuer has no valid host".into());
        };
        let authority = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Ok(Self {
            url: url.to_owned(),
            authority,
        })
    }
}

impl ServeSettings {
    /// Applies the rules that involve more than one setting.
    pub fn resolve(self) -> Result<Settings, SettingError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(SettingError::new(
                    "tls_key",
                    "",
                    format!("--tls-cert {} needs its private key", cert.display()),
                ));
            }
            (None, Some(key)) => {
                return Err(SettingError::new(
                    "tls_cert",
                    "",
                    format!("--tls-key {} needs its certificate", key.display()),
                ));
            }
        };
        if let Some(files) = &tls {
            crate::tls::load(files).map_err(|e| {
                use crate::tls::TlsError;
                let (setting, path) = match &e {
                    TlsError::ReadKey { .. } | TlsError::NoKey(_) => ("tls_key", &files.key),
                    TlsError::Pem { path, .. } if *path == files.key => ("tls_key", &files.key),
                    _ => ("tls_cert", &files.cert),
                };
                SettingError::new(setting, path.display().to_string(), e.to_string())
            })?;
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let issuer_text = match (&self.issuer, self.dev) {
            (Some(url), _) => url.clone(),
            (None, true) => format!("{scheme}://{}", self.listen),
            (None, false) => {
                return Err(SettingError::new(
                    "issuer",
                    "",
                    "set the public https URL of this broker, or pass --dev for a local http issuer",
                ));
            }
        };
        let issuer = Issuer::parse(&issuer_text, self.dev)
            .map_err(|fix| SettingError::new("issuer", &issuer_text, fix))?;
        if tls.is_some() && !issuer.url.starts_with("https://") {
            return Err(SettingError::new(
                "issuer",
                &issuer_text,
                "the broker serves https (--tls-cert): make the issuer its https URL",
            ));
        }
        if self.mint_rate_per_hour < self.mint_rate_per_minute {
            return Err(SettingError::new(
                "mint_rate_per_hour",
                self.mint_rate_per_hour.to_string(),
                "the hourly limit must be at least the per-minute limit",
            ));
        }
        let database_url = self
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("broker.db").display()));
        crate::keys::check_store_and_kek(
            &database_url,
            &self.data_dir,
            self.key_encryption_key_file.as_deref(),
        )
        .map_err(|(setting, fix)| {
            let value = match setting {
                "database_url" => agentkeys_store::redact_url(&database_url),
                _ => self
                    .key_encryption_key_file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            };
            SettingError::new(setting, value, fix)
        })?;
        crate::data_dir::check(&self.data_dir).map_err(|e| {
            SettingError::new(
                "data_dir",
                self.data_dir.display().to_string(),
                e.to_string(),
            )
        })?;
        if self.email_dev_log_links && !self.dev {
            return Err(SettingError::new(
                "email_dev_log_links",
                "true",
                "writing sign-in links to the log is for --dev only; configure BROKER_SMTP_HOST",
            ));
        }
        let email = match (&self.smtp_host, self.email_dev_log_links) {
            (_, true) => Some(EmailDelivery::Log),
            (Some(host), false) => Some(EmailDelivery::Smtp(crate::mailer::SmtpSettings {
                host: host.clone(),
                port: self.smtp_port,
                tls: self.smtp_tls,
                username: self.smtp_username.clone(),
                password: self.smtp_password.clone(),
                from: self.smtp_from.clone(),
            })),
            (None, false) => None,
        };
        let oidc_providers = match &self.oidc_providers_file {
            None => Vec::new(),
            Some(path) => load_oidc_providers(path).map_err(|fix| {
                SettingError::new("oidc_providers_file", path.display().to_string(), fix)
            })?,
        };
        let metrics_token = self
            .metrics_token
            .as_ref()
            .map(|t| MetricsToken::new(t.expose_secret()))
            .transpose()
            // The value is a secret: never echo it.
            .map_err(|fix| SettingError::new("metrics_token", "(hidden)", fix))?;
        if self.metrics_listen.is_some_and(|m| m == self.listen) {
            return Err(SettingError::new(
                "metrics_listen",
                self.listen.to_string(),
                "use an address other than --listen, or leave it unset to serve /metrics there",
            ));
        }
        Ok(Settings {
            listen: self.listen,
            tls,
            data_dir: self.data_dir,
            issuer,
            dev: self.dev,
            database_url,
            key_encryption_key_file: self.key_encryption_key_file,
            jwt_ttl_seconds: self.oidc_jwt_ttl_seconds as i64,
            audiences: self.audiences,
            session_ttl_seconds: self.session_ttl_seconds as i64,
            challenge_ttl_seconds: self.challenge_ttl_seconds as i64,
            mint_rate_per_minute: self.mint_rate_per_minute,
            mint_rate_per_hour: self.mint_rate_per_hour,
            body_limit_bytes: self.body_limit_bytes as usize,
            jwks_max_age_seconds: self.jwks_max_age_seconds,
            key_refresh_seconds: self.key_refresh_seconds,
            log_json: self.log_format == LogFormat::Json,
            email,
            login_ttl_seconds: self.login_ttl_seconds as i64,
            email_limits: EmailLimits {
                per_address: RateWindow {
                    seconds: self.email_rate_window_seconds as i64,
                    limit: self.email_rate_per_address,
                },
                per_ip: RateWindow {
                    seconds: self.email_rate_window_seconds as i64,
                    limit: self.email_rate_per_ip,
                },
            },
            trusted_proxies: TrustedProxies::new(self.trusted_proxies),
            anonymous_limits: Limits {
                per_client: Rate::per_minute(self.anon_rate_per_ip_per_minute),
                global: Rate::per_second(self.anon_rate_global_per_second),
            },
            approve_limits: Limits {
                per_client: Rate::per_hour(self.pairing_approve_rate_per_ip_per_hour),
                global: Rate::per_minute(self.pairing_approve_rate_global_per_minute),
            },
            anon_audit_window_seconds: self.anon_audit_window_seconds,
            header_read_timeout: Duration::from_secs(self.header_read_timeout_seconds),
            request_timeout: Duration::from_secs(self.request_timeout_seconds),
            max_connections: self.max_connections as usize,
            metrics_token,
            metrics_listen: self.metrics_listen,
            oidc_providers,
            sts_max_session_seconds: self.sts_max_session_seconds as i64,
            access_requests: AccessRequestLimits {
                max_pending: self.access_request_max_pending,
                ttl_seconds: self.access_request_ttl_seconds as i64,
                reason_max_bytes: self.access_request_reason_max_bytes as usize,
            },
        })
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvidersFile {
    providers: Vec<ProviderEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderEntry {
    name: String,
    #[serde(default)]
    issuer: Option<String>,
    client_id: String,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    client_secret_file: Option<PathBuf>,
}

fn load_oidc_providers(
    path: &std::path::Path,
) -> Result<Vec<crate::oidc_login::ProviderConfig>, String> {
    use crate::oidc_login::{GOOGLE_ISSUER, ProviderConfig};
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let file: ProvidersFile =
        serde_json::from_str(&text).map_err(|e| format!("not a providers file: {e}"))?;
    let mut out: Vec<ProviderConfig> = Vec::new();
    for p in file.providers {
        let issuer = match (p.issuer, p.name.as_str()) {
            (Some(i), _) => i,
            (None, "google") => GOOGLE_ISSUER.to_owned(),
            (None, name) => return Err(format!("provider {name:?} needs an issuer")),
        };
        let secret = match (p.client_secret, p.client_secret_file) {
            (Some(s), None) => s,
            (None, Some(f)) => std::fs::read_to_string(&f)
                .map(|s| s.trim().to_owned())
                .map_err(|e| format!("provider {:?}: cannot read {}: {e}", p.name, f.display()))?,
            _ => {
                return Err(format!(
                    "provider {:?}: give exactly one of client_secret, client_secret_file",
                    p.name
                ));
            }
        };
        let config = ProviderConfig::new(p.name.clone(), issuer, p.client_id, secret);
        config
            .validate()
            .map_err(|e| format!("provider {:?}: {e}", p.name))?;
        if out.iter().any(|o| o.name == p.name) {
            return Err(format!("provider {:?} is listed twice", p.name));
        }
        out.push(config);
    }
    crate::oidc_login::check_provider_names(&out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// `docs/configuration.md`, rendered from the registry.
pub fn render_markdown() -> String {
    let cmd = crate::cli::Cli::command();
    let mut out = String::from(
        "# Configuration\n\n\
         <!-- Generated from crates/agentkeys-broker/src/config.rs by \
         `agentkeys-broker config-docs`; a test keeps it equal. Do not edit by hand. -->\n\n\
         Every setting of `agentkeys-broker serve` is a flag and an environment variable; the flag \
         wins. A bad value stops start-up with one line naming the setting, the value and the fix.\n\n\
         | flag | environment | default | meaning |\n|---|---|---|---|\n",
    );
    let serve = cmd.find_subcommand("serve").cloned().unwrap_or_default();
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" {
            continue;
        }
        // A switch takes no value on the command line; its variable is `true` or `false`.
        let switch = !arg.get_action().takes_values();
        let env = arg
            .get_env()
            .map(|e| {
                let values = if switch { " (`true`/`false`)" } else { "" };
                format!("`{}`{values}", e.to_string_lossy())
            })
            .unwrap_or_default();
        let default = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(",");
        let default = if switch {
            "off".to_owned()
        } else if default.is_empty() {
            "—".to_owned()
        } else {
            format!("`{default}`")
        };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let value = arg
            .get_value_names()
            .and_then(|v| v.first())
            .filter(|_| !switch)
            .map(|v| format!(" {v}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "| `--{long}{value}` | {env} | {default} | {} |\n",
            help.replace('\n', " ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkeys_types::OmniAccount;

    fn providers_file(dir: &std::path::Path, names: &[&str]) -> PathBuf {
        let providers: Vec<serde_json::Value> = names
            .iter()
            .map(|n| {
                serde_json::json!({
                    "name": n,
                    "issuer": format!("https://{n}.example"),
                    "client_id": "id",
                    "client_secret": "secret",
                })
            })
            .collect();
        let path = dir.join("providers.json");
        std::fs::write(
            &path,
            serde_json::json!({ "providers": providers }).to_string(),
        )
        .expect("write");
        path
    }

    #[test]
    fn issuers_are_absolute_https_urls_kept_byte_for_byte() {
        let ok = Issuer::parse("https://broker.example.com/tenant-a", false).unwrap();
        assert_eq!(ok.url, "https://broker.example.com/tenant-a");
        assert_eq!(ok.authority, "broker.example.com");
        let dev = Issuer::parse("http://127.0.0.1:8091", true).unwrap();
        assert_eq!(dev.authority, "127.0.0.1:8091");
        assert_eq!(
            Issuer::parse("http://[::1]:9", true).unwrap().authority,
            "[::1]:9"
        );
        assert_eq!(
            Issuer::parse("https://b.example:443", false)
                .unwrap()
                .authority,
            "b.example",
            "the default port is no part of the authority"
        );
        for (bad, dev) in [
            ("http://127.0.0.1:8091", false),
            ("http://broker.example.com", true),
            ("https://broker.example.com/", false),
            ("https://broker.example.com?x=1", false),
            ("https://broker.example.com#f", false),
            ("https://user:pw@broker.example.com", false),
            ("https://broker example.com", false),
            ("broker.example.com", false),
            ("ftp://broker.example.com", false),
            ("https://", false),
        ] {
            assert!(Issuer::parse(bad, dev).is_err(), "{bad} (dev {dev})");
        }
    }

    /// The settings are logged and printed with `{:?}` in places; the secrets they hold never
    /// show, and the string-typed choices parse into their types.
    #[test]
    fn settings_debug_shows_no_secret_and_choices_are_typed() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeSettings,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "agentkeys-broker",
            "--smtp-password",
            "smtp-secret-value",
            "--metrics-token",
            "metrics-secret-value-0123456789",
            "--smtp-tls",
            "tls",
            "--log-format",
            "json",
        ])
        .expect("parses");
        let shown = format!("{:?}", cli.serve);
        assert!(!shown.contains("smtp-secret-value"), "{shown}");
        assert!(!shown.contains("metrics-secret-value"), "{shown}");
        assert_eq!(cli.serve.smtp_tls, SmtpTls::Tls);
        assert_eq!(cli.serve.log_format, LogFormat::Json);
        let bad = <Cli as clap::Parser>::try_parse_from(["agentkeys-broker", "--smtp-tls", "ssl"]);
        assert!(bad.is_err());
    }

    #[test]
    fn provider_names_that_prefix_one_another_would_share_accounts() {
        // Why: the omni concatenates without a separator (SPEC §3, fixed), so provider `git`'s
        // user `hub123` is provider `github`'s user `123`.
        assert_eq!(
            OmniAccount::derive("oauth2_git", "hub123"),
            OmniAccount::derive("oauth2_github", "123")
        );
        let dir = tempfile::tempdir().expect("tempdir");
        for names in [&["git", "github"][..], &["github", "google", "git"]] {
            let e = load_oidc_providers(&providers_file(dir.path(), names)).expect_err("refused");
            assert!(
                e.contains("\"git\"") && e.contains("\"github\"") && e.contains("prefix"),
                "{e}"
            );
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
        let e =
            load_oidc_providers(&providers_file(dir.path(), &["git", "git"])).expect_err("twice");
        assert!(e.contains("twice"), "{e}");
        let ok = load_oidc_providers(&providers_file(dir.path(), &["google", "gitlab", "github"]))
            .expect("no name is a prefix of another");
        assert_eq!(ok.len(), 3);
    }
}
