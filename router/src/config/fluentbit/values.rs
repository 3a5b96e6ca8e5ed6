//! Fluent Bit values in Logferry's terms: sizes, times, booleans, record
//! accessors and the templates of the outputs.

use super::super::ConfigError;
use super::syntax::Pos;

/// A TOML string; `$` doubled because the loader expands `${...}` again.
pub(super) fn s(v: &str) -> toml::Value {
    toml::Value::String(v.replace('$', "$$"))
}

pub(super) fn is_true(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// Fluent Bit sizes: `5M`, `50MB`, `1.5G`, `4096` (K = 1000, as Fluent Bit counts).
pub(super) fn fb_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        _ => return None,
    };
    let bytes = n * mult;
    (bytes.is_finite() && bytes >= 0.0).then_some(bytes as u64)
}

/// Fluent Bit times: `10m`, `1h`, `30s`, `5` (seconds), `0.5`.
pub(super) fn fb_seconds(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, mult) = match v.char_indices().last() {
        Some((i, c @ ('s' | 'S' | 'm' | 'M' | 'h' | 'H' | 'd' | 'D'))) => (
            &v[..i],
            match c.to_ascii_lowercase() {
                's' => 1.0,
                'm' => 60.0,
                'h' => 3600.0,
                _ => 86400.0,
            },
        ),
        _ => (v, 1.0),
    };
    let n: f64 = num.trim().parse().ok()?;
    let secs = n * mult;
    (secs.is_finite() && secs >= 0.0).then_some(secs)
}

pub(super) fn duration(secs: f64) -> String {
    format!("{}ms", (secs * 1000.0).round() as u64)
}

/// An endpoint as our sinks take it: with a scheme.
pub(super) fn endpoint(v: &str) -> String {
    if v.contains("://") {
        v.to_string()
    } else {
        format!("https://{v}")
    }
}

/// `$kubernetes['labels']['app']` (record accessor) or `log` -> a dotted path.
pub(super) fn record_key(v: &str) -> String {
    let Some(rest) = v.strip_prefix('$') else {
        return v.to_string();
    };
    rest.replace("']['", ".").replace("['", ".").replace("']", "")
}

/// CloudWatch's `$(tag)`, `$(ecs_task_id)`, `$(kubernetes['pod_name'])` -> `{...}`.
pub(super) fn cw_template(v: &str, pos: &Pos) -> Result<String, ConfigError> {
    if v.contains(['{', '}']) {
        return Err(pos.error(format!(
            "`{v}`: `{{` and `}}` mark fields in Logferry templates and cannot be used literally"
        )));
    }
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find("$(") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find(')') else {
            return Err(pos.error(format!("unclosed `$(` in `{v}`")));
        };
        let name = &after[..end];
        out.push('{');
        if name.starts_with("tag[") {
            out.push_str(&tag_part(name, v, pos)?);
        } else {
            out.push_str(&record_key(&format!("${name}")));
        }
        out.push('}');
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `s3_key_format` -> our `key_prefix`: `$TAG` -> `{tag}`, strftime kept, the
/// part after the last `/` (the object name) is Logferry's own.
pub(super) fn s3_key_prefix(v: &str, pos: &Pos) -> Result<String, ConfigError> {
    if v.contains(['{', '}']) {
        return Err(pos.error(format!(
            "`{v}`: `{{` and `}}` mark fields in Logferry key templates and cannot be used literally"
        )));
    }
    let trimmed = v.trim_start_matches('/');
    let prefix = match trimmed.rfind('/') {
        Some(i) => &trimmed[..=i],
        None => "",
    };
    for unsupported in ["$UUID", "$INDEX"] {
        if prefix.contains(unsupported) {
            return Err(pos.error(format!(
                "`{v}`: `{unsupported}` is supported only in the object name (after the last `/`)"
            )));
        }
    }
    let mut out = String::new();
    let mut rest = prefix;
    while let Some(i) = rest.find("$TAG") {
        out.push_str(&rest[..i]);
        rest = &rest[i + 4..];
        if rest.starts_with('[') {
            let Some(end) = rest.find(']') else {
                return Err(pos.error(format!("unclosed `$TAG[` in `{v}`")));
            };
            out.push('{');
            out.push_str(&tag_part(&rest[..=end], v, pos)?);
            out.push('}');
            rest = &rest[end + 1..];
        } else {
            out.push_str("{tag}");
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `tag[2]` / `[2]` -> `tag[2]`, our template's part of the tag split on `.`.
fn tag_part(part: &str, whole: &str, pos: &Pos) -> Result<String, ConfigError> {
    let digits = part
        .trim_start_matches("tag")
        .trim_start_matches('[')
        .trim_end_matches(']');
    match digits.parse::<usize>() {
        Ok(n) => Ok(format!("tag[{n}]")),
        Err(_) => Err(pos.error(format!("`{whole}`: `{part}` is not a tag part (tag[0], tag[1], ...)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times() {
        assert_eq!(fb_size("5M"), Some(5_000_000));
        assert_eq!(fb_size("1.5k"), Some(1500));
        assert_eq!(fb_size("4096"), Some(4096));
        assert_eq!(fb_size("5 parsecs"), None);
        assert_eq!(fb_seconds("10m"), Some(600.0));
        assert_eq!(fb_seconds("0.5"), Some(0.5));
        assert_eq!(fb_seconds("soon"), None);
    }
}
