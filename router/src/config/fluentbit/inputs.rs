//! `[SERVICE]` and `[INPUT]` sections.

use super::notes::{HARMLESS_SERVICE, INPUTS};
use super::syntax::{Pos, Section};
use super::translate::{HEALTHCHECK_TAG, Tr, alias};
use super::values::{duration, fb_seconds, fb_size, is_true, s};

impl Tr {
    pub(super) fn service(&mut self, sections: &[&Section], flush: &mut Option<f64>) {
        let mut global = toml::Table::new();
        let mut lifecycle = toml::Table::new();
        let mut api_on = None;
        let (mut listen, mut port) = ("0.0.0.0".to_string(), "2020".to_string());
        let mut api_pos = None;
        for sec in sections {
            for e in &sec.entries {
                let k = e.key.to_ascii_lowercase();
                match k.as_str() {
                    "flush" => match fb_seconds(&e.value) {
                        Some(v) if v > 0.0 => *flush = Some(v),
                        _ => self
                            .errors
                            .push(e.pos.error(format!("Flush `{}` is not a time", e.value))),
                    },
                    "grace" => match fb_seconds(&e.value) {
                        Some(v) => {
                            lifecycle.insert("drain_timeout".into(), s(&duration(v)));
                            self.origin("lifecycle.drain_timeout", &e.pos);
                        }
                        None => self
                            .errors
                            .push(e.pos.error(format!("Grace `{}` is not a time", e.value))),
                    },
                    "storage.path" => {
                        global.insert("data_dir".into(), s(&e.value));
                        self.origin("global.data_dir", &e.pos);
                    }
                    "http_server" => match is_true(&e.value) {
                        Some(on) => {
                            api_on = Some(on);
                            api_pos = Some(e.pos.clone());
                        }
                        None => self
                            .errors
                            .push(e.pos.error(format!("HTTP_Server `{}` is not on/off", e.value))),
                    },
                    "http_listen" => listen = e.value.clone(),
                    "http_port" => port = e.value.clone(),
                    "log_level" => self.notes.push(format!(
                        "{}:{}: Log_Level: Logferry's level comes from LOGFERRY_LOG",
                        e.pos.file, e.pos.line
                    )),
                    _ => {}
                }
            }
            self.check_keys(sec, "[SERVICE]", HARMLESS_SERVICE, &["plugins_file"]);
        }
        // `/healthz` is always served: as configured with HTTP_Server On,
        // else on loopback at Fluent Bit's port, so a FireLens container
        // health check finds it without a [SERVICE] section.
        let on = api_on == Some(true);
        if !on {
            listen = "127.0.0.1".to_string();
            self.notes.push(format!(
                "HTTP_Server is not On: /healthz, /readyz and /metrics are served on 127.0.0.1:{port} anyway (FireLens health checks)"
            ));
        }
        let host = if listen.contains(':') {
            format!("[{listen}]")
        } else {
            listen
        };
        let mut api = toml::Table::new();
        api.insert("address".into(), s(&format!("{host}:{port}")));
        self.root.insert("api".into(), toml::Value::Table(api));
        if let Some(pos) = api_pos {
            self.origin("api", &pos);
        }
        if !global.is_empty() {
            self.root.insert("global".into(), toml::Value::Table(global));
        }
        if !lifecycle.is_empty() {
            self.root.insert("lifecycle".into(), toml::Value::Table(lifecycle));
        }
    }

    /// An `[INPUT]`: a source id and table, or `None` when dropped or wrong.
    pub(super) fn input(
        &mut self,
        n: usize,
        sec: &Section,
        mem: &mut Option<(u64, Pos)>,
    ) -> Option<(String, toml::Table)> {
        let name = sec.name();
        let what = format!("[INPUT] {name}");
        if let Some(e) = sec.get("mem_buf_limit") {
            match fb_size(&e.value) {
                Some(b) => {
                    let total = mem.as_ref().map_or(0, |m| m.0) + b;
                    *mem = Some((total, e.pos.clone()));
                }
                None => self
                    .errors
                    .push(e.pos.error(format!("Mem_Buf_Limit `{}` is not a size", e.value))),
            }
        }
        match name.as_str() {
            "forward" => {
                let id = alias(sec).unwrap_or_else(|| format!("input{n}_forward"));
                let base = format!("sources.{id}");
                let mut t = toml::Table::new();
                t.insert("type".into(), s("forward"));
                if let Some(e) = sec.get("unix_path") {
                    t.insert("path".into(), s(&e.value));
                    self.origin(&format!("{base}.path"), &e.pos);
                } else {
                    let listen = sec.get("listen").map_or("0.0.0.0", |e| e.value.as_str());
                    let port = sec.get("port").map_or("24224", |e| e.value.as_str());
                    let host = if listen.contains(':') {
                        format!("[{listen}]")
                    } else {
                        listen.to_string()
                    };
                    t.insert("address".into(), s(&format!("{host}:{port}")));
                    if let Some(e) = sec.get("port").or(sec.get("listen")) {
                        self.origin(&format!("{base}.address"), &e.pos);
                    }
                }
                for (fb, ours) in [
                    ("shared_key", "shared_key"),
                    ("self_hostname", "self_hostname"),
                    ("unix_perm", "unix_perm"),
                ] {
                    if let Some(e) = sec.get(fb) {
                        t.insert(ours.into(), s(&e.value));
                        self.origin(&format!("{base}.{ours}"), &e.pos);
                    }
                }
                if let Some(e) = sec.get("buffer_max_size") {
                    match fb_size(&e.value) {
                        Some(b) => {
                            t.insert("max_frame_size".into(), toml::Value::Integer(b as i64));
                            self.origin(&format!("{base}.max_frame_size"), &e.pos);
                        }
                        None => self
                            .errors
                            .push(e.pos.error(format!("Buffer_Max_Size `{}` is not a size", e.value))),
                    }
                }
                self.origin(&base, &sec.pos);
                self.check_keys(
                    sec,
                    &what,
                    &[
                        "unix_path",
                        "unix_perm",
                        "listen",
                        "port",
                        "shared_key",
                        "self_hostname",
                        "buffer_max_size",
                        "mem_buf_limit",
                    ],
                    &["buffer_chunk_size"],
                );
                Some((id, t))
            }
            "tcp" if sec.get("tag").is_some_and(|e| e.value == HEALTHCHECK_TAG) => {
                // Kept as a listener that answers like in_tcp (see `api.rs`);
                // its records go nowhere, like the generated `[OUTPUT] null`.
                let listen = sec.get("listen").map_or("0.0.0.0", |e| e.value.as_str());
                let port = sec.get("port").map_or("5170", |e| e.value.as_str());
                let host = if listen.contains(':') {
                    format!("[{listen}]")
                } else {
                    listen.to_string()
                };
                let pos = sec
                    .get("port")
                    .or(sec.get("listen"))
                    .map_or(&sec.pos, |e| &e.pos)
                    .clone();
                self.health_tcp = Some((format!("{host}:{port}"), pos));
                self.check_keys(
                    sec,
                    &what,
                    &["tag", "listen", "port", "format"],
                    &["buffer_size", "chunk_size"],
                );
                None
            }
            "" => {
                self.errors.push(sec.pos.error("[INPUT] without `Name`"));
                None
            }
            other => {
                self.errors.push(sec.pos.error(format!(
                    "input plugin `{other}` is not supported by --fluent-bit-config (supported: {INPUTS}); write a Logferry config for other inputs"
                )));
                None
            }
        }
    }
}
