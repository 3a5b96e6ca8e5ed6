//! Kubernetes pod metadata from the downward API, with no API-server access.
//!
//! A sidecar that talked to the API server would need a service account, RBAC and network
//! egress in every pod; the downward API gives the same facts for free through environment
//! variables and a labels file that the pod spec opts into. The object mirrors the
//! `kubernetes` map of Fluent Bit's kubernetes filter, so queries carry over.
//!
//! The labels file is written by the kubelet as `key="value"` lines with Go-quoted values
//! (`strconv.Quote`), so values can carry escaped quotes, backslashes and non-ASCII; a line
//! that does not parse is skipped rather than failing the whole pod.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::{DEFAULT_LABELS_FILE, Detect, EnvLookup, MetadataOptions, Partial, lookup};

/// Labels are at most a few KiB (63-char names, 63-char values); a bigger file is not ours.
const MAX_LABELS_FILE: u64 = 1 << 20;

pub(super) async fn collect(detect: Detect, opts: &MetadataOptions, env: EnvLookup<'_>, deadline: Instant) -> Partial {
    let names = &opts.kubernetes_env;
    let pod_name = lookup(env, &names.pod_name);
    let namespace = lookup(env, &names.namespace);
    let path = opts
        .labels_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LABELS_FILE));

    let read = tokio::task::spawn_blocking(move || read_labels_file(&path));
    let labels = match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(format!("reading the labels file: {join}")),
        Err(_) => Err("reading the labels file took longer than the metadata timeout".to_owned()),
    };

    let file_present = !matches!(labels, Ok(None));
    if pod_name.is_none() && namespace.is_none() && !file_present {
        return Partial::not_present(
            detect,
            format!(
                "neither {} nor {} is set and there is no labels file",
                names.pod_name, names.namespace
            ),
        );
    }

    let mut object = Map::new();
    let members = [
        ("pod_name", pod_name),
        ("namespace_name", namespace),
        ("pod_id", lookup(env, &names.pod_uid)),
        ("host", lookup(env, &names.node_name)),
        ("pod_ip", lookup(env, &names.pod_ip)),
        ("container_name", lookup(env, &names.container_name)),
    ];
    for (member, value) in members {
        if let Some(value) = value {
            object.insert(member.to_owned(), Value::String(value.trim().to_owned()));
        }
    }
    let problem = match labels {
        Ok(Some(labels)) if !labels.is_empty() => {
            object.insert("labels".to_owned(), Value::Object(labels));
            None
        }
        Ok(_) => None,
        Err(why) => Some(why),
    };

    let fields = vec![("kubernetes".to_owned(), Value::Object(object))];
    match problem {
        None => Partial::found(fields),
        Some(why) => Partial::failed(fields, why),
    }
}

/// `Ok(None)` when there is no such file: the pod spec simply did not mount one.
fn read_labels_file(path: &Path) -> Result<Option<Map<String, Value>>, String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open labels file {}: {e}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_LABELS_FILE)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read labels file {}: {e}", path.display()))?;
    Ok(Some(parse_labels(&text)))
}

fn parse_labels(text: &str) -> Map<String, Value> {
    let mut labels = Map::new();
    for line in text.lines() {
        match parse_line(line) {
            Some((key, value)) => {
                labels.insert(key, Value::String(value));
            }
            None if line.trim().is_empty() => {}
            None => tracing::debug!(line, "skipping malformed line in the labels file"),
        }
    }
    labels
}

/// Label keys cannot contain `=` or `"`, so the first `=` separates key from value.
fn parse_line(line: &str) -> Option<(String, String)> {
    let (key, value) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.contains('"') {
        return None;
    }
    Some((key.to_owned(), go_unquote(value.trim())?))
}

/// The inverse of Go's `strconv.Quote` (double-quoted strings only).
fn go_unquote(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return None,
            '\\' => match chars.next()? {
                'a' => out.push(0x07),
                'b' => out.push(0x08),
                'f' => out.push(0x0c),
                'n' => out.push(b'\n'),
                'r' => out.push(b'\r'),
                't' => out.push(b'\t'),
                'v' => out.push(0x0b),
                '\\' => out.push(b'\\'),
                '"' => out.push(b'"'),
                'x' => out.push(u8::try_from(hex(&mut chars, 2)?).ok()?),
                'u' => push_char(&mut out, char::from_u32(hex(&mut chars, 4)?)?),
                'U' => push_char(&mut out, char::from_u32(hex(&mut chars, 8)?)?),
                first @ '0'..='7' => {
                    let mut value = first.to_digit(8)?;
                    for _ in 0..2 {
                        value = value * 8 + chars.next()?.to_digit(8)?;
                    }
                    out.push(u8::try_from(value).ok()?);
                }
                _ => return None,
            },
            c => push_char(&mut out, c),
        }
    }
    // `\x` and octal escapes produce raw bytes, so validity is only known at the end.
    String::from_utf8(out).ok()
}

fn hex(chars: &mut std::str::Chars<'_>, digits: usize) -> Option<u32> {
    let mut value = 0u32;
    for _ in 0..digits {
        value = value * 16 + chars.next()?.to_digit(16)?;
    }
    Some(value)
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use serde_json::json;

    use super::super::{KubernetesEnv, Outcome};
    use super::*;

    fn opts_with_labels(path: Option<PathBuf>) -> MetadataOptions {
        MetadataOptions {
            labels_file: path,
            ..MetadataOptions::default()
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Sync + use<> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |name: &str| map.get(name).cloned()
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(2)
    }

    fn temp_labels(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let path = dir.path().join("labels");
        if let Err(e) = std::fs::write(&path, text) {
            panic!("write labels: {e}");
        }
        (dir, path)
    }

    #[tokio::test]
    async fn env_and_labels_file_make_the_exact_object() {
        let (_dir, path) = temp_labels(concat!(
            "app=\"web\"\n",
            "app.kubernetes.io/name=\"x\\\"y\"\n",
            "pod-template-hash=\"7d4b9c8f6d\"\n",
            "path=\"C:\\\\logs\\tand\\u00e9\\x41\\101\"\n",
            "this line is malformed\n",
            "broken=\"unterminated\n",
            "=\"no key\"\n",
            "\n",
        ));
        let env = env_of(&[
            ("POD_NAME", "web-7d4b9c8f6d-x2x9z"),
            ("POD_NAMESPACE", "shop"),
            ("POD_UID", "5f1c3a8e-1b2c-4d5e-8f9a-0b1c2d3e4f5a"),
            ("NODE_NAME", "ip-10-0-1-23.us-west-2.compute.internal"),
            ("POD_IP", "10.0.1.57"),
            ("CONTAINER_NAME", "web"),
        ]);
        let got = collect(Detect::Auto, &opts_with_labels(Some(path)), &env, deadline()).await;
        assert_eq!(got.outcome, Some(Outcome::Found));
        assert_eq!(
            got.fields,
            vec![(
                "kubernetes".to_owned(),
                json!({
                    "pod_name": "web-7d4b9c8f6d-x2x9z",
                    "namespace_name": "shop",
                    "pod_id": "5f1c3a8e-1b2c-4d5e-8f9a-0b1c2d3e4f5a",
                    "host": "ip-10-0-1-23.us-west-2.compute.internal",
                    "pod_ip": "10.0.1.57",
                    "container_name": "web",
                    "labels": {
                        "app": "web",
                        "app.kubernetes.io/name": "x\"y",
                        "pod-template-hash": "7d4b9c8f6d",
                        "path": "C:\\logs\tandéAA",
                    },
                })
            )]
        );
    }

    #[tokio::test]
    async fn custom_variable_names_are_honoured() {
        let mut opts = opts_with_labels(Some(PathBuf::from("/nonexistent/labels")));
        opts.kubernetes_env = KubernetesEnv {
            pod_name: "MY_POD".into(),
            ..KubernetesEnv::default()
        };
        let env = env_of(&[("MY_POD", "p"), ("POD_NAME", "ignored")]);
        let got = collect(Detect::Auto, &opts, &env, deadline()).await;
        assert_eq!(got.fields, vec![("kubernetes".to_owned(), json!({"pod_name": "p"}))]);
    }

    #[tokio::test]
    async fn labels_file_alone_means_kubernetes() {
        let (_dir, path) = temp_labels("team=\"core\"\n");
        let got = collect(Detect::Auto, &opts_with_labels(Some(path)), &env_of(&[]), deadline()).await;
        assert_eq!(got.outcome, Some(Outcome::Found));
        assert_eq!(
            got.fields,
            vec![("kubernetes".to_owned(), json!({"labels": {"team": "core"}}))]
        );
    }

    #[tokio::test]
    async fn nothing_set_is_absent_or_failed_by_mode() {
        let opts = opts_with_labels(Some(PathBuf::from("/nonexistent/labels")));
        let env = env_of(&[("POD_UID", "only-uid-is-not-enough"), ("POD_NAME", "  ")]);
        let auto = collect(Detect::Auto, &opts, &env, deadline()).await;
        assert_eq!(auto.outcome, Some(Outcome::Absent));
        assert!(auto.fields.is_empty());
        let enabled = collect(Detect::Enabled, &opts, &env, deadline()).await;
        assert!(matches!(enabled.outcome, Some(Outcome::Failed(_))));
        assert!(enabled.fields.is_empty());
    }

    #[tokio::test]
    async fn unreadable_labels_path_keeps_env_members_but_fails() {
        // A directory exists but cannot be read as a file.
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let opts = opts_with_labels(Some(dir.path().to_path_buf()));
        let got = collect(Detect::Auto, &opts, &env_of(&[("POD_NAMESPACE", "ns")]), deadline()).await;
        assert!(matches!(got.outcome, Some(Outcome::Failed(_))), "{got:?}");
        assert_eq!(
            got.fields,
            vec![("kubernetes".to_owned(), json!({"namespace_name": "ns"}))]
        );
    }

    #[test]
    fn go_unquote_matches_strconv() {
        assert_eq!(go_unquote(r#""""#).as_deref(), Some(""));
        assert_eq!(go_unquote(r#""a\"b\\c""#).as_deref(), Some("a\"b\\c"));
        assert_eq!(
            go_unquote(r#""\a\b\f\n\r\t\v""#).as_deref(),
            Some("\x07\x08\x0c\n\r\t\x0b")
        );
        assert_eq!(
            go_unquote(r#""\u263a \U0001F600 \xe2\x98\xba \342\230\272""#).as_deref(),
            Some("☺ 😀 ☺ ☺")
        );
        assert_eq!(go_unquote("\"日本\"").as_deref(), Some("日本"));
        for bad in [
            r#"""#,
            r#"abc"#,
            r#""a"b""#,
            r#""\q""#,
            r#""\x4""#,
            r#""\777""#,
            r#""\xff""#,
            r#""\"#,
            r#""\uD800""#,
        ] {
            assert_eq!(go_unquote(bad), None, "{bad}");
        }
    }

    #[test]
    fn parse_line_splits_on_the_first_equals() {
        assert_eq!(parse_line(r#"k="a=b""#), Some(("k".to_owned(), "a=b".to_owned())));
        assert_eq!(parse_line("k=unquoted"), None);
        assert_eq!(parse_line(r#""k"="v""#), None);
    }
}
