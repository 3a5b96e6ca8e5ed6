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
    let d = Dir::new(&[("fluent-bit.conf", &cw("    metric_namespace app\n    Retry_Limit 5\n"))]);
    let e = d.errors();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains(":11:5: `metric_namespace` of [OUTPUT] cloudwatch_logs is not supported"),
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
        ("/logs/$TAG[x]/%Y/x", "`[x]` is not a tag part"),
        ("/logs/$UUID/x", "`$UUID` is supported only in the object name"),
    ] {
        let text =
            format!("{FORWARD}[OUTPUT]\n    Name s3\n    Match *\n    bucket b-logs\n    s3_key_format {format}\n");
        let d = Dir::new(&[("fluent-bit.conf", &text)]);
        let e = d.errors();
        assert!(e[0].contains(":9:5: ") && e[0].contains(msg), "{e:?}");
    }
}

/// The FireLens user file of the issue: a `parser` filter with its
/// Parsers_File (an Onigmo regex with a time, and JSON).
const PARSERS: &str = "[PARSER]\n    Name access\n    Format regex\n    Regex ^(?<host>[^ ]+) \\[(?<time>[^\\]]+)\\] (?<msg>.*)$\n    Time_Key time\n    Time_Format %d/%b/%Y:%H:%M:%S %z\n    Types msg:string\n\n[PARSER]\n    Name app_json\n    Format json\n    Time_Key ts\n    Time_Format %Y-%m-%dT%H:%M:%S.%L%z\n    Time_Keep On\n\n[PARSER]\n    Name unused_ltsv\n    Format ltsv\n    Decode_Field_As escaped log\n";

fn with_parser_filter(filter: &str) -> String {
    format!(
        "[SERVICE]\n    Parsers_File parsers.conf\n{FORWARD}[FILTER]\n    Name parser\n    Match *\n{filter}[OUTPUT]\n    Name stdout\n    Match *\n"
    )
}

#[test]
fn parser_filter_with_parsers_file_becomes_parse_transforms() {
    use crate::transforms::parse::ParseKind;
    let conf = with_parser_filter("    Key_Name log\n    Parser access\n    Parser app_json\n    Reserve_Data On\n");
    let d = Dir::new(&[("fluent-bit.conf", &conf), ("parsers.conf", PARSERS)]);
    let c = d.load().unwrap();
    let ids: Vec<&str> = c.config.transforms.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        ["filter1_parser"],
        "one transform, its parsers tried in order: {}",
        c.toml
    );
    let TransformConfig::Parse(a) = &c.config.transforms[0].inner else {
        panic!("{}", c.toml)
    };
    assert_eq!(a.parser, ParseKind::Regex);
    assert_eq!(a.field, "log");
    assert!(a.reserve_data && !a.keep_original && !a.keep_time_key);
    assert_eq!(a.time_key.as_deref(), Some("time"));
    let pattern = a.pattern.as_deref().unwrap();
    assert!(pattern.starts_with("^(?P<host>"), "{pattern}");
    let b = &a.fallback[0];
    assert_eq!(a.fallback.len(), 1);
    assert_eq!(b.parser, ParseKind::Json);
    assert_eq!(b.time_format, "%Y-%m-%dT%H:%M:%S%.f%z");
    assert!(b.keep_time_key);
    assert!(
        c.notes.iter().any(|n| n.contains("parsers.conf:7: Types")),
        "{:?}",
        c.notes
    );
    // Runs: the regex parser turns a line into fields with its time.
    let mut r = crate::transforms::parse::Reparser::new((**a).clone()).unwrap();
    let mut out = Vec::new();
    let rec = br#"{"@timestamp":"x","log":"10.1.2.3 [25/Nov/2026:21:15:47 +0000] GET /","container_name":"app"}"#;
    let (ts, _) = r.rewrite(rec, 0, &mut out).unwrap();
    assert_eq!(ts, 1_795_641_347_000);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"@timestamp": "2026-11-25T21:15:47.000Z", "container_name": "app", "host": "10.1.2.3", "msg": "GET /"})
    );
    // A line only the second parser reads: read by it, with its own time
    // key kept (Time_Keep On), not counted as a failure of the first.
    out.clear();
    let rec = br#"{"log":"{\"ts\":\"2026-11-25T21:15:47.250+0000\",\"level\":\"warn\"}","container_name":"app"}"#;
    let (ts, _) = r.rewrite(rec, 0, &mut out).unwrap();
    assert_eq!(ts, 1_795_641_347_250);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["level"], "warn");
    assert_eq!(v["ts"], "2026-11-25T21:15:47.250+0000");
    assert_eq!(v["container_name"], "app");
    // Neither reads it: passed unchanged, one failure.
    out.clear();
    let rec = br#"{"log":"plain text","container_name":"app"}"#;
    assert_eq!(
        r.rewrite(rec, 0, &mut out),
        Err(crate::transforms::parse::Unparsed::Failed)
    );
    assert!(out.is_empty());
}

#[test]
fn parser_errors_name_the_line_in_either_file() {
    let f = |filter: &str, parsers: &str| {
        Dir::new(&[
            ("fluent-bit.conf", &with_parser_filter(filter)),
            ("parsers.conf", parsers),
        ])
        .errors()
    };
    let e = f("    Key_Name log\n    Parser nope\n", PARSERS);
    assert!(
        e[0].contains("fluent-bit.conf:11:5: parser `nope` is not defined"),
        "{e:?}"
    );
    let e = f("    Key_Name log\n    Parser unused_ltsv\n", PARSERS);
    assert!(
        e[0].contains("parsers.conf:18:5: [PARSER] unused_ltsv: Format `ltsv` is not supported"),
        "{e:?}"
    );
    // Onigmo-only syntax (look-behind) is refused at its line.
    let e = f(
        "    Key_Name log\n    Parser p\n",
        "[PARSER]\n    Name p\n    Format regex\n    Regex ^(?<a>\\w+)(?<=x)$\n",
    );
    assert!(
        e[0].contains("parsers.conf:4:5: [PARSER] p: `^(?<a>\\w+)(?<=x)$` is not a regular expression"),
        "{e:?}"
    );
    let e = f("    Parser access\n", PARSERS);
    assert!(e[0].contains(":7:1: parser filter needs `Key_Name`"), "{e:?}");
    let e = f("    Key_Name log\n    Parser access\n", "[OUTPUT]\n    Name stdout\n");
    assert!(
        e[0].contains("parsers.conf:1:1: section [OUTPUT] in a Parsers_File"),
        "{e:?}"
    );
    let d = Dir::new(&[(
        "fluent-bit.conf",
        &with_parser_filter("    Key_Name log\n    Parser access\n"),
    )]);
    let e = d.errors();
    assert!(
        e[0].contains("fluent-bit.conf:2:5: cannot read Fluent Bit config"),
        "{e:?}"
    );
    // Errors in a later Parser's section name its line too.
    let e = f("    Key_Name log\n    Parser access\n    Parser unused_ltsv\n", PARSERS);
    assert!(e[0].contains("parsers.conf:18:5: [PARSER] unused_ltsv"), "{e:?}");
}

#[test]
fn tag_parts_map_in_s3_keys_and_cloudwatch_streams() {
    let text = format!(
        "{FORWARD}[OUTPUT]\n    Name s3\n    Match *\n    bucket b-logs\n    s3_key_format /logs/$TAG[1]/$TAG/%Y/$UUID.gz\n[OUTPUT]\n    Name cloudwatch\n    Match *\n    log_group_name /g/$(tag[0])\n    log_stream_name $(tag[2])-$(tag)\n    region eu-west-1\n"
    );
    let d = Dir::new(&[("fluent-bit.conf", &text)]);
    let c = d.load().unwrap();
    let SinkConfig::S3(s3) = &c.config.sinks[0].inner else {
        panic!()
    };
    assert_eq!(s3.key_prefix, "logs/{tag[1]}/{tag}/%Y/");
    let SinkConfig::CloudWatchLogs(cw) = &c.config.sinks[1].inner else {
        panic!()
    };
    assert_eq!(cw.log_group, "/g/{tag[0]}");
    assert_eq!(cw.log_stream, "{tag[2]}-{tag}");
}

#[test]
fn retry_limit_bounds_firehose_and_is_a_note_elsewhere() {
    let text = format!(
        "{FORWARD}[OUTPUT]\n    Name firehose\n    Match *\n    delivery_stream s\n    Retry_Limit 3\n    region eu-west-1\n[OUTPUT]\n    Name firehose\n    Match *\n    delivery_stream t\n    Retry_Limit False\n    region eu-west-1\n"
    );
    let d = Dir::new(&[(
        "fluent-bit.conf",
        &cw("    Retry_Limit 2\n").replace("[OUTPUT]", &format!("{}[OUTPUT]", &text[FORWARD.len()..])),
    )]);
    let c = d.load().unwrap();
    let retries: Vec<u32> = c
        .config
        .sinks
        .iter()
        .filter_map(|s| match &s.inner {
            SinkConfig::Firehose(f) => Some(f.max_record_retries),
            _ => None,
        })
        .collect();
    assert_eq!(retries, [3, 0]);
    assert!(
        c.notes
            .iter()
            .any(|n| n.contains("Retry_Limit of [OUTPUT] cloudwatch_logs: Logferry retries until delivered")),
        "{:?}",
        c.notes
    );
    let d = Dir::new(&[("fluent-bit.conf", &cw("    Retry_Limit often\n"))]);
    assert!(d.errors()[0].contains(":11:5: Retry_Limit `often` is not a number"));
}

/// FB `log_key` and `log_format json/emf` load as the sinks' own keys.
#[test]
fn log_key_and_log_format_map_to_the_sink_keys() {
    let d = Dir::new(&[(
        "fluent-bit.conf",
        &cw(
            "    log_key log\n    log_format json/emf\n[OUTPUT]\n    Name s3\n    Match *\n    bucket b-logs\n    log_key message\n",
        ),
    )]);
    let c = d.load().unwrap();
    let mut seen = 0;
    for sink in &c.config.sinks {
        match &sink.inner {
            SinkConfig::CloudWatchLogs(x) => {
                assert_eq!(x.log_key.as_deref(), Some("log"));
                assert_eq!(x.log_format.as_deref(), Some("json/emf"));
                seen += 1;
            }
            SinkConfig::S3(x) => {
                assert_eq!(x.log_key.as_deref(), Some("message"));
                seen += 1;
            }
            _ => {}
        }
    }
    assert_eq!(seen, 2, "{:?}", c.toml);
    let d = Dir::new(&[("fluent-bit.conf", &cw("    log_format plain\n"))]);
    assert!(d.errors()[0].contains(":11:5: log_format `plain` is not supported"));
}

#[test]
fn the_health_check_input_is_kept_and_healthz_is_on_by_default() {
    let text = format!(
        "{FORWARD}[INPUT]\n    Name tcp\n    Tag firelens-healthcheck\n    Listen 127.0.0.1\n    Port 8877\n[OUTPUT]\n    Name null\n    Match firelens-healthcheck\n[OUTPUT]\n    Name stdout\n    Match *\n"
    );
    let d = Dir::new(&[("fluent-bit.conf", &text)]);
    let c = d.load().unwrap();
    let api = c.config.api.unwrap();
    assert_eq!(api.address.to_string(), "127.0.0.1:2020");
    assert_eq!(api.health_tcp.unwrap().to_string(), "127.0.0.1:8877");
    assert_eq!(c.config.sinks.len(), 1, "{}", c.toml);
    // Another tcp input is still refused.
    let d = Dir::new(&[("fluent-bit.conf", "[INPUT]\n    Name tcp\n    Port 5170\n")]);
    assert!(d.errors()[0].contains(":1:1: input plugin `tcp` is not supported"));
}

#[test]
fn several_parsers_files_each_relative_to_the_file_naming_it() {
    let d = Dir::new(&[
        (
            "fluent-bit.conf",
            &format!(
                "[SERVICE]\n    Parsers_File parsers.conf\n{FORWARD}@INCLUDE user/extra.conf\n[OUTPUT]\n    Name stdout\n    Match *\n"
            ),
        ),
        ("parsers.conf", PARSERS),
        (
            "user/extra.conf",
            "[SERVICE]\n    parsers_file mine.conf\n[FILTER]\n    Name parser\n    Match *\n    Key_Name $kubernetes['raw']\n    Parser kv\n    Parser access\n",
        ),
        ("user/mine.conf", "[PARSER]\n    Name kv\n    Format logfmt\n"),
    ]);
    let c = d.load().unwrap();
    let kinds: Vec<(String, crate::transforms::parse::ParseKind)> = c
        .config
        .transforms
        .iter()
        .filter_map(|t| match &t.inner {
            TransformConfig::Parse(p) => Some(
                std::iter::once((p.field.clone(), p.parser))
                    .chain(p.fallback.iter().map(|f| (p.field.clone(), f.parser)))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    use crate::transforms::parse::ParseKind::{Logfmt, Regex};
    assert_eq!(
        kinds,
        [("kubernetes.raw".into(), Logfmt), ("kubernetes.raw".into(), Regex)]
    );
    // `user/mine.conf` does not exist next to the main file: only the
    // including file's directory finds it.
    assert!(!d.path("mine.conf").exists());
}

/// Issue 14 item 5: each output's records carry the time key Fluent
/// Bit's output writes, and nothing else.
#[test]
fn each_output_gets_fluent_bits_time_key() {
    let text = format!(
        "{FORWARD}[OUTPUT]\n    Name cloudwatch\n    Match a\n    log_group_name g\n    log_stream_name s\n\
         [OUTPUT]\n    Name firehose\n    Match b\n    delivery_stream d\n\
         [OUTPUT]\n    Name kinesis_firehose\n    Match c\n    delivery_stream d\n    time_key event_time\n    time_key_format %s\n\
         [OUTPUT]\n    Name s3\n    Match d\n    bucket b-logs\n\
         [OUTPUT]\n    Name s3\n    Match e\n    bucket b-logs\n    json_date_key ts\n\
         [OUTPUT]\n    Name s3\n    Match f\n    bucket b-logs\n    json_date_key false\n\
         [OUTPUT]\n    Name stdout\n    Match g\n"
    );
    let d = Dir::new(&[("fluent-bit.conf", &text)]);
    let c = d.load().unwrap();
    let keys: Vec<Option<String>> = c
        .config
        .sinks
        .iter()
        .map(|s| match &s.inner {
            SinkConfig::CloudWatchLogs(x) => x.timestamp_key.clone(),
            SinkConfig::Firehose(x) => x.timestamp_key.clone(),
            SinkConfig::S3(x) => x.timestamp_key.clone(),
            SinkConfig::Stdout(x) => x.timestamp_key.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    let some = |k: &str| Some(k.to_string());
    assert_eq!(
        keys,
        [
            some(""),
            some(""),
            some("event_time"),
            some("date"),
            some("ts"),
            some(""),
            None
        ]
    );
    assert!(
        c.notes
            .iter()
            .any(|n| n.contains("time_key_format") && n.contains("no effect")),
        "{:?}",
        c.notes
    );
}

#[test]
fn multiline_partial_message_maps_to_the_transform() {
    let text = format!(
        "{FORWARD}[FILTER]\n    Name multiline\n    Match *\n    multiline.key_content log\n    Mode partial_message\n    flush_ms 500\n    Buffer On\n[OUTPUT]\n    Name stdout\n    Match *\n"
    );
    let c = Dir::new(&[("fluent-bit.conf", &text)]).load().unwrap();
    let t = c
        .config
        .transforms
        .iter()
        .find(|t| t.id == "filter1_multiline")
        .unwrap();
    let TransformConfig::PartialMessage(p) = &t.inner else {
        panic!("{}", c.toml)
    };
    assert_eq!(
        (p.key.as_str(), p.flush_timeout),
        ("log", std::time::Duration::from_millis(500))
    );
    assert_eq!(
        p.max_size,
        crate::transforms::partial_message::PartialMessageConfig::default().max_size
    );
    assert!(c.notes.iter().any(|n| n.contains("`Buffer`")), "{:?}", c.notes);
    for (extra, says) in [
        (
            "    Mode parser\n    multiline.parser go\n",
            ":8:5: multiline: Mode `parser` is not supported",
        ),
        (
            "    multiline.parser go\n",
            ":5:1: multiline: only `Mode partial_message` is supported",
        ),
        (
            "    Mode partial_message\n    flush_ms soon\n",
            ":9:5: multiline: flush_ms `soon`",
        ),
    ] {
        let text = format!(
            "{FORWARD}[FILTER]\n    Name multiline\n    Match *\n{extra}[OUTPUT]\n    Name stdout\n    Match *\n"
        );
        let e = Dir::new(&[("fluent-bit.conf", &text)]).errors();
        assert!(e.iter().any(|e| e.contains(says)), "{says}: {e:?}");
    }
}

#[test]
fn kinesis_streams_maps_to_the_kinesis_sink() {
    let text = format!(
        "[SERVICE]\n    Flush 2\n{FORWARD}[OUTPUT]\n    Name kinesis_streams\n    Match *\n    region us-east-1\n    stream app-logs\n    partition_key kubernetes->pod_name\n    endpoint http://127.0.0.1:4566\n    auto_retry_requests true\n    log_key log\n    time_key ts\n    time_key_format %s\n"
    );
    let d = Dir::new(&[("fluent-bit.conf", &text)]);
    let c = d.load().unwrap();
    let SinkConfig::Kinesis(k) = &c.config.sinks[0].inner else {
        panic!("{:?}", c.config.sinks)
    };
    assert_eq!(k.stream, "app-logs");
    assert_eq!(k.partition_key.as_deref(), Some("{kubernetes.pod_name}"));
    assert_eq!(k.region.as_deref(), Some("us-east-1"));
    assert_eq!(k.endpoint_url.as_deref(), Some("http://127.0.0.1:4566"));
    assert_eq!(k.flush_interval, std::time::Duration::from_secs(2));
    assert!(!k.aggregation);
    // As Fluent Bit's kinesis_streams: `log_key`'s value alone, and a time
    // key only when `time_key` is set.
    assert_eq!(k.log_key.as_deref(), Some("log"));
    assert_eq!(k.timestamp_key.as_deref(), Some("ts"));
    assert!(
        c.notes.iter().any(|n| n.contains("auto_retry_requests")),
        "{:?}",
        c.notes
    );

    // Without partition_key: random keys.
    let text = format!("{FORWARD}[OUTPUT]\n    Name kinesis_streams\n    Match *\n    stream s\n");
    let c = Dir::new(&[("fluent-bit.conf", &text)]).load().unwrap();
    let SinkConfig::Kinesis(k) = &c.config.sinks[0].inner else {
        panic!("{:?}", c.config.sinks)
    };
    assert!(k.partition_key.is_none());
    assert_eq!(k.timestamp_key.as_deref(), Some(""));
    assert!(k.log_key.is_none());
}

#[test]
fn kinesis_streams_keys_that_do_not_map_are_errors() {
    for (extra, msg) in [
        ("    region us-east-1\n", "kinesis_streams needs `stream`"),
        (
            "    stream s\n    role_arn arn:aws:iam::1:role/x\n",
            "`role_arn` of [OUTPUT] kinesis_streams is not supported",
        ),
        (
            "    stream s\n    partition_key a b\n",
            "partition_key `a b` is not a record key",
        ),
        ("    stream no/slash\n", "not a valid stream name"),
    ] {
        let text = format!("{FORWARD}[OUTPUT]\n    Name kinesis_streams\n    Match *\n{extra}");
        let d = Dir::new(&[("fluent-bit.conf", &text)]);
        let e = d.errors();
        assert!(e.iter().any(|e| e.contains(msg)), "{extra}: {e:?}");
    }
}

#[test]
fn http_output_maps_to_the_http_sink() {
    let text = format!(
        "[SERVICE]\n    Flush 2\n{FORWARD}[OUTPUT]\n    Name http\n    Match *\n    Host logs.example.com\n    Port 8443\n    URI /v1/ingest?src=ecs\n    tls On\n    tls.ca_file /etc/ca.pem\n    Format json_lines\n    Header X-API-Key abc def\n    Header X-Source ecs\n    http_User ingest\n    http_Passwd s3cret\n    compress gzip\n    json_date_key ts\n    Retry_Limit 5\n"
    );
    let c = Dir::new(&[("fluent-bit.conf", &text)]).load().unwrap();
    let SinkConfig::Http(h) = &c.config.sinks[0].inner else {
        panic!("{:?}", c.config.sinks)
    };
    assert_eq!(h.uri, "https://logs.example.com:8443/v1/ingest?src=ecs");
    assert_eq!(h.encoding, crate::sinks::http::HttpEncoding::Ndjson);
    assert_eq!(h.compression, crate::sinks::http::HttpCompression::Gzip);
    assert_eq!(h.headers["X-API-Key"].expose(), "abc def");
    assert_eq!(h.headers["X-Source"].expose(), "ecs");
    assert!(
        matches!(&h.auth, Some(crate::sinks::http::HttpAuth::Basic { user, password })
        if user == "ingest" && password.expose() == "s3cret")
    );
    assert_eq!(h.tls.ca_file.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
    assert_eq!(h.flush_interval, std::time::Duration::from_secs(2));
    assert_eq!(h.timestamp_key.as_deref(), Some("ts"));
    assert!(c.notes.iter().any(|n| n.contains("Retry_Limit")), "{:?}", c.notes);
    // The secrets are not in the mapping table `validate` prints.
    assert!(
        !c.mapping.iter().any(|m| m.contains("s3cret") || m.contains("abc def")),
        "{:?}",
        c.mapping
    );

    // Fluent Bit's defaults: 127.0.0.1:80, `/`, `date`, JSON array for `json`.
    let text = format!("{FORWARD}[OUTPUT]\n    Name http\n    Match *\n    Format json\n");
    let c = Dir::new(&[("fluent-bit.conf", &text)]).load().unwrap();
    let SinkConfig::Http(h) = &c.config.sinks[0].inner else {
        panic!()
    };
    assert_eq!(h.uri, "http://127.0.0.1:80/");
    assert_eq!(h.encoding, crate::sinks::http::HttpEncoding::JsonArray);
    assert_eq!(h.timestamp_key.as_deref(), Some("date"));
}

#[test]
fn loki_output_maps_to_the_http_sink_with_loki_framing() {
    let text = format!(
        "{FORWARD}[OUTPUT]\n    Name loki\n    Match *\n    Host loki.internal\n    Labels job=ecs, level=$level, $kubernetes['namespace_name']\n    Label_keys $container_name\n    tenant_id team-a\n    log_key log\n"
    );
    let c = Dir::new(&[("fluent-bit.conf", &text)]).load().unwrap();
    let SinkConfig::Http(h) = &c.config.sinks[0].inner else {
        panic!("{:?}", c.config.sinks)
    };
    assert_eq!(h.uri, "http://loki.internal:3100/loki/api/v1/push");
    assert_eq!(h.framing, crate::sinks::http::Framing::Loki);
    let labels: Vec<(&str, &str)> = h.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        labels,
        [
            ("container_name", "{container_name}"),
            ("job", "ecs"),
            ("level", "{level}"),
            ("namespace_name", "{kubernetes.namespace_name}")
        ]
    );
    assert_eq!(h.headers["X-Scope-OrgID"].expose(), "team-a");
    assert_eq!(h.log_key.as_deref(), Some("log"));
    assert_eq!(h.timestamp_key.as_deref(), Some(""));

    // No labels: Fluent Bit's `job=fluent-bit`.
    let text = format!("{FORWARD}[OUTPUT]\n    Name loki\n    Match *\n    tls on\n    bearer_token t0k\n");
    let c = Dir::new(&[("fluent-bit.conf", &text)]).load().unwrap();
    let SinkConfig::Http(h) = &c.config.sinks[0].inner else {
        panic!()
    };
    assert_eq!(h.labels["job"], "fluent-bit");
    assert_eq!(h.uri, "https://127.0.0.1:3100/loki/api/v1/push");
    assert!(matches!(&h.auth, Some(crate::sinks::http::HttpAuth::Bearer { token }) if token.expose() == "t0k"));
}

#[test]
fn http_and_loki_keys_that_do_not_map_are_errors() {
    for (name, extra, msg) in [
        ("http", "", "needs `Format json` or `Format json_lines`"),
        ("http", "    Format msgpack\n", "Format `msgpack` is not supported"),
        (
            "http",
            "    Format json\n    Header Lonely\n",
            "Header `Lonely` is not `Name value`",
        ),
        (
            "http",
            "    Format json\n    Port http\n",
            "Port `http` is not a port number",
        ),
        (
            "http",
            "    Format json\n    compress zstd\n",
            "compress `zstd` is not supported",
        ),
        (
            "http",
            "    Format json\n    body_key $log\n",
            "`body_key` of [OUTPUT] http is not supported",
        ),
        (
            "http",
            "    Format json\n    http_Passwd x\n",
            "http_Passwd without http_User",
        ),
        ("loki", "    line_format key_value\n", "line_format `key_value`"),
        ("loki", "    Labels x=$a['b\n", "label `x=$a['b` of [OUTPUT] loki"),
        (
            "loki",
            "    remove_keys a\n",
            "`remove_keys` of [OUTPUT] loki is not supported",
        ),
        ("loki", "    Labels 9x=a\n", "label name"),
    ] {
        let text = format!("{FORWARD}[OUTPUT]\n    Name {name}\n    Match *\n{extra}");
        let e = Dir::new(&[("fluent-bit.conf", &text)]).errors();
        assert!(e.iter().any(|e| e.contains(msg)), "{name} {extra}: {e:?}");
    }
}
