//! Credentials that stay fresh for a long-running process (SPEC §8): the source behind the
//! container-credentials endpoint of `agentkeys exec --refresh` and `agentkeys credentials
//! serve`, and the token file of `agentkeys exec --web-identity`.
//!
//! A [`Renewer`] holds the current STS credentials and renews them (a new JWT, then STS) when
//! fewer than its margin of seconds remain. When the broker no longer accepts an agent's session
//! (expired, or ended), it gets a new one by device proof, as `agentkeys agent login` does. A
//! refusal (agent suspended, grant revoked, STS refusing the role) drops the held credentials,
//! so nothing more is handed out; a transient failure (broker or STS unreachable, rate limit)
//! keeps serving the held ones while they are still valid.

use tokio::sync::Mutex;

use agentkeys_types::api::{MintRequest, MintResponse};

use crate::agent;
use crate::aws::{self, AwsCredentials, StsTarget};
use crate::client::BrokerClient;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::secret::SecretString;

/// Default margin: renew when fewer than this many seconds of the credentials' life remain.
pub const DEFAULT_MARGIN: u32 = 300;
/// Smallest span between a renewal and the expiry it was asked to beat; a margin must leave at
/// least this much of the credentials' lifetime before the first renewal.
pub const MIN_HOLD: u32 = 30;
/// Held credentials are still handed out after a transient failure only while more than this
/// many seconds remain.
const STILL_USABLE: i64 = 60;

/// Credentials and the prefixes they may use.
#[derive(Debug, Clone)]
pub struct Current {
    pub creds: AwsCredentials,
    /// The `agentkeys_user_wallet` tag: the own prefix is `<wallet>/`.
    pub wallet: String,
    /// The `agentkeys_scope` tag of a mint under a grant: `<master prefix>/<scope>`.
    pub scope: Option<String>,
}

/// What a renewal needs, and the credentials it holds.
pub struct Renewer {
    ctx: Context,
    target: StsTarget,
    duration: u32,
    margin: u32,
    grant: Option<String>,
    held: Mutex<Option<Current>>,
}

impl Renewer {
    /// `margin` must be below `duration - MIN_HOLD` (checked here, so the flags' error names
    /// both).
    pub(crate) fn new(
        ctx: Context,
        target: StsTarget,
        duration: u32,
        margin: u32,
        grant: Option<String>,
    ) -> Result<Self> {
        if margin.saturating_add(MIN_HOLD) > duration {
            return Err(Error::InvalidInput(format!(
                "--refresh-margin {margin} leaves less than {MIN_HOLD} s of a {duration} s \
                 credential before its renewal; use a margin of at most {}",
                duration.saturating_sub(MIN_HOLD)
            )));
        }
        Ok(Self {
            ctx,
            target,
            duration,
            margin,
            grant,
            held: Mutex::new(None),
        })
    }

    pub fn target(&self) -> &StsTarget {
        &self.target
    }

    /// The credentials to hand out now: the held ones while more than the margin remains, else
    /// new ones.
    pub async fn current(&self) -> Result<Current> {
        let mut held = self.held.lock().await;
        let now = aws::now_unix();
        if let Some(c) = held.as_ref()
            && c.creds.expiration - now > i64::from(self.margin)
        {
            return Ok(c.clone());
        }
        match self.fetch().await {
            Ok(c) => {
                eprintln!(
                    "agentkeys: new credentials for {} (expire {}, renewed from {})",
                    self.target.role_arn,
                    c.creds.expiration_rfc3339(),
                    aws::rfc3339(c.creds.expiration - i64::from(self.margin)),
                );
                *held = Some(c.clone());
                Ok(c)
            }
            Err(e) if is_transient(&e) => match held.as_ref() {
                Some(c) if c.creds.expiration - now > STILL_USABLE => {
                    eprintln!(
                        "agentkeys: warning: could not renew the credentials ({e}); the current \
                         ones stay valid until {}",
                        c.creds.expiration_rfc3339()
                    );
                    Ok(c.clone())
                }
                _ => Err(e),
            },
            Err(e) => {
                // A refusal: what was held must not outlive it in this process.
                *held = None;
                Err(e)
            }
        }
    }

    /// A new JWT, then STS.
    async fn fetch(&self) -> Result<Current> {
        let minted = self.mint().await?;
        let name = aws::session_name(&minted.actor_omni);
        let creds =
            aws::assume_role_with_web_identity(&self.target, &name, &minted.jwt, self.duration)
                .await?;
        Ok(Current {
            creds,
            scope: scope_claim(&minted.jwt),
            wallet: minted.wallet,
        })
    }

    /// A JWT pinned to the role (and the grant, if any) from the profile's session.
    pub async fn mint(&self) -> Result<MintResponse> {
        let req = MintRequest {
            audience: None,
            role_arn: Some(self.target.role_arn.clone()),
            grant_id: self.grant.clone(),
        };
        self.with_session(|client, token| {
            let req = req.clone();
            async move { client.mint(&token, &req).await }
        })
        .await
    }

    /// Calls the broker with the profile's session, renewing an agent's session by device
    /// proof once when the broker no longer accepts it.
    pub async fn with_session<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(BrokerClient, SecretString) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let profile = self.ctx.profile()?;
        let saved = profile.require_session()?;
        let client = self.ctx.broker_for_session(&saved)?;
        match call(client, saved.session_token).await {
            Err(rejected @ Error::SessionRejected { agent: true, .. }) => {
                let Some(renewed) = agent::renew_agent_session(&self.ctx, &profile).await? else {
                    return Err(rejected);
                };
                eprintln!(
                    "agentkeys: the agent session had ended; signed in again with the device key \
                     (session expires {})",
                    renewed.expires_at
                );
                let client = self.ctx.broker_for_session(&renewed)?;
                call(client, renewed.session_token).await
            }
            other => other,
        }
    }
}

/// The `agentkeys_scope` claim of a JWT the broker just issued (read, not verified: it only
/// names the prefix for display and paths; the cloud checks the signed token).
fn scope_claim(jwt: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("agentkeys_scope")?.as_str().map(str::to_owned)
}

/// Failures that may pass by themselves; everything else is a refusal.
fn is_transient(e: &Error) -> bool {
    matches!(
        e,
        Error::BrokerUnreachable { .. }
            | Error::CloudUnreachable { .. }
            | Error::RateLimited { .. }
    ) || matches!(e, Error::Broker { status, .. } if *status >= 500)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> StsTarget {
        StsTarget {
            role_arn: "arn:aws:iam:::role/r".into(),
            region: "us-east-1".into(),
            endpoint: None,
        }
    }

    #[test]
    fn margin_must_leave_time_before_renewal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = || Context::for_test(dir.path(), None);
        assert!(Renewer::new(ctx(), target(), 900, 870, None).is_ok());
        let e = Renewer::new(ctx(), target(), 900, 871, None)
            .err()
            .expect("too large");
        assert!(e.to_string().contains("at most 870"), "{e}");
    }

    #[test]
    fn scope_claim_is_read_from_the_payload() {
        use base64::Engine as _;
        let enc = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let jwt = format!(
            "{}.{}.sig",
            enc(serde_json::json!({"alg": "ES256"})),
            enc(serde_json::json!({"agentkeys_scope": "0xabc/inbox"}))
        );
        assert_eq!(scope_claim(&jwt).as_deref(), Some("0xabc/inbox"));
        let jwt = format!("h.{}.s", enc(serde_json::json!({"sub": "x"})));
        assert_eq!(scope_claim(&jwt), None);
        assert_eq!(scope_claim("garbage"), None);
    }

    #[test]
    fn transient_failures_are_told_apart_from_refusals() {
        assert!(is_transient(&Error::BrokerUnreachable {
            url: "u".into(),
            detail: "d".into()
        }));
        assert!(is_transient(&Error::RateLimited { retry_after: None }));
        assert!(!is_transient(&Error::Broker {
            status: 403,
            kind: "agent_suspended".into(),
            message: "m".into()
        }));
        assert!(!is_transient(&Error::SessionRejected {
            profile: "p".into(),
            agent: false
        }));
    }
}
