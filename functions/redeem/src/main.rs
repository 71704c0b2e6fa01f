//! The redeem Lambda function: `GET /secrets/{token}`, one-time secrets for booted gateways.

use ipxe_edge_core::lambda::{http, init, logging};
use lambda_http::{service_fn, Error, Request};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    logging::init();
    let app = match init::redeem_app_from_env().await {
        Ok(app) => Arc::new(app),
        Err(e) => init::fail("redeem", e).await,
    };
    lambda_http::run(service_fn(move |req: Request| {
        let app = Arc::clone(&app);
        async move { Ok::<_, Error>(http::redeem_handler(&app, req).await) }
    }))
    .await
}
