//! Events in, object references out: S3 notifications delivered directly,
//! wrapped in SQS messages (possibly through SNS), or as EventBridge
//! "Object Created" events.
//!
//! Each SQS message body is parsed on its own, so one odd message (an
//! `s3:TestEvent`, a malformed body) never spoils the others in its batch.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::s3::S3Event;
use aws_lambda_events::sqs::SqsEvent;
use percent_encoding::percent_decode_str;
use serde_json::Value;

use crate::process::ObjectRef;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TriggerError {
    #[error("not an event this function handles: {0}")]
    Unknown(String),
    #[error("malformed {what}: {message}")]
    Malformed { what: &'static str, message: String },
    #[error("object key {0:?} is not valid URL-encoded UTF-8")]
    Key(String),
}

/// One SQS message of a batch.
#[derive(Debug)]
pub struct SqsItem {
    pub message_id: String,
    pub work: Result<Work, TriggerError>,
}

/// What one event (or SQS message) asks for.
#[derive(Debug)]
pub enum Work {
    /// Index these objects.
    Objects(Vec<ObjectRef>),
    /// Compact one partition (`{"compact": {...}}`).
    Compact(crate::compact::Job),
    /// The hourly schedule (an EventBridge `Scheduled Event`): compact the
    /// configured sources' last closed hour, as of this time.
    Scheduled(chrono::DateTime<chrono::Utc>),
}

/// An invocation's work.
#[derive(Debug)]
pub enum Invocation {
    /// SQS batch: failures are reported per message (`batchItemFailures`).
    Sqs(Vec<SqsItem>),
    /// Direct or EventBridge: a failure fails the invocation (Lambda retries it).
    Direct(Work),
}

/// `{"compact": {"bucket": B, "prefix": P, "hour": "2026-12-03T14", "source": S?}}`
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactRequest {
    bucket: String,
    prefix: String,
    hour: String,
    #[serde(default)]
    source: Option<String>,
}

fn compact_job(v: Value) -> Result<crate::compact::Job, TriggerError> {
    let r: CompactRequest = serde_json::from_value(v).map_err(|e| malformed("compact request", e))?;
    let hour = crate::compact::parse_hour(&r.hour).ok_or_else(|| {
        malformed(
            "compact request",
            format!("hour {:?} is not like 2026-12-03T14", r.hour),
        )
    })?;
    if r.bucket.is_empty() {
        return Err(malformed("compact request", "empty bucket"));
    }
    let prefix = r.prefix.trim_start_matches('/').to_string();
    Ok(crate::compact::Job {
        bucket: r.bucket,
        source: r
            .source
            .as_deref()
            .map(crate::config::source_name)
            .unwrap_or_else(|| crate::compact::default_source(&prefix)),
        prefix,
        hour,
    })
}

/// The work of one event document (a direct payload or an SQS body).
pub fn work_of(mut v: Value) -> Result<Work, TriggerError> {
    if let Some(req) = v.get_mut("compact").map(Value::take) {
        return compact_job(req).map(Work::Compact);
    }
    if v.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event") {
        let time = v.get("time").and_then(Value::as_str).unwrap_or_default();
        let t = chrono::DateTime::parse_from_rfc3339(time)
            .map_err(|e| malformed("scheduled event", format!("time {time:?}: {e}")))?;
        return Ok(Work::Scheduled(t.with_timezone(&chrono::Utc)));
    }
    objects_of(v).map(Work::Objects)
}

/// Decodes a key as S3 notifications carry it: `+` is a space, then
/// %-escapes of UTF-8 bytes.
pub fn decode_key(raw: &str) -> Result<String, TriggerError> {
    let spaced = raw.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| TriggerError::Key(raw.to_string()))
}

fn malformed(what: &'static str, e: impl std::fmt::Display) -> TriggerError {
    TriggerError::Malformed {
        what,
        message: e.to_string(),
    }
}

fn from_s3_event(ev: S3Event) -> Result<Vec<ObjectRef>, TriggerError> {
    let mut out = Vec::new();
    for r in ev.records {
        let name = r.event_name.as_deref().unwrap_or_default();
        // "ObjectCreated:Put" (S3), "s3:ObjectCreated:Put" (some emulators).
        if !name.trim_start_matches("s3:").starts_with("ObjectCreated") {
            continue;
        }
        let bucket =
            r.s3.bucket
                .name
                .ok_or_else(|| malformed("S3 record", "no bucket name"))?;
        let key = r.s3.object.key.ok_or_else(|| malformed("S3 record", "no object key"))?;
        out.push(ObjectRef {
            bucket,
            key: decode_key(&key)?,
        });
    }
    Ok(out)
}

fn from_eventbridge(v: Value) -> Result<Vec<ObjectRef>, TriggerError> {
    let ev: EventBridgeEvent<Value> = serde_json::from_value(v).map_err(|e| malformed("EventBridge event", e))?;
    if ev.source != "aws.s3" || ev.detail_type != "Object Created" {
        return Ok(Vec::new());
    }
    let bucket = ev.detail.pointer("/bucket/name").and_then(Value::as_str);
    let key = ev.detail.pointer("/object/key").and_then(Value::as_str);
    match (bucket, key) {
        (Some(b), Some(k)) => Ok(vec![ObjectRef {
            bucket: b.to_string(),
            key: decode_key(k)?,
        }]),
        _ => Err(malformed("EventBridge event", "detail lacks bucket.name or object.key")),
    }
}

/// The objects named by an S3-notification-like document: an S3 event
/// (`Records`), an `s3:TestEvent` (none), an EventBridge event, or an SNS
/// notification wrapping one of these.
pub fn objects_of(v: Value) -> Result<Vec<ObjectRef>, TriggerError> {
    if v.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    if v.get("Type").and_then(Value::as_str) == Some("Notification")
        && let Some(msg) = v.get("Message").and_then(Value::as_str)
    {
        return objects_of(serde_json::from_str(msg).map_err(|e| malformed("SNS message", e))?);
    }
    if v.get("detail-type").is_some() {
        return from_eventbridge(v);
    }
    if v.get("Records").is_some() {
        let ev: S3Event = serde_json::from_value(v).map_err(|e| malformed("S3 event", e))?;
        return from_s3_event(ev);
    }
    Err(TriggerError::Unknown(first_keys(&v)))
}

fn first_keys(v: &Value) -> String {
    match v {
        Value::Object(m) => format!("object with keys {:?}", m.keys().take(5).collect::<Vec<_>>()),
        other => format!("JSON {}", if other.is_array() { "array" } else { "scalar" }),
    }
}

/// Parses an invocation's payload.
pub fn parse(event: Value) -> Result<Invocation, TriggerError> {
    let source = event
        .pointer("/Records/0/eventSource")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if source == "aws:sqs" {
        let ev: SqsEvent = serde_json::from_value(event).map_err(|e| malformed("SQS event", e))?;
        let items = ev
            .records
            .into_iter()
            .map(|m| {
                let message_id = m.message_id.unwrap_or_default();
                let work = m
                    .body
                    .as_deref()
                    .ok_or_else(|| malformed("SQS message", "no body"))
                    .and_then(|b| serde_json::from_str(b).map_err(|e| malformed("SQS message body", e)))
                    .and_then(work_of);
                SqsItem { message_id, work }
            })
            .collect();
        return Ok(Invocation::Sqs(items));
    }
    work_of(event).map(Invocation::Direct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s3_record(bucket: &str, key: &str, name: &str) -> Value {
        json!({
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": "2026-01-02T03:04:05.000Z", "eventName": name,
            "userIdentity": {"principalId": "AWS:X"},
            "requestParameters": {"sourceIPAddress": "127.0.0.1"},
            "responseElements": {"x-amz-request-id": "R"},
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "c",
                   "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A"}, "arn": format!("arn:aws:s3:::{bucket}")},
                   "object": {"key": key, "size": 10, "eTag": "e", "sequencer": "0A"}}
        })
    }

    fn obj(bucket: &str, key: &str) -> ObjectRef {
        ObjectRef {
            bucket: bucket.into(),
            key: key.into(),
        }
    }

    fn direct(ev: Value) -> Vec<ObjectRef> {
        match parse(ev).expect("parses") {
            Invocation::Direct(Work::Objects(objs)) => objs,
            other => panic!("not a direct invocation for objects: {other:?}"),
        }
    }

    #[test]
    fn keys_are_url_decoded() {
        assert_eq!(
            decode_key("logs/my+file%2B1.ndjson.gz").expect("ok"),
            "logs/my file+1.ndjson.gz"
        );
        assert_eq!(
            decode_key("logs/caf%C3%A9/%E6%97%A5%E6%9C%AC+x.gz").expect("ok"),
            "logs/café/日本 x.gz"
        );
        assert_eq!(decode_key("a%3Db/dt%3D1").expect("ok"), "a=b/dt=1");
        assert!(decode_key("bad%FF").is_err());
    }

    #[test]
    fn direct_s3_event_keeps_only_object_created() {
        let ev = json!({"Records": [
            s3_record("b", "logs/a+b.gz", "ObjectCreated:Put"),
            s3_record("b", "logs/gone.gz", "ObjectRemoved:Delete"),
        ]});
        assert_eq!(direct(ev), [obj("b", "logs/a b.gz")]);
    }

    #[test]
    fn sqs_messages_are_parsed_one_by_one() {
        let body = |v: Value| v.to_string();
        let msg = |id: &str, b: String| {
            json!({"messageId": id, "receiptHandle": "r", "body": b, "attributes": {},
            "messageAttributes": {}, "md5OfBody": "x", "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:q", "awsRegion": "us-east-1"})
        };
        let ev = json!({"Records": [
            msg("1", body(json!({"Records": [s3_record("b", "k%C3%A9", "ObjectCreated:CompleteMultipartUpload")]}))),
            msg("2", body(json!({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}))),
            msg("3", "not json".into()),
            msg("4", body(json!({"Type": "Notification", "Message": body(json!({"Records": [s3_record("b", "sns", "ObjectCreated:Copy")]}))}))),
        ]});
        let Invocation::Sqs(items) = parse(ev).expect("parses") else {
            panic!("not sqs")
        };
        let objects = |i: usize| match &items[i].work {
            Ok(Work::Objects(o)) => Ok(o.as_slice()),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.clone()),
        };
        assert_eq!(items.len(), 4);
        assert_eq!(
            objects(0).expect("ok"),
            &[ObjectRef {
                bucket: "b".into(),
                key: "ké".into()
            }]
        );
        assert_eq!(objects(1).expect("ok"), &[]);
        assert!(objects(2).is_err());
        assert_eq!(items[2].message_id, "3");
        assert_eq!(objects(3).expect("ok")[0].key, "sns");
    }

    #[test]
    fn eventbridge_object_created() {
        let ev = json!({"version": "0", "id": "i", "detail-type": "Object Created", "source": "aws.s3",
            "account": "1", "time": "2026-01-02T03:04:05Z", "region": "us-east-1", "resources": [],
            "detail": {"version": "0", "bucket": {"name": "b"}, "object": {"key": "logs/x+y%20z.gz", "size": 3, "etag": "e"},
                       "request-id": "r", "requester": "1", "reason": "PutObject"}});
        assert_eq!(direct(ev), [obj("b", "logs/x y z.gz")]);
        assert!(matches!(parse(json!({"hello": 1})), Err(TriggerError::Unknown(_))));
    }

    #[test]
    fn compact_requests_and_the_schedule() {
        let ev = json!({"compact": {"bucket": "b", "prefix": "/logs/2026/12/03/14/", "hour": "2026-12-03T14"}});
        let Invocation::Direct(Work::Compact(job)) = parse(ev).expect("parses") else {
            panic!("not a compaction")
        };
        assert_eq!(
            (job.bucket.as_str(), job.prefix.as_str(), job.source.as_str()),
            ("b", "logs/2026/12/03/14/", "logs")
        );
        assert_eq!(job.hour.to_rfc3339(), "2026-12-03T14:00:00+00:00");
        let ev = json!({"compact": {"bucket": "b", "prefix": "p/", "hour": "2026-12-03T14", "source": "web app"}});
        let Invocation::Direct(Work::Compact(job)) = parse(ev).expect("parses") else {
            panic!("not a compaction")
        };
        assert_eq!(job.source, "web_app");
        for bad in [
            json!({"compact": {"bucket": "b", "prefix": "p/", "hour": "today"}}),
            json!({"compact": {"bucket": "b", "hour": "2026-12-03T14"}}),
            json!({"compact": {"bucket": "b", "prefix": "p/", "hour": "2026-12-03T14", "extra": 1}}),
        ] {
            assert!(matches!(parse(bad), Err(TriggerError::Malformed { .. })));
        }
        let sched = json!({"version": "0", "id": "i", "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "1", "time": "2026-12-03T15:15:00Z", "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:1:rule/hourly"], "detail": {}});
        let Invocation::Direct(Work::Scheduled(t)) = parse(sched).expect("parses") else {
            panic!("not the schedule")
        };
        assert_eq!(t.to_rfc3339(), "2026-12-03T15:15:00+00:00");
        // An SQS message can carry a compaction too.
        let msg = json!({"Records": [{"messageId": "m", "receiptHandle": "r", "eventSource": "aws:sqs",
            "body": json!({"compact": {"bucket": "b", "prefix": "p/", "hour": "2026-12-03T14"}}).to_string(),
            "attributes": {}, "messageAttributes": {}}]});
        let Invocation::Sqs(items) = parse(msg).expect("parses") else {
            panic!("not sqs")
        };
        assert!(matches!(items[0].work, Ok(Work::Compact(_))));
    }
}
