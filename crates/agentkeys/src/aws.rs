//! Client-side STS (SPEC §8): trade a broker JWT for temporary AWS credentials with an unsigned
//! `AssumeRoleWithWebIdentity` (no AWS credentials needed), and print them.
//!
//! The call goes to AWS STS in the chosen region, or to any S3-compatible cloud that speaks STS
//! (Ceph RGW) when an endpoint is given. Error codes in STS answers are shown but never relied
//! on: RGW answers every refusal with a bare 403 (SPEC §5.3, Ceph RGW notes, quirk 6).

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sts::config::timeout::TimeoutConfig;
use aws_sdk_sts::config::{BehaviorVersion, Region};
use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sts::primitives::{DateTime, DateTimeFormat};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::secret::{self, ExposeSecret, SecretString};

/// Region when neither `--region`, `AWS_REGION` nor `AWS_DEFAULT_REGION` names one.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Default lifetime of the credentials, in seconds.
pub const DEFAULT_DURATION: u32 = 3600;
/// Shortest lifetime STS grants.
pub const MIN_DURATION: u32 = 900;
/// Longest lifetime STS grants (the role's maximum session duration may be lower).
pub const MAX_DURATION: u32 = 43_200;
/// Longest STS role session name.
pub const MAX_SESSION_NAME: usize = 64;

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest text taken from a cloud error message.
const MAX_DETAIL_CHARS: usize = 400;

/// Where STS (and, for `verify-isolation`, S3) is: the region, and an endpoint for
/// S3-compatible clouds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsTarget {
    pub role_arn: String,
    pub region: String,
    /// Normalised (no trailing slash); `None` for AWS STS in `region`.
    pub endpoint: Option<String>,
}

impl StsTarget {
    /// The endpoint as shown to the user.
    pub fn endpoint_label(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => format!("https://sts.{}.amazonaws.com", self.region),
        }
    }
}

/// Temporary credentials from STS. `Debug` shows the access key id, not the secrets.
#[derive(Debug, Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub session_token: SecretString,
    /// Unix seconds.
    pub expiration: i64,
}

/// The AWS `credential_process` document (also `aws credentials --format json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessCredentials {
    pub version: u8,
    pub access_key_id: String,
    #[serde(with = "crate::secret::serde_str")]
    pub secret_access_key: SecretString,
    #[serde(with = "crate::secret::serde_str")]
    pub session_token: SecretString,
    /// RFC 3339.
    pub expiration: String,
}

impl PartialEq for AwsCredentials {
    fn eq(&self, other: &Self) -> bool {
        // Destructured, so a new field cannot be left out of the comparison.
        let Self {
            access_key_id,
            secret_access_key,
            session_token,
            expiration,
        } = self;
        *access_key_id == other.access_key_id
            && secret::same(secret_access_key, &other.secret_access_key)
            && secret::same(session_token, &other.session_token)
            && *expiration == other.expiration
    }
}

impl Eq for AwsCredentials {}

impl AwsCredentials {
    pub fn expiration_rfc3339(&self) -> String {
        rfc3339(self.expiration)
    }

    pub fn to_process(&self) -> ProcessCredentials {
        ProcessCredentials {
            version: 1,
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: self.session_token.clone(),
            expiration: self.expiration_rfc3339(),
        }
    }

    /// Back from the `credential_process` document; `None` if it is not one.
    pub fn from_process(p: &ProcessCredentials) -> Option<Self> {
        if p.version != 1 || p.access_key_id.is_empty() {
            return None;
        }
        Some(Self {
            access_key_id: p.access_key_id.clone(),
            secret_access_key: p.secret_access_key.clone(),
            session_token: p.session_token.clone(),
            expiration: parse_rfc3339(&p.expiration)?,
        })
    }
}

/// `2030-01-01T00:00:00Z`.
pub fn rfc3339(unix_secs: i64) -> String {
    DateTime::from_secs(unix_secs)
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_else(|_| unix_secs.to_string())
}

/// Unix seconds of an RFC 3339 time.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    DateTime::from_str(s, DateTimeFormat::DateTime)
        .ok()
        .map(|d| d.secs())
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// A fresh STS role session name: `agentkeys-<first 16 chars of the actor omni>-<unix
/// millis>-<8 hex>`, at most 64 characters of `[\w+=,.@-]`. The random tail keeps two calls in
/// the same millisecond apart.
pub fn session_name(actor_omni: &str) -> String {
    session_name_at(actor_omni, now_millis(), random_u32())
}

pub(crate) fn session_name_at(actor_omni: &str, unix_millis: u128, salt: u32) -> String {
    let actor: String = actor_omni
        .chars()
        .filter(|c| is_session_name_char(*c))
        .take(16)
        .collect();
    let actor = if actor.is_empty() {
        "unknown".to_owned()
    } else {
        actor
    };
    let mut name = format!("agentkeys-{actor}-{unix_millis}-{salt:08x}");
    name.truncate(MAX_SESSION_NAME);
    name
}

/// The character set of `RoleSessionName`: `[\w+=,.@-]`.
pub fn is_session_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

/// Not for secrets: only keeps session names apart. `RandomState` is seeded from the OS.
fn random_u32() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u32(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 32) as u32
}

/// The region: `--region`, else `AWS_REGION`, else `AWS_DEFAULT_REGION`, else us-east-1. Empty
/// values count as unset.
pub fn resolve_region(
    flag: Option<&str>,
    aws_region: Option<String>,
    aws_default_region: Option<String>,
) -> Result<String> {
    let pick = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let (region, source) = match pick(flag.map(str::to_owned)) {
        Some(r) => (r, "--region"),
        None => match pick(aws_region) {
            Some(r) => (r, "AWS_REGION"),
            None => match pick(aws_default_region) {
                Some(r) => (r, "AWS_DEFAULT_REGION"),
                None => return Ok(DEFAULT_REGION.to_owned()),
            },
        },
    };
    let ok = region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(region)
    } else {
        Err(Error::InvalidInput(format!(
            "invalid region {region:?} (from {source}): use a region name such as us-east-1"
        )))
    }
}

/// The region from the command line and the process environment.
pub fn region_from_env(flag: Option<&str>) -> Result<String> {
    resolve_region(
        flag,
        std::env::var("AWS_REGION").ok(),
        std::env::var("AWS_DEFAULT_REGION").ok(),
    )
}

/// Normalises an STS or S3 endpoint URL: http(s), a host, no credentials, query or fragment,
/// no trailing slash.
pub fn normalize_endpoint(raw: &str, flag: &str) -> Result<String> {
    let bad = |why: &str| {
        Error::InvalidInput(format!(
            "invalid {flag} {raw:?}: {why}; give a URL such as http://127.0.0.1:17480"
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

/// A light check that catches typos before a token is minted; the broker and STS check fully.
pub fn check_role_arn(arn: &str) -> Result<()> {
    let ok = arn.starts_with("arn:")
        && arn.contains(":role/")
        && arn.len() <= 2048
        && !arn.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid --role-arn {arn:?}: it must look like arn:aws:iam::123456789012:role/NAME \
             (or arn:aws:iam:::role/NAME on Ceph RGW)"
        )))
    }
}

/// An STS client with no credentials provider: `AssumeRoleWithWebIdentity` is unsigned.
fn sts_client(target: &StsTarget) -> aws_sdk_sts::Client {
    let mut b = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(target.region.clone()))
        .timeout_config(timeouts())
        .http_client(crate::sts_http::client());
    if let Some(e) = &target.endpoint {
        b = b.endpoint_url(e.clone());
    }
    aws_sdk_sts::Client::from_conf(b.build())
}

fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// Calls `AssumeRoleWithWebIdentity` with `jwt`.
pub async fn assume_role_with_web_identity(
    target: &StsTarget,
    session_name: &str,
    jwt: &str,
    duration_secs: u32,
) -> Result<AwsCredentials> {
    let duration = i32::try_from(duration_secs).map_err(|_| {
        Error::InvalidInput(format!(
            "--duration {duration_secs} is out of range {MIN_DURATION}–{MAX_DURATION}"
        ))
    })?;
    let out = sts_client(target)
        .assume_role_with_web_identity()
        .role_arn(&target.role_arn)
        .role_session_name(session_name)
        .web_identity_token(jwt)
        .duration_seconds(duration)
        .send()
        .await
        .map_err(|e| sts_error(target, e))?;
    let c = out.credentials().ok_or_else(|| Error::CloudUnreachable {
        service: "STS",
        endpoint: target.endpoint_label(),
        flag: "--sts-endpoint",
        detail: "the answer has no credentials".to_owned(),
    })?;
    Ok(AwsCredentials {
        access_key_id: c.access_key_id().to_owned(),
        secret_access_key: SecretString::from(c.secret_access_key()),
        session_token: SecretString::from(c.session_token()),
        expiration: c.expiration().secs(),
    })
}

fn sts_error<E>(target: &StsTarget, e: SdkError<E>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &e {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = ctx.err().code().map(|c| one_line(c, 64));
            let message = ctx
                .err()
                .message()
                .map(|m| one_line(m, MAX_DETAIL_CHARS))
                .filter(|m| !m.is_empty());
            Error::StsRefused {
                endpoint: target.endpoint_label(),
                role_arn: target.role_arn.clone(),
                detail: status_detail(status, code.as_deref(), message.as_deref()),
                code,
                message,
            }
        }
        _ => Error::CloudUnreachable {
            service: "STS",
            endpoint: target.endpoint_label(),
            flag: "--sts-endpoint",
            detail: transport_detail(&e),
        },
    }
}

/// `HTTP 403, no error code` / `HTTP 400 InvalidIdentityToken: message`.
pub(crate) fn status_detail(status: u16, code: Option<&str>, message: Option<&str>) -> String {
    let mut s = format!("HTTP {status}");
    match code {
        Some(c) => {
            let _ = write!(s, " {c}");
        }
        None => s.push_str(", no error code"),
    }
    if let Some(m) = message {
        let _ = write!(s, ": {m}");
    }
    s
}

/// A short text for an error with no service answer (dispatch failure, timeout, bad reply).
pub(crate) fn transport_detail<E>(e: &SdkError<E>) -> String
where
    E: std::error::Error + 'static,
{
    let what = match e {
        SdkError::TimeoutError(_) => "the request timed out",
        SdkError::DispatchFailure(d) if d.is_timeout() => "the request timed out",
        SdkError::DispatchFailure(_) => "connection failed",
        SdkError::ResponseError(_) => "the answer could not be read",
        SdkError::ConstructionFailure(_) => "the request could not be built",
        _ => "the request failed",
    };
    format!(
        "{what} ({})",
        one_line(&DisplayErrorContext(e).to_string(), MAX_DETAIL_CHARS)
    )
}

/// One printable line of bounded length.
pub(crate) fn one_line(s: &str, max_chars: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max_chars)
        .collect();
    if s.chars().count() > max_chars {
        out.push('…');
    }
    out.trim().to_owned()
}

/// `--format json`: the `credential_process` document, pretty-printed.
pub fn render_json(creds: &AwsCredentials) -> Result<String> {
    serde_json::to_string_pretty(&creds.to_process())
        .map(|s| s + "\n")
        .map_err(|e| Error::InvalidInput(format!("cannot encode the credentials as JSON: {e}")))
}

/// The variables a process gets: the credentials, the region (both names) and the wallet whose
/// prefix the credentials may touch.
pub fn env_vars(creds: &AwsCredentials, region: &str, wallet: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", creds.access_key_id.clone()),
        (
            "AWS_SECRET_ACCESS_KEY",
            creds.secret_access_key.expose_secret().to_owned(),
        ),
        (
            "AWS_SESSION_TOKEN",
            creds.session_token.expose_secret().to_owned(),
        ),
        ("AWS_REGION", region.to_owned()),
        ("AWS_DEFAULT_REGION", region.to_owned()),
        ("AGENTKEYS_USER_WALLET", wallet.to_owned()),
    ]
}

/// `--format env`: `export NAME='value'` lines for `eval "$(…)"`.
pub fn render_env(creds: &AwsCredentials, region: &str, wallet: &str) -> String {
    let mut out = String::new();
    for (k, v) in env_vars(creds, region, wallet) {
        let _ = writeln!(out, "export {k}={}", shell_quote(&v));
    }
    out
}

/// POSIX shell single-quoting: `it's` → `'it'\''s'`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const OMNI: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    pub(crate) fn creds() -> AwsCredentials {
        AwsCredentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: SecretString::from("s3cr3t/key+it's"),
            session_token: SecretString::from("tok$en`x`\"y\""),
            expiration: 1_893_456_000, // 2030-01-01T00:00:00Z
        }
    }

    #[test]
    fn session_name_shape() {
        let n = session_name_at(OMNI, 1_767_225_600_123, 0xdead_beef);
        assert_eq!(n, "agentkeys-0123456789abcdef-1767225600123-deadbeef");
        let n = session_name(OMNI);
        assert!(n.len() <= MAX_SESSION_NAME, "{n}");
        assert!(n.starts_with("agentkeys-0123456789abcdef-"), "{n}");
        assert!(n.chars().all(is_session_name_char), "{n}");
        // Hostile or empty actor strings still give a valid name.
        for actor in ["", "a b/c\nd*e", &"é".repeat(100), &"x".repeat(500)] {
            let n = session_name_at(actor, u128::MAX, u32::MAX);
            assert!(n.len() <= MAX_SESSION_NAME && n.len() >= 2, "{n}");
            assert!(n.chars().all(is_session_name_char), "{n:?}");
        }
    }

    #[test]
    fn session_names_are_unique() {
        let names: HashSet<String> = (0..2000).map(|_| session_name(OMNI)).collect();
        assert_eq!(names.len(), 2000);
    }

    #[test]
    fn json_is_the_credential_process_document() {
        let s = render_json(&creds()).expect("json");
        let v: serde_json::Value = serde_json::from_str(&s).expect("parse");
        assert_eq!(
            v,
            serde_json::json!({
                "Version": 1,
                "AccessKeyId": "ASIAEXAMPLE",
                "SecretAccessKey": "s3cr3t/key+it's",
                "SessionToken": "tok$en`x`\"y\"",
                "Expiration": "2030-01-01T00:00:00Z",
            })
        );
        // Field order as documented by AWS.
        let order: Vec<usize> = ["Version", "AccessKeyId", "SecretAccessKey", "SessionToken"]
            .iter()
            .map(|k| s.find(k).expect("field"))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{s}");
        // And back.
        let p: ProcessCredentials = serde_json::from_str(&s).expect("parse");
        assert_eq!(AwsCredentials::from_process(&p), Some(creds()));
    }

    #[test]
    fn env_lines_are_shell_quoted() {
        let s = render_env(&creds(), "eu-west-1", "0xabc");
        assert_eq!(
            s,
            "export AWS_ACCESS_KEY_ID='ASIAEXAMPLE'\n\
             export AWS_SECRET_ACCESS_KEY='s3cr3t/key+it'\\''s'\n\
             export AWS_SESSION_TOKEN='tok$en`x`\"y\"'\n\
             export AWS_REGION='eu-west-1'\n\
             export AWS_DEFAULT_REGION='eu-west-1'\n\
             export AGENTKEYS_USER_WALLET='0xabc'\n"
        );
    }

    #[cfg(unix)]
    #[test]
    fn env_lines_round_trip_through_sh() {
        let script = format!(
            "{}printf '%s|%s|%s' \"$AWS_SECRET_ACCESS_KEY\" \"$AWS_SESSION_TOKEN\" \"$AGENTKEYS_USER_WALLET\"",
            render_env(&creds(), "us-east-1", "0xabc")
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("sh");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "s3cr3t/key+it's|tok$en`x`\"y\"|0xabc"
        );
    }

    #[test]
    fn credentials_debug_is_redacted() {
        let d = format!("{:?}", creds());
        assert!(!d.contains("s3cr3t") && !d.contains("tok$en"), "{d}");
        assert!(d.contains("ASIAEXAMPLE"));
        let d = format!("{:?}", creds().to_process());
        assert!(!d.contains("s3cr3t") && !d.contains("tok$en"), "{d}");
    }

    #[test]
    fn region_precedence() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            resolve_region(Some("eu-west-1"), s("x"), s("y")).expect("ok"),
            "eu-west-1"
        );
        assert_eq!(
            resolve_region(None, s("eu-central-1"), s("y")).expect("ok"),
            "eu-central-1"
        );
        assert_eq!(
            resolve_region(None, s(""), s("ap-south-1")).expect("ok"),
            "ap-south-1"
        );
        assert_eq!(resolve_region(None, None, None).expect("ok"), "us-east-1");
        let e = resolve_region(None, s("us east;rm"), None).expect_err("bad");
        assert!(e.to_string().contains("AWS_REGION"), "{e}");
    }

    #[test]
    fn endpoints_are_normalised() {
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:17480/", "--sts-endpoint").expect("ok"),
            "http://127.0.0.1:17480"
        );
        for bad in [
            "127.0.0.1:17480",
            "ftp://x",
            "http://a:b@x",
            "http://x/?q=1",
        ] {
            let e = normalize_endpoint(bad, "--sts-endpoint").expect_err(bad);
            assert!(e.to_string().contains("--sts-endpoint"), "{e}");
        }
    }

    #[test]
    fn role_arns() {
        check_role_arn("arn:aws:iam::123456789012:role/x").expect("aws");
        check_role_arn("arn:aws:iam:::role/x").expect("rgw");
        for bad in [
            "",
            "role/x",
            "arn:aws:iam::1:user/x",
            "arn:aws:iam:::role/a b",
        ] {
            assert!(check_role_arn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_details() {
        assert_eq!(status_detail(403, None, None), "HTTP 403, no error code");
        assert_eq!(
            status_detail(400, Some("InvalidIdentityToken"), Some("bad iss")),
            "HTTP 400 InvalidIdentityToken: bad iss"
        );
    }

    const STS_OK: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <AccessKeyId>ASIAFAKE</AccessKeyId>
      <SecretAccessKey>fake-secret</SecretAccessKey>
      <SessionToken>fake-token</SessionToken>
      <Expiration>2030-01-01T00:00:00Z</Expiration>
    </Credentials>
    <AssumedRoleUser><Arn>arn:aws:sts:::assumed-role/r/s</Arn><AssumedRoleId>x:s</AssumedRoleId></AssumedRoleUser>
    <SubjectFromWebIdentityToken>agentkeys:user:0xabc</SubjectFromWebIdentityToken>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>r1</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#;

    fn target(endpoint: &str) -> StsTarget {
        StsTarget {
            role_arn: "arn:aws:iam:::role/data".into(),
            region: "us-east-1".into(),
            endpoint: Some(endpoint.to_owned()),
        }
    }

    #[tokio::test]
    async fn sts_call_is_unsigned_and_parsed() {
        let server = crate::testutil::FakeServer::start(vec![(200, STS_OK.to_owned())]);
        let t = target(&server.url);
        let c = assume_role_with_web_identity(&t, "agentkeys-abc-1-00000000", "the.jwt.value", 900)
            .await
            .expect("credentials");
        assert_eq!(c.access_key_id, "ASIAFAKE");
        assert_eq!(c.secret_access_key.expose_secret(), "fake-secret");
        assert_eq!(c.session_token.expose_secret(), "fake-token");
        assert_eq!(c.expiration_rfc3339(), "2030-01-01T00:00:00Z");
        let reqs = server.requests();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert!(r.starts_with("POST / "), "{r}");
        for needle in [
            "Action=AssumeRoleWithWebIdentity",
            "RoleArn=arn%3Aaws%3Aiam%3A%3A%3Arole%2Fdata",
            "RoleSessionName=agentkeys-abc-1-00000000",
            "WebIdentityToken=the.jwt.value",
            "DurationSeconds=900",
        ] {
            assert!(r.contains(needle), "{needle} not in {r}");
        }
        assert!(
            !r.to_ascii_lowercase().contains("\nauthorization:"),
            "the call must be unsigned: {r}"
        );
        let lower = r.to_ascii_lowercase();
        assert_eq!(lower.matches("\ncontent-length:").count(), 1, "{r}");
        assert!(
            lower.contains("\ncontent-type: application/x-www-form-urlencoded"),
            "{r}"
        );
    }

    #[tokio::test]
    async fn rgw_style_refusal_is_sts_refused() {
        // Ceph RGW: S3-style XML, no <ErrorResponse> wrapper; the SDK sees no code.
        let body = r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><RequestId>tx1</RequestId><HostId>h</HostId></Error>"#;
        let server = crate::testutil::FakeServer::start(vec![(403, body.to_owned())]);
        let e = assume_role_with_web_identity(&target(&server.url), "n", "jwt", 900)
            .await
            .expect_err("refused");
        assert!(matches!(e, Error::StsRefused { .. }), "{e:?}");
        let s = e.to_string();
        assert!(
            s.contains("HTTP 403") && s.contains("sts:TagSession"),
            "{s}"
        );
        assert_eq!(e.exit_code(), crate::error::EXIT_CLOUD);
    }

    #[tokio::test]
    async fn aws_style_refusal_keeps_the_code() {
        let body = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>No OpenIDConnect provider found in your account for https://b.example</Message></Error><RequestId>r</RequestId></ErrorResponse>"#;
        let server = crate::testutil::FakeServer::start(vec![(400, body.to_owned())]);
        let e = assume_role_with_web_identity(&target(&server.url), "n", "jwt", 900)
            .await
            .expect_err("refused");
        let Error::StsRefused { code, detail, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(code.as_deref(), Some("InvalidIdentityToken"));
        assert!(detail.contains("No OpenIDConnect provider"), "{detail}");
        assert!(!e.to_string().contains('\n'));
    }

    #[tokio::test]
    async fn unreachable_sts_is_named() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(9);
        let url = format!("http://127.0.0.1:{port}");
        let e = assume_role_with_web_identity(&target(&url), "n", "jwt", 900)
            .await
            .expect_err("unreachable");
        assert!(matches!(e, Error::CloudUnreachable { .. }), "{e:?}");
        let s = e.to_string();
        assert!(s.contains(&url) && s.contains("--sts-endpoint"), "{s}");
        assert!(s.contains("connection failed"), "{s}");
        assert_eq!(e.exit_code(), crate::error::EXIT_CLOUD);
    }

    #[test]
    fn rfc3339_round_trip() {
        assert_eq!(rfc3339(1_893_456_000), "2030-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("2030-01-01T00:00:00Z"), Some(1_893_456_000));
        assert_eq!(parse_rfc3339("tomorrow"), None);
    }
}
