//! Agent pairing from both ends (`agentkeys agent …` on the agent's machine, `agentkeys agents
//! …` as the master) and session management (`agentkeys sessions …`, `logout --all`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentkeys_types::OmniAccount;
use agentkeys_types::api::{
    AgentInfo, AgentStatus, PairingApproveRequest, PairingPollResponse, PairingStartResponse,
    PairingStatus, SessionIssued,
};
use agentkeys_types::pairing::valid_label;

use crate::cache::CredentialCache;
use crate::cli::{AgentTarget, SessionsCommand};
use crate::client::{AgentAction, BrokerClient, sanitize};
use crate::commands::{Context, emit, to_json};
use crate::config::{DEFAULT_PROFILE, PairedBroker, Profile, SavedSession};
use crate::error::{Error, Result};
use crate::pairing::{self, AgentRef, DeviceProver};
use crate::{fsutil, keyfile};

/// Shortest and longest wait between polls, whatever the broker suggests.
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// Consecutive failed polls (broker unreachable) tolerated before giving up.
const MAX_POLL_FAILURES: u32 = 3;
/// Said when an agent signs out: it gets a new session with its device key.
pub(crate) const AGENT_SIGNED_OUT_NOTE: &str = "This agent now has no session; `agentkeys agent \
     login --agent <AGENT_OMNI>` gets a new one with its device key.\n";

/// `--profile NAME ` when the profile is not the default one, for commands we suggest.
pub(crate) fn profile_flag(profile: &Profile) -> String {
    if profile.name() == DEFAULT_PROFILE {
        String::new()
    } else {
        format!("--profile {} ", profile.name())
    }
}

/// `--key-file FILE` when the key is not at the profile's default place.
fn key_flag(profile: &Profile, key: &Path) -> String {
    if key == profile.device_key_path() {
        String::new()
    } else {
        format!(" --key-file {}", key.display())
    }
}

/// The JSON name of a serde enum value (`active`, `agent`, …).
fn enum_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Left-aligned columns separated by two spaces; cells are made one safe line each.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let clean: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| sanitize(c, 200)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &clean {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in &clean {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

// ---- agent side ----------------------------------------------------------------------------

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
    let client = ctx.broker_for_login(&profile)?;
    let issuer = client.issuer().await?;
    let paired = profile.load_paired()?;
    check_paired_issuer(&profile, client.base_url(), paired.as_ref(), &issuer)?;
    let mut prover = DeviceProver::new(signer, &issuer);
    let issued = client
        .agent_session(&prover.session_request(&omni, pairing::now_ms())?)
        .await?;
    if issued.omni_account != omni {
        return Err(Error::BrokerProtocol {
            url: client.base_url().to_owned(),
            detail: "the new session is not for this agent".into(),
        });
    }
    let saved = SavedSession::from_pairing(client.base_url(), issued, &label);
    profile.save_session(&saved)?;
    if paired.is_none() {
        // A profile paired before issuers were pinned: pin the one that just accepted the key.
        profile.save_paired(&PairedBroker { issuer })?;
    }
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
    let interval = Duration::from_secs(started.poll_interval_seconds)
        .clamp(MIN_POLL_INTERVAL, MAX_POLL_INTERVAL);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut wait = interval;
    let mut failures = 0u32;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Pairing(format!(
                "code {code} was not approved within {timeout} s; run `agentkeys agent pair` \
                 again for a new code (the master approves it with `agentkeys agents approve \
                 CODE --label NAME`)"
            )));
        }
        tokio::time::sleep(wait.min(deadline - now)).await;
        wait = interval;
        let req = prover.poll_request(&started.pairing_id, pairing::now_ms())?;
        match client.pairing_poll(&req).await {
            Ok(r) if r.status == PairingStatus::Pending => failures = 0,
            Ok(r) => return Ok(r),
            Err(Error::RateLimited { retry_after }) => {
                if let Some(crate::error::RetryAfter::Seconds(n)) = retry_after {
                    wait = Duration::from_secs(n).clamp(interval, MAX_POLL_INTERVAL);
                }
            }
            Err(e @ Error::BrokerUnreachable { .. }) if failures < MAX_POLL_FAILURES => {
                failures += 1;
                eprintln!("agentkeys: note: {e}; polling again");
            }
            Err(Error::Broker { status: 404, .. }) => {
                return Err(Error::Pairing(format!(
                    "the broker no longer knows the pairing request of code {code} (it expired, \
                     or the agent was suspended or removed before this device collected its \
                     session); run `agentkeys agent pair` again for a new code"
                )));
            }
            Err(Error::Broker { status: 409, .. }) => {
                return Err(Error::Pairing(
                    "the session of this pairing was already delivered, to an earlier poll whose \
                     answer was lost; run `agentkeys agent pair` again and have the master approve \
                     the new code under a new label"
                        .to_owned(),
                ));
            }
            Err(e) => return Err(e),
        }
    }
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

// ---- master side ---------------------------------------------------------------------------

/// The approval body: the code in the canonical form the broker compares.
pub(crate) fn approve_request(code: &str, label: &str) -> Result<PairingApproveRequest> {
    let code = pairing::parse_code(code)?;
    if !valid_label(label) {
        return Err(Error::InvalidInput(format!(
            "invalid --label {:?}: use 1-32 characters of a-z, 0-9 and '-' (it becomes part of \
             the agent's identity and S3 prefix)",
            sanitize(label, 40)
        )));
    }
    Ok(PairingApproveRequest {
        code,
        label: label.to_owned(),
    })
}

pub(crate) async fn agents_approve(
    ctx: &Context,
    code: &str,
    label: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let req = approve_request(code, label)?;
    let (_, saved, client) = ctx.session()?;
    let agent = client.pairing_approve(&saved.session_token, &req).await?;
    if json {
        return emit(out, &to_json(&agent)?);
    }
    emit(
        out,
        &format!(
            "Approved: agent {} is paired (device {}).\nagent_omni:   {}\nIts `agentkeys agent pair` \
             picks up the session at its next poll.\n",
            sanitize(&agent.label, 64),
            sanitize(&agent.device_address, 64),
            sanitize(&agent.agent_omni, 64)
        ),
    )
}

pub(crate) async fn agents_list(ctx: &Context, json: bool, out: &mut dyn Write) -> Result<()> {
    let (_, saved, client) = ctx.session()?;
    let list = client.agents(&saved.session_token).await?;
    if json {
        return emit(out, &to_json(&list)?);
    }
    if list.agents.is_empty() {
        return emit(
            out,
            "No agents. To pair one, run `agentkeys agent pair` on the agent's machine, then \
             `agentkeys agents approve CODE --label NAME` here.\n",
        );
    }
    let rows: Vec<Vec<String>> = list
        .agents
        .iter()
        .map(|a| {
            vec![
                a.label.clone(),
                enum_name(&a.status),
                a.agent_omni.clone(),
                a.device_address.clone(),
                a.created_at.clone(),
            ]
        })
        .collect();
    emit(
        out,
        &table(
            &["LABEL", "STATUS", "AGENT_OMNI", "DEVICE", "CREATED"],
            &rows,
        ),
    )
}

pub(crate) async fn agents_set(
    ctx: &Context,
    target: &AgentTarget,
    action: AgentAction,
    out: &mut dyn Write,
) -> Result<()> {
    let wanted = AgentRef::parse(&target.agent)?;
    let (_, saved, client) = ctx.session()?;
    let list = client.agents(&saved.session_token).await?;
    let found = wanted.find(&list.agents).ok_or_else(|| {
        Error::InvalidInput(format!(
            "you have no agent {wanted}; see `agentkeys agents list`"
        ))
    })?;
    let label = sanitize(&found.label, 64);
    if found.status == AgentStatus::Removed {
        return Err(Error::InvalidInput(format!(
            "agent {label} ({}) was removed; removal is final",
            found.agent_omni
        )));
    }
    let omni: OmniAccount = found
        .agent_omni
        .parse()
        .map_err(|e| Error::BrokerProtocol {
            url: client.base_url().to_owned(),
            detail: format!("agent {label} has a malformed omni ({e})"),
        })?;
    let agent = client
        .agent_action(&saved.session_token, &omni, action)
        .await?;
    if target.json {
        return emit(out, &to_json(&agent)?);
    }
    let text = match action {
        AgentAction::Suspend => format!(
            "Suspended agent {label} ({omni}): its next mint is refused until `agentkeys agents \
             resume {label}`.\n"
        ),
        AgentAction::Resume => format!("Resumed agent {label} ({omni}): it can mint again.\n"),
        AgentAction::Remove => format!(
            "Removed agent {label} ({omni}): its sessions have ended and the label {label} cannot \
             be used again.\n"
        ),
    };
    emit(out, &text)
}

// ---- sessions ------------------------------------------------------------------------------

pub(crate) async fn sessions(
    ctx: &Context,
    command: SessionsCommand,
    out: &mut dyn Write,
) -> Result<()> {
    let (profile, saved, client) = ctx.session()?;
    match command {
        SessionsCommand::List { json } => {
            let list = client.sessions(&saved.session_token).await?;
            if json {
                return emit(out, &to_json(&list)?);
            }
            let rows: Vec<Vec<String>> = list
                .sessions
                .iter()
                .map(|s| {
                    vec![
                        s.id.clone(),
                        enum_name(&s.kind),
                        s.created_at.clone(),
                        s.expires_at.clone(),
                        if s.current { "yes" } else { "" }.to_owned(),
                    ]
                })
                .collect();
            emit(
                out,
                &table(&["ID", "KIND", "CREATED", "EXPIRES", "CURRENT"], &rows),
            )
        }
        SessionsCommand::Revoke { id } => {
            pairing::check_session_id(&id)?;
            let list = client.sessions(&saved.session_token).await?;
            let Some(target) = list.sessions.iter().find(|s| s.id == id) else {
                return Err(Error::InvalidInput(format!(
                    "you have no live session with id {id}; see `agentkeys {}sessions list`",
                    profile_flag(&profile)
                )));
            };
            let current = target.current;
            client.revoke_session(&saved.session_token, &id).await?;
            if current {
                forget_session(&profile)?;
                emit(
                    out,
                    &format!(
                        "Revoked session {id}, the one profile {} used; deleted it locally.\n",
                        profile.name()
                    ),
                )
            } else {
                emit(out, &format!("Revoked session {id}.\n"))
            }
        }
    }
}

/// Deletes the profile's saved session and the AWS credentials cached for it.
fn forget_session(profile: &Profile) -> Result<()> {
    CredentialCache::new(profile.dir()).clear()?;
    profile.delete_session().map(drop)
}

/// `agentkeys logout --all`.
pub(crate) async fn logout_all(ctx: &Context, out: &mut dyn Write) -> Result<()> {
    let profile = ctx.profile()?;
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
    let client = ctx.broker_for_session(&saved)?;
    let mut message = match client.logout_all(&saved.session_token).await {
        Ok(()) => format!(
            "Ended every session of {} at {} and deleted profile {}'s.\n",
            saved.omni_account,
            client.base_url(),
            profile.name()
        ),
        Err(Error::SessionRejected { .. }) => format!(
            "The session of profile {} had already ended at the broker, so it cannot end the \
             others; deleted it locally. Sign in again and retry to end the rest.\n",
            profile.name()
        ),
        Err(e) => return Err(e),
    };
    profile.delete_session()?;
    if saved.is_agent() {
        message.push_str(AGENT_SIGNED_OUT_NOTE);
    } else {
        message.push_str(LINKS_STAY_NOTE);
    }
    emit(out, &message)
}

/// Said after `logout --all` of a master: ending sessions does not remove the ways in.
pub(crate) const LINKS_STAY_NOTE: &str = "Linked email and OIDC identities stay linked and can \
     sign in again: see `agentkeys identities list`, and `agentkeys identities unlink` to remove \
     one (that also revokes the sessions it gave).\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_sends_the_canonical_code() {
        for typed in ["abcd-efgh", " ABCD EFGH", "abcdefgh"] {
            let r = approve_request(typed, "bot").expect(typed);
            assert_eq!(r.code, "ABCDEFGH");
            assert_eq!(
                Some(r.code),
                agentkeys_types::pairing::normalize_code(typed)
            );
        }
        let body =
            serde_json::to_value(approve_request("abcd-efgh", "bot-1").expect("ok")).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"code": "ABCDEFGH", "label": "bot-1"})
        );
        assert!(approve_request("nope", "bot").is_err());
        for bad in ["", "Bot", "a_b", &"x".repeat(33)] {
            let e = approve_request("ABCD-EFGH", bad).expect_err(bad);
            assert!(e.to_string().contains("--label"), "{e}");
        }
    }

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

    #[test]
    fn tables_align_and_stay_one_line_per_row() {
        let t = table(
            &["A", "LONG-HEADER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q\nr".into(), "2".into()],
            ],
        );
        assert_eq!(t, "A    LONG-HEADER\nxyz  1\nq r  2\n");
    }
}
