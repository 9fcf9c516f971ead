//! The credential cache of `aws credential-process`: one 0600 file per (broker, role, STS
//! endpoint, region) under `<profile dir>/aws-credentials/`, used until
//! [`REFRESH_MARGIN_SECS`] before the credentials expire. An entry also records which saved
//! session it was made for, so signing in again (as someone else, say) never serves the previous
//! session's credentials. `logout` deletes the whole directory.
//!
//! Anything wrong with an entry (unreadable, not JSON, another key, another session, loose
//! permissions) makes it a miss; the next store replaces it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::aws::{AwsCredentials, ProcessCredentials};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::secret::{ExposeSecret, SecretString};

/// Cached credentials are refreshed this long before they expire.
pub const REFRESH_MARGIN_SECS: i64 = 5 * 60;
const CACHE_DIR: &str = "aws-credentials";
const FORMAT_VERSION: u32 = 1;

/// What an entry is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub broker_url: String,
    pub role_arn: String,
    pub sts_endpoint: Option<String>,
    pub region: String,
    /// The grant the credentials were minted under (`--grant`); none for the session's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

impl CacheKey {
    /// File name: a hash of the key, so any ARN or URL gives a safe name.
    fn file_name(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.broker_url.as_str(),
            self.role_arn.as_str(),
            self.sts_endpoint.as_deref().unwrap_or(""),
            self.region.as_str(),
        ] {
            // Length-prefixed, so ("ab","c") and ("a","bc") differ.
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.update([u8::from(self.sts_endpoint.is_some())]);
        // Only keyed when present, so the entries of grant-less credentials keep their names.
        if let Some(g) = &self.grant {
            h.update(b"grant");
            h.update((g.len() as u64).to_be_bytes());
            h.update(g.as_bytes());
        }
        format!("{}.json", &hex::encode(h.finalize())[..32])
    }
}

/// A hash of the saved session token: identifies the session without storing it.
pub fn session_fingerprint(token: &SecretString) -> String {
    hex::encode(Sha256::digest(token.expose_secret().as_bytes()))
}

/// Whether credentials expiring at `expiration` may still be handed out at `now` (both Unix
/// seconds).
pub fn is_fresh(expiration: i64, now: i64) -> bool {
    now.saturating_add(REFRESH_MARGIN_SECS) < expiration
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    version: u32,
    key: CacheKey,
    session: String,
    wallet: String,
    credentials: ProcessCredentials,
}

/// A usable cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub credentials: AwsCredentials,
    pub wallet: String,
}

/// Why there was no usable entry (for a note on stderr, never an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    Absent,
    Stale,
    /// Made for another session or another key.
    Other,
    /// Unreadable or not an entry this client wrote; `reason` says why.
    Corrupt(String),
}

pub struct CredentialCache {
    dir: PathBuf,
}

impl CredentialCache {
    pub fn new(profile_dir: &Path) -> Self {
        Self {
            dir: profile_dir.join(CACHE_DIR),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// The entry for `key`, if it was made for `session` and is still fresh at `now`.
    pub fn load(
        &self,
        key: &CacheKey,
        session: &str,
        now: i64,
    ) -> std::result::Result<Cached, Miss> {
        let bytes = match fsutil::read_private(&self.path(key)) {
            Ok(Some(b)) => b,
            Ok(None) => return Err(Miss::Absent),
            Err(e) => return Err(Miss::Corrupt(e.to_string())),
        };
        let entry: Entry =
            serde_json::from_slice(&bytes).map_err(|e| Miss::Corrupt(e.to_string()))?;
        if entry.version != FORMAT_VERSION {
            return Err(Miss::Corrupt(format!(
                "format version {} is not {FORMAT_VERSION}",
                entry.version
            )));
        }
        if entry.key != *key || entry.session != session {
            return Err(Miss::Other);
        }
        let credentials = AwsCredentials::from_process(&entry.credentials)
            .ok_or_else(|| Miss::Corrupt("the credentials are not valid".to_owned()))?;
        if !is_fresh(credentials.expiration, now) {
            return Err(Miss::Stale);
        }
        Ok(Cached {
            credentials,
            wallet: entry.wallet,
        })
    }

    /// Writes (or replaces) the entry for `key`, mode 0600.
    pub fn store(
        &self,
        key: &CacheKey,
        session: &str,
        credentials: &AwsCredentials,
        wallet: &str,
    ) -> Result<()> {
        fsutil::create_private_dir(&self.dir)?;
        let entry = Entry {
            version: FORMAT_VERSION,
            key: key.clone(),
            session: session.to_owned(),
            wallet: wallet.to_owned(),
            credentials: credentials.to_process(),
        };
        let mut json = serde_json::to_vec_pretty(&entry)
            .map_err(|e| Error::InvalidInput(format!("cannot encode the cache entry: {e}")))?;
        json.push(b'\n');
        fsutil::write_private_atomic(&self.path(key), &json)
    }

    /// Deletes every entry; `Ok(false)` when there was none.
    pub fn clear(&self) -> Result<bool> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("remove", &self.dir, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_900_000_000;

    fn key() -> CacheKey {
        CacheKey {
            broker_url: "http://127.0.0.1:8091".into(),
            role_arn: "arn:aws:iam:::role/data".into(),
            sts_endpoint: Some("http://127.0.0.1:17480".into()),
            region: "us-east-1".into(),
            grant: None,
        }
    }

    fn creds(expiration: i64) -> AwsCredentials {
        AwsCredentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: SecretString::from("secret"),
            session_token: SecretString::from("token"),
            expiration,
        }
    }

    #[test]
    fn freshness_margin_is_five_minutes() {
        assert!(is_fresh(NOW + 301, NOW));
        assert!(!is_fresh(NOW + 300, NOW));
        assert!(!is_fresh(NOW + 10, NOW));
        assert!(!is_fresh(NOW - 1, NOW));
        assert!(!is_fresh(i64::MIN, i64::MAX));
        assert!(is_fresh(i64::MAX, NOW));
    }

    #[test]
    fn hit_until_five_minutes_before_expiry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CredentialCache::new(dir.path());
        assert_eq!(cache.load(&key(), "s", NOW), Err(Miss::Absent));
        let exp = NOW + 3600;
        cache.store(&key(), "s", &creds(exp), "0xw").expect("store");
        let hit = cache.load(&key(), "s", NOW).expect("hit");
        assert_eq!(hit.credentials, creds(exp));
        assert_eq!(hit.wallet, "0xw");
        assert!(cache.load(&key(), "s", exp - 301).is_ok());
        assert_eq!(cache.load(&key(), "s", exp - 300), Err(Miss::Stale));
        assert_eq!(cache.load(&key(), "s", exp + 1), Err(Miss::Stale));
    }

    #[test]
    fn entries_are_per_key_and_per_session() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CredentialCache::new(dir.path());
        cache
            .store(&key(), "s", &creds(NOW + 3600), "0xw")
            .expect("store");
        assert_eq!(cache.load(&key(), "other-session", NOW), Err(Miss::Other));
        let variants = [
            CacheKey {
                broker_url: "http://other:8091".into(),
                ..key()
            },
            CacheKey {
                role_arn: "arn:aws:iam:::role/other".into(),
                ..key()
            },
            CacheKey {
                sts_endpoint: None,
                ..key()
            },
            CacheKey {
                region: "eu-west-1".into(),
                ..key()
            },
            CacheKey {
                grant: Some("g1".into()),
                ..key()
            },
        ];
        for k in &variants {
            assert_ne!(cache.path(k), cache.path(&key()), "{k:?}");
            assert_eq!(cache.load(k, "s", NOW), Err(Miss::Absent), "{k:?}");
        }
        // Hash inputs are length-prefixed.
        let a = CacheKey {
            broker_url: "ab".into(),
            role_arn: "c".into(),
            ..key()
        };
        let b = CacheKey {
            broker_url: "a".into(),
            role_arn: "bc".into(),
            ..key()
        };
        assert_ne!(a.file_name(), b.file_name());
    }

    #[cfg(unix)]
    #[test]
    fn file_is_0600_in_a_0700_dir() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CredentialCache::new(dir.path());
        cache
            .store(&key(), "s", &creds(NOW + 3600), "0xw")
            .expect("store");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&cache.path(&key())), 0o600);
        assert_eq!(mode(cache.dir()), 0o700);

        // A loosened file is not trusted, and storing replaces it with a 0600 one.
        std::fs::set_permissions(cache.path(&key()), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        assert!(matches!(
            cache.load(&key(), "s", NOW),
            Err(Miss::Corrupt(_))
        ));
        cache
            .store(&key(), "s", &creds(NOW + 3600), "0xw")
            .expect("store");
        assert_eq!(mode(&cache.path(&key())), 0o600);
        assert!(cache.load(&key(), "s", NOW).is_ok());
    }

    #[test]
    fn corrupt_files_are_ignored_and_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CredentialCache::new(dir.path());
        fsutil::create_private_dir(cache.dir()).expect("mkdir");
        let good = {
            cache
                .store(&key(), "s", &creds(NOW + 3600), "0xw")
                .expect("store");
            std::fs::read_to_string(cache.path(&key())).expect("read")
        };
        for junk in [
            "".to_owned(),
            "{not json".to_owned(),
            "[]".to_owned(),
            good.replace("\"version\": 1", "\"version\": 99"),
            good.replace("2030", "soon"),
            good.replace("\"Version\": 1", "\"Version\": 2"),
        ] {
            fsutil::write_private_atomic(&cache.path(&key()), junk.as_bytes()).expect("write");
            assert!(
                matches!(cache.load(&key(), "s", NOW), Err(Miss::Corrupt(_))),
                "{junk}"
            );
            cache
                .store(&key(), "s", &creds(NOW + 3600), "0xw")
                .expect("replace");
            assert!(cache.load(&key(), "s", NOW).is_ok(), "{junk}");
        }
    }

    #[test]
    fn clear_removes_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CredentialCache::new(dir.path());
        assert!(!cache.clear().expect("clear"));
        cache
            .store(&key(), "s", &creds(NOW + 3600), "0xw")
            .expect("store");
        assert!(cache.clear().expect("clear"));
        assert_eq!(cache.load(&key(), "s", NOW), Err(Miss::Absent));
    }

    #[test]
    fn fingerprint_hides_the_token() {
        let f = session_fingerprint(&SecretString::from("abc"));
        assert_eq!(f.len(), 64);
        assert!(!f.contains("abc"));
    }
}
