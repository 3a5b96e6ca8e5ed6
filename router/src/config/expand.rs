//! `${VAR}` / `${VAR:-default}` expansion in config string values.
//!
//! Why on values and not on the raw text: a value that contains a quote or a
//! newline can then never change the TOML structure, and errors point at the
//! key that used the variable. Lookups go through a function so tests (and
//! `logferry validate`) never mutate the process environment.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ExpandError {
    #[error("environment variable `{0}` is not set (use `${{{0}:-default}}` to give a default)")]
    Unset(String),
    #[error("unterminated `${{` in `{0}`")]
    Unterminated(String),
    #[error("invalid variable name `{0}`")]
    BadName(String),
}

/// Expands `${VAR}`, `${VAR:-default}` (default used when unset or empty) and
/// `$$` (a literal `$`). A `$` followed by anything else is kept as is.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    if !input.contains('$') {
        return Ok(input.to_string());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body_start) = after.strip_prefix('{') {
            let end = body_start
                .find('}')
                .ok_or_else(|| ExpandError::Unterminated(input.to_string()))?;
            let body = &body_start[..end];
            let (name, default) = match body.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (body, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(ExpandError::BadName(name.to_string()));
            }
            match (lookup(name).filter(|v| !v.is_empty() || default.is_none()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(ExpandError::Unset(name.to_string())),
            }
            rest = &body_start[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "REGION" => Some("eu-west-1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_defaults_and_escapes() {
        assert_eq!(expand("a-${REGION}-b", &env).unwrap(), "a-eu-west-1-b");
        assert_eq!(expand("${MISSING:-us-east-1}", &env).unwrap(), "us-east-1");
        assert_eq!(expand("${EMPTY:-x}", &env).unwrap(), "x");
        assert_eq!(expand("${EMPTY}", &env).unwrap(), "");
        assert_eq!(expand("$${REGION} costs $5", &env).unwrap(), "${REGION} costs $5");
        assert_eq!(expand("{ecs_cluster}/%Y", &env).unwrap(), "{ecs_cluster}/%Y");
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(expand("${NOPE}", &env), Err(ExpandError::Unset("NOPE".into())));
        assert!(matches!(expand("${REGION", &env), Err(ExpandError::Unterminated(_))));
        assert!(matches!(expand("${A B}", &env), Err(ExpandError::BadName(_))));
    }
}
