//! The `/graphql` endpoint's transport rules: POST takes only JSON bodies up to
//! [`MAX_BODY_BYTES`] (so a cross-site form never runs), GET never runs a mutation and serves
//! GraphiQL to browsers, every request has at most `REQUEST_TIMEOUT`; and the GraphQL-shaped
//! error responses, with their status codes, for failures outside execution.

use super::{execute, AppState};
use crate::error::{AppError, ErrorCode};
use async_graphql::parser::types::{DocumentOperations, OperationType};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// A GraphQL-shaped error response for failures outside execution.
pub(super) fn error_response(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body =
        json!({ "errors": [{ "message": message, "extensions": { "code": code.as_str() } }] });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// An error raised before execution (identifying the caller), with the status its code
/// implies: 503 while a dependency is down, 500 for internal errors, else 200.
pub(super) fn app_error_response(err: AppError) -> Response {
    let status = match err.code() {
        ErrorCode::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::OK,
    };
    let code = err.code();
    // The HTTP boundary: this error becomes the response here, so its cause is logged here.
    err.log();
    error_response(status, code, &err.client_message())
}

pub(super) fn peer(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| {
            let essence = essence.trim();
            essence.eq_ignore_ascii_case("application/json")
                || essence.eq_ignore_ascii_case("application/graphql-response+json")
        })
}

/// Runs a `/graphql` handler for at most `REQUEST_TIMEOUT`; past it the client gets
/// `SERVICE_UNAVAILABLE` (503). The handler runs as a task of its own, so neither the timeout
/// nor a client that hangs up cancels it halfway: a write already under way finishes (its
/// database change and cache invalidation both happen), only its answer is lost.
async fn within_request_timeout(
    limit: Duration,
    handler: impl std::future::Future<Output = Response> + Send + 'static,
) -> Response {
    // The handler's log lines keep the request's span (and so its request id).
    // Boxed, so the task holds a pointer rather than the handler's whole state.
    let task = tokio::spawn(tracing::Instrument::in_current_span(Box::pin(handler)));
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => {
            tracing::error!("a request handler panicked");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error",
            )
        }
        Err(_) => {
            tracing::warn!("a request took longer than REQUEST_TIMEOUT");
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ServiceUnavailable,
                "the request did not complete in time; retry later",
            )
        }
    }
}

pub(super) async fn graphql_post(State(app): State<AppState>, req: Request) -> Response {
    within_request_timeout(
        app.services.config().request_timeout,
        graphql_post_inner(app, req),
    )
    .await
}

async fn graphql_post_inner(app: AppState, req: Request) -> Response {
    let peer = peer(&req);
    let (parts, body) = req.into_parts();
    // Only JSON bodies: a form or text/plain POST from another site (CSRF) never runs.
    if !is_json(&parts.headers) {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadUserInput,
            "POST /graphql needs Content-Type: application/json",
        );
    }
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BadUserInput,
                "the request body is over 256 KiB or could not be read",
            )
        }
    };
    let request: async_graphql::Request = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("the body is not a GraphQL request in JSON: {e}");
            return error_response(StatusCode::BAD_REQUEST, ErrorCode::BadUserInput, &msg);
        }
    };
    execute::execute(&app, &parts.headers, peer, request).await
}

#[derive(serde::Deserialize)]
struct GetParams {
    query: Option<String>,
    #[serde(rename = "operationName")]
    operation_name: Option<String>,
    variables: Option<String>,
}

/// Whether the operation a request would run is a mutation (or subscription).
fn is_mutation(query: &str, operation_name: Option<&str>) -> bool {
    matches!(
        operation_type(query, operation_name),
        Some(OperationType::Mutation | OperationType::Subscription)
    )
}

/// The type of the operation a request would run; `None` when the query does not parse or
/// names no single operation (execution reports those errors).
pub(super) fn operation_type(query: &str, operation_name: Option<&str>) -> Option<OperationType> {
    let doc = async_graphql::parser::parse_query(query).ok()?;
    match &doc.operations {
        DocumentOperations::Single(op) => Some(op.node.ty),
        DocumentOperations::Multiple(ops) => match operation_name {
            Some(name) => ops.get(name).map(|op| op.node.ty),
            None => ops
                .values()
                .next()
                .filter(|_| ops.len() == 1)
                .map(|op| op.node.ty),
        },
    }
}

pub(super) async fn graphql_get(State(app): State<AppState>, req: Request) -> Response {
    // A WebSocket for subscriptions: long-lived, so outside the request timeout.
    if super::websocket::is_upgrade(req.headers()) {
        let peer = peer(&req);
        let (parts, _) = req.into_parts();
        return super::websocket::upgrade(app, peer, parts).await;
    }
    within_request_timeout(
        app.services.config().request_timeout,
        graphql_get_inner(app, req),
    )
    .await
}

async fn graphql_get_inner(app: AppState, req: Request) -> Response {
    let peer = peer(&req);
    let params: GetParams = match axum::extract::Query::try_from_uri(req.uri()) {
        Ok(axum::extract::Query(p)) => p,
        Err(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                "malformed query string",
            )
        }
    };
    let Some(query) = params.query else {
        let wants_html = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"));
        if wants_html {
            return super::playground::page();
        }
        return error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadUserInput,
            "GET /graphql needs a query parameter (or Accept: text/html for GraphiQL)",
        );
    };
    if is_mutation(&query, params.operation_name.as_deref()) {
        let mut resp = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BadUserInput,
            "mutations must be sent with POST",
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let mut request = async_graphql::Request::new(query);
    if let Some(name) = params.operation_name {
        request = request.operation_name(name);
    }
    if let Some(vars) = params.variables.filter(|v| !v.is_empty()) {
        match serde_json::from_str::<async_graphql::Variables>(&vars) {
            Ok(v) => request = request.variables(v),
            Err(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadUserInput,
                    "variables must be a JSON object",
                )
            }
        }
    }
    let (parts, _) = req.into_parts();
    execute::execute(&app, &parts.headers, peer, request).await
}
