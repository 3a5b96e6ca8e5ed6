//! Transforms through the real binary.

mod common;

use common::*;

#[test]
fn filter_keeps_matching_records_counts_the_rest_and_the_checkpoint_passes_them() {
    let env = Env::new();
    let levels = ["debug", "info", "warn", "error"];
    let mut text = String::new();
    for i in 0..4000 {
        text.push_str(&format!("{{\"id\":{i},\"level\":\"{}\"}}\n", levels[i % 4]));
    }
    std::fs::write(env.logs().join("app.log"), &text).unwrap();
    let cfg = env.write_config(&format!(
        r#"
[global]
data_dir = "{data}"

[sources.app]
type = "file"
include = ["{logs}/*.log"]

[transforms.important]
type = "filter"
inputs = ["app"]
conditions = [{{ field = "level", level_at_least = "warn" }}]

[sinks.out]
type = "file"
inputs = ["important"]
path = "{out}"
key_prefix = "x/"
compression = "none"
"#,
        data = env.path("data").display(),
        logs = env.logs().display(),
        out = env.path("out").display(),
    ));
    let out = run_to_eof(&cfg, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records = env.records();
    assert_eq!(records.len(), 2000);
    assert!(records.iter().all(|r| r["level"] == "warn" || r["level"] == "error"));
    let counts = id_counts(&records);
    assert!((0..4000u64).filter(|i| i % 4 >= 2).all(|i| counts.get(&i) == Some(&1)));
    // Dropped records are behind the checkpoint too: a second run reads nothing.
    let size = text.len() as u64;
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("data/checkpoints/app.json")).unwrap()).unwrap();
    assert_eq!(saved["files"][0]["offset"], size);
    let (_, stdout, _) = validate_config(&cfg);
    assert!(
        stdout.contains("transform important (filter: keep records matching all of 1 condition(s)) <- app"),
        "{stdout}"
    );
}

#[test]
fn a_filter_condition_with_two_tests_is_a_config_error() {
    let env = Env::new();
    let cfg = env.config(
        "*.log",
        "",
        "\n[transforms.f]\ntype = \"filter\"\ninputs = [\"app\"]\nconditions = [{ field = \"a\", equals = \"x\", exists = true }]\n",
    );
    let (code, _, stderr) = validate_config(&cfg);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("`transforms.f.conditions[0]`: needs exactly one of equals, regex, exists, level_at_least"),
        "{stderr}"
    );
}
