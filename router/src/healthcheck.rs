//! `logferry healthcheck`: one GET against the router's own `/healthz`, for container
//! health checks in images without curl or a shell (distroless).
//!
//! ECS runs `["CMD", "/usr/local/bin/logferry", "healthcheck"]` inside the router's
//! container; the answer is the exit status (0 on 2xx, 1 otherwise) and, on failure, one line
//! on stderr that ECS keeps in the container's health status.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The `[api]` address the shipped configs use.
pub const DEFAULT_URL: &str = "http://127.0.0.1:2020/healthz";

/// The whole check, connect included; ECS's own health-check timeout is 5 s by default.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// `Ok(status)` for a 2xx answer, else why not (one line).
pub async fn probe(url: &str) -> Result<u16, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    // Only the status matters; the body is dropped unread with the response.
    match tokio::time::timeout(TIMEOUT, client.get(uri)).await {
        Err(_) => Err(format!("GET {url}: no answer within {}s", TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("GET {url}: {}", error_chain(&e))),
        Ok(Ok(resp)) if resp.status().is_success() => Ok(resp.status().as_u16()),
        Ok(Ok(resp)) => Err(format!("GET {url}: HTTP status {}", resp.status().as_u16())),
    }
}

/// The subcommand: exit 0 on 2xx, else 1 with one line on stderr.
pub fn main(url: &str) -> std::process::ExitCode {
    use std::io::Write as _;
    match run(url) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(why) => {
            let _ = writeln!(std::io::stderr(), "logferry healthcheck: unhealthy: {why}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs [`probe`] on a one-thread runtime.
pub fn run(url: &str) -> Result<u16, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(probe(url))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_is_reported_not_panicked() {
        let err = run("not a url").unwrap_err();
        assert!(err.starts_with("invalid URL"), "{err}");
    }

    #[test]
    fn status_and_closed_port() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = tokio::spawn(async move {
                for status in ["200 OK", "503 Service Unavailable"] {
                    let (mut s, _) = listener.accept().await.unwrap();
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await.unwrap();
                    let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    s.write_all(resp.as_bytes()).await.unwrap();
                }
            });
            let url = format!("http://127.0.0.1:{port}/healthz");
            assert_eq!(probe(&url).await, Ok(200));
            let err = probe(&url).await.unwrap_err();
            assert!(err.ends_with("HTTP status 503"), "{err}");
            server.await.unwrap();
            // The listener is gone: connection refused, reported with its cause.
            let err = probe(&url).await.unwrap_err();
            assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        });
    }
}
