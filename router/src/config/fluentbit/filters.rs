//! `[FILTER]` sections: each becomes one or more transforms.

use super::notes::FILTERS;
use super::syntax::{Entry, Pos, Section, split_key};
use super::translate::{Filter, Step, TagMatch, Tr, alias};
use super::values::{is_true, record_key, s};

impl Tr {
    /// A `[FILTER]`: its transforms, or `None` when wrong.
    pub(super) fn filter(&mut self, n: usize, sec: &Section) -> Option<Filter> {
        let name = sec.name();
        let what = format!("[FILTER] {name}");
        let matches = TagMatch::of(sec).map(|(m, _)| m);
        let mut steps = Vec::new();
        match name.as_str() {
            "record_modifier" => {
                let mut fields = toml::Table::new();
                let mut origins = vec![(String::new(), sec.pos.clone())];
                for e in sec.all("record") {
                    let (k, v) = split_key(&e.value);
                    if v.is_empty() {
                        self.errors.push(e.pos.error("`Record` needs a key and a value"));
                        continue;
                    }
                    fields.insert(k.to_string(), s(v));
                    origins.push((format!("fields.{k}"), e.pos.clone()));
                }
                let mut t = toml::Table::new();
                t.insert("type".into(), s("enrich"));
                for detect in ["ecs", "ec2", "kubernetes"] {
                    t.insert(detect.into(), toml::Value::Boolean(false));
                }
                t.insert("fields".into(), toml::Value::Table(fields));
                steps.push(Step {
                    name: alias(sec).unwrap_or_else(|| format!("filter{n}_record_modifier")),
                    table: t,
                    origins,
                });
                self.check_keys(sec, &what, &["match", "match_regex", "record"], &[]);
            }
            "grep" => {
                let op = sec.get("logical_op").map(|e| e.value.to_ascii_lowercase());
                for e in sec.all("regex").chain(sec.all("exclude")) {
                    let (_, re) = split_key(&e.value);
                    if let Err(err) = regex::Regex::new(re) {
                        // The regex crate explains on its last line.
                        let text = err.to_string();
                        let why = text.lines().last().unwrap_or_default().trim();
                        let why = why.strip_prefix("error: ").unwrap_or(why).to_string();
                        self.errors.push(e.pos.error(format!(
                            "grep: `{re}` is not a regular expression Logferry reads: {why}"
                        )));
                    }
                }
                let rules = |key: &str| -> Vec<(toml::Value, Pos)> {
                    sec.all(key)
                        .map(|e| {
                            let (k, re) = split_key(&e.value);
                            let mut c = toml::Table::new();
                            c.insert("field".into(), s(&record_key(k)));
                            c.insert("regex".into(), s(re));
                            (toml::Value::Table(c), e.pos.clone())
                        })
                        .collect()
                };
                let (keep, drop) = (rules("regex"), rules("exclude"));
                if op.as_deref().is_some_and(|o| o != "legacy") && !keep.is_empty() && !drop.is_empty() {
                    self.errors.push(
                        sec.pos
                            .error("grep: Regex and Exclude cannot be mixed with Logical_Op (as in Fluent Bit)"),
                    );
                }
                let any = match op.as_deref() {
                    None | Some("legacy") => None,
                    Some("and") => Some(false),
                    Some("or") => Some(true),
                    Some(other) => {
                        self.errors
                            .push(sec.pos.error(format!("grep: Logical_Op `{other}` (legacy, AND, OR)")));
                        None
                    }
                };
                for (action, rules, legacy_any) in [("keep", keep, false), ("drop", drop, true)] {
                    if rules.is_empty() {
                        continue;
                    }
                    let mut t = toml::Table::new();
                    t.insert("type".into(), s("filter"));
                    t.insert("action".into(), s(action));
                    t.insert("match".into(), s(if any.unwrap_or(legacy_any) { "any" } else { "all" }));
                    let mut origins = vec![(String::new(), sec.pos.clone())];
                    let mut conds = Vec::new();
                    for (i, (c, pos)) in rules.into_iter().enumerate() {
                        conds.push(c);
                        origins.push((format!("conditions[{i}]"), pos));
                    }
                    t.insert("conditions".into(), toml::Value::Array(conds));
                    let base = alias(sec).unwrap_or_else(|| format!("filter{n}_grep"));
                    steps.push(Step {
                        name: if action == "keep" {
                            base
                        } else {
                            format!("{base}_exclude")
                        },
                        table: t,
                        origins,
                    });
                }
                if steps.is_empty() {
                    self.errors.push(sec.pos.error("grep without Regex or Exclude"));
                }
                self.check_keys(
                    sec,
                    &what,
                    &["match", "match_regex", "regex", "exclude", "logical_op"],
                    &[],
                );
            }
            "parser" => {
                let key = sec.get("key_name");
                let flag = |tr: &mut Tr, k: &str| match sec.get(k) {
                    Some(e) => is_true(&e.value).unwrap_or_else(|| {
                        tr.errors
                            .push(e.pos.error(format!("{} `{}` is not on/off", e.key, e.value)));
                        false
                    }),
                    None => false,
                };
                let reserve = flag(self, "reserve_data");
                let preserve = flag(self, "preserve_key");
                let names: Vec<&Entry> = sec.all("parser").collect();
                if key.is_none() {
                    self.errors.push(sec.pos.error("parser filter needs `Key_Name`"));
                }
                if names.is_empty() {
                    self.errors.push(sec.pos.error("parser filter needs `Parser`"));
                }
                let base = alias(sec).unwrap_or_else(|| format!("filter{n}_parser"));
                // One transform: the first Parser, then the others as its
                // fallbacks, tried in order as Fluent Bit does.
                let tables: Vec<(toml::Table, &Entry)> = names
                    .iter()
                    .filter_map(|e| self.parser_settings(&e.value, &e.pos).map(|t| (t, *e)))
                    .collect();
                if let (Some(key), true) = (key, tables.len() == names.len() && !names.is_empty()) {
                    let mut it = tables.into_iter();
                    let (mut t, first) = it.next().expect("not empty");
                    t.insert("type".into(), s("parse"));
                    t.insert("field".into(), s(&record_key(&key.value)));
                    t.insert("reserve_data".into(), toml::Value::Boolean(reserve));
                    t.insert("keep_original".into(), toml::Value::Boolean(preserve));
                    let mut origins = vec![
                        (String::new(), sec.pos.clone()),
                        ("field".to_string(), key.pos.clone()),
                        ("parser".to_string(), first.pos.clone()),
                        ("pattern".to_string(), first.pos.clone()),
                        ("time_format".to_string(), first.pos.clone()),
                        ("time_key".to_string(), first.pos.clone()),
                    ];
                    let rest: Vec<toml::Value> = it
                        .enumerate()
                        .map(|(i, (alt, e))| {
                            for k in ["parser", "pattern", "time_format", "time_key"] {
                                origins.push((format!("fallback[{i}].{k}"), e.pos.clone()));
                            }
                            toml::Value::Table(alt)
                        })
                        .collect();
                    if !rest.is_empty() {
                        origins.push(("fallback".to_string(), names[1].pos.clone()));
                        t.insert("fallback".into(), toml::Value::Array(rest));
                    }
                    steps.push(Step {
                        name: base,
                        table: t,
                        origins,
                    });
                }
                self.check_keys(
                    sec,
                    &what,
                    &[
                        "match",
                        "match_regex",
                        "key_name",
                        "parser",
                        "reserve_data",
                        "preserve_key",
                    ],
                    &[],
                );
            }
            "multiline" => steps.extend(self.multiline_filter(n, sec, &what)),
            "" => {
                self.errors.push(sec.pos.error("[FILTER] without `Name`"));
                return None;
            }
            other => {
                self.errors.push(sec.pos.error(format!(
                    "filter plugin `{other}` is not supported by --fluent-bit-config (supported: {FILTERS})"
                )));
                return None;
            }
        }
        let Some(matches) = matches else {
            // Fluent Bit ignores a filter without Match; so do we, loudly.
            self.notes.push(format!(
                "{}:{}: {what} has no Match and applies to nothing (as in Fluent Bit)",
                sec.pos.file, sec.pos.line
            ));
            return None;
        };
        Some(Filter {
            matches,
            pos: sec.pos.clone(),
            steps,
        })
    }

    /// `[FILTER] Name multiline` with `Mode partial_message` (Docker's split
    /// lines joined): the `partial_message` transform. `Mode parser` is not
    /// mapped: Fluent Bit's multiline parsers are not Logferry's `multiline`
    /// rules, and a silent approximation would join other lines.
    fn multiline_filter(&mut self, n: usize, sec: &Section, what: &str) -> Option<Step> {
        self.check_keys(
            sec,
            what,
            &["match", "match_regex", "mode", "multiline.key_content", "flush_ms"],
            &[
                "buffer",
                "debug_flush",
                "emitter_name",
                "emitter_storage.type",
                "emitter_mem_buf_limit",
            ],
        );
        match sec.get("mode").map(|e| (e.value.to_ascii_lowercase(), e.pos.clone())) {
            Some((m, _)) if m == "partial_message" => {}
            Some((m, pos)) => {
                self.errors.push(pos.error(format!(
                    "multiline: Mode `{m}` is not supported, only `partial_message` (for stack traces use Logferry's \
                     `multiline` transform with a `preset` or `start_pattern`)"
                )));
                return None;
            }
            None => {
                self.errors.push(sec.pos.error(
                    "multiline: only `Mode partial_message` is supported (Fluent Bit's default, Mode parser with \
                     multiline.parser, is not; use Logferry's `multiline` transform)",
                ));
                return None;
            }
        }
        let mut t = toml::Table::new();
        t.insert("type".into(), s("partial_message"));
        let mut origins = vec![(String::new(), sec.pos.clone())];
        if let Some(e) = sec.get("multiline.key_content") {
            t.insert("key".into(), s(&record_key(&e.value)));
            origins.push(("key".into(), e.pos.clone()));
        }
        if let Some(e) = sec.get("flush_ms") {
            match e.value.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => {
                    t.insert("flush_timeout".into(), s(&format!("{ms}ms")));
                    origins.push(("flush_timeout".into(), e.pos.clone()));
                }
                _ => self.errors.push(e.pos.error(format!(
                    "multiline: flush_ms `{}` is not a number of milliseconds above 0",
                    e.value
                ))),
            }
        }
        Some(Step {
            name: alias(sec).unwrap_or_else(|| format!("filter{n}_multiline")),
            table: t,
            origins,
        })
    }
}
