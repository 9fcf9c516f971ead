//! ES256 signing keys: generation, files, lifecycle, the JWKS, and signing.
//!
//! Where private keys live is one choice, the [`Vault`]:
//!
//! * with a key-encryption key (`BROKER_KEY_ENCRYPTION_KEY_FILE`, required on PostgreSQL), in
//!   the store next to their public halves, sealed with AES-256-GCM under that key, so every
//!   instance sharing the database signs with the same keys and the database alone (a backup,
//!   a stolen dump) cannot sign anything;
//! * without one (SQLite only), as PKCS#8 files `<data-dir>/keys/<kid>.pk8`, mode 0600 (a more
//!   open file is refused), beside the one database file they belong with.
//!
//! Public halves and lifecycle always live in the store so every instance sees the same key
//! set. Lifecycle, all derived from timestamps with `now` as input:
//!
//! * published from `created_at`; signs from `activates_at` (a rotation sets it one overlap
//!   ahead, so verifiers have cached the key before any token needs it);
//! * the active key is the newest key whose `activates_at` has passed and which is neither
//!   retired nor withdrawn; an older key stops signing when a newer one activates;
//! * a key that stopped signing at `t` stays published until `t + JWT_TTL_MAX + MARGIN`, so no
//!   token it signed outlives its publication;
//! * `withdrawn_at` (compromise) removes it from the JWKS at once.

use agentkeys_types::audit::{AuditKind, Outcome};
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
    #[error("key-encryption key {path}: {why}")]
    Kek { path: PathBuf, why: String },
    #[error("the private key of {kid} cannot be opened: {why}")]
    Sealed { kid: String, why: String },
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
            sealed_private_key: None,
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

/// Generates a key, keeps its private half in the vault and stores its record (with an audit
/// event).
pub async fn create(
    store: &dyn Store,
    vault: &Vault,
    now: i64,
    activates_at: i64,
    audit_kind: AuditKind,
) -> Result<SigningKeyRecord, KeyError> {
    let mut key = generate(now, activates_at)?;
    match vault {
        // The file first: a record without its file would be a published key nobody can sign
        // with.
        Vault::Files { data_dir } => {
            write_private_key(data_dir, &key.record.kid, &key.pkcs8)?;
        }
        Vault::Sealed(kek) => {
            key.record.sealed_private_key = Some(kek.seal(&key.record.kid, &key.pkcs8)?);
        }
    }
    let event = key_event(
        now,
        audit_kind,
        &key.record.kid,
        serde_json::json!({"activates_at": activates_at, "sealed": vault.is_sealed()}),
    );
    let record = key.record.clone();
    store
        .transact(move |tx| {
            tx.insert_signing_key(&record)?;
            tx.append(&event)
        })
        .await?;
    Ok(key.record)
}

/// The rules between the store and the key-encryption key, as `(setting, how to fix)`: only
/// SQLite and PostgreSQL URLs; PostgreSQL keeps keys in the store, so it needs a KEK; a KEK
/// never sits inside the data dir (a copy of the data would carry the key that opens it).
pub fn check_store_and_kek(
    database_url: &str,
    data_dir: &Path,
    kek_file: Option<&Path>,
) -> Result<(), (&'static str, String)> {
    let postgres = database_url.starts_with("postgres:") || database_url.starts_with("postgresql:");
    if !postgres && !database_url.starts_with("sqlite:") {
        return Err((
            "database_url",
            "use sqlite://PATH or postgres://USER@HOST:PORT/DATABASE".into(),
        ));
    }
    if postgres && kek_file.is_none() {
        return Err((
            "key_encryption_key_file",
            "PostgreSQL keeps the signing keys in the database, sealed: set \
             BROKER_KEY_ENCRYPTION_KEY_FILE to a file made with `openssl rand -base64 32` (mode 0600)"
                .into(),
        ));
    }
    if let Some(kek) = kek_file {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
        if absolute(kek).starts_with(absolute(data_dir)) {
            return Err((
                "key_encryption_key_file",
                "keep the key-encryption key outside the data dir: a copy of the data must not \
                 carry the key that opens it"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// Where private signing keys are kept (see the module documentation).
#[derive(Debug)]
pub enum Vault {
    Files { data_dir: PathBuf },
    Sealed(Kek),
}

impl Vault {
    /// Sealed in the store when a key-encryption key is configured, else files in the data dir.
    pub fn new(data_dir: &Path, kek_file: Option<&Path>) -> Result<Self, KeyError> {
        Ok(match kek_file {
            Some(path) => Vault::Sealed(Kek::load(path)?),
            None => Vault::Files {
                data_dir: data_dir.to_owned(),
            },
        })
    }

    pub fn is_sealed(&self) -> bool {
        matches!(self, Vault::Sealed(_))
    }

    /// The private key of `record`, checked against its public half.
    fn open(&self, record: &SigningKeyRecord) -> Result<SigningKey, KeyError> {
        let key = match (&record.sealed_private_key, self) {
            (Some(sealed), Vault::Sealed(kek)) => {
                let pkcs8 = kek.open(&record.kid, sealed)?;
                SigningKey::from_pkcs8(&record.kid, &pkcs8).ok_or_else(|| KeyError::Sealed {
                    kid: record.kid.clone(),
                    why: "not a P-256 PKCS#8 key".into(),
                })?
            }
            (Some(_), Vault::Files { .. }) => {
                return Err(KeyError::Sealed {
                    kid: record.kid.clone(),
                    why: "it is sealed in the store; set BROKER_KEY_ENCRYPTION_KEY_FILE".into(),
                });
            }
            (None, Vault::Files { data_dir }) => read_private_key(data_dir, &record.kid)?,
            (None, Vault::Sealed(_)) => {
                return Err(KeyError::Sealed {
                    kid: record.kid.clone(),
                    why: "it was made without a key-encryption key and lives in a key file; \
                          run this instance without BROKER_KEY_ENCRYPTION_KEY_FILE, or rotate \
                          to a key made with it"
                        .into(),
                });
            }
        };
        if jwk_matches(&record.public_jwk, key.public_point()) {
            Ok(key)
        } else {
            Err(KeyError::Sealed {
                kid: record.kid.clone(),
                why: "it does not match the published public key".into(),
            })
        }
    }
}

/// Prefix of a sealed key: format version 1, then the KEK's fingerprint, the nonce and the
/// AES-256-GCM ciphertext with its tag.
const SEALED_V1: &[u8; 4] = b"AKS1";
const KEK_ID_LEN: usize = 8;

/// The key-encryption key: 32 random bytes, base64 in a file readable by its owner only (as
/// `openssl rand -base64 32 > kek && chmod 600 kek` makes it).
pub struct Kek {
    key: aws_lc_rs::aead::LessSafeKey,
    /// First bytes of SHA-256 of the key: says which KEK sealed a blob without revealing it.
    id: [u8; KEK_ID_LEN],
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", hex::encode(self.id))
    }
}

impl Kek {
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let fail = |why: String| KeyError::Kek {
            path: path.to_owned(),
            why,
        };
        let meta = fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(fail(format!(
                "readable by group or others; run `chmod 600 {}`",
                path.display()
            )));
        }
        let text = fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| fail("not base64; make one with `openssl rand -base64 32`".into()))?;
        Self::from_bytes(&bytes).ok_or_else(|| {
            fail(format!(
                "holds {} bytes, not 32; make one with `openssl rand -base64 32`",
                bytes.len()
            ))
        })
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 32 {
            return None;
        }
        let unbound =
            aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, bytes).ok()?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
        let mut id = [0u8; KEK_ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..KEK_ID_LEN]);
        Some(Self {
            key: aws_lc_rs::aead::LessSafeKey::new(unbound),
            id,
        })
    }

    /// Seals `pkcs8` for key `kid` (bound to it as associated data, so a sealed key cannot be
    /// passed off as another kid's).
    pub fn seal(&self, kid: &str, pkcs8: &[u8]) -> Result<Vec<u8>, KeyError> {
        use aws_lc_rs::aead::{Aad, NONCE_LEN, Nonce};
        use aws_lc_rs::rand::SecureRandom;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyError::Generate("no randomness for a nonce".into()))?;
        let mut sealed = pkcs8.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| KeyError::Generate("sealing the private key failed".into()))?;
        let mut out = Vec::with_capacity(4 + KEK_ID_LEN + NONCE_LEN + sealed.len());
        out.extend_from_slice(SEALED_V1);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, kid: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        use aws_lc_rs::aead::{Aad, NONCE_LEN, Nonce};
        let fail = |why: &str| KeyError::Sealed {
            kid: kid.to_owned(),
            why: why.to_owned(),
        };
        let rest = sealed
            .strip_prefix(SEALED_V1.as_slice())
            .ok_or_else(|| fail("unknown sealing format"))?;
        if rest.len() < KEK_ID_LEN + NONCE_LEN {
            return Err(fail("truncated"));
        }
        let (id, rest) = rest.split_at(KEK_ID_LEN);
        if id != self.id {
            return Err(fail(&format!(
                "it is sealed under another key-encryption key ({}; this one is {})",
                hex::encode(id),
                hex::encode(self.id)
            )));
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail("bad nonce"))?;
        let mut buf = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut buf)
            .map_err(|_| fail("it does not authenticate (tampered, or another kid's)"))?;
        Ok(plain.to_vec())
    }

    /// This KEK's fingerprint, as `keys list` shows it.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }
}

/// Re-seals every sealed key under `new`, in one transaction with its audit event; how many.
pub async fn rotate_kek(
    store: &dyn Store,
    old: &Kek,
    new: &Kek,
    now: i64,
) -> Result<usize, KeyError> {
    let mut resealed = Vec::new();
    for r in store.signing_keys().await? {
        if let Some(sealed) = &r.sealed_private_key {
            let pkcs8 = old.open(&r.kid, sealed)?;
            resealed.push((r.kid.clone(), new.seal(&r.kid, &pkcs8)?));
        }
    }
    let count = resealed.len();
    let event = NewAuditEvent {
        time: now,
        kind: AuditKind::KeyRotateKek,
        actor: None,
        master: None,
        outcome: Outcome::Ok,
        details: serde_json::json!({"from": old.id(), "to": new.id(), "keys": count}),
    };
    store
        .transact(move |tx| {
            for (kid, sealed) in &resealed {
                if !tx.reseal_signing_key(kid, sealed)? {
                    return Err(agentkeys_store::StoreError::Conflict(format!(
                        "signing key {kid} disappeared during the rotation; run it again"
                    )));
                }
            }
            tx.append(&event)
        })
        .await?;
    Ok(count)
}

pub fn key_event(
    now: i64,
    kind: AuditKind,
    kid: &str,
    mut details: serde_json::Value,
) -> NewAuditEvent {
    details["kid"] = serde_json::Value::String(kid.to_owned());
    NewAuditEvent {
        time: now,
        kind,
        actor: None,
        master: None,
        outcome: Outcome::Ok,
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
    vault: Vault,
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
    pub fn new(vault: Vault) -> Self {
        Self {
            vault,
            inner: RwLock::new(Arc::new(Loaded {
                lifecycle: Lifecycle::new(vec![]),
                signers: HashMap::new(),
            })),
        }
    }

    pub fn vault(&self) -> &Vault {
        &self.vault
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
            match self.vault.open(r) {
                Ok(k) => {
                    signers.insert(r.kid.clone(), Arc::new(k));
                }
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
            sealed_private_key: None,
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
    fn sealed_keys_open_only_under_their_kek_and_their_kid() {
        let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
        let other = Kek::from_bytes(&[8u8; 32]).unwrap();
        let key = generate(0, 0).unwrap();
        let sealed = kek.seal(&key.record.kid, &key.pkcs8).unwrap();
        assert!(
            !sealed
                .windows(16)
                .any(|w| key.pkcs8.windows(16).any(|p| p == w)),
            "no stretch of the private key appears in the sealed bytes"
        );
        assert_eq!(kek.open(&key.record.kid, &sealed).unwrap(), key.pkcs8);
        let wrong_kek = other.open(&key.record.kid, &sealed).unwrap_err();
        assert!(
            wrong_kek.to_string().contains("another key-encryption key"),
            "{wrong_kek}"
        );
        assert!(
            kek.open("another-kid", &sealed).is_err(),
            "bound to its kid"
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(kek.open(&key.record.kid, &tampered).is_err());
        assert!(Kek::from_bytes(&[0u8; 31]).is_none());
    }

    #[test]
    fn a_kek_file_must_be_private_base64_of_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let write = |text: &str, mode: u32| {
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        };
        write(&format!("{}\n", STANDARD.encode([1u8; 32])), 0o600);
        assert!(Kek::load(&path).is_ok());
        write(&STANDARD.encode([1u8; 32]), 0o644);
        assert!(
            Kek::load(&path)
                .unwrap_err()
                .to_string()
                .contains("chmod 600")
        );
        write(&STANDARD.encode([1u8; 16]), 0o600);
        assert!(Kek::load(&path).unwrap_err().to_string().contains("not 32"));
        write("not base64 at all!", 0o600);
        assert!(
            Kek::load(&path)
                .unwrap_err()
                .to_string()
                .contains("not base64")
        );
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
