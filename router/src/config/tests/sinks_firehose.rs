//! `[sinks.x] type = "firehose"` through the loader.

use super::no_env;
use crate::config::load_str;
use crate::sinks::SinkConfig;

fn config(sink: &str) -> String {
    super::one_sink("fh", "firehose", sink)
}

#[test]
fn defaults() {
    let c = load_str(&config("delivery_stream = \"my-stream\""), "t.toml", &no_env).unwrap();
    let SinkConfig::Firehose(f) = &c.sinks[0].inner else {
        panic!("not a firehose sink: {:?}", c.sinks[0].inner)
    };
    assert_eq!(f.delivery_stream, "my-stream");
    assert_eq!(f.max_record_size.as_u64(), 1_024_000);
    assert_eq!(f.flush_interval, std::time::Duration::from_secs(1));
    assert!(f.region.is_none() && f.endpoint_url.is_none());
    assert!(c.describe().contains("firehose: my-stream"), "{}", c.describe());
}

#[test]
fn all_options() {
    let text = config(
        r#"delivery_stream = "s"
region = "eu-west-1"
endpoint_url = "http://127.0.0.1:4566"
flush_interval = "250ms"
max_record_size = "64KiB""#,
    );
    let c = load_str(&text, "t.toml", &no_env).unwrap();
    let SinkConfig::Firehose(f) = &c.sinks[0].inner else {
        panic!("not a firehose sink")
    };
    assert_eq!(f.region.as_deref(), Some("eu-west-1"));
    assert_eq!(f.max_record_size.as_u64(), 65536);
    assert_eq!(f.flush_interval, std::time::Duration::from_millis(250));
}

fn errs(sink: &str) -> Vec<String> {
    match load_str(&config(sink), "t.toml", &no_env) {
        Ok(_) => panic!("expected errors for {sink}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn errors_name_the_key() {
    let e = errs("delivery_stream = \"s\"\nmax_record_size = \"1001KiB\"");
    assert!(e[0].contains("`sinks.fh.max_record_size`"), "{e:?}");
    let e = errs("delivery_stream = \"no spaces\"");
    assert!(e[0].contains("`sinks.fh.delivery_stream`"), "{e:?}");
    let e = errs("delivery_stream = \"s\"\nflush_interval = \"1ms\"");
    assert!(e[0].contains("`sinks.fh.flush_interval`"), "{e:?}");
    let e = errs("delivery_stream = \"s\"\nbucket = \"x\"");
    assert!(e[0].contains("unknown field `bucket`"), "{e:?}");
    let e = errs("region = \"us-east-1\"");
    assert!(e[0].contains("delivery_stream"), "{e:?}");
}
