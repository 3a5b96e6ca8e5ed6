//! `[sinks.x] type = "kinesis_streams"` through the loader.

use super::no_env;
use crate::config::load_str;
use crate::sinks::SinkConfig;

fn config(sink: &str) -> String {
    super::one_sink("ks", "kinesis_streams", sink)
}

#[test]
fn defaults_and_all_options() {
    let c = load_str(&config("stream = \"my-stream\""), "t.toml", &no_env).unwrap();
    let SinkConfig::Kinesis(k) = &c.sinks[0].inner else {
        panic!("not a kinesis sink: {:?}", c.sinks[0].inner)
    };
    assert_eq!(k.stream, "my-stream");
    assert_eq!(k.flush_interval, std::time::Duration::from_secs(1));
    assert_eq!(k.max_record_retries, 20);
    assert!(k.partition_key.is_none() && !k.aggregation);
    assert!(c.describe().contains("kinesis_streams: my-stream"), "{}", c.describe());

    let text = config(
        r#"stream = "s"
partition_key = "{tag}-{ecs_task_id}"
region = "eu-west-1"
endpoint_url = "http://127.0.0.1:4566"
flush_interval = "250ms"
max_record_retries = 3
aggregation = true"#,
    );
    let c = load_str(&text, "t.toml", &no_env).unwrap();
    let SinkConfig::Kinesis(k) = &c.sinks[0].inner else {
        panic!("not a kinesis sink")
    };
    assert_eq!(k.partition_key.as_deref(), Some("{tag}-{ecs_task_id}"));
    assert_eq!(k.region.as_deref(), Some("eu-west-1"));
    assert_eq!(k.flush_interval, std::time::Duration::from_millis(250));
    assert_eq!(k.max_record_retries, 3);
    assert!(k.aggregation);
}

fn errs(sink: &str) -> Vec<String> {
    match load_str(&config(sink), "t.toml", &no_env) {
        Ok(_) => panic!("expected errors for {sink}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn errors_name_the_key() {
    let e = errs("stream = \"no spaces\"");
    assert!(e[0].contains("`sinks.ks.stream`"), "{e:?}");
    let e = errs(&format!("stream = \"{}\"", "a".repeat(129)));
    assert!(e[0].contains("`sinks.ks.stream`"), "{e:?}");
    let e = errs("stream = \"s\"\npartition_key = \"{unclosed\"");
    assert!(
        e[0].contains("`sinks.ks.partition_key`") && e[0].contains("unclosed"),
        "{e:?}"
    );
    let e = errs("stream = \"s\"\npartition_key = \"\"");
    assert!(e[0].contains("`sinks.ks.partition_key`"), "{e:?}");
    let e = errs("stream = \"s\"\nflush_interval = \"1ms\"");
    assert!(e[0].contains("`sinks.ks.flush_interval`"), "{e:?}");
    let e = errs("stream = \"s\"\ndelivery_stream = \"x\"");
    assert!(e[0].contains("unknown field `delivery_stream`"), "{e:?}");
    let e = errs("region = \"us-east-1\"");
    assert!(e[0].contains("stream"), "{e:?}");
}
