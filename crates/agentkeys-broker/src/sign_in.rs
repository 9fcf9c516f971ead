//! The decisions at the end of an email or OIDC sign-in (or identity link), each one store
//! transaction: which master a proved identity becomes, when a code or a link may collect a
//! request, and what unlinking an identity takes with it. The HTTP side is in
//! `http/routes/login.rs`, `email.rs` and `oidc_signin.rs`.

use agentkeys_store::{
    Identity, IdentityRef, LoginKey, LoginRequest, NewAuditEvent, Result as StoreResult, Session,
    SessionFilter, Tx,
};
use agentkeys_types::OmniAccount;
use agentkeys_types::identity::IDENTITY_EMAIL;

use crate::session::SessionSlot;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginClaim {
    /// The code does not match (or none was issued yet); the request dies when no attempts
    /// are left.
    WrongCode { attempts_left: u32 },
    /// A session was stored: as the linked wallet master, or as the identity's own master.
    SignedIn(Session),
    /// The identity is now linked to the requesting wallet master.
    Linked(Identity),
    /// The result was already collected (by the code, or by the emailed link in a browser).
    AlreadyClaimed,
    /// Unknown, expired, or dead after too many wrong codes.
    Gone,
    /// Linking refused: the identity is linked to another master.
    LinkedElsewhere,
}

/// Collects a request once with its one-time code: an email request is proved by the code
/// itself, an OIDC request must have been verified at the callback. A wrong code counts one of
/// `max_attempts`. On success it links the identity (a link request) or stores a session in
/// `slot` for the identity's master; `event` gets the actor and master.
pub fn redeem_code(
    tx: &mut dyn Tx,
    id_hash: &str,
    code_hash: &str,
    max_attempts: u32,
    now: i64,
    slot: &SessionSlot,
    event: NewAuditEvent,
) -> StoreResult<LoginClaim> {
    let Some(request) = tx.login(LoginKey::IdHash(id_hash))? else {
        return Ok(LoginClaim::Gone);
    };
    if request.claimed_at.is_some() {
        return Ok(LoginClaim::AlreadyClaimed);
    }
    if now >= request.expires_at || request.code_attempts >= max_attempts {
        return Ok(LoginClaim::Gone);
    }
    if request.code_hash.as_deref() != Some(code_hash) {
        tx.count_wrong_code(id_hash)?;
        let attempts_left = max_attempts.saturating_sub(request.code_attempts + 1);
        return Ok(LoginClaim::WrongCode { attempts_left });
    }
    claim(tx, request, now, slot, event)
}

/// Collects an email sign-in request (never a link request) once by its emailed link's token:
/// the browser that opened the link gets the session.
pub fn redeem_link(
    tx: &mut dyn Tx,
    link_token_hash: &str,
    now: i64,
    slot: &SessionSlot,
    event: NewAuditEvent,
) -> StoreResult<LoginClaim> {
    let Some(request) = tx.login(LoginKey::LinkTokenHash(link_token_hash))? else {
        return Ok(LoginClaim::Gone);
    };
    if request.claimed_at.is_some() {
        return Ok(LoginClaim::AlreadyClaimed);
    }
    // A link request completes only with the code typed into the linking master's CLI: a
    // click in the mailbox owner's browser must never link it to someone else.
    if now >= request.expires_at || request.link_to.is_some() {
        return Ok(LoginClaim::Gone);
    }
    claim(tx, request, now, slot, event)
}

/// The end of a proved request: links the identity to the requesting wallet master, or signs
/// in as the master the identity belongs to (its linked wallet master, else a master of its
/// own with no wallet); marks the request collected.
fn claim(
    tx: &mut dyn Tx,
    request: LoginRequest,
    now: i64,
    slot: &SessionSlot,
    mut event: NewAuditEvent,
) -> StoreResult<LoginClaim> {
    // An email request is proved by its code or link; an OIDC one at the provider callback.
    let identity = match (request.verified_type, request.verified_value) {
        (Some(identity_type), Some(identity_value)) => IdentityRef {
            identity_type,
            identity_value,
        },
        _ if request.method == "email" => IdentityRef {
            identity_type: IDENTITY_EMAIL.to_owned(),
            identity_value: request.subject.clone(),
        },
        _ => return Ok(LoginClaim::WrongCode { attempts_left: 0 }),
    };
    if !tx.mark_login_claimed(&request.id_hash, &identity, now)? {
        return Ok(LoginClaim::AlreadyClaimed);
    }
    let linked = tx.identity(&identity)?;
    if let (Some(master), Some(wallet)) = (request.link_to, request.link_to_wallet) {
        let identity = match linked {
            Some(existing) if existing.master != master => {
                return Ok(LoginClaim::LinkedElsewhere);
            }
            Some(existing) => existing,
            None => {
                let identity = Identity {
                    identity_type: identity.identity_type,
                    identity_value: identity.identity_value,
                    master,
                    master_wallet: wallet,
                    linked_at: now,
                };
                tx.insert_identity(&identity)?;
                identity
            }
        };
        event.actor = Some(identity.master.to_string());
        event.master = Some(identity.master.to_string());
        tx.append(&event)?;
        return Ok(LoginClaim::Linked(identity));
    }
    let (omni, wallet) = match linked {
        Some(i) => (i.master, Some(i.master_wallet)),
        None => (
            OmniAccount::derive(&identity.identity_type, &identity.identity_value),
            None,
        ),
    };
    let session = slot.for_master(omni, wallet, Some(identity));
    tx.insert_session(&session)?;
    event.actor = Some(session.omni.to_string());
    event.master = Some(session.omni.to_string());
    tx.append(&event)?;
    Ok(LoginClaim::SignedIn(session))
}

/// Records that an OIDC request proved `identity` at the provider, and the hash of the code
/// that now collects it; `false` if it was already verified or has expired (single use).
pub fn verify(
    tx: &mut dyn Tx,
    id_hash: &str,
    identity: &IdentityRef,
    code_hash: &str,
    now: i64,
    event: &NewAuditEvent,
) -> StoreResult<bool> {
    let verified = tx.verify_login(id_hash, identity, code_hash, now)?;
    if verified {
        tx.append(event)?;
    }
    Ok(verified)
}

/// Ends a request that failed at the provider before it was verified, with its event; `false`
/// if it was not live. A request fails once, so a repeated failing callback writes nothing.
pub fn fail(tx: &mut dyn Tx, id_hash: &str, now: i64, event: &NewAuditEvent) -> StoreResult<bool> {
    let failed = tx.expire_login(id_hash, now)?;
    if failed {
        tx.append(event)?;
    }
    Ok(failed)
}

/// Unlinks the identity from `master` and revokes the live sessions obtained through it;
/// `None` if it was not linked to `master`, else how many sessions were revoked (also put into
/// the event's `details.sessions_revoked`).
pub fn unlink(
    tx: &mut dyn Tx,
    master: &OmniAccount,
    identity: &IdentityRef,
    now: i64,
    mut event: NewAuditEvent,
) -> StoreResult<Option<u64>> {
    if !tx.delete_identity(master, identity)? {
        return Ok(None);
    }
    let revoked = tx.revoke_sessions(master, SessionFilter::Via(identity), now)?;
    event.details["sessions_revoked"] = revoked.into();
    tx.append(&event)?;
    Ok(Some(revoked))
}
