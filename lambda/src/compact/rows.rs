//! One NDJSON record in, one Parquet row out, with nothing lost.
//!
//! The columns mirror the NDJSON shape so the same SQL works on both tables:
//! the fields the router adds (ECS, EC2) and the usual log fields are
//! top-level string columns, `@timestamp` is the UTC timestamp (µs) column
//! `timestamp` (Athena allows no `@` in names), and the
//! `kubernetes` object is a struct whose `labels` and `annotations` are
//! string maps. The deployment may declare columns of its own for its own
//! top-level fields (`COMPACT_COLUMNS`): a request id a query filters on, a
//! latency it sums. Everything else goes, as the JSON text it had, into
//! `rest` (a JSON object; null when nothing is left).
//!
//! Declared columns are also what makes the archive small: in `rest`, each
//! random id sits between key names and punctuation, and zstd pays for a
//! match on every one of them; in a column of its own an id is only its
//! own bytes (about 20% of the file on the benchmark's data).
//!
//! A field takes its typed column only when it has the column's type and
//! occurs once; otherwise it stays in `rest` untouched (a numeric `level`, a
//! `null`, a label whose value is a number, a duplicated key). An
//! `@timestamp` whose text is not the router's millisecond form is kept in
//! `rest` as well, next to its typed value. So the record is always the typed
//! columns plus `rest` (deep-merged for `kubernetes`): the property test
//! below rebuilds every record from its row.
//!
//! What cannot be a row at all (not a JSON object, not UTF-8, over the line
//! limit) is the caller's quarantine, never a silent drop.
//!
//! Values are borrowed from the line and never parsed beyond the top level
//! (and the `kubernetes` object), so `rest` keeps the original bytes of
//! every value and a record costs one pass of the JSON scanner.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, MapBuilder, MapFieldNames, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{Array, ArrayRef, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Fields, SchemaRef};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::fields::Key;

pub use crate::compacted::{
    ColumnType, Declared, KUBERNETES, KUBERNETES_MAPS, KUBERNETES_STRINGS, REST, STRING_COLUMNS, TIMESTAMP,
    TIMESTAMP_COLUMN, canonical_time,
};

/// An object's members in order, duplicates kept, values unparsed.
struct Members<'a>(Vec<(Key<'a>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members<'de>, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(8));
                while let Some((k, v)) = m.next_entry::<Key<'de>, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The text of a JSON string value, or None for any other value.
fn as_str(v: &RawValue) -> Option<Cow<'_, str>> {
    let raw = v.get();
    if !raw.starts_with('"') {
        return None;
    }
    Key::deserialize(&mut serde_json::Deserializer::from_str(raw))
        .ok()
        .map(|k| k.0)
}

/// A string map (`labels`, `annotations`): every value a string, keys unique.
fn as_string_map<'a>(v: &'a RawValue) -> Option<Vec<(Cow<'a, str>, Cow<'a, str>)>> {
    if !v.get().starts_with('{') {
        return None;
    }
    let Members(members) = serde_json::from_str(v.get()).ok()?;
    let mut out = Vec::with_capacity(members.len());
    for (k, v) in members {
        if out.iter().any(|(seen, _): &(Cow<str>, _)| *seen == k.0) {
            return None;
        }
        out.push((k.0, as_str(v)?));
    }
    Some(out)
}

/// Where `name` is among `members`, if it occurs exactly once (a duplicated
/// key is never typed).
fn once(members: &[(Key, &RawValue)], name: &str) -> Option<usize> {
    let mut at = members
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k.0 == name)
        .map(|(i, _)| i);
    at.next().filter(|_| at.next().is_none())
}

/// The string value of `name` if it occurs once and is a string; it then
/// leaves `rest` (`keep[i] = false`).
fn take_str<'a>(members: &[(Key<'a>, &'a RawValue)], keep: &mut [bool], name: &str) -> Option<Cow<'a, str>> {
    let i = once(members, name)?;
    let s = as_str(members[i].1)?;
    keep[i] = false;
    Some(s)
}

/// The builder of a declared column.
enum Typed {
    Str(StringBuilder),
    Int(Int64Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
}

impl Typed {
    fn new(ty: ColumnType) -> Self {
        match ty {
            ColumnType::String => Typed::Str(StringBuilder::new()),
            ColumnType::Bigint => Typed::Int(Int64Builder::new()),
            ColumnType::Double => Typed::F64(Float64Builder::new()),
            ColumnType::Boolean => Typed::Bool(BooleanBuilder::new()),
        }
    }

    /// Appends `raw` if it is exactly of the column's type (see
    /// [`ColumnType`]); says whether it did.
    fn take(&mut self, raw: &RawValue) -> bool {
        let text = raw.get();
        match self {
            Typed::Str(b) => as_str(raw).map(|s| b.append_value(s)).is_some(),
            Typed::Int(b) => match text.parse::<i64>() {
                // `-0` parses too, but would come back as `0`.
                Ok(n) if n.to_string() == text => {
                    b.append_value(n);
                    true
                }
                _ => false,
            },
            Typed::F64(b) => {
                // The column holds the nearest double, as DuckDB or Athena
                // read the text. serde_json (without `float_roundtrip`) may
                // land a ULP off on long mantissas; such a value stays in
                // `rest`, so a record read back equals its line parsed.
                let exact = text.parse::<f64>().ok().filter(|f| f.is_finite());
                match serde_json::from_str::<serde_json::Number>(text) {
                    Ok(n) if n.is_f64() && exact.is_some() && n.as_f64() == exact => {
                        b.append_value(exact.expect("checked"));
                        true
                    }
                    _ => false,
                }
            }
            Typed::Bool(b) => match text {
                "true" | "false" => {
                    b.append_value(text == "true");
                    true
                }
                _ => false,
            },
        }
    }

    fn append_null(&mut self) {
        match self {
            Typed::Str(b) => b.append_null(),
            Typed::Int(b) => b.append_null(),
            Typed::F64(b) => b.append_null(),
            Typed::Bool(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Typed::Str(b) => Arc::new(b.finish()),
            Typed::Int(b) => Arc::new(b.finish()),
            Typed::F64(b) => Arc::new(b.finish()),
            Typed::Bool(b) => Arc::new(b.finish()),
        }
    }
}

/// Why a line cannot be a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not UTF-8, not JSON, or JSON but not an object.
    NotJsonObject,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::NotJsonObject => "not_json_object",
        }
    }
}

/// Appends `members` as a JSON object's text (`{"k":raw,...}`).
fn write_object(out: &mut String, members: &[(&str, &str)]) {
    out.push('{');
    for (i, (k, raw)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k).expect("a string always serializes"));
        out.push(':');
        out.push_str(raw);
    }
    out.push('}');
}

/// Builds record batches of the compacted schema, row by row.
pub struct Rows {
    ts: TimestampMicrosecondBuilder,
    strings: Vec<StringBuilder>,
    declared: Vec<(Declared, Typed)>,
    k8s_strings: Vec<StringBuilder>,
    k8s_maps: Vec<MapBuilder<StringBuilder, StringBuilder>>,
    k8s_valid: Vec<bool>,
    rest: StringBuilder,
    rows: usize,
    /// Bytes appended since the last batch (for batching by size).
    bytes: usize,
    scratch: String,
}

fn map_builder() -> MapBuilder<StringBuilder, StringBuilder> {
    // Parquet's and Hive's names for a map's parts: Athena and Spark read them as such.
    let names = MapFieldNames {
        entry: "key_value".into(),
        key: "key".into(),
        value: "value".into(),
    };
    MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new())
}

impl Rows {
    /// Rows with the fixed columns and the `declared` ones (names checked by
    /// [`crate::compacted::parse_declared`]).
    pub fn new(declared: &[Declared]) -> Self {
        Rows {
            ts: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            strings: STRING_COLUMNS.iter().map(|_| StringBuilder::new()).collect(),
            declared: declared.iter().map(|d| (d.clone(), Typed::new(d.ty))).collect(),
            k8s_strings: KUBERNETES_STRINGS.iter().map(|_| StringBuilder::new()).collect(),
            k8s_maps: KUBERNETES_MAPS.iter().map(|_| map_builder()).collect(),
            k8s_valid: Vec::new(),
            rest: StringBuilder::new(),
            rows: 0,
            bytes: 0,
            scratch: String::new(),
        }
    }

    /// The schema every batch has.
    pub fn schema(declared: &[Declared]) -> SchemaRef {
        Rows::new(declared).finish().schema()
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Line bytes taken since the last [`Rows::finish`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds one line as a row, or says why it cannot be one (nothing is
    /// appended then).
    pub fn push(&mut self, line: &[u8]) -> Result<(), Reject> {
        let text = std::str::from_utf8(line).map_err(|_| Reject::NotJsonObject)?;
        let Members(members) = serde_json::from_str(text).map_err(|_| Reject::NotJsonObject)?;
        self.bytes += line.len();
        self.rows += 1;
        // Members that stay in `rest`, by index.
        let mut rest = vec![true; members.len()];

        // @timestamp
        let mut ts = None;
        if let Some(i) = once(&members, TIMESTAMP)
            && let Some(text) = as_str(members[i].1)
            && let Ok(t) = DateTime::parse_from_rfc3339(&text)
        {
            let t = t.with_timezone(&Utc);
            let micros = t.timestamp_micros();
            // Typed; the text stays in `rest` too unless the column gives it back.
            let back = DateTime::<Utc>::from_timestamp_micros(micros).map(canonical_time);
            if back.as_deref() == Some(&*text) {
                rest[i] = false;
            }
            ts = Some(micros);
        }
        self.ts.append_option(ts);

        for (col, name) in STRING_COLUMNS.iter().enumerate() {
            self.strings[col].append_option(take_str(&members, &mut rest, name));
        }

        for (d, b) in &mut self.declared {
            let mut taken = false;
            if let Some(i) = once(&members, &d.name) {
                taken = b.take(members[i].1);
                rest[i] = !taken;
            }
            if !taken {
                b.append_null();
            }
        }

        // kubernetes: its typed parts; what is left of it stays in `rest`.
        let mut k8s_rest: Option<(usize, String)> = None;
        let k8s = once(&members, KUBERNETES).and_then(|i| {
            let raw = members[i].1.get();
            let inner: Members = raw.starts_with('{').then(|| serde_json::from_str(raw).ok())??;
            Some((i, inner.0))
        });
        match k8s {
            Some((i, inner)) => {
                rest[i] = false;
                let mut left = vec![true; inner.len()];
                for (col, name) in KUBERNETES_STRINGS.iter().enumerate() {
                    self.k8s_strings[col].append_option(take_str(&inner, &mut left, name));
                }
                for (col, name) in KUBERNETES_MAPS.iter().enumerate() {
                    let b = &mut self.k8s_maps[col];
                    let mut map = None;
                    if let Some(j) = once(&inner, name)
                        && let Some(m) = as_string_map(inner[j].1)
                    {
                        left[j] = false;
                        map = Some(m);
                    }
                    match map {
                        Some(entries) => {
                            for (k, v) in entries {
                                b.keys().append_value(k);
                                b.values().append_value(v);
                            }
                            b.append(true).expect("keys and values appended together");
                        }
                        None => b.append(false).expect("keys and values appended together"),
                    }
                }
                self.k8s_valid.push(true);
                if left.iter().any(|l| *l) {
                    let kept: Vec<(&str, &str)> = inner
                        .iter()
                        .zip(&left)
                        .filter(|(_, l)| **l)
                        .map(|((k, v), _)| (&*k.0, v.get()))
                        .collect();
                    let mut text = String::new();
                    write_object(&mut text, &kept);
                    k8s_rest = Some((i, text));
                }
            }
            None => {
                for b in &mut self.k8s_strings {
                    b.append_null();
                }
                for b in &mut self.k8s_maps {
                    b.append(false).expect("keys and values appended together");
                }
                self.k8s_valid.push(false);
            }
        }

        let mut kept: Vec<(&str, &str)> = Vec::new();
        for (i, (k, v)) in members.iter().enumerate() {
            if rest[i] {
                kept.push((&k.0, v.get()));
            } else if let Some((at, text)) = &k8s_rest
                && *at == i
            {
                kept.push((KUBERNETES, text));
            }
        }
        if kept.is_empty() {
            self.rest.append_null();
        } else {
            self.scratch.clear();
            write_object(&mut self.scratch, &kept);
            self.rest.append_value(&self.scratch);
        }
        Ok(())
    }

    /// The rows so far as one batch; the builder starts over, empty.
    pub fn finish(&mut self) -> RecordBatch {
        let mut fields: Vec<Field> = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        let ts = Arc::new(self.ts.finish());
        fields.push(Field::new(TIMESTAMP_COLUMN, ts.data_type().clone(), true));
        columns.push(ts);
        for (name, b) in STRING_COLUMNS.iter().zip(&mut self.strings) {
            fields.push(Field::new(*name, DataType::Utf8, true));
            columns.push(Arc::new(b.finish()));
        }
        for (d, b) in &mut self.declared {
            let column = b.finish();
            fields.push(Field::new(&d.name, column.data_type().clone(), true));
            columns.push(column);
        }
        let mut k8s_fields: Vec<Field> = Vec::new();
        let mut k8s_columns: Vec<ArrayRef> = Vec::new();
        for (name, b) in KUBERNETES_STRINGS.iter().zip(&mut self.k8s_strings) {
            k8s_fields.push(Field::new(*name, DataType::Utf8, true));
            k8s_columns.push(Arc::new(b.finish()));
        }
        for (name, b) in KUBERNETES_MAPS.iter().zip(&mut self.k8s_maps) {
            let m = b.finish();
            k8s_fields.push(Field::new(*name, m.data_type().clone(), true));
            k8s_columns.push(Arc::new(m));
        }
        let valid = std::mem::take(&mut self.k8s_valid);
        let k8s_fields = Fields::from(k8s_fields);
        let k8s = StructArray::try_new(k8s_fields.clone(), k8s_columns, Some(valid.into()))
            .expect("children have one value per row");
        fields.push(Field::new(KUBERNETES, DataType::Struct(k8s_fields), true));
        columns.push(Arc::new(k8s));
        fields.push(Field::new(REST, DataType::Utf8, true));
        columns.push(Arc::new(self.rest.finish()));
        self.rows = 0;
        self.bytes = 0;
        RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), columns)
            .expect("every column has one value per row")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::TimestampMicrosecondType;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// Every row of `batch` as a reader gets it back: written to Parquet, read
    /// with the record API, rebuilt by [`crate::compacted::record_of`].
    fn rebuild_all(batch: &RecordBatch) -> Vec<Value> {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let mut buf = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
        let r = SerializedFileReader::new(bytes::Bytes::from(buf)).unwrap();
        r.get_row_iter(None)
            .unwrap()
            .map(|row| crate::compacted::record_of(&row.unwrap()))
            .collect()
    }

    fn rebuild(batch: &RecordBatch, row: usize) -> Value {
        rebuild_all(batch).swap_remove(row)
    }

    /// One declared column of each type, as the tests use them.
    fn declared() -> Vec<Declared> {
        crate::compacted::parse_declared("s:string,i:bigint,f:double,b:boolean").unwrap()
    }

    fn one(line: &str) -> (RecordBatch, Value) {
        let mut rows = Rows::new(&declared());
        rows.push(line.as_bytes()).expect("a row");
        let b = rows.finish();
        let v = rebuild(&b, 0);
        (b, v)
    }

    #[test]
    fn typed_fields_leave_rest_and_come_back() {
        let line = r#"{"@timestamp":"2026-12-03T14:05:06.789Z","level":"warn","log":"x","ecs_task_id":"t1","kubernetes":{"pod_name":"web-1","labels":{"app":"web","team":"a"},"extra":3},"n":1.50,"nested":{"a":[1,2]}}"#;
        let (b, v) = one(line);
        assert_eq!(v, serde_json::from_str::<Value>(line).unwrap());
        let rest = b.column_by_name(REST).unwrap().as_string::<i32>();
        // Raw values are kept byte for byte (1.50 stays 1.50).
        assert_eq!(
            rest.value(0),
            r#"{"kubernetes":{"extra":3},"n":1.50,"nested":{"a":[1,2]}}"#
        );
        let ts = b
            .column_by_name(TIMESTAMP_COLUMN)
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.value(0), 1_796_306_706_789_000);
    }

    #[test]
    fn declared_columns_take_values_of_their_type_only() {
        use arrow_array::types::{Float64Type, Int64Type};
        let line = r#"{"s":"a\u00e9","i":-12,"f":1.50,"b":true,"x":1}"#;
        let (b, v) = one(line);
        assert_eq!(v, serde_json::from_str::<Value>(line).unwrap());
        assert_eq!(b.column_by_name("s").unwrap().as_string::<i32>().value(0), "a\u{e9}");
        assert_eq!(b.column_by_name("i").unwrap().as_primitive::<Int64Type>().value(0), -12);
        assert_eq!(
            b.column_by_name("f").unwrap().as_primitive::<Float64Type>().value(0),
            1.5
        );
        assert!(b.column_by_name("b").unwrap().as_boolean().value(0));
        assert_eq!(
            b.column_by_name(REST).unwrap().as_string::<i32>().value(0),
            r#"{"x":1}"#
        );
        // Each of these comes back only if it stays in `rest`: a value of
        // another type, another number form, a duplicate, out of range.
        for line in [
            r#"{"s":1,"i":"1","f":"1.5","b":"true"}"#,
            r#"{"i":1.0,"f":12,"b":null}"#,
            r#"{"i":-0,"f":-0}"#,
            r#"{"i":18446744073709551615,"f":-1}"#,
            r#"{"i":1,"i":2,"s":"a","s":"a"}"#,
            r#"{"f":1E+2,"i":9223372036854775807}"#,
            r#"{"f":{"x":1.5},"s":["a"],"b":[true]}"#,
        ] {
            let (b, v) = one(line);
            assert_eq!(v, serde_json::from_str::<Value>(line).unwrap(), "{line}");
            let rest = b.column_by_name(REST).unwrap().as_string::<i32>();
            let kept: Vec<String> = match rest.is_valid(0) {
                true => serde_json::from_str::<Value>(rest.value(0))
                    .unwrap()
                    .as_object()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect(),
                false => Vec::new(),
            };
            let typed = ["s", "i", "f", "b"]
                .into_iter()
                .filter(|n| b.column_by_name(n).unwrap().is_valid(0));
            for n in typed {
                assert!(!kept.contains(&n.to_string()), "{line}: {n} both typed and in rest");
            }
        }
        // `1E+2` is a double, the largest i64 a bigint: both typed.
        let (b, _) = one(r#"{"f":1E+2,"i":9223372036854775807}"#);
        assert_eq!(
            b.column_by_name("f").unwrap().as_primitive::<Float64Type>().value(0),
            100.0
        );
        assert_eq!(
            b.column_by_name("i").unwrap().as_primitive::<Int64Type>().value(0),
            i64::MAX
        );
        assert!(b.column_by_name(REST).unwrap().is_null(0));
    }

    #[test]
    fn odd_values_stay_in_rest() {
        for line in [
            r#"{"level":30,"msg":null}"#,
            r#"{"level":"a","level":"b"}"#,
            r#"{"@timestamp":"2026-12-03T14:05:06Z"}"#,
            r#"{"@timestamp":"2026-12-03T14:05:06.123456789+02:00"}"#,
            r#"{"@timestamp":"yesterday"}"#,
            r#"{"kubernetes":"not an object"}"#,
            r#"{"kubernetes":{"labels":{"a":1},"annotations":{"x":"1","x":"2"}}}"#,
            r#"{"k\u00e9y":"\ud83d\ude00 and \"quotes\""}"#,
            r#"{}"#,
        ] {
            let (_, v) = one(line);
            assert_eq!(v, serde_json::from_str::<Value>(line).unwrap(), "{line}");
        }
        // The typed column still has the instant of a non-canonical time.
        let (b, _) = one(r#"{"@timestamp":"2026-12-03T16:05:06.5+02:00"}"#);
        let ts = b
            .column_by_name(TIMESTAMP_COLUMN)
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.value(0), 1_796_306_706_500_000);
    }

    #[test]
    fn lines_that_are_not_objects_are_rejected_and_leave_no_row() {
        let mut rows = Rows::new(&[]);
        for bad in [
            &b"[1,2]"[..],
            b"plain text",
            b"{\"a\":",
            b"\"s\"",
            b"{\"a\":\"\xff\"}",
            b"",
        ] {
            assert_eq!(rows.push(bad), Err(Reject::NotJsonObject));
        }
        assert!(rows.is_empty());
        rows.push(b"{\"a\":1}").unwrap();
        assert_eq!(rows.finish().num_rows(), 1);
    }

    #[test]
    fn every_batch_has_the_schema() {
        let mut rows = Rows::new(&declared());
        rows.push(br#"{"kubernetes":{"labels":{"a":"b"}}}"#).unwrap();
        assert_eq!(rows.finish().schema(), Rows::schema(&declared()));
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            (-1000i32..1000).prop_map(|n| json!(f64::from(n) / 4.0)),
            "[a-z\u{e9}\"\\\\ ]{0,6}".prop_map(Value::String),
            (0i64..4_000_000_000_000)
                .prop_map(|ms| json!(canonical_time(DateTime::<Utc>::from_timestamp_millis(ms).unwrap()))),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map(key(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        let typed: Vec<&str> = STRING_COLUMNS
            .iter()
            .chain(KUBERNETES_STRINGS)
            .chain(KUBERNETES_MAPS)
            .copied()
            .chain([TIMESTAMP, TIMESTAMP_COLUMN, KUBERNETES, REST, "s", "i", "f", "b"])
            .collect();
        prop_oneof![
            prop::sample::select(typed).prop_map(str::to_string),
            "[a-z@_.\u{e9}]{1,4}"
        ]
    }

    proptest! {
        /// Whatever the record, its row gives it back (as JSON values).
        #[test]
        fn every_record_comes_back_from_its_row(
            records in prop::collection::vec(prop::collection::btree_map(key(), value(), 0..8), 1..20)
        ) {
            let mut rows = Rows::new(&declared());
            let lines: Vec<String> = records
                .into_iter()
                .map(|m| serde_json::to_string(&Value::Object(m.into_iter().collect())).unwrap())
                .collect();
            // What a reader of the line gets (serde_json may land a ULP
            // off a long mantissa; the row must give the same).
            let values: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
            for l in &lines {
                rows.push(l.as_bytes()).unwrap();
            }
            let b = rows.finish();
            prop_assert_eq!(b.num_rows(), values.len());
            let back = rebuild_all(&b);
            for (i, v) in values.iter().enumerate() {
                prop_assert_eq!(&back[i], v);
            }
        }
    }
}
