//! What each subcommand does. Output goes to the writer given to [`run`] (stdout in the
//! binary); errors are returned, never printed here.

use std::io::Write;
use std::path::Path;

use agentkeys_types::api::{MintRequest, WalletChallengeRequest, WalletVerifyRequest, WhoAmI};
use alloy_signer::Signer;

use crate::cli::{Cli, Command, GlobalArgs, KeyCommand, LoginCommand};
use crate::client::BrokerClient;
use crate::config::{self, DEFAULT_BROKER_URL, Profile, SavedSession};
use crate::error::{Error, Result};
use crate::keyfile;

/// Largest sign-in message this client agrees to sign.
const MAX_SIWE_MESSAGE: usize = 8 * 1024;

/// Runs one parsed command line.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    // Key commands touch neither the broker nor the profile, so a bad broker URL or profile
    // name does not stop them.
    let ctx = || Context::new(&cli.global);
    match cli.command {
        Command::Key(KeyCommand::Generate { out: file, force }) => key_generate(&file, force, out),
        Command::Key(KeyCommand::Address { key_file }) => {
            let signer = keyfile::read(&key_file)?;
            emit(out, &format!("{}\n", keyfile::address_of(&signer)))
        }
        Command::Login(LoginCommand::Wallet {
            key_file,
            chain_id,
            json,
        }) => login_wallet(&ctx()?, &key_file, chain_id, json, out).await,
        Command::Whoami { json } => whoami(&ctx()?, json, out).await,
        Command::Logout { local } => logout(&ctx()?, local, out).await,
        Command::Token {
            audience,
            role_arn,
            json,
        } => token(&ctx()?, MintRequest { audience, role_arn }, json, out).await,
    }
}

/// Resolved global options.
struct Context {
    profile_name: String,
    config_dir: Option<std::path::PathBuf>,
    /// From `--broker-url` / `AGENTKEYS_BROKER_URL`, normalised.
    explicit_broker: Option<String>,
}

impl Context {
    fn new(g: &GlobalArgs) -> Result<Self> {
        let explicit_broker = g
            .broker_url
            .as_deref()
            .map(config::normalize_broker_url)
            .transpose()?;
        Ok(Self {
            profile_name: g.profile.clone(),
            config_dir: g.config_dir.clone(),
            explicit_broker,
        })
    }

    /// The profile; the config dir is only resolved by commands that need state.
    fn profile(&self) -> Result<Profile> {
        let dir = match &self.config_dir {
            Some(d) => d.clone(),
            None => config::default_config_dir()?,
        };
        Profile::new(&dir, &self.profile_name)
    }

    /// The broker for a saved session: the one that issued it. A different explicit URL is an
    /// error, so the token is never sent to a server that did not issue it.
    fn broker_for_session(&self, saved: &SavedSession) -> Result<BrokerClient> {
        let saved_url = config::normalize_broker_url(&saved.broker_url)?;
        if let Some(explicit) = &self.explicit_broker
            && *explicit != saved_url
        {
            return Err(Error::SessionForOtherBroker {
                profile: self.profile_name.clone(),
                saved: saved_url,
                requested: explicit.clone(),
            });
        }
        BrokerClient::new(&saved_url, &self.profile_name)
    }

    /// The broker to sign in to: explicit, else the one the profile used last, else the default.
    fn broker_for_login(&self, profile: &Profile) -> Result<BrokerClient> {
        let url = match &self.explicit_broker {
            Some(u) => u.clone(),
            None => match profile.load_session() {
                Ok(Some(s)) => config::normalize_broker_url(&s.broker_url)?,
                _ => DEFAULT_BROKER_URL.to_owned(),
            },
        };
        BrokerClient::new(&url, &self.profile_name)
    }
}

fn emit(out: &mut dyn Write, text: &str) -> Result<()> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("write to", "stdout", e))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| Error::InvalidInput(format!("cannot encode the output as JSON: {e}")))
}

fn key_generate(file: &Path, force: bool, out: &mut dyn Write) -> Result<()> {
    let signer = keyfile::generate(file, force)?;
    // Address on stdout (so it can be captured), the note on stderr.
    emit(out, &format!("{}\n", keyfile::address_of(&signer)))?;
    eprintln!(
        "Wrote a new wallet key to {} (mode 0600). Keep it secret and backed up.",
        file.display()
    );
    Ok(())
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

    let challenge = client
        .wallet_challenge(&WalletChallengeRequest {
            address: address.to_string(),
            chain_id: Some(chain_id),
        })
        .await?;
    check_siwe_message(&challenge.message, address.as_str(), client.base_url())?;
    let signature = signer
        .sign_message(challenge.message.as_bytes())
        .await
        .map_err(|e| Error::Signing(e.to_string()))?;
    let issued = client
        .wallet_verify(&WalletVerifyRequest {
            challenge_id: challenge.challenge_id,
            signature: signature.to_string(),
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

/// Refuses to sign anything that is not an EIP-4361 sign-in for this very address: the key
/// signs only what it is meant to.
fn check_siwe_message(message: &str, address: &str, broker: &str) -> Result<()> {
    let refuse = |why: &str| Error::BrokerProtocol {
        url: broker.to_owned(),
        detail: format!("refusing to sign the challenge: {why}"),
    };
    if message.len() > MAX_SIWE_MESSAGE {
        return Err(refuse("the message is too long"));
    }
    let mut lines = message.lines();
    let first = lines.next().unwrap_or_default();
    if !first.ends_with(" wants you to sign in with your Ethereum account:") {
        return Err(refuse("it is not an EIP-4361 sign-in message"));
    }
    match lines.next() {
        Some(a) if a.trim().eq_ignore_ascii_case(address) => Ok(()),
        _ => Err(refuse("it is not for the address of this key")),
    }
}

async fn whoami(ctx: &Context, json: bool, out: &mut dyn Write) -> Result<()> {
    let profile = ctx.profile()?;
    let saved = profile.require_session()?;
    let client = ctx.broker_for_session(&saved)?;
    let me: WhoAmI = client.whoami(&saved.session_token).await?;
    if json {
        emit(out, &to_json(&me)?)
    } else {
        let kind = serde_json::to_value(me.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        emit(
            out,
            &format!(
                "wallet:       {}\nomni_account: {}\nkind:         {}\nexpires_at:   {}\nbroker:       {}\nprofile:      {}\n",
                me.wallet.as_deref().unwrap_or("(none)"),
                me.omni_account,
                kind,
                me.expires_at,
                client.base_url(),
                profile.name()
            ),
        )
    }
}

async fn logout(ctx: &Context, local: bool, out: &mut dyn Write) -> Result<()> {
    let profile = ctx.profile()?;
    let Some(saved) = profile.load_session()? else {
        return emit(
            out,
            &format!(
                "Not signed in (profile {}); nothing to do.\n",
                profile.name()
            ),
        );
    };
    if local {
        profile.delete_session()?;
        return emit(
            out,
            &format!(
                "Deleted the saved session of profile {}; the broker was not told, so it stays valid until {}.\n",
                profile.name(),
                saved.expires_at
            ),
        );
    }
    let client = ctx.broker_for_session(&saved)?;
    let message = match client.logout(&saved.session_token).await {
        Ok(()) => format!(
            "Signed out of {} (profile {}).\n",
            client.base_url(),
            profile.name()
        ),
        Err(Error::SessionRejected { .. }) => format!(
            "The session of profile {} had already ended at the broker; deleted it locally.\n",
            profile.name()
        ),
        // Keep the session so the user can retry (or use --local).
        Err(e) => return Err(e),
    };
    profile.delete_session()?;
    emit(out, &message)
}

async fn token(ctx: &Context, req: MintRequest, json: bool, out: &mut dyn Write) -> Result<()> {
    let profile = ctx.profile()?;
    let saved = profile.require_session()?;
    let client = ctx.broker_for_session(&saved)?;
    let minted = client.mint(&saved.session_token, &req).await?;
    if json {
        emit(out, &to_json(&minted)?)
    } else {
        emit(out, &format!("{}\n", minted.jwt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";

    fn siwe(addr: &str) -> String {
        format!(
            "127.0.0.1:8091 wants you to sign in with your Ethereum account:\n{addr}\n\nSign in to AgentKeys.\n\n\
             URI: http://127.0.0.1:8091\nVersion: 1\nChain ID: 1\nNonce: abcdefgh12345678\nIssued At: 2030-01-01T00:00:00Z"
        )
    }

    #[test]
    fn signs_only_siwe_for_own_address() {
        // EIP-55 checksummed in the message is fine.
        check_siwe_message(
            &siwe("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"),
            ADDR,
            "u",
        )
        .expect("ok");
        assert!(
            check_siwe_message(
                &siwe("0x0000000000000000000000000000000000000001"),
                ADDR,
                "u"
            )
            .is_err()
        );
        assert!(check_siwe_message("please sign this transaction", ADDR, "u").is_err());
        assert!(check_siwe_message(&"x".repeat(MAX_SIWE_MESSAGE + 1), ADDR, "u").is_err());
    }

    fn ctx(dir: &Path, broker: Option<&str>) -> Context {
        Context {
            profile_name: "default".into(),
            config_dir: Some(dir.to_path_buf()),
            explicit_broker: broker.map(str::to_owned),
        }
    }

    fn saved(url: &str) -> SavedSession {
        SavedSession {
            broker_url: url.into(),
            session_token: config::SecretToken::new("t".into()),
            expires_at: "e".into(),
            omni_account: "o".into(),
            wallet: None,
        }
    }

    #[test]
    fn session_is_only_sent_to_its_broker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = saved("http://127.0.0.1:8091");
        let c = ctx(dir.path(), Some("http://evil.example")).broker_for_session(&s);
        assert!(matches!(c, Err(Error::SessionForOtherBroker { .. })));
        let c = ctx(dir.path(), Some("http://127.0.0.1:8091"))
            .broker_for_session(&s)
            .expect("same");
        assert_eq!(c.base_url(), "http://127.0.0.1:8091");
        let c = ctx(dir.path(), None).broker_for_session(&s).expect("saved");
        assert_eq!(c.base_url(), "http://127.0.0.1:8091");
    }

    #[test]
    fn login_reuses_the_profile_broker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = ctx(dir.path(), None);
        let p = c.profile().expect("profile");
        assert_eq!(
            c.broker_for_login(&p).expect("client").base_url(),
            DEFAULT_BROKER_URL
        );
        p.save_session(&saved("http://10.0.0.1:9000"))
            .expect("save");
        assert_eq!(
            c.broker_for_login(&p).expect("client").base_url(),
            "http://10.0.0.1:9000"
        );
        let c2 = ctx(dir.path(), Some("http://b:1"));
        assert_eq!(
            c2.broker_for_login(&p).expect("client").base_url(),
            "http://b:1"
        );
    }

    #[tokio::test]
    async fn token_without_session_says_log_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut out = Vec::new();
        let e = token(
            &ctx(dir.path(), None),
            MintRequest::default(),
            false,
            &mut out,
        )
        .await
        .expect_err("no session");
        assert!(
            e.to_string().contains("agentkeys login wallet --key-file"),
            "{e}"
        );
        assert!(out.is_empty());
    }
}
