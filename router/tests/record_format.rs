//! `log_key` and `timestamp_key` through the real binary: file source ->
//! enrich -> file sinks, bytes compared.

mod common;

use std::io::Read;

use common::{BIN, Env, run_to_eof};

/// Every object under `root` decompressed and concatenated in name order
/// (one file source, one prefix: one object per sink here).
fn raw_output(root: &std::path::Path) -> String {
    let mut all = Vec::new();
    let mut objects = logferry::sinks::file::list_objects(root);
    objects.sort();
    for p in objects {
        let mut raw = Vec::new();
        std::fs::File::open(&p).unwrap().read_to_end(&mut raw).unwrap();
        all.extend(raw);
    }
    String::from_utf8(all).unwrap()
}

fn sink(env: &Env, name: &str, extra: &str) -> String {
    format!(
        r#"
[sinks.{name}]
type = "file"
inputs = ["meta"]
path = "{out}"
key_prefix = "x/"
compression = "none"
flush_interval = "200ms"
{extra}
"#,
        out = env.path(name).display()
    )
}

#[test]
fn log_key_and_timestamp_key_write_what_they_promise() {
    let env = Env::new();
    let lines = [
        r#"{"log":"plain text"}"#,
        r#"{"log":"quote \" backslash \\ tab \t unicode \u00e9 \ud83d\ude00","n":1}"#,
        r#"{"n":2,"msg":"no log field"}"#,
        r#"{"log":{"nested":[1,2,{"a":"b"}]},"n":3}"#,
        r#"{"log":42.5e0}"#,
        r#"{"@timestamp":"2026-11-25T21:15:47.123Z","log":"own stamp"}"#,
        "not json at all \"x\"",
        r#"{"log":"","n":7}"#,
        r#"{"log":null}"#,
        r#"{"time":"mine","log":"has its own time field"}"#,
    ];
    std::fs::write(env.logs().join("app.log"), lines.join("\n") + "\n").unwrap();
    let config = format!(
        r#"
[global]
data_dir = "{data}"

[sources.app]
type = "file"
include = ["{logs}/*.log"]
glob_interval = "100ms"

[transforms.meta]
type = "enrich"
inputs = ["app"]
ecs = false
ec2 = false
kubernetes = false
fields = {{ cluster = "prod" }}
{a}{b}{c}{d}"#,
        data = env.path("data").display(),
        logs = env.logs().display(),
        a = sink(&env, "value", r#"log_key = "log""#),
        b = sink(&env, "whole", ""),
        c = sink(&env, "nots", r#"timestamp_key = """#),
        d = sink(&env, "renamed", r#"timestamp_key = "time""#),
    );
    let out = run_to_eof(&env.write_config(&config), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("log_key_missing") && stderr.contains("log_key=\"log\""),
        "one warning naming the key: {stderr}"
    );

    // Values alone, strings unescaped, enrichment left out; the record
    // without `log` dropped.
    assert_eq!(
        raw_output(&env.path("value")),
        "plain text\n\
         quote \" backslash \\ tab \t unicode é 😀\n\
         {\"nested\":[1,2,{\"a\":\"b\"}]}\n\
         42.5e0\n\
         own stamp\n\
         not json at all \"x\"\n\
         \n\
         null\n\
         has its own time field\n"
    );

    let parse = |name: &str| -> Vec<serde_json::Map<String, serde_json::Value>> {
        raw_output(&env.path(name))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let whole = parse("whole");
    let nots = parse("nots");
    let renamed = parse("renamed");
    assert_eq!(whole.len(), lines.len());
    assert_eq!(nots.len(), lines.len());
    assert_eq!(renamed.len(), lines.len());
    for (i, w) in whole.iter().enumerate() {
        assert_eq!(w["cluster"], "prod", "{w:?}");
        let stamp = w["@timestamp"].clone();
        let mut without = w.clone();
        let own = i == 5;
        if !own {
            without.remove("@timestamp");
        }
        // `timestamp_key = ""`: the added stamp goes, the app's own stays.
        assert_eq!(nots[i], without, "line {i}");
        // `timestamp_key = "time"`: the stamp moves, unless the record has
        // its own `time` (line 9), which wins.
        let mut want = without.clone();
        if !own && i != 9 {
            want.insert("time".into(), stamp);
        }
        assert_eq!(renamed[i], want, "line {i}");
    }
    for (i, line) in raw_output(&env.path("renamed")).lines().enumerate() {
        if i != 5 {
            assert!(line.starts_with(r#"{"time":""#), "still the first member: {line}");
        }
    }
    assert_eq!(renamed[9]["time"], "mine");
    assert_eq!(nots[5]["@timestamp"], "2026-11-25T21:15:47.123Z");
}

#[test]
fn an_empty_log_key_is_a_config_error() {
    let env = Env::new();
    let p = env.config("*.log", "", r#"log_key = """#);
    let out = std::process::Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sinks.out.log_key") && err.contains("must name a field"),
        "{err}"
    );
}
