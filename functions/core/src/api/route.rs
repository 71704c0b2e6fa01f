//! The public API's routes, parsed once from method and path. The paths are spelled here and
//! nowhere else.

use http::Method;

pub const BOOT_PATH: &str = "/boot.ipxe";
pub use crate::domain::token::{CHECKIN_PREFIX, RENEWAL_PREFIX, SECRETS_PREFIX};

/// What a request asks for. Tokens are the one path segment after their prefix, as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /boot.ipxe`: the boot script of the gateway presenting its certificate.
    Boot,
    /// `GET /secrets/{token}`: the gateway's secrets, once.
    Secrets { token: String },
    /// `POST /checkin/{token}`: the booted system is up.
    Checkin { token: String },
    /// `GET /renewal/{token}`: a renewed identity, once.
    Renewal { token: String },
}

/// A request no route answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unrouted {
    /// `404`; `name` is the route the path falls under, when it falls under one.
    NotFound { name: Option<&'static str> },
    /// `405` with `Allow: allow`.
    MethodNotAllowed { name: &'static str, allow: &'static str },
}

impl Route {
    pub fn parse(method: &Method, path: &str) -> Result<Route, Unrouted> {
        let token =
            |prefix: &str| path.strip_prefix(prefix).filter(|t| !t.is_empty() && !t.contains('/')).map(str::to_string);
        let route = if path == BOOT_PATH {
            Route::Boot
        } else if let Some(token) = token(SECRETS_PREFIX) {
            Route::Secrets { token }
        } else if let Some(token) = token(CHECKIN_PREFIX) {
            Route::Checkin { token }
        } else if let Some(token) = token(RENEWAL_PREFIX) {
            Route::Renewal { token }
        } else {
            return Err(Unrouted::NotFound { name: label(path) });
        };
        let allow = route.method();
        if method.as_str() != allow {
            return Err(Unrouted::MethodNotAllowed { name: route.name(), allow });
        }
        Ok(route)
    }

    /// The route's name in logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Boot => "boot",
            Route::Secrets { .. } => "redeem",
            Route::Checkin { .. } => "checkin",
            Route::Renewal { .. } => "renewal",
        }
    }

    /// The one method the route answers.
    fn method(&self) -> &'static str {
        match self {
            Route::Checkin { .. } => "POST",
            _ => "GET",
        }
    }
}

/// The name of the route a path falls under, whatever its method or token: the label of
/// requests refused before they are parsed.
pub fn label(path: &str) -> Option<&'static str> {
    if path == BOOT_PATH {
        Some("boot")
    } else if path.starts_with(SECRETS_PREFIX) {
        Some("redeem")
    } else if path.starts_with(CHECKIN_PREFIX) {
        Some("checkin")
    } else if path.starts_with(RENEWAL_PREFIX) {
        Some("renewal")
    } else {
        None
    }
}

/// `https://<domain>[/<stage>]` when the domain is a plain host name and the stage a plain
/// word; the base of URLs handed out when none is configured.
pub fn base_url(domain: &str, stage: Option<&str>) -> Option<String> {
    let host_ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !host_ok {
        return None;
    }
    match stage {
        Some(stage) if stage != "$default" && !stage.is_empty() => stage
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            .then(|| format!("https://{domain}/{stage}")),
        _ => Some(format!("https://{domain}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_parsed_once_from_method_and_path() {
        assert_eq!(Route::parse(&Method::GET, "/boot.ipxe"), Ok(Route::Boot));
        assert_eq!(Route::parse(&Method::GET, "/secrets/abc"), Ok(Route::Secrets { token: "abc".into() }));
        assert_eq!(Route::parse(&Method::POST, "/checkin/abc"), Ok(Route::Checkin { token: "abc".into() }));
        assert_eq!(Route::parse(&Method::GET, "/renewal/abc"), Ok(Route::Renewal { token: "abc".into() }));
        assert_eq!(
            Route::parse(&Method::HEAD, "/secrets/abc"),
            Err(Unrouted::MethodNotAllowed { name: "redeem", allow: "GET" })
        );
        assert_eq!(
            Route::parse(&Method::GET, "/checkin/abc"),
            Err(Unrouted::MethodNotAllowed { name: "checkin", allow: "POST" })
        );
        assert_eq!(
            Route::parse(&Method::POST, "/boot.ipxe"),
            Err(Unrouted::MethodNotAllowed { name: "boot", allow: "GET" })
        );
        for (path, name) in [
            ("/secrets/", Some("redeem")),
            ("/secrets/a/b", Some("redeem")),
            ("/checkin/", Some("checkin")),
            ("/boot.ipxe/", None),
            ("/", None),
            ("", None),
        ] {
            assert_eq!(Route::parse(&Method::GET, path), Err(Unrouted::NotFound { name }), "{path:?}");
        }
    }

    #[test]
    fn base_urls_only_from_plain_names() {
        assert_eq!(
            base_url("abc.execute-api.eu-west-1.amazonaws.com", Some("$default")).as_deref(),
            Some("https://abc.execute-api.eu-west-1.amazonaws.com")
        );
        assert_eq!(base_url("boot.example.org", Some("prod")).as_deref(), Some("https://boot.example.org/prod"));
        assert_eq!(base_url("evil.example/x", None), None);
        assert_eq!(base_url("boot.example.org", Some("a/b")), None);
        assert_eq!(base_url("", None), None);
    }
}
