//! Load client of the reliability harnesses (`docs/reliability.md`), loopback only.
//!
//! ```text
//! reliability_load mint --url http://127.0.0.1:PORT [--masters N] [--concurrency C]
//!     [--seconds S] [--max-requests N] [--jwt-out FILE] [--tokens-in FILE] [--tokens-out FILE]
//!     [--stop-file FILE] [--tolerate-outage] [--allow-status CODE ...]
//! reliability_load soak --url http://127.0.0.1:PORT [--concurrency C] [--seconds S]
//!     [--window S] [--server-pid PID]
//! reliability_load sessions --url http://127.0.0.1:PORT
//! ```
//!
//! `mint` signs in `--masters` wallets (or reads their session tokens from `--tokens-in`) and
//! mints with `--concurrency` workers until `--seconds`, `--max-requests` or `--stop-file`
//! ends it. Every JWT received is appended to `--jwt-out` as soon as its answer is complete, so
//! a file read while the broker is down holds every token a client got. With
//! `--tolerate-outage` connection errors (the broker was killed) are counted, not fatal;
//! statuses named by `--allow-status` likewise. Any answer that is not a 200 must carry no JWT.
//!
//! `soak` runs a mixed workload (wallet sign-ins, agent pairings, grant create/list/revoke,
//! master and agent mints, audit reads) and prints, per `--window`, the operations, errors, the
//! p99 latency and the server's RSS and open file descriptors (Linux /proc). With
//! `--leak-connections N` (the harness's control) it also opens N keep-alive connections per
//! window and never closes them (the broker closes idle ones after its header-read timeout).
//!
//! `sessions` signs a master in, pairs an agent to it and grants the agent a scope, then prints
//! one JSON object: `master`, `agent` (session tokens), `agent_omni`, `grant_id`, `wallet`.
//!
//! Output is `key: value` lines; the exit status is non-zero when the run broke its contract.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentkeys_types::pairing::{ProofAction, proof_message};
use agentkeys_wallet::WalletKey;
use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

const USAGE: &str =
    "usage: reliability_load mint|soak|sessions --url URL [options] (see the file's header)";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The run may outlast `--seconds` by at most this much (sign-ins, draining).
const GRACE: Duration = Duration::from_secs(120);

struct Args {
    mode: String,
    url: String,
    masters: usize,
    concurrency: usize,
    seconds: f64,
    max_requests: u64,
    jwt_out: Option<PathBuf>,
    tokens_in: Option<PathBuf>,
    tokens_out: Option<PathBuf>,
    stop_file: Option<PathBuf>,
    tolerate_outage: bool,
    allow_status: Vec<u16>,
    window: f64,
    server_pid: Option<u32>,
    leak_connections: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let mode = it.next().context(USAGE)?;
    ensure!(
        matches!(mode.as_str(), "mint" | "soak" | "sessions"),
        "{USAGE}"
    );
    let mut a = Args {
        mode,
        url: String::new(),
        masters: 32,
        concurrency: 32,
        seconds: 10.0,
        max_requests: 2_000_000,
        jwt_out: None,
        tokens_in: None,
        tokens_out: None,
        stop_file: None,
        tolerate_outage: false,
        allow_status: Vec::new(),
        window: 10.0,
        server_pid: None,
        leak_connections: 0,
    };
    while let Some(flag) = it.next() {
        if flag == "--tolerate-outage" {
            a.tolerate_outage = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("{flag} {value}: {e}");
        match flag.as_str() {
            "--url" => a.url = value.trim_end_matches('/').to_owned(),
            "--masters" => a.masters = value.parse().map_err(|e| bad(&e))?,
            "--concurrency" => a.concurrency = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => a.seconds = value.parse().map_err(|e| bad(&e))?,
            "--max-requests" => a.max_requests = value.parse().map_err(|e| bad(&e))?,
            "--jwt-out" => a.jwt_out = Some(value.into()),
            "--tokens-in" => a.tokens_in = Some(value.into()),
            "--tokens-out" => a.tokens_out = Some(value.into()),
            "--stop-file" => a.stop_file = Some(value.into()),
            "--allow-status" => a.allow_status.push(value.parse().map_err(|e| bad(&e))?),
            "--window" => a.window = value.parse().map_err(|e| bad(&e))?,
            "--server-pid" => a.server_pid = Some(value.parse().map_err(|e| bad(&e))?),
            "--leak-connections" => a.leak_connections = value.parse().map_err(|e| bad(&e))?,
            _ => bail!("unknown argument {flag}\n{USAGE}"),
        }
    }
    check_loopback(&a.url)?;
    ensure!(
        (1..=10_000).contains(&a.masters),
        "--masters must be 1..=10000"
    );
    ensure!(
        (1..=512).contains(&a.concurrency),
        "--concurrency must be 1..=512"
    );
    ensure!(
        a.seconds > 0.0 && a.seconds <= 7200.0,
        "--seconds must be in (0, 7200]"
    );
    ensure!(
        a.window >= 1.0 && a.window <= 600.0,
        "--window must be in [1, 600]"
    );
    ensure!(a.max_requests >= 1, "--max-requests must be at least 1");
    ensure!(
        a.leak_connections <= 16,
        "--leak-connections must be at most 16"
    );
    Ok(a)
}

/// Plain HTTP to a loopback address only: this tool floods what it is given.
fn check_loopback(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("--url {url:?}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host
        .parse::<IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(host.eq_ignore_ascii_case("localhost"));
    ensure!(
        parsed.scheme() == "http" && loopback,
        "--url must be http:// to a loopback address: {url}"
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("reliability_load: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("reliability_load: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bound = Duration::from_secs_f64(args.seconds) + GRACE;
    let result = runtime.block_on(async move {
        let work = async {
            match args.mode.as_str() {
                "mint" => mint(args).await,
                "sessions" => sessions(args).await,
                _ => soak(args).await,
            }
        };
        match tokio::time::timeout(bound, work).await {
            Ok(r) => r,
            Err(_) => bail!("the run exceeded its bound of {bound:?}"),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("reliability_load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .no_proxy()
        .build()?)
}

fn personal_sign(key: &WalletKey, message: &str) -> anyhow::Result<String> {
    let sig = key.sign_message(message.as_bytes())?;
    Ok(format!("0x{}", hex::encode(sig.as_bytes())))
}

fn lower_address(key: &WalletKey) -> String {
    format!("0x{}", hex::encode(key.address()))
}

async fn post(http: &reqwest::Client, url: &str, token: Option<&str>, body: Value) -> Answer {
    let mut request = http.post(url).json(&body);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    Answer::of(request.send().await).await
}

async fn get(http: &reqwest::Client, url: &str, token: &str) -> Answer {
    Answer::of(http.get(url).bearer_auth(token).send().await).await
}

/// One HTTP exchange: a status and a JSON body, or a transport error.
enum Answer {
    Http(u16, Value),
    Transport(String),
}

impl Answer {
    async fn of(result: reqwest::Result<reqwest::Response>) -> Self {
        match result {
            Err(e) => Answer::Transport(format!("{e:#}")),
            Ok(r) => {
                let status = r.status().as_u16();
                match r.bytes().await {
                    Err(e) => Answer::Transport(format!("{e:#}")),
                    Ok(b) => Answer::Http(
                        status,
                        serde_json::from_slice(&b)
                            .unwrap_or_else(|_| json!({ "unparsed": String::from_utf8_lossy(&b) })),
                    ),
                }
            }
        }
    }

    fn ok(self, what: &str) -> anyhow::Result<Value> {
        match self {
            Answer::Http(200, v) => Ok(v),
            Answer::Http(s, v) => bail!("{what}: {s} {v}"),
            Answer::Transport(e) => bail!("{what}: {e}"),
        }
    }
}

fn str_field(v: &Value, field: &str) -> anyhow::Result<String> {
    v[field]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no {field} in {v}"))
}

async fn sign_in(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let wallet = WalletKey::random();
    let challenge = post(
        http,
        &format!("{base}/v1/auth/wallet/challenge"),
        None,
        json!({ "address": lower_address(&wallet) }),
    )
    .await
    .ok("challenge")?;
    let signature = personal_sign(&wallet, &str_field(&challenge, "message")?)?;
    let verified = post(
        http,
        &format!("{base}/v1/auth/wallet/verify"),
        None,
        json!({ "challenge_id": str_field(&challenge, "challenge_id")?, "signature": signature }),
    )
    .await
    .ok("verify")?;
    str_field(&verified, "session_token")
}

async fn sign_in_many(http: &reqwest::Client, base: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let mut tasks = tokio::task::JoinSet::new();
    let next = Arc::new(AtomicU64::new(0));
    for _ in 0..n.min(8) {
        let (http, base, next) = (http.clone(), base.to_owned(), next.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                out.push(sign_in(&http, &base).await?);
            }
            anyhow::Ok(out)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    Ok(all)
}

// ---- mint ------------------------------------------------------------------------------------

#[derive(Default)]
struct MintTally {
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    jwt_in_error: u64,
    first_error: Option<String>,
}

async fn mint(args: Args) -> anyhow::Result<bool> {
    let http = client()?;
    let base = args.url.clone();
    let tokens = match &args.tokens_in {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        None => sign_in_many(&http, &base, args.masters).await?,
    };
    ensure!(!tokens.is_empty(), "no session tokens");
    if let Some(path) = &args.tokens_out {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        for t in &tokens {
            writeln!(f, "{t}")?;
        }
    }
    let jwt_out = match &args.jwt_out {
        Some(path) => Some(Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ))),
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    if let Some(path) = args.stop_file.clone() {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if path.exists() {
                    stop.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let issued = Arc::new(AtomicU64::new(0));
    let tokens = Arc::new(tokens);
    let url = format!("{base}/v1/mint-oidc-jwt");
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..args.concurrency {
        let (http, url, tokens, stop, issued, jwt_out) = (
            http.clone(),
            url.clone(),
            tokens.clone(),
            stop.clone(),
            issued.clone(),
            jwt_out.clone(),
        );
        let (max, concurrency) = (args.max_requests, args.concurrency);
        workers.spawn(async move {
            let mut t = MintTally::default();
            let mut i = w % tokens.len();
            while !stop.load(Ordering::Relaxed)
                && Instant::now() < deadline
                && issued.fetch_add(1, Ordering::Relaxed) < max
            {
                let answer = Answer::of(http.post(&url).bearer_auth(&tokens[i]).send().await).await;
                i = (i + concurrency) % tokens.len();
                match answer {
                    Answer::Http(200, v) => match v["jwt"].as_str() {
                        Some(jwt) if jwt.split('.').count() == 3 => {
                            t.ok += 1;
                            if let Some(out) = &jwt_out {
                                // One write per line, straight to the file: nothing buffered
                                // here can be lost when the broker (not this process) dies.
                                let mut f = out.lock().unwrap_or_else(|e| e.into_inner());
                                if let Err(e) = f.write_all(format!("{jwt}\n").as_bytes()) {
                                    t.first_error.get_or_insert(format!("writing a JWT: {e}"));
                                    *t.statuses.entry(0).or_default() += 1;
                                }
                            }
                        }
                        _ => {
                            *t.statuses.entry(0).or_default() += 1;
                            t.first_error
                                .get_or_insert(format!("200 without a JWT: {v}"));
                        }
                    },
                    Answer::Http(status, v) => {
                        *t.statuses.entry(status).or_default() += 1;
                        if v.to_string().contains("eyJ") {
                            t.jwt_in_error += 1;
                        }
                        t.first_error.get_or_insert(format!("{status} {v}"));
                    }
                    Answer::Transport(e) => {
                        t.transport_errors += 1;
                        t.first_error.get_or_insert(e);
                        // The broker is down (killed, restarting): do not spin.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            t
        });
    }
    let mut total = MintTally::default();
    while let Some(t) = workers.join_next().await {
        let t = t.context("a worker panicked")?;
        total.ok += t.ok;
        total.transport_errors += t.transport_errors;
        total.jwt_in_error += t.jwt_in_error;
        for (s, c) in t.statuses {
            *total.statuses.entry(s).or_default() += c;
        }
        if total.first_error.is_none() {
            total.first_error = t.first_error;
        }
    }
    stop.store(true, Ordering::Relaxed);
    println!("ok: {}", total.ok);
    for (s, c) in &total.statuses {
        println!("status_{s}: {c}");
    }
    println!("transport_errors: {}", total.transport_errors);
    println!("jwt_in_error_answers: {}", total.jwt_in_error);
    if let Some(e) = &total.first_error {
        println!("first_error: {}", e.chars().take(300).collect::<String>());
    }
    let unexpected: u64 = total
        .statuses
        .iter()
        .filter(|(s, _)| !args.allow_status.contains(s))
        .map(|(_, c)| c)
        .sum();
    let transport_bad = !args.tolerate_outage && total.transport_errors > 0;
    Ok(unexpected == 0 && !transport_bad && total.jwt_in_error == 0)
}

// ---- soak ------------------------------------------------------------------------------------

/// What the workers saw in the current window.
#[derive(Default)]
struct Window {
    latencies_us: Vec<u32>,
    ops: BTreeMap<&'static str, u64>,
    errors: u64,
    first_error: Option<String>,
}

struct Soak {
    http: reqwest::Client,
    base: String,
    issuer: String,
    masters: Vec<String>,
    window: Mutex<Window>,
    labels: AtomicU64,
}

impl Soak {
    fn record(&self, op: &'static str, started: Instant, result: anyhow::Result<()>) {
        let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        *w.ops.entry(op).or_default() += 1;
        w.latencies_us.push(us);
        if let Err(e) = result {
            w.errors += 1;
            w.first_error.get_or_insert(format!("{op}: {e:#}"));
        }
    }

    async fn mint(&self, token: &str, body: Value) -> anyhow::Result<()> {
        let v = post(
            &self.http,
            &format!("{}/v1/mint-oidc-jwt", self.base),
            Some(token),
            body,
        )
        .await
        .ok("mint")?;
        ensure!(
            v["jwt"].as_str().is_some_and(|j| j.split('.').count() == 3),
            "mint answer without a JWT: {v}"
        );
        Ok(())
    }

    fn proof(
        &self,
        device: &WalletKey,
        action: ProofAction,
        subject: Option<&str>,
    ) -> anyhow::Result<(i64, String)> {
        let ts = chrono::Utc::now().timestamp_millis();
        let message = proof_message(&self.issuer, action, &lower_address(device), subject, ts);
        Ok((ts, personal_sign(device, &message)?))
    }

    /// A fresh master signs in (approvals are limited per master), a device opens a pairing,
    /// the master approves it, the device polls its session: (master, agent omni, agent session).
    async fn pair(&self) -> anyhow::Result<(String, String, String)> {
        let master = sign_in(&self.http, &self.base).await?;
        let master = master.as_str();
        let device = WalletKey::random();
        let (ts, signature) = self.proof(&device, ProofAction::Pair, None)?;
        let started = post(
            &self.http,
            &format!("{}/v1/agents/pairing", self.base),
            None,
            json!({ "device_address": lower_address(&device), "timestamp_ms": ts, "signature": signature }),
        )
        .await
        .ok("pairing start")?;
        let pairing_id = str_field(&started, "pairing_id")?;
        let label = format!("soak-{}", self.labels.fetch_add(1, Ordering::Relaxed));
        let agent = post(
            &self.http,
            &format!("{}/v1/agents/pairing/approve", self.base),
            Some(master),
            json!({ "code": str_field(&started, "code")?, "label": label }),
        )
        .await
        .ok("pairing approve")?;
        let (ts, signature) = self.proof(&device, ProofAction::Poll, Some(&pairing_id))?;
        let polled = post(
            &self.http,
            &format!("{}/v1/agents/pairing/poll", self.base),
            None,
            json!({ "pairing_id": pairing_id, "timestamp_ms": ts, "signature": signature }),
        )
        .await
        .ok("pairing poll")?;
        let session = polled["session"]["session_token"]
            .as_str()
            .with_context(|| format!("approved poll without a session: {polled}"))?;
        Ok((
            master.to_owned(),
            str_field(&agent, "agent_omni")?,
            session.to_owned(),
        ))
    }

    async fn grant_cycle(
        &self,
        master: &str,
        agent: &str,
        agent_session: &str,
    ) -> anyhow::Result<()> {
        let expires = (chrono::Utc::now() + chrono::Duration::hours(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let grant = post(
            &self.http,
            &format!("{}/v1/grants", self.base),
            Some(master),
            json!({ "agent": agent, "scope": "soak/", "expires_at": expires, "max_uses": 5 }),
        )
        .await
        .ok("grant create")?;
        let id = str_field(&grant, "grant_id")?;
        self.mint(agent_session, json!({ "grant_id": id })).await?;
        get(&self.http, &format!("{}/v1/grants", self.base), master)
            .await
            .ok("grant list")?;
        let r = self
            .http
            .delete(format!("{}/v1/grants/{id}", self.base))
            .bearer_auth(master)
            .send()
            .await
            .context("grant revoke")?;
        ensure!(r.status().is_success(), "grant revoke: {}", r.status());
        Ok(())
    }
}

/// A master with a paired agent and a grant, for tools that cannot sign (the API fuzzer).
async fn sessions(args: Args) -> anyhow::Result<bool> {
    let http = client()?;
    let discovery = Answer::of(
        http.get(format!("{}/.well-known/openid-configuration", args.url))
            .send()
            .await,
    )
    .await
    .ok("discovery")?;
    let soak = Soak {
        http,
        base: args.url.clone(),
        issuer: str_field(&discovery, "issuer")?,
        masters: Vec::new(),
        window: Mutex::new(Window::default()),
        labels: AtomicU64::new(0),
    };
    let (master, agent_omni, agent) = soak.pair().await?;
    let expires = (chrono::Utc::now() + chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let grant = post(
        &soak.http,
        &format!("{}/v1/grants", soak.base),
        Some(&master),
        json!({ "agent": agent_omni, "scope": "fuzz/", "expires_at": expires }),
    )
    .await
    .ok("grant create")?;
    let who = get(&soak.http, &format!("{}/v1/session", soak.base), &master)
        .await
        .ok("whoami")?;
    println!(
        "{}",
        json!({
            "master": master,
            "agent": agent,
            "agent_omni": agent_omni,
            "grant_id": str_field(&grant, "grant_id")?,
            "wallet": who["wallet"],
        })
    );
    Ok(true)
}

/// Resident set size (KiB) and open descriptors of a process (Linux /proc).
fn rss_and_fds(pid: u32) -> (Option<u64>, Option<usize>) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        });
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count());
    (rss, fds)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn soak(args: Args) -> anyhow::Result<bool> {
    let http = client()?;
    let base = args.url.clone();
    let discovery = Answer::of(
        http.get(format!("{base}/.well-known/openid-configuration"))
            .send()
            .await,
    )
    .await
    .ok("discovery")?;
    let issuer = str_field(&discovery, "issuer")?;
    let masters = sign_in_many(&http, &base, args.concurrency).await?;
    let soak = Arc::new(Soak {
        http,
        base,
        issuer,
        masters,
        window: Mutex::new(Window::default()),
        labels: AtomicU64::new(0),
    });
    let stop_at = Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..args.concurrency {
        let soak = soak.clone();
        workers.spawn(async move {
            let mut master = soak.masters[w].clone();
            let mut agent: Option<(String, String)> = None;
            let mut n: u64 = 0;
            while Instant::now() < stop_at {
                n += 1;
                let started = Instant::now();
                // One pairing per worker up front and every 50th turn; the rest is a fixed mix.
                let (op, result) = if agent.is_none() || n.is_multiple_of(100) {
                    match soak.pair().await {
                        Ok((m, a, s)) => {
                            master = m;
                            agent = Some((a, s));
                            ("pairing", Ok(()))
                        }
                        Err(e) => ("pairing", Err(e)),
                    }
                } else {
                    let (agent_omni, agent_session) = agent
                        .as_ref()
                        .map(|(a, s)| (a.as_str(), s.as_str()))
                        .unwrap_or_default();
                    match n % 10 {
                        0 => ("sign_in", sign_in(&soak.http, &soak.base).await.map(|_| ())),
                        1 => (
                            "audit_read",
                            get(
                                &soak.http,
                                &format!("{}/v1/audit?limit=50", soak.base),
                                &master,
                            )
                            .await
                            .ok("audit")
                            .map(|_| ()),
                        ),
                        2 => (
                            "grant_cycle",
                            soak.grant_cycle(&master, agent_omni, agent_session).await,
                        ),
                        3 | 4 => ("agent_mint", soak.mint(agent_session, json!({})).await),
                        _ => ("master_mint", soak.mint(&master, json!({})).await),
                    }
                };
                soak.record(op, started, result);
            }
        });
    }

    let mut windows = Vec::new();
    let mut leaked = Vec::new();
    let authority = reqwest::Url::parse(&soak.base)?
        .socket_addrs(|| None)?
        .into_iter()
        .next()
        .context("the broker's address")?;
    let mut next = Instant::now();
    let mut n = 0;
    let mut ok = true;
    loop {
        next += Duration::from_secs_f64(args.window);
        let last = next >= stop_at;
        tokio::time::sleep_until(next.min(stop_at).into()).await;
        for _ in 0..args.leak_connections {
            // One answered request, then the connection is kept open and idle for good.
            let mut c = tokio::net::TcpStream::connect(authority).await?;
            tokio::io::AsyncWriteExt::write_all(
                &mut c,
                b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
            )
            .await?;
            leaked.push(c);
        }
        let w = std::mem::take(&mut *soak.window.lock().unwrap_or_else(|e| e.into_inner()));
        let mut lat = w.latencies_us;
        lat.sort_unstable();
        let (rss, fds) = args.server_pid.map(rss_and_fds).unwrap_or((None, None));
        n += 1;
        let ops: u64 = w.ops.values().sum();
        println!(
            "window {n}: ops {ops} errors {} p50_ms {:.1} p99_ms {:.1} rss_kb {} fds {} mix {}",
            w.errors,
            f64::from(percentile(&lat, 50.0)) / 1000.0,
            f64::from(percentile(&lat, 99.0)) / 1000.0,
            rss.map_or("-".into(), |v| v.to_string()),
            fds.map_or("-".into(), |v| v.to_string()),
            w.ops
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        );
        if let Some(e) = &w.first_error {
            println!(
                "window {n} first_error: {}",
                e.chars().take(300).collect::<String>()
            );
        }
        ok &= w.errors == 0;
        windows.push((ops, w.errors, percentile(&lat, 99.0)));
        if last {
            break;
        }
    }
    while workers.join_next().await.is_some() {}
    // Whatever finished after the last window.
    let tail = std::mem::take(&mut *soak.window.lock().unwrap_or_else(|e| e.into_inner()));
    ok &= tail.errors == 0;
    let total: u64 = windows.iter().map(|w| w.0).sum::<u64>() + tail.ops.values().sum::<u64>();
    let errors: u64 = windows.iter().map(|w| w.1).sum::<u64>() + tail.errors;
    println!("operations: {total}");
    println!("errors: {errors}");
    Ok(ok && total > 0)
}
