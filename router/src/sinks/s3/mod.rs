//! `type = "s3"`: time-sliced NDJSON objects in S3.
//!
//! The object batcher (`sinks/object/`) groups records by their rendered
//! `key_prefix` into objects, compresses them, closes them at
//! `max_object_size` (uncompressed bytes), after `flush_interval` or early
//! when `memory_limit` is spent, and releases their batches' acks once this
//! sink has them in S3. This file is the S3 side: small objects go up with
//! one PutObject; once an object's compressed bytes reach
//! `multipart_part_size` a multipart upload starts and parts stream out, so
//! memory per object stays near one part.
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

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::S3SinkConfig;

use super::SinkContext;
use super::aws::{self, Abandoned, RetryCtx};
use super::encoding::CONTENT_TYPE;
use super::object::{self, Batching, Body, Budget, Closed, Delivery, Destination, ObjectBatcher, ObjectError, Stopped};
use crate::api::Health;
use crate::event::Batch;
use crate::metrics::ComponentMetrics;
use crate::sources::file::parse::TimestampFormatter;

/// A multipart upload in progress.
struct Upload {
    id: String,
    parts: Vec<CompletedPart>,
}

/// What the sink keeps per open object.
#[derive(Default)]
pub struct Multipart {
    upload: Option<Upload>,
    /// The upload was aborted: the object can no longer be completed.
    aborted: bool,
}

struct S3Dest {
    id: String,
    cfg: S3SinkConfig,
    client: aws_sdk_s3::Client,
    m: ComponentMetrics,
    health: Arc<Health>,
    stop: CancellationToken,
    failing: std::sync::atomic::AtomicBool,
    /// Identifies this router in object names (task, pod or host).
    default_origin: String,
}

pub async fn run(cfg: S3SinkConfig, input: mpsc::Receiver<Batch>, cx: SinkContext) {
    let SinkContext {
        id,
        m,
        health,
        stop,
        memory,
        memory_limit,
        ..
    } = cx;
    let Some(batching) = Batching::from_keys(
        &cfg.key_prefix,
        cfg.compression,
        cfg.compression_level,
        cfg.max_object_size.as_u64(),
        cfg.flush_interval,
    )
    .map(|b| b.with_format(cfg.record_format())) else {
        return;
    };
    let sdk = aws::sink_sdk_config(cfg.region.as_deref(), cfg.endpoint_url.as_deref()).await;
    let s3conf = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(cfg.force_path_style)
        .build();
    let budget = Budget {
        memory,
        memory_limit,
        m: m.clone(),
    };
    let dest = S3Dest {
        client: aws_sdk_s3::Client::from_conf(s3conf),
        m,
        health,
        stop,
        failing: std::sync::atomic::AtomicBool::new(false),
        default_origin: default_origin(),
        id,
        cfg,
    };
    dest.health.set_sink(&dest.id, true);
    object::run(dest, batching, input, budget).await;
}

impl Destination for S3Dest {
    type Out = Vec<u8>;
    type State = Multipart;

    fn name(&self, prefix: &str, batch: &Batch, i: usize) -> String {
        let origin = origin_of(batch, i);
        format!(
            "{prefix}{}-{}{}",
            origin.as_deref().unwrap_or(&self.default_origin),
            uuid::Uuid::now_v7().simple(),
            self.cfg.compression.extension()
        )
    }

    fn open(&mut self, _name: &str) -> std::io::Result<Vec<u8>> {
        Ok(Vec::with_capacity(64 * 1024))
    }

    fn held(out: &Vec<u8>) -> usize {
        out.len()
    }

    async fn deliver(&mut self, objects: Vec<Closed<Vec<u8>, Multipart>>) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(objects.len());
        for o in objects {
            let d = if out.last() == Some(&Delivery::Stopped) {
                Delivery::Stopped
            } else {
                self.finish(o).await
            };
            out.push(d);
        }
        out
    }

    /// Streams out a part of every open object whose compressed bytes
    /// reached the part size.
    async fn between_batches(&mut self, objects: &mut ObjectBatcher<Self>) -> Result<(), Stopped> {
        let part = self.cfg.multipart_part_size.as_u64() as usize;
        for key in objects.outputs_at_least(part) {
            let Some(mut o) = objects.checkout(&key) else { continue };
            let body = o.output_mut().map(std::mem::take).unwrap_or_default();
            let name = o.name().to_string();
            let r = self.upload_part(&name, o.state_mut(), body).await;
            objects.checkin(key, o);
            r.map_err(|Abandoned| Stopped)?;
        }
        Ok(())
    }

    fn error(&mut self, e: &ObjectError) {
        self.m.sink_error(e.reason());
        tracing::error!(error = %e, "the object's records stay unacknowledged");
    }
}

impl S3Dest {
    /// Completes an object: one PutObject, or the last part and completion.
    async fn finish(&mut self, o: Closed<Vec<u8>, Multipart>) -> Delivery {
        let Closed {
            name,
            records,
            bytes,
            min_ts,
            max_ts,
            body,
            mut state,
            ..
        } = o;
        if state.aborted {
            return Delivery::Failed;
        }
        let body = match body {
            Body::Whole(b) | Body::Streamed(b) => b,
        };
        let compressed_tail = body.len();
        let result = if state.upload.is_some() {
            match self.upload_part(&name, &mut state, body).await {
                Ok(()) => self.complete(&name, &mut state).await,
                Err(a) => Err(a),
            }
        } else {
            self.put(&name, metadata(records, min_ts, max_ts), body).await
        };
        match result {
            Ok(()) => {
                tracing::debug!(key = %name, records, bytes, compressed_tail, "object written");
                Delivery::Delivered
            }
            Err(Abandoned) => Delivery::Stopped,
        }
    }

    async fn upload_part(&mut self, key: &str, state: &mut Multipart, body: Vec<u8>) -> Result<(), Abandoned> {
        if state.upload.is_none() {
            let id = self.create_upload(key).await?;
            state.upload = Some(Upload { id, parts: Vec::new() });
        }
        let Some(upload) = state.upload.as_mut() else {
            return Err(Abandoned);
        };
        let number = upload.parts.len() as i32 + 1;
        let (client, bucket, upload_id) = (self.client.clone(), self.cfg.bucket.clone(), upload.id.clone());
        let body = bytes::Bytes::from(body);
        let etag = self
            .retry_ctx()
            .run("UploadPart", || {
                client
                    .upload_part()
                    .bucket(&bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(body.clone()))
                    .send()
            })
            .await;
        match etag {
            Ok(out) => {
                if let Some(u) = state.upload.as_mut() {
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
                self.abort(key, state).await;
                Err(a)
            }
        }
    }

    async fn create_upload(&mut self, key: &str) -> Result<String, Abandoned> {
        // S3 fixes user metadata when the upload starts, before the object's
        // record count and times are known: multipart objects carry none
        // rather than wrong ones (the indexer computes them anyway).
        let (client, cfg) = (self.client.clone(), self.cfg.clone());
        let out = self
            .retry_ctx()
            .run("CreateMultipartUpload", || {
                client
                    .create_multipart_upload()
                    .bucket(&cfg.bucket)
                    .key(key)
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

    async fn put(&mut self, key: &str, metadata: HashMap<String, String>, body: Vec<u8>) -> Result<(), Abandoned> {
        let (client, cfg) = (self.client.clone(), self.cfg.clone());
        let body = bytes::Bytes::from(body);
        self.retry_ctx()
            .run("PutObject", || {
                client
                    .put_object()
                    .bucket(&cfg.bucket)
                    .key(key)
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

    async fn complete(&mut self, key: &str, state: &mut Multipart) -> Result<(), Abandoned> {
        let Some(upload) = state.upload.as_ref() else {
            return Ok(());
        };
        let (client, bucket, id) = (self.client.clone(), self.cfg.bucket.clone(), upload.id.clone());
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(upload.parts.clone()))
            .build();
        let r = self
            .retry_ctx()
            .run("CompleteMultipartUpload", || {
                client
                    .complete_multipart_upload()
                    .bucket(&bucket)
                    .key(key)
                    .upload_id(&id)
                    .multipart_upload(parts.clone())
                    .send()
            })
            .await;
        if r.is_err() {
            self.abort(key, state).await;
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
    async fn abort(&mut self, key: &str, state: &mut Multipart) {
        if let Some(u) = state.upload.take() {
            state.aborted = true;
            let r = self
                .client
                .abort_multipart_upload()
                .bucket(&self.cfg.bucket)
                .key(key)
                .upload_id(&u.id)
                .send()
                .await;
            if let Err(e) = r {
                tracing::warn!(key, error = %DisplayErrorContext(&e), "cannot abort multipart upload; a bucket lifecycle rule for incomplete uploads will remove it");
            }
        }
    }
}

fn metadata(records: u64, min_ts: i64, max_ts: i64) -> HashMap<String, String> {
    let mut f = TimestampFormatter::new();
    let fmt = |ts: i64, f: &mut TimestampFormatter| {
        let mut b = Vec::new();
        f.write(ts, &mut b);
        String::from_utf8(b).unwrap_or_default()
    };
    HashMap::from([
        ("records".to_string(), records.to_string()),
        ("min-event-time".to_string(), fmt(min_ts, &mut f)),
        ("max-event-time".to_string(), fmt(max_ts, &mut f)),
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
