//! Running one GraphQL request: identify the caller (`Services::identify`), answer a known
//! document's read plan or run the schema (skipping validation a known document already
//! passed), give every error a code, answer 503 while the database is down, and write the
//! tokens the resolvers issued or cleared.

use super::cookies::{self, CookieMode};
use super::documents::{self, KnownDocument};
use super::request::{self, TokenSource};
use super::request_log::AccessInfo;
use super::transport::{app_error_response, error_response};
use super::AppState;
use crate::error::ErrorCode;
use crate::graphql::{read_plan, LazyClientInfo, RequestContext, TokenChanges};
use crate::metrics::Metrics;
use crate::service::identify::Identity;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Runs a GraphQL request and records its count and latency under its operation label.
pub(super) async fn execute(
    app: &AppState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    request: async_graphql::Request,
) -> Response {
    let started = Instant::now();
    let handles = app.labeler.handles(&request.query);
    let known = documents::lookup(&app.documents, &request.query);
    let mut response = execute_inner(app, headers, peer, request, known).await;
    handles.record(started.elapsed().as_secs_f64());
    let info = response
        .extensions_mut()
        .get_or_insert_with(AccessInfo::default);
    info.operation = Some(handles.label().clone());
    response
}

/// Resolves the caller's session and channel, runs the operation, and writes the response
/// with the tokens the resolvers issued or cleared.
async fn execute_inner(
    app: &AppState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    mut request: async_graphql::Request,
    known: Option<Arc<KnownDocument>>,
) -> Response {
    let svc = &app.services;
    let presented = request::presented_token(headers, svc.config().token_method);
    let Identity { session, channel } = match svc
        .sessions
        .identify(
            presented.as_ref().and_then(|p| p.hash.as_ref()),
            request::channel_token(headers),
        )
        .await
    {
        Ok(identity) => identity,
        Err(e) => return app_error_response(e),
    };
    let session_id = session.as_ref().map(|s| s.id);
    let dead_cookie = session.is_none()
        && presented
            .as_ref()
            .is_some_and(|p| p.source == TokenSource::Cookie);
    let mode = CookieMode::of(svc.config());

    let reusable = documents::reusable_for(known.as_ref(), &request);
    let planned = reusable
        .and_then(KnownDocument::read_plan)
        .filter(|p| p.runs(request.operation_name.as_deref()))
        .and_then(|plan| {
            plan.render(&read_plan::Identity {
                session: session.as_deref(),
                channel: &channel,
                lifetimes: svc.sessions.lifetimes(),
            })
        });
    if let Some(body) = planned {
        svc.metrics().read_plan_answer();
        let mut out = json_response(body, dead_cookie, mode);
        out.extensions_mut().insert(AccessInfo {
            operation: None,
            session_id,
            error_codes: None,
        });
        return out;
    }

    let client = request::client_info(headers, peer, svc.config().trust_proxy);
    let tokens = TokenChanges::default();
    let ctx = RequestContext::new(
        session,
        channel,
        LazyClientInfo::new(move || client.info()),
        request::refresh_cookie(headers),
        tokens.clone(),
    );
    let already_valid = reusable.is_some_and(|k| k.validated());
    let schema = if already_valid {
        &app.schema_revalidated
    } else {
        &app.schema
    };
    if let Some(k) = &known {
        k.attach_to(&mut request);
    }
    // Boxed: async-graphql's execution future is several kilobytes, and every layer around
    // this one would otherwise copy it on each move.
    let mut response = Box::pin(schema.execute(request.data(ctx))).await;
    if let Some(k) = reusable.filter(|_| !already_valid && response.errors.is_empty()) {
        k.mark_validated();
    }
    let unavailable = fix_error_codes(&mut response, svc.metrics());
    let error_codes = (!response.errors.is_empty()).then(|| {
        response
            .errors
            .iter()
            .filter_map(|e| match e.extensions.as_ref()?.get("code") {
                Some(async_graphql::Value::String(code)) => Some(code.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(",")
    });

    let body = match serde_json::to_vec(&response) {
        Ok(b) => b,
        Err(_) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error",
            )
        }
    };
    let mut out = json_response(body, dead_cookie, mode);
    // The database being down is the server's condition, not the request's: say so in the
    // status too, so load balancers and clients retry.
    if unavailable {
        *out.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    cookies::write_token_changes(out.headers_mut(), &tokens.take(), mode);
    out.extensions_mut().insert(AccessInfo {
        operation: None,
        session_id,
        error_codes,
    });
    out
}

/// A JSON answer that no cache keeps, clearing the session cookie when it named no live session.
fn json_response(body: Vec<u8>, dead_cookie: bool, mode: CookieMode) -> Response {
    let mut out = Response::new(Body::from(body));
    let h = out.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if dead_cookie {
        cookies::clear_dead_session_cookie(h, mode);
    }
    out
}

/// Gives a code to every error that has none, and says whether any reported the database
/// unavailable. Errors raised before resolvers run (syntax, validation, variable coercion,
/// limits) carry no code of their own: they are all about the request's input.
fn fix_error_codes(response: &mut async_graphql::Response, metrics: &Metrics) -> bool {
    let mut unavailable = false;
    for err in response.errors.iter_mut() {
        let ext = err.extensions.get_or_insert_with(Default::default);
        match ext.get("code") {
            None => ext.set("code", ErrorCode::BadUserInput.as_str()),
            Some(async_graphql::Value::String(code))
                if code == ErrorCode::ServiceUnavailable.as_str() =>
            {
                metrics.error("database");
                unavailable = true;
            }
            Some(_) => {}
        }
    }
    unavailable
}
