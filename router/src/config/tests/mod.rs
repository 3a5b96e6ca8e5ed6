//! The loader's tests, and each component's config through the loader
//! (its defaults, and that its errors name the key): components do not
//! import `config`, so whole-config tests live here.

mod buffer;
mod sinks_firehose;
mod sinks_forward;
mod sinks_http;
mod sinks_kinesis;
mod sources_forward;
mod transforms;

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

/// A whole config for one sink's tests: the file source `app` and sink
/// `id` of type `kind`, with `body` as the rest of its table.
fn one_sink(id: &str, kind: &str, body: &str) -> String {
    format!(
        r#"
[sources.app]
type = "file"
include = ["/var/log/app/*.log"]

[sinks.{id}]
type = "{kind}"
inputs = ["app"]
{body}
"#
    )
}

fn errs(text: &str) -> Vec<String> {
    match load_str(text, "t.toml", &no_env) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

const GOOD: &str = r#"
[global]
data_dir = "/tmp/x"
memory_limit = "32MiB"

[sources.app]
type = "file"
include = ["/var/log/app/*.log"]

[transforms.meta]
type = "enrich"
inputs = ["app"]
fields = { region = "${AWS_REGION:-us-east-1}" }

[sinks.out]
type = "blackhole"
inputs = ["meta"]
"#;

#[test]
fn good_config_loads() {
    let c = load_str(GOOD, "t.toml", &no_env).unwrap();
    assert_eq!(c.global.memory_limit.as_u64(), 32 * 1024 * 1024);
    assert_eq!(c.sources.len(), 1);
    assert_eq!(c.sinks[0].inputs, vec!["meta".to_string()]);
    assert!(c.describe().contains("sink out (blackhole) <- meta"));
}

#[test]
fn embedded_default_loads() {
    load_str(EMBEDDED_DEFAULT, "<embedded>", &no_env).unwrap();
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = GOOD.replace("memory_limit = \"32MiB\"", "memory_limit = \"32MiB\"\nbogus = 1");
    let e = errs(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:5:1: `global.bogus`: unknown field `bogus`"),
        "{}",
        e[0]
    );

    let text = GOOD.replace("include = [", "colour = \"red\"\ninclude = [");
    let e = errs(&text);
    assert!(
        e[0].starts_with("t.toml:8:1: `sources.app.colour`: unknown field `colour`"),
        "{}",
        e[0]
    );
}

#[test]
fn bad_size_and_missing_input_and_unknown_type() {
    let text = GOOD
        .replace("\"32MiB\"", "\"32 parsecs\"")
        .replace("inputs = [\"meta\"]", "inputs = [\"nope\"]");
    let e = errs(&text);
    assert!(
        e.iter().any(|m| m.starts_with("t.toml:4:1: `global.memory_limit`")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("t.toml:17:11: `sinks.out.inputs[0]`: unknown input `nope`")),
        "{e:?}"
    );
    let e = errs(&GOOD.replace("type = \"blackhole\"", "type = \"s4\""));
    assert!(
        e.iter()
            .any(|m| m.contains("`sinks.out`") && m.contains("unknown sink type `s4`")),
        "{e:?}"
    );
}

#[test]
fn an_empty_include_entry_is_an_error_at_its_index() {
    let e = errs(&GOOD.replace(
        "include = [\"/var/log/app/*.log\"]",
        "include = [\"/var/log/app/*.log\", \" \"]",
    ));
    assert!(
        e.iter()
            .any(|m| m.contains("`sources.app.include[1]`: is empty: it would match no file")),
        "{e:?}"
    );
}

#[test]
fn unset_variable_is_an_error_at_its_key() {
    let e = errs(&GOOD.replace("${AWS_REGION:-us-east-1}", "${AWS_REGION}"));
    assert!(
        e[0].contains("`transforms.meta.fields.region`") && e[0].contains("AWS_REGION"),
        "{e:?}"
    );
}

#[test]
fn syntax_error_has_a_position() {
    let e = errs("[global\n");
    assert!(e[0].contains("line 1"), "{e:?}");
}

#[test]
fn cycles_and_unused_transforms_are_reported() {
    let text = r#"
[sources.a]
type = "file"
include = ["/x"]
[transforms.t1]
type = "enrich"
inputs = ["t2"]
[transforms.t2]
type = "enrich"
inputs = ["t1"]
[sinks.s]
type = "blackhole"
inputs = ["a"]
"#;
    let e = errs(text);
    assert!(e.iter().any(|m| m.contains("cycle")), "{e:?}");
}

const ROUTED: &str = r#"
[sources.app]
type = "file"
include = ["/x"]
[transforms.r]
type = "route"
inputs = ["app"]
routes.errors = { level_at_least = "error" }
routes.audit = { field = "tag", regex = "^audit" }
[sinks.s3]
type = "blackhole"
inputs = ["app"]
[sinks.cw]
type = "blackhole"
inputs = ["r.errors"]
"#;

#[test]
fn route_outputs_are_inputs_and_bad_ones_name_route_and_output() {
    let c = load_str(ROUTED, "t.toml", &no_env).unwrap();
    assert!(
        c.describe()
            .contains("transform r (route: audit: tag =~ /^audit/; errors: level >= error; else _unmatched) <- app"),
        "{}",
        c.describe()
    );
    load_str(
        &ROUTED.replace("\"r.errors\"", "\"r._unmatched\", \"r.audit\""),
        "t.toml",
        &no_env,
    )
    .unwrap();

    let e = errs(&ROUTED.replace("\"r.errors\"", "\"r.warnings\""));
    assert_eq!(
        e,
        ["t.toml:15:11: `sinks.cw.inputs[0]`: route `r` has no output `warnings` (outputs: audit, errors, _unmatched)"]
    );
    let e = errs(&ROUTED.replace("\"r.errors\"", "\"q.errors\""));
    assert_eq!(
        e,
        [
            "t.toml:15:11: `sinks.cw.inputs[0]`: unknown input `q.errors`: there is no component `q`",
            "t.toml:5:13: `transforms.r`: no sink or transform takes this transform as an input",
        ]
    );
    let e = errs(&ROUTED.replace("\"r.errors\"", "\"app.errors\""));
    assert!(
        e[0].ends_with("`app` is not a route and has no output `errors`; use `app` as the input"),
        "{e:?}"
    );
    let e = errs(&ROUTED.replace("\"r.errors\"", "\"r\""));
    assert_eq!(
        e,
        [
            "t.toml:15:11: `sinks.cw.inputs[0]`: `r` is a route: name one of its outputs, e.g. `r.audit` (outputs: audit, errors, _unmatched)"
        ]
    );
}

#[test]
fn cycles_through_route_outputs_are_found() {
    let text = ROUTED.replace("inputs = [\"app\"]\nroutes", "inputs = [\"app\", \"t\"]\nroutes")
        + "[transforms.t]\ntype = \"filter\"\ninputs = [\"r.audit\"]\nconditions = [{ field = \"a\", exists = true }]\n";
    let e = errs(&text);
    assert!(e.iter().any(|m| m.contains("cycle: r -> t -> r")), "{e:?}");
}
