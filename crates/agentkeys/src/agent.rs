//! `agentkeys agent …`: the agent's side of pairing (device key, pairing, agent login).

use clap::Subcommand;
use std::io::Write;
use std::path::PathBuf;

use crate::client::{BrokerClient, sanitize};
use crate::config::{PairedBroker, Profile, SavedSession};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::output::{emit, key_flag, profile_flag, to_json};
use crate::pairing::{self, DeviceProver};
use crate::poll;
use crate::{fsutil, keyfile};
use agentkeys_types::OmniAccount;
use agentkeys_types::api::{
    AgentInfo, PairingPollResponse, PairingStartResponse, PairingStatus, SessionIssued,
};
use agentkeys_types::pairing::valid_label;

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Create this agent's device key (secp256k1, mode 0600) and print its address. The key
    /// proves the device's identity when pairing; it never leaves the machine.
    Init {
        /// Where to write the key (default: device.key in the profile's directory).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,

        /// Replace an existing key. The old key is lost (the agent paired with it keeps working
        /// until its session ends, but cannot pair again).
        #[arg(long)]
        force: bool,
    },

    /// Pair this device with a master: open a pairing request, show a code for the master to
    /// approve, and wait for the approval. The agent session is saved in the profile.
    ///
    /// The code is printed on stderr; the master runs `agentkeys agents approve CODE --label
    /// NAME`. On approval, the agent's omni and label are printed on stdout.
    Pair {
        /// The device key (default: device.key in the profile's directory, from `agentkeys
        /// agent init`).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,

        /// Give up after this many seconds without approval.
        #[arg(long, value_name = "SECONDS", default_value_t = 600,
              value_parser = clap::value_parser!(u64).range(1..=MAX_PAIR_TIMEOUT))]
        timeout: u64,

        /// Print the result as JSON (never includes the session token).
        #[arg(long)]
        json: bool,
    },

    /// Get a new session for an agent that is already paired (its session expired or was
    /// logged out), proving the device key. The agent keeps its identity and its prefix.
    Login {
        /// The device key the agent was paired with (default: device.key in the profile's
        /// directory).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,

        /// The agent's omni (default: the agent of the profile's saved session).
        #[arg(long, value_name = "AGENT_OMNI")]
        agent: Option<String>,

        /// Print the result as JSON (never includes the session token).
        #[arg(long)]
        json: bool,
    },
}

/// Most pairing requests live 10 minutes at the broker; `--timeout` cannot usefully exceed an
/// hour.
const MAX_PAIR_TIMEOUT: u64 = 3600;

/// Runs `agentkeys agent …`.
pub(crate) async fn run(ctx: &Context, command: AgentCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        AgentCommand::Init { key_file, force } => agent_init(ctx, key_file, force, out),
        AgentCommand::Pair {
            key_file,
            timeout,
            json,
        } => agent_pair(ctx, key_file, timeout, json, out).await,
        AgentCommand::Login {
            key_file,
            agent,
            json,
        } => agent_login(ctx, key_file, agent, json, out).await,
    }
}

pub(crate) fn agent_init(
    ctx: &Context,
    key_file: Option<PathBuf>,
    force: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let profile = ctx.profile()?;
    let path = match key_file {
        Some(p) => p,
        None => {
            fsutil::create_private_dir(profile.dir())?;
            profile.device_key_path()
        }
    };
    let signer = keyfile::generate(&path, force)?;
    emit(out, &format!("{}\n", keyfile::address_of(&signer)))?;
    eprintln!(
        "Wrote a new device key to {} (mode 0600); it never leaves this machine. Next: \
         `agentkeys {}agent pair{}`.",
        path.display(),
        profile_flag(&profile),
        key_flag(&profile, &path)
    );
    Ok(())
}

pub(crate) async fn agent_pair(
    ctx: &Context,
    key_file: Option<PathBuf>,
    timeout: u64,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let profile = ctx.profile()?;
    let key = key_file.unwrap_or_else(|| profile.device_key_path());
    if !key.exists() {
        return Err(Error::InvalidInput(format!(
            "there is no device key at {}; create one with `agentkeys {}agent init{}`",
            key.display(),
            profile_flag(&profile),
            key_flag(&profile, &key)
        )));
    }
    let signer = keyfile::read(&key)?;
    // An agent's old session may be replaced (re-pairing); a master's may not.
    let replaced = profile.load_session()?;
    if let Some(saved) = &replaced
        && !saved.is_agent()
    {
        return Err(Error::InvalidInput(format!(
            "profile `{}` holds a master's session (omni {}); pairing would replace it. Pair the \
             agent in a profile of its own (--profile NAME or AGENTKEYS_PROFILE), or run \
             `agentkeys {}logout` first",
            profile.name(),
            saved.omni_account,
            profile_flag(&profile)
        )));
    }
    let client = ctx.broker_for_login(&profile)?;
    // Pairing (again) is how a profile moves to another broker: whatever it was paired with
    // before, the issuer of this broker is pinned once the pairing completes.
    let issuer = client.issuer().await?;
    let mut prover = DeviceProver::new(signer, &issuer);
    let started = client
        .pairing_start(&prover.start_request(pairing::now_ms())?)
        .await?;
    let code = check_started(&client, &started)?;

    eprintln!(
        "Pairing code: {code}\n\
         On the master's side, run:  agentkeys agents approve {code} --label NAME\n\
         (device {}, broker {}; the code expires at {}). Waiting up to {timeout} s for the \
         approval; Ctrl-C cancels.",
        prover.address(),
        client.base_url(),
        sanitize(&started.expires_at, 64)
    );

    let approved = poll_until_approved(&client, &mut prover, &started, &code, timeout).await?;
    let (issued, agent) = check_approved(&client, &prover, approved)?;
    let saved = SavedSession::from_pairing(client.base_url(), issued, &agent.label);
    profile.save_session(&saved)?;
    let previous = profile.load_paired().ok().flatten();
    profile.save_paired(&PairedBroker {
        issuer: issuer.clone(),
    })?;
    if let Some(old) = previous.filter(|p| p.issuer != issuer) {
        eprintln!(
            "agentkeys: note: profile {} was paired with the broker {}; it is now paired with {}",
            profile.name(),
            old.issuer,
            issuer
        );
    }
    if let Some(old) = replaced {
        eprintln!(
            "agentkeys: note: replaced profile {}'s saved session of agent {} ({})",
            profile.name(),
            old.label.as_deref().unwrap_or("?"),
            old.omni_account
        );
    }

    if json {
        emit(
            out,
            &to_json(&serde_json::json!({
                "agent_omni": agent.agent_omni,
                "label": agent.label,
                "device_address": agent.device_address,
                "status": agent.status,
                "expires_at": saved.expires_at,
                "broker_url": saved.broker_url,
                "profile": profile.name(),
            }))?,
        )
    } else {
        emit(
            out,
            &format!(
                "Paired with {} as agent {} (profile {}).\nagent_omni:   {}\nlabel:        {}\n\
                 device:       {}\nexpires_at:   {}\n",
                saved.broker_url,
                agent.label,
                profile.name(),
                agent.agent_omni,
                agent.label,
                agent.device_address,
                sanitize(&saved.expires_at, 64)
            ),
        )
    }
}

/// A new session for the paired agent, by device proof; saved in the profile.
pub(crate) async fn agent_login(
    ctx: &Context,
    key_file: Option<PathBuf>,
    agent: Option<String>,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let profile = ctx.profile()?;
    let key = key_file.unwrap_or_else(|| profile.device_key_path());
    let signer = keyfile::read(&key)?;
    let saved = profile.load_session()?;
    if let Some(s) = &saved
        && !s.is_agent()
    {
        return Err(Error::InvalidInput(format!(
            "profile `{}` holds a master's session; agent login is for an agent's own profile",
            profile.name()
        )));
    }
    let omni = match (agent, &saved) {
        (Some(a), _) => a.to_ascii_lowercase(),
        (None, Some(s)) => s.omni_account.clone(),
        (None, None) => {
            return Err(Error::InvalidInput(
                "this profile has no saved agent session; name the agent with --agent AGENT_OMNI"
                    .into(),
            ));
        }
    };
    if omni.parse::<OmniAccount>().is_err() {
        return Err(Error::InvalidInput(
            "--agent is the agent's omni: 64 hex digits".into(),
        ));
    }
    let label = saved
        .as_ref()
        .and_then(|s| s.label.clone())
        .unwrap_or_default();
    let saved = device_login(ctx, &profile, signer, &omni, &label).await?;
    if json {
        emit(
            out,
            &to_json(&serde_json::json!({
                "agent_omni": saved.omni_account,
                "expires_at": saved.expires_at,
                "broker_url": saved.broker_url,
                "profile": profile.name(),
            }))?,
        )
    } else {
        emit(
            out,
            &format!(
                "Signed in as agent {} (profile {}); session expires at {}.\n",
                saved.omni_account,
                profile.name(),
                sanitize(&saved.expires_at, 64)
            ),
        )
    }
}

/// A new session for the agent `omni` by proving `signer` (its device key), saved in the profile.
async fn device_login(
    ctx: &Context,
    profile: &Profile,
    signer: crate::keyfile::WalletKey,
    omni: &str,
    label: &str,
) -> Result<SavedSession> {
    let client = ctx.broker_for_login(profile)?;
    let issuer = client.issuer().await?;
    let paired = profile.load_paired()?;
    check_paired_issuer(profile, client.base_url(), paired.as_ref(), &issuer)?;
    let mut prover = DeviceProver::new(signer, &issuer);
    let issued = client
        .agent_session(&prover.session_request(omni, pairing::now_ms())?)
        .await?;
    if issued.omni_account != omni {
        return Err(Error::BrokerProtocol {
            url: client.base_url().to_owned(),
            detail: "the new session is not for this agent".into(),
        });
    }
    let saved = SavedSession::from_pairing(client.base_url(), issued, label);
    profile.save_session(&saved)?;
    if paired.is_none() {
        // A profile paired before issuers were pinned: pin the one that just accepted the key.
        profile.save_paired(&PairedBroker { issuer })?;
    }
    Ok(saved)
}

/// Renews the saved agent session of `profile` by device proof (its `device.key`), for
/// long-running commands whose session expired or was ended while they ran. `None` when the
/// profile is not an agent's or has no device key: only signing in again helps then.
pub(crate) async fn renew_agent_session(
    ctx: &Context,
    profile: &Profile,
) -> Result<Option<SavedSession>> {
    let Some(saved) = profile.load_session()? else {
        return Ok(None);
    };
    let key = profile.device_key_path();
    if !saved.is_agent() || !key.exists() {
        return Ok(None);
    }
    let signer = keyfile::read(&key)?;
    let label = saved.label.clone().unwrap_or_default();
    device_login(ctx, profile, signer, &saved.omni_account, &label)
        .await
        .map(Some)
}

/// A device proof names the broker's issuer; the device signs one only for the issuer its
/// profile was paired with, so a server with another issuer (another broker, or one the URL now
/// leads to) gets no proof it could use. A profile paired before pins existed has none.
fn check_paired_issuer(
    profile: &Profile,
    url: &str,
    paired: Option<&PairedBroker>,
    issuer: &str,
) -> Result<()> {
    match paired {
        Some(p) if p.issuer != issuer => Err(Error::IssuerChanged {
            profile: profile.name().to_owned(),
            url: url.to_owned(),
            pinned: p.issuer.clone(),
            found: issuer.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// The pairing request as the broker opened it: a well-formed code and id.
fn check_started(client: &BrokerClient, started: &PairingStartResponse) -> Result<String> {
    let protocol = |detail: &str| Error::BrokerProtocol {
        url: client.base_url().to_owned(),
        detail: detail.to_owned(),
    };
    if !pairing::valid_pairing_id(&started.pairing_id) {
        return Err(protocol("the pairing id is not a short token"));
    }
    pairing::shown_code(&started.code).ok_or_else(|| protocol("the pairing code is malformed"))
}

async fn poll_until_approved(
    client: &BrokerClient,
    prover: &mut DeviceProver,
    started: &PairingStartResponse,
    code: &str,
    timeout: u64,
) -> Result<PairingPollResponse> {
    poll::poll_until(
        started.poll_interval_seconds,
        timeout,
        async || {
            let req = prover.poll_request(&started.pairing_id, pairing::now_ms())?;
            match client.pairing_poll(&req).await {
                Ok(r) if r.status == PairingStatus::Pending => Ok(None),
                Ok(r) => Ok(Some(r)),
                Err(Error::Broker { status: 404, .. }) => Err(Error::Pairing(format!(
                    "the broker no longer knows the pairing request of code {code} (it expired, \
                     or the agent was suspended or removed before this device collected its \
                     session); run `agentkeys agent pair` again for a new code"
                ))),
                Err(Error::Broker { status: 409, .. }) => Err(Error::Pairing(
                    "the session of this pairing was already delivered, to an earlier poll whose \
                     answer was lost; run `agentkeys agent pair` again and have the master approve \
                     the new code under a new label"
                        .to_owned(),
                )),
                Err(e) => Err(e),
            }
        },
        || {
            Error::Pairing(format!(
                "code {code} was not approved within {timeout} s; run `agentkeys agent pair` \
                 again for a new code (the master approves it with `agentkeys agents approve \
                 CODE --label NAME`)"
            ))
        },
    )
    .await
}

/// The approved answer must carry a session for an agent of this very device.
fn check_approved(
    client: &BrokerClient,
    prover: &DeviceProver,
    r: PairingPollResponse,
) -> Result<(SessionIssued, AgentInfo)> {
    let protocol = |detail: String| Error::BrokerProtocol {
        url: client.base_url().to_owned(),
        detail,
    };
    let (Some(issued), Some(agent)) = (r.session, r.agent) else {
        return Err(protocol(
            "the pairing was approved but the answer has no session".to_owned(),
        ));
    };
    if issued.omni_account != agent.agent_omni || agent.agent_omni.parse::<OmniAccount>().is_err() {
        return Err(protocol(
            "the session is not for the approved agent".to_owned(),
        ));
    }
    if !agent
        .device_address
        .eq_ignore_ascii_case(prover.address().as_str())
    {
        return Err(protocol(format!(
            "the approved agent has device {}, not this device's {}",
            sanitize(&agent.device_address, 64),
            prover.address()
        )));
    }
    if !valid_label(&agent.label) {
        return Err(protocol("the agent's label is malformed".to_owned()));
    }
    Ok((issued, agent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_proofs_only_for_the_paired_issuer() {
        let p = Profile::new(std::path::Path::new("/c"), "bot").expect("profile");
        let a = PairedBroker {
            issuer: "https://a.example".into(),
        };
        check_paired_issuer(&p, "https://a.example", Some(&a), "https://a.example").expect("same");
        check_paired_issuer(&p, "https://b.example", None, "https://b.example")
            .expect("nothing pinned yet");
        let e = check_paired_issuer(&p, "https://b.example", Some(&a), "https://b.example")
            .expect_err("another issuer");
        assert!(matches!(e, Error::IssuerChanged { .. }), "{e:?}");
        let s = e.to_string();
        assert!(
            s.contains("https://a.example")
                && s.contains("https://b.example")
                && s.contains("agentkeys --profile bot --broker-url https://b.example agent pair"),
            "{s}"
        );
    }
}
