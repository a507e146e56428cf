//! CORS: which origins may call `/graphql`, with which request headers, and which response
//! headers (the issued tokens) their scripts may read. Only browser requests (those with an
//! `Origin`) go through tower-http's CORS service; the rest only get its `Vary` header.

use super::cookies::{REFRESH_TOKEN_HEADER, SESSION_TOKEN_HEADER};
use super::request::CHANNEL_TOKEN_HEADER;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method};
use axum::response::Response;
use futures_util::future::BoxFuture;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// The `Vary` header tower-http's CORS service puts on every response: a response depends on
/// these request headers, so a cache must not hand one origin's answer to another.
const VARY: HeaderValue = HeaderValue::from_static(
    "origin, access-control-request-method, access-control-request-headers",
);

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

/// CORS for browsers only. A request without `Origin` is not a cross-origin request (a
/// gateway, a server-side client, a same-origin page's GET), so it skips the CORS service,
/// whose per-request set-up is a measurable share of a small request, and gets only its
/// `Vary` header. A request with `Origin` gets exactly tower-http's handling.
#[derive(Clone)]
pub(super) struct BrowserCorsLayer(Arc<CorsLayer>);

impl BrowserCorsLayer {
    pub(super) fn new(cors: CorsLayer) -> BrowserCorsLayer {
        BrowserCorsLayer(Arc::new(cors))
    }
}

impl<S> Layer<S> for BrowserCorsLayer {
    type Service = BrowserCors<S>;

    fn layer(&self, inner: S) -> BrowserCors<S> {
        BrowserCors {
            inner,
            cors: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(super) struct BrowserCors<S> {
    inner: S,
    cors: Arc<CorsLayer>,
}

impl<S> Service<Request> for BrowserCors<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if req.headers().contains_key(header::ORIGIN) {
            // The CORS service owns its inner service: it gets the one polled ready, and a
            // clone stays here for the next request.
            let ready = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, ready);
            let cors = self.cors.as_ref().clone().layer(inner);
            return Box::pin(cors.oneshot(req));
        }
        let answer = self.inner.call(req);
        Box::pin(async move {
            let mut response = answer.await?;
            response.headers_mut().append(header::VARY, VARY);
            Ok(response)
        })
    }
}
