//! Resolved global options: the profile, the broker client and the transport policy. A leaf:
//! imports no command module.

use std::path::PathBuf;

use clap::Args;

use crate::cache::CredentialCache;
use crate::client::{BrokerClient, HttpPolicy, Transport};
use crate::config::{self, DEFAULT_BROKER_URL, DEFAULT_PROFILE, Profile, SavedSession};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Broker base URL. Without it: the broker the profile signed in to, else
    /// http://127.0.0.1:8091.
    #[arg(long, env = "AGENTKEYS_BROKER_URL", value_name = "URL", global = true)]
    pub broker_url: Option<String>,

    /// Profile whose saved session is used; each profile signs in separately.
    #[arg(long, env = "AGENTKEYS_PROFILE", value_name = "NAME", default_value = DEFAULT_PROFILE, global = true)]
    pub profile: String,

    /// Directory for the client's state (default: $XDG_CONFIG_HOME/agentkeys or
    /// ~/.config/agentkeys).
    #[arg(long, env = "AGENTKEYS_CONFIG_DIR", value_name = "DIR", global = true)]
    pub config_dir: Option<PathBuf>,

    /// Allow a plain http:// broker URL that is not loopback (127.0.0.0/8, ::1, localhost).
    /// Sessions and tokens then cross the network in clear text: only on a network you trust.
    #[arg(long, env = "AGENTKEYS_INSECURE_HTTP", global = true,
          value_parser = clap::builder::FalseyValueParser::new())]
    pub insecure_http: bool,

    /// PEM file of CA certificates to trust for an https broker besides the system's roots,
    /// e.g. the private CA of the proxy in front of it. (SSL_CERT_FILE replaces the system's
    /// roots instead.)
    #[arg(long, env = "AGENTKEYS_CA_FILE", value_name = "FILE", global = true)]
    pub ca_file: Option<PathBuf>,
}

/// Resolved global options.
#[derive(Clone)]
pub(crate) struct Context {
    profile_name: String,
    config_dir: Option<std::path::PathBuf>,
    /// From `--broker-url` / `AGENTKEYS_BROKER_URL`, normalised.
    explicit_broker: Option<String>,
    /// `--insecure-http` and `--ca-file`.
    transport: Transport,
}

impl Context {
    pub(crate) fn new(g: &GlobalArgs) -> Result<Self> {
        let explicit_broker = g
            .broker_url
            .as_deref()
            .map(config::normalize_broker_url)
            .transpose()?;
        Ok(Self {
            profile_name: g.profile.clone(),
            config_dir: g.config_dir.clone(),
            explicit_broker,
            transport: Transport {
                policy: if g.insecure_http {
                    HttpPolicy::AllowInsecure
                } else {
                    HttpPolicy::LoopbackOnly
                },
                ca_file: g.ca_file.clone(),
            },
        })
    }

    /// A context for unit tests: a config dir and an optional (normalised) broker URL.
    #[cfg(test)]
    pub(crate) fn for_test(config_dir: &std::path::Path, broker: Option<&str>) -> Self {
        Self {
            profile_name: crate::config::DEFAULT_PROFILE.to_owned(),
            config_dir: Some(config_dir.to_path_buf()),
            explicit_broker: broker.map(str::to_owned),
            transport: Transport::default(),
        }
    }

    /// The profile; the config dir is only resolved by commands that need state.
    pub(crate) fn profile(&self) -> Result<Profile> {
        let dir = match &self.config_dir {
            Some(d) => d.clone(),
            None => config::default_config_dir()?,
        };
        Profile::new(&dir, &self.profile_name)
    }

    /// The broker for a saved session: the one that issued it. A different explicit URL is an
    /// error, so the token is never sent to a server that did not issue it.
    pub(crate) fn broker_for_session(&self, saved: &SavedSession) -> Result<BrokerClient> {
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
        Ok(
            BrokerClient::with_transport(&saved_url, &self.profile_name, &self.transport)?
                .with_agent_session(saved.is_agent()),
        )
    }

    /// The profile, its saved session and a client for the broker that issued it.
    pub(crate) fn session(&self) -> Result<(Profile, SavedSession, BrokerClient)> {
        let profile = self.profile()?;
        let saved = profile.require_session()?;
        let client = self.broker_for_session(&saved)?;
        Ok((profile, saved, client))
    }

    /// The broker to sign in to: explicit, else the one the profile used last, else the default.
    pub(crate) fn broker_for_login(&self, profile: &Profile) -> Result<BrokerClient> {
        let url = match &self.explicit_broker {
            Some(u) => u.clone(),
            None => match profile.load_session() {
                Ok(Some(s)) => config::normalize_broker_url(&s.broker_url)?,
                _ => DEFAULT_BROKER_URL.to_owned(),
            },
        };
        BrokerClient::with_transport(&url, &self.profile_name, &self.transport)
    }
}

/// Deletes the profile's saved session and the AWS credentials cached for it.
pub(crate) fn forget_session(profile: &Profile) -> Result<()> {
    CredentialCache::new(profile.dir()).clear()?;
    profile.delete_session().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkeys_types::api::ActorKind;
    use std::path::Path;

    /// A context that allows plain http anywhere: these tests are about which broker is chosen.
    fn ctx(dir: &Path, broker: Option<&str>) -> Context {
        Context {
            profile_name: "default".into(),
            config_dir: Some(dir.to_path_buf()),
            explicit_broker: broker.map(str::to_owned),
            transport: Transport {
                policy: HttpPolicy::AllowInsecure,
                ca_file: None,
            },
        }
    }

    fn saved(url: &str) -> SavedSession {
        SavedSession {
            broker_url: url.into(),
            session_token: crate::secret::SecretString::from("t"),
            expires_at: "e".into(),
            omni_account: "o".into(),
            wallet: None,
            kind: ActorKind::Master,
            label: None,
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

    #[test]
    fn every_broker_client_of_a_context_checks_the_transport() {
        let dir = tempfile::tempdir().expect("tempdir");
        let strict = |broker: Option<&str>| Context {
            transport: Transport::default(),
            ..ctx(dir.path(), broker)
        };
        // A saved session of a plain-http broker off loopback is not used without the flag ...
        let s = saved("http://10.0.0.1:9000");
        let e = strict(None).broker_for_session(&s).err();
        assert!(matches!(e, Some(Error::InsecureBrokerUrl { .. })), "{e:?}");
        ctx(dir.path(), None)
            .broker_for_session(&s)
            .expect("allowed with --insecure-http");
        // ... nor is such a broker signed in to.
        let c = strict(Some("http://10.0.0.1:9000"));
        let p = c.profile().expect("profile");
        let e = c.broker_for_login(&p).err();
        assert!(matches!(e, Some(Error::InsecureBrokerUrl { .. })), "{e:?}");
        strict(Some("https://10.0.0.1:9000"))
            .broker_for_login(&p)
            .expect("https");
        strict(None)
            .broker_for_login(&p)
            .expect("the default broker is loopback");
    }
}
