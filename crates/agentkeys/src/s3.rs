//! The four S3 calls the client makes (`ListObjectsV2`, `GetObject`, `PutObject`,
//! `DeleteObject`): signed with SigV4 by `aws-sigv4`, the AWS SDK's own signer, sent with
//! reqwest, answers read with `aws-smithy-xml`. The whole S3 SDK would cost minutes of compile
//! time for these four calls; the signer and the XML reader are already built for STS.
//!
//! The signature travels in the `Authorization` header, never in the URL, so no access log or
//! error message carries it. Custom endpoints (Ceph RGW, other S3-compatible clouds) are
//! addressed path-style (`<endpoint>/<bucket>/<key>`); AWS is addressed virtual-hosted style,
//! as the SDK does.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_xml::decode::{Document, XmlDecodeError, try_data};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;

use crate::aws::{self, AwsCredentials};
use crate::error::{Error, Result};
use crate::secret::ExposeSecret;

/// Tries per call: S3 asks clients to retry 5xx answers and `SlowDown`, as the SDK did.
const ATTEMPTS: u32 = 3;
/// First backoff; doubled per retry, with full jitter.
const BASE_BACKOFF: Duration = Duration::from_millis(500);
/// Largest error or listing answer read (a 1000-key listing is well under this).
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// What stays as it is in a key: RFC 3986 unreserved characters and `/` (S3's URI encoding).
const KEY_CHARS: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');
/// What stays as it is in a query value: the unreserved characters only.
const VALUE_CHARS: &AsciiSet = &KEY_CHARS.add(b'/');

/// A failed S3 call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Error {
    /// The service answered with an error status.
    Service {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    /// No answer to use: connection failed, timeout, an answer that could not be read.
    Transport { what: &'static str, detail: String },
    /// `GetObject`: the object is larger than the caller takes (`size` when S3 said it).
    TooLarge { size: Option<u64> },
    /// `GetObject`: the body broke off after the answer began.
    Interrupted { detail: String },
}

impl S3Error {
    pub fn status(&self) -> Option<u16> {
        match self {
            S3Error::Service { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            S3Error::Service { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// One line for the user: `HTTP 404 NoSuchBucket: message` or `connection failed (…)`.
    pub fn detail(&self) -> String {
        match self {
            S3Error::Service {
                status,
                code,
                message,
            } => aws::status_detail(*status, code.as_deref(), message.as_deref()),
            S3Error::Transport { what, detail } => format!("{what} ({detail})"),
            S3Error::TooLarge { size: Some(n) } => format!("the object has {n} bytes"),
            S3Error::TooLarge { size: None } => "the object is too large".to_owned(),
            S3Error::Interrupted { detail } => format!("the answer broke off ({detail})"),
        }
    }

    fn retryable(&self) -> bool {
        match self {
            S3Error::Service { status, code, .. } => {
                *status >= 500 || matches!(code.as_deref(), Some("SlowDown" | "RequestTimeout"))
            }
            S3Error::Transport { what, .. } => *what != WHAT_BUILD,
            _ => false,
        }
    }
}

const WHAT_BUILD: &str = "the request could not be built";

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
}

/// One page of `ListObjectsV2`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub objects: Vec<Object>,
    /// More keys follow (list again after the last key).
    pub truncated: bool,
}

/// What to list.
#[derive(Debug, Clone)]
pub struct ListRequest<'a> {
    pub prefix: &'a str,
    /// Keys after this one (full key).
    pub start_after: Option<&'a str>,
    pub max_keys: u32,
}

/// A read object.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// An S3 client with one set of temporary credentials.
pub struct S3 {
    http: reqwest::Client,
    identity: Identity,
    region: String,
    /// Normalised, no trailing slash; `None` for AWS S3 in `region`.
    endpoint: Option<String>,
}

impl S3 {
    pub fn new(creds: &AwsCredentials, region: &str, endpoint: Option<&str>) -> Result<Self> {
        let expiry = UNIX_EPOCH + Duration::from_secs(u64::try_from(creds.expiration).unwrap_or(0));
        let identity = Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.expose_secret().to_owned(),
            Some(creds.session_token.expose_secret().to_owned()),
            Some(expiry),
            "agentkeys",
        )
        .into();
        let http = reqwest::Client::builder()
            .connect_timeout(aws::CONNECT_TIMEOUT)
            .user_agent(concat!("agentkeys/", env!("CARGO_PKG_VERSION")))
            // S3 redirects name another region; the SDK does not follow them either.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::InvalidInput(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self {
            http,
            identity,
            region: region.to_owned(),
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_owned()),
        })
    }

    /// `ListObjectsV2` (one page).
    pub async fn list_objects_v2(
        &self,
        bucket: &str,
        req: &ListRequest<'_>,
    ) -> std::result::Result<Listing, S3Error> {
        let max_keys = req.max_keys.to_string();
        let mut query = vec![
            ("list-type", "2"),
            ("max-keys", max_keys.as_str()),
            ("prefix", req.prefix),
        ];
        if let Some(after) = req.start_after {
            query.push(("start-after", after));
        }
        let url = self.url(bucket, None, &query);
        let response = self.call(Method::GET, &url, None, Vec::new()).await?;
        let body = read_answer(response).await?;
        parse_listing(&body).map_err(|e| S3Error::Transport {
            what: "the answer could not be read",
            detail: aws::one_line(&e.to_string(), 200),
        })
    }

    /// `GetObject`, at most `max_bytes` of body.
    pub async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: usize,
    ) -> std::result::Result<Fetched, S3Error> {
        let url = self.url(bucket, Some(key), &[]);
        let mut response = self.call(Method::GET, &url, None, Vec::new()).await?;
        if let Some(n) = response.content_length()
            && usize::try_from(n).map_or(true, |n| n > max_bytes)
        {
            return Err(S3Error::TooLarge { size: Some(n) });
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut bytes = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > max_bytes {
                        return Err(S3Error::TooLarge { size: None });
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(S3Error::Interrupted {
                        detail: error_chain(&e),
                    });
                }
            }
        }
        Ok(Fetched {
            content_type,
            bytes,
        })
    }

    /// `PutObject`.
    pub async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> std::result::Result<(), S3Error> {
        let url = self.url(bucket, Some(key), &[]);
        self.call(Method::PUT, &url, Some(content_type), body)
            .await
            .map(drop)
    }

    /// `DeleteObject` (S3 answers 204 whether or not the key existed).
    pub async fn delete_object(&self, bucket: &str, key: &str) -> std::result::Result<(), S3Error> {
        let url = self.url(bucket, Some(key), &[]);
        self.call(Method::DELETE, &url, None, Vec::new())
            .await
            .map(drop)
    }

    /// The request URL, already percent-encoded as it is sent and signed.
    fn url(&self, bucket: &str, key: Option<&str>, query: &[(&str, &str)]) -> String {
        let key = utf8_percent_encode(key.unwrap_or(""), KEY_CHARS);
        let mut url = match &self.endpoint {
            Some(e) => format!("{e}/{bucket}/{key}"),
            None if virtual_hostable(bucket) => {
                format!(
                    "https://{bucket}.s3.{}.{}/{key}",
                    self.region,
                    aws_domain(&self.region)
                )
            }
            None => format!(
                "https://s3.{}.{}/{bucket}/{key}",
                self.region,
                aws_domain(&self.region)
            ),
        };
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(k);
            url.push('=');
            url.extend(utf8_percent_encode(v, VALUE_CHARS));
        }
        url
    }

    /// Signs and sends one request, retrying what S3 asks clients to retry, within the
    /// operation timeout. An error status becomes [`S3Error::Service`].
    async fn call(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> std::result::Result<reqwest::Response, S3Error> {
        let attempts = async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let result = self.send_once(&method, url, content_type, &body).await;
                match result {
                    Err(e) if attempt < ATTEMPTS && e.retryable() => {
                        let cap = BASE_BACKOFF * 2u32.pow(attempt - 1);
                        tokio::time::sleep(cap.mul_f64(rand::random::<f64>())).await;
                    }
                    other => return other,
                }
            }
        };
        match tokio::time::timeout(aws::OPERATION_TIMEOUT, attempts).await {
            Ok(r) => r,
            Err(_) => Err(S3Error::Transport {
                what: "the request timed out",
                detail: format!("no answer within {} s", aws::OPERATION_TIMEOUT.as_secs()),
            }),
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> std::result::Result<reqwest::Response, S3Error> {
        let build = |e: &dyn std::fmt::Display| S3Error::Transport {
            what: WHAT_BUILD,
            detail: aws::one_line(&e.to_string(), 200),
        };
        let mut settings = SigningSettings::default();
        // S3's rules: the path is signed as sent (no double encoding, no normalisation), and
        // the payload hash travels in x-amz-content-sha256.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| build(&e))?
            .into();
        let headers: Vec<(&str, &str)> = content_type
            .map(|t| ("content-type", t))
            .into_iter()
            .collect();
        let signable = SignableRequest::new(
            method.as_str(),
            Cow::Borrowed(url),
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| build(&e))?;
        let (instructions, _signature) =
            sign(signable, &params).map_err(|e| build(&e))?.into_parts();
        let mut request = self.http.request(method.clone(), url);
        for (name, value) in headers.iter().copied().chain(instructions.headers()) {
            request = request.header(name, value);
        }
        if !body.is_empty() || *method == Method::PUT {
            request = request.body(body.to_vec());
        }
        let response = request.send().await.map_err(transport_error)?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(service_error(response).await)
    }
}

/// AWS's domain for a region (the China regions have their own).
fn aws_domain(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    }
}

/// Whether the bucket can be a host name label under TLS (no dots), as the SDK decides.
fn virtual_hostable(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !bucket.starts_with('-')
        && !bucket.ends_with('-')
}

fn transport_error(e: reqwest::Error) -> S3Error {
    let what = if e.is_timeout() {
        "the request timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_builder() {
        WHAT_BUILD
    } else if e.is_body() || e.is_decode() {
        "the answer could not be read"
    } else {
        "the request failed"
    };
    S3Error::Transport {
        what,
        detail: error_chain(&e),
    }
}

/// The causes of an error on one bounded line (reqwest's own line only repeats the URL).
fn error_chain(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut parts = Vec::new();
    let mut cause = e.source();
    while let Some(c) = cause {
        parts.push(c.to_string());
        cause = c.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    aws::one_line(&parts.join(": "), 300)
}

/// An error answer: its status, and the code and message of its XML body when it has one.
async fn service_error(response: reqwest::Response) -> S3Error {
    let status = response.status().as_u16();
    let (code, message) = match read_answer(response).await {
        Ok(body) => parse_error(&body),
        Err(_) => (None, None),
    };
    S3Error::Service {
        status,
        code: code.map(|c| aws::one_line(&c, 64)),
        message: message
            .map(|m| aws::one_line(&m, 300))
            .filter(|m| !m.is_empty()),
    }
}

/// The body of an answer as text, bounded.
async fn read_answer(mut response: reqwest::Response) -> std::result::Result<String, S3Error> {
    let unreadable = |detail: String| S3Error::Transport {
        what: "the answer could not be read",
        detail,
    };
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| unreadable(error_chain(&e)))?
    {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(unreadable(format!("longer than {MAX_ANSWER_BYTES} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| unreadable("not UTF-8".to_owned()))
}

/// `<Error><Code>…</Code><Message>…</Message></Error>`; both `None` for another body.
fn parse_error(body: &str) -> (Option<String>, Option<String>) {
    let mut code = None;
    let mut message = None;
    let mut doc = Document::new(body);
    let Ok(mut root) = doc.root_element() else {
        return (None, None);
    };
    if !root.start_el().matches("Error") {
        return (None, None);
    }
    while let Some(mut tag) = root.next_tag() {
        if tag.start_el().matches("Code") {
            code = try_data(&mut tag).ok().map(|c| c.trim().to_owned());
        } else if tag.start_el().matches("Message") {
            message = try_data(&mut tag).ok().map(|m| m.trim().to_owned());
        }
    }
    (code.filter(|c| !c.is_empty()), message)
}

/// `<ListBucketResult>`: the keys with their sizes, and whether more follow.
fn parse_listing(body: &str) -> std::result::Result<Listing, XmlDecodeError> {
    let mut doc = Document::new(body);
    let mut root = doc.root_element()?;
    if !root.start_el().matches("ListBucketResult") {
        return Err(XmlDecodeError::custom(
            "the answer is not a ListBucketResult",
        ));
    }
    let mut listing = Listing::default();
    while let Some(mut tag) = root.next_tag() {
        if tag.start_el().matches("Contents") {
            let mut key = None;
            let mut size = 0;
            while let Some(mut field) = tag.next_tag() {
                if field.start_el().matches("Key") {
                    key = Some(try_data(&mut field)?.into_owned());
                } else if field.start_el().matches("Size") {
                    size = try_data(&mut field)?
                        .trim()
                        .parse()
                        .map_err(|_| XmlDecodeError::custom("an object size is not a number"))?;
                }
            }
            let key = key.ok_or_else(|| XmlDecodeError::custom("an object has no key"))?;
            listing.objects.push(Object { key, size });
        } else if tag.start_el().matches("IsTruncated") {
            listing.truncated = try_data(&mut tag)?.trim() == "true";
        }
    }
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;
    use crate::testutil::FakeServer;

    const SECRET: &str = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY";

    fn creds() -> AwsCredentials {
        AwsCredentials {
            access_key_id: "ASIAFAKE".into(),
            secret_access_key: SecretString::from(SECRET),
            session_token: SecretString::from("tok"),
            expiration: 1_893_456_000,
        }
    }

    fn client(endpoint: Option<&str>) -> S3 {
        S3::new(&creds(), "eu-west-3", endpoint).expect("client")
    }

    #[test]
    fn addressing() {
        let aws = client(None);
        assert_eq!(
            aws.url("my-bucket", Some("0xabc/a b+c/ü.txt"), &[]),
            "https://my-bucket.s3.eu-west-3.amazonaws.com/0xabc/a%20b%2Bc/%C3%BC.txt"
        );
        // Dots cannot be a TLS host label: path-style, as the SDK does.
        assert_eq!(
            aws.url("my.bucket", Some("k"), &[]),
            "https://s3.eu-west-3.amazonaws.com/my.bucket/k"
        );
        let cn = S3::new(&creds(), "cn-north-1", None).expect("client");
        assert_eq!(
            cn.url("bkt", None, &[("prefix", "0xabc/")]),
            "https://bkt.s3.cn-north-1.amazonaws.com.cn/?prefix=0xabc%2F"
        );
        let rgw = client(Some("http://127.0.0.1:7480/"));
        assert_eq!(
            rgw.url(
                "bkt",
                None,
                &[("list-type", "2"), ("start-after", "a&b=c d")]
            ),
            "http://127.0.0.1:7480/bkt/?list-type=2&start-after=a%26b%3Dc%20d"
        );
    }

    #[test]
    fn error_bodies() {
        let rgw = r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message></Message><BucketName>bkt</BucketName><RequestId>tx</RequestId></Error>"#;
        assert_eq!(
            parse_error(rgw),
            (Some("AccessDenied".into()), Some(String::new()))
        );
        let aws = "<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message><Key>k</Key></Error>";
        assert_eq!(
            parse_error(aws),
            (
                Some("NoSuchKey".into()),
                Some("The specified key does not exist.".into())
            )
        );
        assert_eq!(parse_error(""), (None, None));
        assert_eq!(parse_error("<html>bad gateway</html>"), (None, None));
    }

    #[test]
    fn listings() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bkt</Name><Prefix>0xabc/</Prefix>
<KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>
<Contents><Key>0xabc/a &amp; b.txt</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>"x"</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>0xabc/c</Key><Size>0</Size></Contents></ListBucketResult>"#;
        let l = parse_listing(xml).expect("listing");
        assert!(l.truncated);
        assert_eq!(
            l.objects,
            vec![
                Object {
                    key: "0xabc/a & b.txt".into(),
                    size: 12
                },
                Object {
                    key: "0xabc/c".into(),
                    size: 0
                }
            ]
        );
        let empty =
            "<ListBucketResult><Name>bkt</Name><IsTruncated>false</IsTruncated></ListBucketResult>";
        assert_eq!(parse_listing(empty).expect("listing"), Listing::default());
        assert!(parse_listing("<Error><Code>X</Code></Error>").is_err());
        assert!(
            parse_listing(
                "<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>"
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn calls_are_signed_path_style_and_bounded() {
        let server = FakeServer::start(vec![
            (200, String::new()),
            (200, "hello".into()),
            (200, "hello".into()),
            (204, String::new()),
            (
                200,
                "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>".into(),
            ),
        ]);
        let s3 = client(Some(&server.url));
        s3.put_object("bkt", "0xabc/n 1.txt", "text/plain", b"body!".to_vec())
            .await
            .expect("put");
        let got = s3.get_object("bkt", "0xabc/n 1.txt", 5).await.expect("get");
        assert_eq!(got.bytes, b"hello");
        assert_eq!(got.content_type.as_deref(), Some("text/xml"));
        assert_eq!(
            s3.get_object("bkt", "0xabc/n 1.txt", 4).await.err(),
            Some(S3Error::TooLarge { size: Some(5) })
        );
        s3.delete_object("bkt", "0xabc/n 1.txt")
            .await
            .expect("delete");
        let req = ListRequest {
            prefix: "0xabc/",
            start_after: Some("0xabc/m"),
            max_keys: 7,
        };
        assert_eq!(
            s3.list_objects_v2("bkt", &req).await.expect("list"),
            Listing::default()
        );
        let reqs = server.requests();
        assert!(
            reqs[0].starts_with("PUT /bkt/0xabc/n%201.txt HTTP/1.1\r\n"),
            "{}",
            reqs[0]
        );
        assert!(reqs[0].ends_with("\r\n\r\nbody!"), "{}", reqs[0]);
        assert!(
            reqs[1].starts_with("GET /bkt/0xabc/n%201.txt HTTP/1.1\r\n"),
            "{}",
            reqs[1]
        );
        assert!(
            reqs[3].starts_with("DELETE /bkt/0xabc/n%201.txt HTTP/1.1\r\n"),
            "{}",
            reqs[3]
        );
        assert!(
            reqs[4].starts_with(
                "GET /bkt/?list-type=2&max-keys=7&prefix=0xabc%2F&start-after=0xabc%2Fm HTTP/1.1"
            ),
            "{}",
            reqs[4]
        );
        for r in &reqs {
            let lower = r.to_ascii_lowercase();
            let auth = "authorization: aws4-hmac-sha256 credential=asiafake/";
            assert!(lower.contains(auth), "{r}");
            assert!(lower.contains("/eu-west-3/s3/aws4_request"), "{r}");
            assert!(lower.contains("x-amz-security-token: tok\r\n"), "{r}");
            assert!(lower.contains("x-amz-content-sha256: "), "{r}");
            // Only the signature travels; the secret itself never does.
            assert!(!r.contains(SECRET), "{r}");
        }
        let put = reqs[0].to_ascii_lowercase();
        assert!(put.contains("content-type: text/plain\r\n"), "{put}");
        assert!(put.contains("signedheaders=content-type;host;"), "{put}");
    }

    #[tokio::test]
    async fn server_errors_are_retried_and_refusals_are_not() {
        let slow =
            "<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>";
        let denied = "<Error><Code>AccessDenied</Code><Message></Message></Error>";
        let server = FakeServer::start(vec![
            (503, slow.into()),
            (500, String::new()),
            (200, "ok".into()),
            (403, denied.into()),
            (503, slow.into()),
            (503, slow.into()),
            (503, slow.into()),
        ]);
        let s3 = client(Some(&server.url));
        let got = s3.get_object("bkt", "k", 10).await.expect("third try");
        assert_eq!(got.bytes, b"ok");
        let refused = s3.get_object("bkt", "k", 10).await.expect_err("403");
        assert_eq!(refused.status(), Some(403));
        assert_eq!(refused.code(), Some("AccessDenied"));
        assert_eq!(refused.detail(), "HTTP 403 AccessDenied");
        let busy = s3
            .delete_object("bkt", "k")
            .await
            .expect_err("503 three times");
        assert_eq!(
            busy.detail(),
            "HTTP 503 SlowDown: Reduce your request rate."
        );
        assert_eq!(server.requests().len(), 7);
    }

    #[tokio::test]
    async fn no_answer_is_a_transport_error() {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let s3 = client(Some(&format!("http://127.0.0.1:{port}")));
        let e = s3.delete_object("bkt", "k").await.expect_err("refused");
        assert!(
            matches!(
                &e,
                S3Error::Transport {
                    what: "connection failed",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!e.detail().contains(SECRET), "{}", e.detail());
    }
}
