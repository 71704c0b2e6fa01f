//! Amazon S3 (or any S3-compatible server) as the object store and presigner.

use crate::storage::{ObjectStore, Presigner, Revalidated, StoreError, Versioned, WriteCondition};
use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::head_object::HeadObjectError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use std::time::Duration;

/// Largest record read into memory (records are small; assets are never read through here).
const MAX_RECORD_BYTES: i64 = 4 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct S3Store {
    client: Client,
    bucket: String,
}

impl S3Store {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        S3Store { client, bucket: bucket.into() }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

fn unavailable<E: std::error::Error + 'static, R: std::fmt::Debug>(
    op: &str,
    key: &str,
    err: SdkError<E, R>,
) -> StoreError {
    StoreError::Unavailable(format!("S3 {op} {key}: {}", DisplayErrorContext(&err)))
}

impl S3Store {
    /// GetObject, conditional on the object no longer carrying `unless` (`Ok(None)`: it still
    /// does, S3 answered 304).
    async fn get_object(&self, key: &str, unless: Option<&str>) -> Result<Option<Option<Versioned>>, StoreError> {
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_none_match(unless.map(str::to_string))
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(SdkError::ServiceError(e)) if matches!(e.err(), GetObjectError::NoSuchKey(_)) => return Ok(Some(None)),
            Err(e) => match e.raw_response().map(|r| r.status().as_u16()) {
                Some(404) => return Ok(Some(None)),
                Some(304) if unless.is_some() => return Ok(None),
                _ => return Err(unavailable("GetObject", key, e)),
            },
        };
        if output.content_length().unwrap_or(0) > MAX_RECORD_BYTES {
            return Err(StoreError::Unavailable(format!("S3 object {key} is too large to be a record")));
        }
        let etag = output.e_tag().map(str::to_string);
        let body = output
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Unavailable(format!("S3 GetObject {key}: body: {e}")))?
            .into_bytes()
            .to_vec();
        Ok(Some(Some(Versioned { body, etag })))
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self.get_object(key, None).await?.flatten())
    }

    async fn get_unless(&self, key: &str, etag: &str) -> Result<Revalidated, StoreError> {
        Ok(match self.get_object(key, Some(etag)).await? {
            None => Revalidated::Unchanged,
            // A server that ignores the condition answers in full: compare the tags here.
            Some(Some(object)) if object.etag.as_deref() == Some(etag) => Revalidated::Unchanged,
            Some(current) => Revalidated::Changed(current),
        })
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if matches!(e.err(), HeadObjectError::NotFound(_)) => Ok(false),
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => Ok(false),
            Err(e) => Err(unavailable("HeadObject", key, e)),
        }
    }

    async fn put(&self, key: &str, body: Vec<u8>, condition: WriteCondition) -> Result<(), StoreError> {
        let mut request = self.client.put_object().bucket(&self.bucket).key(key).body(ByteStream::from(body));
        request = match &condition {
            WriteCondition::Always => request,
            WriteCondition::Absent => request.if_none_match("*"),
            WriteCondition::Matches(etag) => request.if_match(etag),
        };
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(e.raw_response().map(|r| r.status().as_u16()), Some(412) | Some(409))
                    || matches!(e.code(), Some("PreconditionFailed") | Some("ConditionalRequestConflict")) =>
            {
                Err(StoreError::Conflict(key.to_string()))
            }
            Err(e) => Err(unavailable("PutObject", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| unavailable("ListObjectsV2", prefix, e))?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        }
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable("DeleteObject", key, e))
    }
}

#[async_trait]
impl Presigner for S3Store {
    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, StoreError> {
        let config = PresigningConfig::expires_in(ttl)
            .map_err(|e| StoreError::Unavailable(format!("presigning lifetime {ttl:?}: {e}")))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| unavailable("presign GetObject", key, e))?;
        Ok(request.uri().to_string())
    }
}
