//! TLS served by the broker itself (`--tls-cert`, `--tls-key`): the real binary, real
//! certificates from two throwaway CAs, and clients that each trust only one of them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::app::{broker_binary, free_port, private_tempdir};

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A throwaway CA and one server certificate for 127.0.0.1 and localhost, as PEM.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new(name: &str) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        Self {
            ca_pem: pem("CERTIFICATE", ca_cert.der()),
            cert_pem: pem("CERTIFICATE", cert.der()),
            key_pem: pem("PRIVATE KEY", &key.serialize_der()),
        }
    }

    /// A client that trusts this CA only, with no connection reuse: each request is a fresh
    /// handshake.
    fn client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }
}

/// Writes `contents` to `path` the way renewal tools do: a new file renamed over the old one.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_tls(port: u16, data: &Path, cert: &Path, key: &Path) -> Command {
    let mut c = broker_binary();
    c.args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        // One by flag, one by variable: both spellings are the contract.
        .arg("--tls-cert")
        .arg(cert)
        .env("BROKER_TLS_KEY", key);
    c
}

async fn healthz(client: &reqwest::Client, base: &str) -> Result<(), reqwest::Error> {
    client
        .get(format!("{base}/healthz"))
        .send()
        .await?
        .error_for_status()
        .map(drop)
}

#[tokio::test]
async fn a_renewed_certificate_is_served_on_the_next_handshake_without_a_restart() {
    let dir = private_tempdir();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let first = Pki::new("first");
    let second = Pki::new("second");
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();

    let port = free_port();
    let base = format!("https://127.0.0.1:{port}");
    let mut broker = Running(
        serve_tls(port, &dir.path().join("data"), &cert, &key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while healthz(&first.client(), &base).await.is_err() {
        assert!(
            broker.0.try_wait().unwrap().is_none(),
            "the broker exited during start-up"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = broker.0.id();
    assert!(
        healthz(&second.client(), &base).await.is_err(),
        "the second CA has signed nothing served yet"
    );
    // With TLS and --dev, the issuer is the https URL of the listener.
    let discovery: serde_json::Value = first
        .client()
        .get(format!("{base}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], base);

    replace(&cert, &second.cert_pem);
    replace(&key, &second.key_pem);
    healthz(&second.client(), &base)
        .await
        .expect("the renewed certificate is served");
    assert!(healthz(&first.client(), &base).await.is_err());
    assert!(broker.0.try_wait().unwrap().is_none());
    assert_eq!(broker.0.id(), pid);

    // Half a renewal (a new certificate whose key is not there yet) keeps the last good pair.
    replace(&cert, &first.cert_pem);
    healthz(&second.client(), &base)
        .await
        .expect("a mismatched pair is not served; the previous one is");
    replace(&key, &first.key_pem);
    healthz(&first.client(), &base)
        .await
        .expect("the completed pair is served");
}

#[test]
fn unusable_tls_files_stop_start_up_naming_the_setting_and_the_file() {
    let dir = private_tempdir();
    let p = |name: &str| -> PathBuf { dir.path().join(name) };
    let pki = Pki::new("good");
    let other = Pki::new("other");
    std::fs::write(p("cert.pem"), &pki.cert_pem).unwrap();
    std::fs::write(p("key.pem"), &pki.key_pem).unwrap();
    std::fs::write(p("other-key.pem"), &other.key_pem).unwrap();
    std::fs::write(p("garbage.pem"), "not a certificate\n").unwrap();
    std::fs::write(p("ca.pem"), &pki.ca_pem).unwrap();
    let data = p("data");
    let s = |path: PathBuf| path.to_str().unwrap().to_owned();
    // (cert, key, words the one-line message must contain)
    let cases: Vec<(Option<String>, Option<String>, Vec<String>)> = vec![
        (
            Some(s(p("missing.pem"))),
            Some(s(p("key.pem"))),
            vec![
                "--tls-cert".into(),
                "BROKER_TLS_CERT".into(),
                "missing.pem".into(),
                "cannot read".into(),
            ],
        ),
        (
            Some(s(p("cert.pem"))),
            Some(s(p("missing-key.pem"))),
            vec![
                "--tls-key".into(),
                "BROKER_TLS_KEY".into(),
                "missing-key.pem".into(),
            ],
        ),
        (
            Some(s(p("garbage.pem"))),
            Some(s(p("key.pem"))),
            vec!["--tls-cert".into(), "no PEM certificate".into()],
        ),
        (
            Some(s(p("cert.pem"))),
            Some(s(p("ca.pem"))),
            vec!["--tls-key".into(), "no PEM private key".into()],
        ),
        (
            Some(s(p("cert.pem"))),
            Some(s(p("other-key.pem"))),
            vec!["does not belong to the certificate".into()],
        ),
        (Some(s(p("cert.pem"))), None, vec!["--tls-key".into()]),
    ];
    for (cert, key, words) in cases {
        let mut c = broker_binary();
        c.args(["serve", "--dev", "--listen", "127.0.0.1:1", "--data-dir"])
            .arg(&data);
        if let Some(cert) = &cert {
            c.args(["--tls-cert", cert]);
        }
        if let Some(key) = &key {
            c.args(["--tls-key", key]);
        }
        let out = c.stdout(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cert:?} {key:?}: {stderr}");
        for w in &words {
            assert!(
                stderr.contains(w.as_str()),
                "{cert:?} {key:?}: {w:?} not in {stderr}"
            );
        }
        assert!(
            !data.exists(),
            "refused before creating the data dir: {stderr}"
        );
    }
}
