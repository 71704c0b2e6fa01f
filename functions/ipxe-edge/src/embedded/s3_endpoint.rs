//! The embedded S3-compatible endpoint (s3s + s3s-fs): objects live as files under the data
//! directory, and every request, presigned URLs included, is checked for a valid SigV4
//! signature and expiry, exactly as S3 would.

use crate::serve::listener::{accept_loop, Limits};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use std::path::PathBuf;
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

pub async fn run(listener: TcpListener, service: s3s::service::S3Service, shutdown: watch::Receiver<bool>) {
    let http = ConnBuilder::new(TokioExecutor::new());
    accept_loop(listener, "s3", Limits::default(), shutdown, move |stream, _peer| {
        let conn = http.serve_connection(TokioIo::new(stream), service.clone()).into_owned();
        async move {
            let _ = conn.await;
        }
    })
    .await
}
