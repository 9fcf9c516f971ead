//! `agentkeys mcp`: an MCP server on stdio for agents (SPEC §8), built on `rmcp`.
//!
//! Tools: `whoami`, `grants`, `request_access` (ask the master for a grant), and `storage_list` / `storage_get` / `storage_put` /
//! `storage_delete` on S3 under the caller's own prefix (or another prefix it names, such as a
//! grant's scope; the cloud's bucket policy decides what its credentials reach). Keys are
//! relative to that prefix and checked before any call.
//!
//! Credentials never enter the model's context: the server holds them (renewed by a
//! [`Renewer`]) and no result, error or log line carries an access key, a secret, a session
//! token, a JWT or the broker session.
//!
//! Tools are registered in groups, one `#[tool_router]` block each, summed in
//! [`AgentKeysMcp::new`]: a new group (e.g. one asking the master for access) is one more block
//! and one more term there.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::aws;
use crate::error::{Error, Result};
use crate::renew::{Current, Renewer};
use crate::s3::{ListRequest, S3, S3Error};

/// Largest object `storage_get` returns and `storage_put` writes (decoded bytes).
pub const MAX_OBJECT_BYTES: usize = 1024 * 1024;
/// Longest key, in bytes, after the prefix (S3 allows 1024 in all).
pub const MAX_KEY_BYTES: usize = 900;
/// Most keys one `storage_list` returns.
pub const MAX_LIST_KEYS: u32 = 1000;
const DEFAULT_LIST_KEYS: u32 = 100;

type ToolResult = std::result::Result<CallToolResult, ErrorData>;

/// What the server needs: where the storage is and who it is.
pub(crate) struct Setup {
    pub renewer: Renewer,
    pub bucket: String,
    pub s3_endpoint: Option<String>,
}

/// Runs the server on stdin/stdout until the client closes the connection.
pub(crate) async fn serve(setup: Setup) -> Result<()> {
    // Fail before the handshake when the session or the cloud setup is broken, with the CLI's
    // error (the MCP client shows the server's stderr).
    setup.renewer.current().await?;
    let server = AgentKeysMcp::new(Arc::new(setup));
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| Error::InvalidInput(format!("MCP handshake failed: {e}")))?;
    running
        .waiting()
        .await
        .map_err(|e| Error::InvalidInput(format!("MCP server stopped: {e}")))?;
    Ok(())
}

#[derive(Clone)]
pub struct AgentKeysMcp {
    setup: Arc<Setup>,
    tool_router: ToolRouter<Self>,
}

impl AgentKeysMcp {
    fn new(setup: Arc<Setup>) -> Self {
        Self {
            setup,
            tool_router: Self::identity_tools() + Self::storage_tools() + Self::access_tools(),
        }
    }

    /// Current credentials, or a tool error saying why there are none.
    async fn current(&self) -> std::result::Result<Current, CallToolResult> {
        self.setup.renewer.current().await.map_err(|e| {
            tool_error(format!(
                "no cloud credentials: {e}. Nothing was sent to storage; tell the user, who may \
                 need to sign in again or ask the agent's master"
            ))
        })
    }

    /// What every storage tool starts with: an S3 client on the current credentials, and the
    /// key (or area) `place` reads from the tool's arguments, checked. Credentials come first,
    /// so a tool without them says so whatever its arguments.
    async fn storage_at(
        &self,
        place: impl FnOnce(&Current) -> std::result::Result<String, CallToolResult>,
    ) -> std::result::Result<(S3, String), CallToolResult> {
        let c = self.current().await?;
        let client = S3::new(
            &c.creds,
            &self.setup.renewer.target().region,
            self.setup.s3_endpoint.as_deref(),
        )
        .map_err(|e| tool_error(format!("{e}; nothing was sent to storage")))?;
        Ok((client, place(&c)?))
    }
}

// ------------------------------------------------------------------------------ arguments

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListArgs {
    /// Storage area: omit for your own prefix (see `whoami`), or a prefix you were granted,
    /// such as a grant's scope `0x…/inbox/`. The cloud decides what your credentials reach.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Only keys that start with this, relative to the area (e.g. `reports/`).
    #[serde(default)]
    pub under: Option<String>,
    /// List keys after this one (relative), to page through long listings.
    #[serde(default)]
    pub start_after: Option<String>,
    /// At most this many keys (1–1000, default 100).
    #[serde(default)]
    pub max_keys: Option<i32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct KeyArgs {
    /// Storage area: omit for your own prefix, or a granted prefix such as `0x…/inbox/`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The object's key relative to the area, e.g. `notes/today.txt`. No leading `/`, no `.`
    /// or `..` segments.
    pub key: String,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 text.
    #[default]
    Text,
    /// Base64 (standard alphabet, padded), for any bytes.
    Base64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct GetArgs {
    #[serde(flatten)]
    pub at: KeyArgs,
    /// `text` (default; fails for bytes that are not UTF-8) or `base64`.
    #[serde(default)]
    pub encoding: Encoding,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct PutArgs {
    #[serde(flatten)]
    pub at: KeyArgs,
    /// The object's content, as given by `encoding`; at most 1 MiB once decoded.
    pub content: String,
    /// `text` (default) or `base64`.
    #[serde(default)]
    pub encoding: Encoding,
    /// MIME type to store with the object (default: text/plain for text,
    /// application/octet-stream for base64).
    #[serde(default)]
    pub content_type: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RequestAccessArgs {
    /// A path under your master's prefix, e.g. `inbox/` (letters, digits, `._-` and `/`).
    pub scope: String,
    /// How long the grant would last once approved: a number with s, m, h, d or w (e.g. `1h`).
    pub ttl: String,
    /// Why you need it, in one line; your master reads it before deciding.
    pub reason: String,
    /// Mints the grant would allow (default: unlimited until it expires).
    #[serde(default)]
    pub uses: Option<u32>,
}

// ------------------------------------------------------------------------------ tools

#[tool_router(router = identity_tools)]
impl AgentKeysMcp {
    #[tool(
        description = "Who this agent is: its omni account, kind (agent or master), its own storage \
                       prefix in the bucket, and the grant scope it was started with, if any. \
                       Never returns credentials."
    )]
    async fn whoami(&self) -> ToolResult {
        let c = match self.current().await {
            Ok(c) => c,
            Err(e) => return Ok(e),
        };
        let who = match self.setup.renewer.with_session(whoami_call).await {
            Ok(w) => w,
            Err(e) => return Ok(tool_error(format!("the broker did not answer whoami: {e}"))),
        };
        Ok(json_result(&serde_json::json!({
            "omni_account": who.omni_account,
            "kind": who.kind,
            "wallet": who.wallet,
            "bucket": self.setup.bucket,
            "own_prefix": format!("{}/", c.wallet),
            "grant_scope": c.scope.as_ref().map(|s| format!("{s}/")),
            "role_arn": self.setup.renewer.target().role_arn,
            "session_expires_at": who.expires_at,
        })))
    }

    #[tool(
        description = "The grants this agent holds (for a master: the grants it gave): id, scope, \
                       expiry, uses. A grant's scope_tag + '/' is a prefix the storage tools can \
                       use when this server was started with --grant for it."
    )]
    async fn grants(&self) -> ToolResult {
        match self.setup.renewer.with_session(grants_call).await {
            Ok(list) => Ok(json_result(&list)),
            Err(e) => Ok(tool_error(format!(
                "the broker did not list the grants: {e}"
            ))),
        }
    }
}

async fn whoami_call(
    client: crate::client::BrokerClient,
    token: crate::secret::SecretString,
) -> Result<agentkeys_types::api::WhoAmI> {
    client.whoami(&token).await
}

async fn grants_call(
    client: crate::client::BrokerClient,
    token: crate::secret::SecretString,
) -> Result<agentkeys_types::api::GrantList> {
    client.grants(&token).await
}

// `agentkeys grants request --no-wait` as a tool: the request is filed and returned at once; the
// master decides (`agentkeys requests approve|deny`), and the grant shows up in `grants`.
#[tool_router(router = access_tools)]
impl AgentKeysMcp {
    #[tool(
        description = "Ask this agent's master for access to a path under the master's prefix \
                       (scope, e.g. inbox/), for a time (ttl, e.g. 1h) and optionally a number of \
                       uses, with a one-line reason the master reads. Returns the pending request \
                       (request_id, expires_at) at once; the master approves or denies it. Call \
                       `grants` later: an approved request's grant is listed there (storage under \
                       it needs this server started with --grant ID)."
    )]
    async fn request_access(&self, Parameters(a): Parameters<RequestAccessArgs>) -> ToolResult {
        let Ok(ttl_seconds) = crate::grant_terms::parse_duration(&a.ttl) else {
            return Ok(tool_error(format!(
                "ttl {:?} is not a duration: give a number with s, m, h, d or w, e.g. 1h (at most \
                 a year); nothing was sent",
                crate::client::sanitize(&a.ttl, 40)
            )));
        };
        if a.uses == Some(0) {
            return Ok(tool_error(
                "uses must be at least 1 (omit it for unlimited); nothing was sent".into(),
            ));
        }
        let req = agentkeys_types::api::AccessRequestCreate {
            scope: a.scope.trim().to_owned(),
            max_uses: a.uses,
            ttl_seconds,
            reason: a.reason.trim().to_owned(),
        };
        let asked = self
            .setup
            .renewer
            .with_session(|client, token| {
                let req = req.clone();
                async move { client.access_request(&token, &req).await }
            })
            .await;
        match asked {
            Ok(info) => Ok(json_result(&info)),
            Err(e) => Ok(tool_error(format!(
                "the broker did not take the access request: {e}"
            ))),
        }
    }
}

#[tool_router(router = storage_tools)]
impl AgentKeysMcp {
    #[tool(
        description = "List objects under your own storage prefix (or a granted prefix). Returns \
                       keys relative to the prefix, with sizes; `truncated` means more follow \
                       (call again with start_after = the last key)."
    )]
    async fn storage_list(&self, Parameters(a): Parameters<ListArgs>) -> ToolResult {
        let (s3, root) = match self.storage_at(|c| area(a.prefix.as_deref(), c)).await {
            Ok(v) => v,
            Err(e) => return Ok(e),
        };
        let under = match a.under.as_deref().map(|u| relative(u, "under", true)) {
            Some(Err(e)) => return Ok(e),
            Some(Ok(u)) => u,
            None => String::new(),
        };
        let max = match a.max_keys.map(u32::try_from) {
            None => DEFAULT_LIST_KEYS,
            Some(Ok(n)) if (1..=MAX_LIST_KEYS).contains(&n) => n,
            Some(_) => {
                return Ok(tool_error(format!(
                    "max_keys {} is out of range: use 1 to {MAX_LIST_KEYS}",
                    a.max_keys.unwrap_or_default()
                )));
            }
        };
        let start_after = match a.start_after.as_deref() {
            Some(after) => match relative(after, "start_after", false) {
                Ok(k) => Some(format!("{root}{k}")),
                Err(e) => return Ok(e),
            },
            None => None,
        };
        let prefix = format!("{root}{under}");
        let req = ListRequest {
            prefix: &prefix,
            start_after: start_after.as_deref(),
            max_keys: max,
        };
        match s3.list_objects_v2(&self.setup.bucket, &req).await {
            Ok(out) => {
                let objects: Vec<_> = out
                    .objects
                    .iter()
                    .filter_map(|o| {
                        let key = o.key.strip_prefix(root.as_str())?;
                        Some(serde_json::json!({"key": key, "size": o.size}))
                    })
                    .collect();
                Ok(json_result(&serde_json::json!({
                    "prefix": root,
                    "objects": objects,
                    "truncated": out.truncated,
                })))
            }
            Err(e) => Ok(cloud_error(
                "list",
                &format!("s3://{}/{root}{under}", self.setup.bucket),
                &e,
            )),
        }
    }

    #[tool(
        description = "Read one object under your own storage prefix (or a granted prefix), as \
                       text or base64; at most 1 MiB."
    )]
    async fn storage_get(&self, Parameters(a): Parameters<GetArgs>) -> ToolResult {
        let (s3, key) = match self.storage_at(|c| full_key(&a.at, c)).await {
            Ok(v) => v,
            Err(e) => return Ok(e),
        };
        let url = format!("s3://{}/{key}", self.setup.bucket);
        let out = match s3
            .get_object(&self.setup.bucket, &key, MAX_OBJECT_BYTES)
            .await
        {
            Ok(o) => o,
            Err(S3Error::TooLarge { size: Some(size) }) => {
                return Ok(tool_error(format!(
                    "{url} has {size} bytes; storage_get returns at most {MAX_OBJECT_BYTES}"
                )));
            }
            Err(S3Error::TooLarge { size: None }) => {
                return Ok(tool_error(format!(
                    "{url} has more than {MAX_OBJECT_BYTES} bytes; storage_get returns at most that"
                )));
            }
            Err(S3Error::Interrupted { detail }) => {
                return Ok(tool_error(format!(
                    "reading {url} failed mid-way ({detail}); try again"
                )));
            }
            Err(e) => {
                let own = a.at.prefix.as_deref().is_none_or(|p| p.trim().is_empty());
                let mut r = cloud_error("read", &url, &e);
                if own && is_access_denied(&e) {
                    // S3 (and RGW) answer a missing key with AccessDenied when the caller may
                    // not list the bucket at large, which bucket policies per prefix imply.
                    r = tool_error(format!(
                        "the cloud refused to read {url} (AccessDenied). Under your own prefix \
                         this means there is no object with that key (S3 says AccessDenied, not \
                         NoSuchKey, to callers that may not list the whole bucket); storage_list \
                         shows which keys exist"
                    ));
                }
                return Ok(r);
            }
        };
        let content_type = out.content_type;
        let bytes = out.bytes;
        let size = bytes.len();
        let content = match a.encoding {
            Encoding::Base64 => B64.encode(&bytes),
            Encoding::Text => match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(_) => {
                    return Ok(tool_error(format!(
                        "{url} is not UTF-8 text; call storage_get again with encoding \"base64\""
                    )));
                }
            },
        };
        Ok(json_result(&serde_json::json!({
            "key": a.at.key,
            "size": size,
            "content_type": content_type,
            "encoding": a.encoding,
            "content": content,
        })))
    }

    #[tool(
        description = "Write one object (text or base64, at most 1 MiB) under your own storage \
                       prefix (or a granted prefix); replaces an existing object with that key."
    )]
    async fn storage_put(&self, Parameters(a): Parameters<PutArgs>) -> ToolResult {
        let body = match a.encoding {
            Encoding::Text => a.content.into_bytes(),
            Encoding::Base64 => match B64.decode(a.content.trim()) {
                Ok(b) => b,
                Err(e) => {
                    return Ok(tool_error(format!(
                        "content is not valid base64 ({e}); send standard padded base64, or \
                         encoding \"text\" for text"
                    )));
                }
            },
        };
        if body.len() > MAX_OBJECT_BYTES {
            return Ok(tool_error(format!(
                "content has {} bytes; storage_put writes at most {MAX_OBJECT_BYTES}",
                body.len()
            )));
        }
        let (s3, key) = match self.storage_at(|c| full_key(&a.at, c)).await {
            Ok(v) => v,
            Err(e) => return Ok(e),
        };
        let content_type = a.content_type.unwrap_or_else(|| {
            match a.encoding {
                Encoding::Text => "text/plain; charset=utf-8",
                Encoding::Base64 => "application/octet-stream",
            }
            .to_owned()
        });
        let size = body.len();
        let url = format!("s3://{}/{key}", self.setup.bucket);
        match s3
            .put_object(&self.setup.bucket, &key, &content_type, body)
            .await
        {
            Ok(_) => Ok(json_result(&serde_json::json!({
                "key": a.at.key,
                "size": size,
                "written": url,
            }))),
            Err(e) => Ok(cloud_error("write", &url, &e)),
        }
    }

    #[tool(
        description = "Delete one object under your own storage prefix (or a granted prefix). \
                       Deleting a key that does not exist succeeds."
    )]
    async fn storage_delete(&self, Parameters(a): Parameters<KeyArgs>) -> ToolResult {
        let (s3, key) = match self.storage_at(|c| full_key(&a, c)).await {
            Ok(v) => v,
            Err(e) => return Ok(e),
        };
        let url = format!("s3://{}/{key}", self.setup.bucket);
        match s3.delete_object(&self.setup.bucket, &key).await {
            Ok(_) => Ok(json_result(
                &serde_json::json!({"key": a.key, "deleted": url}),
            )),
            Err(e) => Ok(cloud_error("delete", &url, &e)),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for AgentKeysMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("agentkeys", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "AgentKeys: this agent's own cloud storage (S3) and identity. Keys are relative \
                 to the agent's prefix (see whoami); storage outside it is refused by the cloud \
                 unless a grant covers it. Credentials stay inside this server.",
            )
    }
}

// ------------------------------------------------------------------------------ paths

/// The storage area: the caller's own prefix `<wallet>/`, or a prefix it names.
fn area(prefix: Option<&str>, c: &Current) -> std::result::Result<String, CallToolResult> {
    match prefix.map(str::trim).filter(|p| !p.is_empty()) {
        None => Ok(format!("{}/", c.wallet)),
        Some(p) => {
            let p = relative(p, "prefix", true)?;
            if p.is_empty() || !p.ends_with('/') {
                return Err(tool_error(format!(
                    "prefix {p:?} must name a folder ending in '/', such as 0x…/inbox/ (or omit \
                     it for your own prefix)"
                )));
            }
            Ok(p)
        }
    }
}

/// The full S3 key of `a`: the area plus the checked relative key.
fn full_key(a: &KeyArgs, c: &Current) -> std::result::Result<String, CallToolResult> {
    let root = area(a.prefix.as_deref(), c)?;
    let key = relative(&a.key, "key", false)?;
    Ok(format!("{root}{key}"))
}

/// Checks a relative key (or a folder, with `folder`): not empty (unless a folder), no leading
/// `/`, no empty, `.` or `..` segments, no backslash or control characters, bounded length.
fn relative(raw: &str, what: &str, folder: bool) -> std::result::Result<String, CallToolResult> {
    let bad = |why: &str| {
        Err(tool_error(format!(
            "{what} {:?} refused before any call: {why}",
            aws::one_line(raw, 120)
        )))
    };
    if raw.is_empty() {
        return if folder {
            Ok(String::new())
        } else {
            bad("it is empty; give a key such as notes/today.txt")
        };
    }
    if raw.len() > MAX_KEY_BYTES {
        return bad(&format!("it is longer than {MAX_KEY_BYTES} bytes"));
    }
    if raw.starts_with('/') {
        return bad("absolute keys are not allowed; keys are relative to the storage prefix");
    }
    if raw.chars().any(|c| c.is_control() || c == '\\') {
        return bad("it contains a control character or a backslash");
    }
    let body = if folder {
        raw.strip_suffix('/').unwrap_or(raw)
    } else {
        raw
    };
    if body
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return bad(
            "empty, '.' and '..' path segments are not allowed (the key must stay inside the prefix)",
        );
    }
    Ok(raw.to_owned())
}

// ------------------------------------------------------------------------------ results

fn tool_error(text: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text)])
}

fn json_result<T: Serialize>(v: &T) -> CallToolResult {
    match serde_json::to_string_pretty(v) {
        Ok(s) => CallToolResult::success(vec![ContentBlock::text(s)]),
        Err(e) => tool_error(format!("cannot encode the result: {e}")),
    }
}

/// The cloud refused the call: `AccessDenied` (or `Forbidden`), or a bare 403.
fn is_access_denied(e: &S3Error) -> bool {
    match e.code() {
        Some(code) => matches!(code, "AccessDenied" | "Forbidden"),
        None => e.status() == Some(403),
    }
}

/// An S3 failure as a tool error: a refusal by the cloud says so; nothing of the request's
/// signature or credentials is included.
fn cloud_error(action: &str, url: &str, e: &S3Error) -> CallToolResult {
    let text = match e {
        e if is_access_denied(e) => format!(
            "the cloud refused to {action} {url} ({}): this agent's credentials do not \
             reach it. Use keys under your own prefix (see whoami), or ask the agent's master \
             for a grant covering it",
            e.code().map_or("HTTP 403", |_| "AccessDenied")
        ),
        S3Error::Service { code, .. } => {
            let code = code.as_deref().unwrap_or("no error code");
            match code {
                "NoSuchKey" | "NotFound" => {
                    format!("no object at {url} (NoSuchKey); storage_list shows which keys exist")
                }
                "NoSuchBucket" => format!(
                    "the bucket of {url} does not exist (NoSuchBucket); the server's --bucket is \
                     wrong, tell the user"
                ),
                other => format!(
                    "the cloud failed to {action} {url} ({}); try again later or tell the user",
                    aws::one_line(other, 64)
                ),
            }
        }
        _ => format!(
            "could not reach the storage service to {action} {url} (network error or timeout); \
             try again later"
        ),
    };
    tool_error(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;

    fn current() -> Current {
        Current {
            creds: aws::AwsCredentials {
                access_key_id: "ASIAEXAMPLE".into(),
                secret_access_key: SecretString::from("s"),
                session_token: SecretString::from("t"),
                expiration: 0,
            },
            wallet: "0xabc".into(),
            scope: None,
        }
    }

    fn text(r: &CallToolResult) -> String {
        serde_json::to_string(r).unwrap_or_default()
    }

    #[test]
    fn keys_stay_inside_the_prefix() {
        let c = current();
        let at = |key: &str, prefix: Option<&str>| KeyArgs {
            prefix: prefix.map(str::to_owned),
            key: key.to_owned(),
        };
        assert_eq!(
            full_key(&at("notes/a.txt", None), &c).ok().as_deref(),
            Some("0xabc/notes/a.txt")
        );
        assert_eq!(
            full_key(&at("a.txt", Some("0xdef/inbox/")), &c)
                .ok()
                .as_deref(),
            Some("0xdef/inbox/a.txt")
        );
        for bad in [
            "",
            "/etc/passwd",
            "../0xdef/x",
            "a/../../b",
            "a//b",
            "./a",
            "a/.",
            "a\\b",
            "a\nb",
            &"k".repeat(MAX_KEY_BYTES + 1),
        ] {
            let e = full_key(&at(bad, None), &c).expect_err(bad);
            assert_eq!(e.is_error, Some(true));
            assert!(text(&e).contains("refused before any call"), "{bad}");
        }
        for bad_prefix in ["0xdef", "/0xdef/", "0xdef/../x/", "../"] {
            assert!(
                full_key(&at("a", Some(bad_prefix)), &c).is_err(),
                "{bad_prefix}"
            );
        }
    }

    #[test]
    fn folders_may_be_empty_or_end_with_a_slash() {
        assert_eq!(relative("", "under", true).ok().as_deref(), Some(""));
        assert_eq!(
            relative("a/b/", "under", true).ok().as_deref(),
            Some("a/b/")
        );
        assert!(relative("a//", "under", true).is_err());
        assert!(relative("", "key", false).is_err());
    }
}
