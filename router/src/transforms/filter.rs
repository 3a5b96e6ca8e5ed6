//! `type = "filter"`: keep or drop records by conditions on their fields.
//!
//! Why conditions read the record text instead of a parsed value: a filter
//! sits on the hot path of every record it sees, and most conditions touch
//! one or two fields. `Batch::lookup` finds a top-level or dotted field in the
//! JSON text (or in the batch's enrichment fragments) without building a
//! `serde_json::Value`. Kept records are compacted in place when the
//! transform owns the batch (the usual case: one downstream), so the batch
//! keeps its share of `memory_limit`; a shared batch is copied. Records left
//! out are counted as discarded with reason `filtered`; the batch's
//! acknowledgement is unchanged, so a file's checkpoint passes dropped
//! records as it passes delivered ones.

use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::confdiag::{Ctx, Seg};
use crate::event::{Batch, Records};
use crate::metrics::Metrics;
use crate::topology::Fanout;
use crate::transforms::condition::{self, Condition, Match};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// `keep` passes the records that match; `drop` passes the others.
    #[serde(default)]
    pub action: Action,
    /// `all` conditions must hold (default), or `any` one of them.
    #[serde(default, rename = "match")]
    pub match_: Match,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    Keep,
    Drop,
}

impl FilterConfig {
    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        condition::validate_list(ctx, base, "conditions", &self.conditions)
    }

    pub fn describe(&self) -> String {
        format!(
            "filter: {} records matching {} of {} condition(s)",
            match self.action {
                Action::Keep => "keep",
                Action::Drop => "drop",
            },
            match self.match_ {
                Match::All => "all",
                Match::Any => "any",
            },
            self.conditions.len()
        )
    }

    /// Does record `i` of `batch` pass?
    pub fn passes(&self, batch: &Batch, i: usize) -> bool {
        condition::holds_all_or_any(&self.conditions, self.match_, batch, i) == (self.action == Action::Keep)
    }
}

pub async fn run(
    id: String,
    cfg: FilterConfig,
    mut input: mpsc::Receiver<Batch>,
    output: Fanout,
    metrics: Arc<Metrics>,
) {
    let m = metrics.component(&id, "filter");
    let mut keep = Vec::new();
    while let Some(batch) = input.recv().await {
        let n = batch.len();
        m.received_events.inc_by(n as u64);
        m.received_bytes.inc_by(batch.bytes());
        keep.clear();
        keep.extend((0..n).map(|i| cfg.passes(&batch, i)));
        let kept = keep.iter().filter(|k| **k).count();
        m.discarded("filtered", (n - kept) as u64);
        let batch = if kept == n { batch } else { retain(batch, &keep) };
        let bytes = batch.bytes();
        if output.send(batch).await.is_err() {
            break;
        }
        m.sent_events.inc_by(kept as u64);
        m.sent_bytes.inc_by(bytes);
    }
}

/// The batch with only the records whose `keep` flag is set; same fields and
/// ack. An empty batch still travels: its ack moves the checkpoint.
pub fn retain(batch: Batch, keep: &[bool]) -> Batch {
    let Batch {
        records,
        fields,
        ack,
        tag,
    } = batch;
    let records = match Arc::try_unwrap(records) {
        Ok(mut owned) => {
            // Compact in place, keeping the permit.
            let mut write = 0usize;
            let mut metas = Vec::with_capacity(owned.meta.len());
            for (meta, k) in owned.meta.iter().zip(keep) {
                if !*k {
                    continue;
                }
                let (start, len) = (meta.start as usize, meta.len as usize);
                owned.buf.copy_within(start..start + len, write);
                let mut m = *meta;
                m.start = write as u32;
                metas.push(m);
                write += len;
            }
            owned.buf.truncate(write);
            owned.meta = metas;
            owned
        }
        Err(shared) => {
            let mut r = Records::default();
            for (i, k) in keep.iter().enumerate() {
                if *k {
                    let start = r.buf.len();
                    r.buf.extend_from_slice(shared.text(i));
                    let m = shared.meta[i];
                    r.push_like(start, &m);
                }
            }
            r
        }
    };
    Batch {
        records: Arc::new(records),
        fields,
        ack,
        tag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::batch_of;

    fn cfg(toml_text: &str) -> FilterConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn kept(cfg: &FilterConfig, b: &Batch) -> Vec<usize> {
        (0..b.len()).filter(|&i| cfg.passes(b, i)).collect()
    }

    const LINES: &[&str] = &[
        r#"{"level":"info","msg":"ok","k":{"ns":"prod"}}"#,
        r#"{"level":"ERROR","msg":"read timeout","request_id":"r1"}"#,
        r#"{"level":"warning","msg":"slow","n":3,"obj":{"a":1}}"#,
        r#"{"msg":"no level","k":{"ns":"dev"}}"#,
    ];

    #[test]
    fn each_condition_kind() {
        let b = batch_of(LINES);
        let c = cfg("conditions = [{ field = \"level\", level_at_least = \"warn\" }]");
        assert_eq!(kept(&c, &b), [1, 2]);
        let c = cfg("conditions = [{ field = \"msg\", regex = \"time(out)?\" }]");
        assert_eq!(kept(&c, &b), [1]);
        let c = cfg("conditions = [{ field = \"request_id\", exists = true }]");
        assert_eq!(kept(&c, &b), [1]);
        let c = cfg("conditions = [{ field = \"obj\", exists = true }]");
        assert_eq!(kept(&c, &b), [2], "an object-valued field exists too");
        let c = cfg("conditions = [{ field = \"obj\", exists = false }]");
        assert_eq!(kept(&c, &b), [0, 1, 3], "and is not absent");
        let c = cfg("conditions = [{ field = \"level\", exists = false }]");
        assert_eq!(kept(&c, &b), [3]);
        let c = cfg("conditions = [{ field = \"k.ns\", equals = \"prod\" }]");
        assert_eq!(kept(&c, &b), [0]);
        let c = cfg("conditions = [{ field = \"n\", equals = \"3\" }]");
        assert_eq!(kept(&c, &b), [2]);
    }

    #[test]
    fn all_any_and_drop() {
        let b = batch_of(LINES);
        let two = "conditions = [{ field = \"level\", level_at_least = \"warn\" }, { field = \"request_id\", exists = true }]";
        assert_eq!(kept(&cfg(two), &b), [1]);
        assert_eq!(kept(&cfg(&format!("match = \"any\"\n{two}")), &b), [1, 2]);
        assert_eq!(kept(&cfg(&format!("action = \"drop\"\n{two}")), &b), [0, 2, 3]);
    }

    #[test]
    fn enrichment_fields_are_seen() {
        let mut b = batch_of(LINES);
        b.fields.push(Arc::new(crate::event::Fields::new([(
            "ecs_cluster".to_string(),
            serde_json::json!("prod"),
        )])));
        let c = cfg("conditions = [{ field = \"ecs_cluster\", equals = \"prod\" }]");
        assert_eq!(kept(&c, &b), [0, 1, 2, 3]);
    }

    #[test]
    fn retain_compacts_owned_and_copies_shared_batches() {
        let keep = [false, true, false, true];
        let owned = retain(batch_of(LINES), &keep);
        let texts = |b: &Batch| (0..b.len()).map(|i| b.records.text(i).to_vec()).collect::<Vec<_>>();
        assert_eq!(
            texts(&owned),
            vec![LINES[1].as_bytes().to_vec(), LINES[3].as_bytes().to_vec()]
        );
        let b = batch_of(LINES);
        let shared = retain(b.clone(), &keep);
        assert_eq!(texts(&shared), texts(&owned));
        assert_eq!(b.len(), 4, "the other holder's batch is untouched");
        let b = batch_of(LINES);
        let none = retain(b, &[false; 4]);
        assert!(none.is_empty());
    }
}
