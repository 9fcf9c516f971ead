//! Audit export and signed checkpoints (SPEC §7).
//!
//! A checkpoint is a compact JWS (ES256, header `kid`) signed with the broker's active signing
//! key over `{"kind":"audit_checkpoint","seq":N,"head_hash":"…","time":T}`: the chain's head at
//! the time it was taken. Shipped off the box, it lets anyone holding the broker's public JWKS
//! show later that the log still has that event with that hash, which a chain alone cannot (a
//! truncated tail re-verifies). It carries no `iss`, `aud`, `sub` or `exp`, so no relying
//! party takes it for an identity token.

use std::io::Write;

use agentkeys_store::Store;
use agentkeys_store::audit::ChainVerifier;
use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::keys::KeyRing;

/// The `kind` claim of every checkpoint.
pub const CHECKPOINT_KIND: &str = "audit_checkpoint";
const PAGE: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub kind: String,
    /// Seq of the head event (0 for an empty log).
    pub seq: u64,
    /// Its hash (the genesis hash for an empty log).
    pub head_hash: String,
    /// When the checkpoint was taken, unix seconds.
    pub time: i64,
}

/// Writes every event with `seq > after` as one JSON object per line, oldest first, and
/// returns how many. Events hold no secrets (SPEC §11.4), so the export is safe to ship.
pub async fn export(store: &dyn Store, after: u64, out: &mut dyn Write) -> anyhow::Result<u64> {
    let mut after = after;
    let mut n = 0;
    loop {
        let page = store.audit_events(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            serde_json::to_writer(&mut *out, e)?;
            out.write_all(b"\n")?;
            n += 1;
        }
    }
    out.flush()?;
    Ok(n)
}

/// Verifies the whole chain; returns the verifier at the head.
pub async fn verify_chain(store: &dyn Store) -> anyhow::Result<ChainVerifier> {
    let mut verifier = ChainVerifier::default();
    let mut after = 0;
    loop {
        let page = store.audit_events(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for event in &page {
            verifier
                .check(event)
                .map_err(|e| anyhow!("audit chain broken: {e}"))?;
        }
    }
    Ok(verifier)
}

/// Verifies the chain and signs its head with the broker's active key, opened from `vault`.
pub async fn create(
    store: &dyn Store,
    vault: crate::keys::Vault,
    now: i64,
) -> anyhow::Result<(Checkpoint, String)> {
    let verifier = verify_chain(store).await?;
    let ring = KeyRing::new(vault);
    let problems = ring.reload(store, now).await?;
    let signer = ring.current().signer(now).ok_or_else(|| {
        let why = problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        anyhow!(
            "no active signing key to sign with{}",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            }
        )
    })?;
    let checkpoint = Checkpoint {
        kind: CHECKPOINT_KIND.into(),
        seq: verifier.verified(),
        head_hash: verifier.head_hash().to_owned(),
        time: now,
    };
    let jws = signer
        .sign_jwt(&serde_json::to_vec(&checkpoint)?)
        .map_err(|e| anyhow!("signing the checkpoint: {e}"))?;
    Ok((checkpoint, jws))
}

/// Checks the signature of a checkpoint against a JWKS (by `kid`, ES256 only).
pub fn verify_signature(jws: &str, jwks: &jsonwebtoken::jwk::JwkSet) -> anyhow::Result<Checkpoint> {
    let jws = jws.trim();
    let header = jsonwebtoken::decode_header(jws).context("the checkpoint is not a compact JWS")?;
    if header.alg != jsonwebtoken::Algorithm::ES256 {
        bail!("the checkpoint is signed with {:?}, not ES256", header.alg);
    }
    let kid = header
        .kid
        .ok_or_else(|| anyhow!("the checkpoint names no kid"))?;
    let jwk = jwks.find(&kid).ok_or_else(|| {
        anyhow!("key {kid} is not in the JWKS (unknown, or withdrawn since it signed)")
    })?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).context("the JWKS key is unusable")?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_aud = false;
    let data = jsonwebtoken::decode::<Checkpoint>(jws, &key, &v)
        .map_err(|e| anyhow!("the checkpoint's signature does not verify: {e}"))?;
    if data.claims.kind != CHECKPOINT_KIND {
        bail!("the token is not an audit checkpoint");
    }
    Ok(data.claims)
}

/// Checks that the stored chain is intact and still holds the checkpoint's event with its hash.
pub async fn verify_against_store(store: &dyn Store, cp: &Checkpoint) -> anyhow::Result<()> {
    let verifier = verify_chain(store).await?;
    if verifier.verified() < cp.seq {
        bail!(
            "the audit log ends at seq {} but the checkpoint covers seq {}: events were removed",
            verifier.verified(),
            cp.seq
        );
    }
    let hash = if cp.seq == 0 {
        agentkeys_store::audit::GENESIS_HASH.to_owned()
    } else {
        let event = store
            .audit_events(cp.seq - 1, 1)
            .await?
            .into_iter()
            .next()
            .filter(|e| e.seq == cp.seq)
            .ok_or_else(|| anyhow!("audit event seq {} is missing", cp.seq))?;
        event.hash
    };
    if hash != cp.head_hash {
        bail!(
            "audit event seq {} has hash {hash}, but the checkpoint says {}: the log was rewritten",
            cp.seq,
            cp.head_hash
        );
    }
    Ok(())
}

/// A JWKS from a file or a URL.
pub async fn load_jwks(
    file: Option<&std::path::Path>,
    url: Option<&str>,
) -> anyhow::Result<jsonwebtoken::jwk::JwkSet> {
    let text = match (file, url) {
        (Some(f), None) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, Some(u)) => {
            reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?
                .get(u)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .with_context(|| format!("fetching {u}"))?
                .text()
                .await?
        }
        _ => bail!("give exactly one of --jwks-url and --jwks-file"),
    };
    serde_json::from_str(&text).context("the JWKS is not a JSON Web Key Set")
}

/// `audit export | checkpoint | verify-checkpoint`.
pub async fn run(
    args: &crate::cli::StoreArgs,
    command: crate::cli::AuditCommand,
    now: i64,
) -> anyhow::Result<()> {
    use crate::cli::AuditCommand;
    let url = args.database_url();
    let store = agentkeys_store::open(&url)
        .await
        .with_context(|| format!("opening {}", agentkeys_store::redact_url(&url)))?;
    match command {
        AuditCommand::Verify => {
            let v = verify_chain(store.as_ref()).await?;
            println!(
                "audit chain ok: {} events, head {}",
                v.verified(),
                v.head_hash()
            );
        }
        AuditCommand::Export { after } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let n = export(store.as_ref(), after, &mut out).await?;
            eprintln!("exported {n} events");
        }
        AuditCommand::Checkpoint => {
            let vault =
                crate::keys::Vault::new(&args.data_dir, args.key_encryption_key_file.as_deref())?;
            let (cp, jws) = create(store.as_ref(), vault, now).await?;
            println!("{jws}");
            eprintln!(
                "checkpoint of seq {} (head {}) at {}",
                cp.seq,
                cp.head_hash,
                crate::clock::rfc3339(cp.time)
            );
        }
        AuditCommand::VerifyCheckpoint {
            jwks_url,
            jwks_file,
            checkpoint,
        } => {
            let jws = if checkpoint.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&checkpoint)
                    .with_context(|| format!("reading {}", checkpoint.display()))?
            };
            let jwks = load_jwks(jwks_file.as_deref(), jwks_url.as_deref()).await?;
            let cp = verify_signature(&jws, &jwks)?;
            verify_against_store(store.as_ref(), &cp).await?;
            println!(
                "checkpoint ok: seq {} has hash {} (signed {})",
                cp.seq,
                cp.head_hash,
                crate::clock::rfc3339(cp.time)
            );
        }
    }
    Ok(())
}
