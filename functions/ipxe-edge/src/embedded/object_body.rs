//! The bytes of a `GetObject` answer, read from the object's file in large chunks.
//!
//! The file store reads an object 4 KiB at a time, each read a trip through the blocking
//! pool: a 64 MiB initrd is sixteen thousand trips, and the trips, not TLS, set its download
//! rate. [`object_body`] answers the same range of the same file with [`CHUNK`]-sized reads
//! instead, the next one read while the last is sent. Headers (ETag, length, range, metadata)
//! stay the file store's.

use bytes::Bytes;
use s3s::dto::{GetObjectOutput, StreamingBlob, Timestamp};
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::task::JoinHandle;

/// Bytes per read. A connection holds at most two chunks (one being sent, one being read),
/// so the endpoint's 256 connection slots hold at most 32 MiB of file data at once.
pub const CHUNK: usize = 64 * 1024;

/// A body reading `output`'s bytes from `path`, or `None` when the file is no longer the one
/// the file store described (replaced in between: length or modification time differ) and its
/// own body must be sent.
pub async fn object_body(path: &Path, output: &GetObjectOutput) -> Option<StreamingBlob> {
    let path = path.to_path_buf();
    let (file, meta) = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        Ok::<_, std::io::Error>((file, meta))
    })
    .await
    .ok()?
    .ok()?;
    if output.last_modified.as_ref()? != &Timestamp::from(meta.modified().ok()?) {
        return None;
    }
    let length = u64::try_from(output.content_length?).ok()?;
    let start = match output.content_range.as_deref() {
        None if length == meta.len() => 0,
        None => return None,
        Some(range) => {
            let (first, total) = parse_content_range(range)?;
            if total != meta.len() {
                return None;
            }
            first
        }
    };
    let end = start.checked_add(length).filter(|end| *end <= meta.len())?;
    Some(StreamingBlob::wrap(FileChunks { file: Arc::new(file), next: start, end, reading: None }))
}

/// `bytes FIRST-LAST/TOTAL` → (FIRST, TOTAL).
fn parse_content_range(range: &str) -> Option<(u64, u64)> {
    let (span, total) = range.strip_prefix("bytes ")?.split_once('/')?;
    let (first, _last) = span.split_once('-')?;
    Some((first.parse().ok()?, total.parse().ok()?))
}

/// The chunks of `file` from `next` to `end`, one read ahead of the consumer.
struct FileChunks {
    file: Arc<std::fs::File>,
    /// Where the next read starts.
    next: u64,
    end: u64,
    reading: Option<JoinHandle<std::io::Result<Bytes>>>,
}

impl FileChunks {
    /// Starts the next read on the blocking pool, unless every byte has been read.
    fn read_ahead(&mut self) {
        if self.next >= self.end {
            return;
        }
        let (file, offset) = (self.file.clone(), self.next);
        let len = usize::try_from(self.end - offset).map_or(CHUNK, |left| left.min(CHUNK));
        self.next += len as u64;
        self.reading = Some(tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        }));
    }
}

impl futures_core::Stream for FileChunks {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.reading.is_none() {
            this.read_ahead();
        }
        let Some(reading) = this.reading.as_mut() else { return Poll::Ready(None) };
        let chunk = match Pin::new(reading).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(joined) => joined.map_err(std::io::Error::other).and_then(|read| read),
        };
        this.reading = None;
        match chunk {
            Ok(bytes) => {
                this.read_ahead();
                Poll::Ready(Some(Ok(bytes)))
            }
            // A file cut short underneath: the response ends here, and the client sees fewer
            // bytes than its Content-Length.
            Err(e) => {
                this.next = this.end;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(mut blob: StreamingBlob) -> Vec<u8> {
        use futures_core::Stream;
        let mut all = Vec::new();
        while let Some(chunk) = std::future::poll_fn(|cx| Pin::new(&mut blob).poll_next(cx)).await {
            all.extend_from_slice(&chunk.unwrap());
        }
        all
    }

    fn output_of(path: &Path, range: Option<(u64, u64)>) -> GetObjectOutput {
        let meta = std::fs::metadata(path).unwrap();
        let (length, content_range) = match range {
            None => (meta.len(), None),
            Some((first, last)) => (last + 1 - first, Some(format!("bytes {first}-{last}/{}", meta.len()))),
        };
        GetObjectOutput {
            content_length: Some(length as i64),
            content_range,
            last_modified: Some(Timestamp::from(meta.modified().unwrap())),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn whole_files_and_ranges_are_read_exactly() {
        let dir = std::env::temp_dir().join(format!("ipxe-edge-object-body-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("initrd");
        let content: Vec<u8> = (0..(3 * CHUNK + 123) as u32).map(|i| (i * 7 + i / 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let whole = object_body(&path, &output_of(&path, None)).await.unwrap();
        assert_eq!(collect(whole).await, content);
        for (first, last) in
            [(0, 0), (5, CHUNK as u64), (CHUNK as u64 - 1, 2 * CHUNK as u64 + 9), (100, content.len() as u64 - 1)]
        {
            let part = object_body(&path, &output_of(&path, Some((first, last)))).await.unwrap();
            assert_eq!(collect(part).await, &content[first as usize..=last as usize], "{first}-{last}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_replaced_file_is_left_to_the_file_store() {
        let dir = std::env::temp_dir().join(format!("ipxe-edge-object-body-replaced-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("initrd");
        std::fs::write(&path, b"first version").unwrap();
        let described = output_of(&path, None);
        std::fs::write(&path, b"second, longer version").unwrap();
        assert!(object_body(&path, &described).await.is_none(), "another length");
        let mut stale = output_of(&path, None);
        stale.last_modified = Some(Timestamp::from(std::time::SystemTime::UNIX_EPOCH));
        assert!(object_body(&path, &stale).await.is_none(), "another modification time");
        let mut foreign = output_of(&path, Some((0, 3)));
        foreign.content_range = Some("bytes 0-3/999".into());
        assert!(object_body(&path, &foreign).await.is_none(), "another total length");
        assert!(object_body(&dir.join("gone"), &output_of(&path, None)).await.is_none(), "no file");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
