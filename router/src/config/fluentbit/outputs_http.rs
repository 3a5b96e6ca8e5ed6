//! `[OUTPUT] Name http` and `Name loki`: both become the `http` sink.
//!
//! Why a file of their own: these two build a URI from `Host`, `Port`,
//! `URI` and `tls`, and their auth from `http_User`/`http_Passwd`, which the
//! AWS outputs never do. Fluent Bit's defaults are kept where Logferry can
//! honour them (`Format` has none it can: Fluent Bit's default is msgpack,
//! which no JSON intake reads, so it must be named).

use super::syntax::{Entry, Pos, Section};
use super::translate::Tr;
use super::values::{is_true, s};

type Keys = Vec<(&'static str, toml::Value, Pos)>;

/// The keys `endpoint_keys` and `compress_key` map.
const ENDPOINT_KEYS: [&str; 9] = [
    "host",
    "port",
    "uri",
    "tls",
    "tls.verify",
    "tls.ca_file",
    "http_user",
    "http_passwd",
    "compress",
];

impl Tr {
    /// `Host`, `Port`, `URI` and `tls` as one `uri`; `tls.verify` and
    /// `tls.ca_file` as `tls`; `http_User`/`http_Passwd` as basic auth.
    fn endpoint_keys(&mut self, sec: &Section, default_port: u16, default_path: &str, out: &mut Keys) {
        let tls = sec.get("tls").and_then(|e| is_true(&e.value)).unwrap_or(false);
        let host = sec
            .get("host")
            .map(|e| e.value.clone())
            .unwrap_or_else(|| "127.0.0.1".into());
        let port = match sec.get("port") {
            Some(e) => match e.value.parse::<u16>() {
                Ok(p) => p,
                Err(_) => {
                    self.errors
                        .push(e.pos.error(format!("Port `{}` is not a port number", e.value)));
                    default_port
                }
            },
            None if tls && default_port == 80 => 443,
            None => default_port,
        };
        let path = sec
            .get("uri")
            .map(|e| e.value.clone())
            .unwrap_or_else(|| default_path.into());
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        let scheme = if tls { "https" } else { "http" };
        let at = sec
            .get("host")
            .or(sec.get("uri"))
            .map(|e| e.pos.clone())
            .unwrap_or_else(|| sec.pos.clone());
        out.push(("uri", s(&format!("{scheme}://{host}:{port}{path}")), at));
        let mut tls_t = toml::Table::new();
        if let Some(e) = sec.get("tls.verify")
            && is_true(&e.value) == Some(false)
        {
            tls_t.insert("verify".into(), toml::Value::Boolean(false));
        }
        if let Some(e) = sec.get("tls.ca_file") {
            tls_t.insert("ca_file".into(), s(&e.value));
        }
        if !tls_t.is_empty() {
            let pos = sec.get("tls.ca_file").or(sec.get("tls.verify")).map(|e| e.pos.clone());
            out.push(("tls", toml::Value::Table(tls_t), pos.unwrap_or_else(|| sec.pos.clone())));
        }
        match (sec.get("http_user"), sec.get("http_passwd")) {
            (Some(u), p) => {
                let mut a = toml::Table::new();
                a.insert("strategy".into(), s("basic"));
                a.insert("user".into(), s(&u.value));
                a.insert("password".into(), s(p.map(|p| p.value.as_str()).unwrap_or("")));
                out.push(("auth", toml::Value::Table(a), u.pos.clone()));
            }
            (None, Some(p)) => self.errors.push(p.pos.error("http_Passwd without http_User")),
            (None, None) => {}
        }
    }

    /// `compress gzip`.
    fn compress_key(&mut self, sec: &Section, out: &mut Keys) {
        if let Some(e) = sec.get("compress") {
            match e.value.to_ascii_lowercase().as_str() {
                "gzip" => out.push(("compression", s("gzip"), e.pos.clone())),
                "" | "none" | "off" => {}
                other => self.errors.push(e.pos.error(format!(
                    "compress `{other}` is not supported by Logferry's http sink (gzip or none)"
                ))),
            }
        }
    }

    /// `[OUTPUT] Name http`: the sink keys it sets.
    pub(super) fn http_output(&mut self, sec: &Section, what: &str, common: &[&str]) -> Keys {
        let mut out = Vec::new();
        self.endpoint_keys(sec, 80, "/", &mut out);
        self.compress_key(sec, &mut out);
        match sec.get("format") {
            Some(e) => match e.value.to_ascii_lowercase().as_str() {
                "json" => out.push(("encoding", s("json_array"), e.pos.clone())),
                "json_lines" | "json_stream" => out.push(("encoding", s("ndjson"), e.pos.clone())),
                other => self.errors.push(e.pos.error(format!(
                    "Format `{other}` is not supported by Logferry's http sink (json, json_lines or json_stream)"
                ))),
            },
            None => self.errors.push(sec.pos.error(format!(
                "{what} needs `Format json` or `Format json_lines`: Fluent Bit's default, msgpack, is not sent by Logferry"
            ))),
        }
        let mut headers = toml::Table::new();
        let mut first: Option<Pos> = None;
        for e in sec.all("header") {
            match header(e) {
                Ok((k, v)) => {
                    first.get_or_insert_with(|| e.pos.clone());
                    headers.insert(k, s(&v));
                }
                Err(err) => self.errors.push(err),
            }
        }
        if let Some(pos) = first {
            out.push(("headers", toml::Value::Table(headers), pos));
        }
        // Fluent Bit's http output adds `date` (json_date_key) unless it is
        // set to false.
        let key = match sec.get("json_date_key") {
            None => "date".to_string(),
            Some(e) if is_true(&e.value) == Some(false) => String::new(),
            Some(e) => e.value.clone(),
        };
        out.push((
            "timestamp_key",
            s(&key),
            sec.get("json_date_key")
                .map(|e| e.pos.clone())
                .unwrap_or_else(|| sec.pos.clone()),
        ));
        let mut known = common.to_vec();
        known.extend(ENDPOINT_KEYS);
        known.extend(["format", "header", "json_date_key"]);
        self.check_keys(
            sec,
            what,
            &known,
            &["json_date_format", "log_response_payload", "allow_duplicated_headers"],
        );
        if sec
            .get("json_date_format")
            .is_some_and(|e| !e.value.eq_ignore_ascii_case("iso8601"))
        {
            self.notes.push(format!(
                "{}:{}: json_date_format of {what}: Logferry writes the date as an ISO 8601 string",
                sec.pos.file, sec.pos.line
            ));
        }
        out
    }

    /// `[OUTPUT] Name loki`: the sink keys it sets (`framing = "loki"`).
    pub(super) fn loki_output(&mut self, sec: &Section, what: &str, common: &[&str]) -> Keys {
        let mut out = vec![("framing", s("loki"), sec.pos.clone())];
        self.endpoint_keys(sec, 3100, "/loki/api/v1/push", &mut out);
        self.compress_key(sec, &mut out);
        let mut labels = toml::Table::new();
        let mut at: Option<Pos> = None;
        for e in sec.all("labels").chain(sec.all("label_keys")) {
            at.get_or_insert_with(|| e.pos.clone());
            for item in e.value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                match loki_label(item) {
                    Some((k, v)) => {
                        labels.insert(k, s(&v));
                    }
                    None => self.errors.push(e.pos.error(format!(
                        "label `{item}` of {what} is not `name=value`, `name=$key` or `$key` (`$a['b']` for nested keys)"
                    ))),
                }
            }
        }
        if labels.is_empty() {
            // Fluent Bit's default when no label is given.
            labels.insert("job".into(), s("fluent-bit"));
        }
        out.push((
            "labels",
            toml::Value::Table(labels),
            at.unwrap_or_else(|| sec.pos.clone()),
        ));
        let mut headers = toml::Table::new();
        if let Some(e) = sec.get("tenant_id") {
            headers.insert("X-Scope-OrgID".into(), s(&e.value));
            out.push(("headers", toml::Value::Table(headers), e.pos.clone()));
        }
        if let Some(e) = sec.get("bearer_token") {
            let mut a = toml::Table::new();
            a.insert("strategy".into(), s("bearer"));
            a.insert("token".into(), s(&e.value));
            if sec.get("http_user").is_some() {
                self.errors
                    .push(e.pos.error("bearer_token and http_User both set: choose one"));
            } else {
                out.push(("auth", toml::Value::Table(a), e.pos.clone()));
            }
        }
        if let Some(e) = sec.get("line_format")
            && !e.value.eq_ignore_ascii_case("json")
        {
            self.errors.push(e.pos.error(format!(
                "line_format `{}` of {what} is not supported by Logferry (json; or log_key for one field's text)",
                e.value
            )));
        }
        if let Some(e) = sec.get("drop_single_key") {
            self.notes.push(format!(
                "{}:{}: drop_single_key of {what}: not applied, the line is the record as JSON (set log_key for one field's text)",
                e.pos.file, e.pos.line
            ));
        }
        // Fluent Bit's loki output adds no time key: the value carries the time.
        out.push(("timestamp_key", s(""), sec.pos.clone()));
        let mut known = common.to_vec();
        known.extend(ENDPOINT_KEYS);
        known.extend(["labels", "label_keys", "tenant_id", "bearer_token", "line_format"]);
        self.check_keys(sec, what, &known, &["drop_single_key"]);
        out
    }
}

/// `Header X-Key value` (value may hold spaces).
fn header(e: &Entry) -> Result<(String, String), crate::config::ConfigError> {
    let v = e.value.trim();
    match v.split_once(char::is_whitespace) {
        Some((k, val)) if !k.is_empty() => Ok((k.to_string(), val.trim().to_string())),
        _ => Err(e.pos.error(format!("Header `{v}` is not `Name value`"))),
    }
}

/// A `$key`, `$a['b']['c']` record accessor as a template field path.
fn accessor(v: &str) -> Option<String> {
    let rest = v.strip_prefix('$')?;
    let (head, mut tail) = match rest.find('[') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if head.is_empty()
        || !head
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return None;
    }
    let mut path = head.to_string();
    while !tail.is_empty() {
        let inner = tail.strip_prefix("['")?;
        let end = inner.find("']")?;
        path.push('.');
        path.push_str(&inner[..end]);
        tail = &inner[end + 2..];
    }
    Some(path)
}

/// One Fluent Bit Loki label: `name=value`, `name=$key`, or `$key` (the
/// label is named after the last key, as Fluent Bit does).
fn loki_label(item: &str) -> Option<(String, String)> {
    match item.split_once('=') {
        Some((k, v)) => {
            let (k, v) = (k.trim(), v.trim());
            let value = match accessor(v) {
                Some(path) => format!("{{{path}}}"),
                None if !v.starts_with('$') && !v.contains(['{', '}']) => v.to_string(),
                None => return None,
            };
            Some((k.to_string(), value))
        }
        None => {
            let path = accessor(item)?;
            let name = path.rsplit('.').next().unwrap_or(&path).replace(['-', '.'], "_");
            Some((name, format!("{{{path}}}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loki_labels_as_fluent_bit_writes_them() {
        assert_eq!(loki_label("job=fluent-bit"), Some(("job".into(), "fluent-bit".into())));
        assert_eq!(loki_label("level=$level"), Some(("level".into(), "{level}".into())));
        assert_eq!(
            loki_label("$kubernetes['namespace_name']"),
            Some(("namespace_name".into(), "{kubernetes.namespace_name}".into()))
        );
        assert_eq!(
            loki_label("pod=$kubernetes['pod_name']"),
            Some(("pod".into(), "{kubernetes.pod_name}".into()))
        );
        assert_eq!(
            loki_label("$container_name"),
            Some(("container_name".into(), "{container_name}".into()))
        );
        assert_eq!(loki_label("x=$a['b"), None);
        assert_eq!(loki_label("x={y}"), None);
        assert_eq!(loki_label("$"), None);
    }
}
