//! Access requests. An agent asks its master for a grant with `agentkeys grants request` and
//! waits for the decision (or checks later with `agentkeys requests show ID`); the master lists,
//! approves or denies with `agentkeys requests …`. A master with a wallet approves with a
//! signature by its key file over a message naming the agent, scope, uses and expiry.

use std::io::Write;
use std::path::PathBuf;

use agentkeys_types::api::{
    AccessApproval, AccessApproveRequest, AccessRequestCreate, AccessRequestInfo,
    AccessRequestStatus, ChallengePurpose,
};
use clap::{Args, Subcommand};

use crate::aws;
use crate::client::{BrokerClient, sanitize};
use crate::config::SavedSession;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::grant_terms::{created_text, parse_duration};
use crate::identities::{StepUpArgs, step_up};
use crate::output::{emit, table, to_json};
use crate::poll::poll_until;

/// How often a waiting command asks whether its request was decided.
const POLL_SECONDS: u64 = 2;

/// `agentkeys grants request`: what the agent asks for.
#[derive(Debug, Clone, Args)]
pub struct RequestArgs {
    /// A path under your master's prefix, e.g. inbox/ (letters, digits, `._-` and `/`).
    #[arg(long, value_name = "PATH")]
    pub scope: String,

    /// Mints the grant would allow (default: unlimited until it expires).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub uses: Option<u32>,

    /// How long the grant would last once approved: a number with s, m, h, d or w (e.g. 1h).
    #[arg(long, value_name = "DURATION")]
    pub ttl: String,

    /// Why you need it; your master sees it (one line, the broker limits its size).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,

    /// Print the request and return at once instead of waiting for the decision; check it
    /// later with `agentkeys requests show ID --wait`.
    #[arg(long)]
    pub no_wait: bool,

    /// Print the broker's JSON answer (the final one, when waiting).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// The access requests of your agents waiting for you (a master), or your own (an agent).
    List {
        /// Also decided and expired requests.
        #[arg(long)]
        all: bool,
        /// Print the broker's JSON answer.
        #[arg(long)]
        json: bool,
    },

    /// One request: its terms, its status and, once approved, its grant.
    Show {
        #[arg(value_name = "ID")]
        id: String,
        /// Wait until it is decided or expires.
        #[arg(long)]
        wait: bool,
        /// Print the broker's JSON answer.
        #[arg(long)]
        json: bool,
    },

    /// Approve a request: it becomes a grant to the agent. A master with a wallet signs the
    /// approval with its key file (--key-file); one without (email, OIDC) approves with its
    /// session.
    Approve {
        #[arg(value_name = "ID")]
        id: String,
        /// The signed-in wallet's key file (masters with a wallet).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// EIP-155 chain id placed in the message to sign.
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u64).range(1..))]
        chain_id: u64,
        /// Print the broker's JSON answer.
        #[arg(long)]
        json: bool,
    },

    /// Deny a request: the agent's waiting command says so.
    Deny {
        #[arg(value_name = "ID")]
        id: String,
    },
}

/// A request id as the broker makes them (32 hex); it goes into a URL path.
fn check_id(id: &str) -> Result<&str> {
    let id = id.trim();
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id)
    } else {
        Err(Error::InvalidInput(format!(
            "{:?} is not an access request id (32 hex digits); see `agentkeys requests list`",
            sanitize(id, 80)
        )))
    }
}

fn uses_text(max_uses: Option<u32>) -> String {
    match max_uses {
        Some(1) => "1 use".to_owned(),
        Some(n) => format!("{n} uses"),
        None => "unlimited uses".to_owned(),
    }
}

fn ttl_text(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The terms of a request as a master reads them before deciding.
pub fn terms_text(r: &AccessRequestInfo) -> String {
    let label = if r.agent_label.is_empty() {
        r.agent.clone()
    } else {
        r.agent_label.clone()
    };
    format!(
        "request:    {id} ({status})\n\
         agent:      {label} ({agent}, device {device})\n\
         scope:      {scope}{tag} for {ttl}, {uses}\n\
         reason:     {reason}\n\
         worst case: {why} ({secs} s)\n",
        id = sanitize(&r.request_id, 64),
        status = r.status.as_str(),
        label = sanitize(&label, 64),
        agent = sanitize(&r.agent, 64),
        device = sanitize(&r.device_address, 64),
        scope = sanitize(&r.scope, 200),
        tag = r
            .scope_tag
            .as_deref()
            .map(|t| format!(" (tag {})", sanitize(t, 250)))
            .unwrap_or_default(),
        ttl = ttl_text(r.ttl_seconds),
        uses = uses_text(r.max_uses),
        reason = sanitize(&r.reason, 4096),
        why = sanitize(&r.worst_case_exposure.explanation, 500),
        secs = r.worst_case_exposure.seconds,
    )
}

/// A decided request's outcome: the grant text, or the error that it gave none.
fn outcome(r: &AccessRequestInfo, json: bool, out: &mut dyn Write) -> Result<()> {
    match (r.status, &r.grant) {
        (AccessRequestStatus::Approved, Some(_)) if json => emit(out, &to_json(r)?),
        (AccessRequestStatus::Approved, Some(g)) => emit(out, &created_text(g, &r.agent_label)),
        (AccessRequestStatus::Pending, _) => {
            if json {
                emit(out, &to_json(r)?)
            } else {
                emit(out, &terms_text(r))
            }
        }
        (AccessRequestStatus::Denied, _) => Err(Error::AccessRequest(format!(
            "your master denied request {}",
            sanitize(&r.request_id, 64)
        ))),
        (AccessRequestStatus::Expired, _) => Err(Error::AccessRequest(format!(
            "request {} expired at {} without a decision; ask again",
            sanitize(&r.request_id, 64),
            sanitize(&r.expires_at, 64)
        ))),
        (AccessRequestStatus::Approved, None) => Err(Error::AccessRequest(
            "the request was approved but its grant is gone".into(),
        )),
    }
}

/// Polls request `id` until it is decided or expired (the broker expires it), then prints it.
async fn wait(
    client: &BrokerClient,
    saved: &SavedSession,
    first: AccessRequestInfo,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    if first.status != AccessRequestStatus::Pending {
        return outcome(&first, json, out);
    }
    let id = first.request_id.clone();
    // A little past the request's own expiry, after which the broker says `expired`.
    let left = aws::parse_rfc3339(&first.expires_at)
        .map(|t| (t - aws::now_unix()).max(0) as u64)
        .unwrap_or(900);
    let decided = poll_until(
        POLL_SECONDS,
        left + 2 * POLL_SECONDS + 1,
        async || {
            let r = client
                .access_request_show(&saved.session_token, &id)
                .await?;
            Ok((r.status != AccessRequestStatus::Pending).then_some(r))
        },
        || Error::AccessRequest(format!("no decision on request {id} in time")),
    )
    .await?;
    outcome(&decided, json, out)
}

/// Runs `agentkeys grants request`.
pub(crate) async fn request(ctx: &Context, args: RequestArgs, out: &mut dyn Write) -> Result<()> {
    let ttl_seconds = parse_duration(&args.ttl).map_err(|_| {
        Error::InvalidInput(format!(
            "invalid --ttl {:?}: give a number with s, m, h, d or w, e.g. 1h (at most a year)",
            sanitize(&args.ttl, 40)
        ))
    })?;
    let (_, saved, client) = ctx.session()?;
    if !saved.is_agent() {
        return Err(Error::InvalidInput(
            "only an agent asks for access; a master grants it with `agentkeys grants create`"
                .into(),
        ));
    }
    let req = AccessRequestCreate {
        scope: args.scope.trim().to_owned(),
        max_uses: args.uses,
        ttl_seconds,
        reason: args.reason.trim().to_owned(),
    };
    let asked = client.access_request(&saved.session_token, &req).await?;
    if args.no_wait {
        return if args.json {
            emit(out, &to_json(&asked)?)
        } else {
            emit(
                out,
                &format!(
                    "Asked for {} ({}, {}): request {}.\nCheck it with `agentkeys requests show {} --wait`.\n",
                    sanitize(&asked.scope, 200),
                    uses_text(asked.max_uses),
                    ttl_text(asked.ttl_seconds),
                    asked.request_id,
                    asked.request_id
                ),
            )
        };
    }
    // The id on a line of its own, first, so a caller (or a person) can resume with it.
    eprintln!("Access request: {}", asked.request_id);
    eprintln!(
        "agentkeys: asked your master for {} ({}, {}); waiting for the decision until {} \
         (Ctrl-C stops waiting; `agentkeys requests show {} --wait` resumes)",
        sanitize(&asked.scope, 200),
        uses_text(asked.max_uses),
        ttl_text(asked.ttl_seconds),
        sanitize(&asked.expires_at, 64),
        asked.request_id,
    );
    wait(&client, &saved, asked, args.json, out).await
}

/// Runs `agentkeys requests …`.
pub(crate) async fn run(
    ctx: &Context,
    command: RequestsCommand,
    out: &mut dyn Write,
) -> Result<()> {
    match command {
        RequestsCommand::List { all, json } => list(ctx, all, json, out).await,
        RequestsCommand::Show { id, wait: w, json } => {
            let id = check_id(&id)?;
            let (_, saved, client) = ctx.session()?;
            let r = client.access_request_show(&saved.session_token, id).await?;
            if w {
                wait(&client, &saved, r, json, out).await
            } else if json {
                emit(out, &to_json(&r)?)
            } else {
                emit(out, &terms_text(&r))
            }
        }
        RequestsCommand::Approve {
            id,
            key_file,
            chain_id,
            json,
        } => approve(ctx, check_id(&id)?, key_file, chain_id, json, out).await,
        RequestsCommand::Deny { id } => {
            let id = check_id(&id)?;
            let (_, saved, client) = ctx.session()?;
            let r = client.access_deny(&saved.session_token, id).await?;
            emit(
                out,
                &format!(
                    "Denied request {} of agent {} for {}.\n",
                    r.request_id,
                    sanitize(&r.agent_label, 64),
                    sanitize(&r.scope, 200)
                ),
            )
        }
    }
}

async fn list(ctx: &Context, all: bool, json: bool, out: &mut dyn Write) -> Result<()> {
    let (_, saved, client) = ctx.session()?;
    let list = client.access_requests(&saved.session_token, !all).await?;
    if json {
        return emit(out, &to_json(&list)?);
    }
    if list.requests.is_empty() {
        return emit(
            out,
            if all {
                "No access requests.\n"
            } else {
                "No access requests are waiting.\n"
            },
        );
    }
    let rows: Vec<Vec<String>> = list
        .requests
        .iter()
        .map(|r| {
            vec![
                r.request_id.clone(),
                r.agent_label.clone(),
                r.scope.clone(),
                uses_text(r.max_uses),
                ttl_text(r.ttl_seconds),
                r.status.as_str().to_owned(),
                format!("{} s", r.worst_case_exposure.seconds),
                r.reason.clone(),
            ]
        })
        .collect();
    emit(
        out,
        &table(
            &[
                "REQUEST_ID",
                "AGENT",
                "SCOPE",
                "USES",
                "TTL",
                "STATUS",
                "WORST_CASE",
                "REASON",
            ],
            &rows,
        ),
    )
}

async fn approve(
    ctx: &Context,
    id: &str,
    key_file: Option<PathBuf>,
    chain_id: u64,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let (_, saved, client) = ctx.session()?;
    let r = client.access_request_show(&saved.session_token, id).await?;
    if r.status != AccessRequestStatus::Pending {
        return Err(Error::AccessRequest(format!(
            "request {id} is {}; only a pending request can be approved",
            r.status.as_str()
        )));
    }
    let body = match (saved.wallet.is_some(), key_file) {
        (true, Some(key_file)) => {
            let scope_tag = r.scope_tag.clone().ok_or_else(|| {
                Error::AccessRequest("the broker did not say the request's scope tag".into())
            })?;
            let expires_at = aws::rfc3339(aws::now_unix() + r.ttl_seconds as i64);
            let purpose = ChallengePurpose::ApproveAccess(AccessApproval {
                request_id: r.request_id.clone(),
                agent_label: r.agent_label.clone(),
                agent: r.agent.clone(),
                scope_tag,
                max_uses: r.max_uses,
                expires_at: expires_at.clone(),
            });
            let args = StepUpArgs { key_file, chain_id };
            let proof = step_up(&client, &saved, &args, purpose, Error::AccessRequest).await?;
            AccessApproveRequest {
                wallet_proof: Some(proof),
                expires_at: Some(expires_at),
            }
        }
        (true, None) => {
            return Err(Error::InvalidInput(
                "a master with a wallet approves with a signature: pass --key-file FILE (the \
                 signed-in wallet's key)"
                    .into(),
            ));
        }
        (false, _) => AccessApproveRequest::default(),
    };
    let approved = client
        .access_approve(&saved.session_token, id, &body)
        .await?;
    if json {
        return emit(out, &to_json(&approved)?);
    }
    match &approved.grant {
        Some(g) => emit(out, &created_text(g, &approved.agent_label)),
        None => emit(out, &terms_text(&approved)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkeys_types::api::WorstCaseExposure;
    use clap::Parser;

    use crate::cli::{Cli, Command};
    use crate::grants::GrantsCommand;

    fn request() -> AccessRequestInfo {
        AccessRequestInfo {
            request_id: "0123456789abcdef0123456789abcdef".into(),
            agent: "a".repeat(64),
            agent_label: "bot".into(),
            device_address: "0xdev".into(),
            scope: "inbox/".into(),
            scope_tag: Some("0xabc/inbox".into()),
            max_uses: Some(5),
            ttl_seconds: 3600,
            reason: "read\u{1b}[31m invoices".into(),
            status: AccessRequestStatus::Pending,
            created_at: "2030-01-01T00:00:00Z".into(),
            expires_at: "2030-01-01T00:15:00Z".into(),
            decided_at: None,
            grant: None,
            worst_case_exposure: WorstCaseExposure {
                seconds: 3900,
                explanation: "a JWT stays valid for up to 300 s".into(),
            },
        }
    }

    #[test]
    fn terms_name_agent_scope_uses_ttl_reason_and_exposure_safely() {
        let t = terms_text(&request());
        for want in [
            "bot (aaaa",
            "device 0xdev",
            "inbox/ (tag 0xabc/inbox) for 1h, 5 uses",
            "worst case: a JWT stays valid for up to 300 s (3900 s)",
        ] {
            assert!(t.contains(want), "{want}: {t}");
        }
        assert!(
            !t.contains('\u{1b}'),
            "the agent's reason cannot drive the terminal"
        );
        assert_eq!(ttl_text(90), "90s");
        assert_eq!(ttl_text(7200), "2h");
        assert_eq!(ttl_text(172_800), "2d");
        assert_eq!(uses_text(None), "unlimited uses");
    }

    #[test]
    fn ids_are_checked_before_any_request() {
        assert!(check_id("0123456789abcdef0123456789abcdef").is_ok());
        for bad in ["", "../x", "0123", &"g".repeat(32)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commands_parse() {
        let cli = Cli::try_parse_from([
            "agentkeys",
            "--profile",
            "bot",
            "grants",
            "request",
            "--scope",
            "inbox/",
            "--uses",
            "5",
            "--ttl",
            "1h",
            "--reason",
            "read today's invoices",
        ])
        .expect("parse");
        let Command::Grants(GrantsCommand::Request(a)) = cli.command else {
            panic!("not grants request")
        };
        assert_eq!(
            (a.scope.as_str(), a.uses, a.ttl.as_str()),
            ("inbox/", Some(5), "1h")
        );
        assert!(!a.no_wait);
        // --reason and --ttl are required; --uses is at least 1.
        assert!(
            Cli::try_parse_from([
                "agentkeys",
                "grants",
                "request",
                "--scope",
                "x",
                "--ttl",
                "1h"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "agentkeys",
                "grants",
                "request",
                "--scope",
                "x",
                "--ttl",
                "1h",
                "--reason",
                "r",
                "--uses",
                "0"
            ])
            .is_err()
        );
        for args in [
            &["requests", "list", "--all", "--json"][..],
            &["requests", "show", "ID", "--wait"],
            &["requests", "approve", "ID", "--key-file", "k"],
            &["requests", "deny", "ID"],
        ] {
            let mut v = vec!["agentkeys"];
            v.extend_from_slice(args);
            assert!(Cli::try_parse_from(&v).is_ok(), "{v:?}");
        }
    }
}
