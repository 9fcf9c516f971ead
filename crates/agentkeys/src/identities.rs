//! `agentkeys identities …`: a wallet master's linked identities (email addresses and OIDC
//! accounts), linked through the sign-in flow of [`crate::signin`].

use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;

use crate::client::{BrokerClient, LoginMethod, sanitize};
use crate::config::{Profile, SavedSession};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::keyfile;
use crate::output::{emit, profile_flag, table, to_json};
use crate::signin::*;
use agentkeys_types::api::LoginStatusResponse;
use agentkeys_types::api::{ChallengePurpose, LinkEmailRequest, LinkOidcRequest, WalletProof};

#[derive(Debug, Subcommand)]
pub enum IdentitiesCommand {
    /// List the identities linked to the signed-in master.
    List {
        /// Print the broker's JSON answer.
        #[arg(long)]
        json: bool,
    },

    /// Link an email address to the signed-in wallet master: after a fresh signature by the
    /// master's wallet, the broker mails a code to ADDRESS; type it at the prompt.
    LinkEmail {
        /// The email address to link.
        #[arg(value_name = "ADDRESS")]
        address: String,

        #[command(flatten)]
        step_up: StepUpArgs,

        #[command(flatten)]
        code: CodeArgs,

        /// Print the linked identity as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Link an account at an OpenID Connect provider to the signed-in wallet master: after a
    /// fresh signature by the master's wallet, open the printed URL in a browser and sign in
    /// there.
    LinkOidc {
        /// The provider's name on the broker (e.g. google).
        #[arg(value_name = "PROVIDER")]
        provider: String,

        #[command(flatten)]
        step_up: StepUpArgs,

        /// For a browser on another machine: the broker shows a code to type at the prompt.
        #[arg(long)]
        no_browser: bool,

        #[command(flatten)]
        code: CodeArgs,

        /// Print the linked identity as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Unlink an identity: signing in with it afterwards makes a separate master again, and the
    /// sessions obtained through it are revoked.
    Unlink {
        /// The identity's type, as listed: email or oauth2_<provider>.
        #[arg(value_name = "TYPE")]
        identity_type: String,

        /// The identity's value, as listed (the address, or the provider's subject).
        #[arg(value_name = "VALUE")]
        identity_value: String,
    },
}

/// A wallet signature that proves the signed-in master's wallet is at hand (linking).
#[derive(Debug, Clone, Args)]
pub struct StepUpArgs {
    /// The signed-in master's wallet key file: linking needs a fresh signature by it.
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,

    /// EIP-155 chain id placed in the message to sign.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub chain_id: u64,
}

/// Runs `agentkeys identities …`.
pub(crate) async fn run(
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
/// statement names exactly what is being done (`purpose`). The key must be the session's
/// wallet, and the message must say what the user asked for, or nothing is signed. `refused`
/// makes the command's error from a sentence.
pub(crate) async fn step_up(
    client: &BrokerClient,
    saved: &SavedSession,
    args: &StepUpArgs,
    purpose: ChallengePurpose,
    refused: fn(String) -> Error,
) -> Result<WalletProof> {
    let signer = keyfile::read(&args.key_file)?;
    let address = keyfile::address_of(&signer);
    let wallet = saved.wallet.as_deref().ok_or_else(|| {
        refused(
            "only a master signed in with a wallet can do this; run `agentkeys login wallet \
             --key-file FILE` first"
                .into(),
        )
    })?;
    if !wallet.eq_ignore_ascii_case(address.as_str()) {
        return Err(refused(format!(
            "{} is the key of {address}, but this session is wallet {}; pass the signed-in \
             wallet's key file",
            args.key_file.display(),
            sanitize(wallet, 64)
        )));
    }
    sign_wallet_challenge(client, &signer, &address, args.chain_id, Some(purpose)).await
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
            let wallet_proof =
                step_up(&client, &saved, step_up_args, purpose, Error::Linking).await?;
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
            let wallet_proof =
                step_up(&client, &saved, step_up_args, purpose, Error::Linking).await?;
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
