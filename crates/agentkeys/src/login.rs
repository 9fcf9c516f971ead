//! `agentkeys login …`: sign in with a wallet key, an emailed code or an OIDC provider, and save
//! the session in the profile.

use clap::Subcommand;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::client::{BrokerClient, LoginMethod, sanitize};
use crate::config::{Profile, SavedSession};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::keyfile;
use crate::output::{emit, profile_flag, to_json};
use crate::signin::*;
use agentkeys_types::api::{EmailStartRequest, OidcStartRequest};
use agentkeys_types::api::{LoginStatusResponse, WalletVerifyRequest};

#[derive(Debug, Subcommand)]
pub enum LoginCommand {
    /// Sign in with a wallet key: the broker's EIP-4361 (SIWE) message is signed with EIP-191
    /// personal_sign.
    Wallet {
        /// Key file written by `agentkeys key generate` (must be mode 0600).
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,

        /// EIP-155 chain id placed in the sign-in message.
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u64).range(1..))]
        chain_id: u64,

        /// Print the result as JSON (never includes the session token).
        #[arg(long)]
        json: bool,
    },

    /// Sign in by email: the broker mails a one-time code to ADDRESS; type it at the prompt
    /// and the session is saved here.
    ///
    /// An address linked to a wallet master (`agentkeys identities link-email`) signs in as that
    /// master; any other address is a master of its own, without a wallet.
    Email {
        /// The email address to send the code to.
        #[arg(value_name = "ADDRESS")]
        address: String,

        #[command(flatten)]
        code: CodeArgs,

        /// Print the result as JSON (never includes the session token).
        #[arg(long)]
        json: bool,
    },

    /// Sign in with an OpenID Connect provider configured on the broker: open the printed URL
    /// in a browser on this machine and sign in there; the broker sends the browser back to
    /// this command (RFC 8252 loopback redirect) and the session is saved here.
    Oidc {
        /// The provider's name on the broker (e.g. google).
        #[arg(value_name = "PROVIDER")]
        provider: String,

        /// For a browser on another machine: the broker shows a code to type at the prompt
        /// instead of redirecting to this machine.
        #[arg(long)]
        no_browser: bool,

        #[command(flatten)]
        code: CodeArgs,

        /// Print the result as JSON (never includes the session token).
        #[arg(long)]
        json: bool,
    },
}

/// Runs `agentkeys login …`.
pub(crate) async fn run(ctx: &Context, command: LoginCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        LoginCommand::Wallet {
            key_file,
            chain_id,
            json,
        } => login_wallet(ctx, &key_file, chain_id, json, out).await,
        LoginCommand::Email {
            address,
            code,
            json,
        } => login_email(ctx, &address, &code, json, out).await,
        LoginCommand::Oidc {
            provider,
            no_browser,
            code,
            json,
        } => login_oidc(ctx, &provider, no_browser, &code, json, out).await,
    }
}

async fn login_wallet(
    ctx: &Context,
    key_file: &Path,
    chain_id: u64,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let signer = keyfile::read(key_file)?;
    let address = keyfile::address_of(&signer);
    let profile = ctx.profile()?;
    let client = ctx.broker_for_login(&profile)?;

    let proof = sign_wallet_challenge(&client, &signer, &address, chain_id, None).await?;
    let issued = client
        .wallet_verify(&WalletVerifyRequest {
            challenge_id: proof.challenge_id,
            signature: proof.signature,
        })
        .await?;

    if let Some(w) = &issued.wallet
        && !w.eq_ignore_ascii_case(address.as_str())
    {
        return Err(Error::BrokerProtocol {
            url: client.base_url().to_owned(),
            detail: format!("it signed in wallet {w}, but the key is for {address}"),
        });
    }
    let saved = SavedSession::from_issued(client.base_url(), issued);
    profile.save_session(&saved)?;

    let wallet = saved.wallet.clone().unwrap_or_else(|| address.to_string());
    if json {
        emit(
            out,
            &to_json(&serde_json::json!({
                "wallet": wallet,
                "omni_account": saved.omni_account,
                "expires_at": saved.expires_at,
                "broker_url": saved.broker_url,
                "profile": profile.name(),
            }))?,
        )
    } else {
        emit(
            out,
            &format!(
                "Signed in to {} (profile {}).\nwallet:       {}\nomni_account: {}\nexpires_at:   {}\n",
                saved.broker_url,
                profile.name(),
                wallet,
                saved.omni_account,
                saved.expires_at
            ),
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use agentkeys_types::api::{IdentityInfo, LoginStartResponse, LoginStatus, SessionIssued};

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
            timeout: crate::signin::TimeoutArg { secs: 5 },
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
                timeout: crate::signin::TimeoutArg { secs: 5 },
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
