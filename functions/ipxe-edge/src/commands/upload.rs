//! Asset uploads: hashed while read, stored content-addressed, skipped when already there,
//! verified by the store (SHA-256 checksums on S3), multipart above 64 MiB, with a progress bar
//! when stderr is a terminal.

use super::context::{file_error, Backend, CliError, Context};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use indicatif::{ProgressBar, ProgressStyle};
use ipxe_edge_core::domain::model::Asset;
use ipxe_edge_core::storage::keys;
use ipxe_edge_core::storage::StoreError;
use sha2::{Digest, Sha256};
use std::io::{IsTerminal, Read};
use std::path::Path;

pub const MULTIPART_THRESHOLD: u64 = 64 * 1024 * 1024;
pub const PART_SIZE: usize = 16 * 1024 * 1024;

fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// SHA-256 and size of a file, read once.
pub fn hash_file(path: &Path) -> Result<(String, u64), CliError> {
    let mut file = std::fs::File::open(path).map_err(file_error(path))?;
    let len = file.metadata().map_err(file_error(path))?.len();
    let bar = progress(len, "hashing");
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
        bar.set_position(total);
    }
    bar.finish_and_clear();
    Ok((hex::encode(hasher.finalize()), total))
}

/// Stores a file as a content-addressed asset and returns its manifest entry.
pub async fn upload(ctx: &Context, path: &Path) -> Result<Asset, CliError> {
    let (sha256, size) = hash_file(path)?;
    let asset = Asset { key: keys::asset(&sha256), sha256: sha256.clone(), size };
    if ctx.store().exists(&asset.key).await? {
        eprintln!("{}: already stored as {}", path.display(), asset.key);
        return Ok(asset);
    }
    match &ctx.backend {
        Backend::Embedded => {
            // Copy through a temporary file in the bucket, checking the digest before it appears.
            let bytes = std::fs::read(path).map_err(file_error(path))?;
            if hex::encode(Sha256::digest(&bytes)) != sha256 {
                return Err(CliError::Refused(format!("{} changed while it was being uploaded", path.display())));
            }
            ctx.store().put(&asset.key, bytes, ipxe_edge_core::storage::WriteCondition::Always).await?;
        }
        Backend::S3(s3) => {
            if size > MULTIPART_THRESHOLD {
                multipart(s3.client(), s3.bucket(), &asset.key, path, size).await?;
            } else {
                let body = std::fs::read(path).map_err(file_error(path))?;
                let checksum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&body));
                let bar = progress(size, "uploading");
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
                bar.finish_and_clear();
            }
            let head = s3.client().head_object().bucket(s3.bucket()).key(&asset.key).send().await.map_err(|e| {
                StoreError::Unavailable(format!("verify {}: {}", asset.key, aws_sdk_s3::error::DisplayErrorContext(&e)))
            })?;
            if head.content_length() != Some(size as i64) {
                return Err(CliError::Refused(format!(
                    "{} was stored with {:?} bytes instead of {size}",
                    asset.key,
                    head.content_length()
                )));
            }
        }
    }
    eprintln!("{}: stored as {} ({size} bytes)", path.display(), asset.key);
    Ok(asset)
}

async fn multipart(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    path: &Path,
    size: u64,
) -> Result<(), CliError> {
    let s3_err = |what: &str, e: String| CliError::from(StoreError::Unavailable(format!("{what} {key}: {e}")));
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .send()
        .await
        .map_err(|e| s3_err("CreateMultipartUpload", aws_sdk_s3::error::DisplayErrorContext(&e).to_string()))?;
    let upload_id = created.upload_id().unwrap_or_default().to_string();
    let bar = progress(size, "uploading");
    let result: Result<Vec<CompletedPart>, CliError> = async {
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
            bar.inc(len);
            number += 1;
        }
        Ok(parts)
    }
    .await;
    bar.finish_and_clear();
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
