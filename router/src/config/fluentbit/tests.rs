//! End to end: Fluent Bit files through `load`, the translated TOML and the
//! loaded config, and errors at their `file:line`.

use std::path::PathBuf;

use super::*;
use crate::config::ConfigErrors;
use crate::sinks::SinkConfig;
use crate::transforms::TransformConfig;

fn env(name: &str) -> Option<String> {
    match name {
        "REGION" => Some("eu-west-1".into()),
        "GROUP" => Some("/ecs/from-env".into()),
        _ => None,
    }
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new(files: &[(&str, &str)]) -> Dir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = d.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        Dir(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn load(&self) -> Result<FluentBitConfig, ConfigErrors> {
        load(&self.path("fluent-bit.conf"), &env)
    }

    fn errors(&self) -> Vec<String> {
        match self.load() {
            Ok(c) => panic!("expected errors, got:\n{}", c.toml),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }
}

const FORWARD: &str = "[INPUT]\n    Name forward\n    unix_path /tmp/fluent.sock\n\n";

fn cw(extra: &str) -> String {
    format!(
        "{FORWARD}[OUTPUT]\n    Name cloudwatch_logs\n    Match app-firelens*\n    log_group_name /ecs/web\n    log_stream_prefix app-\n    region eu-west-1\n{extra}"
    )
}

#[test]
fn sections_keys_any_case_and_indent_comments_and_variables() {
    let text = "# generated\n@SET group=/ecs/set\n[input]\nNAME   forward\n\t  UNIX_PATH  /tmp/a.sock\n[Output]\n  name cloudwatch\n  MATCH *\n  Log_Group_Name ${group}\n  log_stream_name ${REGION}-$(tag)\n";
    let d = Dir::new(&[("fluent-bit.conf", text)]);
    let c = d.load().unwrap();
    let SinkConfig::CloudWatchLogs(s) = &c.config.sinks[0].inner else {
        panic!("{:?}", c.config.sinks)
    };
    assert_eq!(s.log_group, "/ecs/set");
    assert_eq!(s.log_stream, "eu-west-1-{tag}");
    // Match * needs no tag filter.
    assert!(c.config.transforms.is_empty());
    assert_eq!(c.config.sinks[0].inputs, vec!["input1_forward".to_string()]);
}

#[test]
fn includes_are_relative_to_the_including_file_and_globs_sorted() {
    let main = format!("{FORWARD}@INCLUDE conf.d/*.conf\n@INCLUDE sub/one.conf\n");
    let d = Dir::new(&[
        ("fluent-bit.conf", &main),
        (
            "conf.d/b.conf",
            "[OUTPUT]\n    Name null\n    Match b\n    Alias second\n",
        ),
        (
            "conf.d/a.conf",
            "[OUTPUT]\n    Name null\n    Match a\n    Alias first\n",
        ),
        ("sub/one.conf", "@INCLUDE two.conf\n"),
        (
            "sub/two.conf",
            "[OUTPUT]\n    Name stdout\n    Match *\n    Alias third\n",
        ),
    ]);
    let c = d.load().unwrap();
    let ids: Vec<&str> = c.config.sinks.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["first", "second", "third"]);
    // Each named output kept only its own tag.
    assert!(c.toml.contains(r#"regex = "^a$$""#), "{}", c.toml);
}

#[test]
fn parse_errors_name_file_and_line() {
    let d = Dir::new(&[(
        "fluent-bit.conf",
        "Name forward\n[INPUT]\n    Name forward\n    unix_path ${NOPE}\n@REQUIRE x\n[PARSER]\n@INCLUDE missing.conf\n",
    )]);
    let e = d.errors();
    let f = d.path("fluent-bit.conf").display().to_string();
    assert!(
        e[0].starts_with(&format!("{f}:1:1: `Name forward` is outside a section")),
        "{e:?}"
    );
    assert!(
        e[1].starts_with(&format!("{f}:4:5: environment variable `NOPE` is not set")),
        "{e:?}"
    );
    assert!(
        e[2].starts_with(&format!("{f}:5:1: unknown directive `@REQUIRE`")),
        "{e:?}"
    );
    assert!(
        e[3].starts_with(&format!("{f}:6:1: section [PARSER] is not supported")),
        "{e:?}"
    );
    assert!(
        e[4].starts_with(&format!("{f}:7:1: cannot read Fluent Bit config")),
        "{e:?}"
    );
    assert_eq!(e.len(), 5, "{e:?}");
}

#[test]
fn include_loops_are_errors() {
    let d = Dir::new(&[
        ("fluent-bit.conf", "@INCLUDE a.conf\n"),
        ("a.conf", "@INCLUDE fluent-bit.conf\n"),
    ]);
    let e = d.errors();
    assert!(e[0].contains("a.conf:1:1: @INCLUDE loop"), "{e:?}");
}

#[test]
fn loader_errors_point_at_the_fluent_bit_line() {
    let d = Dir::new(&[("fluent-bit.conf", &cw("    log_retention_days 31\n"))]);
    let e = d.errors();
    let f = d.path("fluent-bit.conf").display().to_string();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(&format!(
            "{f}:11:5: `sinks.output1_cloudwatch_logs.retention_days`: 31 is not"
        )),
        "{e:?}"
    );
}

#[test]
fn unsupported_plugins_and_keys_are_errors_with_their_line() {
    let d = Dir::new(&[("fluent-bit.conf", &cw("    log_key log\n    Retry_Limit 5\n"))]);
    let e = d.errors();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains(":11:5: `log_key` of [OUTPUT] cloudwatch_logs is not supported"),
        "{e:?}"
    );
    let d = Dir::new(&[("fluent-bit.conf", "[INPUT]\n    Name tail\n    Path /var/log/*.log\n")]);
    let e = d.errors();
    assert!(e[0].contains(":1:1: input plugin `tail` is not supported"), "{e:?}");
    assert!(e[0].contains("forward"), "{e:?}");
    let d = Dir::new(&[(
        "fluent-bit.conf",
        &format!("{FORWARD}[OUTPUT]\n    Name es\n    Match *\n"),
    )]);
    assert!(d.errors()[0].contains(":5:1: output plugin `es` is not supported"));
}

#[test]
fn service_section_maps_onto_global_lifecycle_api_and_flush() {
    let text = format!(
        "[SERVICE]\n    Flush 0.5\n    Grace 12\n    HTTP_Server On\n    storage.path /data/fb\n    Daemon off\n{}",
        cw("")
    );
    let d = Dir::new(&[("fluent-bit.conf", &text)]);
    let c = d.load().unwrap().config;
    assert_eq!(c.lifecycle.drain_timeout, std::time::Duration::from_secs(12));
    assert_eq!(c.api.unwrap().address.to_string(), "0.0.0.0:2020");
    assert_eq!(c.global.data_dir, PathBuf::from("/data/fb"));
    let SinkConfig::CloudWatchLogs(s) = &c.sinks[0].inner else {
        panic!()
    };
    assert_eq!(s.flush_interval, std::time::Duration::from_millis(500));
    let d = Dir::new(&[(
        "fluent-bit.conf",
        &format!(
            "[SERVICE]\n    Grace soon\n    Plugins_File p.conf\n    Colour red\n{}",
            cw("")
        ),
    )]);
    let e = d.errors();
    assert!(e[0].contains(":2:5: Grace `soon` is not a time"), "{e:?}");
    assert!(e[1].contains(":4:5: `Colour` of [SERVICE] is not supported"), "{e:?}");
    assert_eq!(e.len(), 2, "{e:?}");
}

#[test]
fn a_bad_grep_regex_is_one_error_at_its_line() {
    let text = format!(
        "{FORWARD}[FILTER]\n    Name grep\n    Match *\n    Regex log *failure*\n[OUTPUT]\n    Name stdout\n    Match *\n"
    );
    let d = Dir::new(&[("fluent-bit.conf", &text)]);
    let e = d.errors();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains(
            ":8:5: grep: `*failure*` is not a regular expression Logferry reads: repetition operator missing expression"
        ),
        "{e:?}"
    );
}

#[test]
fn a_filter_on_part_of_an_outputs_tags_is_an_error() {
    let text = format!(
        "{FORWARD}[FILTER]\n    Name grep\n    Match app-firelens*\n    Regex log x\n\n[OUTPUT]\n    Name stdout\n    Match *\n"
    );
    let d = Dir::new(&[("fluent-bit.conf", &text)]);
    let e = d.errors();
    assert!(
        e[0].contains(":5:1: this filter (Match app-firelens*) applies to only some"),
        "{e:?}"
    );
    // A disjoint filter is simply not in the chain.
    let text = format!(
        "{FORWARD}[FILTER]\n    Name grep\n    Match web-firelens*\n    Regex log x\n\n[OUTPUT]\n    Name stdout\n    Match app-firelens*\n"
    );
    let d = Dir::new(&[("fluent-bit.conf", &text)]);
    let c = d.load().unwrap();
    assert_eq!(c.config.transforms.len(), 1, "{}", c.toml);
}

#[test]
fn firelens_chain_values_and_dollars_survive() {
    let text = format!(
        "{FORWARD}[INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port 24224\n    Mem_Buf_Limit 5MB\n[INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port 24225\n    Mem_Buf_Limit 3M\n[FILTER]\n    Name grep\n    Match app-firelens*\n    Regex log [Ee]rror\n    Regex $kubernetes['labels']['tier'] ^web$\n    Logical_Op or\n[FILTER]\n    Name record_modifier\n    Match *\n    Record price a$b\n[OUTPUT]\n    Name s3\n    Match app-firelens*\n    bucket b-logs\n    s3_key_format /x/$TAG/%Y/\n    total_file_size 2M\n    upload_timeout 90s\n    endpoint http://127.0.0.1:4566\n"
    );
    let d = Dir::new(&[("fluent-bit.conf", &text)]);
    let c = d.load().unwrap();
    assert_eq!(c.config.global.memory_limit.as_u64(), 8_000_000);
    let ids: Vec<(&str, &Vec<String>)> = c.config.transforms.iter().map(|t| (t.id.as_str(), &t.inputs)).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let TransformConfig::Filter(g) = &c
        .config
        .transforms
        .iter()
        .find(|t| t.id == "filter1_grep")
        .unwrap()
        .inner
    else {
        panic!()
    };
    assert_eq!(g.match_, crate::transforms::condition::Match::Any);
    assert!(c.toml.contains(r#"field = "kubernetes.labels.tier""#), "{}", c.toml);
    assert!(g.conditions[0].regex.as_ref().unwrap().is_match("an Error"));
    let TransformConfig::Enrich(m) = &c
        .config
        .transforms
        .iter()
        .find(|t| t.id == "filter2_record_modifier")
        .unwrap()
        .inner
    else {
        panic!()
    };
    assert_eq!(m.fields["price"], serde_json::json!("a$b"));
    let TransformConfig::Filter(tag) = &c
        .config
        .transforms
        .iter()
        .find(|t| t.id == "output1_s3_match")
        .unwrap()
        .inner
    else {
        panic!()
    };
    let re = tag.conditions[0].regex.as_ref().unwrap();
    assert!(re.is_match("app-firelens-0f9c6a4f") && !re.is_match("xapp-firelens") && !re.is_match("app-firelen"));
    let SinkConfig::S3(s3) = &c.config.sinks[0].inner else {
        panic!()
    };
    assert_eq!(s3.key_prefix, "x/{tag}/%Y/");
    assert_eq!(s3.max_object_size.as_u64(), 2_000_000);
    assert_eq!(s3.flush_interval, std::time::Duration::from_secs(90));
    assert_eq!(s3.compression, crate::sinks::encoding::Compression::None);
    assert!(s3.force_path_style);
    assert_eq!(s3.endpoint_url.as_deref(), Some("http://127.0.0.1:4566"));
}

#[test]
fn s3_key_formats_that_do_not_map_are_errors() {
    for (format, msg) in [
        ("/logs/$TAG[1]/%Y/x", "`$TAG[n]`"),
        ("/logs/$UUID/x", "`$UUID` is supported only in the object name"),
    ] {
        let text =
            format!("{FORWARD}[OUTPUT]\n    Name s3\n    Match *\n    bucket b-logs\n    s3_key_format {format}\n");
        let d = Dir::new(&[("fluent-bit.conf", &text)]);
        let e = d.errors();
        assert!(e[0].contains(":9:5: ") && e[0].contains(msg), "{e:?}");
    }
}
