//! What each subcommand does. Output goes to the writer given to [`run`] (stdout in the
//! binary); errors are returned, never printed here.

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;

use agentkeys_types::api::{
    ActorKind, MintRequest, MintResponse, WalletChallengeRequest, WalletVerifyRequest, WhoAmI,
};
use alloy_signer::Signer;

use crate::aws::{self, AwsCredentials, StsTarget};
use crate::cache::{self, CacheKey, CredentialCache, Miss};
use crate::cli::{
    AgentCommand, AgentsCommand, AwsCommand, Cli, Command, CredentialFormat, GlobalArgs,
    KeyCommand, LoginCommand, StsArgs,
};
use crate::client::{AgentAction, BrokerClient, HttpPolicy};
use crate::config::{self, DEFAULT_BROKER_URL, Profile, SavedSession};
use crate::error::{Error, Result};
use crate::isolation;
use crate::{agents, exec, identities, keyfile, siwe_check};

/// Runs one parsed command line.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    // Key commands touch neither the broker nor the profile, so a bad broker URL or profile
    // name does not stop them.
    let ctx = || Context::new(&cli.global);
    match cli.command {
        Command::Key(KeyCommand::Generate { out: file, force }) => key_generate(&file, force, out),
        Command::Key(KeyCommand::Address { key_file }) => {
            let signer = keyfile::read(&key_file)?;
            emit(out, &format!("{}\n", keyfile::address_of(&signer)))
        }
        Command::Login(LoginCommand::Wallet {
            key_file,
            chain_id,
            json,
        }) => login_wallet(&ctx()?, &key_file, chain_id, json, out).await,
        Command::Login(LoginCommand::Email {
            address,
            code,
            json,
        }) => identities::login_email(&ctx()?, &address, &code, json, out).await,
        Command::Login(LoginCommand::Oidc {
            provider,
            no_browser,
            code,
            json,
        }) => identities::login_oidc(&ctx()?, &provider, no_browser, &code, json, out).await,
        Command::Identities(command) => identities::identities(&ctx()?, command, out).await,
        Command::Whoami { json } => whoami(&ctx()?, json, out).await,
        Command::Logout { all: true, .. } => agents::logout_all(&ctx()?, out).await,
        Command::Logout { local, all: false } => logout(&ctx()?, local, out).await,
        Command::Agent(AgentCommand::Init { key_file, force }) => {
            agents::agent_init(&ctx()?, key_file, force, out)
        }
        Command::Agent(AgentCommand::Pair {
            key_file,
            timeout,
            json,
        }) => agents::agent_pair(&ctx()?, key_file, timeout, json, out).await,
        Command::Agent(AgentCommand::Login {
            key_file,
            agent,
            json,
        }) => agents::agent_login(&ctx()?, key_file, agent, json, out).await,
        Command::Agents(AgentsCommand::Approve { code, label, json }) => {
            agents::agents_approve(&ctx()?, &code, &label, json, out).await
        }
        Command::Agents(AgentsCommand::List { json }) => {
            agents::agents_list(&ctx()?, json, out).await
        }
        Command::Agents(AgentsCommand::Suspend { target }) => {
            agents::agents_set(&ctx()?, &target, AgentAction::Suspend, out).await
        }
        Command::Agents(AgentsCommand::Resume { target }) => {
            agents::agents_set(&ctx()?, &target, AgentAction::Resume, out).await
        }
        Command::Agents(AgentsCommand::Remove { target }) => {
            agents::agents_set(&ctx()?, &target, AgentAction::Remove, out).await
        }
        Command::Sessions(command) => agents::sessions(&ctx()?, command, out).await,
        Command::Audit {
            kind,
            agent,
            since,
            limit,
            json,
        } => {
            crate::audit::audit(
                &ctx()?,
                crate::audit::Filters {
                    kind,
                    agent,
                    since,
                    limit,
                },
                json,
                out,
            )
            .await
        }
        Command::Grants(command) => crate::grants::grants(&ctx()?, command, out).await,
        Command::Token {
            audience,
            role_arn,
            grant,
            json,
        } => {
            let req = MintRequest {
                audience,
                role_arn,
                grant_id: grant,
            };
            token(&ctx()?, req, json, out).await
        }
        Command::Aws(AwsCommand::Credentials {
            sts,
            duration,
            format,
            audience,
            grant,
        }) => {
            let ctx = ctx()?;
            aws_credentials(&ctx, &sts, duration.secs, format, (audience, grant), out).await
        }
        Command::Aws(AwsCommand::CredentialProcess {
            sts,
            duration,
            grant,
        }) => aws_credential_process(&ctx()?, &sts, duration.secs, grant, out).await,
        Command::Exec {
            sts,
            duration,
            grant,
            command,
        } => exec_command(&ctx()?, &sts, duration.secs, grant, command).await,
        Command::VerifyIsolation {
            sts,
            bucket,
            s3_endpoint,
            other_prefix,
        } => {
            verify_isolation(
                &ctx()?,
                &sts,
                &bucket,
                s3_endpoint.as_deref(),
                &other_prefix,
                out,
            )
            .await
        }
    }
}

/// Resolved global options.
pub(crate) struct Context {
    profile_name: String,
    config_dir: Option<std::path::PathBuf>,
    /// From `--broker-url` / `AGENTKEYS_BROKER_URL`, normalised.
    explicit_broker: Option<String>,
    /// `--insecure-http`: whether plain http off loopback is allowed.
    http_policy: HttpPolicy,
}

impl Context {
    fn new(g: &GlobalArgs) -> Result<Self> {
        let explicit_broker = g
            .broker_url
            .as_deref()
            .map(config::normalize_broker_url)
            .transpose()?;
        Ok(Self {
            profile_name: g.profile.clone(),
            config_dir: g.config_dir.clone(),
            explicit_broker,
            http_policy: if g.insecure_http {
                HttpPolicy::AllowInsecure
            } else {
                HttpPolicy::LoopbackOnly
            },
        })
    }

    /// A context for unit tests: a config dir and an optional (normalised) broker URL.
    #[cfg(test)]
    pub(crate) fn for_test(config_dir: &Path, broker: Option<&str>) -> Self {
        Self {
            profile_name: crate::config::DEFAULT_PROFILE.to_owned(),
            config_dir: Some(config_dir.to_path_buf()),
            explicit_broker: broker.map(str::to_owned),
            http_policy: HttpPolicy::LoopbackOnly,
        }
    }

    /// The profile; the config dir is only resolved by commands that need state.
    pub(crate) fn profile(&self) -> Result<Profile> {
        let dir = match &self.config_dir {
            Some(d) => d.clone(),
            None => config::default_config_dir()?,
        };
        Profile::new(&dir, &self.profile_name)
    }

    /// The broker for a saved session: the one that issued it. A different explicit URL is an
    /// error, so the token is never sent to a server that did not issue it.
    pub(crate) fn broker_for_session(&self, saved: &SavedSession) -> Result<BrokerClient> {
        let saved_url = config::normalize_broker_url(&saved.broker_url)?;
        if let Some(explicit) = &self.explicit_broker
            && *explicit != saved_url
        {
            return Err(Error::SessionForOtherBroker {
                profile: self.profile_name.clone(),
                saved: saved_url,
                requested: explicit.clone(),
            });
        }
        Ok(
            BrokerClient::with_policy(&saved_url, &self.profile_name, self.http_policy)?
                .with_agent_session(saved.is_agent()),
        )
    }

    /// The profile, its saved session and a client for the broker that issued it.
    pub(crate) fn session(&self) -> Result<(Profile, SavedSession, BrokerClient)> {
        let profile = self.profile()?;
        let saved = profile.require_session()?;
        let client = self.broker_for_session(&saved)?;
        Ok((profile, saved, client))
    }

    /// The broker to sign in to: explicit, else the one the profile used last, else the default.
    pub(crate) fn broker_for_login(&self, profile: &Profile) -> Result<BrokerClient> {
        let url = match &self.explicit_broker {
            Some(u) => u.clone(),
            None => match profile.load_session() {
                Ok(Some(s)) => config::normalize_broker_url(&s.broker_url)?,
                _ => DEFAULT_BROKER_URL.to_owned(),
            },
        };
        BrokerClient::with_policy(&url, &self.profile_name, self.http_policy)
    }
}

pub(crate) fn emit(out: &mut dyn Write, text: &str) -> Result<()> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("write to", "stdout", e))
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| Error::InvalidInput(format!("cannot encode the output as JSON: {e}")))
}

fn key_generate(file: &Path, force: bool, out: &mut dyn Write) -> Result<()> {
    let signer = keyfile::generate(file, force)?;
    // Address on stdout (so it can be captured), the note on stderr.
    emit(out, &format!("{}\n", keyfile::address_of(&signer)))?;
    eprintln!(
        "Wrote a new wallet key to {} (mode 0600). Keep it secret and backed up.",
        file.display()
    );
    Ok(())
}

async fn login_wallet(
    ctx: &Context,
    key_file: &Path,
    chain_id: u64,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let signer = keyfile::read(key_file)?;
    let address = keyfile::address_of(&signer);
    let profile = ctx.profile()?;
    let client = ctx.broker_for_login(&profile)?;

    let challenge = client
        .wallet_challenge(&WalletChallengeRequest {
            address: address.to_string(),
            chain_id: Some(chain_id),
            purpose: None,
        })
        .await?;
    // Only a message for the broker at this URL: a relay must not get a signature it can use
    // at the broker it relays.
    let message = siwe_check::check_siwe_message(
        &challenge.message,
        &address,
        client.base_url(),
        chain_id,
        time::OffsetDateTime::now_utc(),
    )?;
    // And only a sign-in: a message for another purpose (linking) is not what was asked for.
    if message.statement.as_deref() != Some(agentkeys_types::login::SIGN_IN_STATEMENT) {
        return Err(Error::BrokerProtocol {
            url: client.base_url().to_owned(),
            detail: "refusing to sign: the message is not a sign-in".into(),
        });
    }
    let signature = signer
        .sign_message(challenge.message.as_bytes())
        .await
        .map_err(|e| Error::Signing(e.to_string()))?;
    let issued = client
        .wallet_verify(&WalletVerifyRequest {
            challenge_id: challenge.challenge_id,
            signature: signature.to_string(),
        })
        .await?;

    if let Some(w) = &issued.wallet
        && !w.eq_ignore_ascii_case(address.as_str())
    {
        return Err(Error::BrokerProtocol {
            url: client.base_url().to_owned(),
            detail: format!("it signed in wallet {w}, but the key is for {address}"),
        });
    }
    let saved = SavedSession::from_issued(client.base_url(), issued);
    profile.save_session(&saved)?;

    let wallet = saved.wallet.clone().unwrap_or_else(|| address.to_string());
    if json {
        emit(
            out,
            &to_json(&serde_json::json!({
                "wallet": wallet,
                "omni_account": saved.omni_account,
                "expires_at": saved.expires_at,
                "broker_url": saved.broker_url,
                "profile": profile.name(),
            }))?,
        )
    } else {
        emit(
            out,
            &format!(
                "Signed in to {} (profile {}).\nwallet:       {}\nomni_account: {}\nexpires_at:   {}\n",
                saved.broker_url,
                profile.name(),
                wallet,
                saved.omni_account,
                saved.expires_at
            ),
        )
    }
}

async fn whoami(ctx: &Context, json: bool, out: &mut dyn Write) -> Result<()> {
    let (profile, saved, client) = ctx.session()?;
    let me: WhoAmI = client.whoami(&saved.session_token).await?;
    if json {
        emit(out, &to_json(&me)?)
    } else {
        let kind = serde_json::to_value(me.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        // The label is the client's note from pairing; the broker's whoami does not carry it.
        let label = match (&me.kind, &saved.label) {
            (ActorKind::Agent, Some(l)) if me.omni_account == saved.omni_account => {
                format!("label:        {l}\n")
            }
            _ => String::new(),
        };
        emit(
            out,
            &format!(
                "wallet:       {}\nomni_account: {}\nkind:         {}\n{label}expires_at:   {}\nbroker:       {}\nprofile:      {}\n",
                me.wallet.as_deref().unwrap_or("(none)"),
                me.omni_account,
                kind,
                me.expires_at,
                client.base_url(),
                profile.name()
            ),
        )
    }
}

async fn logout(ctx: &Context, local: bool, out: &mut dyn Write) -> Result<()> {
    let profile = ctx.profile()?;
    // Cached AWS credentials belong to the session: they go with it, whatever happens below.
    CredentialCache::new(profile.dir()).clear()?;
    let Some(saved) = profile.load_session()? else {
        return emit(
            out,
            &format!(
                "Not signed in (profile {}); nothing to do.\n",
                profile.name()
            ),
        );
    };
    if local {
        profile.delete_session()?;
        return emit(
            out,
            &format!(
                "Deleted the saved session of profile {}; the broker was not told, so it stays valid until {}.\n",
                profile.name(),
                saved.expires_at
            ),
        );
    }
    let client = ctx.broker_for_session(&saved)?;
    let message = match client.logout(&saved.session_token).await {
        Ok(()) => format!(
            "Signed out of {} (profile {}).\n",
            client.base_url(),
            profile.name()
        ),
        Err(Error::SessionRejected { .. }) => format!(
            "The session of profile {} had already ended at the broker; deleted it locally.\n",
            profile.name()
        ),
        // Keep the session so the user can retry (or use --local).
        Err(e) => return Err(e),
    };
    profile.delete_session()?;
    let message = if saved.is_agent() {
        message + agents::AGENT_SIGNED_OUT_NOTE
    } else {
        message
    };
    emit(out, &message)
}

async fn token(ctx: &Context, req: MintRequest, json: bool, out: &mut dyn Write) -> Result<()> {
    let profile = ctx.profile()?;
    let saved = profile.require_session()?;
    let client = ctx.broker_for_session(&saved)?;
    let minted = client.mint(&saved.session_token, &req).await?;
    if json {
        emit(out, &to_json(&minted)?)
    } else {
        emit(out, &format!("{}\n", minted.jwt))
    }
}

/// `--role-arn`, `--sts-endpoint` and `--region`, checked.
fn sts_target(a: &StsArgs) -> Result<StsTarget> {
    let role_arn = a.role_arn.trim().to_owned();
    aws::check_role_arn(&role_arn)?;
    let endpoint = a
        .sts_endpoint
        .as_deref()
        .map(|e| aws::normalize_endpoint(e, "--sts-endpoint"))
        .transpose()?;
    Ok(StsTarget {
        role_arn,
        region: aws::region_from_env(a.region.as_deref())?,
        endpoint,
    })
}

/// A token from the signed-in session, pinned to the role.
async fn mint_for_role(
    ctx: &Context,
    role_arn: &str,
    audience: Option<String>,
    grant_id: Option<String>,
) -> Result<MintResponse> {
    let profile = ctx.profile()?;
    let saved = profile.require_session()?;
    let client = ctx.broker_for_session(&saved)?;
    let req = MintRequest {
        audience,
        role_arn: Some(role_arn.to_owned()),
        grant_id,
    };
    client.mint(&saved.session_token, &req).await
}

/// Mint (with an optional audience and grant), then STS.
async fn fetch_credentials(
    ctx: &Context,
    target: &StsTarget,
    duration: u32,
    (audience, grant): (Option<String>, Option<String>),
) -> Result<(AwsCredentials, MintResponse)> {
    let minted = mint_for_role(ctx, &target.role_arn, audience, grant).await?;
    let name = aws::session_name(&minted.actor_omni);
    let creds = aws::assume_role_with_web_identity(target, &name, &minted.jwt, duration).await?;
    Ok((creds, minted))
}

async fn aws_credentials(
    ctx: &Context,
    sts: &StsArgs,
    duration: u32,
    format: CredentialFormat,
    intent: (Option<String>, Option<String>),
    out: &mut dyn Write,
) -> Result<()> {
    let target = sts_target(sts)?;
    let (creds, minted) = fetch_credentials(ctx, &target, duration, intent).await?;
    match format {
        CredentialFormat::Json => emit(out, &aws::render_json(&creds)?),
        CredentialFormat::Env => emit(
            out,
            &aws::render_env(&creds, &target.region, &minted.wallet),
        ),
    }
}

async fn aws_credential_process(
    ctx: &Context,
    sts: &StsArgs,
    duration: u32,
    grant: Option<String>,
    out: &mut dyn Write,
) -> Result<()> {
    let target = sts_target(sts)?;
    let profile = ctx.profile()?;
    let saved = profile.require_session()?;
    // Only checks which broker the session belongs to; no request yet.
    let client = ctx.broker_for_session(&saved)?;
    let key = CacheKey {
        broker_url: client.base_url().to_owned(),
        role_arn: target.role_arn.clone(),
        sts_endpoint: target.endpoint.clone(),
        region: target.region.clone(),
        grant: grant.clone(),
    };
    let session = cache::session_fingerprint(&saved.session_token);
    let cache = CredentialCache::new(profile.dir());
    match cache.load(&key, &session, aws::now_unix()) {
        Ok(hit) => return emit(out, &aws::render_json(&hit.credentials)?),
        Err(Miss::Corrupt(reason)) => eprintln!(
            "agentkeys: note: ignoring the cached credentials in {} ({reason}); fetching new ones",
            cache.path(&key).display()
        ),
        Err(Miss::Absent | Miss::Stale | Miss::Other) => {}
    }
    let (creds, minted) = fetch_credentials(ctx, &target, duration, (None, grant)).await?;
    if let Err(e) = cache.store(&key, &session, &creds, &minted.wallet) {
        // The credentials are good; only the next call will be slower.
        eprintln!("agentkeys: warning: cannot cache the credentials: {e}");
    }
    emit(out, &aws::render_json(&creds)?)
}

async fn exec_command(
    ctx: &Context,
    sts: &StsArgs,
    duration: u32,
    grant: Option<String>,
    command: Vec<OsString>,
) -> Result<()> {
    let Some((program, args)) = command.split_first() else {
        return Err(Error::InvalidInput(
            "no command given; usage: agentkeys exec --role-arn ARN -- CMD [ARGS…]".to_owned(),
        ));
    };
    let target = sts_target(sts)?;
    let (creds, minted) = fetch_credentials(ctx, &target, duration, (None, grant)).await?;
    let cmd = exec::command(program, args, &creds, &target.region, &minted.wallet);
    // Returns only if the command could not be started.
    Err(exec::exec(cmd))
}

/// Writes the start of a step line and flushes it, so a slow network call shows where it is.
fn step(out: &mut dyn Write, text: &str) -> Result<()> {
    emit(out, &format!("{text} ... "))
}

async fn verify_isolation(
    ctx: &Context,
    sts: &StsArgs,
    bucket: &str,
    s3_endpoint: Option<&str>,
    other_prefix: &str,
    out: &mut dyn Write,
) -> Result<()> {
    let target = sts_target(sts)?;
    let s3_endpoint = s3_endpoint
        .map(|e| aws::normalize_endpoint(e, "--s3-endpoint"))
        .transpose()?;
    if bucket.trim().is_empty() || bucket.contains('/') {
        return Err(Error::InvalidInput(format!(
            "invalid --bucket {bucket:?}: give the bucket name only, without s3:// or a prefix"
        )));
    }
    if other_prefix.is_empty() {
        return Err(Error::InvalidInput(
            "--other-prefix must not be empty (default: 0xdeadbeef/)".to_owned(),
        ));
    }
    let s3_label = s3_endpoint
        .clone()
        .unwrap_or_else(|| format!("AWS S3 ({})", target.region));
    emit(
        out,
        &format!(
            "role:   {}\nSTS:    {} (region {})\nS3:     {s3_label}, bucket {bucket}\n",
            target.role_arn,
            target.endpoint_label(),
            target.region
        ),
    )?;

    step(out, "1/4 mint a token pinned to the role")?;
    let minted = match mint_for_role(ctx, &target.role_arn, None, None).await {
        Ok(m) => m,
        Err(e) => {
            emit(
                out,
                "FAILED\nFAIL: the broker did not mint a token (error below)\n",
            )?;
            return Err(e);
        }
    };
    emit(
        out,
        &format!(
            "ok (wallet {}, actor {})\n",
            minted.wallet, minted.actor_omni
        ),
    )?;

    step(out, "2/4 STS AssumeRoleWithWebIdentity")?;
    let name = aws::session_name(&minted.actor_omni);
    let creds =
        match aws::assume_role_with_web_identity(&target, &name, &minted.jwt, aws::MIN_DURATION)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                emit(
                    out,
                    "FAILED\nFAIL: STS did not issue credentials (error below)\n",
                )?;
                return Err(e);
            }
        };
    emit(
        out,
        &format!(
            "ok (session {name}, key {}, expires {})\n",
            creds.access_key_id,
            creds.expiration_rfc3339()
        ),
    )?;

    let own_prefix = format!("{}/", minted.wallet);
    if other_prefix == own_prefix {
        return Err(Error::InvalidInput(format!(
            "--other-prefix {other_prefix} is this session's own prefix; name someone else's"
        )));
    }
    let s3 = isolation::s3_client(&creds, &target.region, s3_endpoint.as_deref());
    step(
        out,
        &format!("3/4 list s3://{bucket}/{own_prefix} (own prefix, must succeed)"),
    )?;
    let own = isolation::list_prefix(&s3, bucket, &own_prefix).await;
    emit(out, &format!("{}\n", own.describe()))?;
    step(
        out,
        &format!("4/4 list s3://{bucket}/{other_prefix} (another prefix, must be denied)"),
    )?;
    let other = isolation::list_prefix(&s3, bucket, other_prefix).await;
    emit(out, &format!("{}\n", other.describe()))?;

    let verdict = isolation::verdict(&own, &other, bucket);
    let text = verdict.text(other_prefix);
    emit(out, &format!("{text}\n"))?;
    if verdict.passed() {
        Ok(())
    } else {
        let why = text.strip_prefix("FAIL: ").unwrap_or(&text).to_owned();
        Err(Error::IsolationFailed(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context that allows plain http anywhere: these tests are about which broker is chosen.
    fn ctx(dir: &Path, broker: Option<&str>) -> Context {
        Context {
            profile_name: "default".into(),
            config_dir: Some(dir.to_path_buf()),
            explicit_broker: broker.map(str::to_owned),
            http_policy: HttpPolicy::AllowInsecure,
        }
    }

    fn saved(url: &str) -> SavedSession {
        SavedSession {
            broker_url: url.into(),
            session_token: config::SecretToken::new("t".into()),
            expires_at: "e".into(),
            omni_account: "o".into(),
            wallet: None,
            kind: ActorKind::Master,
            label: None,
        }
    }

    #[test]
    fn session_is_only_sent_to_its_broker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = saved("http://127.0.0.1:8091");
        let c = ctx(dir.path(), Some("http://evil.example")).broker_for_session(&s);
        assert!(matches!(c, Err(Error::SessionForOtherBroker { .. })));
        let c = ctx(dir.path(), Some("http://127.0.0.1:8091"))
            .broker_for_session(&s)
            .expect("same");
        assert_eq!(c.base_url(), "http://127.0.0.1:8091");
        let c = ctx(dir.path(), None).broker_for_session(&s).expect("saved");
        assert_eq!(c.base_url(), "http://127.0.0.1:8091");
    }

    #[test]
    fn login_reuses_the_profile_broker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = ctx(dir.path(), None);
        let p = c.profile().expect("profile");
        assert_eq!(
            c.broker_for_login(&p).expect("client").base_url(),
            DEFAULT_BROKER_URL
        );
        p.save_session(&saved("http://10.0.0.1:9000"))
            .expect("save");
        assert_eq!(
            c.broker_for_login(&p).expect("client").base_url(),
            "http://10.0.0.1:9000"
        );
        let c2 = ctx(dir.path(), Some("http://b:1"));
        assert_eq!(
            c2.broker_for_login(&p).expect("client").base_url(),
            "http://b:1"
        );
    }

    #[test]
    fn every_broker_client_of_a_context_checks_the_transport() {
        let dir = tempfile::tempdir().expect("tempdir");
        let strict = |broker: Option<&str>| Context {
            http_policy: HttpPolicy::LoopbackOnly,
            ..ctx(dir.path(), broker)
        };
        // A saved session of a plain-http broker off loopback is not used without the flag ...
        let s = saved("http://10.0.0.1:9000");
        let e = strict(None).broker_for_session(&s).err();
        assert!(matches!(e, Some(Error::InsecureBrokerUrl { .. })), "{e:?}");
        ctx(dir.path(), None)
            .broker_for_session(&s)
            .expect("allowed with --insecure-http");
        // ... nor is such a broker signed in to.
        let c = strict(Some("http://10.0.0.1:9000"));
        let p = c.profile().expect("profile");
        let e = c.broker_for_login(&p).err();
        assert!(matches!(e, Some(Error::InsecureBrokerUrl { .. })), "{e:?}");
        strict(Some("https://10.0.0.1:9000"))
            .broker_for_login(&p)
            .expect("https");
        strict(None)
            .broker_for_login(&p)
            .expect("the default broker is loopback");
    }

    #[tokio::test]
    async fn token_without_session_says_log_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut out = Vec::new();
        let e = token(
            &ctx(dir.path(), None),
            MintRequest::default(),
            false,
            &mut out,
        )
        .await
        .expect_err("no session");
        assert!(
            e.to_string().contains("agentkeys login wallet --key-file"),
            "{e}"
        );
        assert!(out.is_empty());
    }
}
