//! A small typed client for the broker's HTTP API (SPEC §4). Request and response bodies are the
//! shared types of `agentkeys_types::api`; every failure becomes an [`Error`] that tells the
//! user what to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentkeys_types::api::{
    AgentInfo, AgentList, AgentSessionRequest, EmailStartRequest, IdentityList, LinkEmailRequest,
    LinkOidcRequest, LoginCollectRequest, LoginStartResponse, LoginStatusResponse, MintRequest,
    MintResponse, OidcStartRequest, PairingApproveRequest, PairingPollRequest, PairingPollResponse,
    PairingStartRequest, PairingStartResponse, SessionIssued, SessionList, UnlinkResult,
    WalletChallengeRequest, WalletChallengeResponse, WalletVerifyRequest, WhoAmI,
};
use agentkeys_types::{ErrorBody, OmniAccount};
use reqwest::{Method, RequestBuilder, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result, RetryAfter};
use crate::secret::{ExposeSecret, SecretString};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest broker message shown to the user.
const MAX_MESSAGE_CHARS: usize = 500;
/// Longest issuer URL accepted from the discovery document (it goes into signed proofs).
const MAX_ISSUER_LEN: usize = 2048;

pub struct BrokerClient {
    base: String,
    profile: String,
    /// The saved session used with this client is an agent's (changes the advice on a 401).
    agent_session: bool,
    http: reqwest::Client,
}

/// Whose saved session authenticates a call: a 401 then means "sign in (or pair) again" rather
/// than "wrong signature".
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionOwner<'a> {
    pub profile: &'a str,
    pub agent: bool,
}

/// What a master can do to one of its agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAction {
    Suspend,
    Resume,
    Remove,
}

impl AgentAction {
    fn method_and_suffix(self) -> (Method, &'static str) {
        match self {
            AgentAction::Suspend => (Method::POST, "/suspend"),
            AgentAction::Resume => (Method::POST, "/resume"),
            AgentAction::Remove => (Method::DELETE, ""),
        }
    }
}

/// How a sign-in (or a link) is proved: the broker's routes differ only in this path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginMethod {
    Email,
    Oidc,
}

impl LoginMethod {
    fn segment(self) -> &'static str {
        match self {
            LoginMethod::Email => "email",
            LoginMethod::Oidc => "oidc",
        }
    }

    /// `/v1/auth/<method>/start`.
    pub(crate) fn start_path(self) -> String {
        format!("/v1/auth/{}/start", self.segment())
    }

    /// `/v1/identities/<method>`: link an identity to the signed-in wallet master.
    pub(crate) fn link_path(self) -> String {
        format!("/v1/identities/{}", self.segment())
    }

    /// `/v1/auth/<method>/collect`: the code and the verifier go in the body, never a URL.
    pub(crate) fn collect_path(self) -> String {
        format!("/v1/auth/{}/collect", self.segment())
    }
}

/// A request id names a sign-in request: it must be a short base64url token (the broker's are
/// 43 characters).
pub(crate) fn check_request_id(id: &str) -> bool {
    (16..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `DELETE /v1/identities/{type}/{value}`, each segment percent-encoded (RFC 3986: everything
/// but unreserved characters). Empty, `.` and `..` segments are refused: URL parsers would drop
/// or resolve them (also when encoded as `%2e`).
pub(crate) fn unlink_path(identity_type: &str, identity_value: &str) -> Option<String> {
    let mut path = String::from("/v1/identities");
    for segment in [identity_type, identity_value] {
        if segment.is_empty() || segment == "." || segment == ".." {
            return None;
        }
        path.push('/');
        path.push_str(&encode_path_segment(segment));
    }
    Some(path)
}

/// RFC 3986's unreserved characters stay; everything else is percent-encoded.
const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode_path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, RESERVED).to_string()
}

#[derive(serde::Deserialize)]
struct Discovery {
    issuer: String,
}

/// Whether a plain-http broker off loopback may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpPolicy {
    /// https anywhere; http only to a loopback address (127.0.0.0/8, ::1, localhost).
    #[default]
    LoopbackOnly,
    /// http anywhere: `--insecure-http` / `AGENTKEYS_INSECURE_HTTP`.
    AllowInsecure,
}

/// Refuses an `http://` broker off loopback under [`HttpPolicy::LoopbackOnly`]: session tokens,
/// device proofs and minted JWTs would cross the network in clear text.
pub fn check_transport(base_url: &str, policy: HttpPolicy) -> Result<()> {
    let url = reqwest::Url::parse(base_url)
        .map_err(|e| Error::InvalidInput(format!("invalid broker URL {base_url:?}: {e}")))?;
    if url.scheme() == "https" || policy == HttpPolicy::AllowInsecure || is_loopback(&url) {
        Ok(())
    } else {
        Err(Error::InsecureBrokerUrl {
            url: base_url.to_owned(),
        })
    }
}

/// Loopback by address (any of 127.0.0.0/8, ::1) or the name `localhost`; no resolution.
fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host_str() {
        Some(h) if h.eq_ignore_ascii_case("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// How the client reaches a broker: whether plain http may leave loopback, and which CAs
/// vouch for an https broker.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    pub policy: HttpPolicy,
    /// `--ca-file` / `AGENTKEYS_CA_FILE`: PEM certificates trusted besides the system's roots
    /// (a private CA in front of the broker). The system's own roots come from the platform,
    /// which on Linux honours `SSL_CERT_FILE` and `SSL_CERT_DIR`.
    pub ca_file: Option<PathBuf>,
}

/// The certificates of a `--ca-file`; at least one, or an error naming the file.
pub fn load_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let bad = |why: String| {
        Error::InvalidInput(format!(
            "the CA file {} (--ca-file, AGENTKEYS_CA_FILE) {why}",
            path.display()
        ))
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(bad(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        )),
        Err(e) => Err(bad(format!("is not a PEM certificate bundle: {e}"))),
    }
}

impl BrokerClient {
    /// A client that refuses plain http off loopback; see [`BrokerClient::with_transport`].
    pub fn new(base_url: &str, profile: &str) -> Result<Self> {
        Self::with_policy(base_url, profile, HttpPolicy::LoopbackOnly)
    }

    /// [`BrokerClient::with_transport`] trusting the system's roots only.
    pub fn with_policy(base_url: &str, profile: &str, policy: HttpPolicy) -> Result<Self> {
        Self::with_transport(
            base_url,
            profile,
            &Transport {
                policy,
                ca_file: None,
            },
        )
    }

    /// `base_url` must already be normalised (see [`crate::config::normalize_broker_url`]);
    /// `profile` only names the profile in error messages. Every client is built here, so the
    /// transport check cannot be skipped.
    pub fn with_transport(base_url: &str, profile: &str, transport: &Transport) -> Result<Self> {
        check_transport(base_url, transport.policy)?;
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &transport.ca_file {
            for cert in load_ca_file(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("agentkeys/", env!("CARGO_PKG_VERSION")))
            // A bearer token must not follow a redirect to another origin.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::InvalidInput(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self {
            base: base_url.to_owned(),
            profile: profile.to_owned(),
            agent_session: false,
            http,
        })
    }

    /// Marks the saved session used with this client as an agent's.
    pub fn with_agent_session(mut self, agent: bool) -> Self {
        self.agent_session = agent;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn owner(&self) -> Option<SessionOwner<'_>> {
        Some(SessionOwner {
            profile: &self.profile,
            agent: self.agent_session,
        })
    }

    /// The broker's issuer URL from its discovery document, verbatim (device proofs name it).
    /// It must be this client's URL: see [`check_own_issuer`].
    pub async fn issuer(&self) -> Result<String> {
        let rb = self.request(Method::GET, "/.well-known/openid-configuration");
        let doc: Discovery = self.send_json(rb, None).await?;
        check_issuer(&doc.issuer).map_err(|why| Error::BrokerProtocol {
            url: self.base.clone(),
            detail: format!("the discovery document's issuer {why}"),
        })?;
        check_own_issuer(&self.base, &doc.issuer)?;
        Ok(doc.issuer)
    }

    pub async fn pairing_start(&self, req: &PairingStartRequest) -> Result<PairingStartResponse> {
        let rb = self.request(Method::POST, "/v1/agents/pairing").json(req);
        self.send_json(rb, None).await
    }

    /// A new session for an already-paired agent, proved by its device key.
    pub async fn agent_session(&self, req: &AgentSessionRequest) -> Result<SessionIssued> {
        let rb = self.request(Method::POST, "/v1/agents/session").json(req);
        self.send_json(rb, None).await
    }

    /// Pending (202) and approved (200) answers both come back as `Ok`; `status` tells them apart.
    pub async fn pairing_poll(&self, req: &PairingPollRequest) -> Result<PairingPollResponse> {
        let rb = self
            .request(Method::POST, "/v1/agents/pairing/poll")
            .json(req);
        self.send_json(rb, None).await
    }

    pub async fn pairing_approve(
        &self,
        token: &SecretString,
        req: &PairingApproveRequest,
    ) -> Result<AgentInfo> {
        let rb = self
            .request(Method::POST, "/v1/agents/pairing/approve")
            .bearer_auth(token.expose_secret())
            .json(req);
        self.send_json(rb, self.owner()).await
    }

    pub async fn agents(&self, token: &SecretString) -> Result<AgentList> {
        let rb = self
            .request(Method::GET, "/v1/agents")
            .bearer_auth(token.expose_secret());
        self.send_json(rb, self.owner()).await
    }

    pub async fn agent_action(
        &self,
        token: &SecretString,
        agent: &OmniAccount,
        action: AgentAction,
    ) -> Result<AgentInfo> {
        let (method, suffix) = action.method_and_suffix();
        // An omni is 64 hex digits: safe in a path as it is.
        let rb = self
            .request(method, &format!("/v1/agents/{agent}{suffix}"))
            .bearer_auth(token.expose_secret());
        self.send_json(rb, self.owner()).await
    }

    pub async fn sessions(&self, token: &SecretString) -> Result<SessionList> {
        let rb = self
            .request(Method::GET, "/v1/sessions")
            .bearer_auth(token.expose_secret());
        self.send_json(rb, self.owner()).await
    }

    /// `id` must be a session id as listed (checked by the caller: it goes into the path).
    pub async fn revoke_session(&self, token: &SecretString, id: &str) -> Result<()> {
        let rb = self
            .request(Method::POST, &format!("/v1/sessions/{id}/revoke"))
            .bearer_auth(token.expose_secret());
        self.send(rb, self.owner()).await.map(drop)
    }

    pub async fn logout_all(&self, token: &SecretString) -> Result<()> {
        let rb = self
            .request(Method::POST, "/v1/session/logout-all")
            .bearer_auth(token.expose_secret());
        self.send(rb, self.owner()).await.map(drop)
    }

    pub async fn wallet_challenge(
        &self,
        req: &WalletChallengeRequest,
    ) -> Result<WalletChallengeResponse> {
        let rb = self
            .request(Method::POST, "/v1/auth/wallet/challenge")
            .json(req);
        self.send_json(rb, None).await
    }

    pub async fn wallet_verify(&self, req: &WalletVerifyRequest) -> Result<SessionIssued> {
        let rb = self
            .request(Method::POST, "/v1/auth/wallet/verify")
            .json(req);
        self.send_json(rb, None).await
    }

    pub async fn whoami(&self, token: &SecretString) -> Result<WhoAmI> {
        let rb = self
            .request(Method::GET, "/v1/session")
            .bearer_auth(token.expose_secret());
        self.send_json(rb, self.owner()).await
    }

    pub async fn logout(&self, token: &SecretString) -> Result<()> {
        let rb = self
            .request(Method::POST, "/v1/session/logout")
            .bearer_auth(token.expose_secret());
        self.send(rb, self.owner()).await.map(drop)
    }

    pub async fn mint(&self, token: &SecretString, req: &MintRequest) -> Result<MintResponse> {
        let rb = self
            .request(Method::POST, "/v1/mint-oidc-jwt")
            .bearer_auth(token.expose_secret())
            .json(&mint_body(req));
        self.send_json(rb, self.owner()).await
    }

    /// Starts an email sign-in (a code is mailed to the address).
    pub async fn email_start(&self, req: &EmailStartRequest) -> Result<LoginStartResponse> {
        let rb = self
            .request(Method::POST, &LoginMethod::Email.start_path())
            .json(req);
        self.send_json(rb, None).await
    }

    /// Starts a sign-in with an OIDC provider; the answer carries the authorization URL.
    pub async fn oidc_start(&self, req: &OidcStartRequest) -> Result<LoginStartResponse> {
        let rb = self
            .request(Method::POST, &LoginMethod::Oidc.start_path())
            .json(req);
        self.send_json(rb, None).await
    }

    /// Starts linking an email address to the signed-in wallet master.
    pub async fn link_email_start(
        &self,
        token: &SecretString,
        req: &LinkEmailRequest,
    ) -> Result<LoginStartResponse> {
        let rb = self
            .request(Method::POST, &LoginMethod::Email.link_path())
            .bearer_auth(token.expose_secret())
            .json(req);
        self.send_json(rb, self.owner()).await
    }

    /// Starts linking an OIDC provider's account to the signed-in wallet master.
    pub async fn link_oidc_start(
        &self,
        token: &SecretString,
        req: &LinkOidcRequest,
    ) -> Result<LoginStartResponse> {
        let rb = self
            .request(Method::POST, &LoginMethod::Oidc.link_path())
            .bearer_auth(token.expose_secret())
            .json(req);
        self.send_json(rb, self.owner()).await
    }

    /// Collects a sign-in or link with the one-time code and the verifier.
    pub async fn login_collect(
        &self,
        method: LoginMethod,
        req: &LoginCollectRequest,
    ) -> Result<LoginStatusResponse> {
        let rb = self.request(Method::POST, &method.collect_path()).json(req);
        self.send_json(rb, None).await
    }

    pub async fn identities(&self, token: &SecretString) -> Result<IdentityList> {
        let rb = self
            .request(Method::GET, "/v1/identities")
            .bearer_auth(token.expose_secret());
        self.send_json(rb, self.owner()).await
    }

    /// One page of `GET /v1/audit`; `query` holds its parameters (after, limit, kind, …).
    pub async fn audit_page(
        &self,
        token: &SecretString,
        query: &[(&str, String)],
    ) -> Result<agentkeys_types::api::AuditPage> {
        let params: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", encode_path_segment(v)))
            .collect();
        let rb = self
            .request(Method::GET, &format!("/v1/audit?{}", params.join("&")))
            .bearer_auth(token.expose_secret());
        self.send_json(rb, self.owner()).await
    }

    /// `POST /v1/grants` (a master).
    pub async fn grant_create(
        &self,
        token: &SecretString,
        req: &agentkeys_types::api::GrantCreateRequest,
    ) -> Result<agentkeys_types::api::GrantInfo> {
        let rb = self
            .request(Method::POST, "/v1/grants")
            .bearer_auth(token.expose_secret())
            .json(req);
        self.send_json(rb, self.owner()).await
    }

    /// `GET /v1/grants`: a master's grants, or an agent's own.
    pub async fn grants(&self, token: &SecretString) -> Result<agentkeys_types::api::GrantList> {
        let rb = self
            .request(Method::GET, "/v1/grants")
            .bearer_auth(token.expose_secret());
        self.send_json(rb, self.owner()).await
    }

    /// `DELETE /v1/grants/{id}` (a master); the id is percent-encoded.
    pub async fn grant_revoke(&self, token: &SecretString, id: &str) -> Result<()> {
        let rb = self
            .request(
                Method::DELETE,
                &format!("/v1/grants/{}", encode_path_segment(id)),
            )
            .bearer_auth(token.expose_secret());
        self.send(rb, self.owner()).await.map(drop)
    }

    /// `POST /v1/access-requests` (an agent): ask the master for a grant.
    pub async fn access_request(
        &self,
        token: &SecretString,
        req: &agentkeys_types::api::AccessRequestCreate,
    ) -> Result<agentkeys_types::api::AccessRequestInfo> {
        let rb = self
            .request(Method::POST, "/v1/access-requests")
            .bearer_auth(token.expose_secret())
            .json(req);
        self.send_json(rb, self.owner()).await
    }

    /// `GET /v1/access-requests`: a master's (to all its agents), or an agent's own.
    pub async fn access_requests(
        &self,
        token: &SecretString,
        pending_only: bool,
    ) -> Result<agentkeys_types::api::AccessRequestList> {
        let path = if pending_only {
            "/v1/access-requests?status=pending"
        } else {
            "/v1/access-requests"
        };
        let rb = self
            .request(Method::GET, path)
            .bearer_auth(token.expose_secret());
        self.send_json(rb, self.owner()).await
    }

    /// `GET /v1/access-requests/{id}`; the id is percent-encoded.
    pub async fn access_request_show(
        &self,
        token: &SecretString,
        id: &str,
    ) -> Result<agentkeys_types::api::AccessRequestInfo> {
        let path = format!("/v1/access-requests/{}", encode_path_segment(id));
        let rb = self
            .request(Method::GET, &path)
            .bearer_auth(token.expose_secret());
        self.send_json(rb, self.owner()).await
    }

    /// `POST /v1/access-requests/{id}/approve` (a master).
    pub async fn access_approve(
        &self,
        token: &SecretString,
        id: &str,
        req: &agentkeys_types::api::AccessApproveRequest,
    ) -> Result<agentkeys_types::api::AccessRequestInfo> {
        let path = format!("/v1/access-requests/{}/approve", encode_path_segment(id));
        let rb = self
            .request(Method::POST, &path)
            .bearer_auth(token.expose_secret())
            .json(req);
        self.send_json(rb, self.owner()).await
    }

    /// `POST /v1/access-requests/{id}/deny` (a master).
    pub async fn access_deny(
        &self,
        token: &SecretString,
        id: &str,
    ) -> Result<agentkeys_types::api::AccessRequestInfo> {
        let path = format!("/v1/access-requests/{}/deny", encode_path_segment(id));
        let rb = self
            .request(Method::POST, &path)
            .bearer_auth(token.expose_secret());
        self.send_json(rb, self.owner()).await
    }

    pub async fn unlink_identity(
        &self,
        token: &SecretString,
        identity_type: &str,
        identity_value: &str,
    ) -> Result<UnlinkResult> {
        let path = unlink_path(identity_type, identity_value).ok_or_else(|| {
            Error::InvalidInput(
                "the identity type and value must not be empty, `.` or `..`".to_owned(),
            )
        })?;
        let rb = self
            .request(Method::DELETE, &path)
            .bearer_auth(token.expose_secret());
        self.send_json(rb, self.owner()).await
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header(header::ACCEPT, "application/json")
    }

    /// Sends and returns the body of a 2xx answer; anything else becomes an [`Error`].
    /// `session` is set on calls authenticated by the saved session, so a 401 means
    /// "sign in again" rather than "wrong signature".
    async fn send(&self, rb: RequestBuilder, session: Option<SessionOwner<'_>>) -> Result<Vec<u8>> {
        let resp = rb.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?
            .to_vec();
        if status.is_success() {
            Ok(body)
        } else {
            Err(error_from_response(
                &self.base,
                status,
                retry_after.as_deref(),
                &body,
                session,
            ))
        }
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        rb: RequestBuilder,
        session: Option<SessionOwner<'_>>,
    ) -> Result<T> {
        let body = self.send(rb, session).await?;
        serde_json::from_slice(&body).map_err(|e| Error::BrokerProtocol {
            url: self.base.clone(),
            detail: format!("the response body is not the expected JSON ({e})"),
        })
    }

    fn transport_error(&self, e: reqwest::Error) -> Error {
        let detail = if e.is_timeout() {
            "the request timed out".to_owned()
        } else if e.is_connect() {
            // The innermost cause ("Connection refused", "dns error", ...) is the useful part.
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            format!("connection failed ({cause})")
        } else {
            e.without_url().to_string()
        };
        Error::BrokerUnreachable {
            url: self.base.clone(),
            detail,
        }
    }
}

/// The mint body with absent fields left out, so an empty intent is `{}`.
fn mint_body(req: &MintRequest) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    if let Some(a) = &req.audience {
        map.insert("audience".into(), a.clone().into());
    }
    if let Some(r) = &req.role_arn {
        map.insert("role_arn".into(), r.clone().into());
    }
    if let Some(g) = &req.grant_id {
        map.insert("grant_id".into(), g.clone().into());
    }
    serde_json::Value::Object(map)
}

/// Turns a non-2xx answer into an [`Error`]. Pure, so the mapping is unit-tested.
pub(crate) fn error_from_response(
    base_url: &str,
    status: StatusCode,
    retry_after: Option<&str>,
    body: &[u8],
    session: Option<SessionOwner<'_>>,
) -> Error {
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Error::RateLimited {
            retry_after: retry_after.and_then(RetryAfter::parse),
        };
    }
    if status == StatusCode::UNAUTHORIZED
        && let Some(owner) = session
    {
        return Error::SessionRejected {
            profile: owner.profile.to_owned(),
            agent: owner.agent,
        };
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(eb) => Error::Broker {
            status: status.as_u16(),
            kind: sanitize(&eb.error, 64),
            message: sanitize(&eb.message, MAX_MESSAGE_CHARS),
        },
        Err(_) => Error::BrokerProtocol {
            url: base_url.to_owned(),
            detail: format!(
                "HTTP {status} without the JSON error body{}",
                if status == StatusCode::NOT_FOUND {
                    " (wrong URL, or an older broker?)"
                } else {
                    ""
                }
            ),
        },
    }
}

/// An issuer goes verbatim into the text a device key signs: an http(s) URL of one printable
/// line and bounded length.
fn check_issuer(issuer: &str) -> std::result::Result<(), &'static str> {
    if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
        return Err("is not an http(s) URL");
    }
    if issuer.len() > MAX_ISSUER_LEN {
        return Err("is too long");
    }
    if issuer.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("contains spaces or control characters");
    }
    Ok(())
}

/// A discovery document names the URL it was fetched from as its issuer (OpenID Connect
/// Discovery §4.3). One that names another is a relay's (or a misconfigured broker's): a device
/// proof for that issuer would be accepted by the other broker, and the session sent here.
/// Compared after normalising both, so host case and a default port do not matter.
pub(crate) fn check_own_issuer(base_url: &str, issuer: &str) -> Result<()> {
    let own = crate::config::normalize_broker_url(issuer).is_ok_and(|i| i == base_url);
    if own {
        Ok(())
    } else {
        Err(Error::ForeignIssuer {
            url: base_url.to_owned(),
            issuer: sanitize(issuer, 200),
        })
    }
}

/// Keeps a broker-provided string to one printable line of bounded length.
pub(crate) fn sanitize(s: &str, max_chars: usize) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:8091";
    const P: Option<SessionOwner<'static>> = Some(SessionOwner {
        profile: "p",
        agent: false,
    });

    fn body(kind: &str, msg: &str) -> Vec<u8> {
        serde_json::to_vec(&ErrorBody {
            error: kind.into(),
            message: msg.into(),
        })
        .unwrap_or_default()
    }

    #[test]
    fn maps_401_on_session_calls_to_login_again() {
        let e = error_from_response(
            URL,
            StatusCode::UNAUTHORIZED,
            None,
            &body("unauthenticated", "x"),
            P,
        );
        assert!(
            matches!(e, Error::SessionRejected { ref profile, agent: false } if profile == "p"),
            "{e:?}"
        );
        assert!(e.to_string().contains("login wallet --key-file"));
        let agent = Some(SessionOwner {
            profile: "default",
            agent: true,
        });
        let e = error_from_response(
            URL,
            StatusCode::UNAUTHORIZED,
            None,
            &body("unauthenticated", "x"),
            agent,
        );
        assert!(
            e.to_string().contains("run `agentkeys agent login` again"),
            "{e}"
        );
    }

    #[test]
    fn an_unusable_ca_file_is_refused_naming_the_file_and_the_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").expect("write");
        let key_only = dir.path().join("key.pem");
        std::fs::write(
            &key_only,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        for (path, why) in [
            (dir.path().join("missing.pem"), "cannot be read"),
            (garbage, "no PEM certificate"),
            (key_only, "no PEM certificate"),
        ] {
            let transport = Transport {
                policy: HttpPolicy::LoopbackOnly,
                ca_file: Some(path.clone()),
            };
            let e = BrokerClient::with_transport("https://broker.example", "p", &transport)
                .err()
                .expect("refused");
            let s = e.to_string();
            assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
            for word in [path.to_str().expect("utf-8"), "AGENTKEYS_CA_FILE", why] {
                assert!(s.contains(word), "{word:?} not in {s}");
            }
        }
    }

    #[test]
    fn plain_http_is_refused_off_loopback_unless_allowed() {
        for ok in [
            "https://broker.example",
            "https://10.0.0.1:8443",
            "http://127.0.0.1:8091",
            "http://127.1.2.3",
            "http://localhost:8091",
            "http://LOCALHOST",
            "http://[::1]:8091",
        ] {
            let url = crate::config::normalize_broker_url(ok).expect(ok);
            assert!(
                BrokerClient::new(&url, "p").is_ok(),
                "{ok} should be accepted"
            );
        }
        for bad in [
            "http://broker.example",
            "http://10.0.0.1:8091",
            "http://128.0.0.1",
            "http://[::2]",
            "http://localhost.evil.example",
            "http://0.0.0.0:8091",
        ] {
            let url = crate::config::normalize_broker_url(bad).expect(bad);
            let e = BrokerClient::new(&url, "p")
                .err()
                .unwrap_or_else(|| panic!("{bad} should be refused"));
            assert!(matches!(e, Error::InsecureBrokerUrl { .. }), "{bad}: {e:?}");
            let s = e.to_string();
            assert!(
                s.contains("--insecure-http") && s.contains("AGENTKEYS_INSECURE_HTTP"),
                "{s}"
            );
            BrokerClient::with_policy(&url, "p", HttpPolicy::AllowInsecure).expect(bad);
        }
    }

    #[test]
    fn the_issuer_must_be_the_url_discovery_came_from() {
        check_own_issuer(URL, URL).expect("same");
        check_own_issuer("https://b.example", "https://B.example:443").expect("same origin");
        check_own_issuer("https://b.example/ak", "https://b.example/ak").expect("with a path");
        for other in [
            "http://127.0.0.1:8092",
            "https://127.0.0.1:8091",
            "http://127.0.0.1:8091/other",
            "https://broker.example",
            "not a url",
        ] {
            let e = check_own_issuer(URL, other).expect_err(other);
            assert!(matches!(e, Error::ForeignIssuer { .. }), "{e:?}");
            assert!(e.to_string().contains("relaying"), "{e}");
        }
    }

    #[test]
    fn issuers_must_be_one_line_urls() {
        assert!(check_issuer("https://broker.example").is_ok());
        assert!(check_issuer("http://127.0.0.1:8091").is_ok());
        for bad in [
            "",
            "broker.example",
            "https://b\naction: poll",
            "https://b x",
            &format!("https://{}", "a".repeat(MAX_ISSUER_LEN)),
        ] {
            assert!(check_issuer(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn maps_401_on_sign_in_to_the_broker_message() {
        let e = error_from_response(
            URL,
            StatusCode::UNAUTHORIZED,
            None,
            &body(
                "unauthenticated",
                "The signature does not match the challenge.",
            ),
            None,
        );
        assert_eq!(
            e.to_string(),
            "the broker refused the request (401 unauthenticated): The signature does not match the challenge."
        );
    }

    #[test]
    fn maps_429_with_retry_after() {
        let e = error_from_response(
            URL,
            StatusCode::TOO_MANY_REQUESTS,
            Some("17"),
            &body("rate_limited", "slow"),
            P,
        );
        assert!(
            matches!(
                e,
                Error::RateLimited {
                    retry_after: Some(RetryAfter::Seconds(17))
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("retry in 17 seconds"));
    }

    #[test]
    fn maps_403_to_broker_message() {
        let e = error_from_response(
            URL,
            StatusCode::FORBIDDEN,
            None,
            &body("audience_not_allowed", "The audience x is not allowed."),
            P,
        );
        assert!(matches!(e, Error::Broker { status: 403, .. }));
        assert!(e.to_string().contains("The audience x is not allowed."));
    }

    #[test]
    fn non_json_errors_are_protocol_errors() {
        let e = error_from_response(URL, StatusCode::NOT_FOUND, None, b"<html>nope</html>", None);
        assert!(matches!(e, Error::BrokerProtocol { .. }));
        assert!(e.to_string().contains("404"));
    }

    #[test]
    fn broker_messages_are_made_one_safe_line() {
        let evil = format!("line1\nline2\x1b[31m{}", "x".repeat(2000));
        let e = error_from_response(
            URL,
            StatusCode::BAD_REQUEST,
            None,
            &body("bad\nkind", &evil),
            None,
        );
        let s = e.to_string();
        assert!(!s.contains('\n') && !s.contains('\x1b'), "{s:?}");
        assert!(s.chars().count() < 700);
    }

    #[test]
    fn mint_body_leaves_out_absent_fields() {
        assert_eq!(mint_body(&MintRequest::default()), serde_json::json!({}));
        let r = MintRequest {
            audience: None,
            role_arn: Some("arn:aws:iam::1:role/x".into()),
            grant_id: None,
        };
        assert_eq!(
            mint_body(&r),
            serde_json::json!({"role_arn": "arn:aws:iam::1:role/x"})
        );
    }

    #[test]
    fn login_routes_per_method() {
        assert_eq!(LoginMethod::Email.start_path(), "/v1/auth/email/start");
        assert_eq!(LoginMethod::Oidc.start_path(), "/v1/auth/oidc/start");
        assert_eq!(LoginMethod::Email.link_path(), "/v1/identities/email");
        assert_eq!(LoginMethod::Oidc.link_path(), "/v1/identities/oidc");
        assert_eq!(LoginMethod::Oidc.collect_path(), "/v1/auth/oidc/collect");
        assert_eq!(LoginMethod::Email.collect_path(), "/v1/auth/email/collect");
        let email = serde_json::to_value(EmailStartRequest {
            email: "a@example.com".into(),
            code_challenge: "c".into(),
        })
        .expect("json");
        assert_eq!(
            email,
            serde_json::json!({"email": "a@example.com", "code_challenge": "c"})
        );
    }

    #[test]
    fn request_ids_are_path_safe_tokens() {
        assert!(check_request_id(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ-_01234"
        ));
        for bad in [
            "",
            "short",
            "../../v1/session/logout-all",
            "abcdefghijklmnop/qrstuvwxyz",
            "abcdefghijklmnopqrst?x=1",
            &"a".repeat(129),
        ] {
            assert!(!check_request_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn unlink_values_are_percent_encoded() {
        assert_eq!(
            unlink_path("email", "bob+tag@example.com").as_deref(),
            Some("/v1/identities/email/bob%2Btag%40example.com")
        );
        assert_eq!(
            unlink_path("oauth2_google", "a/b c?d#e%f").as_deref(),
            Some("/v1/identities/oauth2_google/a%2Fb%20c%3Fd%23e%25f")
        );
        assert_eq!(
            unlink_path("email", "ü~._-").as_deref(),
            Some("/v1/identities/email/%C3%BC~._-")
        );
        for (t, v) in [("email", ""), ("email", "."), ("email", ".."), ("", "x")] {
            assert_eq!(unlink_path(t, v), None, "{t:?} {v:?}");
        }
        // The encoded path survives URL parsing unchanged.
        let path = unlink_path("email", "../../x@y").expect("path");
        let url = reqwest::Url::parse(&format!("{URL}{path}")).expect("url");
        assert_eq!(url.path(), "/v1/identities/email/..%2F..%2Fx%40y");
    }

    #[tokio::test]
    async fn unreachable_broker_names_the_url() {
        // Bind then drop: nothing listens on this port afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(9);
        let base = format!("http://127.0.0.1:{port}");
        let c = BrokerClient::new(&base, "default").expect("client");
        let e = c
            .whoami(&SecretString::from("t"))
            .await
            .expect_err("must fail");
        assert!(matches!(e, Error::BrokerUnreachable { .. }), "{e:?}");
        let s = e.to_string();
        assert!(
            s.contains(&base) && s.contains("AGENTKEYS_BROKER_URL"),
            "{s}"
        );
    }
}
