//! `agentkeys sessions …`: list or revoke the live sessions of the signed-in actor.

use clap::Subcommand;
use std::io::Write;

use crate::context::{Context, forget_session};
use crate::error::{Error, Result};
use crate::output::{emit, enum_name, profile_flag, table, to_json};
use crate::pairing;

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List the live sessions of the signed-in actor; the current one is marked.
    List {
        /// Print the broker's JSON answer.
        #[arg(long)]
        json: bool,
    },

    /// Revoke one session by its id (from `agentkeys sessions list`). Revoking the current
    /// session also deletes it locally.
    Revoke {
        #[arg(value_name = "ID")]
        id: String,
    },
}

/// Runs `agentkeys sessions …`.
pub(crate) async fn run(
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
