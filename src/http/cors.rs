//! CORS: which origins may call `/graphql`, with which request headers, and which response
//! headers (the issued tokens) their scripts may read.

use super::cookies::{REFRESH_TOKEN_HEADER, SESSION_TOKEN_HEADER};
use super::request::CHANNEL_TOKEN_HEADER;
use axum::http::{header, HeaderValue, Method};
use std::time::Duration;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// Any origin when `origins` lists none (no credentials then); else exactly those, with
/// credentials so that cookies flow.
pub(super) fn layer(origins: &[String]) -> CorsLayer {
    let exposed = [SESSION_TOKEN_HEADER, REFRESH_TOKEN_HEADER];
    let allowed_headers = [
        header::CONTENT_TYPE,
        header::AUTHORIZATION,
        CHANNEL_TOKEN_HEADER,
    ];
    let base = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST])
        .allow_headers(allowed_headers)
        .expose_headers(exposed)
        .max_age(Duration::from_secs(600));
    let listed: Vec<HeaderValue> = origins
        .iter()
        .filter(|o| !o.trim().is_empty())
        .filter_map(|o| HeaderValue::from_str(o.trim()).ok())
        .collect();
    if listed.is_empty() {
        base.allow_origin(Any)
    } else {
        base.allow_origin(AllowOrigin::list(listed))
            .allow_credentials(true)
    }
}
