//! The relay attack (SPEC §11.8): the CLI is pointed at a server that forwards every request to
//! a real broker. The real CLI must give such a server neither a wallet signature nor a device
//! proof the broker would accept, and must not talk plain http off loopback unless told to.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Broker, Cli, free_port, pair, signed_in_master};

/// One request the relay forwarded, and the broker's answer.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    status: Option<u16>,
}

/// An HTTP/1.1 relay on a loopback port: each request goes to the target broker unchanged
/// (except `Host` and `Connection: close`) and the answer comes back unchanged.
/// Raw sockets on purpose: the attack is a relay that passes the broker's bytes through as they
/// are (the SIWE message, the discovery document); an HTTP client and server in between would
/// rebuild them.
struct Relay {
    url: String,
    port: u16,
    listener: Option<TcpListener>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Binds the port; nothing is forwarded before [`Relay::forward_to`].
    fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().expect("local_addr").port();
        Relay {
            url: format!("http://127.0.0.1:{port}"),
            port,
            listener: Some(listener),
            seen: Arc::default(),
            stop: Arc::default(),
        }
    }

    fn forward_to(&mut self, target: u16) {
        let listener = self.listener.take().expect("forwarding once");
        let seen = self.seen.clone();
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let seen = seen.clone();
                std::thread::spawn(move || relay_one(conn, target, &seen));
            }
        });
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn saw(&self, method: &str, path: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.method == method && s.path == path)
            .collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Forwards one request (head and a `Content-Length` body) and relays the whole answer.
fn relay_one(client: TcpStream, target: u16, seen: &Mutex<Vec<Seen>>) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(match client.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut head = request_line.clone();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("host:") || lower.starts_with("connection:") {
            continue;
        }
        head.push_str(&line);
    }
    head.push_str(&format!(
        "Host: 127.0.0.1:{target}\r\nConnection: close\r\n\r\n"
    ));
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut answer = Vec::new();
    let forwarded = TcpStream::connect(("127.0.0.1", target)).and_then(|mut upstream| {
        upstream.write_all(head.as_bytes())?;
        upstream.write_all(&body)?;
        upstream.read_to_end(&mut answer)
    });
    let status = forwarded.ok().and_then(|_| {
        std::str::from_utf8(answer.get(9..12)?)
            .ok()?
            .parse::<u16>()
            .ok()
    });
    if let Ok(mut s) = seen.lock() {
        s.push(Seen {
            method,
            path,
            status,
        });
    }
    let mut client = client;
    let _ = client.write_all(&answer);
    let _ = client.shutdown(std::net::Shutdown::Both);
}

/// `agentkeys ARGS` as `cli` runs it, with extra environment variables.
fn run_with_env(cli: &Cli, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentkeys"))
        .args(args)
        .env("AGENTKEYS_BROKER_URL", &cli.broker_url)
        .env("AGENTKEYS_CONFIG_DIR", cli.config_dir())
        .env("HOME", cli.home.path())
        .env_remove("AGENTKEYS_PROFILE")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("AGENTKEYS_INSECURE_HTTP")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run agentkeys")
}

#[test]
fn a_relay_gets_no_wallet_signature() {
    let broker = Broker::start();
    let mut relay = Relay::bind();
    relay.forward_to(broker.port);
    let cli = Cli::new(&relay.url);
    let key = cli.home.path().join("wallet.key");
    let key_s = key.to_str().expect("utf-8 path");
    cli.ok(&["key", "generate", "--out", key_s]);

    let err = cli.fails(&["login", "wallet", "--key-file", key_s], 1);
    let broker_domain = format!("127.0.0.1:{}", broker.port);
    assert!(
        err.contains("refusing to sign")
            && err.contains(&format!("domain {broker_domain}"))
            && err.contains(&relay.url),
        "{err}"
    );
    // The relay did reach the broker and got its challenge ...
    let challenges = relay.saw("POST", "/v1/auth/wallet/challenge");
    assert!(
        challenges.iter().any(|s| s.status == Some(200)),
        "the relay forwarded the challenge: {:?}",
        relay.requests()
    );
    // ... but never had a signature to answer it with.
    assert!(
        relay.saw("POST", "/v1/auth/wallet/verify").is_empty(),
        "{:?}",
        relay.requests()
    );
    assert!(
        !cli.config_dir()
            .join("profiles/default/session.json")
            .exists()
    );

    // The same CLI and key sign in to the broker itself.
    let out = cli.ok(&[
        "--broker-url",
        &broker.url,
        "login",
        "wallet",
        "--key-file",
        key_s,
    ]);
    assert!(out.contains(&broker.url), "{out}");
}

#[test]
fn a_relay_gets_no_device_proof() {
    let broker = Broker::start();
    let (master, _, _) = signed_in_master(&broker);
    let mut relay = Relay::bind();
    relay.forward_to(broker.port);

    // Pairing through the relay: the discovery it forwards names the broker, not the relay.
    let agent = Cli::new(&relay.url);
    agent.ok(&["agent", "init"]);
    let err = agent.fails(&["agent", "pair", "--timeout", "5"], 1);
    assert!(
        err.contains(&relay.url) && err.contains(&broker.url) && err.contains("relaying"),
        "{err}"
    );
    assert!(
        relay
            .saw("GET", "/.well-known/openid-configuration")
            .iter()
            .any(|s| s.status == Some(200)),
        "{:?}",
        relay.requests()
    );
    assert!(
        relay.saw("POST", "/v1/agents/pairing").is_empty(),
        "{:?}",
        relay.requests()
    );

    // An agent paired with the broker itself signs no session proof for the relay either.
    let paired = Cli::new(&broker.url);
    paired.ok(&["agent", "init"]);
    let approved = pair(&paired, &master, |m, code| {
        m.ok(&["agents", "approve", code, "--label", "bot"]);
        true
    })
    .expect("paired");
    let omni = approved["agent_omni"].as_str().expect("omni").to_owned();
    let err = paired.fails(
        &[
            "--broker-url",
            &relay.url,
            "agent",
            "login",
            "--agent",
            &omni,
        ],
        1,
    );
    assert!(err.contains("relaying"), "{err}");
    assert!(
        relay.saw("POST", "/v1/agents/session").is_empty(),
        "{:?}",
        relay.requests()
    );
    paired.ok(&["agent", "login"]);
}

#[test]
fn a_paired_agent_signs_no_proof_for_another_issuer() {
    let broker_a = Broker::start();
    let (master, _, _) = signed_in_master(&broker_a);
    let agent = Cli::new(&broker_a.url);
    agent.ok(&["agent", "init"]);
    let approved = pair(&agent, &master, |m, code| {
        m.ok(&["agents", "approve", code, "--label", "bot"]);
        true
    })
    .expect("paired with A");
    let omni = approved["agent_omni"].as_str().expect("omni").to_owned();
    let pin = agent.config_dir().join("profiles/default/paired.json");
    let pinned: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&pin).expect("pin saved")).expect("json");
    assert_eq!(pinned["issuer"], broker_a.url.as_str(), "{pinned}");

    // Broker B, honest about itself: its issuer is the URL it is reached at (a recording relay
    // in front of it, to see what reaches it).
    let mut front = Relay::bind();
    let broker_b = Broker::start_with(&["--issuer", &front.url]);
    front.forward_to(broker_b.port);

    // After a logout too (the pin is not part of the session), B gets no session proof.
    agent.ok(&["logout"]);
    let err = agent.fails(
        &[
            "--broker-url",
            &front.url,
            "agent",
            "login",
            "--agent",
            &omni,
        ],
        1,
    );
    assert!(
        err.contains(&format!("paired with the broker {}", broker_a.url))
            && err.contains(&front.url)
            && err.contains("agent pair"),
        "{err}"
    );
    assert!(
        front
            .saw("GET", "/.well-known/openid-configuration")
            .iter()
            .any(|s| s.status == Some(200)),
        "B was asked who it is: {:?}",
        front.requests()
    );
    assert!(
        front.saw("POST", "/v1/agents/session").is_empty(),
        "{:?}",
        front.requests()
    );

    // Broker A still gets its proofs.
    agent.ok(&["agent", "login", "--agent", &omni]);
}

#[test]
fn plain_http_off_loopback_needs_insecure_http() {
    // 0.0.0.0 is not loopback, yet connecting to it reaches this host: nothing listens there,
    // so with the flag the CLI gets as far as "unreachable".
    let url = format!("http://0.0.0.0:{}", free_port());
    let cli = Cli::new(&url);
    let key = cli.home.path().join("wallet.key");
    let key_s = key.to_str().expect("utf-8 path");
    cli.ok(&["key", "generate", "--out", key_s]);

    let err = cli.fails(&["login", "wallet", "--key-file", key_s], 1);
    assert!(
        err.contains(&url) && err.contains("clear text") && err.contains("--insecure-http"),
        "{err}"
    );
    let flag: &[&str] = &["--insecure-http"];
    let none: &[&str] = &[];
    for allow in [flag, none] {
        let args = [allow, &["login", "wallet", "--key-file", key_s][..]].concat();
        let env: &[(&str, &str)] = if allow.is_empty() {
            &[("AGENTKEYS_INSECURE_HTTP", "1")]
        } else {
            &[]
        };
        let out = run_with_env(&cli, &args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(4),
            "unreachable, {args:?}: {stderr}"
        );
        assert!(stderr.contains("cannot reach the broker"), "{stderr}");
    }
    // AGENTKEYS_INSECURE_HTTP=0 is off.
    let out = run_with_env(
        &cli,
        &["login", "wallet", "--key-file", key_s],
        &[("AGENTKEYS_INSECURE_HTTP", "0")],
    );
    assert_eq!(out.status.code(), Some(1));
}
