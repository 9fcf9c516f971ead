//! The loopback container-credentials endpoint (the format of ECS and EKS Pod Identity): every
//! AWS SDK that sees `AWS_CONTAINER_CREDENTIALS_FULL_URI` and
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN` fetches its credentials here, and again before they
//! expire, so a long-running process never holds dead keys.
//!
//! It listens on 127.0.0.1 only and answers only a request whose `Authorization` header is the
//! random token of this run: none is 401, any other value 403. The answer is
//! `{"AccessKeyId","SecretAccessKey","Token","Expiration","RoleArn"}`; a failed renewal is a 503
//! with `{"Code","Message"}` that SDKs show in their error.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::renew::Renewer;
use crate::secret::{ExposeSecret, SecretString};

/// The one path that serves credentials.
pub const CREDENTIALS_PATH: &str = "/credentials";
/// Variables an SDK reads.
pub const FULL_URI_VAR: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
pub const TOKEN_VAR: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN";

/// A running endpoint. Dropping it without [`Endpoint::shutdown`] leaves the server task to end
/// with the runtime.
pub struct Endpoint {
    pub url: String,
    pub token: SecretString,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

struct Shared {
    renewer: Arc<Renewer>,
    /// SHA-256 of the token: requests are compared by digest, so the comparison's time says
    /// nothing about the token.
    token_digest: [u8; 32],
}

/// The container-credentials document.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerCredentials<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    expiration: String,
    role_arn: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Failure {
    code: &'static str,
    message: String,
}

impl Endpoint {
    /// Binds 127.0.0.1:`port` (0: any free port) and serves in a task of the current runtime.
    pub async fn start(renewer: Arc<Renewer>, port: u16) -> Result<Self> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            Error::InvalidInput(format!(
                "cannot listen on {addr} for the credentials endpoint: {e}{}",
                if port == 0 {
                    ""
                } else {
                    "; pick another --port, or 0 for any free one"
                }
            ))
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::InvalidInput(format!("cannot listen on {addr}: {e}")))?;
        let token = new_token();
        let shared = Arc::new(Shared {
            renewer,
            token_digest: digest(token.expose_secret().as_bytes()),
        });
        let app = Router::new()
            .route(CREDENTIALS_PATH, get(serve_credentials))
            .with_state(shared);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = server.await {
                eprintln!("agentkeys: the credentials endpoint stopped: {e}");
            }
        });
        Ok(Self {
            url: format!("http://{bound}{CREDENTIALS_PATH}"),
            token,
            stop: Some(stop),
            task,
        })
    }

    /// The two variables a process needs to use this endpoint.
    pub fn env_vars(&self) -> [(&'static str, String); 2] {
        [
            (FULL_URI_VAR, self.url.clone()),
            (TOKEN_VAR, self.token.expose_secret().to_owned()),
        ]
    }

    /// Stops accepting, lets requests in flight finish, and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// 32 random bytes from the OS generator, hex: a new token for every run.
fn new_token() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    SecretString::from(hex::encode(bytes))
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

fn failure(status: StatusCode, code: &'static str, message: String) -> Response {
    (status, axum::Json(Failure { code, message })).into_response()
}

async fn serve_credentials(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(given) = headers.get(header::AUTHORIZATION) else {
        return failure(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            format!("no Authorization header: send the value of {TOKEN_VAR}"),
        );
    };
    if digest(given.as_bytes()) != shared.token_digest {
        eprintln!("agentkeys: refused a credentials request with a wrong authorization token");
        return failure(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("wrong authorization token: send the value of {TOKEN_VAR} of this run"),
        );
    }
    match shared.renewer.current().await {
        Ok(c) => {
            let body = ContainerCredentials {
                access_key_id: &c.creds.access_key_id,
                secret_access_key: c.creds.secret_access_key.expose_secret(),
                token: c.creds.session_token.expose_secret(),
                expiration: c.creds.expiration_rfc3339(),
                role_arn: &shared.renewer.target().role_arn,
            };
            let mut resp = axum::Json(body).into_response();
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            resp
        }
        Err(e) => {
            let message = format!("agentkeys could not renew the credentials: {e}");
            eprintln!("agentkeys: error: {e}");
            failure(StatusCode::SERVICE_UNAVAILABLE, "RenewalFailed", message)
        }
    }
}
