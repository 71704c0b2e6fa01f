//! The boot Lambda function: `GET /boot.ipxe` behind API Gateway with mutual TLS.

use ipxe_edge_core::lambda::{http, init, logging};
use lambda_http::{service_fn, Error, Request};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    logging::init();
    let app = match init::boot_app_from_env().await {
        Ok(app) => Arc::new(app),
        Err(e) => init::fail("boot", e).await,
    };
    lambda_http::run(service_fn(move |req: Request| {
        let app = Arc::clone(&app);
        async move { Ok::<_, Error>(http::boot_handler(&app, req).await) }
    }))
    .await
}
