//! Where the client keeps its state: `<config dir>/profiles/<profile>/session.json` and, for an
//! agent, `device.key` and `paired.json` (0600, in 0700 directories). The config dir is `AGENTKEYS_CONFIG_DIR`,
//! else `$XDG_CONFIG_HOME/agentkeys`, else `~/.config/agentkeys`.

use std::path::{Path, PathBuf};

use agentkeys_types::api::{ActorKind, SessionIssued};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::secret::{self, SecretString};

pub const DEFAULT_BROKER_URL: &str = "http://127.0.0.1:8091";
/// Re-exported here with the other defaults; defined at the crate root so that `error` needs
/// no `config`.
pub use crate::DEFAULT_PROFILE;
const SESSION_FILE: &str = "session.json";
const DEVICE_KEY_FILE: &str = "device.key";
const PAIRED_FILE: &str = "paired.json";

/// The session saved by `agentkeys login` (a master's) or `agentkeys agent pair` (an agent's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedSession {
    /// The broker that issued the session; the token is never sent to any other.
    pub broker_url: String,
    #[serde(with = "crate::secret::serde_str")]
    pub session_token: SecretString,
    pub expires_at: String,
    pub omni_account: String,
    #[serde(default)]
    pub wallet: Option<String>,
    /// Whose session it is; files written before agents existed are masters'.
    #[serde(default = "master_kind")]
    pub kind: ActorKind,
    /// The agent's label, for an agent session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

fn master_kind() -> ActorKind {
    ActorKind::Master
}

impl PartialEq for SavedSession {
    fn eq(&self, other: &Self) -> bool {
        // Destructured, so a new field cannot be left out of the comparison.
        let Self {
            broker_url,
            session_token,
            expires_at,
            omni_account,
            wallet,
            kind,
            label,
        } = self;
        *broker_url == other.broker_url
            && secret::same(session_token, &other.session_token)
            && *expires_at == other.expires_at
            && *omni_account == other.omni_account
            && *wallet == other.wallet
            && *kind == other.kind
            && *label == other.label
    }
}

impl Eq for SavedSession {}

impl SavedSession {
    /// A master's session from a sign-in.
    pub fn from_issued(broker_url: &str, issued: SessionIssued) -> Self {
        Self {
            broker_url: broker_url.to_owned(),
            session_token: SecretString::from(issued.session_token),
            expires_at: issued.expires_at,
            omni_account: issued.omni_account,
            wallet: issued.wallet,
            kind: ActorKind::Master,
            label: None,
        }
    }

    /// An agent's session from an approved pairing.
    pub fn from_pairing(broker_url: &str, issued: SessionIssued, label: &str) -> Self {
        Self {
            kind: ActorKind::Agent,
            label: Some(label.to_owned()),
            wallet: None,
            ..Self::from_issued(broker_url, issued)
        }
    }

    pub fn is_agent(&self) -> bool {
        self.kind == ActorKind::Agent
    }
}

/// The broker an agent profile was paired with, by the issuer its discovery document named at
/// pairing. Device proofs name the issuer, so the device signs them only for this broker; a
/// different issuer later needs a new pairing. Kept apart from the session so that a logout does
/// not forget it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairedBroker {
    pub issuer: String,
}

/// One profile's state directory.
#[derive(Debug, Clone)]
pub struct Profile {
    name: String,
    dir: PathBuf,
}

impl Profile {
    /// `config_dir/profiles/<name>`; the name is checked so it cannot escape that directory.
    pub fn new(config_dir: &Path, name: &str) -> Result<Self> {
        validate_profile_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            dir: config_dir.join("profiles").join(name),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn session_path(&self) -> PathBuf {
        self.dir.join(SESSION_FILE)
    }

    /// Where `agentkeys agent init` puts the device key unless told otherwise.
    pub fn device_key_path(&self) -> PathBuf {
        self.dir.join(DEVICE_KEY_FILE)
    }

    /// The saved session, if any.
    pub fn load_session(&self) -> Result<Option<SavedSession>> {
        self.load_state(SESSION_FILE)
    }

    /// The saved session, or [`Error::NotLoggedIn`] (whose advice is to pair when the profile
    /// holds a device key).
    pub fn require_session(&self) -> Result<SavedSession> {
        self.load_session()?.ok_or_else(|| Error::NotLoggedIn {
            profile: self.name.clone(),
            agent: self.device_key_path().exists(),
        })
    }

    pub fn save_session(&self, session: &SavedSession) -> Result<()> {
        self.save_state(SESSION_FILE, session, "the session")
    }

    /// The broker this agent profile was paired with, if it was.
    pub fn load_paired(&self) -> Result<Option<PairedBroker>> {
        self.load_state(PAIRED_FILE)
    }

    pub fn save_paired(&self, paired: &PairedBroker) -> Result<()> {
        self.save_state(PAIRED_FILE, paired, "the pairing")
    }

    /// One JSON state file of the profile (0600, refused when looser), if it exists.
    pub(crate) fn load_state<T: serde::de::DeserializeOwned>(
        &self,
        file: &str,
    ) -> Result<Option<T>> {
        let path = self.dir.join(file);
        let Some(bytes) = fsutil::read_private(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::CorruptState {
                path,
                reason: e.to_string(),
            })
    }

    /// Writes one JSON state file of the profile atomically, 0600 in a 0700 directory.
    pub(crate) fn save_state<T: Serialize>(&self, file: &str, value: &T, what: &str) -> Result<()> {
        fsutil::create_private_dir(&self.dir)?;
        let mut json = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::InvalidInput(format!("cannot encode {what}: {e}")))?;
        json.push(b'\n');
        fsutil::write_private_atomic(&self.dir.join(file), &json)
    }

    /// Deletes the saved session; `Ok(false)` if there was none.
    pub fn delete_session(&self) -> Result<bool> {
        fsutil::remove_if_exists(&self.session_path())
    }
}

fn validate_profile_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid profile name {name:?}: use 1–64 letters, digits, '-', '_' or '.', not starting with '.' \
             (set with --profile or AGENTKEYS_PROFILE)"
        )))
    }
}

/// The config dir when `AGENTKEYS_CONFIG_DIR` / `--config-dir` is not given.
pub fn default_config_dir() -> Result<PathBuf> {
    default_config_dir_from(
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
}

fn default_config_dir_from(
    xdg_config_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Result<PathBuf> {
    // XDG base-dir spec: a relative XDG_CONFIG_HOME is invalid and must be ignored.
    if let Some(x) = xdg_config_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return Ok(x.join("agentkeys"));
    }
    if let Some(h) = home.map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Ok(h.join(".config").join("agentkeys"));
    }
    Err(Error::InvalidInput(
        "cannot find a config directory (neither XDG_CONFIG_HOME nor HOME is set); set AGENTKEYS_CONFIG_DIR"
            .to_owned(),
    ))
}

/// Normalises a broker URL: http(s) with a host, no query or fragment, no trailing slash.
pub fn normalize_broker_url(raw: &str) -> Result<String> {
    let bad = |why: &str| {
        Error::InvalidInput(format!(
            "invalid broker URL {raw:?}: {why}; set --broker-url or AGENTKEYS_BROKER_URL to e.g. {DEFAULT_BROKER_URL}"
        ))
    };
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not have a query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("it must not carry credentials"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> SavedSession {
        SavedSession {
            broker_url: "http://127.0.0.1:8091".into(),
            session_token: "s3cr3t-token-value".into(),
            expires_at: "2030-01-01T00:00:00Z".into(),
            omni_account: "ab".repeat(32),
            wallet: Some("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".into()),
            kind: ActorKind::Master,
            label: None,
        }
    }

    #[test]
    fn session_round_trip_with_private_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("cfg");
        let p = Profile::new(&cfg, "default").expect("profile");
        assert_eq!(p.load_session().expect("load"), None);
        assert!(matches!(
            p.require_session(),
            Err(Error::NotLoggedIn { .. })
        ));

        let s = sample();
        p.save_session(&s).expect("save");
        assert_eq!(p.load_session().expect("load"), Some(s.clone()));
        let mode = |q: &Path| std::fs::metadata(q).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&cfg.join("profiles/default/session.json")), 0o600);
        assert_eq!(mode(&cfg.join("profiles/default")), 0o700);
        assert_eq!(mode(&cfg.join("profiles")), 0o700);
        assert_eq!(mode(&cfg), 0o700);

        // Overwrite keeps working; delete is idempotent.
        p.save_session(&s).expect("save again");
        assert!(p.delete_session().expect("delete"));
        assert!(!p.delete_session().expect("delete again"));
        assert_eq!(p.load_session().expect("load"), None);
    }

    #[test]
    fn profiles_are_separate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Profile::new(dir.path(), "a").expect("a");
        let b = Profile::new(dir.path(), "b").expect("b");
        a.save_session(&sample()).expect("save");
        assert_eq!(b.load_session().expect("load"), None);
    }

    #[test]
    fn corrupt_or_loose_state_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Profile::new(dir.path(), "default").expect("profile");
        fsutil::create_private_dir(p.dir()).expect("mkdir");
        fsutil::write_private_atomic(&p.session_path(), b"{not json").expect("write");
        assert!(matches!(p.load_session(), Err(Error::CorruptState { .. })));
        p.save_session(&sample()).expect("save");
        std::fs::set_permissions(p.session_path(), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        assert!(matches!(
            p.load_session(),
            Err(Error::InsecurePermissions { .. })
        ));
    }

    #[test]
    fn agent_sessions_round_trip_and_old_files_are_masters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Profile::new(dir.path(), "bot").expect("profile");
        let issued = SessionIssued {
            session_token: "tok".into(),
            expires_at: "2030-01-01T00:00:00Z".into(),
            omni_account: "cd".repeat(32),
            wallet: None,
        };
        let s = SavedSession::from_pairing("http://b", issued, "bot");
        assert!(s.is_agent());
        p.save_session(&s).expect("save");
        assert_eq!(p.load_session().expect("load"), Some(s));

        // A session file from before agents: no kind, no label.
        fsutil::write_private_atomic(
            &p.session_path(),
            br#"{"broker_url":"http://b","session_token":"t","expires_at":"e","omni_account":"o"}"#,
        )
        .expect("write");
        let old = p.load_session().expect("load").expect("some");
        assert_eq!(old.kind, ActorKind::Master);
        assert_eq!(old.label, None);
        assert!(
            !String::from_utf8(serde_json::to_vec(&sample()).expect("json"))
                .expect("utf-8")
                .contains("label"),
            "no label key for masters"
        );
    }

    #[test]
    fn the_paired_broker_outlives_the_session() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Profile::new(dir.path(), "bot").expect("profile");
        assert_eq!(p.load_paired().expect("load"), None);
        let paired = PairedBroker {
            issuer: "https://broker.example".into(),
        };
        p.save_paired(&paired).expect("save");
        assert_eq!(
            std::fs::metadata(p.dir().join(PAIRED_FILE))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        p.save_session(&sample()).expect("save session");
        p.delete_session().expect("logout");
        assert_eq!(p.load_paired().expect("load"), Some(paired));
    }

    #[test]
    fn missing_session_advice_depends_on_a_device_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Profile::new(dir.path(), "default").expect("profile");
        assert!(matches!(
            p.require_session(),
            Err(Error::NotLoggedIn { agent: false, .. })
        ));
        fsutil::create_private_dir(p.dir()).expect("mkdir");
        fsutil::write_new_private(&p.device_key_path(), b"x").expect("write");
        let e = p.require_session().expect_err("no session");
        assert!(matches!(e, Error::NotLoggedIn { agent: true, .. }));
        assert!(e.to_string().contains("agentkeys agent login"), "{e}");
    }

    #[test]
    fn token_is_redacted_in_debug() {
        let s = sample();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        // secrecy's marker for a redacted value.
        assert!(dbg.contains("[REDACTED]"), "{dbg}");
    }

    #[test]
    fn profile_names_cannot_escape() {
        for bad in [
            "",
            "..",
            ".",
            "../x",
            "a/b",
            ".hidden",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(Profile::new(Path::new("/c"), bad).is_err(), "{bad:?}");
        }
        for good in ["default", "work-2", "a.b_c"] {
            assert!(Profile::new(Path::new("/c"), good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn default_dir_follows_xdg_then_home() {
        let d = default_config_dir_from(Some("/x".into()), Some("/h".into())).expect("dir");
        assert_eq!(d, PathBuf::from("/x/agentkeys"));
        let d = default_config_dir_from(Some("relative".into()), Some("/h".into())).expect("dir");
        assert_eq!(d, PathBuf::from("/h/.config/agentkeys"));
        let d = default_config_dir_from(None, Some("/h".into())).expect("dir");
        assert_eq!(d, PathBuf::from("/h/.config/agentkeys"));
        assert!(default_config_dir_from(None, None).is_err());
    }

    #[test]
    fn broker_urls_are_normalised() {
        assert_eq!(
            normalize_broker_url("http://127.0.0.1:8091/").expect("ok"),
            "http://127.0.0.1:8091"
        );
        assert_eq!(
            normalize_broker_url("https://b.example/api/").expect("ok"),
            "https://b.example/api"
        );
        for bad in [
            "127.0.0.1:8091",
            "ftp://x",
            "http://u:p@x",
            "http://x/?a=1",
            "nonsense",
        ] {
            let e = normalize_broker_url(bad).expect_err(bad);
            assert!(e.to_string().contains("AGENTKEYS_BROKER_URL"), "{e}");
        }
    }
}
