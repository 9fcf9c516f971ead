//! Mint load benchmark against a running broker (loopback only).
//!
//! ```text
//! cargo bench -p agentkeys-broker --bench mint_load -- \
//!     --url http://127.0.0.1:8091 --masters 200 --concurrency 32 --seconds 20 [--warmup 2]
//! ```
//!
//! Signs in `--masters` fresh random wallets (EIP-191 challenge/verify), then runs
//! `--concurrency` workers that each mint in a loop, round-robin over the session tokens, for
//! `--warmup` + `--seconds` seconds. Only requests that complete after the warm-up count in the
//! statistics. Output is plain `key: value` lines (see `docs/performance.md`); the process exits
//! non-zero if anything but 200 was answered, or nothing was.
//!
//! `scripts/bench-mint.sh` builds and starts a broker with high rate limits and runs this.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentkeys_wallet::WalletKey;
use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

const USAGE: &str = "\
usage: mint_load --url URL [--url URL2 ...] [--masters N] [--concurrency C] [--seconds S]
                 [--warmup S] [--max-requests N] [--threads T] [--server-pid PID ...]
                 [--tokens-out FILE]

  --url           broker base URL; loopback only (http://127.0.0.1:PORT). Repeat it for several
                  instances of one broker: workers are spread over them round-robin (masters
                  sign in on the first)
  --masters       wallets to sign in, minted for round-robin (default 200)
  --concurrency   concurrent workers, one keep-alive connection each (default 32)
  --seconds       measured duration (default 20)
  --warmup        seconds run first and left out of the statistics (default 2)
  --max-requests  stop after this many mint requests in all (default 5000000)
  --threads       load-generator runtime threads (default 1)
  --server-pid    a server process id (repeatable: every broker instance, the database's
                  processes); their summed CPU time over the measured window is reported as the
                  server's (Linux /proc)
  --tokens-out    only sign in the masters, write their session tokens to FILE (one a line,
                  mode 0600) and exit; for external load generators such as wrk";

/// The whole run may not outlast its nominal length by more than this.
const GRACE: Duration = Duration::from_secs(60);
/// One request may take at most this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Sign-ins run this many at a time.
const SIGN_IN_PARALLELISM: usize = 16;

struct Args {
    urls: Vec<String>,
    masters: usize,
    concurrency: usize,
    seconds: f64,
    warmup: f64,
    max_requests: u64,
    threads: usize,
    server_pids: Vec<u32>,
    tokens_out: Option<std::path::PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        urls: Vec::new(),
        masters: 200,
        concurrency: 32,
        seconds: 20.0,
        warmup: 2.0,
        max_requests: 5_000_000,
        threads: 1,
        server_pids: Vec::new(),
        tokens_out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes `--bench` to every bench binary.
        if flag == "--bench" {
            continue;
        }
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (flag.clone(), None),
        };
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))?,
        };
        let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("{name} {value}: {e}");
        match name.as_str() {
            "--url" => a.urls.push(value.trim_end_matches('/').to_owned()),
            "--masters" => a.masters = value.parse().map_err(|e| bad(&e))?,
            "--concurrency" => a.concurrency = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => a.seconds = value.parse().map_err(|e| bad(&e))?,
            "--warmup" => a.warmup = value.parse().map_err(|e| bad(&e))?,
            "--max-requests" => a.max_requests = value.parse().map_err(|e| bad(&e))?,
            "--threads" => a.threads = value.parse().map_err(|e| bad(&e))?,
            "--server-pid" => a.server_pids.push(value.parse().map_err(|e| bad(&e))?),
            "--tokens-out" => a.tokens_out = Some(value.into()),
            _ => bail!("unknown argument {name}\n{USAGE}"),
        }
    }
    ensure!(!a.urls.is_empty(), "--url is required\n{USAGE}");
    ensure!(a.urls.len() <= 16, "at most 16 --url");
    ensure!(
        a.masters >= 1 && a.masters <= 100_000,
        "--masters must be 1..=100000"
    );
    ensure!(
        a.concurrency >= 1 && a.concurrency <= 4096,
        "--concurrency must be 1..=4096"
    );
    ensure!(
        a.seconds > 0.0 && a.seconds <= 3600.0,
        "--seconds must be in (0, 3600]"
    );
    ensure!(
        a.warmup >= 0.0 && a.warmup <= 600.0,
        "--warmup must be in [0, 600]"
    );
    ensure!(a.max_requests >= 1, "--max-requests must be at least 1");
    ensure!(
        a.threads >= 1 && a.threads <= 64,
        "--threads must be 1..=64"
    );
    for url in &a.urls {
        check_loopback(url)?;
    }
    Ok(a)
}

/// Refuses anything but plain HTTP to a loopback address: this tool floods what it is given.
fn check_loopback(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("--url {url}"))?;
    ensure!(
        parsed.scheme() == "http",
        "--url must be http:// (loopback only): {url}"
    );
    let host = parsed.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    ensure!(
        loopback,
        "--url must name a loopback address (127.0.0.0/8, ::1, localhost): {url}"
    );
    ensure!(
        parsed.path() == "/" || parsed.path().is_empty(),
        "--url is the broker's base URL, without a path: {url}"
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mint_load: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mint_load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("mint_load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client(pool: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(pool)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .no_proxy()
        .build()?)
}

/// EIP-191 `personal_sign`, as 0x + 130 hex.
fn personal_sign(wallet: &WalletKey, message: &str) -> anyhow::Result<String> {
    let sig = wallet.sign_message(message.as_bytes())?;
    Ok(format!("0x{}", hex::encode(sig.as_bytes())))
}

async fn sign_in(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let wallet = WalletKey::random();
    let r = http
        .post(format!("{base}/v1/auth/wallet/challenge"))
        .json(&json!({ "address": wallet.address().to_string() }))
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await?;
    ensure!(status.is_success(), "challenge: {status} {body}");
    let (Some(id), Some(message)) = (body["challenge_id"].as_str(), body["message"].as_str())
    else {
        bail!("challenge answer without challenge_id/message: {body}");
    };
    let signature = personal_sign(&wallet, message)?;
    let r = http
        .post(format!("{base}/v1/auth/wallet/verify"))
        .json(&json!({ "challenge_id": id, "signature": signature }))
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await?;
    ensure!(status.is_success(), "verify: {status} {body}");
    body["session_token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("verify answer without session_token: {body}"))
}

async fn sign_in_all(http: &reqwest::Client, base: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..SIGN_IN_PARALLELISM.min(n) {
        let (http, base, next) = (http.clone(), base.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                tokens.push(sign_in(&http, &base).await?);
            }
            anyhow::Ok(tokens)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    /// Latencies (µs) of 200 answers completed inside the measured window.
    latencies_us: Vec<u32>,
    /// Non-200 answers by status, whole run (warm-up included).
    statuses: BTreeMap<u16, u64>,
    /// Requests that failed without an HTTP answer (connect, timeout, reset).
    transport_errors: u64,
    first_transport_error: Option<String>,
    first_bad_body: Option<String>,
    /// All requests sent, warm-up included.
    sent: u64,
}

struct Plan {
    /// One per instance; worker `w` uses `mint_urls[w % len]`.
    mint_urls: Vec<String>,
    tokens: Arc<Vec<String>>,
    measure_from: Instant,
    stop_at: Instant,
    max_requests: u64,
    issued: AtomicU64,
}

async fn worker(http: reqwest::Client, plan: Arc<Plan>, first: usize, stride: usize) -> Tally {
    let mut t = Tally {
        latencies_us: Vec::with_capacity(64 * 1024),
        ..Tally::default()
    };
    let tokens = &plan.tokens;
    let mint_url = &plan.mint_urls[first % plan.mint_urls.len()];
    let mut i = first % tokens.len();
    let mut checked_body = false;
    loop {
        let started = Instant::now();
        if started >= plan.stop_at
            || plan.issued.fetch_add(1, Ordering::Relaxed) >= plan.max_requests
        {
            break;
        }
        t.sent += 1;
        let result = http.post(mint_url).bearer_auth(&tokens[i]).send().await;
        i = (i + stride) % tokens.len();
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                t.transport_errors += 1;
                t.first_transport_error
                    .get_or_insert_with(|| format!("{e:#}"));
                continue;
            }
        };
        let status = response.status().as_u16();
        let body = response.bytes().await;
        let done = Instant::now();
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                t.transport_errors += 1;
                t.first_transport_error
                    .get_or_insert_with(|| format!("{e:#}"));
                continue;
            }
        };
        if status != 200 {
            *t.statuses.entry(status).or_default() += 1;
            if t.first_bad_body.is_none() {
                t.first_bad_body = Some(format!("{status} {}", String::from_utf8_lossy(&body)));
            }
            continue;
        }
        // Check the shape of one answer per worker; parsing every one would cost the load
        // generator CPU the broker needs on a shared machine.
        if !checked_body {
            checked_body = true;
            let ok = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["jwt"].as_str().map(|j| j.split('.').count() == 3))
                .unwrap_or(false);
            if !ok {
                t.first_bad_body = Some(format!(
                    "200 without a JWT: {}",
                    String::from_utf8_lossy(&body)
                ));
                *t.statuses.entry(0).or_default() += 1;
            }
        }
        if started >= plan.measure_from && done <= plan.stop_at {
            t.latencies_us
                .push(u32::try_from(done.duration_since(started).as_micros()).unwrap_or(u32::MAX));
        }
    }
    t
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(us: u32) -> String {
    format!("{:.3}", f64::from(us) / 1000.0)
}

/// utime + stime of a process, in seconds (Linux).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

/// Session tokens are bearer secrets: the file is created 0600 and must not exist yet.
fn write_tokens(path: &std::path::Path, tokens: &[String]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    for t in tokens {
        writeln!(f, "{t}")?;
    }
    Ok(())
}

/// Time allowed for signing in `masters` wallets: a minute, plus 3 ms each (100,000 take about
/// two minutes on two cores).
fn sign_in_budget(masters: usize) -> Duration {
    GRACE + Duration::from_millis(3 * masters as u64)
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let hard_limit = Duration::from_secs_f64(args.warmup + args.seconds)
        + GRACE * 2
        + sign_in_budget(args.masters);
    match tokio::time::timeout(hard_limit, run_inner(args)).await {
        Ok(r) => r,
        Err(_) => bail!("the run exceeded its time bound ({hard_limit:?}); gave up"),
    }
}

async fn run_inner(args: Args) -> anyhow::Result<bool> {
    let base = args.urls[0].clone();
    let http = client(args.concurrency.max(SIGN_IN_PARALLELISM))?;

    for url in &args.urls {
        match http.get(format!("{url}/readyz")).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => bail!("{url}/readyz answered {}", r.status()),
            Err(e) => bail!("{url}/readyz: {e:#}"),
        }
    }

    let t0 = Instant::now();
    let budget = sign_in_budget(args.masters);
    let tokens = tokio::time::timeout(budget, sign_in_all(&http, &base, args.masters))
        .await
        .with_context(|| format!("signing in the masters took over {budget:?}"))??;
    println!("url: {}", args.urls.join(" "));
    println!("masters: {}", tokens.len());
    println!("sign_in_seconds: {:.2}", t0.elapsed().as_secs_f64());
    if let Some(path) = &args.tokens_out {
        write_tokens(path, &tokens)?;
        println!("tokens_written: {}", path.display());
        return Ok(true);
    }
    println!("concurrency: {}", args.concurrency);
    println!("loadgen_threads: {}", args.threads);
    println!("warmup_seconds: {}", args.warmup);

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let stop_at = measure_from + Duration::from_secs_f64(args.seconds);
    let plan = Arc::new(Plan {
        mint_urls: args
            .urls
            .iter()
            .map(|u| format!("{u}/v1/mint-oidc-jwt"))
            .collect(),
        tokens: Arc::new(tokens),
        measure_from,
        stop_at,
        max_requests: args.max_requests,
        issued: AtomicU64::new(0),
    });
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| tokio::spawn(worker(http.clone(), plan.clone(), w, args.concurrency)))
        .collect();

    // CPU of the server processes and of this process over the measured window.
    let pids: Vec<String> = args.server_pids.iter().map(u32::to_string).collect();
    let server_cpu = || -> Option<f64> {
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|p| cpu_seconds(p)).sum()
    };
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_at_start = (server_cpu(), cpu_seconds("self"));

    let mut tally = Tally::default();
    let mut cpu_at_end = (None, None);
    for (n, w) in workers.into_iter().enumerate() {
        let t = w.await.context("a worker panicked")?;
        if n == 0 {
            // The first worker returns at stop_at (or soon after): close enough for CPU.
            cpu_at_end = (server_cpu(), cpu_seconds("self"));
        }
        tally.latencies_us.extend(t.latencies_us);
        for (s, c) in t.statuses {
            *tally.statuses.entry(s).or_default() += c;
        }
        tally.transport_errors += t.transport_errors;
        tally.sent += t.sent;
        if tally.first_transport_error.is_none() {
            tally.first_transport_error = t.first_transport_error;
        }
        if tally.first_bad_body.is_none() {
            tally.first_bad_body = t.first_bad_body;
        }
    }
    let window = stop_at
        .min(Instant::now())
        .duration_since(measure_from)
        .as_secs_f64();

    let mut lat = tally.latencies_us;
    lat.sort_unstable();
    let ok = lat.len() as u64;
    let rate = ok as f64 / window;
    println!("measured_seconds: {window:.2}");
    println!("requests_sent_total: {}", tally.sent);
    println!("ok_measured: {ok}");
    println!("mints/s: {rate:.0}");
    println!("p50_ms: {}", ms(percentile(&lat, 50.0)));
    println!("p90_ms: {}", ms(percentile(&lat, 90.0)));
    println!("p99_ms: {}", ms(percentile(&lat, 99.0)));
    println!("p99.9_ms: {}", ms(percentile(&lat, 99.9)));
    println!("max_ms: {}", ms(lat.last().copied().unwrap_or(0)));
    let non_200: u64 = tally.statuses.values().sum();
    println!("non_200_total: {non_200}");
    for (s, c) in &tally.statuses {
        let label = if *s == 0 {
            "bad_body".to_owned()
        } else {
            s.to_string()
        };
        println!("status_{label}: {c}");
    }
    println!("transport_errors: {}", tally.transport_errors);
    if let Some(e) = &tally.first_transport_error {
        println!("first_transport_error: {e}");
    }
    if let Some(b) = &tally.first_bad_body {
        println!("first_non_200: {}", b.chars().take(300).collect::<String>());
    }
    if let (Some(a), Some(b)) = (cpu_at_start.1, cpu_at_end.1) {
        println!("loadgen_cpu_cores: {:.2}", (b - a) / window);
    }
    if let (Some(a), Some(b)) = (cpu_at_start.0, cpu_at_end.0) {
        println!("broker_cpu_cores: {:.2}", (b - a) / window);
        if ok > 0 {
            println!("broker_cpu_us_per_mint: {:.1}", (b - a) * 1e6 / ok as f64);
        }
    }

    // The audit counters show every mint was written (and nothing failed to be).
    match http.get(format!("{base}/metrics")).send().await {
        Ok(r) if r.status().is_success() => {
            let text = r.text().await.unwrap_or_default();
            for line in text.lines().filter(|l| {
                l.starts_with("agentkeys_audit_writes_total")
                    || l.starts_with("agentkeys_mints_total")
            }) {
                println!("metric: {line}");
            }
        }
        Ok(r) => println!("metric: /metrics answered {}", r.status()),
        Err(e) => println!("metric: /metrics failed: {e:#}"),
    }

    Ok(ok > 0 && non_200 == 0 && tally.transport_errors == 0)
}
