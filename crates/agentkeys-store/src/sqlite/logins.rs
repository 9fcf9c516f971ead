//! Email and OIDC sign-in requests, and the identities they link to wallet masters.

use agentkeys_types::OmniAccount;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{omni, omni_opt};
use crate::{Identity, IdentityRef, LoginKey, LoginRequest};

const LOGIN_COLUMNS: &str = "id_hash, method, subject, link_token_hash, state, oidc_nonce, \
     oidc_verifier, link_to, link_to_wallet, created_at, expires_at, verified_type, \
     verified_value, verified_at, claimed_at, client_challenge, code_hash, code_attempts, \
     redirect_uri";

fn login_row(r: &Row<'_>) -> rusqlite::Result<LoginRequest> {
    Ok(LoginRequest {
        id_hash: r.get(0)?,
        method: r.get(1)?,
        subject: r.get(2)?,
        link_token_hash: r.get(3)?,
        state: r.get(4)?,
        oidc_nonce: r.get(5)?,
        oidc_verifier: r.get(6)?,
        link_to: omni_opt(r, 7)?,
        link_to_wallet: r.get(8)?,
        created_at: r.get(9)?,
        expires_at: r.get(10)?,
        verified_type: r.get(11)?,
        verified_value: r.get(12)?,
        verified_at: r.get(13)?,
        claimed_at: r.get(14)?,
        client_challenge: r.get(15)?,
        code_hash: r.get(16)?,
        code_attempts: r.get(17)?,
        redirect_uri: r.get(18)?,
    })
}

pub(super) fn insert(conn: &Connection, l: &LoginRequest) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO login_requests (id_hash, method, subject, link_token_hash, state, oidc_nonce,
           oidc_verifier, link_to, link_to_wallet, created_at, expires_at, verified_type,
           verified_value, verified_at, claimed_at, client_challenge, code_hash, code_attempts,
           redirect_uri)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
           ?19)",
    )?
    .execute(params![
        l.id_hash,
        l.method,
        l.subject,
        l.link_token_hash,
        l.state,
        l.oidc_nonce,
        l.oidc_verifier,
        l.link_to.as_ref().map(OmniAccount::as_str),
        l.link_to_wallet,
        l.created_at,
        l.expires_at,
        l.verified_type,
        l.verified_value,
        l.verified_at,
        l.claimed_at,
        l.client_challenge,
        l.code_hash,
        l.code_attempts,
        l.redirect_uri
    ])?;
    Ok(())
}

pub(super) fn get(conn: &Connection, key: LoginKey<'_>) -> rusqlite::Result<Option<LoginRequest>> {
    let (column, value) = match key {
        LoginKey::IdHash(v) => ("id_hash", v),
        LoginKey::LinkTokenHash(v) => ("link_token_hash", v),
        LoginKey::State(v) => ("state", v),
    };
    conn.prepare_cached(&format!(
        "SELECT {LOGIN_COLUMNS} FROM login_requests WHERE {column} = ?1"
    ))?
    .query_row([value], login_row)
    .optional()
}

pub(super) fn verify(
    conn: &Connection,
    id_hash: &str,
    identity: &IdentityRef,
    code_hash: &str,
    now: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE login_requests SET verified_type = ?1, verified_value = ?2, verified_at = ?3,
               code_hash = ?4
             WHERE id_hash = ?5 AND verified_at IS NULL AND expires_at > ?3",
        )?
        .execute(params![
            identity.identity_type,
            identity.identity_value,
            now,
            code_hash,
            id_hash
        ])?;
    Ok(n > 0)
}

pub(super) fn expire(conn: &Connection, id_hash: &str, now: i64) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE login_requests SET expires_at = ?1
             WHERE id_hash = ?2 AND verified_at IS NULL AND claimed_at IS NULL
               AND expires_at > ?1",
        )?
        .execute(params![now, id_hash])?;
    Ok(n > 0)
}

pub(super) fn count_wrong_code(conn: &Connection, id_hash: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE login_requests SET code_attempts = code_attempts + 1 WHERE id_hash = ?1",
    )?
    .execute([id_hash])?;
    Ok(())
}

pub(super) fn mark_claimed(
    conn: &Connection,
    id_hash: &str,
    identity: &IdentityRef,
    now: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE login_requests SET claimed_at = ?1, verified_type = ?2, verified_value = ?3,
               verified_at = COALESCE(verified_at, ?1)
             WHERE id_hash = ?4 AND claimed_at IS NULL",
        )?
        .execute(params![
            now,
            identity.identity_type,
            identity.identity_value,
            id_hash
        ])?;
    Ok(n > 0)
}

// ---- identities ---------------------------------------------------------------------------

const IDENTITY_COLUMNS: &str = "identity_type, identity_value, master, master_wallet, linked_at";

fn identity_row(r: &Row<'_>) -> rusqlite::Result<Identity> {
    Ok(Identity {
        identity_type: r.get(0)?,
        identity_value: r.get(1)?,
        master: omni(r, 2)?,
        master_wallet: r.get(3)?,
        linked_at: r.get(4)?,
    })
}

pub(super) fn identity(
    conn: &Connection,
    identity: &IdentityRef,
) -> rusqlite::Result<Option<Identity>> {
    conn.prepare_cached(&format!(
        "SELECT {IDENTITY_COLUMNS} FROM identities WHERE identity_type = ?1 AND identity_value = ?2"
    ))?
    .query_row(
        params![identity.identity_type, identity.identity_value],
        identity_row,
    )
    .optional()
}

pub(super) fn identities_of(
    conn: &Connection,
    master: &OmniAccount,
) -> rusqlite::Result<Vec<Identity>> {
    conn.prepare_cached(&format!(
        "SELECT {IDENTITY_COLUMNS} FROM identities WHERE master = ?1 ORDER BY linked_at"
    ))?
    .query_map([master.as_str()], identity_row)?
    .collect()
}

pub(super) fn insert_identity(conn: &Connection, i: &Identity) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO identities (identity_type, identity_value, master, master_wallet, linked_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        i.identity_type,
        i.identity_value,
        i.master.as_str(),
        i.master_wallet,
        i.linked_at
    ])?;
    Ok(())
}

pub(super) fn delete_identity(
    conn: &Connection,
    master: &OmniAccount,
    identity: &IdentityRef,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "DELETE FROM identities
             WHERE master = ?1 AND identity_type = ?2 AND identity_value = ?3",
        )?
        .execute(params![
            master.as_str(),
            identity.identity_type,
            identity.identity_value
        ])?;
    Ok(n > 0)
}
