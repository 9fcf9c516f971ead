//! Email and OIDC sign-in requests, and the identities they link.

use tokio_postgres::Row;

use super::tx::Db;
use super::{col, omni, opt_omni};
use crate::{Identity, IdentityRef, LoginKey, LoginRequest, Result};
use agentkeys_types::OmniAccount;

macro_rules! login_columns {
    () => {
        "id_hash, method, subject, link_token_hash, state, oidc_nonce, oidc_verifier, \
         link_to, link_to_wallet, created_at, expires_at, verified_type, verified_value, \
         verified_at, claimed_at, client_challenge, code_hash, code_attempts, redirect_uri"
    };
}

const INSERT: &str = concat!(
    "INSERT INTO login_requests (",
    login_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
);
const SELECT_BY_ID: &str = concat!(
    "SELECT ",
    login_columns!(),
    " FROM login_requests WHERE id_hash = $1"
);
const SELECT_BY_LINK: &str = concat!(
    "SELECT ",
    login_columns!(),
    " FROM login_requests WHERE link_token_hash = $1"
);
const SELECT_BY_STATE: &str = concat!(
    "SELECT ",
    login_columns!(),
    " FROM login_requests WHERE state = $1"
);
const VERIFY: &str = "UPDATE login_requests
     SET verified_type = $1, verified_value = $2, verified_at = $3, code_hash = $4
     WHERE id_hash = $5 AND verified_at IS NULL AND expires_at > $3";
const EXPIRE: &str = "UPDATE login_requests SET expires_at = $1
     WHERE id_hash = $2 AND verified_at IS NULL AND claimed_at IS NULL AND expires_at > $1";
const COUNT_WRONG_CODE: &str =
    "UPDATE login_requests SET code_attempts = code_attempts + 1 WHERE id_hash = $1";
const MARK_CLAIMED: &str = "UPDATE login_requests
     SET claimed_at = $1, verified_type = $2, verified_value = $3,
         verified_at = COALESCE(verified_at, $1)
     WHERE id_hash = $4 AND claimed_at IS NULL";
pub(super) const PURGE_LOGINS: &str = "DELETE FROM login_requests WHERE expires_at < $1";

macro_rules! identity_columns {
    () => {
        "identity_type, identity_value, master, master_wallet, linked_at"
    };
}

const SELECT_IDENTITY: &str = concat!(
    "SELECT ",
    identity_columns!(),
    " FROM identities WHERE identity_type = $1 AND identity_value = $2"
);
pub(super) const SELECT_IDENTITIES_OF: &str = concat!(
    "SELECT ",
    identity_columns!(),
    " FROM identities WHERE master = $1 ORDER BY linked_at, identity_type, identity_value"
);
const INSERT_IDENTITY: &str = concat!(
    "INSERT INTO identities (",
    identity_columns!(),
    ") VALUES ($1, $2, $3, $4, $5)"
);
const DELETE_IDENTITY: &str =
    "DELETE FROM identities WHERE master = $1 AND identity_type = $2 AND identity_value = $3";

/// The query for `key`, and the value it looks up.
pub(super) fn select(key: LoginKey<'_>) -> (&'static str, &str) {
    match key {
        LoginKey::IdHash(v) => (SELECT_BY_ID, v),
        LoginKey::LinkTokenHash(v) => (SELECT_BY_LINK, v),
        LoginKey::State(v) => (SELECT_BY_STATE, v),
    }
}

pub(super) fn insert_login(db: &mut Db<'_, '_>, l: &LoginRequest) -> Result<()> {
    let link_to = l.link_to.as_ref().map(OmniAccount::as_str);
    db.execute(
        INSERT,
        &[
            &l.id_hash,
            &l.method,
            &l.subject,
            &l.link_token_hash,
            &l.state,
            &l.oidc_nonce,
            &l.oidc_verifier,
            &link_to,
            &l.link_to_wallet,
            &l.created_at,
            &l.expires_at,
            &l.verified_type,
            &l.verified_value,
            &l.verified_at,
            &l.claimed_at,
            &l.client_challenge,
            &l.code_hash,
            &i64::from(l.code_attempts),
            &l.redirect_uri,
        ],
    )?;
    Ok(())
}

pub(super) fn login(db: &mut Db<'_, '_>, key: LoginKey<'_>) -> Result<Option<LoginRequest>> {
    let (sql, value) = select(key);
    db.query_opt(sql, &[&value])?
        .as_ref()
        .map(login_row)
        .transpose()
}

pub(super) fn verify_login(
    db: &mut Db<'_, '_>,
    id_hash: &str,
    identity: &IdentityRef,
    code_hash: &str,
    now: i64,
) -> Result<bool> {
    let n = db.execute(
        VERIFY,
        &[
            &identity.identity_type,
            &identity.identity_value,
            &now,
            &code_hash,
            &id_hash,
        ],
    )?;
    Ok(n > 0)
}

pub(super) fn expire_login(db: &mut Db<'_, '_>, id_hash: &str, now: i64) -> Result<bool> {
    Ok(db.execute(EXPIRE, &[&now, &id_hash])? > 0)
}

pub(super) fn count_wrong_code(db: &mut Db<'_, '_>, id_hash: &str) -> Result<()> {
    db.execute(COUNT_WRONG_CODE, &[&id_hash])?;
    Ok(())
}

pub(super) fn mark_login_claimed(
    db: &mut Db<'_, '_>,
    id_hash: &str,
    identity: &IdentityRef,
    now: i64,
) -> Result<bool> {
    let n = db.execute(
        MARK_CLAIMED,
        &[
            &now,
            &identity.identity_type,
            &identity.identity_value,
            &id_hash,
        ],
    )?;
    Ok(n > 0)
}

pub(super) fn identity(db: &mut Db<'_, '_>, identity: &IdentityRef) -> Result<Option<Identity>> {
    db.query_opt(
        SELECT_IDENTITY,
        &[&identity.identity_type, &identity.identity_value],
    )?
    .as_ref()
    .map(identity_row)
    .transpose()
}

pub(super) fn insert_identity(db: &mut Db<'_, '_>, i: &Identity) -> Result<()> {
    db.execute(
        INSERT_IDENTITY,
        &[
            &i.identity_type,
            &i.identity_value,
            &i.master.as_str(),
            &i.master_wallet,
            &i.linked_at,
        ],
    )?;
    Ok(())
}

pub(super) fn delete_identity(
    db: &mut Db<'_, '_>,
    master: &OmniAccount,
    identity: &IdentityRef,
) -> Result<bool> {
    let n = db.execute(
        DELETE_IDENTITY,
        &[
            &master.as_str(),
            &identity.identity_type,
            &identity.identity_value,
        ],
    )?;
    Ok(n > 0)
}

pub(super) fn login_row(row: &Row) -> Result<LoginRequest> {
    Ok(LoginRequest {
        id_hash: col(row, 0)?,
        method: col(row, 1)?,
        subject: col(row, 2)?,
        link_token_hash: col(row, 3)?,
        state: col(row, 4)?,
        oidc_nonce: col(row, 5)?,
        oidc_verifier: col(row, 6)?,
        link_to: opt_omni(col(row, 7)?)?,
        link_to_wallet: col(row, 8)?,
        created_at: col(row, 9)?,
        expires_at: col(row, 10)?,
        verified_type: col(row, 11)?,
        verified_value: col(row, 12)?,
        verified_at: col(row, 13)?,
        claimed_at: col(row, 14)?,
        client_challenge: col(row, 15)?,
        code_hash: col(row, 16)?,
        // Counted one at a time from zero; a value past u32 only means "far too many".
        code_attempts: u32::try_from(col::<i64>(row, 17)?.max(0)).unwrap_or(u32::MAX),
        redirect_uri: col(row, 18)?,
    })
}

pub(super) fn identity_row(row: &Row) -> Result<Identity> {
    Ok(Identity {
        identity_type: col(row, 0)?,
        identity_value: col(row, 1)?,
        master: omni(col(row, 2)?)?,
        master_wallet: col(row, 3)?,
        linked_at: col(row, 4)?,
    })
}
