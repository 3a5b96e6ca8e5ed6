//! `[sources.x] type = "forward"` through the loader.

use crate::config::load_str;

fn load(source: &str) -> Result<crate::config::Config, Vec<String>> {
    let text =
        format!("[sources.fw]\ntype = \"forward\"\n{source}\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"fw\"]\n");
    load_str(&text, "t.toml", &|_| None).map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

#[test]
fn defaults_listen_on_loopback_tcp() {
    let c = load("").unwrap();
    let crate::sources::SourceConfig::Forward(f) = &c.sources[0].inner else {
        panic!("not a forward source")
    };
    assert_eq!(f.tcp_address(), Some("127.0.0.1:24224".parse().unwrap()));
    assert_eq!(f.max_frame_size.as_u64(), 16 * 1024 * 1024);
    assert_eq!(f.max_record_size.as_u64(), 1024 * 1024);
    assert_eq!(f.max_connections, 256);
    assert!(c.sources[0].inner.describe().contains("tcp 127.0.0.1:24224"));
}

#[test]
fn users_are_read_and_never_shown() {
    let c = load("shared_key = \"k3y\"\nusers = [{ username = \"alice\", password = \"pa55\" }]").unwrap();
    let crate::sources::SourceConfig::Forward(f) = &c.sources[0].inner else {
        panic!("not a forward source")
    };
    assert_eq!(f.users.len(), 1);
    assert_eq!(
        (f.users[0].username.as_str(), f.users[0].password.expose()),
        ("alice", "pa55")
    );
    let shown = format!("{f:?} {}", f.describe());
    assert!(!shown.contains("pa55") && !shown.contains("k3y"), "{shown}");
    assert!(shown.contains("1 user(s)"), "{shown}");
}

#[test]
fn partial_is_true_false_or_a_table_and_checked() {
    use crate::transforms::partial_message::PartialMessageConfig;
    let get = |c: &crate::config::Config| match &c.sources[0].inner {
        crate::sources::SourceConfig::Forward(f) => f.partial.clone(),
        _ => panic!("not a forward source"),
    };
    assert_eq!(get(&load("").unwrap()), None);
    assert_eq!(get(&load("partial = false").unwrap()), None);
    assert_eq!(
        get(&load("partial = true").unwrap()),
        Some(PartialMessageConfig::default())
    );
    let c = load("partial = { key = \"message\", max_size = \"64KiB\", flush_timeout = \"5s\" }").unwrap();
    let p = get(&c).unwrap();
    assert_eq!(
        (p.key.as_str(), p.max_size.as_u64(), p.flush_timeout.as_secs()),
        ("message", 64 * 1024, 5)
    );
    assert!(
        c.sources[0].inner.describe().contains("partial_message"),
        "{}",
        c.sources[0].inner.describe()
    );
    let errs = load("partial = { max_size = \"0B\" }").unwrap_err();
    assert!(
        errs.iter().any(|e| e.contains("sources.fw.partial.max_size")),
        "{errs:?}"
    );
    let errs = load("partial = { kye = \"log\" }").unwrap_err();
    assert!(errs.iter().any(|e| e.contains("kye")), "{errs:?}");
    let errs = load("partial = \"yes\"").unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.contains("sources.fw.partial") || e.contains("true, false")),
        "{errs:?}"
    );
}

#[test]
fn path_alone_means_no_tcp_and_both_may_be_set() {
    let c = load("path = \"/tmp/f.sock\"").unwrap();
    let crate::sources::SourceConfig::Forward(f) = &c.sources[0].inner else {
        panic!()
    };
    assert_eq!(f.tcp_address(), None);
    assert_eq!(f.unix_mode(), 0o666);
    let c = load("path = \"/tmp/f.sock\"\naddress = \"0.0.0.0:24225\"\nunix_perm = \"0600\"").unwrap();
    let crate::sources::SourceConfig::Forward(f) = &c.sources[0].inner else {
        panic!()
    };
    assert_eq!(f.tcp_address(), Some("0.0.0.0:24225".parse().unwrap()));
    assert_eq!(f.unix_mode(), 0o600);
}

#[test]
fn bad_values_name_their_key_and_line() {
    let errs = load("address = \"localhost\"\nmax_connections = 0\nshared_key = \"\"").unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.contains("t.toml:3:") && e.contains("sources.fw.address")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("sources.fw.max_connections")),
        "{errs:?}"
    );
    assert!(errs.iter().any(|e| e.contains("sources.fw.shared_key")), "{errs:?}");
    let errs = load("self_hostname = \"me\"\nmax_frame_size = \"10B\"\nunix_perm = \"0999\"").unwrap_err();
    assert!(errs.iter().any(|e| e.contains("sources.fw.self_hostname")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("sources.fw.max_frame_size")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("sources.fw.unix_perm")), "{errs:?}");
    let errs = load("users = [{ username = \"a\", password = \"p\" }]").unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.contains("sources.fw.users") && e.contains("shared_key")),
        "{errs:?}"
    );
    let errs = load(
            "shared_key = \"k\"\nusers = [{ username = \"a\", password = \"p\" }, { username = \"a\", password = \"q\" }, { username = \"b\", password = \"\" }]",
        )
        .unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.contains("sources.fw.users[1].username") && e.contains("twice")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("sources.fw.users[2].password")),
        "{errs:?}"
    );
    let errs = load("shared_key = \"k\"\nusers = [{ username = \"a\", pasword = \"p\" }]").unwrap_err();
    assert!(errs.iter().any(|e| e.contains("pasword")), "{errs:?}");
    let errs = load("adress = \"127.0.0.1:1\"").unwrap_err();
    assert!(errs.iter().any(|e| e.contains("adress")), "{errs:?}");
}

#[test]
fn tls_table_is_checked() {
    let c =
        load("tls = { cert_file = \"/c.pem\", key_file = \"/k.pem\", ca_file = \"/ca.pem\", verify_client = true }")
            .unwrap();
    let crate::sources::SourceConfig::Forward(f) = &c.sources[0].inner else {
        panic!("not a forward source")
    };
    let t = f.tls.as_ref().unwrap();
    assert!(t.verify_client && t.ca_file.is_some());
    // Still loopback unless asked.
    assert_eq!(f.tcp_address(), Some("127.0.0.1:24224".parse().unwrap()));
    assert!(
        f.describe().contains("TLS with client certificates"),
        "{}",
        f.describe()
    );
    let e = load("tls = { cert_file = \"/c.pem\", key_file = \"/k.pem\", verify_client = true }").unwrap_err();
    assert!(e[0].contains("`sources.fw.tls`") && e[0].contains("ca_file"), "{e:?}");
    let e = load("tls = { cert_file = \"/c.pem\" }").unwrap_err();
    assert!(e[0].contains("key_file"), "{e:?}");
    let e = load("path = \"/tmp/x.sock\"\ntls = { cert_file = \"/c.pem\", key_file = \"/k.pem\" }").unwrap_err();
    assert!(e[0].contains("`sources.fw.tls`") && e[0].contains("address"), "{e:?}");
}
