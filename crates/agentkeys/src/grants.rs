//! `agentkeys grants …`: a master gives one of its agents an expiring, narrow part of its own
//! prefix (`inbox/` → `<master prefix>/inbox/*`); the agent uses it with `--grant ID` on
//! `token`, `aws credentials`, `aws credential-process` and `exec`.

use std::io::Write;

use agentkeys_types::api::{AgentStatus, GrantCreateRequest, GrantInfo};
use clap::{ArgGroup, Args, Subcommand};

use crate::aws;
use crate::client::sanitize;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::grant_terms::{created_text, parse_duration};
use crate::output::{emit, table, to_json};
use crate::pairing::AgentRef;

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// Grant one of your agents a path under your own prefix until a time, optionally for a
    /// number of mints. Prints the grant id (the agent passes it with `--grant`), the
    /// `agentkeys_scope` tag its tokens carry and the worst-case exposure after a revocation.
    Create(CreateArgs),

    /// List your grants (a master), or the grants given to you (an agent).
    List {
        /// Print the broker's JSON answer.
        #[arg(long)]
        json: bool,
    },

    /// An agent asks its master for a grant and waits for the decision (prints the grant id to
    /// pass with `--grant`); a denied or expired request is an error.
    Request(crate::requests::RequestArgs),

    /// Revoke a grant: the agent's next mint under it is refused. Credentials minted before
    /// stay valid until they expire (see the worst-case exposure).
    Revoke {
        /// The grant's id, from `agentkeys grants list`.
        #[arg(value_name = "ID")]
        id: String,
    },
}

#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("expiry").required(true).args(["expires_in", "expires_at"])))]
pub struct CreateArgs {
    /// The agent: its omni (64 hex digits) or its label.
    #[arg(long, value_name = "AGENT_OMNI_OR_LABEL")]
    pub agent: String,

    /// A path under your own prefix, e.g. inbox/ (letters, digits, `._-` and `/`).
    #[arg(long, value_name = "PATH")]
    pub scope: String,

    /// How long the grant lasts: a number with s, m, h, d or w (e.g. 90m, 12h, 7d); at most a
    /// year.
    #[arg(long, value_name = "DURATION")]
    pub expires_in: Option<String>,

    /// When the grant ends, RFC 3339 (e.g. 2030-01-31T00:00:00Z); at most a year ahead.
    #[arg(long, value_name = "RFC3339")]
    pub expires_at: Option<String>,

    /// Mints allowed under the grant (default: unlimited until it expires).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_uses: Option<u32>,

    /// Print the broker's JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// The RFC 3339 end of the grant: `--expires-at` checked, or now + `--expires-in`.
pub fn expires_at(expires_in: Option<&str>, expires_at: Option<&str>, now: i64) -> Result<String> {
    match (expires_in, expires_at) {
        (Some(d), None) => {
            let secs = i64::try_from(parse_duration(d)?).unwrap_or(i64::MAX);
            Ok(aws::rfc3339(now.saturating_add(secs)))
        }
        (None, Some(at)) => match aws::parse_rfc3339(at.trim()) {
            Some(t) if t > now => Ok(at.trim().to_owned()),
            Some(_) => Err(Error::InvalidInput(format!(
                "--expires-at {} is not in the future",
                sanitize(at, 40)
            ))),
            None => Err(Error::InvalidInput(format!(
                "invalid --expires-at {:?}: give an RFC 3339 time, e.g. 2030-01-31T00:00:00Z",
                sanitize(at, 40)
            ))),
        },
        _ => Err(Error::InvalidInput(
            "give exactly one of --expires-in and --expires-at".into(),
        )),
    }
}

/// A grant id as the broker makes them (hex); it goes into a URL path.
fn check_grant_id(id: &str) -> Result<()> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "{:?} is not a grant id; see `agentkeys grants list`",
            sanitize(id, 80)
        )))
    }
}

/// `active`, `revoked`, `expired` or `used up`, at `now`.
pub fn status(g: &GrantInfo, now: i64) -> &'static str {
    if g.revoked_at.is_some() {
        "revoked"
    } else if aws::parse_rfc3339(&g.expires_at).is_some_and(|t| now >= t) {
        "expired"
    } else if g.max_uses.is_some_and(|m| g.uses >= m) {
        "used up"
    } else {
        "active"
    }
}

/// `1/3`, or `2/∞` when unlimited.
fn uses(g: &GrantInfo) -> String {
    match g.max_uses {
        Some(m) => format!("{}/{m}", g.uses),
        None => format!("{}/unlimited", g.uses),
    }
}

/// A broker phrase as a sentence of its own: one safe line, capitalised.
fn sentence(s: &str) -> String {
    let s = sanitize(s, 500);
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => s,
    }
}

/// Runs `agentkeys grants …`.
pub(crate) async fn run(ctx: &Context, command: GrantsCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        GrantsCommand::Create(args) => create(ctx, args, out).await,
        GrantsCommand::List { json } => list(ctx, json, out).await,
        GrantsCommand::Revoke { id } => revoke(ctx, &id, out).await,
        GrantsCommand::Request(args) => crate::requests::request(ctx, args, out).await,
    }
}

async fn create(ctx: &Context, args: CreateArgs, out: &mut dyn Write) -> Result<()> {
    let wanted = AgentRef::parse(&args.agent)?;
    let expires_at = expires_at(
        args.expires_in.as_deref(),
        args.expires_at.as_deref(),
        aws::now_unix(),
    )?;
    let (_, saved, client) = ctx.session()?;
    let list = client.agents(&saved.session_token).await?;
    let found = wanted.find(&list.agents).ok_or_else(|| {
        Error::InvalidInput(format!(
            "you have no agent {wanted}; see `agentkeys agents list`"
        ))
    })?;
    let label = found.label.clone();
    if found.status == AgentStatus::Removed {
        return Err(Error::InvalidInput(format!(
            "agent {} was removed; grants are for live agents",
            sanitize(&label, 64)
        )));
    }
    let req = GrantCreateRequest {
        agent: found.agent_omni.clone(),
        scope: args.scope.trim().to_owned(),
        expires_at,
        max_uses: args.max_uses,
    };
    let grant = client.grant_create(&saved.session_token, &req).await?;
    if args.json {
        emit(out, &to_json(&grant)?)
    } else {
        emit(out, &created_text(&grant, &label))
    }
}

async fn list(ctx: &Context, json: bool, out: &mut dyn Write) -> Result<()> {
    let (_, saved, client) = ctx.session()?;
    let list = client.grants(&saved.session_token).await?;
    if json {
        return emit(out, &to_json(&list)?);
    }
    if list.grants.is_empty() {
        return emit(
            out,
            if saved.is_agent() {
                "No grants were given to this agent.\n"
            } else {
                "No grants. Give an agent one with `agentkeys grants create --agent LABEL --scope \
                 inbox/ --expires-in 7d`.\n"
            },
        );
    }
    // A master sees its agents' labels; an agent's grants are all its own.
    let labels = if saved.is_agent() {
        Vec::new()
    } else {
        client.agents(&saved.session_token).await?.agents
    };
    let now = aws::now_unix();
    let rows: Vec<Vec<String>> = list
        .grants
        .iter()
        .map(|g| {
            let agent = labels
                .iter()
                .find(|a| a.agent_omni == g.agent)
                .map_or_else(|| g.agent.clone(), |a| a.label.clone());
            vec![
                g.grant_id.clone(),
                agent,
                g.scope_tag.clone(),
                status(g, now).to_owned(),
                uses(g),
                g.expires_at.clone(),
            ]
        })
        .collect();
    emit(
        out,
        &table(
            &[
                "GRANT_ID",
                "AGENT",
                "SCOPE_TAG",
                "STATUS",
                "USES",
                "EXPIRES",
            ],
            &rows,
        ),
    )
}

async fn revoke(ctx: &Context, id: &str, out: &mut dyn Write) -> Result<()> {
    let id = id.trim();
    check_grant_id(id)?;
    let (_, saved, client) = ctx.session()?;
    client.grant_revoke(&saved.session_token, id).await?;
    // The exposure note, when the broker still lists the grant (best effort).
    let exposure = match client.grants(&saved.session_token).await {
        Ok(l) => l
            .grants
            .into_iter()
            .find(|g| g.grant_id == id)
            .map(|g| format!(" {}.", sentence(&g.worst_case_exposure.explanation)))
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    emit(
        out,
        &format!("Revoked grant {id}: the agent's next mint under it is refused.{exposure}\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant_terms::MAX_GRANT_SECONDS;
    use agentkeys_types::api::WorstCaseExposure;
    use clap::Parser;

    use crate::cli::{Cli, Command};

    const NOW: i64 = 1_900_000_000;

    fn grant() -> GrantInfo {
        GrantInfo {
            grant_id: "0123abcd".into(),
            agent: "a".repeat(64),
            scope: "inbox/".into(),
            scope_tag: "0xabc/inbox".into(),
            created_at: aws::rfc3339(NOW),
            expires_at: aws::rfc3339(NOW + 3600),
            max_uses: Some(2),
            uses: 0,
            revoked_at: None,
            worst_case_exposure: WorstCaseExposure {
                seconds: 4500,
                explanation: "a JWT stays valid for up to 900 s".into(),
            },
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").ok(), Some(90));
        assert_eq!(parse_duration("15m").ok(), Some(900));
        assert_eq!(parse_duration("12h").ok(), Some(43_200));
        assert_eq!(parse_duration(" 7d ").ok(), Some(604_800));
        assert_eq!(parse_duration("2w").ok(), Some(1_209_600));
        assert_eq!(parse_duration("3600").ok(), Some(3600));
        assert_eq!(parse_duration("365d").ok(), Some(MAX_GRANT_SECONDS));
        for bad in [
            "",
            "0s",
            "h",
            "1y",
            "-1h",
            "1.5h",
            "366d",
            "99999999999999999999w",
            "1 h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn expiry_from_either_flag() {
        assert_eq!(
            expires_at(Some("1h"), None, NOW).ok(),
            Some(aws::rfc3339(NOW + 3600))
        );
        let later = aws::rfc3339(NOW + 60);
        assert_eq!(expires_at(None, Some(&later), NOW).ok(), Some(later));
        assert!(expires_at(None, Some(&aws::rfc3339(NOW)), NOW).is_err());
        assert!(expires_at(None, Some("tomorrow"), NOW).is_err());
        assert!(expires_at(None, None, NOW).is_err());
        assert!(expires_at(Some("1h"), Some(&aws::rfc3339(NOW + 60)), NOW).is_err());
    }

    #[test]
    fn statuses() {
        let mut g = grant();
        assert_eq!(status(&g, NOW), "active");
        g.uses = 2;
        assert_eq!(status(&g, NOW), "used up");
        g.max_uses = None;
        assert_eq!(status(&g, NOW), "active");
        assert_eq!(uses(&g), "2/unlimited");
        assert_eq!(status(&g, NOW + 3600), "expired");
        g.revoked_at = Some(aws::rfc3339(NOW));
        assert_eq!(status(&g, NOW), "revoked");
    }

    #[test]
    fn created_text_names_id_tag_and_exposure() {
        let t = created_text(&grant(), "bot1");
        assert!(t.contains("grant_id:   0123abcd"), "{t}");
        assert!(t.contains("agentkeys_scope=0xabc/inbox"), "{t}");
        assert!(
            t.contains("a JWT stays valid for up to 900 s (4500 s)"),
            "{t}"
        );
        assert!(t.contains("(2 uses)"), "{t}");
    }

    #[test]
    fn broker_phrases_become_sentences() {
        assert_eq!(
            sentence("revocation stops\nnew mints"),
            "Revocation stops new mints"
        );
        assert_eq!(sentence(""), "");
    }

    #[test]
    fn grant_ids_are_path_safe() {
        assert!(check_grant_id("0123abcd").is_ok());
        for bad in ["", "..", "a/b", "a b", "%2e"] {
            assert!(check_grant_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commands_parse() {
        let cli = Cli::try_parse_from([
            "agentkeys",
            "grants",
            "create",
            "--agent",
            "bot1",
            "--scope",
            "inbox/",
            "--expires-in",
            "1h",
            "--max-uses",
            "1",
        ])
        .expect("parse");
        let Command::Grants(GrantsCommand::Create(a)) = cli.command else {
            panic!("not grants create")
        };
        assert_eq!(
            (a.agent.as_str(), a.scope.as_str(), a.max_uses),
            ("bot1", "inbox/", Some(1))
        );
        let base = [
            "agentkeys",
            "grants",
            "create",
            "--agent",
            "b",
            "--scope",
            "x",
        ];
        // Exactly one expiry is required; --max-uses is at least 1.
        assert!(Cli::try_parse_from(base).is_err());
        let both = [&base[..], &["--expires-in", "1h", "--expires-at", "x"]].concat();
        assert!(Cli::try_parse_from(both).is_err());
        let zero = [&base[..], &["--expires-in", "1h", "--max-uses", "0"]].concat();
        assert!(Cli::try_parse_from(zero).is_err());
        assert!(Cli::try_parse_from(["agentkeys", "grants", "list", "--json"]).is_ok());
        assert!(Cli::try_parse_from(["agentkeys", "grants", "revoke", "abc"]).is_ok());
        for args in [
            &["aws", "credentials", "--role-arn", "r", "--grant", "g"][..],
            &[
                "aws",
                "credential-process",
                "--role-arn",
                "r",
                "--grant",
                "g",
            ],
            &["exec", "--role-arn", "r", "--grant", "g", "--", "true"],
            &["token", "--grant", "g"],
        ] {
            let mut v = vec!["agentkeys"];
            v.extend_from_slice(args);
            assert!(Cli::try_parse_from(&v).is_ok(), "{v:?}");
        }
    }
}
