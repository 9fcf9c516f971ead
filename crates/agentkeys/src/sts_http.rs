//! The HTTP client under `aws-sdk-sts`: the reqwest the client already has, behind the SDK's
//! pluggable `HttpClient`. The SDK's default client would build a second HTTP stack (hyper with
//! HTTP/2, h2) for one unsigned call per credential.

use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;

/// Largest STS answer read (an `AssumeRoleWithWebIdentity` answer is a few KiB).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The SDK's HTTP client: one reqwest client per connector settings (timeouts).
pub(crate) fn client() -> SharedHttpClient {
    http_client_fn(|settings: &HttpConnectorSettings, _: &RuntimeComponents| {
        SharedHttpConnector::new(Connector::new(settings))
    })
}

#[derive(Debug)]
struct Connector {
    http: Result<reqwest::Client, String>,
}

impl Connector {
    fn new(settings: &HttpConnectorSettings) -> Self {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("agentkeys/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(t) = settings.connect_timeout() {
            b = b.connect_timeout(t);
        }
        if let Some(t) = settings.read_timeout() {
            b = b.read_timeout(t);
        }
        Self {
            http: b.build().map_err(|e| e.to_string()),
        }
    }
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let http = self.http.clone();
        HttpConnectorFuture::new(async move {
            let http = http.map_err(|e| ConnectorError::other(e.into(), None))?;
            send(&http, request).await
        })
    }
}

async fn send(
    http: &reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, ConnectorError> {
    let other = |e: String| ConnectorError::other(e.into(), None);
    let method = reqwest::Method::from_bytes(request.method().as_bytes())
        .map_err(|e| other(e.to_string()))?;
    let mut req = http.request(method, request.uri());
    for (k, v) in request.headers().iter() {
        req = req.header(k, v);
    }
    let body = request
        .body()
        .bytes()
        .ok_or_else(|| other("a streaming request body is not supported".to_owned()))?;
    req = req.body(body.to_vec());
    let mut response = req.send().await.map_err(connector_error)?;
    let status =
        StatusCode::try_from(response.status().as_u16()).map_err(|e| other(e.to_string()))?;
    let mut headers = Vec::new();
    for (k, v) in response.headers() {
        if let Ok(v) = v.to_str() {
            headers.push((k.as_str().to_owned(), v.to_owned()));
        }
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(connector_error)? {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(other(format!(
                "the answer is longer than {MAX_ANSWER_BYTES} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    let mut out = HttpResponse::new(status, SdkBody::from(bytes));
    for (k, v) in headers {
        out.headers_mut().append(k, v);
    }
    Ok(out)
}

/// Timeouts and connection failures keep their kind: the SDK retries them, and the CLI says
/// "timed out" or "connection failed".
fn connector_error(e: reqwest::Error) -> ConnectorError {
    let e = e.without_url();
    if e.is_timeout() {
        ConnectorError::timeout(e.into())
    } else if e.is_connect() || e.is_request() || e.is_body() {
        ConnectorError::io(e.into())
    } else {
        ConnectorError::other(e.into(), None)
    }
}
