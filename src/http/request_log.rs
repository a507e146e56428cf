//! Request ids and the access log: every request gets an id (the client's `x-request-id` when
//! it is sane, else a fresh one), returned in the `x-request-id` response header and carried by
//! every log line about the request (a `request` span); when the response is sent, one access
//! line (target `access`) gives the method, path, status, duration, and for GraphQL the
//! operation, the session id (never the token) and the error codes.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// Longest request id taken from a client.
const MAX_ID_LEN: usize = 128;

/// What the GraphQL layer tells the access log about a request (a response extension).
#[derive(Clone, Debug, Default)]
pub(super) struct AccessInfo {
    pub operation: Option<Arc<str>>,
    pub session_id: Option<i64>,
    /// The `extensions.code` of each error, comma-separated.
    pub error_codes: Option<String>,
}

/// The client's id if it is 1 to 128 characters of `A-Z a-z 0-9 - _ . : /`; anything else
/// (which could forge log lines or bloat them) is replaced by a fresh id.
fn sane_id(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'));
    ok.then(|| s.to_string())
}

/// A new request id: 16 random bytes, URL-safe. An id names a log line, it guards nothing, so
/// it comes from the thread's generator (seeded from the operating system) rather than a
/// system call per request.
fn fresh_id() -> String {
    use base64::Engine as _;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(super) async fn layer(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(sane_id)
        .unwrap_or_else(fresh_id);
    let span = tracing::info_span!("request", request_id = %id);
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(200).collect();
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    let info = response
        .extensions()
        .get::<AccessInfo>()
        .cloned()
        .unwrap_or_default();
    span.in_scope(|| {
        tracing::info!(
            target: "access",
            method = %method,
            path = %path,
            status = response.status().as_u16(),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            operation = info.operation.as_deref(),
            session_id = info.session_id,
            errors = info.error_codes.as_deref(),
            "request"
        );
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_ids_are_kept() {
        let ok = |s: &str| sane_id(&HeaderValue::from_str(s).unwrap());
        assert_eq!(ok("abc-123_x.y:z/1").as_deref(), Some("abc-123_x.y:z/1"));
        assert_eq!(ok(""), None);
        assert_eq!(ok("a b"), None);
        assert_eq!(ok("a\"b"), None);
        assert_eq!(ok(&"a".repeat(129)), None);
        assert!(ok(&"a".repeat(128)).is_some());
    }

    #[test]
    fn fresh_ids_are_sane_and_differ() {
        let a = fresh_id();
        assert_eq!(a.len(), 22);
        assert_eq!(
            sane_id(&HeaderValue::from_str(&a).unwrap()).as_deref(),
            Some(a.as_str())
        );
        assert_ne!(fresh_id(), a);
    }
}
