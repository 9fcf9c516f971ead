//! `agentkeys agents …`: the master's side of pairing (approve) and its agents (list, suspend,
//! resume, remove).

use clap::{Args, Subcommand};
use std::io::Write;

use crate::client::{AgentAction, sanitize};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::output::{emit, enum_name, table, to_json};
use crate::pairing::{self, AgentRef};
use agentkeys_types::OmniAccount;
use agentkeys_types::api::{AgentStatus, PairingApproveRequest};
use agentkeys_types::pairing::valid_label;

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Approve the pairing code an agent shows, naming the new agent. The label is part of the
    /// agent's identity (its omni and S3 prefix) and is never reused.
    Approve {
        /// The code shown by `agentkeys agent pair`, e.g. ABCD-EFGH (case and dash optional).
        #[arg(value_name = "CODE")]
        code: String,

        /// The agent's label: 1-32 characters of a-z, 0-9 and '-', unique among your agents.
        #[arg(long, value_name = "NAME")]
        label: String,

        /// Print the new agent as JSON.
        #[arg(long)]
        json: bool,
    },

    /// List your agents, including suspended and removed ones.
    List {
        /// Print the broker's JSON answer.
        #[arg(long)]
        json: bool,
    },

    /// Suspend an agent: its next mint is refused until it is resumed.
    Suspend {
        #[command(flatten)]
        target: AgentTarget,
    },

    /// Resume a suspended agent.
    Resume {
        #[command(flatten)]
        target: AgentTarget,
    },

    /// Remove an agent for good: its sessions end at once and its label cannot be reused.
    Remove {
        #[command(flatten)]
        target: AgentTarget,
    },
}

#[derive(Debug, Clone, Args)]
pub struct AgentTarget {
    /// The agent: its omni (64 hex digits) or its label.
    #[arg(value_name = "AGENT_OMNI_OR_LABEL")]
    pub agent: String,

    /// Print the agent's new state as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `agentkeys agents …`.
pub(crate) async fn run(ctx: &Context, command: AgentsCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        AgentsCommand::Approve { code, label, json } => {
            agents_approve(ctx, &code, &label, json, out).await
        }
        AgentsCommand::List { json } => agents_list(ctx, json, out).await,
        AgentsCommand::Suspend { target } => {
            agents_set(ctx, &target, AgentAction::Suspend, out).await
        }
        AgentsCommand::Resume { target } => {
            agents_set(ctx, &target, AgentAction::Resume, out).await
        }
        AgentsCommand::Remove { target } => {
            agents_set(ctx, &target, AgentAction::Remove, out).await
        }
    }
}

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
}
