//! Where an S3 request may reach on disk. [`locate`] turns a request's bucket and object key
//! into a file under the endpoint's root and refuses every key that could name anything else:
//! `.` or `..` segments, empty segments, backslashes, control characters, and percent-encodings
//! of `.`, `/` or `\` left after the one decoding the endpoint does. Every operation's keys go
//! through it (paths, `DeleteObjects` entries, copy sources, list prefixes, multipart keys),
//! whichever key signed the request; [`ConfinedFs`] checks again, below the access rules, that
//! the path the file store resolves stays inside the bucket's folder.

use crate::embedded::object_body::object_body;
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};
use std::path::{Component, Path, PathBuf};

/// S3's own limit on an object key.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a bucket, key or prefix was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRefusal {
    InvalidBucket,
    EmptyKey,
    TooLong,
    DotSegment,
    EmptySegment,
    Backslash,
    EncodedSeparator,
    ControlCharacter,
    /// The resolved path left the bucket's folder (only [`confined`] says this).
    OutsideBucket,
}

impl KeyRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            KeyRefusal::InvalidBucket => "invalid bucket name",
            KeyRefusal::EmptyKey => "empty key",
            KeyRefusal::TooLong => "key longer than 1024 bytes",
            KeyRefusal::DotSegment => "key has a . or .. segment",
            KeyRefusal::EmptySegment => "key has an empty segment",
            KeyRefusal::Backslash => "key has a backslash",
            KeyRefusal::EncodedSeparator => "key has a percent-encoded dot, slash or backslash",
            KeyRefusal::ControlCharacter => "key has a control character",
            KeyRefusal::OutsideBucket => "key resolves outside its bucket",
        }
    }

    /// Attempts to reach outside a folder are refused as 403 AccessDenied; keys no S3 would
    /// store as 400.
    pub fn to_s3_error(self) -> S3Error {
        let code = match self {
            KeyRefusal::EmptyKey | KeyRefusal::ControlCharacter => S3ErrorCode::InvalidArgument,
            KeyRefusal::TooLong => S3ErrorCode::KeyTooLongError,
            KeyRefusal::InvalidBucket => S3ErrorCode::InvalidBucketName,
            _ => S3ErrorCode::AccessDenied,
        };
        S3Error::with_message(code, self.reason())
    }
}

impl std::fmt::Display for KeyRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// A bucket name as a single folder name: S3's characters, never a dot segment.
pub fn check_bucket(bucket: &str) -> Result<(), KeyRefusal> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && !bucket.contains("..");
    if ok {
        Ok(())
    } else {
        Err(KeyRefusal::InvalidBucket)
    }
}

/// What any part of a key or prefix may not contain, whatever its segments.
fn check_characters(text: &str) -> Result<(), KeyRefusal> {
    if text.len() > MAX_KEY_BYTES {
        return Err(KeyRefusal::TooLong);
    }
    if text.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(KeyRefusal::ControlCharacter);
    }
    if text.contains('\\') {
        return Err(KeyRefusal::Backslash);
    }
    let lower = text.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c"].iter().any(|encoded| lower.contains(encoded)) {
        return Err(KeyRefusal::EncodedSeparator);
    }
    Ok(())
}

fn check_segment(segment: &str) -> Result<(), KeyRefusal> {
    match segment {
        "" => Err(KeyRefusal::EmptySegment),
        "." | ".." => Err(KeyRefusal::DotSegment),
        _ => Ok(()),
    }
}

/// An object key (decoded once, as the endpoint received it) that names exactly one file below
/// its bucket's folder.
pub fn check_key(key: &str) -> Result<(), KeyRefusal> {
    if key.is_empty() {
        return Err(KeyRefusal::EmptyKey);
    }
    check_characters(key)?;
    key.split('/').try_for_each(check_segment)
}

/// A list prefix: its whole segments are checked as a key's; the last, partial one may be empty
/// (a prefix ending in `/`) but not a dot segment. The empty prefix lists the whole bucket.
pub fn check_prefix(prefix: &str) -> Result<(), KeyRefusal> {
    if prefix.is_empty() {
        return Ok(());
    }
    check_characters(prefix)?;
    let (whole, last) = prefix.rsplit_once('/').unwrap_or(("", prefix));
    if matches!(last, "." | "..") {
        return Err(KeyRefusal::DotSegment);
    }
    if prefix.contains('/') {
        whole.split('/').try_for_each(check_segment)?;
    }
    Ok(())
}

/// The file that holds `bucket`/`key` under `root`: the one place a request's names become a
/// path. Refuses what [`check_bucket`] and [`check_key`] refuse, then checks the result with
/// [`confined`].
pub fn locate(root: &Path, bucket: &str, key: &str) -> Result<PathBuf, KeyRefusal> {
    check_bucket(bucket)?;
    check_key(key)?;
    confined(root, bucket, key)
}

/// The path the file store resolves for `bucket`/`key` (it joins them under its root and
/// removes dot segments without leaving the root), refused unless it lies strictly inside
/// `root/bucket/`. This knows nothing of the rules above: it is the second, independent wall.
pub fn confined(root: &Path, bucket: &str, key: &str) -> Result<PathBuf, KeyRefusal> {
    let resolve = |relative: &Path| resolve_under(root, relative).ok_or(KeyRefusal::OutsideBucket);
    let bucket_dir = resolve(Path::new(bucket))?;
    let inside_root =
        bucket_dir.parent() == Some(root) && matches!(bucket_dir.components().next_back(), Some(Component::Normal(_)));
    if !inside_root {
        return Err(KeyRefusal::OutsideBucket);
    }
    let file = resolve(&Path::new(bucket).join(key))?;
    match file.strip_prefix(&bucket_dir) {
        Ok(rest)
            if rest.components().next().is_some() && rest.components().all(|c| matches!(c, Component::Normal(_))) =>
        {
            Ok(file)
        }
        _ => Err(KeyRefusal::OutsideBucket),
    }
}

/// `relative` joined under `root` with its dot segments removed lexically, or `None` when it
/// would climb above `root` or names a root of its own. Written out rather than borrowed: the
/// resolver the file store uses asserts on inputs that dedot to nothing, and this wall must
/// answer every input.
fn resolve_under(root: &Path, relative: &Path) -> Option<PathBuf> {
    let depth = root.components().count();
    let mut out = root.to_path_buf();
    for component in relative.components() {
        match component {
            Component::Normal(segment) => out.push(segment),
            Component::CurDir => {}
            Component::ParentDir if out.components().count() > depth => {
                out.pop();
            }
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The embedded endpoint's file store ([`s3s_fs::FileSystem`]) behind a check of every bucket,
/// key, copy source and prefix an operation names, independent of the access rules above it.
pub struct ConfinedFs {
    root: PathBuf,
    inner: s3s_fs::FileSystem,
}

impl ConfinedFs {
    pub fn new(root: PathBuf) -> std::io::Result<Self> {
        let inner = s3s_fs::FileSystem::new(&root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        // The store resolves against its canonical root: so must the check.
        let root = std::fs::canonicalize(&root)?;
        Ok(ConfinedFs { root, inner })
    }

    fn object(&self, bucket: &str, key: &str) -> S3Result<()> {
        confined(&self.root, bucket, key).map(drop).map_err(refused)
    }

    fn bucket(&self, bucket: &str) -> S3Result<()> {
        check_bucket(bucket).map_err(refused)?;
        confined(&self.root, bucket, "x").map(drop).map_err(refused)
    }

    fn prefix(&self, bucket: &str, prefix: Option<&str>) -> S3Result<()> {
        self.bucket(bucket)?;
        check_prefix(prefix.unwrap_or("")).map_err(refused)
    }

    fn copy_source(&self, source: &CopySource) -> S3Result<()> {
        match source {
            CopySource::Bucket { bucket, key, .. } => self.object(bucket, key),
            _ => Err(s3_error!(NotImplemented)),
        }
    }
}

fn refused(why: KeyRefusal) -> S3Error {
    tracing::warn!(reason = why.reason(), "embedded S3 file store refused a key");
    why.to_s3_error()
}

/// Forwards each operation the file store implements after `check` passed on its input.
macro_rules! confined_operations {
    ($($op:ident($input:ty) -> $output:ty: |$this:ident, $in:ident| $check:expr;)*) => {
        #[async_trait::async_trait]
        impl S3 for ConfinedFs {
            /// The file store's answer, its body read in large chunks ([`object_body`]).
            async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
                let path = confined(&self.root, &req.input.bucket, &req.input.key).map_err(refused)?;
                let mut response = self.inner.get_object(req).await?;
                if let Some(body) = object_body(&path, &response.output).await {
                    response.output.body = Some(body);
                }
                Ok(response)
            }

            $(
                async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    {
                        let ($this, $in) = (self, &req.input);
                        $check?;
                    }
                    self.inner.$op(req).await
                }
            )*
        }
    };
}

confined_operations! {
    create_bucket(CreateBucketInput) -> CreateBucketOutput: |s, i| s.bucket(&i.bucket);
    delete_bucket(DeleteBucketInput) -> DeleteBucketOutput: |s, i| s.bucket(&i.bucket);
    head_bucket(HeadBucketInput) -> HeadBucketOutput: |s, i| s.bucket(&i.bucket);
    get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput: |s, i| s.bucket(&i.bucket);
    list_buckets(ListBucketsInput) -> ListBucketsOutput: |_s, _i| S3Result::<()>::Ok(());
    list_objects(ListObjectsInput) -> ListObjectsOutput: |s, i| s.prefix(&i.bucket, i.prefix.as_deref());
    list_objects_v2(ListObjectsV2Input) -> ListObjectsV2Output: |s, i| s.prefix(&i.bucket, i.prefix.as_deref());
    head_object(HeadObjectInput) -> HeadObjectOutput: |s, i| s.object(&i.bucket, &i.key);
    put_object(PutObjectInput) -> PutObjectOutput: |s, i| s.object(&i.bucket, &i.key);
    delete_object(DeleteObjectInput) -> DeleteObjectOutput: |s, i| s.object(&i.bucket, &i.key);
    delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput: |s, i| i.delete.objects.iter().try_for_each(|o| s.object(&i.bucket, &o.key));
    copy_object(CopyObjectInput) -> CopyObjectOutput: |s, i| s.object(&i.bucket, &i.key).and_then(|()| s.copy_source(&i.copy_source));
    create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput: |s, i| s.object(&i.bucket, &i.key);
    upload_part(UploadPartInput) -> UploadPartOutput: |s, i| s.object(&i.bucket, &i.key);
    upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput: |s, i| s.object(&i.bucket, &i.key).and_then(|()| s.copy_source(&i.copy_source));
    list_parts(ListPartsInput) -> ListPartsOutput: |s, i| s.object(&i.bucket, &i.key);
    complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput: |s, i| s.object(&i.bucket, &i.key);
    abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput: |s, i| s.object(&i.bucket, &i.key);
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESCAPES: [&str; 14] = [
        "gw-a/../../ipxe-edge/gateways/x/secrets",
        "gw-a/../gw-b/x",
        "x/../..",
        "./..",
        "..",
        ".",
        "gw-a/./x",
        "gw-a//x",
        "/etc/passwd",
        "gw-a/x/",
        "gw-a\\..\\x",
        "gw-a/%2e%2e/x",
        "gw-a/..%2fx",
        "gw-a/%2E%2e%5cx",
    ];

    #[test]
    fn keys_with_dot_segments_or_their_encodings_are_refused() {
        for key in ESCAPES {
            assert!(check_key(key).is_err(), "{key:?} accepted");
        }
        for key in ["gw-a/state/a.txt", "gw-a/..hidden", "gw-a/a..b/c", "gw-a/x.", "gw-a/100%25", "gw-a/%41"] {
            assert_eq!(check_key(key), Ok(()), "{key:?}");
        }
        assert_eq!(check_key(&"a".repeat(1025)), Err(KeyRefusal::TooLong));
        assert_eq!(check_key("a\0b"), Err(KeyRefusal::ControlCharacter));
        assert_eq!(check_key(""), Err(KeyRefusal::EmptyKey));
    }

    #[test]
    fn prefixes_may_end_in_a_slash_or_a_partial_name() {
        for prefix in ["", "gw-1/", "gw-1", "gw-1/sta", "gw-1/state/"] {
            assert_eq!(check_prefix(prefix), Ok(()), "{prefix:?}");
        }
        for prefix in ["gw-1/../", "gw-1/..", "../", "gw-1//", "/gw-1/", "gw-1/%2e%2e/", "."] {
            assert!(check_prefix(prefix).is_err(), "{prefix:?} accepted");
        }
    }

    #[test]
    fn buckets_are_single_folder_names() {
        assert_eq!(check_bucket("scratch"), Ok(()));
        assert_eq!(check_bucket("ipxe-edge"), Ok(()));
        for bucket in ["..", "a/b", "Scratch", "ab", "a..b", ".abc"] {
            assert_eq!(check_bucket(bucket), Err(KeyRefusal::InvalidBucket), "{bucket:?}");
        }
    }

    /// The second wall alone, without the key rules: what the store would resolve outside the
    /// bucket's folder is refused, what stays inside is the store's own path.
    #[test]
    fn the_resolved_path_must_stay_in_its_bucket() {
        let root = Path::new("/srv/s3");
        assert_eq!(confined(root, "scratch", "gw-a/x").unwrap(), Path::new("/srv/s3/scratch/gw-a/x"));
        assert_eq!(
            confined(root, "scratch", "gw-a/../gw-b/x").unwrap(),
            Path::new("/srv/s3/scratch/gw-b/x"),
            "inside the bucket: the key rules refuse it, not this"
        );
        for key in ["gw-a/../../ipxe-edge/x", "..", "../scratch2/x", "", ".", "x/.."] {
            assert_eq!(confined(root, "scratch", key), Err(KeyRefusal::OutsideBucket), "{key:?}");
        }
        assert_eq!(confined(root, "..", "etc/passwd"), Err(KeyRefusal::OutsideBucket));
        assert_eq!(locate(root, "scratch", "gw-a/../gw-b/x"), Err(KeyRefusal::DotSegment));
    }

    #[tokio::test]
    async fn the_file_store_refuses_escaping_keys_whoever_asks() {
        let root = std::env::temp_dir().join(format!("ipxe-edge-confined-{}", std::process::id()));
        std::fs::create_dir_all(root.join("scratch/gw-a")).unwrap();
        std::fs::create_dir_all(root.join("ipxe-edge/gateways/x")).unwrap();
        std::fs::write(root.join("ipxe-edge/gateways/x/secrets"), b"s3cret").unwrap();
        let fs = ConfinedFs::new(root.clone()).unwrap();
        let get = |key: &str| {
            let input = GetObjectInput::builder().bucket("scratch".into()).key(key.into()).build().unwrap();
            S3Request {
                input,
                method: hyper::Method::GET,
                uri: hyper::Uri::from_static("/"),
                headers: Default::default(),
                extensions: Default::default(),
                credentials: None,
                region: None,
                service: None,
                trailing_headers: None,
            }
        };
        let escaped = fs.get_object(get("gw-a/../../ipxe-edge/gateways/x/secrets")).await;
        assert_eq!(escaped.err().map(|e| e.code().clone()), Some(S3ErrorCode::AccessDenied));
        let missing = fs.get_object(get("gw-a/none")).await;
        assert_eq!(
            missing.err().map(|e| e.code().clone()),
            Some(S3ErrorCode::NoSuchKey),
            "an ordinary key reaches the store"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
