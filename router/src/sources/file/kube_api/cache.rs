//! The pods (and namespaces) of this node, shared by the watch task and the
//! file source's thread, and what each file keeps of them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::super::kubernetes::ContainerLog;
use super::pod::{LogParser, PodMeta, fields_for};
use crate::event::Fields;
use crate::memory::Charge;
use crate::metrics::Metrics;

struct Entry {
    meta: Arc<PodMeta>,
    /// The cache generation of the last change of this entry.
    version: u64,
    /// When the pod was deleted (kept until `delete_grace` after).
    deleted: Option<Instant>,
}

struct NsEntry {
    labels: Arc<Map<String, Value>>,
    /// The cache generation of their last change.
    version: u64,
    /// Charged to `memory_limit` for them.
    bytes: usize,
}

struct Inner {
    pods: HashMap<(String, String), Entry>,
    /// Namespace labels (`namespace_labels = true`).
    namespaces: HashMap<String, NsEntry>,
    charge: Charge,
    /// Sum of the entries' `bytes`.
    bytes: usize,
    /// At most this many bytes (a share of `memory_limit`, so batches
    /// always find room).
    max: usize,
}

/// The pods of this node, shared by the watch task (writer) and the file
/// source thread (reader).
pub struct PodCache {
    inner: RwLock<Inner>,
    generation: AtomicU64,
    synced: AtomicBool,
    pods: Gauge,
    bytes: Gauge,
}

/// A pod as a file of the source sees it.
pub struct Lookup {
    pub version: u64,
    pub meta: Arc<PodMeta>,
}

/// A namespace's labels as a file of the source sees them.
pub struct NamespaceLookup {
    pub version: u64,
    pub labels: Arc<Map<String, Value>>,
}

impl PodCache {
    /// `max`: the most bytes the cache may hold.
    pub fn new(memory: Arc<Semaphore>, max: usize, metrics: &Metrics, id: &str) -> Self {
        let (pods, bytes) = metrics.kubernetes_cache(id);
        PodCache {
            inner: RwLock::new(Inner {
                pods: HashMap::new(),
                namespaces: HashMap::new(),
                charge: Charge::new(memory),
                bytes: 0,
                max,
            }),
            generation: AtomicU64::new(1),
            synced: AtomicBool::new(false),
            pods,
            bytes,
        }
    }

    /// Changes on every insert, update or removal.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// True once the first list of pods is in.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn lookup(&self, namespace: &str, pod: &str) -> Option<Lookup> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.pods.get(&(namespace.to_string(), pod.to_string())).map(|e| Lookup {
            version: e.version,
            meta: e.meta.clone(),
        })
    }

    pub fn namespace(&self, namespace: &str) -> Option<NamespaceLookup> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.namespaces.get(namespace).map(|e| NamespaceLookup {
            version: e.version,
            labels: e.labels.clone(),
        })
    }

    /// Sets a namespace's labels; false when `memory_limit` has no room.
    pub fn apply_namespace(&self, name: &str, labels: Map<String, Value>) -> bool {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let old = g.namespaces.get(name);
        if old.is_some_and(|e| *e.labels == labels) {
            return true;
        }
        let old_bytes = old.map_or(0, |e| e.bytes);
        let bytes = 96
            + name.len()
            + labels
                .iter()
                .map(|(k, v)| 96 + k.len() + v.as_str().map_or(0, str::len))
                .sum::<usize>();
        let want = g.bytes - old_bytes + bytes;
        if want > g.max || !g.charge.resize(want) {
            return false;
        }
        g.bytes = want;
        let version = self.bump();
        g.namespaces.insert(
            name.to_string(),
            NsEntry {
                labels: Arc::new(labels),
                version,
                bytes,
            },
        );
        self.publish(&g);
        true
    }

    /// Forgets a deleted namespace, or, with `keep`, every one not in it
    /// (after a relist).
    pub fn remove_namespaces(&self, gone: Option<&str>, keep: Option<&HashSet<String>>) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let drop: Vec<String> = g
            .namespaces
            .keys()
            .filter(|k| gone == Some(k.as_str()) || keep.is_some_and(|l| !l.contains(*k)))
            .cloned()
            .collect();
        if drop.is_empty() {
            return;
        }
        for k in drop {
            if let Some(e) = g.namespaces.remove(&k) {
                g.bytes -= e.bytes;
            }
        }
        let want = g.bytes;
        g.charge.resize(want);
        self.bump();
        self.publish(&g);
    }

    /// Bytes charged to `memory_limit` now.
    pub fn charged(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).charge.bytes()
    }

    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Room left in `memory_limit`, in bytes.
    pub(super) fn room(&self) -> usize {
        self.inner.read().map(|g| g.charge.available()).unwrap_or(0)
    }

    /// The first full list of pods is in: the source may stop waiting.
    pub(super) fn set_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    pub(super) fn bump(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn publish(&self, g: &Inner) {
        self.pods.set(g.pods.len() as i64);
        self.bytes.set(g.charge.bytes() as i64);
    }

    /// Adds or replaces a pod; false when `memory_limit` has no room for it
    /// (then the cache is as before, with an older version of it, if any).
    pub fn apply(&self, key: (String, String), meta: PodMeta) -> bool {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let old = g.pods.get(&key).map_or(0, |e| e.meta.bytes);
        if g.pods.get(&key).is_some_and(|e| *e.meta == meta && e.deleted.is_none()) {
            return true;
        }
        let want = g.bytes - old + meta.bytes;
        if want > g.max || !g.charge.resize(want) {
            return false;
        }
        g.bytes = want;
        let version = self.bump();
        g.pods.insert(
            key,
            Entry {
                meta: Arc::new(meta),
                version,
                deleted: None,
            },
        );
        self.publish(&g);
        true
    }

    /// Marks a pod deleted: it stays until [`PodCache::sweep`] finds it
    /// older than the grace.
    pub fn delete(&self, key: &(String, String), now: Instant) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = g.pods.get_mut(key)
            && e.deleted.is_none()
        {
            e.deleted = Some(now);
        }
    }

    /// After a relist: pods cached but not listed were deleted meanwhile.
    pub(super) fn retain_listed(&self, listed: &HashSet<(String, String)>, now: Instant) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for (k, e) in g.pods.iter_mut() {
            if !listed.contains(k) && e.deleted.is_none() {
                e.deleted = Some(now);
            }
        }
    }

    /// Forgets pods deleted more than `grace` before `now`.
    pub fn sweep(&self, now: Instant, grace: Duration) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let before = g.pods.len();
        let mut freed = 0;
        g.pods.retain(|_, e| {
            let keep = e.deleted.is_none_or(|t| now.saturating_duration_since(t) < grace);
            if !keep {
                freed += e.meta.bytes;
            }
            keep
        });
        if g.pods.len() != before {
            let want = g.bytes - freed;
            g.bytes = want;
            g.charge.resize(want);
            self.bump();
            self.publish(&g);
        }
    }
}

/// What the file source keeps per file.
pub struct FileMeta {
    namespace: String,
    pod: String,
    container: String,
    container_id: String,
    /// The cache generation `fields` was resolved at.
    generation: u64,
    /// The versions of the pod entry and of the namespace's labels `fields`
    /// was built from (`None`: path only).
    version: (Option<u64>, Option<u64>),
    pub fields: Arc<Fields>,
    pub exclude: bool,
    pub parser: Option<LogParser>,
}

impl FileMeta {
    pub fn new(c: &ContainerLog<'_>) -> Self {
        FileMeta {
            namespace: c.namespace_name.to_string(),
            pod: c.pod_name.to_string(),
            container: c.container_name.to_string(),
            container_id: c.container_id.to_string(),
            generation: 0,
            version: (None, None),
            fields: fields_for(c, None, None),
            exclude: false,
            parser: None,
        }
    }

    /// Brings `fields` up to date with the cache; cheap when nothing changed.
    pub fn refresh(&mut self, cache: &PodCache) {
        let g = cache.generation();
        if g == self.generation {
            return;
        }
        self.generation = g;
        let found = cache.lookup(&self.namespace, &self.pod);
        let ns = cache.namespace(&self.namespace);
        let version = (found.as_ref().map(|l| l.version), ns.as_ref().map(|n| n.version));
        if version == self.version {
            return;
        }
        self.version = version;
        let c = ContainerLog {
            pod_name: &self.pod,
            namespace_name: &self.namespace,
            container_name: &self.container,
            container_id: &self.container_id,
        };
        self.fields = fields_for(&c, found.as_ref().map(|l| &*l.meta), ns.as_ref().map(|n| &*n.labels));
        self.exclude = found.as_ref().is_some_and(|l| l.meta.exclude);
        self.parser = found.and_then(|l| l.meta.parser);
    }
}
