//! Asset uploads: hashed while read, stored content-addressed, skipped when already there,
//! verified by the store (SHA-256 checksums on S3), multipart above 64 MiB, reporting progress
//! to the caller.

use super::backends::Store;
use super::{file_error, Deployment, OpError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use ipxe_edge_core::domain::model::Asset;
use ipxe_edge_core::storage::keys;
use ipxe_edge_core::storage::StoreError;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

pub const MULTIPART_THRESHOLD: u64 = 64 * 1024 * 1024;
pub const PART_SIZE: usize = 16 * 1024 * 1024;

/// What an upload reports while it runs, for the caller to show (the CLI draws progress bars on
/// a terminal and names each stored file); uploads themselves print nothing.
pub trait Progress: Sync {
    /// A step over `len` bytes begins (`what`: "hashing", "uploading").
    fn begin(&self, what: &'static str, len: u64);
    /// `bytes` more of the current step are done.
    fn advance(&self, bytes: u64);
    /// The current step is over.
    fn end(&self);
    /// `path` is in the store as `asset`; `already` when it was there before.
    fn stored(&self, path: &Path, asset: &Asset, already: bool);
}

/// Reports nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn begin(&self, _: &'static str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn end(&self) {}
    fn stored(&self, _: &Path, _: &Asset, _: bool) {}
}

/// SHA-256 and size of a file, read once.
pub fn hash_file(path: &Path, progress: &dyn Progress) -> Result<(String, u64), OpError> {
    let mut file = std::fs::File::open(path).map_err(file_error(path))?;
    let len = file.metadata().map_err(file_error(path))?.len();
    progress.begin("hashing", len);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(file_error(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        progress.advance(n as u64);
    }
    progress.end();
    Ok((hex::encode(hasher.finalize()), total))
}

/// Stores a file as a content-addressed asset and returns its manifest entry.
pub async fn upload(ctx: &Deployment, path: &Path, progress: &dyn Progress) -> Result<Asset, OpError> {
    let (sha256, size) = hash_file(path, progress)?;
    let asset = Asset { key: keys::asset(&sha256), sha256: sha256.clone(), size };
    if ctx.store().exists(&asset.key).await? {
        progress.stored(path, &asset, true);
        return Ok(asset);
    }
    match &ctx.store {
        Store::Embedded(_) => {
            // Copy through a temporary file in the bucket, checking the digest before it appears.
            let bytes = std::fs::read(path).map_err(file_error(path))?;
            if hex::encode(Sha256::digest(&bytes)) != sha256 {
                return Err(OpError::Refused(format!("{} changed while it was being uploaded", path.display())));
            }
            ctx.store().put(&asset.key, bytes, ipxe_edge_core::storage::WriteCondition::Always).await?;
        }
        Store::S3(s3) => {
            if size > MULTIPART_THRESHOLD {
                multipart(s3.client(), s3.bucket(), &asset.key, path, size, progress).await?;
            } else {
                let body = std::fs::read(path).map_err(file_error(path))?;
                let checksum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&body));
                progress.begin("uploading", size);
                s3.client()
                    .put_object()
                    .bucket(s3.bucket())
                    .key(&asset.key)
                    .checksum_sha256(checksum)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| {
                        StoreError::Unavailable(format!(
                            "upload {}: {}",
                            asset.key,
                            aws_sdk_s3::error::DisplayErrorContext(&e)
                        ))
                    })?;
                progress.end();
            }
            let head = s3.client().head_object().bucket(s3.bucket()).key(&asset.key).send().await.map_err(|e| {
                StoreError::Unavailable(format!("verify {}: {}", asset.key, aws_sdk_s3::error::DisplayErrorContext(&e)))
            })?;
            if head.content_length() != Some(size as i64) {
                return Err(OpError::Refused(format!(
                    "{} was stored with {:?} bytes instead of {size}",
                    asset.key,
                    head.content_length()
                )));
            }
        }
    }
    progress.stored(path, &asset, false);
    Ok(asset)
}

async fn multipart(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    path: &Path,
    size: u64,
    progress: &dyn Progress,
) -> Result<(), OpError> {
    let s3_err = |what: &str, e: String| OpError::from(StoreError::Unavailable(format!("{what} {key}: {e}")));
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .send()
        .await
        .map_err(|e| s3_err("CreateMultipartUpload", aws_sdk_s3::error::DisplayErrorContext(&e).to_string()))?;
    let upload_id = created.upload_id().unwrap_or_default().to_string();
    progress.begin("uploading", size);
    let result: Result<Vec<CompletedPart>, OpError> = async {
        let mut file = std::fs::File::open(path).map_err(file_error(path))?;
        let mut parts = Vec::new();
        let mut number = 1;
        loop {
            let mut chunk = Vec::with_capacity(PART_SIZE);
            (&mut file).take(PART_SIZE as u64).read_to_end(&mut chunk).map_err(file_error(path))?;
            if chunk.is_empty() {
                break;
            }
            let checksum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&chunk));
            let len = chunk.len() as u64;
            let part = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .checksum_sha256(&checksum)
                .body(ByteStream::from(chunk))
                .send()
                .await
                .map_err(|e| s3_err("UploadPart", aws_sdk_s3::error::DisplayErrorContext(&e).to_string()))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .checksum_sha256(checksum)
                    .build(),
            );
            progress.advance(len);
            number += 1;
        }
        Ok(parts)
    }
    .await;
    progress.end();
    match result {
        Ok(parts) => {
            client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| {
                    s3_err("CompleteMultipartUpload", aws_sdk_s3::error::DisplayErrorContext(&e).to_string())
                })?;
            Ok(())
        }
        Err(e) => {
            let _ = client.abort_multipart_upload().bucket(bucket).key(key).upload_id(&upload_id).send().await;
            Err(e)
        }
    }
}
