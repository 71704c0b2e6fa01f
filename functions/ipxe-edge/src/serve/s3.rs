//! The embedded S3-compatible endpoint (s3s + s3s-fs): objects live as files under the data
//! directory, and every request, presigned URLs included, is checked for a valid SigV4
//! signature and expiry, exactly as S3 would.

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub struct S3Credentials {
    pub access_key: String,
    pub secret_key: String,
}

pub fn service(root: PathBuf, creds: &S3Credentials) -> std::io::Result<s3s::service::S3Service> {
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(creds.access_key.clone(), creds.secret_key.clone()));
    Ok(builder.build())
}

pub async fn run(listener: TcpListener, service: s3s::service::S3Service, mut shutdown: watch::Receiver<bool>) {
    let http = ConnBuilder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "S3 endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // Responses go out in several writes: without this, Nagle's algorithm and delayed ACKs
        // add ~40 ms to every request on a kept-alive connection.
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(stream), service.clone()).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}
