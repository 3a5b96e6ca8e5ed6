//! The condition language shared by `filter`, `route` and `throttle`.
//!
//! Why one module: a user who learnt `{ field = "level", level_at_least =
//! "warn" }` in a filter must be able to paste it into a route or a
//! throttle's `exclude` and get the same answer, with the same config
//! errors. Conditions read fields through `Batch::lookup` / `has_field`,
//! which scan the record text (and the batch's enrichment fragments), so a
//! test never builds a `serde_json::Value`.

use regex::Regex;
use serde::Deserialize;

use crate::confdiag::{Ctx, Seg};
use crate::event::Batch;

/// The field a `level_at_least` test reads when it names none.
pub const DEFAULT_LEVEL_FIELD: &str = "level";

/// One test on one field (dotted paths reach into objects:
/// `kubernetes.namespace_name`). Exactly one test per condition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Required, except that `level_at_least` reads `level` by default.
    #[serde(default)]
    pub field: Option<String>,
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    #[default]
    All,
    Any,
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

impl Condition {
    /// The field this condition reads.
    pub fn field(&self) -> &str {
        match &self.field {
            Some(f) => f,
            None => DEFAULT_LEVEL_FIELD,
        }
    }

    /// Reports what is wrong with this condition at `p`.
    pub fn validate(&self, ctx: &mut Ctx<'_>, p: &[Seg]) -> bool {
        let mut ok = true;
        let tests = [
            self.equals.is_some(),
            self.regex.is_some(),
            self.exists.is_some(),
            self.level_at_least.is_some(),
        ];
        if tests.iter().filter(|t| **t).count() != 1 {
            ctx.error(p, "needs exactly one of equals, regex, exists, level_at_least");
            ok = false;
        }
        match &self.field {
            Some(f) if f.is_empty() => {
                ctx.error(p, "`field` must not be empty");
                ok = false;
            }
            None if self.level_at_least.is_none() => {
                ctx.error(p, "missing `field` (only `level_at_least` defaults to `level`)");
                ok = false;
            }
            _ => {}
        }
        if let Some(l) = &self.level_at_least
            && level_rank(l).is_none()
        {
            let mut p = p.to_vec();
            p.push(Seg::Key("level_at_least".into()));
            ctx.error(
                &p,
                format!("unknown level `{l}` (trace, debug, info, warn, error, fatal)"),
            );
            ok = false;
        }
        ok
    }

    /// Does the condition hold for record `i` of `batch`?
    pub fn holds(&self, batch: &Batch, i: usize) -> bool {
        let field = self.field();
        if let Some(want) = self.exists {
            return batch.has_field(i, field) == want;
        }
        let Some(v) = batch.lookup(i, field) else {
            return false;
        };
        if let Some(e) = &self.equals {
            return v == e.as_str();
        }
        if let Some(r) = &self.regex {
            return r.is_match(&v);
        }
        if let Some(l) = &self.level_at_least {
            return matches!((level_rank(&v), level_rank(l)), (Some(a), Some(b)) if a >= b);
        }
        false
    }
}

/// Do `all` (or `any`) of `conditions` hold for record `i`?
pub fn holds_all_or_any(conditions: &[Condition], m: Match, batch: &Batch, i: usize) -> bool {
    match m {
        Match::All => conditions.iter().all(|c| c.holds(batch, i)),
        Match::Any => conditions.iter().any(|c| c.holds(batch, i)),
    }
}

/// Validates a list of conditions found under `base.key`.
pub fn validate_list(ctx: &mut Ctx<'_>, base: &[Seg], key: &str, conditions: &[Condition]) -> bool {
    let mut ok = true;
    let mut p = crate::confdiag::key(base, key);
    if conditions.is_empty() {
        ctx.error(&p, "must hold at least one condition");
        ok = false;
    }
    for (i, c) in conditions.iter().enumerate() {
        p.push(Seg::Index(i));
        ok &= c.validate(ctx, &p);
        p.pop();
    }
    ok
}

/// A condition standing alone (a route, a throttle's `exclude`): one test
/// written inline, `{ field = "level", level_at_least = "error" }`, or
/// `{ all = [...] }` / `{ any = [...] }` of filter-style conditions.
///
/// The single-test keys repeat [`Condition`]'s because serde's `flatten`
/// would lose `deny_unknown_fields` and the error positions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(default)]
    pub field: Option<String>,
    pub equals: Option<String>,
    #[serde(default, with = "opt_regex")]
    pub regex: Option<Regex>,
    pub exists: Option<bool>,
    pub level_at_least: Option<String>,
    /// Every condition must hold.
    pub all: Option<Vec<Condition>>,
    /// At least one condition must hold.
    pub any: Option<Vec<Condition>>,
}

/// A checked [`RuleConfig`].
#[derive(Debug, Clone)]
pub struct Rule {
    pub conditions: Vec<Condition>,
    pub match_: Match,
}

impl RuleConfig {
    /// The rule, or `None` after reporting what is wrong at `p`.
    pub fn build(&self, ctx: &mut Ctx<'_>, p: &[Seg]) -> Option<Rule> {
        let single = self.field.is_some()
            || self.equals.is_some()
            || self.regex.is_some()
            || self.exists.is_some()
            || self.level_at_least.is_some();
        match (single, &self.all, &self.any) {
            (false, Some(list), None) => validate_list(ctx, p, "all", list).then(|| Rule {
                conditions: list.clone(),
                match_: Match::All,
            }),
            (false, None, Some(list)) => validate_list(ctx, p, "any", list).then(|| Rule {
                conditions: list.clone(),
                match_: Match::Any,
            }),
            (true, None, None) => {
                let c = Condition {
                    field: self.field.clone(),
                    equals: self.equals.clone(),
                    regex: self.regex.clone(),
                    exists: self.exists,
                    level_at_least: self.level_at_least.clone(),
                };
                c.validate(ctx, p).then(|| Rule {
                    conditions: vec![c],
                    match_: Match::All,
                })
            }
            _ => {
                ctx.error(
                    p,
                    "needs one test (`field` with one of equals, regex, exists, level_at_least), \
                     or `all` or `any` with a list of them",
                );
                None
            }
        }
    }
}

impl Rule {
    pub fn holds(&self, batch: &Batch, i: usize) -> bool {
        holds_all_or_any(&self.conditions, self.match_, batch, i)
    }

    /// `level >= error`, `all of 2 condition(s)`: for `logferry validate`.
    pub fn describe(&self) -> String {
        match (self.conditions.as_slice(), self.match_) {
            ([c], _) => {
                let test = if let Some(e) = &c.equals {
                    format!("== {e:?}")
                } else if let Some(r) = &c.regex {
                    format!("=~ /{}/", r.as_str())
                } else if let Some(x) = c.exists {
                    if x { "exists".into() } else { "absent".into() }
                } else if let Some(l) = &c.level_at_least {
                    format!(">= {l}")
                } else {
                    String::new()
                };
                format!("{} {test}", c.field())
            }
            (list, Match::All) => format!("all of {} condition(s)", list.len()),
            (list, Match::Any) => format!("any of {} condition(s)", list.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confdiag::path;
    use crate::event::batch_of;

    fn rule(text: &str) -> Result<Rule, Vec<String>> {
        let c: RuleConfig = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let lookup = |_: &str| None;
        let mut ctx = Ctx::for_tests(&lookup);
        c.build(&mut ctx, &path(&["r"])).ok_or_else(|| ctx.messages())
    }

    #[test]
    fn single_all_and_any_rules() {
        let b = batch_of(&[
            r#"{"level":"error","tag":"audit.login"}"#,
            r#"{"level":"info","tag":"audit.read"}"#,
            r#"{"level":"fatal"}"#,
        ]);
        let hits = |r: &Rule| (0..b.len()).filter(|&i| r.holds(&b, i)).collect::<Vec<_>>();
        let r = rule("level_at_least = \"error\"").unwrap();
        assert_eq!(hits(&r), [0, 2], "level_at_least reads `level` by default");
        assert_eq!(r.describe(), "level >= error");
        let r = rule("field = \"tag\"\nregex = \"^audit\"").unwrap();
        assert_eq!(hits(&r), [0, 1]);
        let r = rule("all = [{ field = \"tag\", regex = \"^audit\" }, { level_at_least = \"error\" }]").unwrap();
        assert_eq!(hits(&r), [0]);
        let r = rule("any = [{ field = \"tag\", equals = \"audit.read\" }, { level_at_least = \"fatal\" }]").unwrap();
        assert_eq!(hits(&r), [1, 2]);
    }

    #[test]
    fn malformed_rules_are_reported() {
        let e = rule("field = \"a\"\nall = [{ field = \"b\", exists = true }]").unwrap_err();
        assert!(e[0].contains("needs one test"), "{e:?}");
        assert!(rule("").unwrap_err()[0].contains("needs one test"));
        let e = rule("equals = \"x\"").unwrap_err();
        assert!(e[0].contains("missing `field`"), "{e:?}");
        let e = rule("all = []").unwrap_err();
        assert!(e[0].contains("`r.all`: must hold at least one condition"), "{e:?}");
        let e = rule("any = [{ field = \"a\", equals = \"x\", exists = true }]").unwrap_err();
        assert!(e[0].starts_with("`r.any[0]`: needs exactly one of"), "{e:?}");
        let e = rule("level_at_least = \"loud\"").unwrap_err();
        assert!(e[0].contains("unknown level `loud`"), "{e:?}");
        assert!(rule("colour = \"red\"").unwrap_err()[0].contains("unknown field `colour`"));
    }
}
