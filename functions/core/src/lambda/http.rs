//! The Lambda edge of the API: an API Gateway event (HTTP API 2.0 or REST, through
//! `lambda_http`) becomes a plain `http::Request` with its [`RequestInfo`] (request id, the
//! client certificate from wherever the deployment takes it, the API's base URL, the query), is
//! answered by the pipeline of [`crate::api`], and the answer becomes the function's response.

use crate::api::pipeline;
use crate::domain::identity::{decode_escaped_pem, IdentityError};
use bytes::Bytes;
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};

pub use crate::api::answer::RETRY_AFTER_SECS;
pub use crate::api::handlers::{FINGERPRINT_HEADER, GATEWAY_HEADER};
pub use crate::api::route::{BOOT_PATH, CHECKIN_PREFIX, RENEWAL_PREFIX, SECRETS_PREFIX};
pub use crate::api::{BootApp, CertHeader, ClientCert, RedeemApp, RequestInfo};

fn request_id(req: &Request) -> String {
    if let Some(ctx) = req.lambda_context_ref() {
        return ctx.request_id.clone();
    }
    match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.request_id.clone().unwrap_or_default(),
        Some(RequestContext::ApiGatewayV1(ctx)) => ctx.request_id.clone().unwrap_or_default(),
        _ => String::new(),
    }
}

/// The request path without the API Gateway stage that lambda_http puts in front of it for
/// named stages (REST APIs, HTTP APIs with stages), so routes match however they are deployed.
pub fn route_path(req: &Request) -> &str {
    let path = req.uri().path();
    let stage = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.stage.as_deref(),
        Some(RequestContext::ApiGatewayV1(ctx)) => ctx.stage.as_deref(),
        _ => None,
    };
    match stage {
        Some(stage) if stage != "$default" && !stage.is_empty() => path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(stage))
            .filter(|rest| rest.starts_with('/'))
            .unwrap_or(path),
        _ => path,
    }
}

/// `https://<domain>[/<stage>]` of the API Gateway API the request came through, from the
/// request context API Gateway writes (a domain it serves, not a client's Host header), when it
/// is a plain host name.
pub fn request_base_url(req: &Request) -> Option<String> {
    let (domain, stage) = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => (ctx.domain_name.as_deref()?, ctx.stage.as_deref()),
        Some(RequestContext::ApiGatewayV1(ctx)) => (ctx.domain_name.as_deref()?, ctx.stage.as_deref()),
        _ => return None,
    };
    crate::api::route::base_url(domain, stage)
}

/// The client certificate PEM of a request: from the API Gateway event (HTTP API's
/// `authentication.clientCert`, REST API's `identity.clientCert`), or from the trusted proxy
/// header when, and only when, the deployment enables it.
pub fn client_cert_pem(req: &Request, header: &CertHeader) -> Result<Vec<u8>, IdentityError> {
    let from_event = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => {
            ctx.authentication.as_ref().and_then(|a| a.client_cert.as_ref()).and_then(|c| c.client_cert_pem.clone())
        }
        Some(RequestContext::ApiGatewayV1(ctx)) => ctx
            .identity
            .other
            .get("clientCert")
            .and_then(|c| c.get("clientCertPem"))
            .and_then(|p| p.as_str())
            .map(str::to_string),
        _ => None,
    };
    if let Some(pem) = from_event.filter(|p| !p.trim().is_empty()) {
        return Ok(pem.into_bytes());
    }
    if let CertHeader::Trusted(name) = header {
        let mut values = req.headers().get_all(name).iter();
        if let Some(value) = values.next() {
            if values.next().is_some() {
                return Err(IdentityError::Malformed("client certificate header repeated".into()));
            }
            let text = value.to_str().map_err(|_| IdentityError::Malformed("header is not ASCII".into()))?;
            if !text.is_empty() {
                return decode_escaped_pem(text);
            }
        }
    }
    Err(IdentityError::Missing)
}

/// The event as the pipeline's request: the stage-free path, the method, the headers, the body,
/// and what the event says about the client in [`RequestInfo`].
fn to_request(req: Request, cert_header: Option<&CertHeader>) -> http::Request<Bytes> {
    let client = match cert_header {
        Some(header) => ClientCert::Presented(client_cert_pem(&req, header)),
        None => ClientCert::None,
    };
    let query = req
        .query_string_parameters_ref()
        .map(|q| q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
        .unwrap_or_default();
    let info = RequestInfo { request_id: request_id(&req), client, base_url: request_base_url(&req), query };
    // The stage-free path is a valid path: it is a suffix of one, starting with `/`.
    let uri = route_path(&req).parse::<http::Uri>().unwrap_or_else(|_| http::Uri::from_static("/"));
    let (parts, body) = req.into_parts();
    let body = match body {
        Body::Text(t) => Bytes::from(t),
        Body::Binary(b) => Bytes::from(b),
        _ => Bytes::new(),
    };
    let mut request = http::Request::new(body);
    *request.method_mut() = parts.method;
    *request.uri_mut() = uri;
    *request.headers_mut() = parts.headers;
    request.extensions_mut().insert(info);
    request
}

/// The pipeline's answer as the function's response: text as text, nothing as nothing.
fn to_response(response: http::Response<Bytes>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let body = if body.is_empty() {
        Body::Empty
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(text) => Body::Text(text),
            Err(e) => Body::Binary(e.into_bytes()),
        }
    };
    Response::from_parts(parts, body)
}

/// The boot function: `GET /boot.ipxe` behind API Gateway with mutual TLS.
pub async fn boot_handler(app: &BootApp, req: Request) -> Response<Body> {
    let request = to_request(req, Some(&app.cert_header));
    to_response(pipeline::boot(app, &request).await)
}

/// The redeem function: `GET /secrets/{token}`, `POST /checkin/{token}`, `GET /renewal/{token}`.
pub async fn redeem_handler(app: &RedeemApp, req: Request) -> Response<Body> {
    let request = to_request(req, None);
    to_response(pipeline::redeem(app, &request).await)
}
