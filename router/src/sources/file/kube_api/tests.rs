use super::*;

use serde_json::json;
use tokio::sync::Semaphore;

use super::super::kubernetes::ContainerLog;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn pod(v: Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

fn web() -> Pod {
    pod(json!({
        "metadata": {
            "name": "web-1", "namespace": "prod", "uid": "u-1",
            "labels": {"app": "web", "team": "core"},
            "annotations": {
                "prometheus.io/scrape": "true",
                "kubectl.kubernetes.io/last-applied-configuration": "{\"huge\":1}",
            },
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4", "uid": "r", "controller": true},
                {"apiVersion": "v1", "kind": "Thing", "name": "not-controller", "uid": "t"},
            ],
        },
        "spec": {
            "nodeName": "node-a",
            "containers": [{"name": "app", "image": "repo/web:1.2"}, {"name": "side", "image": "envoy:1"}],
            "initContainers": [{"name": "init", "image": "busybox"}],
        },
    }))
}

fn log() -> ContainerLog<'static> {
    ContainerLog {
        pod_name: "web-1",
        namespace_name: "prod",
        container_name: "app",
        container_id: ID,
    }
}

#[test]
fn a_pod_maps_to_fluent_bit_names_next_to_the_path_fields() {
    let m = pod_meta(&web(), &Filters::new(&KubernetesApiConfig::default()));
    assert!(!m.exclude);
    let f = fields_for(&log(), Some(&m), None);
    let mut b = crate::event::batch_of(&[r#"{"log":"x"}"#]);
    b.fields.push(f);
    let mut out = Vec::new();
    b.encode(0, &mut out);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v,
        json!({"log": "x", "kubernetes": {
            "pod_name": "web-1", "namespace_name": "prod", "container_name": "app", "container_id": ID,
            "pod_id": "u-1", "host": "node-a",
            "labels": {"app": "web", "team": "core"},
            "annotations": {"prometheus.io/scrape": "true"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d4"}],
            "container_image": "repo/web:1.2",
        }})
    );
    // Each container gets its own image; an unknown one gets none.
    let side = ContainerLog {
        container_name: "side",
        ..log()
    };
    assert_eq!(
        fields_for(&side, Some(&m), None)
            .lookup("kubernetes.container_image")
            .as_deref(),
        Some("envoy:1")
    );
    let gone = ContainerLog {
        container_name: "gone",
        ..log()
    };
    assert_eq!(
        fields_for(&gone, Some(&m), None).lookup("kubernetes.container_image"),
        None
    );
    assert_eq!(
        fields_for(&log(), None, None).lookup("kubernetes.pod_id"),
        None,
        "no pod: the path's fields only"
    );
}

#[test]
fn annotation_lists_and_toggles() {
    let cfg = KubernetesApiConfig {
        annotations_include: vec!["prometheus.io/*".into(), "kubectl.kubernetes.io/*".into()],
        ..KubernetesApiConfig::default()
    };
    let m = pod_meta(&web(), &Filters::new(&cfg));
    // Include picks; the default exclude still removes the manifest copy.
    assert_eq!(m.object["annotations"], json!({"prometheus.io/scrape": "true"}));
    let cfg = KubernetesApiConfig {
        annotations_include: vec!["nothing/*".into()],
        ..KubernetesApiConfig::default()
    };
    assert!(!pod_meta(&web(), &Filters::new(&cfg)).object.contains_key("annotations"));
    let cfg = KubernetesApiConfig {
        annotations_exclude: vec![],
        ..KubernetesApiConfig::default()
    };
    assert_eq!(
        pod_meta(&web(), &Filters::new(&cfg)).object["annotations"]
            .as_object()
            .unwrap()
            .len(),
        2
    );
    let cfg = KubernetesApiConfig {
        labels: false,
        annotations: false,
        ..KubernetesApiConfig::default()
    };
    let m = pod_meta(&web(), &Filters::new(&cfg));
    assert!(!m.object.contains_key("labels") && !m.object.contains_key("annotations"));
    assert_eq!(m.object["pod_id"], "u-1");
}

#[test]
fn exclude_annotations_are_read_in_both_spellings() {
    let f = Filters::new(&KubernetesApiConfig::default());
    for (k, v, want) in [
        ("logferry.io/exclude", "true", true),
        ("fluentbit.io/exclude", "True", true),
        ("fluentbit.io/exclude", " true ", true),
        ("logferry.io/exclude", "false", false),
        ("logferry.io/exclude", "yes", false),
        ("logferry.io/excluded", "true", false),
    ] {
        let p = pod(json!({"metadata": {"name": "a", "namespace": "n", "annotations": {k: v}}}));
        assert_eq!(pod_meta(&p, &f).exclude, want, "{k}: {v}");
    }
    let off = Filters::new(&KubernetesApiConfig {
        exclude_by_annotation: false,
        ..KubernetesApiConfig::default()
    });
    let p = pod(json!({"metadata": {"name": "a", "namespace": "n", "annotations": {"logferry.io/exclude": "true"}}}));
    assert!(!pod_meta(&p, &off).exclude);
}

#[test]
fn the_parser_annotation_names_a_parser_and_ours_wins() {
    let f = Filters::new(&KubernetesApiConfig::default());
    for (annotations, want) in [
        (json!({"logferry.io/parser": "json"}), Some(LogParser::Json)),
        (json!({"fluentbit.io/parser": " LogFmt "}), Some(LogParser::Logfmt)),
        (
            json!({"fluentbit.io/parser": "json", "logferry.io/parser": "logfmt"}),
            Some(LogParser::Logfmt),
        ),
        (json!({"logferry.io/parser": "apache2"}), Some(LogParser::Unknown)),
        (json!({"logferry.io/parsers": "json"}), None),
    ] {
        let p = pod(json!({"metadata": {"name": "a", "namespace": "n", "annotations": annotations.clone()}}));
        assert_eq!(pod_meta(&p, &f).parser, want, "{annotations}");
    }
    let off = Filters::new(&KubernetesApiConfig {
        parser_by_annotation: false,
        ..KubernetesApiConfig::default()
    });
    let p = pod(json!({"metadata": {"name": "a", "namespace": "n", "annotations": {"logferry.io/parser": "json"}}}));
    assert_eq!(pod_meta(&p, &off).parser, None);
}

#[test]
fn a_bare_pod_maps_to_nothing_but_the_path() {
    let p = pod(json!({"metadata": {"name": "web-1", "namespace": "prod"}}));
    let m = pod_meta(&p, &Filters::new(&KubernetesApiConfig::default()));
    assert!(m.object.is_empty() && m.images.is_empty() && !m.exclude);
    assert_eq!(
        format!("{:?}", fields_for(&log(), Some(&m), None)),
        format!("{:?}", fields_for(&log(), None, None))
    );
}

fn cache(limit: usize) -> PodCache {
    PodCache::new(Arc::new(Semaphore::new(limit)), usize::MAX, &Metrics::new(), "k")
}

fn k(ns: &str, pod: &str) -> (String, String) {
    (ns.to_string(), pod.to_string())
}

#[test]
fn files_see_late_pods_updates_and_deletions_after_the_grace() {
    let c = cache(1 << 20);
    let f = Filters::new(&KubernetesApiConfig::default());
    let mut file = FileMeta::new(&log());
    file.refresh(&c);
    assert_eq!(file.fields.lookup("kubernetes.pod_id"), None);
    // Late start: the pod shows up after the file was opened.
    assert!(c.apply(k("prod", "web-1"), pod_meta(&web(), &f)));
    file.refresh(&c);
    assert_eq!(file.fields.lookup("kubernetes.pod_id").as_deref(), Some("u-1"));
    let shared = file.fields.clone();
    // Another pod changing leaves this file's fields (the same Arc).
    let mut other = web();
    other.metadata.name = Some("web-2".into());
    assert!(c.apply(k("prod", "web-2"), pod_meta(&other, &f)));
    file.refresh(&c);
    assert!(Arc::ptr_eq(&shared, &file.fields));
    // A label change reaches the file.
    let mut changed = web();
    changed
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("app".into(), "web2".into());
    assert!(c.apply(k("prod", "web-1"), pod_meta(&changed, &f)));
    file.refresh(&c);
    assert_eq!(file.fields.lookup("kubernetes.labels.app").as_deref(), Some("web2"));
    // Deleted: kept through the grace, gone after it.
    let t0 = Instant::now();
    c.delete(&k("prod", "web-1"), t0);
    c.sweep(t0 + Duration::from_secs(59), Duration::from_secs(60));
    file.refresh(&c);
    assert_eq!(file.fields.lookup("kubernetes.pod_id").as_deref(), Some("u-1"));
    c.sweep(t0 + Duration::from_secs(61), Duration::from_secs(60));
    file.refresh(&c);
    assert_eq!(file.fields.lookup("kubernetes.pod_id"), None);
    assert_eq!(c.len(), 1);
}

#[test]
fn the_charge_follows_the_entries_and_refuses_what_does_not_fit() {
    let f = Filters::new(&KubernetesApiConfig::default());
    let named = |n: &str| {
        let mut p = web();
        p.metadata.name = Some(n.to_string());
        p
    };
    let one = pod_meta(&named("p0"), &f).bytes;
    assert!(one > 500, "{one}: labels, annotations, images and overheads");
    // Room for two pods, not three.
    let c = cache(one * 2 + one / 2);
    for i in 0..2 {
        assert!(c.apply(k("prod", &format!("p{i}")), pod_meta(&named(&format!("p{i}")), &f)));
    }
    assert_eq!(c.charged(), one * 2);
    // The same pod again changes nothing.
    assert!(c.apply(k("prod", "p0"), pod_meta(&named("p0"), &f)));
    assert_eq!(c.charged(), one * 2);
    let p = named("p2");
    assert!(!c.apply(k("prod", "p2"), pod_meta(&p, &f)), "over the limit");
    assert_eq!(c.len(), 2);
    assert!(c.lookup("prod", "p2").is_none());
    // Deleting frees room only once the grace has passed.
    let t0 = Instant::now();
    c.delete(&k("prod", "p0"), t0);
    assert!(!c.apply(k("prod", "p2"), pod_meta(&p, &f)));
    c.sweep(t0 + Duration::from_secs(120), Duration::from_secs(60));
    assert!(c.apply(k("prod", "p2"), pod_meta(&p, &f)));
    assert_eq!(c.len(), 2);
    // A relist without p1 marks it deleted.
    c.retain_listed(&HashSet::from([k("prod", "p2")]), t0);
    c.sweep(t0 + Duration::from_secs(120), Duration::from_secs(60));
    assert_eq!(c.len(), 1);
    assert!(c.lookup("prod", "p1").is_none());
}

#[test]
fn the_cache_keeps_to_its_share_of_the_limit() {
    let f = Filters::new(&KubernetesApiConfig::default());
    let one = pod_meta(&web(), &f).bytes;
    let c = PodCache::new(Arc::new(Semaphore::new(1 << 30)), one * 3, &Metrics::new(), "k");
    let mut n = 0;
    for i in 0..10 {
        let mut p = web();
        p.metadata.name = Some(format!("w{i}"));
        n += usize::from(c.apply(k("prod", &format!("w{i}")), pod_meta(&p, &f)));
    }
    assert_eq!(n, 3);
    assert!(c.charged() <= one * 3);
}

#[test]
fn backoff_doubles_with_jitter_and_caps() {
    for n in 1..40 {
        let d = backoff(n);
        let base = BACKOFF_MIN.saturating_mul(1 << (n - 1).min(10)).min(BACKOFF_MAX);
        assert!(d >= base.mul_f64(0.5) && d <= base.mul_f64(1.5), "{n}: {d:?}");
    }
    assert!(backoff(30) <= BACKOFF_MAX.mul_f64(1.5));
}
