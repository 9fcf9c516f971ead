//! Sign-in by email and by OIDC provider (`agentkeys login email|oidc`), and a wallet master's
//! linked identities (`agentkeys identities …`).
//!
//! Both flows bind the sign-in to this command: it keeps a random verifier and sends only its
//! S256 hash at the start; the user then sees a one-time code (in the email, or through the
//! provider's redirect to this command's loopback listener, or on the broker's page with
//! `--no-browser`) and this command collects the session with both. The request id and the
//! verifier are kept in the profile (0600) until the sign-in is finished, so `--code` can
//! finish an interrupted one; neither is ever printed.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use agentkeys_types::OmniAccount;
use agentkeys_types::api::{
    ChallengePurpose, EmailStartRequest, IdentityInfo, LinkEmailRequest, LinkOidcRequest,
    LoginCollectRequest, LoginStartResponse, LoginStatus, LoginStatusResponse, OidcStartRequest,
    SessionIssued, WalletChallengeRequest, WalletProof,
};
use agentkeys_types::identity::{IDENTITY_EMAIL, canonical_email};
use agentkeys_types::login::{challenge_statement, code_challenge};
use agentkeys_types::pairing::normalize_code;
use alloy_signer::Signer;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::agents::{profile_flag, table};
use crate::cli::{CodeArgs, IdentitiesCommand, StepUpArgs};
use crate::client::{BrokerClient, LoginMethod, check_request_id, sanitize};
use crate::commands::{Context, emit, to_json};
use crate::config::{Profile, SavedSession};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::keyfile;
use crate::loopback::Loopback;

/// Longest authorization URL accepted from the broker.
const MAX_AUTHORIZATION_URL: usize = 8 * 1024;
/// The file (in the profile's directory, 0600) holding the sign-in being finished.
const PENDING_FILE: &str = "pending-login.json";

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
    fn fail(self, detail: String) -> Error {
        match self {
            Goal::SignIn => Error::SignIn(detail),
            Goal::Link => Error::Linking(detail),
        }
    }
}

/// A started sign-in, kept until it is collected: the request id and the verifier are this
/// command's proof that it started it.
#[derive(Clone, Serialize, Deserialize)]
struct Pending {
    broker_url: String,
    method: String,
    goal: Goal,
    /// The email address, or the provider's name.
    subject: String,
    request_id: String,
    code_verifier: String,
    expires_at: String,
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

fn pending_path(profile: &Profile) -> PathBuf {
    profile.dir().join(PENDING_FILE)
}

fn save_pending(profile: &Profile, pending: &Pending) -> Result<()> {
    profile.save_state(PENDING_FILE, pending, "the pending sign-in")
}

fn load_pending(profile: &Profile) -> Result<Option<Pending>> {
    profile.load_state(PENDING_FILE)
}

fn forget_pending(profile: &Profile) -> Result<()> {
    fsutil::remove_if_exists(&pending_path(profile)).map(drop)
}

/// A fresh RFC 7636 verifier: 256 random bits, base64url.
fn new_verifier() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn method_name(method: LoginMethod) -> &'static str {
    match method {
        LoginMethod::Email => "email",
        LoginMethod::Oidc => "oidc",
    }
}

// ---- where the code comes from -------------------------------------------------------------

/// Reads one code from standard input (a terminal, or a pipe), within `timeout`.
async fn prompt_code(goal: Goal, timeout: Duration, again_with_code: &str) -> Result<String> {
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
fn typed_code(goal: Goal, raw: &str) -> Result<String> {
    normalize_code(raw).ok_or_else(|| {
        goal.fail(format!(
            "{:?} is not a code: codes are 8 letters and digits, e.g. ABCD-EFGH",
            sanitize(raw, 40)
        ))
    })
}

/// Collects with the code; a wrong typed code may be typed again while the broker allows it.
async fn collect(
    client: &BrokerClient,
    method: LoginMethod,
    pending: &Pending,
    mut code: String,
    retype: Option<(Duration, &str)>,
) -> Result<LoginStatusResponse> {
    loop {
        let req = LoginCollectRequest {
            request_id: pending.request_id.clone(),
            code: typed_code(pending.goal, &code)?,
            code_verifier: pending.code_verifier.clone(),
        };
        match client.login_collect(method, &req).await {
            Err(Error::Broker {
                status: 422,
                ref kind,
                ref message,
            }) if kind == "wrong_code" && retype.is_some() && !message.contains("no more") => {
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

/// One sign-in or link as this command runs it.
struct Flow<'a> {
    profile: &'a Profile,
    client: &'a BrokerClient,
    method: LoginMethod,
    goal: Goal,
    /// The email address, or the provider's name.
    subject: &'a str,
    /// The command that starts it over, and the one that finishes it with a code.
    again: String,
    with_code: String,
    timeout: Duration,
}

/// How the code of a started request reaches this command.
enum Delivery {
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
    fn new(
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
    async fn run(
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
    fn resume(&self) -> Result<Pending> {
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
    fn keep(&self, code_verifier: String, started: &LoginStartResponse) -> Result<Pending> {
        check_started(self.client, started)?;
        let pending = Pending {
            broker_url: self.client.base_url().to_owned(),
            method: method_name(self.method).to_owned(),
            goal: self.goal,
            subject: self.subject.to_owned(),
            request_id: started.request_id.clone(),
            code_verifier,
            expires_at: sanitize(&started.expires_at, 64),
        };
        save_pending(self.profile, &pending)?;
        Ok(pending)
    }

    /// Waits for the code: typed after the mail, from the loopback redirect, or typed from
    /// the broker's page.
    async fn receive(&self, delivery: Delivery) -> Result<String> {
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
fn provider_url(client: &BrokerClient, started: &LoginStartResponse) -> Result<String> {
    check_authorization_url(started.authorization_url.as_deref())
        .map(str::to_owned)
        .map_err(|why| protocol(client, why))
}

async fn loopback_unless(no_browser: bool) -> Result<Option<Loopback>> {
    if no_browser {
        Ok(None)
    } else {
        Loopback::bind().await.map(Some)
    }
}

pub(crate) async fn login_email(
    ctx: &Context,
    address: &str,
    code: &CodeArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let email = email_address(address)?;
    let profile = ctx.profile()?;
    let client = ctx.broker_for_login(&profile)?;
    let again = format!("agentkeys {}login email {email}", profile_flag(&profile));
    let flow = Flow::new(
        &profile,
        &client,
        LoginMethod::Email,
        Goal::SignIn,
        &email,
        again,
        code,
    );
    let done = flow
        .run(code, async |code_challenge| {
            let started = client
                .email_start(&EmailStartRequest {
                    email: email.clone(),
                    code_challenge,
                })
                .await?;
            let said = format!(
                "A sign-in code was sent to {email}. Type it here to sign in to {} (it expires \
                 at {}); Ctrl-C cancels, `{}` finishes later.",
                client.base_url(),
                sanitize(&started.expires_at, 64),
                flow.with_code
            );
            Ok((started, Delivery::Mail(said)))
        })
        .await?;
    finish_login(&client, &profile, done, Proof::Email(&email), json, out)
}

pub(crate) async fn login_oidc(
    ctx: &Context,
    provider: &str,
    no_browser: bool,
    code: &CodeArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let provider = provider_name(provider)?;
    let profile = ctx.profile()?;
    let client = ctx.broker_for_login(&profile)?;
    let again = format!("agentkeys {}login oidc {provider}", profile_flag(&profile));
    let flow = Flow::new(
        &profile,
        &client,
        LoginMethod::Oidc,
        Goal::SignIn,
        &provider,
        again,
        code,
    );
    let done = flow
        .run(code, async |code_challenge| {
            let loopback = loopback_unless(no_browser).await?;
            let started = client
                .oidc_start(&OidcStartRequest {
                    provider: provider.clone(),
                    code_challenge,
                    redirect_uri: loopback.as_ref().map(|l| l.redirect_uri().to_owned()),
                })
                .await?;
            let url = provider_url(&client, &started)?;
            let what = format!("sign in with {provider}");
            Ok((
                started,
                Delivery::Provider {
                    url,
                    what,
                    loopback,
                },
            ))
        })
        .await?;
    finish_login(&client, &profile, done, Proof::Oidc(&provider), json, out)
}

fn finish_login(
    client: &BrokerClient,
    profile: &Profile,
    done: LoginStatusResponse,
    proof: Proof<'_>,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let issued = signed_in_session(done).map_err(|why| protocol(client, why))?;
    let saved = SavedSession::from_issued(client.base_url(), issued);
    profile.save_session(&saved)?;
    forget_pending(profile)?;

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
            step_up,
            code,
            json,
        } => link_email(ctx, &address, &step_up, &code, json, out).await,
        IdentitiesCommand::LinkOidc {
            provider,
            step_up,
            no_browser,
            code,
            json,
        } => link_oidc(ctx, &provider, &step_up, no_browser, &code, json, out).await,
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
            "No linked identities. Link one with `agentkeys identities link-email ADDRESS \
             --key-file FILE` or `agentkeys identities link-oidc PROVIDER --key-file FILE`.\n",
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

/// The step-up: a fresh signature by the signed-in master's own wallet over a challenge whose
/// statement names exactly what is being linked. The key must be the session's wallet, and the
/// message must say what the user asked for, or nothing is signed.
async fn step_up(
    client: &BrokerClient,
    saved: &SavedSession,
    args: &StepUpArgs,
    purpose: ChallengePurpose,
) -> Result<WalletProof> {
    let signer = keyfile::read(&args.key_file)?;
    let address = keyfile::address_of(&signer);
    let wallet = saved.wallet.as_deref().ok_or_else(|| {
        Error::Linking(
            "only a master signed in with a wallet can link identities; run `agentkeys login \
             wallet --key-file FILE` first"
                .into(),
        )
    })?;
    if !wallet.eq_ignore_ascii_case(address.as_str()) {
        return Err(Error::Linking(format!(
            "{} is the key of {address}, but this session is wallet {}; pass the signed-in \
             wallet's key file",
            args.key_file.display(),
            sanitize(wallet, 64)
        )));
    }
    let challenge = client
        .wallet_challenge(&WalletChallengeRequest {
            address: address.to_string(),
            chain_id: Some(args.chain_id),
            purpose: Some(purpose.clone()),
        })
        .await?;
    let message = crate::siwe_check::check_siwe_message(
        &challenge.message,
        &address,
        client.base_url(),
        args.chain_id,
        time::OffsetDateTime::now_utc(),
    )?;
    let expected = challenge_statement(Some(&purpose));
    if message.statement.as_deref() != Some(expected.as_str()) {
        return Err(protocol(
            client,
            &format!("refusing to sign: the message does not say \"{expected}\""),
        ));
    }
    let signature = signer
        .sign_message(challenge.message.as_bytes())
        .await
        .map_err(|e| Error::Signing(e.to_string()))?;
    Ok(WalletProof {
        challenge_id: challenge.challenge_id,
        signature: signature.to_string(),
    })
}

async fn link_email(
    ctx: &Context,
    address: &str,
    step_up_args: &StepUpArgs,
    code: &CodeArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let email = email_address(address)?;
    let (profile, saved, client) = ctx.session()?;
    let again = format!(
        "agentkeys {}identities link-email {email} --key-file {}",
        profile_flag(&profile),
        step_up_args.key_file.display()
    );
    let flow = Flow::new(
        &profile,
        &client,
        LoginMethod::Email,
        Goal::Link,
        &email,
        again,
        code,
    );
    let done = flow
        .run(code, async |code_challenge| {
            let purpose = ChallengePurpose::LinkEmail(email.clone());
            let wallet_proof = step_up(&client, &saved, step_up_args, purpose).await?;
            let started = client
                .link_email_start(
                    &saved.session_token,
                    &LinkEmailRequest {
                        email: email.clone(),
                        code_challenge,
                        wallet_proof,
                    },
                )
                .await?;
            let said = format!(
                "A link code was sent to {email}. Type it here to link the address to master {} \
                 (it expires at {}); Ctrl-C cancels, `{}` finishes later.",
                saved.omni_account,
                sanitize(&started.expires_at, 64),
                flow.with_code
            );
            Ok((started, Delivery::Mail(said)))
        })
        .await?;
    finish_link(&client, &profile, done, &saved, json, out)
}

async fn link_oidc(
    ctx: &Context,
    provider: &str,
    step_up_args: &StepUpArgs,
    no_browser: bool,
    code: &CodeArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let provider = provider_name(provider)?;
    let (profile, saved, client) = ctx.session()?;
    let again = format!(
        "agentkeys {}identities link-oidc {provider} --key-file {}",
        profile_flag(&profile),
        step_up_args.key_file.display()
    );
    let flow = Flow::new(
        &profile,
        &client,
        LoginMethod::Oidc,
        Goal::Link,
        &provider,
        again,
        code,
    );
    let done = flow
        .run(code, async |code_challenge| {
            let purpose = ChallengePurpose::LinkOidc(provider.clone());
            let wallet_proof = step_up(&client, &saved, step_up_args, purpose).await?;
            let loopback = loopback_unless(no_browser).await?;
            let started = client
                .link_oidc_start(
                    &saved.session_token,
                    &LinkOidcRequest {
                        provider: provider.clone(),
                        code_challenge,
                        redirect_uri: loopback.as_ref().map(|l| l.redirect_uri().to_owned()),
                        wallet_proof,
                    },
                )
                .await?;
            let url = provider_url(&client, &started)?;
            let what = format!(
                "sign in with {provider} and link that account to master {}",
                saved.omni_account
            );
            Ok((
                started,
                Delivery::Provider {
                    url,
                    what,
                    loopback,
                },
            ))
        })
        .await?;
    finish_link(&client, &profile, done, &saved, json, out)
}

fn finish_link(
    client: &BrokerClient,
    profile: &Profile,
    done: LoginStatusResponse,
    saved: &SavedSession,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let identity = linked_identity(done).map_err(|why| protocol(client, why))?;
    forget_pending(profile)?;
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
    let result = client
        .unlink_identity(&saved.session_token, identity_type, &value)
        .await?;
    emit(
        out,
        &format!(
            "Unlinked {} {}; signing in with it now makes a master of its own. Sessions obtained \
             through it, now revoked: {}.\n",
            sanitize(identity_type, 64),
            sanitize(&value, 254),
            result.sessions_revoked
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const OMNI: &str = "abababababababababababababababababababababababababababababababab";

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
        assert_eq!(
            typed_code(Goal::SignIn, " abcd efgh ").expect("ok"),
            "ABCDEFGH"
        );
        let e = typed_code(Goal::SignIn, "12345").expect_err("bad");
        assert!(e.to_string().contains("ABCD-EFGH"), "{e}");
    }

    #[test]
    fn verifiers_are_rfc7636_and_fresh() {
        let v = new_verifier();
        assert!(agentkeys_types::login::valid_verifier(&v), "{v}");
        assert_ne!(v, new_verifier());
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

    /// A started sign-in is kept (0600) with its verifier, `--code` finishes it with the code
    /// and the verifier in a POST body (nothing secret in a URL), and it is then forgotten.
    #[tokio::test]
    async fn code_finishes_the_pending_sign_in_with_the_verifier() {
        let broker = crate::testutil::FakeServer::start(vec![(
            200,
            serde_json::to_string(&approved()).expect("json"),
        )]);
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = Context::for_test(dir.path(), Some(&broker.url));
        let profile = ctx.profile().expect("profile");
        let client = ctx.broker_for_login(&profile).expect("client");
        let verifier = new_verifier();
        let started: LoginStartResponse =
            serde_json::from_str(&started_json(None)).expect("started");
        let flow = Flow {
            profile: &profile,
            client: &client,
            method: LoginMethod::Email,
            goal: Goal::SignIn,
            subject: "a@example.com",
            again: "agentkeys login email a@example.com".into(),
            with_code: String::new(),
            timeout: Duration::from_secs(5),
        };
        flow.keep(verifier.clone(), &started).expect("pending");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(pending_path(&profile))
                .expect("meta")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // Another address has nothing pending.
        let args = |code: &str| CodeArgs {
            code: Some(code.into()),
            timeout: crate::cli::TimeoutArg { secs: 5 },
        };
        let e = login_email(
            &ctx,
            "b@example.com",
            &args("ABCD-EFGH"),
            true,
            &mut Vec::new(),
        )
        .await
        .expect_err("nothing pending");
        assert!(e.to_string().contains("no unfinished email sign-in"), "{e}");
        let mut out = Vec::new();
        login_email(&ctx, "a@example.com", &args("abcd-efgh"), true, &mut out)
            .await
            .expect("signed in");
        let requests = broker.requests();
        assert_eq!(requests.len(), 1);
        assert!(
            requests[0].starts_with("POST /v1/auth/email/collect "),
            "{}",
            requests[0]
        );
        let body: serde_json::Value =
            serde_json::from_str(requests[0].rsplit("\r\n\r\n").next().unwrap_or_default())
                .expect("body");
        assert_eq!(body["request_id"], REQUEST_ID);
        assert_eq!(body["code"], "ABCDEFGH");
        assert_eq!(body["code_verifier"], verifier.as_str());
        assert!(load_pending(&profile).expect("load").is_none());
        let printed: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(printed["omni_account"], OMNI);
        let text = String::from_utf8_lossy(&out);
        assert!(
            !text.contains(REQUEST_ID) && !text.contains(&verifier),
            "{text}"
        );
    }

    /// A start answer without an authorization URL, or with a bad request id, is refused.
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
            let code = CodeArgs {
                code: None,
                timeout: crate::cli::TimeoutArg { secs: 5 },
            };
            let e = login_oidc(&ctx, "google", true, &code, false, &mut Vec::new())
                .await
                .expect_err("refused");
            assert!(matches!(e, Error::BrokerProtocol { .. }), "{e:?}");
            let requests = broker.requests();
            assert_eq!(requests.len(), 1);
            assert!(
                requests[0].contains(r#""code_challenge":""#),
                "{}",
                requests[0]
            );
            assert!(
                !requests[0].contains("redirect_uri\":\"http"),
                "{}",
                requests[0]
            );
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
    fn debug_output_never_shows_the_request_id_or_verifier() {
        let started = LoginStartResponse {
            request_id: "secret-request-id-value-0123456789".into(),
            expires_at: "x".into(),
            authorization_url: None,
        };
        assert!(!format!("{started:?}").contains("secret-request-id"));
        let pending = Pending {
            broker_url: "u".into(),
            method: "email".into(),
            goal: Goal::SignIn,
            subject: "a@example.com".into(),
            request_id: "secret-request-id".into(),
            code_verifier: "secret-verifier".into(),
            expires_at: "x".into(),
        };
        let debug = format!("{pending:?}");
        assert!(!debug.contains("secret"), "{debug}");
    }
}
