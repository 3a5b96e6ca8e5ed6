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

use regex::Regex;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::{Ctx, Seg};
use crate::event::{Batch, Records};
use crate::metrics::Metrics;
use crate::topology::Fanout;

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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    #[default]
    All,
    Any,
}

/// One test on one field (dotted paths reach into objects:
/// `kubernetes.namespace_name`). Exactly one test per condition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub field: String,
    /// The field's value (string, number or boolean, as text) equals this.
    pub equals: Option<String>,
    /// The field's value matches this regular expression.
    #[serde(default, with = "opt_regex")]
    pub regex: Option<Regex>,
    /// The field is present (`true`) or absent (`false`); a dotted path is
    /// present when it holds a scalar.
    pub exists: Option<bool>,
    /// The field is a log level at least this severe
    /// (trace < debug < info < warn < error < fatal; common spellings accepted).
    pub level_at_least: Option<String>,
}

mod opt_regex {
    use regex::Regex;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Regex>, D::Error> {
        let s = String::deserialize(d)?;
        Regex::new(&s).map(Some).map_err(serde::de::Error::custom)
    }
}

/// Severity rank of a level name, case-insensitive; `None` for unknown ones.
pub fn level_rank(level: &str) -> Option<u8> {
    let l = level.trim().to_ascii_lowercase();
    Some(match l.as_str() {
        "trace" | "finest" | "finer" => 0,
        "debug" | "fine" | "dbg" => 1,
        "info" | "information" | "informational" | "notice" => 2,
        "warn" | "warning" => 3,
        "error" | "err" | "severe" => 4,
        "fatal" | "critical" | "crit" | "alert" | "emergency" | "emerg" | "panic" => 5,
        _ => return None,
    })
}

impl FilterConfig {
    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let mut ok = true;
        if self.conditions.is_empty() {
            let mut p = base.to_vec();
            p.push(Seg::Key("conditions".into()));
            ctx.error(&p, "must hold at least one condition");
            ok = false;
        }
        for (i, c) in self.conditions.iter().enumerate() {
            let mut p = base.to_vec();
            p.push(Seg::Key("conditions".into()));
            p.push(Seg::Index(i));
            let tests = [
                c.equals.is_some(),
                c.regex.is_some(),
                c.exists.is_some(),
                c.level_at_least.is_some(),
            ];
            if tests.iter().filter(|t| **t).count() != 1 {
                ctx.error(&p, "needs exactly one of equals, regex, exists, level_at_least");
                ok = false;
            }
            if c.field.is_empty() {
                ctx.error(&p, "`field` must not be empty");
                ok = false;
            }
            if let Some(l) = &c.level_at_least
                && level_rank(l).is_none()
            {
                let mut p = p.clone();
                p.push(Seg::Key("level_at_least".into()));
                ctx.error(
                    &p,
                    format!("unknown level `{l}` (trace, debug, info, warn, error, fatal)"),
                );
                ok = false;
            }
        }
        ok
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
        let hit = |c: &Condition| {
            if let Some(want) = c.exists {
                return batch.has_field(i, &c.field) == want;
            }
            let Some(v) = batch.lookup(i, &c.field) else {
                return false;
            };
            if let Some(e) = &c.equals {
                return v == e.as_str();
            }
            if let Some(r) = &c.regex {
                return r.is_match(&v);
            }
            if let Some(l) = &c.level_at_least {
                return matches!((level_rank(&v), level_rank(l)), (Some(a), Some(b)) if a >= b);
            }
            false
        };
        let matched = match self.match_ {
            Match::All => self.conditions.iter().all(hit),
            Match::Any => self.conditions.iter().any(hit),
        };
        matched == (self.action == Action::Keep)
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
                    r.push_written(start, m.ts_ms, m.key_mask);
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
