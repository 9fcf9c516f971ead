//! What email and OIDC sign-ins share: a request bound to its requester, and its collection.
//!
//! A request is opened with the S256 hash of a verifier only the requester holds. The user
//! proves the identity and sees a one-time code: in the email, or (OIDC) through the provider's
//! redirect to the requester's loopback listener or on the broker's page to paste. The
//! session (or the link) is released once, to `POST …/collect` with the request id, that code
//! and the verifier. So a request id releases nothing, a mail scanner or a click releases
//! nothing to a poller, and a phished user who completes someone else's request hands over
//! nothing unless they also send that person the code.

use agentkeys_store::{LoginKey, LoginRequest, Session};
use agentkeys_types::OmniAccount;
use agentkeys_types::api::{
    ChallengePurpose, IdentityInfo, LoginCollectRequest, LoginStatus, LoginStatusResponse,
    SessionIssued, WalletProof,
};
use agentkeys_types::audit::{AuditKind, Outcome};
use agentkeys_types::login::{CODE_ATTEMPTS, code_challenge, valid_challenge, valid_verifier};
use agentkeys_types::pairing::normalize_code;
use serde_json::json;

use super::event;
use crate::clock::rfc3339;
use crate::http::error::ApiError;
use crate::session::SessionSlot;
use crate::session::{looks_like_secret, new_token, session_ref, token_hash};
use crate::sign_in::{self, LoginClaim};
use crate::state::AppState;

/// The start's `code_challenge`, checked for shape.
pub fn client_challenge(challenge: &str) -> Result<String, ApiError> {
    if valid_challenge(challenge) {
        Ok(challenge.to_owned())
    } else {
        Err(ApiError::BadRequest(
            "code_challenge is the S256 of a verifier: base64url (no padding) of its SHA-256, \
             43 characters"
                .into(),
        ))
    }
}

/// The right to open a link request: a wallet master's session together with a fresh signature
/// by that master's wallet over a challenge for exactly this identity. Only
/// [`LinkingMaster::prove`] makes one, and a link request cannot be opened without one.
pub struct LinkingMaster {
    omni: OmniAccount,
    wallet: String,
}

impl LinkingMaster {
    pub fn omni(&self) -> &OmniAccount {
        &self.omni
    }

    pub fn wallet(&self) -> &str {
        &self.wallet
    }

    pub async fn prove(
        state: &AppState,
        master: &Session,
        proof: &WalletProof,
        purpose: &ChallengePurpose,
    ) -> Result<Self, ApiError> {
        let Some(wallet) = master.wallet.as_deref() else {
            return Err(ApiError::Forbidden {
                kind: agentkeys_types::ErrorKind::WalletMasterOnly,
                message: "only a master signed in with a wallet can link identities".into(),
            });
        };
        super::auth::step_up(state, master.omni.as_str(), wallet, proof, purpose).await?;
        Ok(Self {
            omni: master.omni.clone(),
            wallet: wallet.to_owned(),
        })
    }
}

/// The hash under which a one-time code is stored (of its canonical form).
pub fn code_hash(code: &str) -> String {
    token_hash(code)
}

fn gone() -> ApiError {
    ApiError::NotFound("unknown or expired sign-in request; start again".into())
}

/// Collects a login request of `method` (`email` or `oidc`) for the requester that holds the
/// verifier and the code.
pub async fn collect(
    state: &AppState,
    method: &str,
    req: &LoginCollectRequest,
) -> Result<LoginStatusResponse, ApiError> {
    if !looks_like_secret(&req.request_id) {
        return Err(gone());
    }
    if !valid_verifier(&req.code_verifier) {
        return Err(ApiError::BadRequest(
            "code_verifier is the 43-128 character verifier whose S256 was sent at the start"
                .into(),
        ));
    }
    let code = normalize_code(&req.code).ok_or_else(|| {
        ApiError::BadRequest("code is the 8-character code you were shown, e.g. ABCD-EFGH".into())
    })?;
    let id_hash = token_hash(&req.request_id);
    let request = state
        .store
        .login(LoginKey::IdHash(&id_hash))
        .await?
        .filter(|r| r.method == method)
        .ok_or_else(gone)?;
    // Compared as hashes of random values, so timing says nothing useful.
    if request.client_challenge.as_deref() != Some(code_challenge(&req.code_verifier).as_str()) {
        return Err(ApiError::Forbidden {
            kind: agentkeys_types::ErrorKind::VerifierMismatch,
            message: "this sign-in was started by another client: the verifier does not match"
                .into(),
        });
    }
    let now = state.clock.now();
    let token = new_token();
    let expires_at = now + state.settings.session_ttl_seconds;
    let slot = SessionSlot {
        token_hash: token.hash.clone(),
        created_at: now,
        expires_at,
    };
    let done = collected_event(&request, now, &token.hash)?;
    let code_hash = code_hash(&code);
    let claim = state
        .store
        .transact(move |tx| {
            sign_in::redeem_code(tx, &id_hash, &code_hash, CODE_ATTEMPTS, now, &slot, done)
        })
        .await?;
    answer(method, claim, token.token, expires_at)
}

/// The audit event of a successful collection (actor and master are filled in once the
/// transaction knows them). Login requests are only ever written with the methods of
/// [`AuditKind::sign_in`]; any other would be a store written by something else.
pub fn collected_event(
    request: &LoginRequest,
    now: i64,
    session_hash: &str,
) -> Result<agentkeys_store::NewAuditEvent, ApiError> {
    let kind = if request.link_to.is_some() {
        AuditKind::IdentityLinked
    } else {
        AuditKind::sign_in(&request.method).ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "login request of unknown method {:?}",
                request.method
            ))
        })?
    };
    let details = json!({
        "method": request.method,
        "identity_type": request.verified_type,
        "identity_value": request.verified_value.as_deref().unwrap_or(&request.subject),
        "session": request.link_to.is_none().then(|| session_ref(session_hash).to_owned()),
    });
    Ok(event(now, kind, None, None, Outcome::Ok, details))
}

fn answer(
    method: &str,
    claim: LoginClaim,
    token: String,
    expires_at: i64,
) -> Result<LoginStatusResponse, ApiError> {
    match claim {
        LoginClaim::SignedIn(s) => {
            metrics::counter!(crate::metrics::SIGN_INS, "method" => method.to_owned(), "outcome" => "ok").increment(1);
            Ok(LoginStatusResponse {
                status: LoginStatus::Approved,
                session: Some(SessionIssued {
                    session_token: token,
                    expires_at: rfc3339(expires_at),
                    omni_account: s.omni.to_string(),
                    wallet: s.wallet,
                }),
                identity: None,
            })
        }
        LoginClaim::Linked(i) => Ok(LoginStatusResponse {
            status: LoginStatus::Linked,
            session: None,
            identity: Some(IdentityInfo {
                identity_type: i.identity_type,
                identity_value: i.identity_value,
                linked_at: rfc3339(i.linked_at),
            }),
        }),
        LoginClaim::WrongCode { attempts_left } => {
            metrics::counter!(crate::metrics::SIGN_INS, "method" => method.to_owned(), "outcome" => "failed").increment(1);
            Err(ApiError::Unprocessable {
                kind: agentkeys_types::ErrorKind::WrongCode,
                message: if attempts_left == 0 {
                    "the code does not match, and this request allows no more tries; start again"
                        .into()
                } else {
                    format!(
                        "the code does not match (or the sign-in is not finished yet); \
                         {attempts_left} tries left"
                    )
                },
            })
        }
        LoginClaim::AlreadyClaimed => Err(ApiError::Conflict(
            "this sign-in was already completed (with its code, or in a browser by its link)"
                .into(),
        )),
        LoginClaim::LinkedElsewhere => Err(ApiError::Conflict(
            "that identity is linked to another master; unlink it there first".into(),
        )),
        LoginClaim::Gone => Err(gone()),
    }
}
