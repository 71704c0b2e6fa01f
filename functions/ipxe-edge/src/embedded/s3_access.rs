//! Who may do what on the embedded S3 endpoint. The deployment's key may do anything inside the
//! endpoint's buckets; a gateway's scratch key may list, read, write and delete under
//! `scratch/<gateway>/` and nothing else, while its gateway is enabled and under its quota.
//! Every request's names pass [`s3_location`](crate::embedded::s3_location)'s checks first,
//! whichever key signed it; what was decided lands in the request's [`AuditEntry`], which the
//! endpoint logs once the response is known.

use crate::embedded::s3_location::{check_bucket, check_key, check_prefix, KeyRefusal};
use crate::embedded::scratch::{EmbeddedScratch, SCRATCH_BUCKET};
use async_trait::async_trait;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::*;
use s3s::path::S3Path;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Result};
use std::sync::{Arc, Mutex};

/// What the endpoint learnt of one request, filled in as it is checked and logged after the
/// response (one per request, in its extensions).
#[derive(Default)]
pub struct AuditEntry(Mutex<AuditFields>);

#[derive(Clone, Default)]
pub struct AuditFields {
    pub operation: Option<String>,
    pub bucket: Option<String>,
    pub key: Option<String>,
    /// The gateway whose scratch key signed the request.
    pub gateway: Option<String>,
    /// Why the request was refused, when this endpoint refused it.
    pub denied: Option<&'static str>,
}

impl AuditEntry {
    pub fn fields(&self) -> AuditFields {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, change: impl FnOnce(&mut AuditFields)) {
        change(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

fn audit_entry(extensions: &hyper::http::Extensions) -> Option<Arc<AuditEntry>> {
    extensions.get::<Arc<AuditEntry>>().cloned()
}

/// Refuses the request, recording why.
fn deny(entry: Option<&Arc<AuditEntry>>, reason: &'static str, error: S3Error) -> S3Error {
    if let Some(entry) = entry {
        entry.update(|f| f.denied = Some(reason));
    }
    error
}

fn refuse(entry: Option<&Arc<AuditEntry>>, why: KeyRefusal) -> S3Error {
    deny(entry, why.reason(), why.to_s3_error())
}

/// The endpoint's key lookup: the deployment's own key, or a live scratch key.
pub struct EndpointAuth {
    pub admin_access_key: String,
    pub admin_secret_key: String,
    pub scratch: Arc<EmbeddedScratch>,
}

#[async_trait]
impl S3Auth for EndpointAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if access_key == self.admin_access_key {
            return Ok(SecretKey::from(self.admin_secret_key.as_str()));
        }
        match self.scratch.lookup(access_key) {
            Some(key) => Ok(SecretKey::from(key.secret)),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}

/// Per-request access rules over the scratch keys, with each gateway's quota in bytes.
pub struct EndpointAccess {
    pub admin_access_key: String,
    pub scratch: Arc<EmbeddedScratch>,
    pub quota_bytes: u64,
}

/// Object operations a scratch key may use inside its own prefix (no server-side copy: its
/// source could be anywhere).
const OBJECT_OPERATIONS: [&str; 9] = [
    "GetObject",
    "HeadObject",
    "PutObject",
    "DeleteObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "ListParts",
];

/// Bucket operations a scratch key may use on the scratch bucket (listing only with its own
/// prefix, deleting only its own keys: both checked on their inputs).
const BUCKET_OPERATIONS: [&str; 5] =
    ["HeadBucket", "GetBucketLocation", "DeleteObjects", "ListObjects", "ListObjectsV2"];

/// Who signed a request.
enum Principal {
    Deployment,
    Scratch(String),
}

impl EndpointAccess {
    fn principal(&self, access_key: Option<&str>, entry: Option<&Arc<AuditEntry>>) -> S3Result<Principal> {
        let Some(access_key) = access_key else { return Err(deny(entry, "unsigned request", s3_error!(AccessDenied))) };
        if access_key == self.admin_access_key {
            return Ok(Principal::Deployment);
        }
        let Some(key) = self.scratch.lookup(access_key) else {
            return Err(deny(entry, "unknown key", s3_error!(AccessDenied)));
        };
        if let Some(entry) = entry {
            entry.update(|f| f.gateway = Some(key.gateway.clone()));
        }
        if key.suspended {
            return Err(deny(
                entry,
                "gateway disabled",
                S3Error::with_message(S3ErrorCode::AccessDenied, "gateway disabled"),
            ));
        }
        Ok(Principal::Scratch(key.gateway))
    }

    fn principal_of<T>(&self, req: &S3Request<T>) -> S3Result<(Principal, Option<Arc<AuditEntry>>)> {
        let entry = audit_entry(&req.extensions);
        let principal = self.principal(req.credentials.as_ref().map(|c| c.access_key.as_str()), entry.as_ref())?;
        Ok((principal, entry))
    }

    /// A scratch key's writes stop at its gateway's quota (what is stored plus what uploads in
    /// progress hold, plus this body). A body of unknown length is refused, as S3 does.
    fn check_quota(&self, gateway: &str, length: Option<i64>, entry: Option<&Arc<AuditEntry>>) -> S3Result<()> {
        let Some(length) = length.and_then(|l| u64::try_from(l).ok()) else {
            return Err(deny(entry, "body of unknown length", s3_error!(MissingContentLength)));
        };
        if self.scratch.bytes_used(gateway).saturating_add(length) > self.quota_bytes {
            let mut error = S3Error::with_message(
                S3ErrorCode::Custom("QuotaExceeded".into()),
                format!("the scratch space of {gateway} is limited to {} bytes", self.quota_bytes),
            );
            error.set_status_code(hyper::StatusCode::FORBIDDEN);
            return Err(deny(entry, "scratch quota exceeded", error));
        }
        Ok(())
    }
}

/// A prefix a scratch key may list: its gateway's folder or below.
fn own_prefix(gateway: &str, prefix: Option<&str>) -> bool {
    prefix.and_then(|p| p.strip_prefix(gateway)).is_some_and(|rest| rest.starts_with('/'))
}

fn own_key(gateway: &str, key: &str) -> bool {
    key.strip_prefix(gateway).is_some_and(|rest| rest.starts_with('/'))
}

#[async_trait]
impl S3Access for EndpointAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let entry = audit_entry(cx.extensions_mut());
        let entry = entry.as_ref();
        let op = cx.s3_op().name().to_string();
        let op = op.as_str();
        let path = cx.s3_path();
        if let Some(entry) = entry {
            entry.update(|f| {
                f.operation = Some(op.to_string());
                (f.bucket, f.key) = match &path {
                    S3Path::Root => (None, None),
                    S3Path::Bucket { bucket } => (Some(bucket.to_string()), None),
                    S3Path::Object { bucket, key } => (Some(bucket.to_string()), Some(key.to_string())),
                };
            });
        }
        // The names first, for every key: no request reaches the store with a name that could
        // resolve anywhere else.
        match path {
            S3Path::Root => {}
            S3Path::Bucket { bucket } => check_bucket(bucket).map_err(|why| refuse(entry, why))?,
            S3Path::Object { bucket, key } => {
                check_bucket(bucket).and_then(|()| check_key(key)).map_err(|why| refuse(entry, why))?
            }
        }
        let gateway = match self.principal(cx.credentials().map(|c| c.access_key.as_str()), entry)? {
            Principal::Deployment => return Ok(()),
            Principal::Scratch(gateway) => gateway,
        };
        let allowed = match path {
            S3Path::Object { bucket, key } => {
                &**bucket == SCRATCH_BUCKET && own_key(&gateway, key) && OBJECT_OPERATIONS.contains(&op)
            }
            S3Path::Bucket { bucket } => &**bucket == SCRATCH_BUCKET && BUCKET_OPERATIONS.contains(&op),
            S3Path::Root => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(deny(entry, "outside the key's scratch space", s3_error!(AccessDenied)))
        }
    }

    async fn list_objects(&self, req: &mut S3Request<ListObjectsInput>) -> S3Result<()> {
        let (principal, entry) = self.principal_of(req)?;
        list_prefix(&principal, req.input.prefix.as_deref(), entry.as_ref())
    }

    async fn list_objects_v2(&self, req: &mut S3Request<ListObjectsV2Input>) -> S3Result<()> {
        let (principal, entry) = self.principal_of(req)?;
        list_prefix(&principal, req.input.prefix.as_deref(), entry.as_ref())
    }

    async fn delete_objects(&self, req: &mut S3Request<DeleteObjectsInput>) -> S3Result<()> {
        let (principal, entry) = self.principal_of(req)?;
        for object in &req.input.delete.objects {
            check_key(&object.key).map_err(|why| refuse(entry.as_ref(), why))?;
            if let Principal::Scratch(gateway) = &principal {
                if !own_key(gateway, &object.key) {
                    return Err(deny(entry.as_ref(), "outside the key's scratch space", s3_error!(AccessDenied)));
                }
            }
        }
        Ok(())
    }

    async fn put_object(&self, req: &mut S3Request<PutObjectInput>) -> S3Result<()> {
        let (principal, entry) = self.principal_of(req)?;
        match principal {
            Principal::Scratch(gateway) => self.check_quota(&gateway, req.input.content_length, entry.as_ref()),
            Principal::Deployment => Ok(()),
        }
    }

    async fn upload_part(&self, req: &mut S3Request<UploadPartInput>) -> S3Result<()> {
        let (principal, entry) = self.principal_of(req)?;
        match principal {
            Principal::Scratch(gateway) => self.check_quota(&gateway, req.input.content_length, entry.as_ref()),
            Principal::Deployment => Ok(()),
        }
    }

    async fn copy_object(&self, req: &mut S3Request<CopyObjectInput>) -> S3Result<()> {
        let entry = audit_entry(&req.extensions);
        copy_source(&req.input.copy_source, entry.as_ref())
    }

    async fn upload_part_copy(&self, req: &mut S3Request<UploadPartCopyInput>) -> S3Result<()> {
        let entry = audit_entry(&req.extensions);
        copy_source(&req.input.copy_source, entry.as_ref())
    }

    async fn post_object(&self, req: &mut S3Request<PostObjectInput>) -> S3Result<()> {
        let entry = audit_entry(&req.extensions);
        check_bucket(&req.input.bucket)
            .and_then(|()| check_key(&req.input.key))
            .map_err(|why| refuse(entry.as_ref(), why))
    }
}

fn list_prefix(principal: &Principal, prefix: Option<&str>, entry: Option<&Arc<AuditEntry>>) -> S3Result<()> {
    check_prefix(prefix.unwrap_or("")).map_err(|why| refuse(entry, why))?;
    match principal {
        Principal::Scratch(gateway) if !own_prefix(gateway, prefix) => {
            Err(deny(entry, "list prefix outside the key's scratch space", s3_error!(AccessDenied)))
        }
        _ => Ok(()),
    }
}

fn copy_source(source: &CopySource, entry: Option<&Arc<AuditEntry>>) -> S3Result<()> {
    match source {
        CopySource::Bucket { bucket, key, .. } => {
            check_bucket(bucket).and_then(|()| check_key(key)).map_err(|why| refuse(entry, why))
        }
        _ => Err(deny(entry, "copy from an access point", s3_error!(NotImplemented))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_owns_only_its_own_folder() {
        assert!(own_prefix("gw-1", Some("gw-1/")));
        assert!(own_prefix("gw-1", Some("gw-1/state/")));
        for prefix in [Some("gw-1"), Some("gw-10/"), Some("gw-"), Some(""), None] {
            assert!(!own_prefix("gw-1", prefix), "{prefix:?}");
        }
        assert!(own_key("gw-1", "gw-1/a"));
        assert!(!own_key("gw-1", "gw-10/a"));
        assert!(!own_key("gw-1", "gw-1"));
    }
}
