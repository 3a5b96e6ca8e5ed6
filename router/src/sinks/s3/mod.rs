//! `type = "s3"`: time-sliced NDJSON objects in S3.
//!
//! Records are grouped by their rendered `key_prefix` into objects that are
//! compressed in memory as they are written. An object is closed at
//! `max_object_size` (uncompressed bytes) or after `flush_interval`. Small
//! objects go up with one PutObject; once an object's compressed bytes reach
//! `multipart_part_size` a multipart upload starts and parts stream out, so
//! memory per object stays near one part. The acks of the batches an object
//! holds are released only when S3 has the complete object.
//!
//! Errors never drop data: a failed request is retried with capped,
//! jittered backoff while the sink stops taking input (the files are the
//! queue). Permanent errors (no bucket, access denied) are logged once per
//! burst and make `/readyz` fail. Only at shutdown, after the sources have
//! given up waiting, are unfinished uploads aborted; their records stay
//! unacknowledged, so the checkpoint never covers them.

mod config;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::S3SinkConfig;

use super::SinkContext;
use super::aws::{self, Abandoned, RetryCtx};
use super::encoding::{CONTENT_TYPE, Encoder};
use crate::api::Health;
use crate::event::{AckToken, Batch};
use crate::memory::Charge;
use crate::metrics::ComponentMetrics;
use crate::sources::file::parse::TimestampFormatter;
use crate::template::{Renderer, Template};

struct Upload {
    id: String,
    parts: Vec<CompletedPart>,
}

struct Object {
    key: String,
    enc: Encoder<Vec<u8>>,
    bytes: u64,
    records: u64,
    min_ts: i64,
    max_ts: i64,
    opened: Instant,
    acks: Vec<AckToken>,
    upload: Option<Upload>,
}

struct S3Sink {
    id: String,
    cfg: S3SinkConfig,
    client: aws_sdk_s3::Client,
    renderer: Renderer,
    open: HashMap<String, Object>,
    m: ComponentMetrics,
    health: Arc<Health>,
    stop: CancellationToken,
    line: Vec<u8>,
    failing: std::sync::atomic::AtomicBool,
    /// Identifies this router in object names (task, pod or host).
    default_origin: String,
    /// Compressed bytes held in open objects, against `memory_limit`.
    charge: Charge,
}

pub async fn run(cfg: S3SinkConfig, mut input: mpsc::Receiver<Batch>, cx: SinkContext) {
    let SinkContext {
        id,
        m,
        health,
        stop,
        memory,
        ..
    } = cx;
    let template = match Template::parse(&cfg.key_prefix) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "invalid key_prefix");
            return;
        }
    };
    let sdk = aws::sdk_config(cfg.region.as_deref(), cfg.endpoint_url.as_deref()).await;
    if sdk.region().is_none() {
        tracing::warn!("no AWS region configured (sink `region`, AWS_REGION, profile or instance metadata)");
    }
    let s3conf = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(cfg.force_path_style)
        .build();
    let tick_every = (cfg.flush_interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut sink = S3Sink {
        client: aws_sdk_s3::Client::from_conf(s3conf),
        renderer: Renderer::new(template),
        open: HashMap::new(),
        m,
        health,
        stop,
        line: Vec::with_capacity(4096),
        failing: std::sync::atomic::AtomicBool::new(false),
        default_origin: default_origin(),
        charge: Charge::new(memory),
        id,
        cfg,
    };
    sink.health.set_sink(&sink.id, true);
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ready = tokio::select! {
            b = input.recv() => match b {
                Some(batch) => tokio::task::block_in_place(|| sink.write_batch(batch)),
                None => break,
            },
            _ = tick.tick() => sink.take_expired(),
        };
        if sink.finish_all(ready).await.is_err() {
            break;
        }
        if sink.upload_full_parts().await.is_err() {
            break;
        }
        if sink.relieve_memory().await.is_err() {
            break;
        }
    }
    let rest: Vec<Object> = sink.open.drain().map(|(_, o)| o).collect();
    let _ = sink.finish_all(rest).await;
}

impl S3Sink {
    /// Encodes a batch; returns the objects that became full.
    fn write_batch(&mut self, batch: Batch) -> Vec<Object> {
        let n = batch.len();
        self.m.received_events.inc_by(n as u64);
        self.m.received_bytes.inc_by(batch.bytes());
        let mut key = String::new();
        let mut touched: Vec<String> = Vec::new();
        self.renderer.begin_batch();
        let mut full = Vec::new();
        for i in 0..n {
            self.renderer.render(&batch, i, &mut key);
            self.line.clear();
            batch.encode(i, &mut self.line);
            self.line.push(b'\n');
            if !self.open.contains_key(&key) {
                let origin = origin_of(&batch, i).unwrap_or_else(|| self.default_origin.clone());
                match Encoder::new(
                    self.cfg.compression,
                    self.cfg.compression_level,
                    Vec::with_capacity(64 * 1024),
                ) {
                    Ok(enc) => {
                        let name = format!(
                            "{key}{origin}-{}{}",
                            uuid::Uuid::now_v7().simple(),
                            self.cfg.compression.extension()
                        );
                        self.open.insert(
                            key.clone(),
                            Object {
                                key: name,
                                enc,
                                bytes: 0,
                                records: 0,
                                min_ts: i64::MAX,
                                max_ts: i64::MIN,
                                opened: Instant::now(),
                                acks: Vec::new(),
                                upload: None,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a compressor");
                        batch.fail();
                        return full;
                    }
                }
            }
            let Some(obj) = self.open.get_mut(&key) else { continue };
            if obj.enc.write_all(&self.line).is_err() {
                // Writing into a Vec only fails if the compressor does.
                batch.fail();
                continue;
            }
            let ts = batch.ts_ms(i);
            obj.bytes += self.line.len() as u64;
            obj.records += 1;
            obj.min_ts = obj.min_ts.min(ts);
            obj.max_ts = obj.max_ts.max(ts);
            if !touched.contains(&key) {
                touched.push(key.clone());
            }
            if obj.bytes >= self.cfg.max_object_size.as_u64() {
                if let Some(ack) = &batch.ack {
                    obj.acks.push(ack.clone());
                }
                touched.retain(|k| k != &key);
                if let Some(o) = self.open.remove(&key) {
                    full.push(o);
                }
            }
        }
        if let Some(ack) = &batch.ack {
            for k in &touched {
                if let Some(o) = self.open.get_mut(k) {
                    o.acks.push(ack.clone());
                }
            }
        }
        full
    }

    /// Charges the open objects' compressed bytes to the memory limit; when
    /// it has no room, completes the largest objects early until it fits.
    async fn relieve_memory(&mut self) -> Result<(), Abandoned> {
        loop {
            let buffered: usize = self.open.values().map(|o| o.enc.get_ref().len()).sum();
            if self.charge.resize(buffered) {
                return Ok(());
            }
            let Some(key) = self
                .open
                .iter()
                .max_by_key(|(_, o)| o.enc.get_ref().len())
                .map(|(k, _)| k.clone())
            else {
                return Ok(());
            };
            if let Some(o) = self.open.remove(&key) {
                tracing::debug!(key = %o.key, "memory_limit reached: completing an object early");
                self.finish(o).await?;
            }
        }
    }

    fn take_expired(&mut self) -> Vec<Object> {
        let max_age = self.cfg.flush_interval;
        let keys: Vec<String> = self
            .open
            .iter()
            .filter(|(_, o)| o.opened.elapsed() >= max_age)
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter().filter_map(|k| self.open.remove(&k)).collect()
    }

    async fn finish_all(&mut self, objects: Vec<Object>) -> Result<(), Abandoned> {
        for o in objects {
            self.finish(o).await?;
        }
        Ok(())
    }

    /// Streams out a part of every open object whose compressed bytes reached
    /// the part size.
    async fn upload_full_parts(&mut self) -> Result<(), Abandoned> {
        let part = self.cfg.multipart_part_size.as_u64() as usize;
        let keys: Vec<String> = self
            .open
            .iter()
            .filter(|(_, o)| o.enc.get_ref().len() >= part)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            let Some(mut o) = self.open.remove(&k) else { continue };
            let body = std::mem::take(o.enc.get_mut());
            let r = self.upload_part(&mut o, body).await;
            self.open.insert(k, o);
            r?;
        }
        Ok(())
    }

    async fn upload_part(&mut self, o: &mut Object, body: Vec<u8>) -> Result<(), Abandoned> {
        if o.upload.is_none() {
            let id = self.create_upload(o).await?;
            o.upload = Some(Upload { id, parts: Vec::new() });
        }
        let Some(upload) = o.upload.as_mut() else {
            return Err(Abandoned);
        };
        let number = upload.parts.len() as i32 + 1;
        let (client, bucket, key, upload_id) = (
            self.client.clone(),
            self.cfg.bucket.clone(),
            o.key.clone(),
            upload.id.clone(),
        );
        let body = bytes::Bytes::from(body);
        let etag = self
            .retry_ctx()
            .run("UploadPart", || {
                client
                    .upload_part()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(body.clone()))
                    .send()
            })
            .await;
        match etag {
            Ok(out) => {
                if let Some(u) = o.upload.as_mut() {
                    u.parts.push(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(out.e_tag().map(str::to_string))
                            .build(),
                    );
                }
                Ok(())
            }
            Err(a) => {
                self.abort(o).await;
                Err(a)
            }
        }
    }

    async fn create_upload(&mut self, o: &Object) -> Result<String, Abandoned> {
        // S3 fixes user metadata when the upload starts, before the object's
        // record count and times are known: multipart objects carry none
        // rather than wrong ones (the indexer computes them anyway).
        let (client, cfg) = (self.client.clone(), self.cfg.clone());
        let key = o.key.clone();
        let out = self
            .retry_ctx()
            .run("CreateMultipartUpload", || {
                client
                    .create_multipart_upload()
                    .bucket(&cfg.bucket)
                    .key(&key)
                    .content_type(CONTENT_TYPE)
                    .set_content_encoding(cfg.compression.content_encoding().map(str::to_string))
                    .set_storage_class(cfg.storage_class.as_deref().map(StorageClass::from))
                    .set_server_side_encryption(cfg.server_side_encryption.as_deref().map(ServerSideEncryption::from))
                    .set_ssekms_key_id(cfg.kms_key_id.clone())
                    .send()
            })
            .await?;
        out.upload_id().map(str::to_string).ok_or(Abandoned)
    }

    /// Completes an object: one PutObject, or the last part and completion.
    async fn finish(&mut self, mut o: Object) -> Result<(), Abandoned> {
        let enc = std::mem::replace(&mut o.enc, Encoder::Plain(Vec::new()));
        let body = match enc.finish() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "compressor failed; the object's records stay unacknowledged");
                for a in &o.acks {
                    a.fail();
                }
                return Ok(());
            }
        };
        let compressed_tail = body.len();
        let result = if o.upload.is_some() {
            self.upload_part(&mut o, body).await?;
            self.complete(&mut o).await
        } else {
            self.put(&o, body).await
        };
        match result {
            Ok(()) => {
                self.m.sent_events.inc_by(o.records);
                self.m.sent_bytes.inc_by(o.bytes);
                self.m.objects_written.inc();
                tracing::debug!(key = %o.key, records = o.records, bytes = o.bytes, compressed_tail, "object written");
                Ok(())
            }
            Err(a) => {
                for ack in &o.acks {
                    ack.fail();
                }
                Err(a)
            }
        }
    }

    async fn put(&mut self, o: &Object, body: Vec<u8>) -> Result<(), Abandoned> {
        let (client, cfg) = (self.client.clone(), self.cfg.clone());
        let metadata = metadata(o);
        let key = o.key.clone();
        let body = bytes::Bytes::from(body);
        self.retry_ctx()
            .run("PutObject", || {
                client
                    .put_object()
                    .bucket(&cfg.bucket)
                    .key(&key)
                    .content_type(CONTENT_TYPE)
                    .set_content_encoding(cfg.compression.content_encoding().map(str::to_string))
                    .set_metadata(Some(metadata.clone()))
                    .body(ByteStream::from(body.clone()))
                    .set_storage_class(cfg.storage_class.as_deref().map(StorageClass::from))
                    .set_server_side_encryption(cfg.server_side_encryption.as_deref().map(ServerSideEncryption::from))
                    .set_ssekms_key_id(cfg.kms_key_id.clone())
                    .send()
            })
            .await
            .map(|_| ())
    }

    async fn complete(&mut self, o: &mut Object) -> Result<(), Abandoned> {
        let Some(upload) = o.upload.as_ref() else { return Ok(()) };
        let (client, bucket, key, id) = (
            self.client.clone(),
            self.cfg.bucket.clone(),
            o.key.clone(),
            upload.id.clone(),
        );
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(upload.parts.clone()))
            .build();
        let r = self
            .retry_ctx()
            .run("CompleteMultipartUpload", || {
                client
                    .complete_multipart_upload()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&id)
                    .multipart_upload(parts.clone())
                    .send()
            })
            .await;
        if r.is_err() {
            self.abort(o).await;
        }
        r.map(|_| ())
    }

    fn retry_ctx(&self) -> RetryCtx<'_> {
        RetryCtx {
            id: &self.id,
            service: "S3",
            m: &self.m,
            health: &self.health,
            stop: &self.stop,
            failing: &self.failing,
        }
    }

    /// Best effort: no orphaned multipart uploads.
    async fn abort(&mut self, o: &mut Object) {
        if let Some(u) = o.upload.take() {
            let r = self
                .client
                .abort_multipart_upload()
                .bucket(&self.cfg.bucket)
                .key(&o.key)
                .upload_id(&u.id)
                .send()
                .await;
            if let Err(e) = r {
                tracing::warn!(key = %o.key, error = %DisplayErrorContext(&e), "cannot abort multipart upload; a bucket lifecycle rule for incomplete uploads will remove it");
            }
        }
    }
}

fn metadata(o: &Object) -> HashMap<String, String> {
    let mut f = TimestampFormatter::new();
    let fmt = |ts: i64, f: &mut TimestampFormatter| {
        let mut b = Vec::new();
        f.write(ts, &mut b);
        String::from_utf8(b).unwrap_or_default()
    };
    HashMap::from([
        ("records".to_string(), o.records.to_string()),
        ("min-event-time".to_string(), fmt(o.min_ts, &mut f)),
        ("max-event-time".to_string(), fmt(o.max_ts, &mut f)),
    ])
}

/// Task, pod or host of the record, for object names.
fn origin_of(batch: &Batch, i: usize) -> Option<String> {
    ["ecs_task_id", "kubernetes.pod_name", "ec2_instance_id"]
        .iter()
        .find_map(|f| batch.lookup(i, f).map(|v| sanitize(&v)))
}

fn default_origin() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| sanitize(h.trim()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "logferry".to_string())
}

fn sanitize(v: &str) -> String {
    v.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
