//! One HTTP request and what its answer means.
//!
//! Why one classification function ([`verdict`]): whether a status drops
//! records (dead letters), keeps them and retries, or keeps them and fails
//! `/readyz` until an operator acts is the sink's whole contract with the
//! backend, so it is decided in one place and tested on its own.
//!
//! Why 401/403/407 keep the records although they are 4xx: they mean a key
//! or token is wrong or revoked, which an operator fixes; sending every
//! record to the dead letters meanwhile would empty the pipeline into a
//! directory nobody replays. The AWS sinks treat `AccessDenied` the same way.
//! Redirects (3xx) are not followed (a POST body cannot follow a 302 safely)
//! and are treated the same: `uri` needs fixing.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::config::{HttpAuth, HttpCompression, HttpMethod, HttpSinkConfig};

/// Longest wait for a TCP connection (within `request_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an answer's body is read when only its status and the
/// debug log need it (a bulk answer gets more, see `deliver.rs`); the rest
/// is dropped with the connection.
pub const MAX_ANSWER: usize = 64 * 1024;

pub type Client = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What to do after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: the records are delivered.
    Delivered,
    /// 408, 429, 5xx: send the same body again after a pause.
    Retry,
    /// 401, 403, 407, 1xx, 3xx: keep the records, fail `/readyz`, retry
    /// slowly until the configuration is fixed.
    Operator,
    /// Any other 4xx: the server will never take this body; dead letters.
    Reject,
}

pub fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500..=599 => Verdict::Retry,
        401 | 403 | 407 => Verdict::Operator,
        400..=499 => Verdict::Reject,
        _ => Verdict::Operator,
    }
}

/// `logferry_http_requests_total{status}`: the class of an answer.
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// `http_<status>`, the reason label of dead letters and sink errors. The
/// strings are made once per distinct status (at most a few hundred exist)
/// and kept, since reasons are `&'static str` everywhere.
pub fn status_reason(status: u16) -> &'static str {
    interned("http", status)
}

/// `<prefix>_<status>`, made once and kept (`prefix` is one of a few literals).
pub fn interned(prefix: &'static str, status: u16) -> &'static str {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static REASONS: OnceLock<Mutex<HashMap<(&'static str, u16), &'static str>>> = OnceLock::new();
    let status = status.min(999);
    let Ok(mut m) = REASONS.get_or_init(Default::default).lock() else {
        return "http_status";
    };
    m.entry((prefix, status))
        .or_insert_with(|| Box::leak(format!("{prefix}_{status}").into_boxed_str()))
}

/// The pause a `Retry-After` value asks for: delay-seconds or an HTTP date
/// (RFC 9110 10.2.3); a date in the past means now. `None` when it is
/// neither.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `uri` without user info and query (either may hold a key): what logs and
/// errors show.
pub fn redact_uri(uri: &str) -> String {
    match uri.parse::<Uri>() {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme_str().unwrap_or("http"),
            u.authority()
                .map(|a| a.as_str().rsplit('@').next().unwrap_or(""))
                .unwrap_or(""),
            u.path()
        ),
        Err(_) => "(invalid uri)".to_string(),
    }
}

/// Builds the client: plain HTTP and HTTPS through one connector, rustls
/// with `tls.ca_file` or the system's roots.
pub fn build(cfg: &HttpSinkConfig) -> Result<Client, String> {
    let wants_tls = cfg.uri.starts_with("https://")
        || cfg
            .healthcheck_uri
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
    let tls = if wants_tls {
        crate::sinks::forward::tls::client_config(cfg.tls.ca_file.as_deref(), cfg.tls.verify, "http server")?
    } else {
        // Never used: every URI is http://.
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT.min(cfg.request_timeout)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(2)
        .build(https))
}

/// What every request carries, built once: method, URI, headers (auth and
/// configured ones marked sensitive, so hyper never prints them).
#[derive(Clone)]
pub struct Prepared {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// `uri` as logs may show it.
    pub shown: String,
}

impl Prepared {
    pub fn new(cfg: &HttpSinkConfig) -> Result<Prepared, String> {
        let uri: Uri = cfg.uri.parse().map_err(|e| format!("uri: {e}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(cfg.content_type()));
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("logferry/", env!("CARGO_PKG_VERSION"))),
        );
        if cfg.compression == HttpCompression::Gzip {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        for (name, value) in &cfg.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("headers: bad name `{name}`"))?;
            let mut value =
                HeaderValue::from_str(value.expose()).map_err(|_| format!("headers.{name}: invalid value"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        if let Some(auth) = &cfg.auth {
            use base64::Engine as _;
            let text = match auth {
                HttpAuth::Basic { user, password } => format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password.expose()))
                ),
                HttpAuth::Bearer { token } => format!("Bearer {}", token.expose()),
            };
            let mut value = HeaderValue::from_str(&text).map_err(|_| "auth: not valid in a header".to_string())?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        Ok(Prepared {
            method: match cfg.method {
                HttpMethod::Post => Method::POST,
                HttpMethod::Put => Method::PUT,
            },
            shown: redact_uri(&cfg.uri),
            uri,
            headers,
        })
    }
}

/// The server's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
    /// The start of the body, for the debug log (it may echo records).
    pub text: String,
    /// The body, up to the `max_answer` bytes asked for.
    pub body: Bytes,
}

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect to {uri}: {cause}")]
    Connect { uri: String, cause: String },
    #[error("TLS with {uri} failed: {cause}")]
    Tls { uri: String, cause: String },
    #[error("no answer from {uri} within {timeout:?} (request_timeout)")]
    Timeout { uri: String, timeout: Duration },
    #[error("request to {uri} failed: {cause}")]
    Other { uri: String, cause: String },
}

impl SendError {
    /// Labels `logferry_sink_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SendError::Connect { .. } => "connect",
            SendError::Tls { .. } => "tls",
            SendError::Timeout { .. } => "timeout",
            SendError::Other { .. } => "request",
        }
    }

    /// A certificate problem: fixed by an operator, `/readyz` fails meanwhile.
    pub fn needs_operator(&self) -> bool {
        matches!(self, SendError::Tls { .. })
    }
}

/// Every cause in `e`'s chain, joined, and whether rustls is among them.
fn causes(e: &(dyn std::error::Error + 'static)) -> (String, bool) {
    let mut text = e.to_string();
    let mut tls = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            tls = true;
        }
        if !std::ptr::eq(err as *const _ as *const u8, e as *const _ as *const u8) {
            let s = err.to_string();
            if !text.contains(&s) {
                text.push_str(": ");
                text.push_str(&s);
            }
        }
        // io::Error hides the error it wraps from `source()` (it returns
        // that error's source): walk into it instead, since rustls's error
        // sits inside io::Errors (tokio-rustls, then hyper-rustls).
        cur = match err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    (text, tls)
}

/// Sends one request with `body` and reads the answer (at most `max_answer`
/// bytes of it), all within `timeout`.
pub async fn send(
    client: &Client,
    p: &Prepared,
    method: Method,
    uri: &Uri,
    body: Bytes,
    timeout: Duration,
    max_answer: usize,
) -> Result<Answer, SendError> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = p.headers.clone();
    let shown = || redact_uri(&uri.to_string());
    let attempt = async {
        let resp = client.request(req).await.map_err(|e| {
            let (cause, tls) = causes(&e);
            if tls {
                SendError::Tls { uri: shown(), cause }
            } else if e.is_connect() {
                SendError::Connect { uri: shown(), cause }
            } else {
                SendError::Other { uri: shown(), cause }
            }
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, SystemTime::now()));
        // The body is read so the connection can be reused; past
        // `max_answer` the rest is left unread (and the connection dropped).
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while got.len() < max_answer {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        got.extend_from_slice(&d[..d.len().min(max_answer - got.len())]);
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
        let text = String::from_utf8_lossy(&got[..got.len().min(512)]).into_owned();
        Ok(Answer {
            status,
            retry_after,
            text,
            body: Bytes::from(got),
        })
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(SendError::Timeout { uri: shown(), timeout }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(verdict(s), Verdict::Delivered, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(verdict(s), Verdict::Retry, "{s}");
        }
        for s in [401, 403, 407, 301, 302, 307, 100] {
            assert_eq!(verdict(s), Verdict::Operator, "{s}");
        }
        for s in [400, 404, 405, 409, 413, 415, 422, 499] {
            assert_eq!(verdict(s), Verdict::Reject, "{s}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        // Thu, 01 Jan 2026 00:00:00 GMT is `now`; 90 s later:
        assert_eq!(
            retry_after("Thu, 01 Jan 2026 00:01:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        // The obsolete forms RFC 9110 still asks recipients to accept.
        assert_eq!(
            retry_after("Thursday, 01-Jan-26 00:00:05 GMT", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            retry_after("Thu Jan  1 00:00:09 2026", now),
            Some(Duration::from_secs(9))
        );
        assert_eq!(retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now), Some(Duration::ZERO));
        for bad in ["", "-1", "1.5", "soon", "Thu, 01 Jan 2026"] {
            assert_eq!(retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn reasons_and_classes() {
        assert_eq!(status_reason(400), "http_400");
        assert_eq!(status_reason(413), "http_413");
        assert!(std::ptr::eq(status_reason(400), status_reason(400)), "made once");
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(503), "5xx");
    }

    #[test]
    fn shown_uris_hide_keys() {
        assert_eq!(
            redact_uri("https://user:pw@intake.example:8443/v1/logs?api_key=s3cret"),
            "https://intake.example:8443/v1/logs"
        );
        assert_eq!(redact_uri("http://127.0.0.1:9/"), "http://127.0.0.1:9/");
    }
}
