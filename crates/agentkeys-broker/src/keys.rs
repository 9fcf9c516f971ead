//! ES256 signing keys: generation, files, lifecycle, the JWKS, and signing.
//!
//! Private keys are PKCS#8 files `<data-dir>/keys/<kid>.pk8`, mode 0600 (a more open file is
//! refused). Their public halves and lifecycle live in the store so every broker instance sees
//! the same key set. Lifecycle, all derived from timestamps with `now` as input:
//!
//! * published from `created_at`; signs from `activates_at` (a rotation sets it one overlap
//!   ahead, so verifiers have cached the key before any token needs it);
//! * the active key is the newest key whose `activates_at` has passed and which is neither
//!   retired nor withdrawn; an older key stops signing when a newer one activates;
//! * a key that stopped signing at `t` stays published until `t + JWT_TTL_MAX + MARGIN`, so no
//!   token it signed outlives its publication;
//! * `withdrawn_at` (compromise) removes it from the JWKS at once.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use agentkeys_store::{NewAuditEvent, SigningKeyRecord, Store};
use agentkeys_types::claims::JWT_TTL_MAX_SECONDS;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};

/// Keys in the JWKS at most (SPEC §5.1).
pub const MAX_PUBLISHED_KEYS: usize = 4;
/// Publication after a key stops signing, beyond the longest token lifetime.
pub const PUBLICATION_MARGIN_SECONDS: i64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {0} is readable by group or others; run `chmod 600 {0}`")]
    Permissions(PathBuf),
    #[error("key file {0} is not a P-256 PKCS#8 key")]
    Malformed(PathBuf),
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error(transparent)]
    Store(#[from] agentkeys_store::StoreError),
    #[error("{0}")]
    Refused(String),
}

/// Where key files live.
pub fn key_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

fn key_path(data_dir: &Path, kid: &str) -> PathBuf {
    key_dir(data_dir).join(format!("{kid}.pk8"))
}

/// A fresh key: its store record (public JWK with x5c) and its PKCS#8 bytes.
pub struct NewKey {
    pub record: SigningKeyRecord,
    pub pkcs8: Vec<u8>,
}

pub fn generate(now: i64, activates_at: i64) -> Result<NewKey, KeyError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|e| KeyError::Generate(e.to_string()))?
        .as_ref()
        .to_vec();
    let certificate = self_signed_certificate(&pkcs8)?;
    let mut jwk = Jwk::from_encoding_key(&EncodingKey::from_ec_der(&pkcs8), Algorithm::ES256)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let kid = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
    jwk.common.x509_chain = Some(vec![certificate.clone()]);
    let public_jwk = serde_json::to_string(&jwk).map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok(NewKey {
        record: SigningKeyRecord {
            kid,
            public_jwk,
            certificate,
            created_at: now,
            activates_at,
            retired_at: None,
            withdrawn_at: None,
        },
        pkcs8,
    })
}

/// Base64 DER of a self-signed certificate over the key. AWS ignores it; Ceph RGW requires an
/// `x5c` on the JWK and verifies tokens against the certificate's key.
fn self_signed_certificate(pkcs8: &[u8]) -> Result<String, KeyError> {
    let key = rcgen::KeyPair::try_from(pkcs8).map_err(|e| KeyError::Generate(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec!["agentkeys-broker".to_owned()])
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "agentkeys-broker signing key");
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params
        .self_signed(&key)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok(STANDARD.encode(cert.der()))
}

/// Writes the private key file, 0600, never overwriting.
pub fn write_private_key(data_dir: &Path, kid: &str, pkcs8: &[u8]) -> Result<PathBuf, KeyError> {
    let dir = key_dir(data_dir);
    fs::create_dir_all(&dir).map_err(|source| KeyError::Io {
        path: dir.clone(),
        source,
    })?;
    let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
    let path = key_path(data_dir, kid);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| KeyError::Io {
            path: path.clone(),
            source,
        })?;
    f.write_all(pkcs8)
        .and_then(|_| f.sync_all())
        .map_err(|source| KeyError::Io {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

fn read_private_key(data_dir: &Path, kid: &str) -> Result<SigningKey, KeyError> {
    let path = key_path(data_dir, kid);
    let meta = fs::metadata(&path).map_err(|source| KeyError::Io {
        path: path.clone(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(KeyError::Permissions(path));
    }
    let pkcs8 = fs::read(&path).map_err(|source| KeyError::Io {
        path: path.clone(),
        source,
    })?;
    SigningKey::from_pkcs8(kid, &pkcs8).ok_or(KeyError::Malformed(path))
}

/// Generates a key, stores its record (with an audit event) and writes its file.
pub async fn create(
    store: &dyn Store,
    data_dir: &Path,
    now: i64,
    activates_at: i64,
    audit_kind: &str,
) -> Result<SigningKeyRecord, KeyError> {
    let key = generate(now, activates_at)?;
    // The file first: a record without its file would be a published key nobody can sign with.
    write_private_key(data_dir, &key.record.kid, &key.pkcs8)?;
    let event = key_event(
        now,
        audit_kind,
        &key.record.kid,
        serde_json::json!({"activates_at": activates_at}),
    );
    store.insert_signing_key(key.record.clone(), event).await?;
    Ok(key.record)
}

pub fn key_event(now: i64, kind: &str, kid: &str, mut details: serde_json::Value) -> NewAuditEvent {
    details["kid"] = serde_json::Value::String(kid.to_owned());
    NewAuditEvent {
        time: now,
        kind: kind.to_owned(),
        actor: None,
        master: None,
        outcome: "ok".into(),
        details,
    }
}

// ---- lifecycle ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published, not yet signing.
    Pending,
    Active,
    /// No longer signing, still published for the tokens it signed.
    Retiring,
    /// Out of the JWKS.
    Unpublished,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Unpublished => "unpublished",
        }
    }
}

/// When each key stops signing and leaves the JWKS, for a given set of records.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    records: Vec<SigningKeyRecord>,
}

impl Lifecycle {
    pub fn new(mut records: Vec<SigningKeyRecord>) -> Self {
        records.sort_by(|a, b| {
            b.activates_at
                .cmp(&a.activates_at)
                .then(b.created_at.cmp(&a.created_at))
        });
        Self { records }
    }

    pub fn records(&self) -> &[SigningKeyRecord] {
        &self.records
    }

    fn can_sign_ever(r: &SigningKeyRecord) -> bool {
        r.withdrawn_at.is_none()
    }

    /// The time the key stops (or stopped) signing, if that is known.
    pub fn signing_ends(&self, r: &SigningKeyRecord) -> Option<i64> {
        let superseded = self
            .records
            .iter()
            .filter(|o| Self::can_sign_ever(o) && o.retired_at.is_none_or(|t| t > o.activates_at))
            .filter(|o| o.activates_at > r.activates_at)
            .map(|o| o.activates_at)
            .min();
        [superseded, r.retired_at, r.withdrawn_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// End of publication: withdrawn at once, or signing end plus the longest token lifetime.
    pub fn published_until(&self, r: &SigningKeyRecord) -> Option<i64> {
        if let Some(w) = r.withdrawn_at {
            return Some(w);
        }
        self.signing_ends(r)
            .map(|end| end + JWT_TTL_MAX_SECONDS as i64 + PUBLICATION_MARGIN_SECONDS)
    }

    pub fn state(&self, r: &SigningKeyRecord, now: i64) -> KeyState {
        let published = r.created_at <= now && self.published_until(r).is_none_or(|t| now < t);
        if !published {
            return KeyState::Unpublished;
        }
        if now < r.activates_at {
            return KeyState::Pending;
        }
        if self.signing_ends(r).is_none_or(|t| now < t) {
            KeyState::Active
        } else {
            KeyState::Retiring
        }
    }

    pub fn active(&self, now: i64) -> Option<&SigningKeyRecord> {
        self.records
            .iter()
            .find(|r| self.state(r, now) == KeyState::Active)
    }

    /// Published keys, the active key first, then newest first.
    pub fn published(&self, now: i64) -> Vec<&SigningKeyRecord> {
        let active = self.active(now).map(|r| r.kid.clone());
        let mut keys: Vec<_> = self
            .records
            .iter()
            .filter(|r| self.state(r, now) != KeyState::Unpublished)
            .collect();
        keys.sort_by_key(|r| (Some(&r.kid) != active.as_ref(), -r.activates_at));
        keys
    }

    /// The JWKS document.
    pub fn jwks(&self, now: i64) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .published(now)
            .into_iter()
            .take(MAX_PUBLISHED_KEYS)
            .filter_map(|r| serde_json::from_str(&r.public_jwk).ok())
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

// ---- signing -----------------------------------------------------------------------------

/// A loaded private key, parsed once: re-parsing PKCS#8 on every mint would double its cost.
pub struct SigningKey {
    kid: String,
    pair: EcdsaKeyPair,
    /// base64url of `{"alg":"ES256","kid":…,"typ":"JWT"}`, computed once.
    header: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn from_pkcs8(kid: &str, pkcs8: &[u8]) -> Option<Self> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).ok()?;
        let header = serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
        Some(Self {
            kid: kid.to_owned(),
            pair,
            header: URL_SAFE_NO_PAD.encode(header.to_string()),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Uncompressed SEC1 public point, to check a file against its record.
    pub fn public_point(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// A compact JWS over `claims` (already-serialised JSON). jsonwebtoken's `encode` takes
    /// only a DER key and re-parses it on every call, so the broker assembles the three parts
    /// itself; tests verify the result with jsonwebtoken and with PyJWT.
    pub fn sign_jwt(&self, claims_json: &[u8]) -> Result<String, KeyError> {
        let mut token = String::with_capacity(self.header.len() + claims_json.len() * 4 / 3 + 90);
        token.push_str(&self.header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims_json, &mut token);
        let signature = self
            .pair
            .sign(&SystemRandom::new(), token.as_bytes())
            .map_err(|e| KeyError::Generate(format!("signing failed: {e}")))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }
}

/// The broker's view of its keys: records from the store plus the private keys it could load.
/// Reloaded periodically so a rotation made by the `keys` command needs no restart.
pub struct KeyRing {
    data_dir: PathBuf,
    inner: RwLock<Arc<Loaded>>,
}

pub struct Loaded {
    pub lifecycle: Lifecycle,
    signers: HashMap<String, Arc<SigningKey>>,
}

impl Loaded {
    /// The key to sign with at `now`, if it is loaded.
    pub fn signer(&self, now: i64) -> Option<Arc<SigningKey>> {
        self.lifecycle
            .active(now)
            .and_then(|r| self.signers.get(&r.kid).cloned())
    }
}

impl KeyRing {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            inner: RwLock::new(Arc::new(Loaded {
                lifecycle: Lifecycle::new(vec![]),
                signers: HashMap::new(),
            })),
        }
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.inner
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Re-reads the records and loads private keys of every key that signs now or will.
    /// Returns problems with individual key files; the ring keeps what did load.
    pub async fn reload(&self, store: &dyn Store, now: i64) -> Result<Vec<KeyError>, KeyError> {
        // Keys out of the JWKS never come back (publication only ends), so the ring keeps just
        // the published ones: the mint's key lookup then stays small however many rotations
        // the store remembers. `keys list` still reads every record.
        let all = Lifecycle::new(store.signing_keys().await?);
        let published = all
            .records()
            .iter()
            .filter(|r| all.state(r, now) != KeyState::Unpublished)
            .cloned();
        let lifecycle = Lifecycle::new(published.collect());
        let previous = self.current();
        let mut signers = HashMap::new();
        let mut problems = Vec::new();
        for r in lifecycle.records() {
            let state = lifecycle.state(r, now);
            if !matches!(state, KeyState::Active | KeyState::Pending) {
                continue;
            }
            if let Some(k) = previous.signers.get(&r.kid) {
                signers.insert(r.kid.clone(), k.clone());
                continue;
            }
            match read_private_key(&self.data_dir, &r.kid) {
                Ok(k) if jwk_matches(&r.public_jwk, k.public_point()) => {
                    signers.insert(r.kid.clone(), Arc::new(k));
                }
                Ok(_) => problems.push(KeyError::Malformed(key_path(&self.data_dir, &r.kid))),
                Err(e) => problems.push(e),
            }
        }
        let loaded = Arc::new(Loaded { lifecycle, signers });
        match self.inner.write() {
            Ok(mut g) => *g = loaded,
            Err(p) => *p.into_inner() = loaded,
        }
        Ok(problems)
    }
}

/// Whether the public JWK's x/y are this uncompressed point.
fn jwk_matches(public_jwk: &str, point: &[u8]) -> bool {
    let Ok(jwk) = serde_json::from_str::<serde_json::Value>(public_jwk) else {
        return false;
    };
    if point.len() != 65 {
        return false;
    }
    let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
    let y = URL_SAFE_NO_PAD.encode(&point[33..]);
    jwk["x"] == x.as_str() && jwk["y"] == y.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kid: &str, created: i64, activates: i64) -> SigningKeyRecord {
        SigningKeyRecord {
            kid: kid.into(),
            public_jwk: format!("{{\"kid\":\"{kid}\"}}"),
            certificate: String::new(),
            created_at: created,
            activates_at: activates,
            retired_at: None,
            withdrawn_at: None,
        }
    }

    const HOLD: i64 = JWT_TTL_MAX_SECONDS as i64 + PUBLICATION_MARGIN_SECONDS;

    #[test]
    fn rotation_publishes_before_signing_and_keeps_the_old_key_for_its_tokens() {
        let lc = Lifecycle::new(vec![rec("old", 0, 0), rec("new", 1000, 4600)]);
        // Before the overlap ends: old signs, new is published first after it.
        assert_eq!(lc.active(2000).map(|r| r.kid.as_str()), Some("old"));
        assert_eq!(lc.state(&lc.records()[0], 2000), KeyState::Pending);
        let kids: Vec<_> = lc.published(2000).iter().map(|r| r.kid.clone()).collect();
        assert_eq!(kids, ["old", "new"], "the active key comes first");
        // After activation: new signs and is first; old stays published for its tokens.
        assert_eq!(lc.active(4600).map(|r| r.kid.as_str()), Some("new"));
        let kids: Vec<_> = lc.published(4600).iter().map(|r| r.kid.clone()).collect();
        assert_eq!(kids, ["new", "old"]);
        assert_eq!(lc.published(4600 + HOLD - 1).len(), 2);
        assert_eq!(lc.published(4600 + HOLD).len(), 1);
    }

    #[test]
    fn withdrawal_unpublishes_at_once_and_retirement_after_the_hold() {
        let mut a = rec("a", 0, 0);
        a.retired_at = Some(100);
        let lc = Lifecycle::new(vec![a.clone()]);
        assert_eq!(lc.state(&a, 100), KeyState::Retiring);
        assert!(lc.active(100).is_none());
        assert_eq!(lc.state(&a, 100 + HOLD), KeyState::Unpublished);
        a.withdrawn_at = Some(150);
        let lc = Lifecycle::new(vec![a.clone()]);
        assert_eq!(lc.state(&a, 150), KeyState::Unpublished);
    }

    #[test]
    fn generated_key_signs_tokens_jsonwebtoken_verifies() {
        let key = generate(10, 10).unwrap();
        let jwk: Jwk = serde_json::from_str(&key.record.public_jwk).unwrap();
        assert_eq!(jwk.common.key_id.as_deref(), Some(key.record.kid.as_str()));
        assert_eq!(jwk.common.x509_chain.as_ref().map(|c| c.len()), Some(1));
        let signer = SigningKey::from_pkcs8(&key.record.kid, &key.pkcs8).unwrap();
        assert!(jwk_matches(&key.record.public_jwk, signer.public_point()));
        let token = signer
            .sign_jwt(br#"{"sub":"x","exp":99999999999}"#)
            .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key.record.kid.as_str()));
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.required_spec_claims.clear();
        v.validate_aud = false;
        let dk = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &dk, &v).unwrap();
        assert_eq!(data.claims["sub"], "x");
        // A different key's JWK does not verify it.
        let other: Jwk =
            serde_json::from_str(&generate(10, 10).unwrap().record.public_jwk).unwrap();
        let dk = jsonwebtoken::DecodingKey::from_jwk(&other).unwrap();
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &dk, &v).is_err());
    }

    #[test]
    fn key_files_are_private_and_open_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate(0, 0).unwrap();
        let path = write_private_key(dir.path(), &key.record.kid, &key.pkcs8).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(read_private_key(dir.path(), &key.record.kid).is_ok());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_private_key(dir.path(), &key.record.kid),
            Err(KeyError::Permissions(_))
        ));
        assert!(
            write_private_key(dir.path(), &key.record.kid, &key.pkcs8).is_err(),
            "never overwrites"
        );
    }
}
