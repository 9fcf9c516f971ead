//! Signing-key records.

use tokio_postgres::Row;

use super::col;
use super::tx::Db;
use crate::{Result, SigningKeyRecord};

macro_rules! key_columns {
    () => {
        "kid, public_jwk, certificate, sealed_private_key, created_at, activates_at, retired_at, withdrawn_at"
    };
}

const INSERT: &str = concat!(
    "INSERT INTO signing_keys (",
    key_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
);
pub(super) const SELECT_ALL: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM signing_keys ORDER BY activates_at DESC, created_at DESC, kid"
);
const UPDATE: &str = "UPDATE signing_keys SET retired_at = $1, withdrawn_at = $2 WHERE kid = $3";
const RESEAL: &str = "UPDATE signing_keys SET sealed_private_key = $1 WHERE kid = $2";

pub(super) fn insert_signing_key(db: &mut Db<'_, '_>, k: &SigningKeyRecord) -> Result<()> {
    db.execute(
        INSERT,
        &[
            &k.kid,
            &k.public_jwk,
            &k.certificate,
            &k.sealed_private_key,
            &k.created_at,
            &k.activates_at,
            &k.retired_at,
            &k.withdrawn_at,
        ],
    )?;
    Ok(())
}

pub(super) fn update_signing_key(
    db: &mut Db<'_, '_>,
    kid: &str,
    retired_at: Option<i64>,
    withdrawn_at: Option<i64>,
) -> Result<bool> {
    Ok(db.execute(UPDATE, &[&retired_at, &withdrawn_at, &kid])? > 0)
}

pub(super) fn reseal_signing_key(db: &mut Db<'_, '_>, kid: &str, sealed: &[u8]) -> Result<bool> {
    Ok(db.execute(RESEAL, &[&sealed, &kid])? > 0)
}

pub(super) fn key_row(row: &Row) -> Result<SigningKeyRecord> {
    Ok(SigningKeyRecord {
        kid: col(row, 0)?,
        public_jwk: col(row, 1)?,
        certificate: col(row, 2)?,
        sealed_private_key: col(row, 3)?,
        created_at: col(row, 4)?,
        activates_at: col(row, 5)?,
        retired_at: col(row, 6)?,
        withdrawn_at: col(row, 7)?,
    })
}
