//! `[PARSER]` sections (from `[SERVICE] Parsers_File`) as the settings of a
//! `parse` transform. Only parsers a `parser` filter names are mapped; the
//! others (a stock parsers.conf has dozens) are read and left alone.

use super::syntax::{Pos, Section};
use super::translate::Tr;
use super::values::{is_true, s};

/// Onigmo (Ruby) named groups `(?<name>...)` -> Rust's `(?P<name>...)`;
/// `(?<=` and `(?<!` (look-behind) are left for the compiler to refuse.
pub(super) fn onigmo_to_rust(re: &str) -> String {
    let mut out = String::with_capacity(re.len() + 8);
    let b = re.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            // An escaped character is copied whole.
            let end = re[i + 1..].chars().next().map_or(i + 1, |c| i + 1 + c.len_utf8());
            out.push_str(&re[i..end]);
            i = end;
            continue;
        }
        if re[i..].starts_with("(?<") && !re[i..].starts_with("(?<=") && !re[i..].starts_with("(?<!") {
            out.push_str("(?P<");
            i += 3;
            continue;
        }
        let c = re[i..].chars().next().unwrap_or_default();
        out.push(c);
        i += c.len_utf8().max(1);
    }
    out
}

/// strptime as Fluent Bit writes it -> chrono: `%L` (fraction of a second)
/// is chrono's `%f`, and `.%L` its `%.f`.
pub(super) fn strptime_to_chrono(f: &str) -> String {
    f.replace(".%L", "%.f").replace("%L", "%f")
}

impl Tr {
    /// The `parse` transform settings of the parser `name`, or `None` (with
    /// an error at `used_at`, the filter's `Parser` line) when it is missing
    /// or cannot be expressed.
    pub(super) fn parser_settings(&mut self, name: &str, used_at: &Pos) -> Option<toml::Table> {
        let Some(sec) = self
            .parsers
            .iter()
            .rev()
            .find(|p| p.get("name").is_some_and(|e| e.value == name))
            .cloned()
        else {
            self.errors.push(used_at.error(format!(
                "parser `{name}` is not defined (no [PARSER] with this Name in a [SERVICE] Parsers_File)"
            )));
            return None;
        };
        let what = format!("[PARSER] {name}");
        let mut t = toml::Table::new();
        let mut ok = true;
        let format = sec.get("format").map(|e| (e.value.to_ascii_lowercase(), e.pos.clone()));
        match format.as_ref().map(|(f, p)| (f.as_str(), p)) {
            Some(("json", _)) => {
                t.insert("parser".into(), s("json"));
            }
            Some(("logfmt", _)) => {
                t.insert("parser".into(), s("logfmt"));
            }
            Some(("regex", _)) => match sec.get("regex") {
                Some(e) => {
                    let re = onigmo_to_rust(&e.value);
                    match regex::Regex::new(&re) {
                        Ok(_) => {
                            t.insert("parser".into(), s("regex"));
                            t.insert("pattern".into(), s(&re));
                        }
                        Err(err) => {
                            let text = err.to_string();
                            let why = text.lines().last().unwrap_or_default().trim();
                            let why = why.strip_prefix("error: ").unwrap_or(why).to_string();
                            self.errors.push(e.pos.error(format!(
                                "{what}: `{}` is not a regular expression Logferry reads (Onigmo-only syntax?): {why}",
                                e.value
                            )));
                            ok = false;
                        }
                    }
                }
                None => {
                    self.errors
                        .push(sec.pos.error(format!("{what}: Format regex needs `Regex`")));
                    ok = false;
                }
            },
            Some((other, pos)) => {
                self.errors.push(pos.error(format!(
                    "{what}: Format `{other}` is not supported by Logferry (json, logfmt, regex)"
                )));
                ok = false;
            }
            None => {
                self.errors.push(sec.pos.error(format!("{what} without `Format`")));
                ok = false;
            }
        }
        if let Some(e) = sec.get("time_key") {
            t.insert("time_key".into(), s(&e.value));
        }
        if let Some(e) = sec.get("time_format") {
            let f = strptime_to_chrono(&e.value);
            match f.parse::<crate::sources::file::parse::TimeFormat>() {
                Ok(_) => {
                    t.insert("time_format".into(), s(&f));
                }
                Err(err) => {
                    self.errors.push(e.pos.error(format!("{what}: Time_Format: {err}")));
                    ok = false;
                }
            }
        }
        // Fluent Bit drops the time field unless Time_Keep is on.
        let keep = match sec.get("time_keep") {
            Some(e) => match is_true(&e.value) {
                Some(b) => b,
                None => {
                    self.errors
                        .push(e.pos.error(format!("Time_Keep `{}` is not on/off", e.value)));
                    false
                }
            },
            None => false,
        };
        t.insert("keep_time_key".into(), toml::Value::Boolean(keep));
        if let Some(e) = sec.get("types") {
            self.notes.push(format!(
                "{}:{}: Types of {what} not applied: parsed values stay as the parser reads them (strings for regex and logfmt)",
                e.pos.file, e.pos.line
            ));
        }
        self.check_parser_keys(&sec, &what);
        ok.then_some(t)
    }

    fn check_parser_keys(&mut self, sec: &Section, what: &str) {
        let known = ["format", "regex", "time_key", "time_format", "time_keep", "types"];
        self.check_keys(sec, what, &known, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onigmo_groups_become_rust_groups() {
        assert_eq!(
            onigmo_to_rust(r"^(?<host>[^ ]*) \(?<x>\) (?<=a)(?<!b)(?:c)(?P<d>e)"),
            r"^(?P<host>[^ ]*) \(?<x>\) (?<=a)(?<!b)(?:c)(?P<d>e)"
        );
        assert_eq!(onigmo_to_rust("é(?<ü>.)"), "é(?P<ü>.)");
        assert_eq!(strptime_to_chrono("%d/%b/%Y:%H:%M:%S.%L %z"), "%d/%b/%Y:%H:%M:%S%.f %z");
    }
}
