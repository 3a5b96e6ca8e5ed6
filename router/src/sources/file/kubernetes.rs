//! Kubernetes metadata from a container log's file name
//! (`kubernetes_metadata = "path"`).
//!
//! Why the name and not the API server: on a node, the kubelet names every
//! container log `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`
//! (a symlink into `/var/log/pods/`). That name is all a node daemon needs to
//! say which pod a line came from, at no cost per record, with no RBAC, no
//! watch and no start-up dependency on the control plane. Labels and
//! annotations need the API; they are not read here.
//!
//! Why strict: the three names are Kubernetes object names (no `_` in any of
//! them), so a name that does not split into them is not a container log and
//! gets no fields rather than wrong ones.
//!
//! Why the name of the path the glob matched: `/var/log/containers/*.log`
//! resolves to `/var/log/pods/<namespace>_<pod>_<uid>/<container>/0.log`,
//! whose own name says nothing. The source keeps the matched (symlink) path.

use std::path::Path;
use std::sync::Arc;

use crate::event::Fields;

/// The parts of a kubelet container log name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLog<'a> {
    pub pod_name: &'a str,
    pub namespace_name: &'a str,
    pub container_name: &'a str,
    pub container_id: &'a str,
}

/// Splits `<pod>_<namespace>_<container>-<64 hex>.log`; `None` for any other name.
pub fn parse_name(name: &str) -> Option<ContainerLog<'_>> {
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut parts = rest.split('_');
    let (pod, namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !is_subdomain(pod) || !is_label(namespace) || !is_label(container) {
        return None;
    }
    Some(ContainerLog {
        pod_name: pod,
        namespace_name: namespace,
        container_name: container,
        container_id: id,
    })
}

/// The `kubernetes` fragment for the records of the file at `path`.
pub fn fields_for(path: &Path) -> Option<Arc<Fields>> {
    let c = parse_name(path.file_name()?.to_str()?)?;
    let value = serde_json::json!({
        "pod_name": c.pod_name,
        "namespace_name": c.namespace_name,
        "container_name": c.container_name,
        "container_id": c.container_id,
    });
    Some(Arc::new(Fields::new([("kubernetes".to_string(), value)])))
}

/// RFC 1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&b.len())
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

/// RFC 1123 subdomain (pod names): labels joined by `.`, at most 253 bytes.
fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn kubelet_names_split_into_pod_namespace_container_id() {
        let cases = [
            (
                format!("web-7d4b9c8f5-x2x9z_prod_app-{ID}.log"),
                ("web-7d4b9c8f5-x2x9z", "prod", "app"),
            ),
            (
                format!("coredns-5d78c9869d-abcde_kube-system_coredns-{ID}.log"),
                ("coredns-5d78c9869d-abcde", "kube-system", "coredns"),
            ),
            (format!("a.b.c_n1_side-car-2-{ID}.log"), ("a.b.c", "n1", "side-car-2")),
            (format!("0_0_0-{ID}.log"), ("0", "0", "0")),
        ];
        for (name, (pod, ns, container)) in cases {
            let c = parse_name(&name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(
                (c.pod_name, c.namespace_name, c.container_name, c.container_id),
                (pod, ns, container, ID)
            );
        }
    }

    #[test]
    fn near_misses_get_nothing() {
        let upper = ID.to_uppercase();
        let short = &ID[1..];
        let long_label = "a".repeat(64);
        for name in [
            format!("web_prod_app-{ID}"),             // no .log
            format!("web_prod_app-{ID}.log.1"),       // rotated name
            format!("web_prod_app-{upper}.log"),      // upper-case id
            format!("web_prod_app-{short}.log"),      // 63 hex
            format!("web_prod_app{ID}.log"),          // no dash before the id
            format!("web_prod-{ID}.log"),             // two names
            format!("web_prod_app_x-{ID}.log"),       // four names
            format!("Web_prod_app-{ID}.log"),         // upper-case pod
            format!("web_prod_-{ID}.log"),            // empty container
            format!("web_prod.x_app-{ID}.log"),       // dot in a namespace
            format!("web_prod_-app-{ID}.log"),        // container starts with '-'
            format!("web._prod_app-{ID}.log"),        // empty pod label
            format!("web_{long_label}_app-{ID}.log"), // namespace over 63
            "0.log".to_string(),
            "app.log".to_string(),
        ] {
            assert_eq!(parse_name(&name), None, "{name}");
        }
    }

    #[test]
    fn fields_are_one_kubernetes_object_named_after_the_symlink() {
        let path = format!("/var/log/containers/web-1_prod_app-{ID}.log");
        let f = fields_for(Path::new(&path)).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f.lookup("kubernetes.pod_name").as_deref(), Some("web-1"));
        assert_eq!(f.lookup("kubernetes.namespace_name").as_deref(), Some("prod"));
        assert_eq!(f.lookup("kubernetes.container_name").as_deref(), Some("app"));
        assert_eq!(f.lookup("kubernetes.container_id").as_deref(), Some(ID));
        let mut b = crate::event::batch_of(&[r#"{"log":"x"}"#]);
        b.fields.push(f);
        let mut out = Vec::new();
        b.encode(0, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"log": "x", "kubernetes": {"pod_name": "web-1", "namespace_name": "prod", "container_name": "app", "container_id": ID}})
        );
        assert!(fields_for(Path::new("/var/log/pods/prod_web-1_uid/app/0.log")).is_none());
    }
}
