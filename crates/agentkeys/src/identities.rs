//! Sign-in by email and by OIDC provider (`agentkeys login email|oidc`), and a wallet master's
//! linked identities (`agentkeys identities …`).
//!
//! Both flows are the same for the client: the broker opens a request and answers with a secret
//! request id; the user proves the identity in a browser (the emailed link, or the provider's
//! sign-in page); the client polls the request's status until the broker hands over the
//! session (sign-in) or reports the link, once. The request id is never printed or logged.

use std::future::Future;
use std::io::Write;
use std::time::{Duration, Instant};

use agentkeys_types::OmniAccount;
use agentkeys_types::api::{
    EmailStartRequest, IdentityInfo, LoginStartResponse, LoginStatus, LoginStatusResponse,
    SessionIssued,
};
use agentkeys_types::identity::{IDENTITY_EMAIL, canonical_email};

use crate::agents::{profile_flag, table};
use crate::cli::IdentitiesCommand;
use crate::client::{BrokerClient, LoginMethod, check_request_id, sanitize};
use crate::commands::{Context, emit, to_json};
use crate::config::{Profile, SavedSession};
use crate::error::{Error, Result, RetryAfter};

/// Time between polls of a sign-in or link request.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait between polls, whatever a 429's Retry-After says.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// Wait after a 429 without a usable Retry-After in seconds.
const RATE_LIMITED_WAIT: Duration = Duration::from_secs(10);
/// Consecutive failed polls (broker unreachable) tolerated before giving up.
const MAX_POLL_FAILURES: u32 = 3;
/// Longest authorization URL accepted from the broker.
const MAX_AUTHORIZATION_URL: usize = 8 * 1024;

// ---- polling -------------------------------------------------------------------------------

/// What a poll loop waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Goal {
    /// A session (`approved`).
    SignIn,
    /// A linked identity (`linked`).
    Link,
}

/// One sign-in or link as the user sees it: what is awaited and how to start over.
#[derive(Debug, Clone)]
pub(crate) struct Flow {
    pub goal: Goal,
    /// What has not happened yet, e.g. "the link sent to a@example.com was not opened".
    pub pending: String,
    /// The command that starts over.
    pub again: String,
}

impl Flow {
    fn fail(&self, detail: String) -> Error {
        match self.goal {
            Goal::SignIn => Error::SignIn(detail),
            Goal::Link => Error::Linking(detail),
        }
    }

    fn timed_out(&self, timeout: Duration) -> Error {
        self.fail(format!(
            "{} within {} s; run `{}` to start over",
            self.pending,
            timeout.as_secs(),
            self.again
        ))
    }
}

/// What to do after one poll.
#[derive(Debug)]
pub(crate) enum Next {
    /// The request is done: the answer carries the session or the identity.
    Done(LoginStatusResponse),
    /// Poll again after this long; `note` is said on stderr first.
    Wait {
        after: Duration,
        note: Option<String>,
    },
}

/// The poll state machine: pure, so each transition is unit-tested.
#[derive(Debug)]
pub(crate) struct Poller {
    interval: Duration,
    failures: u32,
}

impl Poller {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            failures: 0,
        }
    }

    pub(crate) fn next(
        &mut self,
        flow: &Flow,
        polled: Result<LoginStatusResponse>,
    ) -> Result<Next> {
        let wait = |after| Next::Wait { after, note: None };
        match polled {
            Ok(r) if r.status == LoginStatus::Pending => {
                self.failures = 0;
                Ok(wait(self.interval))
            }
            Ok(r) => Ok(Next::Done(r)),
            Err(Error::RateLimited { retry_after }) => {
                let after = match retry_after {
                    Some(RetryAfter::Seconds(n)) => Duration::from_secs(n),
                    _ => RATE_LIMITED_WAIT,
                };
                Ok(wait(after.clamp(self.interval, MAX_POLL_INTERVAL)))
            }
            Err(e @ Error::BrokerUnreachable { .. }) if self.failures < MAX_POLL_FAILURES => {
                self.failures += 1;
                Ok(Next::Wait {
                    after: self.interval,
                    note: Some(format!("{e}; polling again")),
                })
            }
            Err(Error::Broker { status: 404, .. }) => Err(flow.fail(format!(
                "the broker no longer knows this request (it expired); run `{}` to start over",
                flow.again
            ))),
            Err(Error::Broker {
                status: 409,
                message,
                ..
            }) => Err(flow.fail(match flow.goal {
                Goal::SignIn => format!(
                    "the session of this sign-in was already collected, by an earlier poll whose \
                     answer was lost; run `{}` to start over",
                    flow.again
                ),
                // "linked to another master", or collected already: the broker says which.
                Goal::Link => message,
            })),
            Err(e) => Err(e),
        }
    }
}

/// Polls until the request is done, the broker refuses, or `timeout` passes. The first poll is
/// one interval after the start.
pub(crate) async fn wait_for<F, Fut>(
    flow: &Flow,
    interval: Duration,
    timeout: Duration,
    mut poll: F,
) -> Result<LoginStatusResponse>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<LoginStatusResponse>>,
{
    let deadline = Instant::now() + timeout;
    let mut poller = Poller::new(interval);
    let mut wait = interval;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(flow.timed_out(timeout));
        }
        tokio::time::sleep(wait.min(deadline - now)).await;
        match poller.next(flow, poll().await)? {
            Next::Done(r) => return Ok(r),
            Next::Wait { after, note } => {
                if let Some(note) = note {
                    eprintln!("agentkeys: note: {note}");
                }
                wait = after;
            }
        }
    }
}

// ---- checks on what the broker says --------------------------------------------------------

fn protocol(client: &BrokerClient, detail: &str) -> Error {
    Error::BrokerProtocol {
        url: client.base_url().to_owned(),
        detail: detail.to_owned(),
    }
}

/// The request id must be a token that is safe in a URL path (it is a secret: never shown).
fn check_started(client: &BrokerClient, started: &LoginStartResponse) -> Result<()> {
    if check_request_id(&started.request_id) {
        Ok(())
    } else {
        Err(protocol(client, "the request id is not a short token"))
    }
}

/// The URL the user must open: http(s), one line, bounded.
pub(crate) fn check_authorization_url(
    url: Option<&str>,
) -> std::result::Result<&str, &'static str> {
    let url = url.ok_or("the answer has no authorization URL")?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err("the authorization URL is not an http(s) URL");
    }
    if url.len() > MAX_AUTHORIZATION_URL {
        return Err("the authorization URL is too long");
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the authorization URL contains spaces or control characters");
    }
    Ok(url)
}

/// A finished sign-in must carry a master session with a well-formed omni.
pub(crate) fn signed_in_session(
    r: LoginStatusResponse,
) -> std::result::Result<SessionIssued, &'static str> {
    if r.status != LoginStatus::Approved {
        return Err("the request ended without a sign-in");
    }
    let issued = r
        .session
        .ok_or("the sign-in was approved but the answer has no session")?;
    if issued.omni_account.parse::<OmniAccount>().is_err() {
        return Err("the session's omni account is malformed");
    }
    if issued.session_token.is_empty() {
        return Err("the session token is empty");
    }
    Ok(issued)
}

/// A finished link must carry the identity.
pub(crate) fn linked_identity(
    r: LoginStatusResponse,
) -> std::result::Result<IdentityInfo, &'static str> {
    if r.status != LoginStatus::Linked {
        return Err("the request ended without a link");
    }
    r.identity
        .ok_or("the link was made but the answer has no identity")
}

/// A provider name as the broker knows it: `^[a-z0-9-]{1,32}$` (case-insensitive here).
pub(crate) fn provider_name(raw: &str) -> Result<String> {
    let name = raw.trim().to_ascii_lowercase();
    let ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(name)
    } else {
        Err(Error::InvalidInput(format!(
            "invalid provider {:?}: a provider name is 1-32 characters of a-z, 0-9 and '-', as \
             configured on the broker",
            sanitize(raw, 40)
        )))
    }
}

/// The canonical address (trimmed, lowercase), or a usage error.
pub(crate) fn email_address(raw: &str) -> Result<String> {
    canonical_email(raw).map_err(|e| {
        Error::InvalidInput(format!(
            "invalid email address {:?}: {e}",
            sanitize(raw, 80)
        ))
    })
}

// ---- sign-in -------------------------------------------------------------------------------

/// How the user proved who they are, for the output.
enum Proof<'a> {
    Email(&'a str),
    Oidc(&'a str),
}

pub(crate) async fn login_email(
    ctx: &Context,
    address: &str,
    timeout: u64,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let email = email_address(address)?;
    let profile = ctx.profile()?;
    let client = ctx.broker_for_login(&profile)?;
    let started = client
        .email_start(&EmailStartRequest {
            email: email.clone(),
        })
        .await?;
    check_started(&client, &started)?;
    eprintln!(
        "A sign-in link was sent to {email}. Open it in a browser (on any device) to sign in to \
         {}.\nWaiting up to {timeout} s (the link expires at {}); Ctrl-C cancels.",
        client.base_url(),
        sanitize(&started.expires_at, 64)
    );
    let flow = Flow {
        goal: Goal::SignIn,
        pending: format!("the link sent to {email} was not opened"),
        again: format!("agentkeys {}login email {email}", profile_flag(&profile)),
    };
    finish_login(
        &client,
        &profile,
        LoginMethod::Email,
        &started,
        &flow,
        timeout,
        Proof::Email(&email),
        json,
        out,
    )
    .await
}

pub(crate) async fn login_oidc(
    ctx: &Context,
    provider: &str,
    timeout: u64,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let provider = provider_name(provider)?;
    let profile = ctx.profile()?;
    let client = ctx.broker_for_login(&profile)?;
    let started = client.oidc_start(&provider).await?;
    check_started(&client, &started)?;
    let url = check_authorization_url(started.authorization_url.as_deref())
        .map_err(|why| protocol(&client, why))?;
    eprintln!(
        "Open this URL in a browser to sign in with {provider}:\n{url}\nWaiting up to {timeout} s \
         (the request expires at {}); Ctrl-C cancels.",
        sanitize(&started.expires_at, 64)
    );
    let flow = Flow {
        goal: Goal::SignIn,
        pending: format!("the sign-in with {provider} was not finished"),
        again: format!("agentkeys {}login oidc {provider}", profile_flag(&profile)),
    };
    finish_login(
        &client,
        &profile,
        LoginMethod::Oidc,
        &started,
        &flow,
        timeout,
        Proof::Oidc(&provider),
        json,
        out,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn finish_login(
    client: &BrokerClient,
    profile: &Profile,
    method: LoginMethod,
    started: &LoginStartResponse,
    flow: &Flow,
    timeout: u64,
    proof: Proof<'_>,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let id = started.request_id.as_str();
    let done = wait_for(flow, POLL_INTERVAL, Duration::from_secs(timeout), || {
        client.login_status(method, id)
    })
    .await?;
    let issued = signed_in_session(done).map_err(|why| protocol(client, why))?;
    let saved = SavedSession::from_issued(client.base_url(), issued);
    profile.save_session(&saved)?;

    let wallet = saved.wallet.as_deref().map(|w| sanitize(w, 64));
    let expires_at = sanitize(&saved.expires_at, 64);
    let (key, value, via) = match proof {
        Proof::Email(e) => ("email", e, format!("as {e}")),
        Proof::Oidc(p) => ("provider", p, format!("with {p}")),
    };
    if json {
        let mut doc = serde_json::json!({
            "wallet": wallet,
            "omni_account": saved.omni_account,
            "expires_at": expires_at,
            "broker_url": saved.broker_url,
            "profile": profile.name(),
        });
        doc[key] = value.into();
        emit(out, &to_json(&doc)?)
    } else {
        emit(
            out,
            &format!(
                "Signed in to {} {via} (profile {}).\nwallet:       {}\nomni_account: {}\n\
                 expires_at:   {expires_at}\n",
                saved.broker_url,
                profile.name(),
                wallet.as_deref().unwrap_or("(none)"),
                saved.omni_account,
            ),
        )
    }
}

// ---- identities ----------------------------------------------------------------------------

pub(crate) async fn identities(
    ctx: &Context,
    command: IdentitiesCommand,
    out: &mut dyn Write,
) -> Result<()> {
    match command {
        IdentitiesCommand::List { json } => list(ctx, json, out).await,
        IdentitiesCommand::LinkEmail {
            address,
            timeout,
            json,
        } => link_email(ctx, &address, timeout.secs, json, out).await,
        IdentitiesCommand::LinkOidc {
            provider,
            timeout,
            json,
        } => link_oidc(ctx, &provider, timeout.secs, json, out).await,
        IdentitiesCommand::Unlink {
            identity_type,
            identity_value,
        } => unlink(ctx, &identity_type, &identity_value, out).await,
    }
}

async fn list(ctx: &Context, json: bool, out: &mut dyn Write) -> Result<()> {
    let (_, saved, client) = ctx.session()?;
    let list = client.identities(&saved.session_token).await?;
    if json {
        return emit(out, &to_json(&list)?);
    }
    if list.identities.is_empty() {
        return emit(
            out,
            "No linked identities. Link one with `agentkeys identities link-email ADDRESS` or \
             `agentkeys identities link-oidc PROVIDER`.\n",
        );
    }
    let rows: Vec<Vec<String>> = list
        .identities
        .iter()
        .map(|i| {
            vec![
                i.identity_type.clone(),
                i.identity_value.clone(),
                i.linked_at.clone(),
            ]
        })
        .collect();
    emit(out, &table(&["TYPE", "VALUE", "LINKED"], &rows))
}

async fn link_email(
    ctx: &Context,
    address: &str,
    timeout: u64,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let email = email_address(address)?;
    let (profile, saved, client) = ctx.session()?;
    let started = client
        .link_email_start(
            &saved.session_token,
            &EmailStartRequest {
                email: email.clone(),
            },
        )
        .await?;
    check_started(&client, &started)?;
    eprintln!(
        "A confirmation link was sent to {email}. Open it in a browser to link the address to \
         master {}.\nWaiting up to {timeout} s (the link expires at {}); Ctrl-C cancels.",
        saved.omni_account,
        sanitize(&started.expires_at, 64)
    );
    let flow = Flow {
        goal: Goal::Link,
        pending: format!("the link sent to {email} was not opened"),
        again: format!(
            "agentkeys {}identities link-email {email}",
            profile_flag(&profile)
        ),
    };
    finish_link(
        &client,
        LoginMethod::Email,
        &started,
        &flow,
        timeout,
        &saved,
        json,
        out,
    )
    .await
}

async fn link_oidc(
    ctx: &Context,
    provider: &str,
    timeout: u64,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let provider = provider_name(provider)?;
    let (profile, saved, client) = ctx.session()?;
    let started = client
        .link_oidc_start(&saved.session_token, &provider)
        .await?;
    check_started(&client, &started)?;
    let url = check_authorization_url(started.authorization_url.as_deref())
        .map_err(|why| protocol(&client, why))?;
    eprintln!(
        "Open this URL in a browser and sign in with {provider} to link that account to master \
         {}:\n{url}\nWaiting up to {timeout} s (the request expires at {}); Ctrl-C cancels.",
        saved.omni_account,
        sanitize(&started.expires_at, 64)
    );
    let flow = Flow {
        goal: Goal::Link,
        pending: format!("the sign-in with {provider} was not finished"),
        again: format!(
            "agentkeys {}identities link-oidc {provider}",
            profile_flag(&profile)
        ),
    };
    finish_link(
        &client,
        LoginMethod::Oidc,
        &started,
        &flow,
        timeout,
        &saved,
        json,
        out,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn finish_link(
    client: &BrokerClient,
    method: LoginMethod,
    started: &LoginStartResponse,
    flow: &Flow,
    timeout: u64,
    saved: &SavedSession,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let id = started.request_id.as_str();
    let done = wait_for(flow, POLL_INTERVAL, Duration::from_secs(timeout), || {
        client.login_status(method, id)
    })
    .await?;
    let identity = linked_identity(done).map_err(|why| protocol(client, why))?;
    if json {
        return emit(out, &to_json(&identity)?);
    }
    emit(
        out,
        &format!(
            "Linked {} {} to master {}; signing in with it now gives a session of this master.\n",
            sanitize(&identity.identity_type, 64),
            sanitize(&identity.identity_value, 254),
            saved.omni_account
        ),
    )
}

/// The value to send for an unlink: email addresses in their canonical form, as listed.
pub(crate) fn unlink_value(identity_type: &str, identity_value: &str) -> String {
    if identity_type == IDENTITY_EMAIL {
        identity_value.trim().to_lowercase()
    } else {
        identity_value.to_owned()
    }
}

async fn unlink(
    ctx: &Context,
    identity_type: &str,
    identity_value: &str,
    out: &mut dyn Write,
) -> Result<()> {
    let identity_type = identity_type.trim();
    let value = unlink_value(identity_type, identity_value);
    let (_, saved, client) = ctx.session()?;
    client
        .unlink_identity(&saved.session_token, identity_type, &value)
        .await?;
    emit(
        out,
        &format!(
            "Unlinked {} {}; signing in with it now makes a master of its own.\n",
            sanitize(identity_type, 64),
            sanitize(&value, 254)
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    const OMNI: &str = "abababababababababababababababababababababababababababababababab";

    fn flow(goal: Goal) -> Flow {
        Flow {
            goal,
            pending: "the link sent to a@example.com was not opened".into(),
            again: "agentkeys login email a@example.com".into(),
        }
    }

    fn pending() -> LoginStatusResponse {
        LoginStatusResponse {
            status: LoginStatus::Pending,
            session: None,
            identity: None,
        }
    }

    fn approved() -> LoginStatusResponse {
        LoginStatusResponse {
            status: LoginStatus::Approved,
            session: Some(SessionIssued {
                session_token: "tok".into(),
                expires_at: "2030-01-01T00:00:00Z".into(),
                omni_account: OMNI.into(),
                wallet: None,
            }),
            identity: None,
        }
    }

    fn linked() -> LoginStatusResponse {
        LoginStatusResponse {
            status: LoginStatus::Linked,
            session: None,
            identity: Some(IdentityInfo {
                identity_type: "email".into(),
                identity_value: "bob@example.com".into(),
                linked_at: "2030-01-01T00:00:00Z".into(),
            }),
        }
    }

    fn broker(status: u16, message: &str) -> Error {
        Error::Broker {
            status,
            kind: "k".into(),
            message: message.into(),
        }
    }

    fn unreachable() -> Error {
        Error::BrokerUnreachable {
            url: "u".into(),
            detail: "connection failed".into(),
        }
    }

    /// Runs the poll loop over a fixed sequence of answers; returns the outcome and how many
    /// answers were used.
    async fn run(
        goal: Goal,
        answers: Vec<Result<LoginStatusResponse>>,
        timeout: Duration,
    ) -> (Result<LoginStatusResponse>, usize) {
        let total = answers.len();
        let mut seq: VecDeque<_> = answers.into();
        let f = flow(goal);
        let r = wait_for(&f, Duration::from_millis(1), timeout, || {
            let next = seq.pop_front();
            async move { next.unwrap_or_else(|| Ok(pending())) }
        })
        .await;
        (r, total - seq.len().min(total))
    }

    #[tokio::test]
    async fn polls_until_approved() {
        let (r, used) = run(
            Goal::SignIn,
            vec![Ok(pending()), Ok(pending()), Ok(approved()), Ok(pending())],
            Duration::from_secs(10),
        )
        .await;
        let issued = signed_in_session(r.expect("done")).expect("session");
        assert_eq!(issued.omni_account, OMNI);
        assert_eq!(used, 3, "stops at the first done answer");
    }

    #[tokio::test]
    async fn tolerates_a_few_unreachable_polls_then_gives_up() {
        let (r, _) = run(
            Goal::SignIn,
            vec![
                Err(unreachable()),
                Err(unreachable()),
                Ok(pending()),
                Err(unreachable()),
                Err(unreachable()),
                Err(unreachable()),
                Ok(approved()),
            ],
            Duration::from_secs(10),
        )
        .await;
        assert!(r.is_ok(), "a pending answer resets the count: {r:?}");
        let (r, used) = run(
            Goal::SignIn,
            vec![
                Err(unreachable()),
                Err(unreachable()),
                Err(unreachable()),
                Err(unreachable()),
                Ok(approved()),
            ],
            Duration::from_secs(10),
        )
        .await;
        assert!(matches!(r, Err(Error::BrokerUnreachable { .. })), "{r:?}");
        assert_eq!(used, 4);
    }

    #[tokio::test]
    async fn gives_up_at_the_timeout() {
        let started = Instant::now();
        let (r, _) = run(Goal::SignIn, vec![], Duration::from_millis(50)).await;
        let e = r.expect_err("times out");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(e, Error::SignIn(_)), "{e:?}");
        let s = e.to_string();
        assert!(
            s.contains("was not opened within 0 s")
                && s.contains("run `agentkeys login email a@example.com` to start over"),
            "{s}"
        );
        let (r, _) = run(Goal::Link, vec![], Duration::from_millis(20)).await;
        assert!(matches!(r, Err(Error::Linking(_))), "{r:?}");
    }

    #[tokio::test]
    async fn refusals_end_the_wait() {
        let (r, used) = run(
            Goal::SignIn,
            vec![Ok(pending()), Err(broker(404, "unknown")), Ok(approved())],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(used, 2);
        let s = r.expect_err("404").to_string();
        assert!(
            s.starts_with("sign-in did not complete: ") && s.contains("expired"),
            "{s}"
        );

        let (r, _) = run(
            Goal::SignIn,
            vec![Err(broker(409, "already collected"))],
            Duration::from_secs(10),
        )
        .await;
        let s = r.expect_err("409").to_string();
        assert!(
            s.contains("already collected") && s.contains("start over"),
            "{s}"
        );

        let (r, _) = run(
            Goal::Link,
            vec![Err(broker(
                409,
                "that identity is linked to another master; unlink it there first",
            ))],
            Duration::from_secs(10),
        )
        .await;
        let e = r.expect_err("409");
        assert_eq!(
            e.to_string(),
            "linking did not complete: that identity is linked to another master; unlink it \
             there first"
        );
        assert_eq!(e.exit_code(), crate::error::EXIT_FAILURE);

        // Other errors pass through unchanged (exit codes included).
        let (r, _) = run(
            Goal::SignIn,
            vec![Err(broker(400, "bad"))],
            Duration::from_secs(10),
        )
        .await;
        assert!(matches!(r, Err(Error::Broker { status: 400, .. })), "{r:?}");
    }

    #[test]
    fn rate_limits_slow_the_polling_down() {
        let f = flow(Goal::SignIn);
        let mut p = Poller::new(POLL_INTERVAL);
        let after = |n: Next| match n {
            Next::Wait { after, .. } => after,
            Next::Done(_) => panic!("not done"),
        };
        let limited = |ra: Option<RetryAfter>| Err(Error::RateLimited { retry_after: ra });
        let n = p
            .next(&f, limited(Some(RetryAfter::Seconds(7))))
            .expect("wait");
        assert_eq!(after(n), Duration::from_secs(7));
        let n = p
            .next(&f, limited(Some(RetryAfter::Seconds(0))))
            .expect("wait");
        assert_eq!(after(n), POLL_INTERVAL, "never faster than the interval");
        let n = p
            .next(&f, limited(Some(RetryAfter::Seconds(9999))))
            .expect("wait");
        assert_eq!(after(n), MAX_POLL_INTERVAL);
        let n = p
            .next(
                &f,
                limited(Some(RetryAfter::Date("Wed, 21 Oct 2015".into()))),
            )
            .expect("wait");
        assert_eq!(after(n), RATE_LIMITED_WAIT);
        let n = p.next(&f, Ok(pending())).expect("wait");
        assert_eq!(after(n), POLL_INTERVAL);
        let n = p.next(&f, Err(unreachable())).expect("wait");
        assert!(matches!(n, Next::Wait { note: Some(_), .. }));
    }

    #[test]
    fn finished_answers_are_checked() {
        assert!(signed_in_session(approved()).is_ok());
        assert!(signed_in_session(linked()).is_err());
        let mut r = approved();
        r.session = None;
        assert!(signed_in_session(r).is_err());
        let mut r = approved();
        if let Some(s) = r.session.as_mut() {
            s.omni_account = "not-an-omni".into();
        }
        assert!(signed_in_session(r).is_err());

        let i = linked_identity(linked()).expect("identity");
        assert_eq!(i.identity_value, "bob@example.com");
        assert!(linked_identity(approved()).is_err());
    }

    #[test]
    fn authorization_urls_must_be_one_line_http() {
        assert_eq!(
            check_authorization_url(Some("https://accounts.example/auth?x=1&state=abc")),
            Ok("https://accounts.example/auth?x=1&state=abc")
        );
        for bad in [
            None,
            Some("javascript:alert(1)"),
            Some("https://a.example/\nEvil: 1"),
            Some("https://a.example/ x"),
            Some(&*format!("https://{}", "a".repeat(MAX_AUTHORIZATION_URL))),
        ] {
            assert!(check_authorization_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn inputs_are_checked_before_anything_is_sent() {
        assert_eq!(provider_name(" Google ").expect("ok"), "google");
        assert_eq!(provider_name("my-idp2").expect("ok"), "my-idp2");
        for bad in ["", "a_b", "a/b", &"x".repeat(33), "é"] {
            let e = provider_name(bad).expect_err(bad);
            assert!(e.to_string().contains("provider"), "{e}");
        }
        assert_eq!(
            email_address("  Alice@Example.COM ").expect("ok"),
            "alice@example.com"
        );
        let e = email_address("not an\naddress").expect_err("bad");
        assert!(!e.to_string().contains('\n'), "{e}");
        assert!(e.to_string().contains("name@example.com"), "{e}");
        assert_eq!(unlink_value("email", " Bob@Example.com"), "bob@example.com");
        assert_eq!(unlink_value("oauth2_google", "Sub-ABC"), "Sub-ABC");
    }

    const REQUEST_ID: &str = "rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr";

    fn started_json(url: Option<&str>) -> String {
        serde_json::to_string(&LoginStartResponse {
            request_id: REQUEST_ID.into(),
            expires_at: "2030-01-01T00:00:00Z".into(),
            authorization_url: url.map(str::to_owned),
        })
        .expect("json")
    }

    fn json_of(r: &LoginStatusResponse) -> String {
        serde_json::to_string(r).expect("json")
    }

    /// `login oidc` against a canned broker: start, one pending poll, the session.
    #[tokio::test]
    async fn oidc_login_starts_polls_and_saves_the_session() {
        let broker = crate::testutil::FakeServer::start(vec![
            (200, started_json(Some("https://idp.example/auth?state=s"))),
            (202, json_of(&pending())),
            (200, json_of(&approved())),
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        let url = broker.url.clone();
        let ctx = Context::for_test(dir.path(), Some(&url));
        let mut out = Vec::new();
        login_oidc(&ctx, "Google", 60, true, &mut out)
            .await
            .expect("signed in");
        let requests = broker.requests();
        assert!(
            requests[0].starts_with("POST /v1/auth/oidc/start ")
                && requests[0].ends_with(r#"{"provider":"google"}"#),
            "{}",
            requests[0]
        );
        for r in &requests[1..] {
            assert!(
                r.starts_with(&format!("GET /v1/auth/oidc/status/{REQUEST_ID} ")),
                "{r}"
            );
            assert!(!r.to_ascii_lowercase().contains("authorization:"), "{r}");
        }
        let printed: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(printed["omni_account"], OMNI);
        assert_eq!(printed["provider"], "google");
        assert!(printed["wallet"].is_null());
        let text = String::from_utf8_lossy(&out);
        assert!(
            !text.contains("tok") && !text.contains(REQUEST_ID),
            "{text}"
        );
        let saved = ctx
            .profile()
            .expect("profile")
            .require_session()
            .expect("saved");
        assert_eq!(saved.session_token.expose(), "tok");
        assert_eq!(saved.broker_url, url);
        assert!(!saved.is_agent());
    }

    /// `identities link-oidc`: the master's bearer on the start, the link reported.
    #[tokio::test]
    async fn oidc_link_sends_the_master_session() {
        let mut identity = linked();
        if let Some(i) = identity.identity.as_mut() {
            i.identity_type = "oauth2_google".into();
            i.identity_value = "subject-1".into();
        }
        let broker = crate::testutil::FakeServer::start(vec![
            (200, started_json(Some("https://idp.example/auth"))),
            (200, json_of(&identity)),
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = Context::for_test(dir.path(), None);
        let issued = approved().session.expect("session");
        ctx.profile()
            .expect("profile")
            .save_session(&SavedSession::from_issued(&broker.url, issued))
            .expect("save");
        let mut out = Vec::new();
        link_oidc(&ctx, "google", 60, false, &mut out)
            .await
            .expect("linked");
        let requests = broker.requests();
        assert!(
            requests[0].starts_with("POST /v1/identities/oidc ")
                && requests[0]
                    .to_ascii_lowercase()
                    .contains("authorization: bearer tok")
                && requests[0].ends_with(r#"{"provider":"google"}"#),
            "{}",
            requests[0]
        );
        assert!(requests[1].starts_with(&format!("GET /v1/auth/oidc/status/{REQUEST_ID} ")));
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("Linked oauth2_google subject-1 to master "),
            "{text}"
        );
    }

    /// A start answer without an authorization URL, or with a bad request id, is refused
    /// before any poll.
    #[tokio::test]
    async fn oidc_start_answers_are_checked() {
        for answer in [
            started_json(None),
            started_json(Some("https://a.example/\nx")),
            r#"{"request_id":"../../v1/x","expires_at":"e","authorization_url":"https://a"}"#
                .to_owned(),
        ] {
            let broker = crate::testutil::FakeServer::start(vec![(200, answer)]);
            let dir = tempfile::tempdir().expect("tempdir");
            let ctx = Context::for_test(dir.path(), Some(&broker.url));
            let e = login_oidc(&ctx, "google", 60, false, &mut Vec::new())
                .await
                .expect_err("refused");
            assert!(matches!(e, Error::BrokerProtocol { .. }), "{e:?}");
            assert_eq!(broker.requests().len(), 1);
            assert!(
                ctx.profile()
                    .expect("p")
                    .load_session()
                    .expect("l")
                    .is_none()
            );
        }
    }

    #[test]
    fn debug_output_never_shows_the_request_id() {
        let started = LoginStartResponse {
            request_id: "secret-request-id-value-0123456789".into(),
            expires_at: "x".into(),
            authorization_url: None,
        };
        assert!(!format!("{started:?}").contains("secret-request-id"));
    }
}
