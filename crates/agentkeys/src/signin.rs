//! Sign-in by email and by OIDC provider (`agentkeys login email|oidc`), and a wallet master's
//! linked identities (`agentkeys identities …`).
//!
//! Both flows bind the sign-in to this command: it keeps a random verifier and sends only its
//! S256 hash at the start; the user then sees a one-time code (in the email, or through the
//! provider's redirect to this command's loopback listener, or on the broker's page with
//! `--no-browser`) and this command collects the session with both. The request id and the
//! verifier are kept in the profile (0600) until the sign-in is finished, so `--code` can
//! finish an interrupted one; neither is ever printed.
//!
//! This is the machinery both `agentkeys login email|oidc` and `agentkeys identities
//! link-email|link-oidc` run. A leaf: imports no command module.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use agentkeys_types::OmniAccount;
use agentkeys_types::api::{
    IdentityInfo, LoginCollectRequest, LoginStartResponse, LoginStatus, LoginStatusResponse,
    SessionIssued,
};
use agentkeys_types::identity::{IDENTITY_EMAIL, canonical_email};
use agentkeys_types::login::code_challenge;
use agentkeys_types::pairing::normalize_code;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use agentkeys_types::WalletAddress;
use agentkeys_types::api::{ChallengePurpose, WalletChallengeRequest, WalletProof};
use agentkeys_types::login::challenge_statement;

use crate::client::{BrokerClient, LoginMethod, check_request_id, sanitize};
use crate::config::Profile;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::keyfile::WalletKey;
use crate::loopback::Loopback;
use crate::secret::{ExposeSecret, SecretString};
use crate::siwe_check::check_siwe_message;
use clap::Args;

/// The same bound for sign-in and link requests.
pub(crate) const MAX_LOGIN_TIMEOUT: u64 = 3600;

/// How long to wait for the user to finish in the browser.
#[derive(Debug, Clone, Copy, Args)]
pub struct TimeoutArg {
    /// Give up after this many seconds without the code (or the provider's redirect back to
    /// this command).
    #[arg(long = "timeout", value_name = "SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=MAX_LOGIN_TIMEOUT))]
    pub secs: u64,
}

/// How the one-time code of an email or OIDC sign-in (or link) reaches this command.
#[derive(Debug, Clone, Args)]
pub struct CodeArgs {
    /// Finish the sign-in (or link) this profile started last with this code, e.g. after the
    /// prompt was interrupted; nothing new is started.
    #[arg(long, value_name = "CODE")]
    pub code: Option<String>,

    #[command(flatten)]
    pub timeout: TimeoutArg,
}

/// Longest authorization URL accepted from the broker.
pub(crate) const MAX_AUTHORIZATION_URL: usize = 8 * 1024;
/// The file (in the profile's directory, 0600) holding the sign-in being finished.
pub(crate) const PENDING_FILE: &str = "pending-login.json";

// ---- the sign-in in progress ---------------------------------------------------------------

/// What this sign-in is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Goal {
    /// A session.
    SignIn,
    /// A linked identity.
    Link,
}

impl Goal {
    pub(crate) fn fail(self, detail: String) -> Error {
        match self {
            Goal::SignIn => Error::SignIn(detail),
            Goal::Link => Error::Linking(detail),
        }
    }
}

/// A started sign-in, kept until it is collected: the request id and the verifier are this
/// command's proof that it started it.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub(crate) broker_url: String,
    pub(crate) method: String,
    pub(crate) goal: Goal,
    /// The email address, or the provider's name.
    pub(crate) subject: String,
    #[serde(with = "crate::secret::serde_str")]
    pub(crate) request_id: SecretString,
    #[serde(with = "crate::secret::serde_str")]
    pub(crate) code_verifier: SecretString,
    pub(crate) expires_at: String,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("method", &self.method)
            .field("goal", &self.goal)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

pub(crate) fn pending_path(profile: &Profile) -> PathBuf {
    profile.dir().join(PENDING_FILE)
}

pub(crate) fn save_pending(profile: &Profile, pending: &Pending) -> Result<()> {
    profile.save_state(PENDING_FILE, pending, "the pending sign-in")
}

pub(crate) fn load_pending(profile: &Profile) -> Result<Option<Pending>> {
    profile.load_state(PENDING_FILE)
}

pub(crate) fn forget_pending(profile: &Profile) -> Result<()> {
    fsutil::remove_if_exists(&pending_path(profile)).map(drop)
}

/// A fresh RFC 7636 verifier: 256 random bits, base64url.
pub(crate) fn new_verifier() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn method_name(method: LoginMethod) -> &'static str {
    match method {
        LoginMethod::Email => "email",
        LoginMethod::Oidc => "oidc",
    }
}

// ---- where the code comes from -------------------------------------------------------------

/// Reads one code from standard input (a terminal, or a pipe), within `timeout`.
pub(crate) async fn prompt_code(
    goal: Goal,
    timeout: Duration,
    again_with_code: &str,
) -> Result<String> {
    eprint!("Code: ");
    let _ = std::io::stderr().flush();
    // A blocking read on its own thread: a timeout leaves it waiting, and the process exits.
    let read = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|n| (n, line))
    });
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(goal.fail(format!(
            "no code was typed within {} s; finish with `{again_with_code}` before the request \
             expires",
            timeout.as_secs()
        ))),
        Ok(Err(e)) => Err(goal.fail(format!("cannot read the code: {e}"))),
        Ok(Ok(Err(e))) => Err(goal.fail(format!("cannot read the code: {e}"))),
        Ok(Ok(Ok((0, _)))) => Err(goal.fail(format!(
            "no code was typed; finish with `{again_with_code}` before the request expires"
        ))),
        Ok(Ok(Ok((_, line)))) => Ok(line.trim().to_owned()),
    }
}

/// The code as the broker wants it, or a usage error that says what a code looks like.
pub(crate) fn typed_code(goal: Goal, raw: &str) -> Result<String> {
    normalize_code(raw).ok_or_else(|| {
        goal.fail(format!(
            "{:?} is not a code: codes are 8 letters and digits, e.g. ABCD-EFGH",
            sanitize(raw, 40)
        ))
    })
}

/// Collects with the code; a wrong typed code may be typed again while the broker allows it.
pub(crate) async fn collect(
    client: &BrokerClient,
    method: LoginMethod,
    pending: &Pending,
    mut code: String,
    retype: Option<(Duration, &str)>,
) -> Result<LoginStatusResponse> {
    loop {
        let req = LoginCollectRequest {
            request_id: pending.request_id.expose_secret().to_owned(),
            code: typed_code(pending.goal, &code)?,
            code_verifier: pending.code_verifier.expose_secret().to_owned(),
        };
        match client.login_collect(method, &req).await {
            Err(Error::Broker {
                status: 422,
                ref kind,
                ref message,
            }) if agentkeys_types::ErrorKind::parse(kind)
                == agentkeys_types::ErrorKind::WrongCode
                && retype.is_some()
                && !message.contains("no more") =>
            {
                eprintln!("agentkeys: {message}");
                let (timeout, again) = retype.unwrap_or((Duration::ZERO, ""));
                code = prompt_code(pending.goal, timeout, again).await?;
            }
            Err(Error::Broker {
                status: 409,
                message,
                ..
            }) => return Err(pending.goal.fail(message)),
            Err(Error::Broker { status: 404, .. }) => {
                return Err(pending.goal.fail(
                    "the broker no longer knows this request (it expired or had too many wrong \
                     codes); start again"
                        .into(),
                ));
            }
            other => return other,
        }
    }
}

/// Asks the broker for a wallet challenge for `purpose` (none: a sign-in) and signs it with
/// `signer`, but only a SIWE message for the broker at this URL, this key and chain, valid now
/// (a relay must not get a signature it can use at the broker it relays), whose statement says
/// exactly what was asked for. The one place the CLI signs a wallet challenge: `login wallet`
/// and every step-up.
pub(crate) async fn sign_wallet_challenge(
    client: &BrokerClient,
    signer: &WalletKey,
    address: &WalletAddress,
    chain_id: u64,
    purpose: Option<ChallengePurpose>,
) -> Result<WalletProof> {
    let expected = challenge_statement(purpose.as_ref());
    let sign_in = purpose.is_none();
    let challenge = client
        .wallet_challenge(&WalletChallengeRequest {
            address: address.to_string(),
            chain_id: Some(chain_id),
            purpose,
        })
        .await?;
    let message = check_siwe_message(
        &challenge.message,
        address,
        client.base_url(),
        chain_id,
        time::OffsetDateTime::now_utc(),
    )?;
    if message.statement.as_deref() != Some(expected.as_str()) {
        return Err(protocol(
            client,
            &if sign_in {
                "refusing to sign: the message is not a sign-in".to_owned()
            } else {
                format!("refusing to sign: the message does not say \"{expected}\"")
            },
        ));
    }
    let signature = signer
        .sign_message(challenge.message.as_bytes())
        .map_err(|e| Error::Signing(e.to_string()))?;
    Ok(WalletProof {
        challenge_id: challenge.challenge_id,
        signature: signature.to_string(),
    })
}

// ---- checks on what the broker says --------------------------------------------------------

pub(crate) fn protocol(client: &BrokerClient, detail: &str) -> Error {
    Error::BrokerProtocol {
        url: client.base_url().to_owned(),
        detail: detail.to_owned(),
    }
}

/// The request id must be a token that is safe in a URL path (it is a secret: never shown).
pub(crate) fn check_started(client: &BrokerClient, started: &LoginStartResponse) -> Result<()> {
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
pub(crate) enum Proof<'a> {
    Email(&'a str),
    Oidc(&'a str),
}

/// One sign-in or link as this command runs it.
pub(crate) struct Flow<'a> {
    pub(crate) profile: &'a Profile,
    pub(crate) client: &'a BrokerClient,
    pub(crate) method: LoginMethod,
    pub(crate) goal: Goal,
    /// The email address, or the provider's name.
    pub(crate) subject: &'a str,
    /// The command that starts it over, and the one that finishes it with a code.
    pub(crate) again: String,
    pub(crate) with_code: String,
    pub(crate) timeout: Duration,
}

/// How the code of a started request reaches this command.
pub(crate) enum Delivery {
    /// By mail: say this, then ask for the code.
    Mail(String),
    /// Through the provider's sign-in at this URL: back to the loopback listener, or (none)
    /// typed from the broker's page. `what` completes "Open this URL … to".
    Provider {
        url: String,
        what: String,
        loopback: Option<Loopback>,
    },
}

impl<'a> Flow<'a> {
    /// `again` is the command that starts it over; finishing with a code adds `--code` to it
    /// (and, for a provider's flow, `--no-browser`, since the code then comes from its page).
    pub(crate) fn new(
        profile: &'a Profile,
        client: &'a BrokerClient,
        method: LoginMethod,
        goal: Goal,
        subject: &'a str,
        again: String,
        code: &CodeArgs,
    ) -> Self {
        let with_code = match method {
            LoginMethod::Email => format!("{again} --code CODE"),
            LoginMethod::Oidc => format!("{again} --no-browser --code CODE"),
        };
        Flow {
            profile,
            client,
            method,
            goal,
            subject,
            again,
            with_code,
            timeout: Duration::from_secs(code.timeout.secs),
        }
    }

    /// Finishes the pending request with `--code`, or starts a new one with `start` (given the
    /// S256 challenge of a fresh verifier) and waits for its code; then collects it.
    pub(crate) async fn run(
        &self,
        code: &CodeArgs,
        start: impl AsyncFnOnce(String) -> Result<(LoginStartResponse, Delivery)>,
    ) -> Result<LoginStatusResponse> {
        let (pending, typed) = match &code.code {
            Some(typed) => (self.resume()?, typed.clone()),
            None => {
                let verifier = new_verifier();
                let (started, delivery) = start(code_challenge(&verifier)).await?;
                let pending = self.keep(verifier, &started)?;
                (pending, self.receive(delivery).await?)
            }
        };
        // A code given with --code is not asked for again.
        let retype = code
            .code
            .is_none()
            .then_some((self.timeout, self.with_code.as_str()));
        collect(self.client, self.method, &pending, typed, retype).await
    }

    /// The pending request `--code` finishes: the last one this profile started, if it is for
    /// the same broker, method, goal and subject.
    pub(crate) fn resume(&self) -> Result<Pending> {
        let wanted = method_name(self.method);
        match load_pending(self.profile)? {
            Some(p)
                if p.broker_url == self.client.base_url()
                    && p.method == wanted
                    && p.goal == self.goal
                    && p.subject == self.subject =>
            {
                Ok(p)
            }
            _ => Err(self.goal.fail(format!(
                "profile `{}` has no unfinished {wanted} {} for {} at {}; run `{}` (without \
                 --code) to start one",
                self.profile.name(),
                match self.goal {
                    Goal::SignIn => "sign-in",
                    Goal::Link => "link",
                },
                self.subject,
                self.client.base_url(),
                self.again
            ))),
        }
    }

    /// Checks the start's answer and keeps the request until it is collected.
    pub(crate) fn keep(
        &self,
        code_verifier: String,
        started: &LoginStartResponse,
    ) -> Result<Pending> {
        check_started(self.client, started)?;
        let pending = Pending {
            broker_url: self.client.base_url().to_owned(),
            method: method_name(self.method).to_owned(),
            goal: self.goal,
            subject: self.subject.to_owned(),
            request_id: SecretString::from(started.request_id.as_str()),
            code_verifier: SecretString::from(code_verifier),
            expires_at: sanitize(&started.expires_at, 64),
        };
        save_pending(self.profile, &pending)?;
        Ok(pending)
    }

    /// Waits for the code: typed after the mail, from the loopback redirect, or typed from
    /// the broker's page.
    pub(crate) async fn receive(&self, delivery: Delivery) -> Result<String> {
        let timeout = self.timeout;
        match delivery {
            Delivery::Mail(said) => {
                eprintln!("{said}");
                prompt_code(self.goal, timeout, &self.with_code).await
            }
            Delivery::Provider {
                url,
                what,
                loopback: Some(loopback),
            } => {
                eprintln!(
                    "Open this URL in a browser on this machine to {what}:\n{url}\nWaiting up to \
                     {} s for the browser to come back here; Ctrl-C cancels.",
                    timeout.as_secs()
                );
                tokio::time::timeout(timeout, loopback.wait_for_code())
                    .await
                    .map_err(|_| {
                        self.goal.fail(format!(
                            "the browser did not come back within {} s; start again, or with \
                             --no-browser type the code the broker shows",
                            timeout.as_secs()
                        ))
                    })?
            }
            Delivery::Provider {
                url,
                what,
                loopback: None,
            } => {
                eprintln!(
                    "Open this URL in a browser (on any device) to {what}, then type the code \
                     the broker shows there:\n{url}"
                );
                prompt_code(self.goal, timeout, &self.with_code).await
            }
        }
    }
}

/// The provider's URL from a start's answer, checked.
pub(crate) fn provider_url(client: &BrokerClient, started: &LoginStartResponse) -> Result<String> {
    check_authorization_url(started.authorization_url.as_deref())
        .map(str::to_owned)
        .map_err(|why| protocol(client, why))
}

pub(crate) async fn loopback_unless(no_browser: bool) -> Result<Option<Loopback>> {
    if no_browser {
        Ok(None)
    } else {
        Loopback::bind().await.map(Some)
    }
}

/// The value to send for an unlink: email addresses in their canonical form, as listed.
pub(crate) fn unlink_value(identity_type: &str, identity_value: &str) -> String {
    if identity_type == IDENTITY_EMAIL {
        identity_value.trim().to_lowercase()
    } else {
        identity_value.to_owned()
    }
}
