//! `[sinks.x] type = "forward"` through the loader: defaults, options, secrets, errors.

use super::no_env;
use crate::config::load_str;
use crate::sinks::SinkConfig;

use std::time::Duration;

use crate::confdiag::Secret;
use crate::sinks::forward::{ForwardCompression, ForwardSinkConfig};

fn config(sink: &str) -> String {
    super::one_sink("fw", "forward", sink)
}

fn load(sink: &str, env: &dyn Fn(&str) -> Option<String>) -> ForwardSinkConfig {
    let c = load_str(&config(sink), "t.toml", env).unwrap();
    let SinkConfig::Forward(f) = &c.sinks[0].inner else {
        panic!("not a forward sink: {:?}", c.sinks[0].inner)
    };
    f.clone()
}

#[test]
fn defaults_and_env_host() {
    let env = |k: &str| (k == "NODE_IP").then(|| "10.0.3.7".to_string());
    let f = load(r#"host = "${NODE_IP}""#, &env);
    assert_eq!(f.host, "10.0.3.7");
    assert_eq!(f.port, 24224);
    assert!(f.require_ack);
    assert_eq!(f.ack_timeout, Duration::from_secs(30));
    assert_eq!(f.compression, ForwardCompression::None);
    assert_eq!(f.max_chunk_size.as_u64(), 1024 * 1024);
    assert_eq!(f.max_in_flight, 4);
    assert_eq!(f.flush_interval, Duration::from_secs(1));
    assert!(f.tag.is_none() && f.shared_key.is_none() && !f.tls.enabled && f.tls.verify);
    assert_eq!(f.server_name(), "10.0.3.7");
}

#[test]
fn all_options() {
    let f = load(
        r#"host = "fluent.local"
port = 24225
tag = "app.{container_name}"
require_ack = false
ack_timeout = "5s"
compression = "gzip"
max_chunk_size = "256KiB"
flush_interval = "200ms"
shared_key = "secret"
self_hostname = "me"
username = "web"
password = "pa55"
tls = { enabled = true, ca_file = "/etc/ca.pem", server_name = "fluent", verify = true }"#,
        &no_env,
    );
    assert_eq!(f.port, 24225);
    assert_eq!(f.tag.as_deref(), Some("app.{container_name}"));
    assert!(!f.require_ack);
    assert_eq!(f.compression, ForwardCompression::Gzip);
    assert_eq!(f.max_chunk_size.as_u64(), 256 * 1024);
    assert_eq!(f.tls.ca_file.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
    assert_eq!(f.server_name(), "fluent");
    assert_eq!(f.username.as_deref(), Some("web"));
    assert_eq!(f.password.as_ref().map(Secret::expose), Some("pa55"));
    let shown = format!("{f:?}");
    assert!(!shown.contains("pa55") && !shown.contains("secret"), "{shown}");
}

fn errs(sink: &str) -> Vec<String> {
    match load_str(&config(sink), "t.toml", &no_env) {
        Ok(_) => panic!("expected errors for {sink}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn errors_name_the_key() {
    let e = errs("port = 1");
    assert!(e[0].contains("host"), "{e:?}");
    let e = errs("host = \"h\"\nmax_chunk_size = \"32MiB\"");
    assert!(e[0].contains("`sinks.fw.max_chunk_size`"), "{e:?}");
    let e = errs("host = \"h\"\ntag = \"a.{oops\"");
    assert!(e[0].contains("`sinks.fw.tag`"), "{e:?}");
    let e = errs("host = \"h\"\ncompression = \"zstd\"");
    assert!(e[0].contains("`sinks.fw.compression`"), "{e:?}");
    let e = errs("host = \"h\"\ntls = { ca_file = \"/x\" }");
    assert!(e[0].contains("`sinks.fw.tls`"), "{e:?}");
    let e = errs("host = \"h\"\ntls = { enabled = true, cafile = \"/x\" }");
    assert!(e[0].contains("unknown field `cafile`"), "{e:?}");
    let e = errs("host = \"h\"\nself_hostname = \"me\"");
    assert!(e[0].contains("`sinks.fw.self_hostname`"), "{e:?}");
    let e = errs("host = \"h\"\nshared_key = \"k\"\nusername = \"u\"");
    assert!(
        e[0].contains("`sinks.fw.username`") && e[0].contains("password"),
        "{e:?}"
    );
    let e = errs("host = \"h\"\nshared_key = \"k\"\npassword = \"p\"");
    assert!(e[0].contains("`sinks.fw.password`"), "{e:?}");
    let e = errs("host = \"h\"\nusername = \"u\"\npassword = \"p\"");
    assert!(
        e[0].contains("`sinks.fw.username`") && e[0].contains("shared_key"),
        "{e:?}"
    );
    let e = errs("host = \"h\"\nmax_in_flight = 0");
    assert!(e[0].contains("`sinks.fw.max_in_flight`"), "{e:?}");
    let e = errs("host = \"h\"\nack_timeout = \"1ms\"");
    assert!(e[0].contains("`sinks.fw.ack_timeout`"), "{e:?}");
}

#[test]
fn servers_list_for_failover() {
    use crate::sinks::forward::ServerAddr;
    let f = load(
        r#"servers = [{ host = "10.0.0.1" }, { host = "10.0.0.2", port = 24225 }]"#,
        &no_env,
    );
    let want = [("10.0.0.1", 24224), ("10.0.0.2", 24225)].map(|(h, p)| ServerAddr {
        host: h.into(),
        port: p,
    });
    assert_eq!(f.endpoints(), want);
    // `host`/`port` alone: one server.
    let f = load("host = \"h\"\nport = 7", &no_env);
    assert_eq!(
        f.endpoints(),
        [ServerAddr {
            host: "h".into(),
            port: 7
        }]
    );
    let e = errs("host = \"h\"\nservers = [{ host = \"a\" }]");
    assert!(
        e[0].contains("`sinks.fw.servers`") && e[0].contains("not both"),
        "{e:?}"
    );
    let e = errs("servers = [{ host = \"a\" }, { host = \"\" }]");
    assert!(e[0].contains("`sinks.fw.servers[1].host`"), "{e:?}");
    let e = errs("servers = [{ host = \"a\", prot = 1 }]");
    assert!(e[0].contains("unknown field `prot`"), "{e:?}");
    let e = errs("servers = []");
    assert!(e[0].contains("host"), "{e:?}");
    use crate::sinks::forward::LoadBalance;
    assert_eq!(f.load_balance, LoadBalance::Failover);
    let f = load(
        "servers = [{ host = \"a\" }, { host = \"b\" }]\nload_balance = \"round_robin\"",
        &no_env,
    );
    assert_eq!(f.load_balance, LoadBalance::RoundRobin);
    let e = errs("host = \"a\"\nload_balance = \"round_robin\"");
    assert!(
        e[0].contains("`sinks.fw.load_balance`") && e[0].contains("two"),
        "{e:?}"
    );
    let e = errs("host = \"a\"\nload_balance = \"random\"");
    assert!(e[0].contains("load_balance"), "{e:?}");
}

#[test]
fn a_client_certificate_needs_its_key() {
    let f = load(
        "host = \"h\"\ntls = { enabled = true, cert_file = \"/c.pem\", key_file = \"/k.pem\" }",
        &no_env,
    );
    assert_eq!(f.tls.cert_file.as_deref(), Some(std::path::Path::new("/c.pem")));
    let e = errs("host = \"h\"\ntls = { enabled = true, cert_file = \"/c.pem\" }");
    assert!(e[0].contains("`sinks.fw.tls`") && e[0].contains("key_file"), "{e:?}");
    let e = errs("host = \"h\"\ntls = { cert_file = \"/c.pem\", key_file = \"/k.pem\" }");
    assert!(e[0].contains("`enabled`"), "{e:?}");
}
