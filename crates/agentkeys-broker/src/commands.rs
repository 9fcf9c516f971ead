//! The operator subcommands: `keys`, `audit`, `migrate`, `config-docs`.

use agentkeys_types::audit::AuditKind;
use std::io::Write;

use agentkeys_store::audit::ChainVerifier;
use anyhow::{Context, bail};

use crate::cli::{AuditCommand, Command, KeysCommand, PolicyAwsArgs, PolicyCommand, StoreArgs};
use crate::clock::{Clock, SystemClock, rfc3339};
use crate::keys::{self, KeyState, Lifecycle, MAX_PUBLISHED_KEYS};

pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BROKER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    // Colour only for a person at a terminal: a log file or a journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    let clock = SystemClock;
    match command {
        Command::Serve(_) => bail!("serve is handled by main"),
        Command::ConfigDocs => {
            print!("{}", crate::config::render_markdown());
            Ok(())
        }
        Command::Policy {
            command: PolicyCommand::Aws(args),
        } => policy_aws(&args),
        Command::Migrate { store } => {
            open(&store).await?;
            println!(
                "store at {} is up to date",
                agentkeys_store::redact_url(&store.database_url())
            );
            Ok(())
        }
        Command::Backup { store, out } => backup(&store, &out).await,
        Command::Keys { store, command } => run_keys(&store, command, clock.now()).await,
        Command::Audit {
            store,
            command: AuditCommand::Verify,
        } => verify_audit(&store).await,
        Command::Audit { store, command } => {
            crate::checkpoint::run(&store, command, clock.now()).await
        }
    }
}

async fn backup(args: &StoreArgs, out: &std::path::Path) -> anyhow::Result<()> {
    let url = args.database_url();
    let bytes = agentkeys_store::backup(&url, out)
        .await
        .with_context(|| format!("backing up to {}", out.display()))?;
    // A backup is only as good as its chain: verify the copy, not the live store.
    let copy = agentkeys_store::open(&format!("sqlite://{}", out.display())).await?;
    let verified = crate::checkpoint::verify_chain(copy.as_ref()).await?;
    println!(
        "backed up {} ({bytes} bytes); its audit chain verifies: {} events, head {}",
        out.display(),
        verified.verified(),
        verified.head_hash()
    );
    Ok(())
}

async fn open(args: &StoreArgs) -> anyhow::Result<std::sync::Arc<dyn agentkeys_store::Store>> {
    let url = args.database_url();
    keys::check_store_and_kek(
        &url,
        &args.data_dir,
        args.key_encryption_key_file.as_deref(),
    )
    .map_err(|(setting, fix)| anyhow::anyhow!("{setting}: {fix}"))?;
    crate::data_dir::ensure(&args.data_dir).context("the data dir (BROKER_DATA_DIR)")?;
    agentkeys_store::open(&url)
        .await
        .with_context(|| format!("opening {}", agentkeys_store::redact_url(&url)))
}

pub async fn run_keys(args: &StoreArgs, command: KeysCommand, now: i64) -> anyhow::Result<()> {
    let store = open(args).await?;
    let vault = keys::Vault::new(&args.data_dir, args.key_encryption_key_file.as_deref())?;
    let lifecycle = Lifecycle::new(store.signing_keys().await?);
    let out = &mut std::io::stdout();
    match command {
        KeysCommand::List => {
            writeln!(
                out,
                "{:<44}  {:<11}  {:<20}  {:<20}  published until",
                "kid", "state", "created", "signs from"
            )?;
            for r in lifecycle.records() {
                let until = lifecycle
                    .published_until(r)
                    .map(rfc3339)
                    .unwrap_or_else(|| "(while active)".into());
                writeln!(
                    out,
                    "{:<44}  {:<11}  {:<20}  {:<20}  {until}",
                    r.kid,
                    lifecycle.state(r, now).as_str(),
                    rfc3339(r.created_at),
                    rfc3339(r.activates_at)
                )?;
            }
        }
        KeysCommand::Generate => {
            if let Some(active) = lifecycle.active(now) {
                bail!(
                    "key {} is already active; use `agentkeys-broker keys rotate` to replace it",
                    active.kid
                );
            }
            let r = keys::create(store.as_ref(), &vault, now, now, AuditKind::KeyGenerate).await?;
            writeln!(out, "generated {} (active now)", r.kid)?;
        }
        KeysCommand::Rotate { overlap_seconds } => {
            if lifecycle.published(now).len() >= MAX_PUBLISHED_KEYS {
                bail!(
                    "{MAX_PUBLISHED_KEYS} keys are already published (the JWKS bound); wait until a retiring key \
                     leaves the JWKS (`keys list` shows when) or withdraw one with `keys retire KID --immediately`"
                );
            }
            // Strictly after every existing key, so "newest" is never a tie.
            let latest = lifecycle
                .records()
                .iter()
                .map(|r| r.activates_at)
                .max()
                .unwrap_or(i64::MIN);
            let activates_at = (now + overlap_seconds as i64).max(latest + 1);
            let r = keys::create(
                store.as_ref(),
                &vault,
                now,
                activates_at,
                AuditKind::KeyRotate,
            )
            .await?;
            writeln!(
                out,
                "generated {}: published now, signs from {}",
                r.kid,
                rfc3339(activates_at)
            )?;
        }
        KeysCommand::Retire { kid, immediately } => {
            let Some(r) = lifecycle.records().iter().find(|r| r.kid == kid) else {
                bail!("no signing key with kid {kid}; see `agentkeys-broker keys list`");
            };
            let state = lifecycle.state(r, now);
            if state == KeyState::Unpublished {
                bail!("key {kid} is already out of the JWKS");
            }
            let is_active = state == KeyState::Active;
            let successor = lifecycle
                .records()
                .iter()
                .any(|o| o.kid != kid && lifecycle.state(o, now) == KeyState::Pending);
            if is_active && !immediately && !successor {
                bail!(
                    "key {kid} is the only key that can sign; run `keys rotate` first so tokens keep flowing"
                );
            }
            let retired_at = Some(r.retired_at.unwrap_or(now).min(now));
            let (withdrawn_at, kind) = if immediately {
                (Some(now), AuditKind::KeyWithdraw)
            } else {
                (None, AuditKind::KeyRetire)
            };
            let event = keys::key_event(now, kind, &kid, serde_json::json!({}));
            let target = kid.clone();
            store
                .transact(move |tx| {
                    if !tx.update_signing_key(&target, retired_at, withdrawn_at)? {
                        return Err(agentkeys_store::StoreError::Conflict(format!(
                            "no signing key with kid {target}"
                        )));
                    }
                    tx.append(&event)
                })
                .await?;
            let after = Lifecycle::new(store.signing_keys().await?);
            match after
                .records()
                .iter()
                .find(|r| r.kid == kid)
                .and_then(|r| after.published_until(r))
            {
                Some(t) if !immediately => writeln!(
                    out,
                    "retired {kid}: no longer signs; published until {}",
                    rfc3339(t)
                )?,
                _ => writeln!(
                    out,
                    "withdrew {kid}: removed from the JWKS now; its tokens no longer verify"
                )?,
            }
            if is_active {
                writeln!(
                    out,
                    "warning: {kid} was the active key; mints fail until a pending key activates"
                )?;
            }
        }
        KeysCommand::RotateKek { new_key_file } => {
            let keys::Vault::Sealed(old) = &vault else {
                bail!(
                    "no key-encryption key is configured (BROKER_KEY_ENCRYPTION_KEY_FILE): the \
                     signing keys are files in the data dir, there is nothing to re-seal"
                );
            };
            keys::check_store_and_kek(&args.database_url(), &args.data_dir, Some(&new_key_file))
                .map_err(|(_, fix)| anyhow::anyhow!("--new-key-file: {fix}"))?;
            let new = keys::Kek::load(&new_key_file)?;
            if new.id() == old.id() {
                bail!(
                    "the new key-encryption key is the one in use; make a new one with `openssl rand -base64 32`"
                );
            }
            let n = keys::rotate_kek(store.as_ref(), old, &new, now).await?;
            writeln!(
                out,
                "re-sealed {n} signing key(s) under {} (was {}); now set BROKER_KEY_ENCRYPTION_KEY_FILE={} on every instance and restart them",
                new.id(),
                old.id(),
                new_key_file.display()
            )?;
        }
    }
    Ok(())
}

async fn verify_audit(args: &StoreArgs) -> anyhow::Result<()> {
    let store = open(args).await?;
    let mut verifier = ChainVerifier::default();
    let mut after = 0;
    loop {
        let page = store.audit_events(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for event in &page {
            verifier
                .check(event)
                .map_err(|e| anyhow::anyhow!("audit chain broken: {e}"))?;
        }
    }
    println!(
        "audit chain ok: {} events, head {}",
        verifier.verified(),
        verifier.head_hash()
    );
    Ok(())
}

fn policy_aws(args: &PolicyAwsArgs) -> anyhow::Result<()> {
    use crate::policy::{AwsInputs, BucketPolicy, aws_bundle, provider_command, trust_policy};
    let mut inputs = AwsInputs::new(&args.issuer, &args.account, &args.bucket, &args.role_name)
        .map_err(|e| anyhow::anyhow!(e))?;
    if args.with_grants {
        inputs = inputs.with_scope();
    }
    if args.require_source_identity {
        if inputs.account.is_empty() {
            bail!(
                "--require-source-identity needs an AWS account: account-less clouds (Ceph RGW) \
                 set no sts:SourceIdentity key and would refuse every token"
            );
        }
        inputs = inputs.requiring_source_identity();
    }
    let mut bundle = aws_bundle(&inputs);
    if !args.expand.is_empty() {
        let mut values = Vec::new();
        for pair in &args.expand {
            let Some((tag, value)) = pair.split_once('=') else {
                bail!(
                    "--expand takes TAG=VALUE, for example agentkeys_user_wallet=0xabc…; got {pair:?}"
                );
            };
            if !inputs.prefix_tags.iter().any(|t| t == tag) {
                bail!(
                    "--expand: {tag:?} is not a prefix tag here ({})",
                    inputs.prefix_tags.join(", ")
                );
            }
            values.push((tag.to_owned(), value.to_owned()));
        }
        bundle["bucket_policy"] = BucketPolicy::expanded(&inputs, &values);
    }
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, value) in [
            ("provider.json", &bundle["oidc_provider"]),
            ("trust-policy.json", &bundle["role"]["trust_policy"]),
            ("bucket-policy.json", &bundle["bucket_policy"]),
        ] {
            // Compact: some S3-compatible clouds reject policy JSON with whitespace.
            std::fs::write(dir.join(name), serde_json::to_string(value)?)
                .with_context(|| format!("writing {}", dir.join(name).display()))?;
        }
    }
    let out = &mut std::io::stdout();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&bundle)?)?;
        return Ok(());
    }
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    writeln!(
        out,
        "# 1. Register the broker as an OIDC provider ({})",
        inputs.provider_arn()
    )?;
    writeln!(out, "{}\n", provider_command(&inputs))?;
    writeln!(
        out,
        "# 2. Role {}: REPLACE its trust policy with this one (never add the broker beside",
        inputs.role_arn()
    )?;
    writeln!(
        out,
        "#    an IAM-user principal). The role must carry no S3 permission of its own:"
    )?;
    writeln!(
        out,
        "#    IAM unions allows, so a broad s3:* grant on the role undoes the isolation."
    )?;
    writeln!(out, "{}\n", pretty(&trust_policy(&inputs)))?;
    writeln!(
        out,
        "# 3. Bucket policy for {}: each session reaches only the prefixes its tags name.",
        inputs.bucket
    )?;
    writeln!(out, "{}", pretty(&bundle["bucket_policy"]))?;
    Ok(())
}
