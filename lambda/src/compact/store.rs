//! The S3 calls the compactor makes, behind a trait, so that the crash-point
//! tests can run the real compactor over an in-memory bucket that dies at
//! any chosen call ([`MemoryStore`]), and production runs it over S3
//! ([`S3Store`]).
//!
//! Writes that must never be seen half done are whole objects: a Parquet
//! file is a multipart upload, invisible until completed.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, Tag, Tagging};
use tokio::io::AsyncRead;

use crate::process::{FailureKind, ProcessError};

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub etag: String,
    pub size: u64,
}

/// An object being read.
pub struct Got {
    pub etag: String,
    pub content_encoding: Option<String>,
    pub body: Box<dyn AsyncRead + Send + Unpin>,
}

/// What the compactor needs from S3.
pub trait Store: Send + Sync + 'static {
    /// Every object under `prefix`, in key order.
    fn list(&self, bucket: &str, prefix: &str) -> impl Future<Output = Result<Vec<Listed>, ProcessError>> + Send;
    /// The object, if it exists and (with `if_match`) still has that ETag;
    /// `None` when it is gone or was replaced.
    fn get(
        &self,
        bucket: &str,
        key: &str,
        if_match: Option<&str>,
    ) -> impl Future<Output = Result<Option<Got>, ProcessError>> + Send;
    fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> impl Future<Output = Result<(), ProcessError>> + Send;
    /// Writes only where there is no object (`expected` None: `If-None-Match: *`)
    /// or where it still has ETag `expected` (`If-Match`): S3's conditional
    /// writes, of which one racing writer wins. The new ETag, or `None` when
    /// the condition did not hold.
    fn put_if(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        expected: Option<&str>,
    ) -> impl Future<Output = Result<Option<String>, ProcessError>> + Send;
    /// Deletes `keys` (missing ones are fine).
    fn delete(&self, bucket: &str, keys: &[String]) -> impl Future<Output = Result<(), ProcessError>> + Send;
    /// Adds one tag to an object, keeping its others; a missing object is fine.
    fn tag(&self, bucket: &str, key: &str, tag: (&str, &str)) -> impl Future<Output = Result<(), ProcessError>> + Send;
    fn upload_start(&self, bucket: &str, key: &str) -> impl Future<Output = Result<String, ProcessError>> + Send;
    /// Part `n` (from 1); returns its ETag.
    fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload: &str,
        n: i32,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<String, ProcessError>> + Send;
    fn upload_complete(
        &self,
        bucket: &str,
        key: &str,
        upload: &str,
        parts: Vec<(i32, String)>,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send;
    /// Abandons a multipart upload and frees its parts; one already gone is fine.
    fn upload_abort(
        &self,
        bucket: &str,
        key: &str,
        upload: &str,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send;
    /// The incomplete multipart uploads of keys under `prefix`, as (key, upload id).
    fn uploads_list(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, ProcessError>> + Send;
}

/// Reads a whole small object (manifests, index documents).
pub async fn read_all<S: Store>(store: &S, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, ProcessError> {
    Ok(read_tagged(store, bucket, key).await?.map(|(_, body)| body))
}

/// Reads a whole small object with its ETag (for a conditional write over it).
pub async fn read_tagged<S: Store>(
    store: &S,
    bucket: &str,
    key: &str,
) -> Result<Option<(String, Vec<u8>)>, ProcessError> {
    use tokio::io::AsyncReadExt;
    let Some(mut got) = store.get(bucket, key, None).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    got.body
        .read_to_end(&mut out)
        .await
        .map_err(|e| ProcessError::new(FailureKind::S3Read, "GetObject (body)", bucket, key, e.to_string()))?;
    Ok(Some((got.etag, out)))
}

/// The real thing.
pub struct S3Store(pub Client);

fn sdk<E: ProvideErrorMetadata + std::error::Error + 'static>(
    otherwise: FailureKind,
    op: &'static str,
    bucket: &str,
    key: &str,
    e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> ProcessError {
    ProcessError::from_sdk(otherwise, op, bucket, key, &e)
}

impl Store for S3Store {
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<Listed>, ProcessError> {
        let mut out = Vec::new();
        let mut pages = self
            .0
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk(FailureKind::S3Read, "ListObjectsV2", bucket, prefix, e))?;
            for o in page.contents() {
                out.push(Listed {
                    key: o.key().unwrap_or_default().to_string(),
                    etag: o.e_tag().unwrap_or_default().to_string(),
                    size: o.size().unwrap_or_default().max(0) as u64,
                });
            }
        }
        Ok(out)
    }

    async fn get(&self, bucket: &str, key: &str, if_match: Option<&str>) -> Result<Option<Got>, ProcessError> {
        match self
            .0
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_if_match(if_match.map(str::to_string))
            .send()
            .await
        {
            Ok(g) => Ok(Some(Got {
                etag: g.e_tag().unwrap_or_default().to_string(),
                content_encoding: g.content_encoding().map(str::to_string),
                body: Box::new(g.body.into_async_read()),
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => Ok(None),
            Err(e) => Err(sdk(FailureKind::S3Read, "GetObject", bucket, key, e)),
        }
    }

    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), ProcessError> {
        self.0
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk(FailureKind::S3Write, "PutObject", bucket, key, e))
    }

    async fn put_if(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        expected: Option<&str>,
    ) -> Result<Option<String>, ProcessError> {
        let req = self.0.put_object().bucket(bucket).key(key).body(ByteStream::from(body));
        let req = match expected {
            Some(etag) => req.if_match(etag),
            None => req.if_none_match("*"),
        };
        match req.send().await {
            Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_string())),
            Err(e) => match e.raw_response().map(|r| r.status().as_u16()) {
                // 412: the condition failed; 409 (ConditionalRequestConflict):
                // a racing conditional write to the key won; 404 (NoSuchKey):
                // an If-Match on a key removed meanwhile.
                Some(404 | 409 | 412) => Ok(None),
                _ => Err(sdk(FailureKind::S3Write, "PutObject (conditional)", bucket, key, e)),
            },
        }
    }

    async fn delete(&self, bucket: &str, keys: &[String]) -> Result<(), ProcessError> {
        for chunk in keys.chunks(1000) {
            let ids = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build().expect("key set"))
                .collect();
            let del = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .expect("objects set");
            let out = self
                .0
                .delete_objects()
                .bucket(bucket)
                .delete(del)
                .send()
                .await
                .map_err(|e| sdk(FailureKind::S3Write, "DeleteObjects", bucket, &chunk[0], e))?;
            if let Some(e) = out.errors().first() {
                let kind = FailureKind::classify(e.code(), None, FailureKind::S3Write);
                return Err(ProcessError::new(
                    kind,
                    "DeleteObjects",
                    bucket,
                    e.key().unwrap_or_default(),
                    format!("{}: {}", e.code().unwrap_or_default(), e.message().unwrap_or_default()),
                ));
            }
        }
        Ok(())
    }

    async fn tag(&self, bucket: &str, key: &str, tag: (&str, &str)) -> Result<(), ProcessError> {
        let now = match self.0.get_object_tagging().bucket(bucket).key(key).send().await {
            Ok(t) => t,
            Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("NoSuchKey") => return Ok(()),
            Err(e) => return Err(sdk(FailureKind::S3Read, "GetObjectTagging", bucket, key, e)),
        };
        let mut tags: Vec<Tag> = now.tag_set().iter().filter(|t| t.key() != tag.0).cloned().collect();
        if now.tag_set().iter().any(|t| t.key() == tag.0 && t.value() == tag.1) {
            return Ok(());
        }
        tags.push(
            Tag::builder()
                .key(tag.0)
                .value(tag.1)
                .build()
                .expect("key and value set"),
        );
        let tagging = Tagging::builder().set_tag_set(Some(tags)).build().expect("tags set");
        match self
            .0
            .put_object_tagging()
            .bucket(bucket)
            .key(key)
            .tagging(tagging)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("NoSuchKey") => Ok(()),
            Err(e) => Err(sdk(FailureKind::S3Write, "PutObjectTagging", bucket, key, e)),
        }
    }

    async fn upload_start(&self, bucket: &str, key: &str) -> Result<String, ProcessError> {
        let out = self
            .0
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type("application/vnd.apache.parquet")
            .send()
            .await
            .map_err(|e| sdk(FailureKind::S3Write, "CreateMultipartUpload", bucket, key, e))?;
        Ok(out.upload_id().unwrap_or_default().to_string())
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload: &str,
        n: i32,
        body: Vec<u8>,
    ) -> Result<String, ProcessError> {
        let out = self
            .0
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload)
            .part_number(n)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| sdk(FailureKind::S3Write, "UploadPart", bucket, key, e))?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn upload_complete(
        &self,
        bucket: &str,
        key: &str,
        upload: &str,
        parts: Vec<(i32, String)>,
    ) -> Result<(), ProcessError> {
        let parts = parts
            .into_iter()
            .map(|(n, etag)| CompletedPart::builder().part_number(n).e_tag(etag).build())
            .collect();
        self.0
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk(FailureKind::S3Write, "CompleteMultipartUpload", bucket, key, e))
    }

    async fn upload_abort(&self, bucket: &str, key: &str, upload: &str) -> Result<(), ProcessError> {
        match self
            .0
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_upload()) => Ok(()),
            Err(e) => Err(sdk(FailureKind::S3Write, "AbortMultipartUpload", bucket, key, e)),
        }
    }

    async fn uploads_list(&self, bucket: &str, prefix: &str) -> Result<Vec<(String, String)>, ProcessError> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let page = self
                .0
                .list_multipart_uploads()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| sdk(FailureKind::S3Read, "ListMultipartUploads", bucket, prefix, e))?;
            for u in page.uploads() {
                out.push((
                    u.key().unwrap_or_default().to_string(),
                    u.upload_id().unwrap_or_default().to_string(),
                ));
            }
            if !page.is_truncated().unwrap_or(false) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(out);
            }
        }
    }
}

/// An in-memory bucket that can die at a chosen write: after `crash_after`
/// successful writes (put, delete, tag, upload start, part, complete,
/// abort), every call fails,
/// as if the function had been killed there.
#[derive(Default)]
pub struct MemoryStore {
    pub state: Mutex<MemoryState>,
}

/// An object in a [`MemoryStore`]: bytes, ETag, tags.
pub type MemoryObject = (Vec<u8>, String, BTreeMap<String, String>);

#[derive(Default, Clone)]
pub struct MemoryState {
    pub objects: BTreeMap<String, MemoryObject>,
    /// Incomplete multipart uploads: id -> (key, parts).
    uploads: BTreeMap<String, (String, BTreeMap<i32, Vec<u8>>)>,
    next: u64,
    /// Writes done so far.
    pub writes: u64,
    pub crash_after: Option<u64>,
    pub crashed: bool,
}

impl MemoryStore {
    pub fn with(objects: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        let s = MemoryStore::default();
        {
            let mut st = s.state.lock().expect("not poisoned");
            for (k, v) in objects {
                st.insert(k, v);
            }
        }
        s
    }

    fn write<T>(&self, op: &'static str, key: &str, f: impl FnOnce(&mut MemoryState) -> T) -> Result<T, ProcessError> {
        let mut st = self.state.lock().expect("not poisoned");
        if st.crashed || st.crash_after.is_some_and(|n| st.writes >= n) {
            st.crashed = true;
            return Err(ProcessError::new(FailureKind::Internal, op, "mem", key, "crashed"));
        }
        st.writes += 1;
        Ok(f(&mut st))
    }

    fn read<T>(&self, op: &'static str, key: &str, f: impl FnOnce(&MemoryState) -> T) -> Result<T, ProcessError> {
        let st = self.state.lock().expect("not poisoned");
        if st.crashed {
            return Err(ProcessError::new(FailureKind::Internal, op, "mem", key, "crashed"));
        }
        Ok(f(&st))
    }
}

impl MemoryState {
    pub fn insert(&mut self, key: String, body: Vec<u8>) {
        self.next += 1;
        let etag = format!("\"{:x}-{}\"", xxhash_rust::xxh3::xxh3_64(&body), self.next);
        self.objects.insert(key, (body, etag, BTreeMap::new()));
    }

    /// The keys of the multipart uploads started and neither completed nor aborted.
    pub fn incomplete_uploads(&self) -> Vec<String> {
        self.uploads.values().map(|(k, _)| k.clone()).collect()
    }
}

impl Store for MemoryStore {
    async fn list(&self, _bucket: &str, prefix: &str) -> Result<Vec<Listed>, ProcessError> {
        self.read("List", prefix, |st| {
            st.objects
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, (b, e, _))| Listed {
                    key: k.clone(),
                    etag: e.clone(),
                    size: b.len() as u64,
                })
                .collect()
        })
    }

    async fn get(&self, _bucket: &str, key: &str, if_match: Option<&str>) -> Result<Option<Got>, ProcessError> {
        self.read("Get", key, |st| {
            st.objects
                .get(key)
                .filter(|(_, e, _)| if_match.is_none_or(|m| m == e))
                .map(|(b, e, _)| Got {
                    etag: e.clone(),
                    content_encoding: None,
                    body: Box::new(std::io::Cursor::new(b.clone())),
                })
        })
    }

    async fn put(&self, _bucket: &str, key: &str, body: Vec<u8>) -> Result<(), ProcessError> {
        self.write("Put", key, |st| st.insert(key.to_string(), body))
    }

    async fn put_if(
        &self,
        _bucket: &str,
        key: &str,
        body: Vec<u8>,
        expected: Option<&str>,
    ) -> Result<Option<String>, ProcessError> {
        self.write("PutIf", key, |st| {
            let now = st.objects.get(key).map(|(_, e, _)| e.as_str());
            if now != expected {
                return None;
            }
            st.insert(key.to_string(), body);
            st.objects.get(key).map(|(_, e, _)| e.clone())
        })
    }

    async fn delete(&self, _bucket: &str, keys: &[String]) -> Result<(), ProcessError> {
        // One call per key: a crash can fall between any two.
        for k in keys {
            self.write("Delete", k, |st| {
                st.objects.remove(k);
            })?;
        }
        Ok(())
    }

    async fn tag(&self, _bucket: &str, key: &str, tag: (&str, &str)) -> Result<(), ProcessError> {
        self.write("Tag", key, |st| {
            if let Some((_, _, tags)) = st.objects.get_mut(key) {
                tags.insert(tag.0.to_string(), tag.1.to_string());
            }
        })
    }

    async fn upload_start(&self, _bucket: &str, key: &str) -> Result<String, ProcessError> {
        self.write("UploadStart", key, |st| {
            st.next += 1;
            let id = format!("u{}", st.next);
            st.uploads.insert(id.clone(), (key.to_string(), BTreeMap::new()));
            id
        })
    }

    async fn upload_part(
        &self,
        _bucket: &str,
        key: &str,
        upload: &str,
        n: i32,
        body: Vec<u8>,
    ) -> Result<String, ProcessError> {
        self.write("UploadPart", key, |st| {
            st.uploads.get_mut(upload).expect("started").1.insert(n, body);
            format!("\"p{n}\"")
        })
    }

    async fn upload_complete(
        &self,
        _bucket: &str,
        key: &str,
        upload: &str,
        parts: Vec<(i32, String)>,
    ) -> Result<(), ProcessError> {
        self.write("UploadComplete", key, |st| {
            let (_, mut stored) = st.uploads.remove(upload).expect("started");
            let mut body = Vec::new();
            for (n, _) in parts {
                body.extend(stored.remove(&n).expect("part uploaded"));
            }
            st.insert(key.to_string(), body);
        })
    }

    async fn upload_abort(&self, _bucket: &str, key: &str, upload: &str) -> Result<(), ProcessError> {
        self.write("UploadAbort", key, |st| {
            st.uploads.remove(upload);
        })
    }

    async fn uploads_list(&self, _bucket: &str, prefix: &str) -> Result<Vec<(String, String)>, ProcessError> {
        self.read("ListUploads", prefix, |st| {
            st.uploads
                .iter()
                .filter(|(_, (k, _))| k.starts_with(prefix))
                .map(|(id, (k, _))| (k.clone(), id.clone()))
                .collect()
        })
    }
}
