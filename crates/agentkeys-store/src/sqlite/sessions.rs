//! Sessions (stored by token hash) and the wallet challenges that precede a wallet sign-in.

use agentkeys_types::OmniAccount;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{actor_kind, agent_status, kind_str, omni};
use crate::{AgentStatus, Challenge, IdentityRef, Session, SessionFilter, SessionStanding};

/// A session and, for an agent's, its agent's status (`FROM` [`JOINED`]).
const COLUMNS: &str = "s.token_hash, s.kind, s.omni, s.wallet, s.master, s.created_at, \
     s.expires_at, s.revoked_at, s.via_type, s.via_value, a.status";
/// Sessions (`s`) and, for an agent's, its agent (`a`).
macro_rules! joined {
    () => {
        "sessions s LEFT JOIN agents a ON s.kind = 'agent' AND a.omni = s.omni"
    };
}
const JOINED: &str = joined!();

fn row(r: &Row<'_>) -> rusqlite::Result<Session> {
    let via_type: Option<String> = r.get(8)?;
    let via_value: Option<String> = r.get(9)?;
    Ok(Session {
        token_hash: r.get(0)?,
        kind: actor_kind(r, 1)?,
        omni: omni(r, 2)?,
        wallet: r.get(3)?,
        master: omni(r, 4)?,
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        revoked_at: r.get(7)?,
        via: match (via_type, via_value) {
            (Some(identity_type), Some(identity_value)) => Some(IdentityRef {
                identity_type,
                identity_value,
            }),
            _ => None,
        },
        agent_status: optional_agent_status(r, 10)?,
    })
}

fn optional_agent_status(r: &Row<'_>, column: usize) -> rusqlite::Result<Option<AgentStatus>> {
    match r.get_ref(column)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => agent_status(r, column).map(Some),
    }
}

pub(super) fn insert(conn: &Connection, s: &Session) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO sessions (token_hash, kind, omni, wallet, master, created_at, expires_at,
           revoked_at, via_type, via_value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        s.token_hash,
        kind_str(s.kind),
        s.omni.as_str(),
        s.wallet,
        s.master.as_str(),
        s.created_at,
        s.expires_at,
        s.revoked_at,
        s.via.as_ref().map(|v| v.identity_type.as_str()),
        s.via.as_ref().map(|v| v.identity_value.as_str()),
    ])?;
    Ok(())
}

pub(super) fn get_sql() -> String {
    format!("SELECT {COLUMNS} FROM {JOINED} WHERE s.token_hash = ?1")
}

pub(super) fn get(conn: &Connection, token_hash: &str) -> rusqlite::Result<Option<Session>> {
    conn.prepare_cached(&get_sql())?
        .query_row([token_hash], row)
        .optional()
}

pub(super) fn standing(
    conn: &Connection,
    token_hash: &str,
) -> rusqlite::Result<Option<SessionStanding>> {
    conn.prepare_cached(concat!(
        "SELECT s.kind, s.expires_at, s.revoked_at, a.status FROM ",
        joined!(),
        " WHERE s.token_hash = ?1"
    ))?
    .query_row([token_hash], |r| {
        Ok(SessionStanding {
            kind: actor_kind(r, 0)?,
            expires_at: r.get(1)?,
            revoked_at: r.get(2)?,
            agent_status: optional_agent_status(r, 3)?,
        })
    })
    .optional()
}

pub(super) fn live_of(
    conn: &Connection,
    omni: &OmniAccount,
    now: i64,
) -> rusqlite::Result<Vec<Session>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM {JOINED}
         WHERE s.omni = ?1 AND s.revoked_at IS NULL AND s.expires_at > ?2 ORDER BY s.created_at"
    ))?
    .query_map(params![omni.as_str(), now], row)?
    .collect()
}

pub(super) fn revoke(conn: &Connection, token_hash: &str, now: i64) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE sessions SET revoked_at = ?1
             WHERE token_hash = ?2 AND revoked_at IS NULL AND expires_at > ?1",
        )?
        .execute(params![now, token_hash])?;
    Ok(n > 0)
}

pub(super) fn revoke_many(
    conn: &Connection,
    omni: &OmniAccount,
    which: SessionFilter<'_>,
    now: i64,
) -> rusqlite::Result<u64> {
    let n = match which {
        SessionFilter::AllExcept(keep) => conn
            .prepare_cached(
                "UPDATE sessions SET revoked_at = ?1
                 WHERE omni = ?2 AND revoked_at IS NULL AND expires_at > ?1
                   AND token_hash IS NOT ?3",
            )?
            .execute(params![now, omni.as_str(), keep])?,
        SessionFilter::Via(via) => conn
            .prepare_cached(
                "UPDATE sessions SET revoked_at = ?1
                 WHERE omni = ?2 AND via_type = ?3 AND via_value = ?4
                   AND revoked_at IS NULL AND expires_at > ?1",
            )?
            .execute(params![
                now,
                omni.as_str(),
                via.identity_type,
                via.identity_value
            ])?,
    };
    Ok(n as u64)
}

pub(super) fn insert_challenge(conn: &Connection, c: &Challenge) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO wallet_challenges (id, address, message, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        c.id,
        c.address,
        c.message,
        c.created_at,
        c.expires_at
    ])?;
    Ok(())
}

pub(super) fn take_challenge(conn: &Connection, id: &str) -> rusqlite::Result<Option<Challenge>> {
    conn.prepare_cached(
        "DELETE FROM wallet_challenges WHERE id = ?1
         RETURNING id, address, message, created_at, expires_at",
    )?
    .query_row([id], |r| {
        Ok(Challenge {
            id: r.get(0)?,
            address: r.get(1)?,
            message: r.get(2)?,
            created_at: r.get(3)?,
            expires_at: r.get(4)?,
        })
    })
    .optional()
}
