//! Wallet challenges and sessions.

use tokio_postgres::Row;

use super::tx::Db;
use super::{col, omni};
use crate::{
    ActorKind, Challenge, IdentityRef, Result, Session, SessionFilter, SessionStanding, StoreError,
};
use agentkeys_types::OmniAccount;

const INSERT_CHALLENGE: &str =
    "INSERT INTO wallet_challenges (id, address, message, created_at, expires_at)
     VALUES ($1, $2, $3, $4, $5)";
/// Deleting is the take: of two takes of one id, only one gets the row back.
const TAKE_CHALLENGE: &str = "DELETE FROM wallet_challenges WHERE id = $1
     RETURNING id, address, message, created_at, expires_at";
pub(super) const PURGE_CHALLENGES: &str = "DELETE FROM wallet_challenges WHERE expires_at < $1";

macro_rules! session_columns {
    () => {
        "token_hash, kind, omni, wallet, master, created_at, expires_at, revoked_at, via_type, via_value"
    };
}

const INSERT: &str = concat!(
    "INSERT INTO sessions (",
    session_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
);
/// Sessions (`s`) and, for an agent's, its agent (`a`).
macro_rules! joined {
    () => {
        "sessions s LEFT JOIN agents a ON s.kind = 'agent' AND a.omni = s.omni"
    };
}
/// A session and, for an agent's, its agent's status.
macro_rules! select_joined {
    ($where:literal) => {
        concat!(
            "SELECT s.token_hash, s.kind, s.omni, s.wallet, s.master, s.created_at, s.expires_at,
                    s.revoked_at, s.via_type, s.via_value, a.status FROM ",
            joined!(),
            " ",
            $where
        )
    };
}
pub(super) const SELECT: &str = select_joined!("WHERE s.token_hash = $1");
const SELECT_STANDING: &str = concat!(
    "SELECT s.kind, s.expires_at, s.revoked_at, a.status FROM ",
    joined!(),
    " WHERE s.token_hash = $1"
);
pub(super) const SELECT_LIVE_OF: &str = select_joined!(
    "WHERE s.omni = $1 AND s.revoked_at IS NULL AND s.expires_at > $2
     ORDER BY s.created_at, s.token_hash"
);
const REVOKE: &str = "UPDATE sessions SET revoked_at = $1
     WHERE token_hash = $2 AND revoked_at IS NULL AND expires_at > $1";
const REVOKE_ALL_EXCEPT: &str = "UPDATE sessions SET revoked_at = $1
     WHERE omni = $2 AND revoked_at IS NULL AND expires_at > $1
       AND token_hash IS DISTINCT FROM $3";
const REVOKE_VIA: &str = "UPDATE sessions SET revoked_at = $1
     WHERE omni = $2 AND via_type = $3 AND via_value = $4
       AND revoked_at IS NULL AND expires_at > $1";
pub(super) const PURGE_SESSIONS: &str = "DELETE FROM sessions WHERE expires_at < $1";

pub(super) fn insert_challenge(db: &mut Db<'_, '_>, c: &Challenge) -> Result<()> {
    db.execute(
        INSERT_CHALLENGE,
        &[&c.id, &c.address, &c.message, &c.created_at, &c.expires_at],
    )?;
    Ok(())
}

pub(super) fn take_challenge(db: &mut Db<'_, '_>, id: &str) -> Result<Option<Challenge>> {
    db.query_opt(TAKE_CHALLENGE, &[&id])?
        .map(|row| {
            Ok(Challenge {
                id: col(&row, 0)?,
                address: col(&row, 1)?,
                message: col(&row, 2)?,
                created_at: col(&row, 3)?,
                expires_at: col(&row, 4)?,
            })
        })
        .transpose()
}

pub(super) fn insert_session(db: &mut Db<'_, '_>, s: &Session) -> Result<()> {
    let via_type = s.via.as_ref().map(|v| v.identity_type.as_str());
    let via_value = s.via.as_ref().map(|v| v.identity_value.as_str());
    db.execute(
        INSERT,
        &[
            &s.token_hash,
            &kind_str(s.kind),
            &s.omni.as_str(),
            &s.wallet,
            &s.master.as_str(),
            &s.created_at,
            &s.expires_at,
            &s.revoked_at,
            &via_type,
            &via_value,
        ],
    )?;
    Ok(())
}

pub(super) fn standing(db: &mut Db<'_, '_>, token_hash: &str) -> Result<Option<SessionStanding>> {
    db.query_opt(SELECT_STANDING, &[&token_hash])?
        .map(|row| {
            let kind: String = col(&row, 0)?;
            Ok(SessionStanding {
                kind: kind_of(&kind)?,
                expires_at: col(&row, 1)?,
                revoked_at: col(&row, 2)?,
                agent_status: agent_status(&row, 3)?,
            })
        })
        .transpose()
}

pub(super) fn revoke_session(db: &mut Db<'_, '_>, token_hash: &str, now: i64) -> Result<bool> {
    Ok(db.execute(REVOKE, &[&now, &token_hash])? > 0)
}

pub(super) fn revoke_sessions(
    db: &mut Db<'_, '_>,
    omni: &OmniAccount,
    which: SessionFilter<'_>,
    now: i64,
) -> Result<u64> {
    match which {
        SessionFilter::AllExcept(keep) => {
            db.execute(REVOKE_ALL_EXCEPT, &[&now, &omni.as_str(), &keep])
        }
        SessionFilter::Via(via) => db.execute(
            REVOKE_VIA,
            &[
                &now,
                &omni.as_str(),
                &via.identity_type,
                &via.identity_value,
            ],
        ),
    }
}

fn kind_str(kind: ActorKind) -> &'static str {
    match kind {
        ActorKind::Master => "master",
        ActorKind::Agent => "agent",
    }
}

fn kind_of(s: &str) -> Result<ActorKind> {
    match s {
        "master" => Ok(ActorKind::Master),
        "agent" => Ok(ActorKind::Agent),
        other => Err(StoreError::Database(format!(
            "a stored session kind is unknown: {other:?}"
        ))),
    }
}

pub(super) fn session_row(row: &Row) -> Result<Session> {
    let kind: String = col(row, 1)?;
    let via_type: Option<String> = col(row, 8)?;
    let via_value: Option<String> = col(row, 9)?;
    Ok(Session {
        token_hash: col(row, 0)?,
        kind: kind_of(&kind)?,
        omni: omni(col(row, 2)?)?,
        wallet: col(row, 3)?,
        master: omni(col(row, 4)?)?,
        created_at: col(row, 5)?,
        expires_at: col(row, 6)?,
        revoked_at: col(row, 7)?,
        via: via_type
            .zip(via_value)
            .map(|(identity_type, identity_value)| IdentityRef {
                identity_type,
                identity_value,
            }),
        agent_status: agent_status(row, 10)?,
    })
}

fn agent_status(row: &Row, column: usize) -> Result<Option<crate::AgentStatus>> {
    col::<Option<String>>(row, column)?
        .as_deref()
        .map(super::agents::status_of)
        .transpose()
}
