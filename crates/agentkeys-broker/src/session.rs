//! Session tokens: `aks_` + 43 base64url characters (256 random bits). Only their SHA-256 is
//! stored; the token itself is returned once, at sign-in.

use agentkeys_store::{
    ActorKind, Agent, IdentityRef, NewAuditEvent, Result as StoreResult, Session, SessionFilter,
    Store, Tx,
};
use agentkeys_types::OmniAccount;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const TOKEN_PREFIX: &str = "aks_";
const TOKEN_BYTES: usize = 32;

/// A new session token and its hash.
pub struct NewToken {
    pub token: String,
    pub hash: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

pub fn new_token() -> NewToken {
    let token = format!("{TOKEN_PREFIX}{}", secret());
    let hash = token_hash(&token);
    NewToken { token, hash }
}

/// 256 random bits as 43 base64url characters: the body of session tokens, and on its own the
/// request ids, email link tokens and OIDC states.
pub fn secret() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `s` has the shape of a [`secret`]; checked before any store lookup.
pub fn looks_like_secret(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn token_hash(token: &str) -> String {
    agentkeys_types::lower_hex(&Sha256::digest(token.as_bytes()))
}

/// Cheap shape check before touching the store.
pub fn looks_like_token(token: &str) -> bool {
    token
        .strip_prefix(TOKEN_PREFIX)
        .is_some_and(looks_like_secret)
}

/// A short, non-secret reference to a session for audit details and logs.
pub fn session_ref(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

/// A random identifier (challenge ids, JWT ids): 128 bits, hex.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    agentkeys_types::lower_hex(&bytes)
}

/// A new session token's hash and lifetime, before anyone owns it.
#[derive(Debug, Clone)]
pub struct SessionSlot {
    pub token_hash: String,
    pub created_at: i64,
    pub expires_at: i64,
}

impl SessionSlot {
    /// The session of `agent`: it acts for the agent's master.
    pub fn for_agent(&self, agent: &Agent) -> Session {
        Session {
            token_hash: self.token_hash.clone(),
            kind: ActorKind::Agent,
            omni: agent.omni.clone(),
            wallet: None,
            master: agent.master.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: None,
            via: None,
            agent_status: Some(agent.status),
        }
    }

    /// The session of a master, signed in with `wallet` if it has one, through `via` when it
    /// came by email or OIDC.
    pub fn for_master(
        &self,
        omni: OmniAccount,
        wallet: Option<String>,
        via: Option<IdentityRef>,
    ) -> Session {
        Session {
            token_hash: self.token_hash.clone(),
            kind: ActorKind::Master,
            master: omni.clone(),
            omni,
            wallet,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: None,
            via,
            agent_status: None,
        }
    }
}

/// Revokes one live session, with its event; whether it was live.
pub fn revoke(
    tx: &mut dyn Tx,
    token_hash: &str,
    now: i64,
    event: &NewAuditEvent,
) -> StoreResult<bool> {
    let revoked = tx.revoke_session(token_hash, now)?;
    if revoked {
        tx.append(event)?;
    }
    Ok(revoked)
}

/// A live session of the caller, found by its public id ([`session_ref`]): the only way to
/// revoke one of the caller's sessions by id ([`OwnSession::revoke`]). Made only by
/// [`OwnSession::find`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnSession {
    token_hash: String,
}

impl OwnSession {
    /// The live session of `caller`'s actor whose public id is `id`, if it has one.
    pub async fn find(
        store: &dyn Store,
        caller: &Session,
        id: &str,
        now: i64,
    ) -> StoreResult<Option<OwnSession>> {
        Ok(store
            .sessions_of(&caller.omni, now)
            .await?
            .into_iter()
            .find(|o| session_ref(&o.token_hash) == id)
            .map(|o| OwnSession {
                token_hash: o.token_hash,
            }))
    }

    /// Revokes the session if it is still live, with its event ([`revoke`]); whether it was.
    pub fn revoke(&self, tx: &mut dyn Tx, now: i64, event: &NewAuditEvent) -> StoreResult<bool> {
        revoke(tx, &self.token_hash, now, event)
    }
}

/// Revokes every live session of `omni` but `keep`, with one event if any was; how many.
pub fn revoke_all(
    tx: &mut dyn Tx,
    omni: &OmniAccount,
    keep: Option<&str>,
    now: i64,
    event: &NewAuditEvent,
) -> StoreResult<u64> {
    let revoked = tx.revoke_sessions(omni, SessionFilter::AllExcept(keep), now)?;
    if revoked > 0 {
        tx.append(event)?;
    }
    Ok(revoked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_hashed() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a.token, b.token);
        assert!(looks_like_token(&a.token), "{}", a.token.len());
        assert_eq!(a.hash, token_hash(&a.token));
        assert_eq!(a.hash.len(), 64);
        assert!(
            !format!("{a:?}").contains(&a.token),
            "Debug never prints the token"
        );
        assert!(!looks_like_token("aks_short"));
        assert!(!looks_like_token(&a.token.replace("aks_", "xyz_")));
    }
}
