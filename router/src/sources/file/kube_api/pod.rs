//! What a pod adds to its records: the watch's own decoding types, the
//! annotation filters, the fields, and the annotated parsers.

use std::collections::BTreeMap;
use std::sync::Arc;

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::super::kubernetes::ContainerLog;
use super::KubernetesApiConfig;
use crate::event::{Fields, Records};
use crate::transforms::parse::Reparser;

/// Annotations that say "drop this pod's records" when `"true"`.
const EXCLUDE_ANNOTATIONS: [&str; 2] = ["logferry.io/exclude", "fluentbit.io/exclude"];
/// Annotations naming the parser of a pod's `log` text; the first present wins.
const PARSER_ANNOTATIONS: [&str; 2] = ["logferry.io/parser", "fluentbit.io/parser"];

/// Parses the `log` text of annotated pods' records, as a `parse` transform
/// with `reserve_data = true` would: the parsed fields join the record's
/// others and replace `log`. A record that does not parse passes as it was,
/// counted (`parse_failed`, `parse_field_missing`).
pub struct AnnotatedParsers {
    json: Option<Reparser>,
    logfmt: Option<Reparser>,
    missing: Counter,
    failed: Counter,
    unknown: Counter,
}

impl AnnotatedParsers {
    pub fn new(m: &crate::metrics::ComponentMetrics) -> Self {
        AnnotatedParsers {
            json: None,
            logfmt: None,
            missing: m.line_issue("parse_field_missing"),
            failed: m.line_issue("parse_failed"),
            unknown: m.line_issue("kubernetes_parser_unknown"),
        }
    }

    pub fn apply(&mut self, parser: LogParser, records: Records) -> Records {
        let (slot, name) = match parser {
            LogParser::Json => (&mut self.json, "json"),
            LogParser::Logfmt => (&mut self.logfmt, "logfmt"),
            LogParser::Unknown => {
                self.unknown.inc_by(records.len() as u64);
                return records;
            }
        };
        let reparser = slot.get_or_insert_with(|| {
            let cfg = serde_json::from_value(serde_json::json!({"parser": name, "reserve_data": true}))
                .expect("a built-in parser's config");
            Reparser::new(cfg).expect("a built-in parser")
        });
        reparser.rewrite_all(&records, &self.missing, &self.failed)
    }
}

/// The parser a pod's annotation picks for the `log` text of its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogParser {
    Json,
    Logfmt,
    /// A name this router has no parser for: records pass unparsed, counted
    /// (`kubernetes_parser_unknown`).
    Unknown,
}

impl LogParser {
    fn named(name: &str) -> LogParser {
        match name.trim().to_ascii_lowercase().as_str() {
            "json" => LogParser::Json,
            "logfmt" => LogParser::Logfmt,
            _ => LogParser::Unknown,
        }
    }
}

/// What a pod adds to its records, built once per pod event.
#[derive(Debug, Clone, PartialEq)]
pub struct PodMeta {
    /// `pod_id`, `host`, `labels`, `annotations`, `ownerReferences`: merged
    /// as is into each file's `kubernetes` object.
    pub object: Map<String, Value>,
    /// Container name to image, for `container_image` (and init and
    /// ephemeral containers).
    pub images: BTreeMap<String, String>,
    /// Annotated to be dropped.
    pub exclude: bool,
    /// Annotated with a parser for its `log` text.
    pub parser: Option<LogParser>,
    /// Bytes charged to `memory_limit` for this entry (an estimate of the
    /// heap it holds).
    pub bytes: usize,
}

/// Which annotations are kept.
#[derive(Debug, Clone)]
pub struct Filters {
    labels: bool,
    annotations: bool,
    include: Option<globset::GlobSet>,
    exclude: globset::GlobSet,
    exclude_by_annotation: bool,
    parser_by_annotation: bool,
}

fn glob_set(pats: &[String]) -> globset::GlobSet {
    let mut b = globset::GlobSetBuilder::new();
    for p in pats {
        if let Ok(g) = globset::Glob::new(p) {
            b.add(g);
        }
    }
    b.build().unwrap_or_else(|_| globset::GlobSet::empty())
}

impl Filters {
    pub fn new(cfg: &KubernetesApiConfig) -> Self {
        Filters {
            labels: cfg.labels,
            annotations: cfg.annotations,
            include: (!cfg.annotations_include.is_empty()).then(|| glob_set(&cfg.annotations_include)),
            exclude: glob_set(&cfg.annotations_exclude),
            exclude_by_annotation: cfg.exclude_by_annotation,
            parser_by_annotation: cfg.parser_by_annotation,
        }
    }
}

/// The parts of a pod that its records carry, as the watcher decodes them.
///
/// Why not k8s-openapi's `Pod`: decoding into it builds the whole spec and
/// status (volumes, probes, every container's env...) for each event, only to
/// drop them, and links a deserializer for each of those hundreds of types
/// into the binary. Unknown fields are skipped by serde, so this decodes the
/// same objects with a fraction of the code (the shipped binary has a 30 MiB
/// budget, issue 17).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<PodSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub node_name: Option<String>,
    #[serde(default)]
    pub containers: Vec<Container>,
    pub init_containers: Option<Vec<Container>>,
    pub ephemeral_containers: Option<Vec<Container>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Container {
    pub name: String,
    pub image: Option<String>,
}

/// A namespace as the namespace watch decodes it: its labels are all it needs.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Namespace {
    pub metadata: ObjectMeta,
}

/// `kube::Resource` for a core/v1 kind decoded into our own type.
macro_rules! core_v1_resource {
    ($ty:ty, $kind:literal, $plural:literal, $scope:ty) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                "".into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

core_v1_resource!(Pod, "Pod", "pods", k8s_openapi::NamespaceResourceScope);
core_v1_resource!(Namespace, "Namespace", "namespaces", k8s_openapi::ClusterResourceScope);

/// The fields of `pod` its records carry (Fluent Bit's names).
pub fn pod_meta(pod: &Pod, f: &Filters) -> PodMeta {
    let md = &pod.metadata;
    let mut object = Map::new();
    if let Some(uid) = &md.uid {
        object.insert("pod_id".into(), Value::String(uid.clone()));
    }
    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
        object.insert("host".into(), Value::String(node.clone()));
    }
    if f.labels
        && let Some(labels) = md.labels.as_ref().filter(|l| !l.is_empty())
    {
        let m: Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        object.insert("labels".into(), Value::Object(m));
    }
    let all = md.annotations.as_ref();
    let exclude = f.exclude_by_annotation
        && all.is_some_and(|a| {
            EXCLUDE_ANNOTATIONS
                .iter()
                .any(|k| a.get(*k).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")))
        });
    if f.annotations
        && let Some(a) = all
    {
        let m: Map<String, Value> = a
            .iter()
            .filter(|(k, _)| {
                f.include.as_ref().is_none_or(|i| i.is_match(k.as_str())) && !f.exclude.is_match(k.as_str())
            })
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        if !m.is_empty() {
            object.insert("annotations".into(), Value::Object(m));
        }
    }
    let owners: Vec<Value> = md
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.controller == Some(true))
        .map(|o| serde_json::json!({"kind": o.kind, "name": o.name}))
        .collect();
    if !owners.is_empty() {
        object.insert("ownerReferences".into(), Value::Array(owners));
    }
    let mut images = BTreeMap::new();
    if let Some(spec) = &pod.spec {
        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            if let Some(i) = &c.image {
                images.insert(c.name.clone(), i.clone());
            }
        }
        for c in spec.ephemeral_containers.iter().flatten() {
            if let Some(i) = &c.image {
                images.insert(c.name.clone(), i.clone());
            }
        }
    }
    let parser = if f.parser_by_annotation {
        all.and_then(|a| PARSER_ANNOTATIONS.iter().find_map(|k| a.get(*k)))
            .map(|name| LogParser::named(name))
    } else {
        None
    };
    let mut meta = PodMeta {
        object,
        images,
        exclude,
        parser,
        bytes: 0,
    };
    meta.bytes = estimate_bytes(&meta) + md.name.as_ref().map_or(0, String::len) * 2;
    meta
}

/// Heap bytes a [`PodMeta`] holds, roughly: its strings plus a fixed cost per
/// map entry and per value (allocation headers, tree nodes).
fn estimate_bytes(m: &PodMeta) -> usize {
    fn value(v: &Value) -> usize {
        48 + match v {
            Value::String(s) => s.len(),
            Value::Array(a) => a.iter().map(value).sum(),
            Value::Object(o) => o.iter().map(|(k, v)| 48 + k.len() + value(v)).sum(),
            _ => 0,
        }
    }
    let object: usize = m.object.iter().map(|(k, v)| 48 + k.len() + value(v)).sum();
    let images: usize = m.images.iter().map(|(k, v)| 96 + k.len() + v.len()).sum();
    256 + object + images
}

/// The `kubernetes` fragment of a file: its path's fields, plus its pod's.
pub fn fields_for(
    c: &ContainerLog<'_>,
    pod: Option<&PodMeta>,
    namespace_labels: Option<&Map<String, Value>>,
) -> Arc<Fields> {
    let mut o = Map::new();
    o.insert("pod_name".into(), c.pod_name.into());
    o.insert("namespace_name".into(), c.namespace_name.into());
    o.insert("container_name".into(), c.container_name.into());
    o.insert("container_id".into(), c.container_id.into());
    if let Some(p) = pod {
        for (k, v) in &p.object {
            o.insert(k.clone(), v.clone());
        }
        if let Some(i) = p.images.get(c.container_name) {
            o.insert("container_image".into(), Value::String(i.clone()));
        }
    }
    if let Some(l) = namespace_labels.filter(|l| !l.is_empty()) {
        o.insert("namespace_labels".into(), Value::Object(l.clone()));
    }
    Arc::new(Fields::new([("kubernetes".to_string(), Value::Object(o))]))
}
