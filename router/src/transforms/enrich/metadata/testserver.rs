//! A real HTTP/1.1 server on loopback for the metadata tests.
//!
//! The collectors are exercised through their real clients (hyper for ECS, aws-config's IMDS
//! client for EC2), so the endpoints have to speak actual HTTP. Blocking std threads keep the
//! server independent of the runtime under test: a test can make it hang without starving the
//! client it is timing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

/// One canned answer.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Headers the request must carry (`None`: any value); otherwise the answer is 401.
    pub require: Vec<(String, Option<String>)>,
}

impl Route {
    pub fn new(method: &str, path: &str, status: u16, body: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            status,
            headers: Vec::new(),
            body: body.to_owned(),
            require: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn require(mut self, name: &str, value: Option<&str>) -> Self {
        self.require.push((name.to_ascii_lowercase(), value.map(str::to_owned)));
        self
    }
}

/// A request as the server saw it; header names are lower-cased.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    routes: Mutex<Vec<Route>>,
    requests: Mutex<Vec<Recorded>>,
    held: Mutex<Vec<TcpStream>>,
    hang: AtomicBool,
    stop: AtomicBool,
}

pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TestServer {
    pub fn start() -> Self {
        let listener = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => panic!("test server cannot bind loopback: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("test server has no address: {e}"),
        };
        let shared = Arc::new(Shared::default());
        let accept_shared = Arc::clone(&shared);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let conn_shared = Arc::clone(&accept_shared);
                thread::spawn(move || serve(stream, &conn_shared));
            }
        });
        Self { addr, shared }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn route(&self, route: Route) {
        locked(&self.shared.routes).push(route);
    }

    /// A `200 OK` JSON/text answer to `GET path`.
    pub fn get(&self, path: &str, body: &str) {
        self.route(Route::new("GET", path, 200, body));
    }

    /// From now on requests are read and recorded but never answered.
    pub fn hang(&self) {
        self.shared.hang.store(true, Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        locked(&self.shared.requests).clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        locked(&self.shared.held).clear();
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// A URL on which nothing listens: connections are refused, as off EC2.
pub fn closed_port_url() -> String {
    let addr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
    match addr {
        Ok(addr) => format!("http://{addr}"),
        Err(e) => panic!("cannot reserve a loopback port: {e}"),
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let Some(request) = read_request(&mut reader) else {
        return;
    };
    locked(&shared.requests).push(request.clone());

    if shared.hang.load(Ordering::SeqCst) {
        // Keep the connection open (and silent) until the server is dropped.
        locked(&shared.held).push(stream);
        return;
    }

    let route = locked(&shared.routes)
        .iter()
        .find(|r| r.method == request.method && r.path == request.path)
        .cloned();
    let (status, headers, body) = match route {
        None => (404, Vec::new(), "not found".to_owned()),
        Some(route) => {
            let satisfied = route
                .require
                .iter()
                .all(|(name, want)| match (request.header(name), want) {
                    (Some(got), Some(want)) => got == want,
                    (Some(_), None) => true,
                    (None, _) => false,
                });
            if satisfied {
                (route.status, route.headers, route.body)
            } else {
                (401, Vec::new(), "unauthorized".to_owned())
            }
        }
    };
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&body);
    let mut stream = stream;
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Recorded> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let request = Recorded { method, path, headers };
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if length > 0 {
        let mut body = vec![0; length.min(1 << 20)];
        reader.read_exact(&mut body).ok()?;
    }
    Some(request)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(url: &str, raw: &str) -> String {
        let addr = url.trim_start_matches("http://");
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => panic!("connect: {e}"),
        };
        let _ = stream.write_all(raw.as_bytes());
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out);
        out
    }

    #[test]
    fn serves_routes_enforces_headers_and_records() {
        let server = TestServer::start();
        server.get("/a", "hello");
        server.route(
            Route::new("PUT", "/t", 200, "tok")
                .require("X-Need", None)
                .header("X-Got", "1"),
        );

        let a = roundtrip(&server.url(), "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(a.starts_with("HTTP/1.1 200 OK") && a.ends_with("\r\n\r\nhello"), "{a}");
        let denied = roundtrip(&server.url(), "PUT /t HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
        let ok = roundtrip(
            &server.url(),
            "PUT /t HTTP/1.1\r\nx-need: y\r\nContent-Length: 2\r\n\r\nab",
        );
        assert!(ok.contains("X-Got: 1") && ok.ends_with("tok"), "{ok}");
        let missing = roundtrip(&server.url(), "GET /nope HTTP/1.1\r\n\r\n");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

        let seen: Vec<(String, String)> = server.requests().into_iter().map(|r| (r.method, r.path)).collect();
        assert_eq!(seen.len(), 4);
        assert_eq!(seen.first(), Some(&("GET".to_owned(), "/a".to_owned())));
        assert_eq!(
            server
                .requests()
                .get(2)
                .and_then(|r| r.header("X-NEED").map(str::to_owned)),
            Some("y".to_owned())
        );
    }
}
