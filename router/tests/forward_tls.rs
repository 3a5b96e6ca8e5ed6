//! TLS on the forward source, with client certificates (mutual TLS) from the
//! forward sink: certificates made here with rcgen, two Logferry processes
//! (file -> forward sink, forward source -> file sink), and a raw rustls
//! client for the refusals.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::tls::Ca;
use common::*;

const LONG: Duration = Duration::from_secs(90);
const NAME: &str = "fwd.test";

/// B: a forward source with TLS (client certificates from `client_ca`) ->
/// file sink, with its API for metrics.
fn server(b: &Env, port: u16, api: u16, cert: &Path, key: &Path, client_ca: &Path) -> Router {
    let source = format!(
        "address = \"127.0.0.1:{port}\"\ntls = {{ cert_file = \"{}\", key_file = \"{}\", ca_file = \"{}\", verify_client = true }}",
        cert.display(),
        key.display(),
        client_ca.display(),
    );
    let r = spawn(&b.forward_to(Some(api), &source, ForwardInto::Files), &[]);
    wait_listening(port);
    r
}

/// A: ids `0..n` -> forward sink over TLS trusting `ca`, presenting `client`.
fn sink(a: &Env, port: u16, n: u64, ca: &Path, client: (&Path, &Path)) -> PathBuf {
    append_ids(&a.logs().join("app.log"), 0..n);
    a.file_to_forward(
        None,
        "",
        &format!(
            "host = \"127.0.0.1\"\nport = {port}\ntls = {{ enabled = true, ca_file = \"{}\", server_name = \"{NAME}\", cert_file = \"{}\", key_file = \"{}\" }}",
            ca.display(),
            client.0.display(),
            client.1.display(),
        ),
    )
}

fn tls_failures(api: u16) -> f64 {
    let (_, text) = http_get(api, "/metrics").unwrap_or_default();
    metric(&text, "logferry_forward_handshake_failures_total", &["reason=\"tls\""]).unwrap_or(0.0)
}

/// A raw rustls client: connects with `client` (or no certificate), writes
/// one PackedForward message asking for an ack; returns whether an ack came.
fn raw_client_gets_ack(port: u16, ca: &Path, client: Option<(&Path, &Path)>) -> bool {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        Some((c, k)) => b
            .with_client_auth_cert(
                rustls::pki_types::CertificateDer::pem_file_iter(c)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                rustls::pki_types::PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    let conn = rustls::ClientConnection::new(Arc::new(cfg), NAME.try_into().unwrap()).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let msg = forward_message("raw-1");
    if s.write_all(&msg).and_then(|_| s.flush()).is_err() {
        return false;
    }
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => {
            let v = rmpv::decode::read_value(&mut &buf[..n]).unwrap();
            v.as_map().is_some_and(|m| {
                m.iter()
                    .any(|(k, v)| k.as_str() == Some("ack") && v.as_str() == Some("raw-1"))
            })
        }
        _ => false,
    }
}

/// `["raw", [[t, {"id": 999999}]], {"chunk": id}]` (Forward mode).
fn forward_message(chunk: &str) -> Vec<u8> {
    use rmpv::Value;
    let rec = Value::Map(vec![(Value::from("id"), Value::from(999_999))]);
    let entry = Value::Array(vec![Value::from(1_767_225_600), rec]);
    let opts = Value::Map(vec![(Value::from("chunk"), Value::from(chunk))]);
    let msg = Value::Array(vec![Value::from("raw"), Value::Array(vec![entry]), opts]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &msg).unwrap();
    out
}

#[test]
fn a_client_signed_by_the_ca_is_accepted_and_its_records_arrive() {
    let (a, b) = (Env::new(), Env::new());
    let dir = b.dir.path();
    let ca = Ca::new("fwd ca");
    let ca_pem = ca.write(&dir.join("ca.pem"));
    let (cert, key) = ca.issue(dir, "server", &[NAME]);
    let client = ca.issue(dir, "client", &["node-a"]);
    let (port, api) = (free_port(), free_port());
    let _b = server(&b, port, api, &cert, &key, &ca_pem);
    let n = 2000;
    run_to_eof(&sink(&a, port, n, &ca_pem, (&client.0, &client.1)), &[]);
    wait_for("every record in B's files", LONG, || b.records().len() as u64 >= n);
    let counts = id_counts(&b.records());
    assert_eq!(counts.len() as u64, n);
    assert!(counts.values().all(|c| *c == 1));
    // The raw client with the same certificate gets its ack too.
    assert!(raw_client_gets_ack(port, &ca_pem, Some((&client.0, &client.1))));
    assert_eq!(tls_failures(api), 0.0);
}

#[test]
fn clients_without_a_certificate_of_the_ca_are_refused_and_nothing_is_ingested() {
    let b = Env::new();
    let dir = b.dir.path();
    let ca = Ca::new("fwd ca");
    let ca_pem = ca.write(&dir.join("ca.pem"));
    let (cert, key) = ca.issue(dir, "server", &[NAME]);
    let other = Ca::new("other ca");
    let stranger = other.issue(dir, "stranger", &["node-x"]);
    let (port, api) = (free_port(), free_port());
    let _b = server(&b, port, api, &cert, &key, &ca_pem);
    // Signed by another CA; no certificate at all; plain TCP.
    assert!(!raw_client_gets_ack(port, &ca_pem, Some((&stranger.0, &stranger.1))));
    assert!(!raw_client_gets_ack(port, &ca_pem, None));
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = plain.write_all(&forward_message("plain-1"));
    let mut got = Vec::new();
    // The server answers a TLS alert at most, then closes: no ack.
    let _ = plain.read_to_end(&mut got);
    assert!(!got.windows(3).any(|w| w == b"ack"), "{got:?}");
    wait_for("three TLS failures counted", LONG, || tls_failures(api) >= 3.0);
    // A's forward sink with the stranger's certificate: refused too.
    let a = Env::new();
    let cfg = sink(&a, port, 10, &ca_pem, (&stranger.0, &stranger.1));
    let _a = spawn(&cfg, &[]);
    wait_for("the sink's attempts refused", LONG, || tls_failures(api) >= 5.0);
    assert!(b.records().is_empty(), "{:?}", b.records());
    // The listener still serves a good client.
    let good = ca.issue(dir, "good", &["node-b"]);
    assert!(raw_client_gets_ack(port, &ca_pem, Some((&good.0, &good.1))));
}

#[test]
fn a_rotated_certificate_is_used_without_a_restart() {
    let (a, b) = (Env::new(), Env::new());
    let dir = b.dir.path();
    let old_ca = Ca::new("old ca");
    let new_ca = Ca::new("new ca");
    let clients_ca = Ca::new("clients");
    let clients_pem = clients_ca.write(&dir.join("clients.pem"));
    let new_pem = new_ca.write(&dir.join("new.pem"));
    let old_pem = old_ca.write(&dir.join("old.pem"));
    let (cert, key) = old_ca.issue(dir, "server", &[NAME]);
    let client = clients_ca.issue(dir, "client", &["node-a"]);
    let (port, api) = (free_port(), free_port());
    let _b = server(&b, port, api, &cert, &key, &clients_pem);
    // A trusts only the new CA: refused while the old certificate is served.
    let cfg = sink(&a, port, 500, &new_pem, (&client.0, &client.1));
    let a_router = spawn(&cfg, &[]);
    wait_for("a refused attempt", LONG, || tls_failures(api) >= 1.0);
    assert!(b.records().is_empty());
    // A bad new file (half written) keeps the old certificate in use.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    assert!(raw_client_gets_ack(port, &old_pem, Some((&client.0, &client.1))));
    assert!(!raw_client_gets_ack(port, &new_pem, Some((&client.0, &client.1))));
    // Rotation: the new CA's certificate and key replace the files.
    let (c2, k2) = new_ca.issue(dir, "server2", &[NAME]);
    std::fs::write(&key, std::fs::read(&k2).unwrap()).unwrap();
    std::fs::write(&cert, std::fs::read(&c2).unwrap()).unwrap();
    wait_for("every record through the rotated certificate", LONG, || {
        b.records().len() as u64 >= 500
    });
    // 0..500 from A, and 999999 from the raw client while the old
    // certificate was kept.
    let counts = id_counts(&b.records());
    assert!((0..500).all(|i| counts.contains_key(&i)));
    assert_eq!(counts.len(), 501);
    drop(a_router);
}
