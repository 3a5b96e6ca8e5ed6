//! `[OUTPUT]` sections: each becomes a sink.

use super::notes::OUTPUTS;
use super::syntax::{Entry, Pos, Section};
use super::translate::{HEALTHCHECK_TAG, Output, TagMatch, Tr, alias};
use super::values::{cw_template, duration, endpoint, fb_seconds, fb_size, is_true, s, s3_key_prefix};

impl Tr {
    /// An `[OUTPUT]`: a sink, or `None` when dropped or wrong.
    pub(super) fn output(&mut self, n: usize, sec: &Section, flush: Option<f64>) -> Option<Output> {
        let name = sec.name();
        let what = format!("[OUTPUT] {name}");
        let Some((matches, match_pos)) = TagMatch::of(sec) else {
            self.notes.push(format!(
                "{}:{}: {what} has no Match and receives nothing (as in Fluent Bit)",
                sec.pos.file, sec.pos.line
            ));
            return None;
        };
        let kind = match name.as_str() {
            "cloudwatch_logs" | "cloudwatch" => "cloudwatch_logs",
            "kinesis_firehose" | "firehose" => "firehose",
            "kinesis_streams" => "kinesis_streams",
            "http" | "loki" => "http",
            "s3" => "s3",
            "stdout" => "stdout",
            "null" if matches == TagMatch::Glob(HEALTHCHECK_TAG.into()) => {
                self.notes.push(format!(
                    "{}:{}: [OUTPUT] null for {HEALTHCHECK_TAG}: the health check's records are discarded by its listener",
                    sec.pos.file, sec.pos.line
                ));
                return None;
            }
            "null" => "blackhole",
            "" => {
                self.errors.push(sec.pos.error("[OUTPUT] without `Name`"));
                return None;
            }
            other => {
                self.errors.push(sec.pos.error(format!(
                    "output plugin `{other}` is not supported by --fluent-bit-config (supported: {OUTPUTS})"
                )));
                return None;
            }
        };
        let id = alias(sec).unwrap_or_else(|| format!("output{n}_{kind}"));
        let mut origins = vec![(String::new(), sec.pos.clone())];
        let mut t = toml::Table::new();
        t.insert("type".into(), s(kind));
        let set = |t: &mut toml::Table, origins: &mut Vec<(String, Pos)>, key: &str, v: toml::Value, pos: &Pos| {
            t.insert(key.into(), v);
            origins.push((key.to_string(), pos.clone()));
        };
        let common = ["match", "match_regex", "region", "endpoint", "retry_limit", "log_key"];
        if let Some(e) = sec.get("retry_limit") {
            self.retry_limit(kind, e, &mut t, &mut origins);
        }
        if let Some(e) = sec.get("log_key") {
            if matches!(kind, "cloudwatch_logs" | "firehose" | "kinesis_streams" | "s3") || name == "loki" {
                set(&mut t, &mut origins, "log_key", s(&e.value), &e.pos);
            } else {
                self.errors
                    .push(e.pos.error(format!("`log_key` of {what} is not supported by Logferry")));
            }
        }
        if matches!(kind, "cloudwatch_logs" | "firehose" | "kinesis_streams" | "s3") {
            if let Some(e) = sec.get("region") {
                set(&mut t, &mut origins, "region", s(&e.value), &e.pos);
            }
            if let Some(e) = sec.get("endpoint") {
                set(&mut t, &mut origins, "endpoint_url", s(&endpoint(&e.value)), &e.pos);
            }
        }
        if matches!(kind, "cloudwatch_logs" | "firehose" | "kinesis_streams" | "http")
            && let Some(f) = flush
        {
            t.insert("flush_interval".into(), s(&duration(f)));
        }
        match kind {
            "cloudwatch_logs" => {
                match sec.get("log_group_name") {
                    Some(e) => match cw_template(&e.value, &e.pos) {
                        Ok(v) => set(&mut t, &mut origins, "log_group", s(&v), &e.pos),
                        Err(err) => self.errors.push(err),
                    },
                    None => self
                        .errors
                        .push(sec.pos.error("cloudwatch_logs needs `log_group_name`")),
                }
                match (sec.get("log_stream_name"), sec.get("log_stream_prefix")) {
                    (Some(e), _) => match cw_template(&e.value, &e.pos) {
                        Ok(v) => set(&mut t, &mut origins, "log_stream", s(&v), &e.pos),
                        Err(err) => self.errors.push(err),
                    },
                    // Fluent Bit names the stream prefix + tag.
                    (None, Some(e)) => match cw_template(&e.value, &e.pos) {
                        Ok(v) => set(&mut t, &mut origins, "log_stream", s(&format!("{v}{{tag}}")), &e.pos),
                        Err(err) => self.errors.push(err),
                    },
                    (None, None) => self.errors.push(
                        sec.pos
                            .error("cloudwatch_logs needs `log_stream_name` or `log_stream_prefix`"),
                    ),
                }
                if let Some(e) = sec.get("log_retention_days") {
                    match e.value.parse::<i64>() {
                        Ok(d) => set(&mut t, &mut origins, "retention_days", toml::Value::Integer(d), &e.pos),
                        Err(_) => self
                            .errors
                            .push(e.pos.error(format!("`{}` is not a number of days", e.value))),
                    }
                }
                if let Some(e) = sec.get("log_group_class") {
                    set(&mut t, &mut origins, "log_group_class", s(&e.value), &e.pos);
                }
                // Streams are always created (as Fluent Bit does); a missing
                // group is created too, where Fluent Bit without
                // auto_create_group would fail.
                t.insert("create_missing".into(), toml::Value::Boolean(true));
                if let Some(e) = sec.get("auto_create_group")
                    && is_true(&e.value).is_none()
                {
                    self.errors
                        .push(e.pos.error(format!("auto_create_group `{}` is not on/off", e.value)));
                }
                let mut known = common.to_vec();
                known.extend([
                    "log_group_name",
                    "log_stream_name",
                    "log_stream_prefix",
                    "log_retention_days",
                    "log_group_class",
                    "auto_create_group",
                    "log_format",
                ]);
                if let Some(e) = sec.get("log_format") {
                    if e.value.eq_ignore_ascii_case("json/emf") {
                        set(&mut t, &mut origins, "log_format", s("json/emf"), &e.pos);
                    } else {
                        self.errors.push(e.pos.error(format!(
                            "log_format `{}` is not supported (Logferry reads `json/emf`)",
                            e.value
                        )));
                    }
                }
                self.check_keys(sec, &what, &known, &[]);
            }
            "firehose" => {
                match sec.get("delivery_stream") {
                    Some(e) => set(&mut t, &mut origins, "delivery_stream", s(&e.value), &e.pos),
                    None => self.errors.push(sec.pos.error("firehose needs `delivery_stream`")),
                }
                let mut known = common.to_vec();
                known.extend(["delivery_stream", "time_key"]);
                self.check_keys(sec, &what, &known, &["simple_aggregation", "time_key_format"]);
            }
            "kinesis_streams" => {
                for (key, v, pos) in self.kinesis_streams(sec, &what, &common) {
                    set(&mut t, &mut origins, key, v, &pos);
                }
            }
            "http" => {
                let keys = if name == "loki" {
                    self.loki_output(sec, &what, &common)
                } else {
                    self.http_output(sec, &what, &common)
                };
                for (key, v, pos) in keys {
                    set(&mut t, &mut origins, key, v, &pos);
                }
            }
            "s3" => {
                match sec.get("bucket") {
                    Some(e) => set(&mut t, &mut origins, "bucket", s(&e.value), &e.pos),
                    None => self.errors.push(sec.pos.error("s3 needs `bucket`")),
                }
                // Fluent Bit's default layout, the object name aside.
                let (format, pos) = sec
                    .get("s3_key_format")
                    .map_or(("/fluent-bit-logs/$TAG/%Y/%m/%d/%H/%M/%S", sec.pos.clone()), |e| {
                        (e.value.as_str(), e.pos.clone())
                    });
                match s3_key_prefix(format, &pos) {
                    Ok(p) => set(&mut t, &mut origins, "key_prefix", s(&p), &pos),
                    Err(err) => self.errors.push(err),
                }
                if let Some((_, object)) = format.rsplit_once('/')
                    && !object.is_empty()
                {
                    self.notes.push(format!(
                        "{}:{}: s3_key_format: the object name `{object}` is Logferry's own (a UUIDv7 and the compression's extension)",
                        pos.file, pos.line
                    ));
                }
                let compression = sec.get("compression");
                match compression.map(|e| e.value.to_ascii_lowercase()) {
                    None => {
                        t.insert("compression".into(), s("none"));
                    }
                    Some(c) if c == "gzip" || c == "zstd" => {
                        let pos = compression.map(|e| e.pos.clone()).unwrap_or_else(|| sec.pos.clone());
                        set(&mut t, &mut origins, "compression", s(&c), &pos);
                    }
                    Some(other) => {
                        let pos = compression.map(|e| e.pos.clone()).unwrap_or_else(|| sec.pos.clone());
                        self.errors.push(pos.error(format!(
                            "compression `{other}` is not supported (gzip, zstd, or none without the key)"
                        )));
                    }
                }
                for (fb, ours) in [
                    ("total_file_size", "max_object_size"),
                    ("upload_chunk_size", "multipart_part_size"),
                ] {
                    if let Some(e) = sec.get(fb) {
                        match fb_size(&e.value) {
                            Some(b) => set(&mut t, &mut origins, ours, toml::Value::Integer(b as i64), &e.pos),
                            None => self
                                .errors
                                .push(e.pos.error(format!("{} `{}` is not a size", e.key, e.value))),
                        }
                    }
                }
                if let Some(e) = sec.get("upload_timeout") {
                    match fb_seconds(&e.value) {
                        Some(v) => set(&mut t, &mut origins, "flush_interval", s(&duration(v)), &e.pos),
                        None => self
                            .errors
                            .push(e.pos.error(format!("upload_timeout `{}` is not a time", e.value))),
                    }
                }
                if let Some(e) = sec.get("storage_class") {
                    set(&mut t, &mut origins, "storage_class", s(&e.value), &e.pos);
                }
                if sec.get("endpoint").is_some() {
                    // Custom endpoints (LocalStack, MinIO) take the bucket in the path.
                    t.insert("force_path_style".into(), toml::Value::Boolean(true));
                }
                let mut known = common.to_vec();
                known.extend([
                    "bucket",
                    "s3_key_format",
                    "compression",
                    "total_file_size",
                    "upload_chunk_size",
                    "upload_timeout",
                    "storage_class",
                    "json_date_key",
                ]);
                self.check_keys(
                    sec,
                    &what,
                    &known,
                    &[
                        "s3_key_format_tag_delimiters",
                        "use_put_object",
                        "store_dir",
                        "store_dir_limit_size",
                        "send_content_md5",
                        "preserve_data_ordering",
                        "content_type",
                        "json_date_format",
                    ],
                );
            }
            _ => {
                self.check_keys(
                    sec,
                    &what,
                    &["match", "match_regex", "retry_limit"],
                    &["format", "json_date_key", "json_date_format"],
                );
            }
        }
        if let Some(k) = fb_timestamp_key(kind, sec) {
            t.insert("timestamp_key".into(), s(&k));
        }
        Some(Output {
            name: id,
            matches,
            match_pos,
            table: t,
            origins,
        })
    }

    /// `Retry_Limit`: the firehose sink's bound on re-sending a rejected
    /// record; the other sinks retry until delivered or dead-lettered.
    fn retry_limit(&mut self, kind: &str, e: &Entry, t: &mut toml::Table, origins: &mut Vec<(String, Pos)>) {
        let v = e.value.to_ascii_lowercase();
        let n: Option<i64> = match v.as_str() {
            "false" | "no_limits" => Some(0),
            "no_retries" => Some(1),
            _ => e.value.parse::<i64>().ok().filter(|n| *n >= 0).map(|n| n.max(1)),
        };
        let Some(n) = n else {
            return self.errors.push(e.pos.error(format!(
                "Retry_Limit `{}` is not a number, False, no_limits or no_retries",
                e.value
            )));
        };
        if matches!(kind, "firehose" | "kinesis_streams") {
            t.insert("max_record_retries".into(), toml::Value::Integer(n));
            origins.push(("max_record_retries".into(), e.pos.clone()));
            if matches!(v.as_str(), "no_retries" | "0") {
                self.notes.push(format!(
                    "{}:{}: Retry_Limit {}: Logferry sends a rejected record once more before dead-lettering it",
                    e.pos.file, e.pos.line, e.value
                ));
            }
        } else {
            self.notes.push(format!(
                "{}:{}: Retry_Limit of [OUTPUT] {kind}: Logferry retries until delivered or dead-lettered, never drops after N retries",
                e.pos.file, e.pos.line
            ));
        }
    }
}

/// The `timestamp_key` that makes records what this Fluent Bit output sends
/// (issue 14 item 5): `cloudwatch_logs` adds no time key (the event carries
/// the time), `kinesis_firehose` and `kinesis_streams` add `time_key` only
/// when set, `s3` adds
/// `json_date_key` (`date` unless set, none when `false`/`off`).
fn fb_timestamp_key(kind: &str, sec: &Section) -> Option<String> {
    match kind {
        "cloudwatch_logs" => Some(String::new()),
        "firehose" | "kinesis_streams" => Some(sec.get("time_key").map(|e| e.value.clone()).unwrap_or_default()),
        "s3" => Some(match sec.get("json_date_key") {
            None => "date".to_string(),
            Some(e) if is_true(&e.value) == Some(false) => String::new(),
            Some(e) => e.value.clone(),
        }),
        _ => None,
    }
}

impl Tr {
    /// `[OUTPUT] Name kinesis_streams` (region, endpoint and Flush are
    /// mapped with the other AWS outputs): the sink keys it sets.
    fn kinesis_streams(&mut self, sec: &Section, what: &str, common: &[&str]) -> Vec<(&'static str, toml::Value, Pos)> {
        let mut out = Vec::new();
        match sec.get("stream") {
            Some(e) => out.push(("stream", s(&e.value), e.pos.clone())),
            None => self.errors.push(sec.pos.error("kinesis_streams needs `stream`")),
        }
        // Fluent Bit names a record key (`->` for nested ones); missing in a
        // record, the key is random, as in the sink.
        if let Some(e) = sec.get("partition_key") {
            let path = e.value.trim().replace("->", ".");
            match crate::template::Template::parse(&format!("{{{path}}}")) {
                Ok(_) if !path.is_empty() => out.push(("partition_key", s(&format!("{{{path}}}")), e.pos.clone())),
                _ => self
                    .errors
                    .push(e.pos.error(format!("partition_key `{}` is not a record key", e.value))),
            }
        }
        let mut known = common.to_vec();
        known.extend(["stream", "partition_key", "time_key"]);
        // Logferry always retries failed requests (with backoff); Fluent
        // Bit's simple_aggregation concatenates records, which readers of
        // newline-delimited records read the same as one per record.
        self.check_keys(
            sec,
            what,
            &known,
            &["auto_retry_requests", "simple_aggregation", "time_key_format"],
        );
        out
    }
}
