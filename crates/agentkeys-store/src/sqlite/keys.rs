//! Signing keys: public halves, lifecycle, and (optionally) the sealed private halves.

use rusqlite::{Connection, Row, params};

use crate::SigningKeyRecord;

fn row(r: &Row<'_>) -> rusqlite::Result<SigningKeyRecord> {
    Ok(SigningKeyRecord {
        kid: r.get(0)?,
        public_jwk: r.get(1)?,
        certificate: r.get(2)?,
        sealed_private_key: r.get(3)?,
        created_at: r.get(4)?,
        activates_at: r.get(5)?,
        retired_at: r.get(6)?,
        withdrawn_at: r.get(7)?,
    })
}

pub(super) fn insert(conn: &Connection, k: &SigningKeyRecord) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO signing_keys (kid, public_jwk, certificate, sealed_private_key, created_at,
           activates_at, retired_at, withdrawn_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        k.kid,
        k.public_jwk,
        k.certificate,
        k.sealed_private_key,
        k.created_at,
        k.activates_at,
        k.retired_at,
        k.withdrawn_at
    ])?;
    Ok(())
}

pub(super) fn update(
    conn: &Connection,
    kid: &str,
    retired_at: Option<i64>,
    withdrawn_at: Option<i64>,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE signing_keys SET retired_at = ?1, withdrawn_at = ?2 WHERE kid = ?3",
        )?
        .execute(params![retired_at, withdrawn_at, kid])?;
    Ok(n > 0)
}

pub(super) fn reseal(conn: &Connection, kid: &str, sealed: &[u8]) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached("UPDATE signing_keys SET sealed_private_key = ?1 WHERE kid = ?2")?
        .execute(params![sealed, kid])?;
    Ok(n > 0)
}

/// Latest activation first.
pub(super) fn all(conn: &Connection) -> rusqlite::Result<Vec<SigningKeyRecord>> {
    conn.prepare_cached(
        "SELECT kid, public_jwk, certificate, sealed_private_key, created_at, activates_at,
           retired_at, withdrawn_at
         FROM signing_keys ORDER BY activates_at DESC, created_at DESC",
    )?
    .query_map([], row)?
    .collect()
}
