//! Sign-in with an external OpenID Connect provider: the broker as a relying party.
//!
//! One [`OidcProvider`] per configured provider, made once at startup by [`OidcProvider::discover`]
//! (discovery document and signing keys fetched and cached). A login is then:
//!
//! 1. [`OidcProvider::start_with_state`] (or [`OidcProvider::start`]): an authorization URL with
//!    scope `openid email`, PKCE S256 and a fresh nonce. The caller keeps the PKCE verifier and
//!    the nonce server-side, keyed by the `state` it chose, and sends the user to the URL.
//! 2. The provider redirects the browser to the redirect URI with `code` and `state` (and `iss`
//!    when it implements RFC 9207). **Checking `state` is the caller's job**: look the login up
//!    by it (an unknown or already used state is a bad state) and, where the expected value is
//!    at hand, compare with [`state_matches`] (constant time). [`OidcProvider::issuer_matches`]
//!    checks `iss`.
//! 3. [`OidcProvider::finish`]: redeems the code (with the PKCE verifier and the client
//!    credentials) and verifies the ID token: signature by the provider's keys (refetched once
//!    when a token names an unknown key, for key rotation), issuer, audience and `azp` equal to
//!    our client id, expiry, nonce and `at_hash`. The result is the provider's `sub`, verbatim,
//!    and its email claims: from the ID token, or from the UserInfo endpoint when the provider
//!    keeps them there (OIDC Core 5.4).
//!
//! Nothing here logs or displays the client secret, codes, verifiers or tokens.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use std::future::Future;
use std::pin::Pin;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreGrantType, CoreIdToken, CoreIdTokenClaims, CoreIdTokenVerifier,
    CoreJsonWebKey, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType,
    CoreSubjectIdentifierType, CoreTokenResponse, CoreUserInfoClaims,
};
use openidconnect::url;
use openidconnect::{
    AccessToken, AccessTokenHash, AdditionalProviderMetadata, AsyncHttpClient, AuthType,
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, DiscoveryError,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IssuerUrl,
    JsonWebKeySetUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    ProviderMetadata, RedirectUrl, RequestTokenError, Scope, SignatureVerificationError,
    TokenResponse, UserInfoError,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Google's issuer, as its discovery document and ID tokens name it.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";

/// The scopes every login asks for (`openid` is added by the library).
const SCOPES: &[&str] = &["email"];
/// Responses larger than this (discovery, keys, tokens, userinfo) are refused.
const MAX_RESPONSE_BYTES: usize = 512 * 1024;
/// The signing keys are refetched for an unknown key id at most this often.
const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// How far in the future an ID token's `iat` may be (clock skew).
const MAX_IAT_SKEW_SECONDS: i64 = 300;

// ---------------------------------------------------------------------------------------------
// Configuration

/// One external OpenID provider as configured by the operator.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Short name, `^[a-z0-9-]{1,32}$` (e.g. `google`): the identity type is `oauth2_<name>`.
    pub name: String,
    /// Issuer URL, exactly as the provider's discovery document states it (no trailing slash
    /// unless the provider has one). `https`, or `http` on a loopback host only.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretString,
}

impl ProviderConfig {
    pub fn new(
        name: impl Into<String>,
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<SecretString>,
    ) -> Self {
        Self {
            name: name.into(),
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
        }
    }

    /// Google: issuer `https://accounts.google.com`, name `google`.
    pub fn google(client_id: impl Into<String>, client_secret: impl Into<SecretString>) -> Self {
        Self::new("google", GOOGLE_ISSUER, client_id, client_secret)
    }

    /// The identity type of SPEC §3 for this provider's users: `oauth2_<name>`.
    pub fn identity_type(&self) -> String {
        format!("oauth2_{}", self.name)
    }

    /// Checks the name and the issuer's form (no network).
    pub fn validate(&self) -> Result<(), OidcLoginError> {
        let name_ok = (1..=32).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(OidcLoginError::Config(format!(
                "provider name {:?} must match ^[a-z0-9-]{{1,32}}$",
                self.name
            )));
        }
        if self.client_id.is_empty() {
            return Err(OidcLoginError::Config(format!(
                "provider {}: the client id is empty",
                self.name
            )));
        }
        if self.client_secret.expose_secret().is_empty() {
            return Err(OidcLoginError::Config(format!(
                "provider {}: the client secret is empty",
                self.name
            )));
        }
        let issuer = IssuerUrl::new(self.issuer.clone()).map_err(|e| {
            OidcLoginError::Config(format!(
                "provider {}: issuer {:?} is not a URL: {e}",
                self.name, self.issuer
            ))
        })?;
        require_secure(&self.name, "issuer", issuer.url())?;
        if issuer.url().query().is_some() || issuer.url().fragment().is_some() {
            return Err(OidcLoginError::Config(format!(
                "provider {}: the issuer must have no query or fragment",
                self.name
            )));
        }
        Ok(())
    }
}

/// The OmniAccount of an OIDC user is `SHA-256("agentkeys" ‖ "oauth2_" ‖ name ‖ sub)`, with no
/// separator (SPEC §3, fixed: existing prefixes depend on it). So provider `git`'s user `hub123`
/// and provider `github`'s user `123` would be one account: providers whose names are prefixes
/// of one another are refused.
pub fn check_provider_names(providers: &[ProviderConfig]) -> Result<(), OidcLoginError> {
    for (i, a) in providers.iter().enumerate() {
        for b in &providers[i + 1..] {
            if a.name == b.name {
                return Err(OidcLoginError::Config(format!(
                    "provider {:?} is listed twice",
                    a.name
                )));
            }
            let (short, long) = if a.name.len() <= b.name.len() {
                (&a.name, &b.name)
            } else {
                (&b.name, &a.name)
            };
            if long.starts_with(short.as_str()) {
                return Err(OidcLoginError::Config(format!(
                    "provider {short:?} is a prefix of provider {long:?}, so a {short:?} user whose \
                     id starts with {:?} would share an account with a {long:?} user (the \
                     account id joins oauth2_<name> and the user id without a separator); \
                     rename one of them",
                    &long[short.len()..]
                )));
            }
        }
    }
    Ok(())
}

/// `https`, or `http` to a loopback host (tests, local development).
fn require_secure(provider: &str, what: &str, url: &url::Url) -> Result<(), OidcLoginError> {
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(OidcLoginError::Config(format!(
            "provider {provider}: the {what} {url} must use https (http only on a loopback host)"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Why an ID token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenProblem {
    /// The token endpoint's answer had no ID token.
    Missing,
    /// The `nonce` claim is absent or not the one of this login.
    NonceMismatch,
    /// Our client id is not the audience (or an untrusted extra audience, or `azp` names another
    /// client).
    WrongAudience,
    /// `iss` is not the provider's issuer.
    WrongIssuer,
    /// The signature does not verify with the provider's keys, uses a refused algorithm, or
    /// names a key the provider does not publish.
    BadSignature,
    /// `exp` has passed (or `iat` is in the future).
    Expired,
    /// Anything else: unparsable claims, an `at_hash` that does not match, encryption.
    Malformed,
}

impl IdTokenProblem {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::NonceMismatch => "nonce_mismatch",
            Self::WrongAudience => "wrong_audience",
            Self::WrongIssuer => "wrong_issuer",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::Malformed => "malformed",
        }
    }
}

impl fmt::Display for IdTokenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Missing => "the provider returned no ID token",
            Self::NonceMismatch => "the nonce does not match this login",
            Self::WrongAudience => "the token is for another audience",
            Self::WrongIssuer => "the token is from another issuer",
            Self::BadSignature => "the signature does not verify",
            Self::Expired => "the token has expired",
            Self::Malformed => "the token is malformed",
        })
    }
}

/// Errors of discovery and sign-in. Messages name the provider and what went wrong, never a
/// secret, code, verifier or token. [`OidcLoginError::status`] suggests an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum OidcLoginError {
    /// The provider could not be reached (connection, TLS, timeout, 5xx without an OAuth error).
    #[error("the OpenID provider {provider} could not be reached: {detail}")]
    ProviderUnreachable { provider: String, detail: String },
    /// The provider answered with something unusable (not JSON, missing fields).
    #[error("the OpenID provider {provider} sent an unusable response: {detail}")]
    ProviderResponse { provider: String, detail: String },
    /// The token endpoint refused the code: `invalid_grant` for a replayed, expired or foreign
    /// code or a wrong PKCE verifier; `invalid_client` for wrong client credentials.
    #[error("the OpenID provider {provider} refused the authorization code ({error})")]
    CodeRefused {
        provider: String,
        /// The OAuth error code, e.g. `invalid_grant`.
        error: String,
        /// The provider's `error_description`, if any (its own words, no secrets).
        description: Option<String>,
    },
    /// The ID token failed verification.
    #[error("the ID token from {provider} was refused: {reason}")]
    IdTokenInvalid {
        provider: String,
        reason: IdTokenProblem,
    },
    /// A configuration problem: bad issuer or redirect URI, discovery names another issuer,
    /// the provider lacks a token endpoint, or offers no usable signing algorithm.
    #[error("OpenID provider configuration: {0}")]
    Config(String),
}

impl OidcLoginError {
    /// A snake_case kind for the `error` field of a JSON error.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ProviderUnreachable { .. } => "oidc_provider_unreachable",
            Self::ProviderResponse { .. } => "oidc_provider_error",
            Self::CodeRefused { .. } => "oidc_code_refused",
            Self::IdTokenInvalid { .. } => "oidc_id_token_invalid",
            Self::Config(_) => "oidc_config",
        }
    }

    /// A suggested HTTP status: 503 provider down or broken, 400 code refused (the user may
    /// retry the login), 401 ID token refused, 500 configuration.
    pub fn status(&self) -> u16 {
        match self {
            Self::ProviderUnreachable { .. } | Self::ProviderResponse { .. } => 503,
            Self::CodeRefused { .. } => 400,
            Self::IdTokenInvalid { .. } => 401,
            Self::Config(_) => 500,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client adapter (reqwest 0.13, rustls) for openidconnect.

/// The HTTP client to hand to [`OidcProvider::discover`]: rustls, no redirects (as the
/// openidconnect crate requires, against SSRF), 10 s per request.
pub fn http_client() -> Result<reqwest::Client, OidcLoginError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("agentkeys-broker/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| OidcLoginError::Config(format!("building the HTTP client: {e}")))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HttpError(String);

impl HttpError {
    fn from_reqwest(e: reqwest::Error) -> Self {
        // Without the URL, then the causes (connection refused, timed out, TLS ...).
        let e = e.without_url();
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        Self(msg)
    }
}

#[derive(Clone)]
struct Http(reqwest::Client);

impl<'c> AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let mut response = self
                .0
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(HttpError::from_reqwest)?;
            let mut out = openidconnect::http::Response::builder().status(response.status());
            if let Some(headers) = out.headers_mut() {
                *headers = std::mem::take(response.headers_mut());
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(HttpError::from_reqwest)? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(HttpError(format!(
                        "response larger than {MAX_RESPONSE_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            out.body(body)
                .map_err(|e| HttpError(format!("building the response: {e}")))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The provider

/// Discovery fields openidconnect's core metadata lacks.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
struct ExtraMetadata {
    /// RFC 9207: the provider sends `iss` with the authorization response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    authorization_response_iss_parameter_supported: Option<bool>,
}

impl AdditionalProviderMetadata for ExtraMetadata {}

type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type Client = CoreClient<
    EndpointSet,      // authorization
    EndpointNotSet,   // device authorization
    EndpointNotSet,   // introspection
    EndpointNotSet,   // revocation
    EndpointSet,      // token
    EndpointMaybeSet, // userinfo
>;

/// Asymmetric algorithms only: never `none`, never HMAC with the client secret.
const ACCEPTED_ALGS: &[CoreJwsSigningAlgorithm] = &[
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

struct KeyCache {
    keys: CoreJsonWebKeySet,
    /// When the keys were last fetched (`None`: refetch at the first unknown key).
    fetched_at: Option<Instant>,
}

/// A discovered OpenID provider, ready for logins. Make it once at startup and share it (it
/// is `Send + Sync`; put it in an `Arc`).
pub struct OidcProvider {
    name: String,
    issuer: String,
    /// Other spellings of the issuer that ID tokens may carry (Google: `accounts.google.com`).
    issuer_aliases: Vec<String>,
    client_id: String,
    client: Client,
    iss_parameter_supported: bool,
    signing_algs: Vec<CoreJwsSigningAlgorithm>,
    jwks_uri: JsonWebKeySetUrl,
    keys: RwLock<KeyCache>,
    http: Http,
}

impl fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcProvider")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// What [`OidcProvider::start`] returns: send the user to `authorization_url`; keep the rest
/// server-side (the verifier is a secret; the nonce and state are in the URL).
#[derive(Clone, PartialEq, Eq)]
pub struct LoginStart {
    pub authorization_url: String,
    pub pkce_verifier: String,
    pub nonce: String,
    pub csrf_state: String,
}

impl fmt::Debug for LoginStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginStart")
            .field("authorization_url", &self.authorization_url)
            .field("pkce_verifier", &"[redacted]")
            .field("nonce", &self.nonce)
            .field("csrf_state", &self.csrf_state)
            .finish()
    }
}

/// The user the provider vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    /// The provider's issuer URL (as configured).
    pub issuer: String,
    /// The `sub` claim, verbatim: the identity value of SPEC §3.
    pub subject: String,
    /// The `email` claim as the provider sent it (not lowercased), if any.
    pub email: Option<String>,
    /// The provider's `email_verified`; `false` when absent.
    pub email_verified: bool,
}

/// Constant-time comparison of two state values (the one stored with the login and the one
/// the callback brought). Different lengths compare unequal without leaking where they differ;
/// an empty expected state never matches.
pub fn state_matches(expected: &str, got: &str) -> bool {
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(got.as_bytes());
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    diff == 0 && !expected.is_empty()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl OidcProvider {
    /// Fetches the provider's discovery document and signing keys (once; keys are refetched
    /// later only for an unknown key id). `redirect_uri` is our callback, exactly as registered
    /// at the provider. `http` should come from [`http_client`] (no redirects).
    pub async fn discover(
        config: ProviderConfig,
        redirect_uri: &str,
        http: &reqwest::Client,
    ) -> Result<Self, OidcLoginError> {
        config.validate()?;
        let name = config.name.clone();
        let cfg_err = |what: String| OidcLoginError::Config(format!("provider {name}: {what}"));
        let redirect = RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|e| cfg_err(format!("redirect URI {redirect_uri:?}: {e}")))?;
        let issuer_url = IssuerUrl::new(config.issuer.clone())
            .map_err(|e| cfg_err(format!("issuer {:?}: {e}", config.issuer)))?;
        let http = Http(http.clone());

        let metadata = Metadata::discover_async(issuer_url, &http)
            .await
            .map_err(|e| match e {
                DiscoveryError::Request(e) => OidcLoginError::ProviderUnreachable {
                    provider: name.clone(),
                    detail: format!("discovery: {e}"),
                },
                DiscoveryError::Response(status, _, _) if status.is_server_error() => {
                    OidcLoginError::ProviderUnreachable {
                        provider: name.clone(),
                        detail: format!("discovery: HTTP {status}"),
                    }
                }
                DiscoveryError::Response(status, _, _) => OidcLoginError::ProviderResponse {
                    provider: name.clone(),
                    detail: format!("discovery: HTTP {status}"),
                },
                DiscoveryError::Parse(e) => OidcLoginError::ProviderResponse {
                    provider: name.clone(),
                    detail: format!("discovery document: {}", e.path()),
                },
                DiscoveryError::Validation(msg) => cfg_err(format!("discovery: {msg}")),
                DiscoveryError::UrlParse(e) => cfg_err(format!("discovery URL: {e}")),
                other => OidcLoginError::ProviderResponse {
                    provider: name.clone(),
                    detail: format!("discovery: {other}"),
                },
            })?;
        Self::from_metadata(config, redirect, metadata, http)
    }

    /// The provider from a fetched discovery document (and its keys): endpoint and algorithm
    /// checks, the client.
    fn from_metadata(
        config: ProviderConfig,
        redirect: RedirectUrl,
        metadata: Metadata,
        http: Http,
    ) -> Result<Self, OidcLoginError> {
        let name = config.name.clone();
        let cfg_err = |what: String| OidcLoginError::Config(format!("provider {name}: {what}"));
        let token_endpoint = metadata
            .token_endpoint()
            .cloned()
            .ok_or_else(|| cfg_err("the provider has no token endpoint".into()))?;
        require_secure(&name, "token endpoint", token_endpoint.url())?;
        require_secure(
            &name,
            "authorization endpoint",
            metadata.authorization_endpoint().url(),
        )?;
        require_secure(&name, "JWKS URI", metadata.jwks_uri().url())?;
        if let Some(u) = metadata.userinfo_endpoint() {
            require_secure(&name, "userinfo endpoint", u.url())?;
        }
        let response_types = metadata.response_types_supported();
        if !response_types.is_empty()
            && !response_types
                .iter()
                .any(|t| t.as_slice() == [CoreResponseType::Code])
        {
            return Err(cfg_err(
                "the provider does not support the authorization code flow".into(),
            ));
        }
        let signing_algs: Vec<CoreJwsSigningAlgorithm> = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|a| ACCEPTED_ALGS.contains(a))
            .cloned()
            .collect();
        if signing_algs.is_empty() {
            return Err(cfg_err(
                "the provider signs ID tokens with no algorithm we accept (asymmetric only)".into(),
            ));
        }
        // client_secret_basic unless the provider says it only takes client_secret_post.
        let auth_type = match metadata.token_endpoint_auth_methods_supported() {
            Some(methods)
                if !methods.contains(&CoreClientAuthMethod::ClientSecretBasic)
                    && methods.contains(&CoreClientAuthMethod::ClientSecretPost) =>
            {
                AuthType::RequestBody
            }
            _ => AuthType::BasicAuth,
        };
        let iss_parameter_supported = metadata
            .additional_metadata()
            .authorization_response_iss_parameter_supported
            .unwrap_or(false);
        let jwks_uri = metadata.jwks_uri().clone();
        let keys = metadata.jwks().clone();

        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(ClientSecret::new(
                config.client_secret.expose_secret().to_owned(),
            )),
        )
        .set_token_uri(token_endpoint)
        .set_redirect_uri(redirect)
        .set_auth_type(auth_type);

        let issuer_aliases = if config.issuer == GOOGLE_ISSUER {
            vec!["accounts.google.com".to_owned()]
        } else {
            Vec::new()
        };
        tracing::info!(
            provider = %name,
            issuer = %config.issuer,
            keys = keys.keys().len(),
            "oidc.provider_discovered"
        );
        Ok(Self {
            name: config.name,
            issuer: config.issuer,
            issuer_aliases,
            client_id: config.client_id,
            client,
            iss_parameter_supported,
            signing_algs,
            jwks_uri,
            keys: RwLock::new(KeyCache {
                keys,
                fetched_at: Some(Instant::now()),
            }),
            http,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// `oauth2_<name>` (SPEC §3).
    pub fn identity_type(&self) -> String {
        format!("oauth2_{}", self.name)
    }

    /// A login with a random state (32 random bytes, base64url).
    pub fn start(&self) -> LoginStart {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        self.start_inner(CsrfToken::new_random_len(32), challenge, verifier)
    }

    /// A login whose `state` parameter is `state` (the caller's opaque, unguessable id; it
    /// must be non-empty and URL-safe or it is percent-encoded).
    pub fn start_with_state(&self, state: &str) -> LoginStart {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        self.start_inner(CsrfToken::new(state.to_owned()), challenge, verifier)
    }

    fn start_inner(
        &self,
        state: CsrfToken,
        challenge: PkceCodeChallenge,
        verifier: PkceCodeVerifier,
    ) -> LoginStart {
        let mut request = self.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            move || state,
            || Nonce::new_random_len(32),
        );
        for scope in SCOPES {
            request = request.add_scope(Scope::new((*scope).to_owned()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        LoginStart {
            authorization_url: url.to_string(),
            pkce_verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
            csrf_state: state.secret().clone(),
        }
    }

    /// Checks the `iss` parameter of the authorization response (RFC 9207, against mix-up):
    /// when present it must be our issuer; when absent, the provider must not have announced
    /// that it sends one.
    pub fn issuer_matches(&self, iss: Option<&str>) -> bool {
        match iss {
            Some(iss) => iss == self.issuer,
            None => !self.iss_parameter_supported,
        }
    }

    /// Redeems `code` and verifies the ID token against `nonce` (now by the system clock).
    pub async fn finish(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<VerifiedIdentity, OidcLoginError> {
        self.finish_at(code, pkce_verifier, nonce, unix_now()).await
    }

    /// [`OidcProvider::finish`] with the current time given (unix seconds), for the broker's
    /// clock.
    pub async fn finish_at(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
        now: i64,
    ) -> Result<VerifiedIdentity, OidcLoginError> {
        let token = self.exchange(code, pkce_verifier).await?;
        let id_token = token
            .id_token()
            .ok_or_else(|| self.bad_token(IdTokenProblem::Missing))?;
        let claims = self
            .verify_id_token(id_token, nonce, Some(token.access_token()), now)
            .await?;
        let subject = claims.subject().as_str().to_owned();
        let mut email = claims.email().map(|e| e.as_str().to_owned());
        let mut email_verified = claims.email_verified().unwrap_or(false);
        if email.is_none() {
            // OIDC Core 5.4: with an access token, scope claims may be at UserInfo only.
            if let Some(info) = self.user_info(token.access_token(), &subject).await {
                email = info.email().map(|e| e.as_str().to_owned());
                email_verified = info.email_verified().unwrap_or(false);
            }
        }
        Ok(VerifiedIdentity {
            issuer: self.issuer.clone(),
            subject,
            email,
            email_verified,
        })
    }

    fn bad_token(&self, reason: IdTokenProblem) -> OidcLoginError {
        OidcLoginError::IdTokenInvalid {
            provider: self.name.clone(),
            reason,
        }
    }

    /// The token request: the code, the PKCE verifier, the client credentials.
    async fn exchange(
        &self,
        code: &str,
        pkce_verifier: &str,
    ) -> Result<CoreTokenResponse, OidcLoginError> {
        self.client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => OidcLoginError::CodeRefused {
                    provider: self.name.clone(),
                    error: r.error().to_string(),
                    description: r.error_description().cloned(),
                },
                RequestTokenError::Request(e) => OidcLoginError::ProviderUnreachable {
                    provider: self.name.clone(),
                    detail: format!("token endpoint: {e}"),
                },
                // The body may hold tokens: only the JSON path goes into the message.
                RequestTokenError::Parse(e, _) => OidcLoginError::ProviderResponse {
                    provider: self.name.clone(),
                    detail: format!("token response: unexpected at {}", e.path()),
                },
                RequestTokenError::Other(msg) => OidcLoginError::ProviderResponse {
                    provider: self.name.clone(),
                    detail: format!("token endpoint: {msg}"),
                },
            })
    }

    /// Verifies an ID token; refetches the keys once when it names a key we do not have.
    async fn verify_id_token(
        &self,
        id_token: &CoreIdToken,
        nonce: &str,
        access_token: Option<&AccessToken>,
        now: i64,
    ) -> Result<CoreIdTokenClaims, OidcLoginError> {
        match self.verify_with_cached_keys(id_token, nonce, access_token, now) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) if self.refresh_keys().await => self
                .verify_with_cached_keys(id_token, nonce, access_token, now)
                .map_err(|e| self.bad_token(classify(&e))),
            other => other.map_err(|e| self.bad_token(classify(&e))),
        }
    }

    fn verify_with_cached_keys(
        &self,
        id_token: &CoreIdToken,
        nonce: &str,
        access_token: Option<&AccessToken>,
        now: i64,
    ) -> Result<CoreIdTokenClaims, ClaimsVerificationError> {
        let keys = match self.keys.read() {
            Ok(cache) => cache.keys.clone(),
            Err(poisoned) => poisoned.into_inner().keys.clone(),
        };
        let now_dt = DateTime::<Utc>::from_timestamp(now, 0).unwrap_or_default();
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(self.client_id.clone()),
            IssuerUrl::new(self.issuer.clone())
                .map_err(|e| ClaimsVerificationError::Other(e.to_string()))?,
            keys,
        )
        .set_allowed_algs(self.signing_algs.iter().cloned())
        .require_issuer_match(self.issuer_aliases.is_empty())
        .set_time_fn(move || now_dt)
        .set_issue_time_verifier_fn(move |iat| {
            if iat.timestamp() > now + MAX_IAT_SKEW_SECONDS {
                Err("issued in the future".to_owned())
            } else {
                Ok(())
            }
        });
        let claims = id_token.claims(&verifier, &Nonce::new(nonce.to_owned()))?;
        if !self.issuer_aliases.is_empty() {
            let iss = claims.issuer().as_str();
            if iss != self.issuer && !self.issuer_aliases.iter().any(|a| a == iss) {
                return Err(ClaimsVerificationError::InvalidIssuer(
                    "unexpected issuer".into(),
                ));
            }
        }
        // OIDC Core 3.1.3.7 steps 4-5 (openidconnect leaves them out).
        match claims.authorized_party() {
            Some(azp) if azp.as_str() != self.client_id => {
                return Err(ClaimsVerificationError::InvalidAudience(
                    "azp names another client".into(),
                ));
            }
            None if claims.audiences().len() > 1 => {
                return Err(ClaimsVerificationError::InvalidAudience(
                    "several audiences and no azp".into(),
                ));
            }
            _ => {}
        }
        if let (Some(expected), Some(access_token)) = (claims.access_token_hash(), access_token) {
            let alg = id_token
                .signing_alg()
                .map_err(ClaimsVerificationError::SignatureVerification)?;
            let key = id_token
                .signing_key(&verifier)
                .map_err(ClaimsVerificationError::SignatureVerification)?;
            let actual = AccessTokenHash::from_token(access_token, alg, key)
                .map_err(|e| ClaimsVerificationError::Other(e.to_string()))?;
            if actual != *expected {
                return Err(ClaimsVerificationError::Other("at_hash mismatch".into()));
            }
        }
        Ok(claims.clone())
    }

    /// Refetches the signing keys unless that was done less than a minute ago. `true` when the
    /// keys were refetched.
    async fn refresh_keys(&self) -> bool {
        let due = match self.keys.read() {
            Ok(c) => c
                .fetched_at
                .is_none_or(|t| t.elapsed() >= JWKS_REFRESH_INTERVAL),
            Err(_) => true,
        };
        if !due {
            return false;
        }
        match CoreJsonWebKeySet::fetch_async(&self.jwks_uri, &self.http).await {
            Ok(keys) => {
                tracing::info!(provider = %self.name, keys = keys.keys().len(), "oidc.keys_refreshed");
                let mut cache = match self.keys.write() {
                    Ok(c) => c,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *cache = KeyCache {
                    keys,
                    fetched_at: Some(Instant::now()),
                };
                true
            }
            Err(e) => {
                tracing::warn!(provider = %self.name, error = %e, "oidc.keys_refresh_failed");
                if let Ok(mut c) = self.keys.write() {
                    // Do not retry at every token while the provider is down.
                    c.fetched_at = Some(Instant::now());
                }
                false
            }
        }
    }

    /// The UserInfo claims for `subject` (checked to be the same `sub`), or `None` (logged) when
    /// the provider has no endpoint or the request fails: the email is then unknown.
    async fn user_info(
        &self,
        access_token: &AccessToken,
        subject: &str,
    ) -> Option<CoreUserInfoClaims> {
        let request = self
            .client
            .user_info(
                access_token.clone(),
                Some(openidconnect::SubjectIdentifier::new(subject.to_owned())),
            )
            .ok()?;
        match request.request_async(&self.http).await {
            Ok(claims) => Some(claims),
            Err(e) => {
                let detail = match &e {
                    UserInfoError::ClaimsVerification(_) => "claims verification failed".to_owned(),
                    UserInfoError::Response(status, _, _) => format!("HTTP {status}"),
                    UserInfoError::Request(e) => e.to_string(),
                    UserInfoError::Parse(e) => format!("unexpected at {}", e.path()),
                    other => other.to_string(),
                };
                tracing::warn!(provider = %self.name, error = %detail, "oidc.userinfo_failed");
                None
            }
        }
    }
}

fn classify(e: &ClaimsVerificationError) -> IdTokenProblem {
    match e {
        ClaimsVerificationError::Expired(_) => IdTokenProblem::Expired,
        ClaimsVerificationError::InvalidAudience(_) => IdTokenProblem::WrongAudience,
        ClaimsVerificationError::InvalidIssuer(_) => IdTokenProblem::WrongIssuer,
        ClaimsVerificationError::InvalidNonce(_) => IdTokenProblem::NonceMismatch,
        ClaimsVerificationError::SignatureVerification(_) => IdTokenProblem::BadSignature,
        _ => IdTokenProblem::Malformed,
    }
}

#[cfg(test)]
mod tests {
    //! Unit tests, and integration tests against a real OpenID Provider: panva's
    //! `oidc-provider` from npm, started once per test binary from `tests/oidc_op/` (see
    //! `test_op`). Without Node.js ≥ 20 and npm these tests fail with a message saying so.

    use super::*;
    use std::collections::HashMap;
    use std::str::FromStr;

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const CLIENT: (&str, &str) = (test_op::CLIENT_ID, test_op::CLIENT_SECRET);
    const OTHER_CLIENT: (&str, &str) = (test_op::OTHER_CLIENT_ID, test_op::OTHER_CLIENT_SECRET);
    /// Registered at the test OP as a native client's loopback URI: any port matches.
    const REDIRECT: &str = "http://127.0.0.1:8912/auth/oidc/callback";
    /// Every integration test finishes within this or fails.
    const TEST_TIMEOUT: Duration = Duration::from_secs(60);

    async fn within<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(TEST_TIMEOUT, f)
            .await
            .expect("the test took longer than its time limit")
    }

    fn http() -> reqwest::Client {
        http_client().expect("HTTP client")
    }

    async fn provider(issuer: &str, client: (&str, &str)) -> OidcProvider {
        OidcProvider::discover(
            ProviderConfig::new("testop", issuer, client.0, client.1),
            REDIRECT,
            &http(),
        )
        .await
        .expect("discovery at the test OP")
    }

    /// What the OP sent to the redirect URI.
    #[derive(Debug)]
    struct Callback {
        code: String,
        state: String,
        iss: Option<String>,
    }

    /// A real authorization-code login at the test OP, without a browser (see
    /// `test_op::sign_in`): the parameters the OP sent to our redirect URI.
    async fn sign_in(authorization_url: &str, account: &str) -> Callback {
        let url = test_op::sign_in(authorization_url, account)
            .await
            .expect("login at the test OP");
        let redirect = url::Url::parse(REDIRECT).expect("redirect URI");
        assert_eq!(url.host(), redirect.host(), "{url}");
        assert_eq!(url.port(), redirect.port(), "{url}");
        assert_eq!(url.path(), redirect.path(), "{url}");
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert!(!q.contains_key("error"), "the OP refused the login: {url}");
        Callback {
            code: q.get("code").cloned().expect("code in the callback"),
            state: q.get("state").cloned().expect("state in the callback"),
            iss: q.get("iss").cloned(),
        }
    }

    async fn login(p: &OidcProvider, account: &str) -> (LoginStart, Callback) {
        let start = p.start();
        let cb = sign_in(&start.authorization_url, account).await;
        assert!(
            state_matches(&start.csrf_state, &cb.state),
            "the OP returned our state"
        );
        (start, cb)
    }

    fn expect_token_problem<T: fmt::Debug>(r: Result<T, OidcLoginError>, want: IdTokenProblem) {
        match r {
            Err(OidcLoginError::IdTokenInvalid { reason, .. }) => assert_eq!(reason, want),
            other => panic!("expected an ID token refused for {want:?}, got {other:?}"),
        }
    }

    fn expect_code_refused<T: fmt::Debug>(r: Result<T, OidcLoginError>) {
        match r {
            Err(e @ OidcLoginError::CodeRefused { .. }) => {
                let OidcLoginError::CodeRefused { error, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(error, "invalid_grant");
                assert_eq!(e.status(), 400);
            }
            other => panic!("expected the code to be refused, got {other:?}"),
        }
    }

    /// Compile-time: the provider can live in the shared state and its futures in axum
    /// handlers.
    #[allow(dead_code)]
    fn finish_is_send(p: &OidcProvider) -> impl Future<Output = ()> + Send + '_ {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<OidcProvider>();
        async move {
            let _ = p.finish("code", "verifier", "nonce").await;
            let _ = OidcProvider::discover(ProviderConfig::google("a", "b"), "x", &http()).await;
        }
    }

    // -- unit tests ------------------------------------------------------------------------

    #[test]
    fn state_comparison() {
        assert!(state_matches("abc", "abc"));
        assert!(!state_matches("abc", "abd"));
        assert!(!state_matches("abc", "abcd"));
        assert!(!state_matches("abc", ""));
        assert!(!state_matches("", ""), "an empty state never matches");
    }

    #[test]
    fn google_preset_and_config_checks() {
        let g = ProviderConfig::google("id.apps.googleusercontent.com", "s3cr3t");
        assert_eq!(g.name, "google");
        assert_eq!(g.issuer, "https://accounts.google.com");
        assert_eq!(g.identity_type(), "oauth2_google");
        g.validate().expect("the Google preset is valid");
        for (name, issuer) in [
            ("Google", GOOGLE_ISSUER),
            ("", GOOGLE_ISSUER),
            ("google", "http://accounts.google.com"),
            ("google", "not a url"),
            ("google", "https://issuer.example/?q=1"),
        ] {
            let c = ProviderConfig::new(name, issuer, "id", "secret");
            assert!(
                matches!(c.validate(), Err(OidcLoginError::Config(_))),
                "{name} {issuer}"
            );
        }
        for issuer in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:2",
        ] {
            ProviderConfig::new("dev", issuer, "id", "secret")
                .validate()
                .expect("http on loopback is allowed");
        }
        let no_secret = ProviderConfig::new("x", GOOGLE_ISSUER, "id", "");
        assert!(no_secret.validate().is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let c = ProviderConfig::google("client-id", "very-secret-value");
        let shown = format!("{c:?}");
        assert!(!shown.contains("very-secret-value"), "{shown}");
        let start = LoginStart {
            authorization_url: "https://op/auth".into(),
            pkce_verifier: "verifier-value".into(),
            nonce: "n".into(),
            csrf_state: "s".into(),
        };
        assert!(!format!("{start:?}").contains("verifier-value"));
    }

    #[test]
    fn errors_map_to_statuses() {
        let e = OidcLoginError::IdTokenInvalid {
            provider: "google".into(),
            reason: IdTokenProblem::NonceMismatch,
        };
        assert_eq!(e.status(), 401);
        assert_eq!(e.kind(), "oidc_id_token_invalid");
        assert_eq!(
            e.to_string(),
            "the ID token from google was refused: the nonce does not match this login"
        );
        let u = OidcLoginError::ProviderUnreachable {
            provider: "google".into(),
            detail: "x".into(),
        };
        assert_eq!(u.status(), 503);
        assert_eq!(OidcLoginError::Config("x".into()).status(), 500);
    }

    /// The shape of Google's published discovery document (multi-valued response types,
    /// extension grant types, basic and post client auth): it parses and gives a usable
    /// provider without any request.
    #[test]
    fn google_shaped_discovery_document() {
        let doc = serde_json::json!({
            "issuer": "https://accounts.google.com",
            "authorization_endpoint": "https://accounts.google.com/o/oauth2/v2/auth",
            "device_authorization_endpoint": "https://oauth2.googleapis.com/device/code",
            "token_endpoint": "https://oauth2.googleapis.com/token",
            "userinfo_endpoint": "https://openidconnect.googleapis.com/v1/userinfo",
            "revocation_endpoint": "https://oauth2.googleapis.com/revoke",
            "jwks_uri": "https://www.googleapis.com/oauth2/v3/certs",
            "response_types_supported": [
                "code", "token", "id_token", "code token", "code id_token",
                "token id_token", "code token id_token", "none"
            ],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "claims_supported": [
                "aud", "email", "email_verified", "exp", "family_name", "given_name", "iat",
                "iss", "name", "picture", "sub"
            ],
            "code_challenge_methods_supported": ["plain", "S256"],
            "grant_types_supported": [
                "authorization_code", "refresh_token",
                "urn:ietf:params:oauth:grant-type:device_code",
                "urn:ietf:params:oauth:grant-type:jwt-bearer"
            ]
        });
        let metadata: Metadata = serde_json::from_value(doc).expect("Google's document parses");
        let p = OidcProvider::from_metadata(
            ProviderConfig::google("client-1.apps.googleusercontent.com", "s"),
            RedirectUrl::new("https://broker.example/auth/oidc/callback".into()).expect("URI"),
            metadata,
            Http(http()),
        )
        .expect("usable");
        assert_eq!(p.issuer(), GOOGLE_ISSUER);
        assert_eq!(p.identity_type(), "oauth2_google");
        assert_eq!(p.issuer_aliases, ["accounts.google.com"]);
        assert_eq!(
            p.signing_algs,
            [CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256]
        );
        assert!(p.issuer_matches(None), "Google does not announce RFC 9207");
        assert!(matches!(p.client.auth_type(), AuthType::BasicAuth));
        let start = p.start();
        assert!(
            start
                .authorization_url
                .starts_with("https://accounts.google.com/o/oauth2/v2/auth?"),
            "{}",
            start.authorization_url
        );

        // A provider that signs only with HS256 / none is refused.
        let doc = serde_json::json!({
            "issuer": "https://op.example",
            "authorization_endpoint": "https://op.example/auth",
            "token_endpoint": "https://op.example/token",
            "jwks_uri": "https://op.example/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["HS256", "none"]
        });
        let metadata: Metadata = serde_json::from_value(doc).expect("parses");
        let e = OidcProvider::from_metadata(
            ProviderConfig::new("op", "https://op.example", "id", "s"),
            RedirectUrl::new("https://broker.example/cb".into()).expect("URI"),
            metadata,
            Http(http()),
        )
        .expect_err("HMAC-only provider");
        assert!(matches!(e, OidcLoginError::Config(_)), "{e:?}");
    }

    // -- against the real OP -----------------------------------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn authorization_url_has_pkce_nonce_state_and_scopes() {
        within(async {
            let op = test_op::get();
            let p = provider(&op.rich, CLIENT).await;
            let start = p.start_with_state("opaque-state-123");
            assert_eq!(start.csrf_state, "opaque-state-123");
            let url = url::Url::parse(&start.authorization_url).expect("URL");
            let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
            assert_eq!(q["response_type"], "code");
            assert_eq!(q["client_id"], CLIENT.0);
            assert_eq!(q["redirect_uri"], REDIRECT);
            assert_eq!(q["state"], "opaque-state-123");
            assert_eq!(q["nonce"], start.nonce);
            assert_eq!(q["code_challenge_method"], "S256");
            let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(start.pkce_verifier.as_bytes()));
            assert_eq!(q["code_challenge"], challenge);
            let scopes: Vec<&str> = q["scope"].split(' ').collect();
            assert!(
                scopes.contains(&"openid") && scopes.contains(&"email"),
                "{scopes:?}"
            );
            assert!(start.nonce.len() >= 43 && start.pkce_verifier.len() >= 43);

            let other = p.start();
            assert_ne!(other.nonce, start.nonce);
            assert_ne!(other.pkce_verifier, start.pkce_verifier);
            assert_ne!(other.csrf_state, start.csrf_state);
            assert!(other.csrf_state.len() >= 43);

            // A user who denies comes back with error=access_denied and our state.
            let denied = test_op::deny(&other.authorization_url).await.expect("deny");
            let q: HashMap<String, String> = denied.query_pairs().into_owned().collect();
            assert_eq!(
                q.get("error").map(String::as_str),
                Some("access_denied"),
                "{denied}"
            );
            assert_eq!(q.get("state"), Some(&other.csrf_state));
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn happy_path_email_in_the_id_token() {
        within(async {
            let op = test_op::get();
            let p = provider(&op.rich, CLIENT).await;
            let (start, cb) = login(&p, "alice-123").await;
            assert!(p.issuer_matches(cb.iss.as_deref()), "iss {:?}", cb.iss);
            assert!(!p.issuer_matches(Some("https://evil.example")));
            assert!(
                !p.issuer_matches(None),
                "the test OP announces RFC 9207 iss"
            );
            let id = p
                .finish(&cb.code, &start.pkce_verifier, &start.nonce)
                .await
                .expect("sign-in");
            assert_eq!(
                id,
                VerifiedIdentity {
                    issuer: op.rich.clone(),
                    subject: "alice-123".into(),
                    email: Some("alice-123@example.test".into()),
                    email_verified: true,
                }
            );
            assert_eq!(p.identity_type(), "oauth2_testop");
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn happy_path_email_from_userinfo() {
        within(async {
            let op = test_op::get();
            let p = provider(&op.strict, CLIENT).await;
            let (start, cb) = login(&p, "unverified-Bob").await;
            let id = p
                .finish(&cb.code, &start.pkce_verifier, &start.nonce)
                .await
                .expect("sign-in");
            assert_eq!(id.issuer, op.strict);
            assert_eq!(id.subject, "unverified-Bob", "sub is verbatim");
            assert_eq!(id.email.as_deref(), Some("unverified-Bob@example.test"));
            assert!(!id.email_verified);

            let (start, cb) = login(&p, "noemail-carol").await;
            let id = p
                .finish(&cb.code, &start.pkce_verifier, &start.nonce)
                .await
                .expect("sign-in without email");
            assert_eq!(id.subject, "noemail-carol");
            assert_eq!(id.email, None);
            assert!(!id.email_verified);
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replayed_code_is_refused() {
        within(async {
            let op = test_op::get();
            let p = provider(&op.rich, CLIENT).await;
            let (start, cb) = login(&p, "dave").await;
            p.finish(&cb.code, &start.pkce_verifier, &start.nonce)
                .await
                .expect("first use");
            expect_code_refused(p.finish(&cb.code, &start.pkce_verifier, &start.nonce).await);
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_pkce_verifier_is_refused() {
        within(async {
            let op = test_op::get();
            let p = provider(&op.rich, CLIENT).await;
            let (start, cb) = login(&p, "erin").await;
            let other = p.start();
            expect_code_refused(p.finish(&cb.code, &other.pkce_verifier, &start.nonce).await);
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_nonce_is_refused() {
        within(async {
            let op = test_op::get();
            let p = provider(&op.rich, CLIENT).await;
            let (start, cb) = login(&p, "frank").await;
            let other = p.start();
            let r = p.finish(&cb.code, &start.pkce_verifier, &other.nonce).await;
            expect_token_problem(r, IdTokenProblem::NonceMismatch);
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_for_another_audience_is_refused() {
        within(async {
            let op = test_op::get();
            let ours = provider(&op.rich, CLIENT).await;
            let theirs = provider(&op.rich, OTHER_CLIENT).await;

            // A real ID token the OP minted for the other client (aud = agentkeys-other),
            // presented to our verifier with the right nonce.
            let (start, cb) = login(&theirs, "grace").await;
            let token = theirs
                .exchange(&cb.code, &start.pkce_verifier)
                .await
                .expect("the other client redeems its code");
            let id_token = token.id_token().expect("ID token").clone();
            theirs
                .verify_id_token(
                    &id_token,
                    &start.nonce,
                    Some(token.access_token()),
                    unix_now(),
                )
                .await
                .expect("valid for its own audience");
            let r = ours
                .verify_id_token(&id_token, &start.nonce, None, unix_now())
                .await;
            expect_token_problem(r, IdTokenProblem::WrongAudience);

            // The other client's code redeemed with our credentials: the OP refuses it.
            let (start, cb) = login(&theirs, "grace").await;
            expect_code_refused(
                ours.finish(&cb.code, &start.pkce_verifier, &start.nonce)
                    .await,
            );
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokens_from_another_issuer_expired_or_badly_signed_are_refused() {
        within(async {
            let op = test_op::get();
            let rich = provider(&op.rich, CLIENT).await;
            let strict = provider(&op.strict, CLIENT).await;
            let (start, cb) = login(&strict, "heidi").await;
            let token = strict
                .exchange(&cb.code, &start.pkce_verifier)
                .await
                .expect("code");
            let id_token = token.id_token().expect("ID token").clone();
            let now = unix_now();
            strict
                .verify_id_token(&id_token, &start.nonce, Some(token.access_token()), now)
                .await
                .expect("valid at its issuer");

            // Same client id, another issuer.
            let r = rich
                .verify_id_token(&id_token, &start.nonce, None, now)
                .await;
            expect_token_problem(r, IdTokenProblem::WrongIssuer);

            // Expired: the OP's ID tokens live 10 minutes.
            let r = strict
                .verify_id_token(&id_token, &start.nonce, None, now + 3600)
                .await;
            expect_token_problem(r, IdTokenProblem::Expired);
            // Issued "in the future" (our clock far behind).
            let r = strict
                .verify_id_token(&id_token, &start.nonce, None, now - 3600)
                .await;
            expect_token_problem(r, IdTokenProblem::Expired);

            let raw = serde_json::to_value(&id_token)
                .expect("serialize")
                .as_str()
                .expect("compact JWT")
                .to_owned();
            let parts: Vec<&str> = raw.split('.').collect();
            assert_eq!(parts.len(), 3);

            // One flipped bit in the signature.
            let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("signature");
            sig[10] ^= 1;
            let tampered = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&sig));
            let tampered = CoreIdToken::from_str(&tampered).expect("parses");
            let r = strict
                .verify_id_token(&tampered, &start.nonce, None, now)
                .await;
            expect_token_problem(r, IdTokenProblem::BadSignature);

            // Claims changed (another subject) under the original signature.
            let mut claims: serde_json::Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("payload"))
                    .expect("claims");
            claims["sub"] = "mallory".into();
            let forged = format!(
                "{}.{}.{}",
                parts[0],
                URL_SAFE_NO_PAD.encode(claims.to_string()),
                parts[2]
            );
            let forged = CoreIdToken::from_str(&forged).expect("parses");
            let r = strict
                .verify_id_token(&forged, &start.nonce, None, now)
                .await;
            expect_token_problem(r, IdTokenProblem::BadSignature);

            // Unsigned (alg none) and HMAC-with-the-client-secret tokens are refused.
            let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
            let unsigned = format!("{none_header}.{}.", parts[1]);
            let unsigned = CoreIdToken::from_str(&unsigned).expect("parses");
            let r = strict
                .verify_id_token(&unsigned, &start.nonce, None, now)
                .await;
            expect_token_problem(r, IdTokenProblem::BadSignature);
            let hs_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
            let signing_input = format!("{hs_header}.{}", parts[1]);
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, CLIENT.1.as_bytes());
            let mac = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
            let hs = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
            let hs = CoreIdToken::from_str(&hs).expect("parses");
            let r = strict.verify_id_token(&hs, &start.nonce, None, now).await;
            expect_token_problem(r, IdTokenProblem::BadSignature);
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stale_signing_keys_are_refetched_once() {
        within(async {
            let op = test_op::get();
            let p = provider(&op.rich, CLIENT).await;
            // Keys fetched just now and none match: no refetch, the token is refused.
            *p.keys.write().expect("lock") = KeyCache {
                keys: CoreJsonWebKeySet::new(Vec::new()),
                fetched_at: Some(Instant::now()),
            };
            let (start, cb) = login(&p, "ivan").await;
            let r = p.finish(&cb.code, &start.pkce_verifier, &start.nonce).await;
            expect_token_problem(r, IdTokenProblem::BadSignature);

            // Keys old enough: the unknown key id triggers one refetch, and the login passes.
            *p.keys.write().expect("lock") = KeyCache {
                keys: CoreJsonWebKeySet::new(Vec::new()),
                fetched_at: None,
            };
            let (start, cb) = login(&p, "ivan").await;
            let id = p
                .finish(&cb.code, &start.pkce_verifier, &start.nonce)
                .await
                .expect("sign-in after the key refetch");
            assert_eq!(id.subject, "ivan");
            assert!(!p.keys.read().expect("lock").keys.keys().is_empty());
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn discovery_failures() {
        within(async {
            let op = test_op::get();
            // Nothing listens: unreachable.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let cfg = ProviderConfig::new("down", format!("http://127.0.0.1:{port}"), "id", "s");
            let e = OidcProvider::discover(cfg, REDIRECT, &http())
                .await
                .expect_err("down");
            assert!(
                matches!(e, OidcLoginError::ProviderUnreachable { .. }),
                "{e:?}"
            );
            assert_eq!(e.status(), 503);

            // The discovery document names another issuer (127.0.0.1 vs localhost).
            let spoofed = op.rich.replace("127.0.0.1", "localhost");
            let cfg = ProviderConfig::new("op", spoofed, CLIENT.0, CLIENT.1);
            let e = OidcProvider::discover(cfg, REDIRECT, &http())
                .await
                .expect_err("mismatch");
            assert!(matches!(e, OidcLoginError::Config(_)), "{e:?}");

            // A path with no discovery document behind it.
            let cfg = ProviderConfig::new("op", format!("{}/nope", op.rich), CLIENT.0, CLIENT.1);
            let e = OidcProvider::discover(cfg, REDIRECT, &http())
                .await
                .expect_err("404");
            assert!(
                matches!(e, OidcLoginError::ProviderResponse { .. }),
                "{e:?}"
            );

            // Bad redirect URI, plain-http issuer elsewhere than loopback: no request made.
            let cfg = ProviderConfig::new("op", op.rich.clone(), CLIENT.0, CLIENT.1);
            let e = OidcProvider::discover(cfg, "not a url", &http())
                .await
                .expect_err("uri");
            assert!(matches!(e, OidcLoginError::Config(_)), "{e:?}");
            let cfg = ProviderConfig::new("op", "http://op.example", CLIENT.0, CLIENT.1);
            let e = OidcProvider::discover(cfg, REDIRECT, &http())
                .await
                .expect_err("http");
            assert!(matches!(e, OidcLoginError::Config(_)), "{e:?}");

            // Wrong client secret: the OP refuses the client at the token endpoint.
            let p = provider(&op.rich, (CLIENT.0, "wrong-secret")).await;
            let (start, cb) = login(&p, "judy").await;
            match p.finish(&cb.code, &start.pkce_verifier, &start.nonce).await {
                Err(OidcLoginError::CodeRefused { error, .. }) => {
                    assert_eq!(error, "invalid_client")
                }
                other => panic!("expected invalid_client, got {other:?}"),
            }
            let shown = format!("{p:?}");
            assert!(!shown.contains("wrong-secret"), "{shown}");
        })
        .await
    }

    /// The test OP and its browserless login driver: `tests/oidc_op/harness.rs`.
    #[allow(dead_code)]
    mod test_op {
        include!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/oidc_op/harness.rs"
        ));
    }
}
