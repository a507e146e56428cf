//! HTTP: the router, the GraphQL endpoint with its transport rules (JSON bodies, size limit,
//! no mutations over GET), the GraphiQL page, `/health` and `/metrics`.

pub mod request;

use crate::error::{AppError, ErrorCode};
use crate::graphql::{context, AppSchema, RequestContext, TokenSource};
use crate::metrics::OperationLabeler;
use crate::service::identify::Identity;
use crate::service::SharedServices;
use async_graphql::http::GraphiQLSource;
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationType};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub services: SharedServices,
    /// The schema with full validation.
    pub schema: AppSchema,
    /// The same schema with only the validation that depends on more than the document
    /// (limits, fragment cycles): for documents that already passed full validation.
    pub schema_revalidated: AppSchema,
    /// Metric handles per operation.
    pub labeler: Arc<OperationLabeler>,
    /// Parsed documents by query text: clients repeat the same few queries, so most requests
    /// skip the parser, and repeated variable-free ones skip the static validation rules.
    pub documents: moka::sync::Cache<String, Arc<KnownDocument>>,
}

/// A parsed query text, and whether it has passed full validation without variables.
pub struct KnownDocument {
    doc: ExecutableDocument,
    validated: AtomicBool,
}

/// Longest query text whose parsed document is cached.
const MAX_CACHED_QUERY_BYTES: usize = 8 * 1024;

impl AppState {
    pub fn new(
        services: SharedServices,
        schema: AppSchema,
        schema_revalidated: AppSchema,
        labeler: OperationLabeler,
    ) -> AppState {
        AppState {
            services,
            schema,
            schema_revalidated,
            labeler: Arc::new(labeler),
            documents: moka::sync::Cache::new(1_000),
        }
    }

    /// Attaches the cached parse of the request's query, parsing and caching it on a miss.
    fn with_known_document(
        &self,
        mut request: async_graphql::Request,
    ) -> (async_graphql::Request, Option<Arc<KnownDocument>>) {
        if request.query.len() > MAX_CACHED_QUERY_BYTES {
            return (request, None);
        }
        let known = known_document(&self.documents, &request.query);
        if let Some(known) = &known {
            request.set_parsed_query(known.doc.clone());
        }
        (request, known)
    }
}

/// The parse of `query`, from `documents` or parsed now; `None` when it does not parse
/// (execution reports the syntax error). Only documents without a mutation or subscription
/// are kept: those are the ones that carry secrets inline (passwords of `login`, `createUser`
/// or `changePassword`, refresh tokens), and a cache must not hold them in memory.
fn known_document(
    documents: &moka::sync::Cache<String, Arc<KnownDocument>>,
    query: &str,
) -> Option<Arc<KnownDocument>> {
    if let Some(known) = documents.get(query) {
        return Some(known);
    }
    let doc = async_graphql::parser::parse_query(query).ok()?;
    let holds_writes = doc.operations.iter().any(|(_, op)| {
        matches!(
            op.node.ty,
            OperationType::Mutation | OperationType::Subscription
        )
    });
    let known = Arc::new(KnownDocument {
        doc,
        validated: AtomicBool::new(false),
    });
    if !holds_writes {
        documents.insert(query.to_string(), known.clone());
    }
    Some(known)
}

pub fn router(state: AppState) -> Router {
    let cors = cors(&state.services.config.cors_allowed_origins);
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(cors)
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error",
            )
        }))
        .with_state(state)
}

fn cors(origins: &[String]) -> CorsLayer {
    let exposed = [
        HeaderName::from_static("session-token"),
        HeaderName::from_static("refresh-token"),
    ];
    let allowed_headers = [
        header::CONTENT_TYPE,
        header::AUTHORIZATION,
        HeaderName::from_static("channel-token"),
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

/// A GraphQL-shaped error response for failures outside execution.
fn error_response(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body =
        json!({ "errors": [{ "message": message, "extensions": { "code": code.as_str() } }] });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn app_error_response(err: AppError) -> Response {
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

fn peer(req: &Request) -> Option<SocketAddr> {
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
    let task = tokio::spawn(handler);
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

async fn graphql_post(State(app): State<AppState>, req: Request) -> Response {
    within_request_timeout(
        app.services.config.request_timeout,
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
    execute(&app, &parts.headers, peer, request).await
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
    let Ok(doc) = async_graphql::parser::parse_query(query) else {
        return false; // execution reports the syntax error
    };
    let ty = match &doc.operations {
        DocumentOperations::Single(op) => Some(op.node.ty),
        DocumentOperations::Multiple(ops) => match operation_name {
            Some(name) => ops.get(name).map(|op| op.node.ty),
            None => ops
                .values()
                .next()
                .filter(|_| ops.len() == 1)
                .map(|op| op.node.ty),
        },
    };
    matches!(
        ty,
        Some(OperationType::Mutation | OperationType::Subscription)
    )
}

async fn graphql_get(State(app): State<AppState>, req: Request) -> Response {
    within_request_timeout(
        app.services.config.request_timeout,
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
            return Html(
                GraphiQLSource::build()
                    .endpoint("/graphql")
                    .title("session-server")
                    .finish(),
            )
            .into_response();
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
    execute(&app, &parts.headers, peer, request).await
}

/// Runs a GraphQL request and records its count and latency under its operation label.
async fn execute(
    app: &AppState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    request: async_graphql::Request,
) -> Response {
    let started = Instant::now();
    let handles = app.labeler.handles(&request.query);
    let (request, known) = app.with_known_document(request);
    let response = execute_inner(app, headers, peer, request, known).await;
    handles.record(started.elapsed().as_secs_f64());
    response
}

/// Resolves the caller's session and channel, runs the operation, and writes the response
/// with any headers and cookies the resolvers set.
async fn execute_inner(
    app: &AppState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    request: async_graphql::Request,
    known: Option<Arc<KnownDocument>>,
) -> Response {
    let svc = &app.services;
    let presented = request::presented_token(headers, svc.config.token_method);
    // A header that is not visible ASCII names no channel (and so no channel is found).
    let channel_token = headers
        .get("channel-token")
        .map(|v| v.to_str().unwrap_or(""));
    let Identity { session, channel } = match svc
        .identify(
            presented.as_ref().and_then(|p| p.hash.as_ref()),
            channel_token,
        )
        .await
    {
        Ok(identity) => identity,
        Err(e) => return app_error_response(e),
    };
    let clear_cookie = session.is_none()
        && presented
            .as_ref()
            .is_some_and(|p| p.source == TokenSource::Cookie);

    let ctx = RequestContext::new(
        session,
        channel,
        request::client_info(headers, peer, svc.config.trust_proxy),
        presented.as_ref().map(|p| p.source),
        request::cookie(headers, "session_refresh").map(str::to_string),
    );
    // Static validation depends only on the document, except where variable values are
    // checked: a document that passed full validation with no variables and no operation name
    // cannot fail it again under the same conditions.
    let revalidation_only = request.variables.is_empty() && request.operation_name.is_none();
    let known = known.filter(|_| revalidation_only);
    let already_valid = known
        .as_ref()
        .is_some_and(|k| k.validated.load(Ordering::Relaxed));
    let schema = if already_valid {
        &app.schema_revalidated
    } else {
        &app.schema
    };
    let mut response = schema.execute(request.data(ctx)).await;
    if let Some(k) = known.filter(|_| !already_valid && response.errors.is_empty()) {
        k.validated.store(true, Ordering::Relaxed);
    }

    // Errors raised before resolvers run (syntax, validation, variable coercion, limits) carry
    // no code of their own: they are all about the request's input.
    let mut unavailable = false;
    for err in response.errors.iter_mut() {
        let ext = err.extensions.get_or_insert_with(Default::default);
        match ext.get("code") {
            None => ext.set("code", ErrorCode::BadUserInput.as_str()),
            Some(async_graphql::Value::String(code))
                if code == ErrorCode::ServiceUnavailable.as_str() =>
            {
                svc.metrics.error("database");
                unavailable = true;
            }
            Some(_) => {}
        }
    }
    let http_headers = std::mem::take(&mut response.http_headers);
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
    let mut out = Response::new(Body::from(body));
    // The database being down is the server's condition, not the request's: say so in the
    // status too, so load balancers and clients retry.
    if unavailable {
        *out.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    let h = out.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if clear_cookie && svc.config.token_method.cookie {
        if let Ok(v) = HeaderValue::from_str(&context::session_cookie(
            "",
            svc.config.cookie_secure,
            Some(0),
        )) {
            h.append(header::SET_COOKIE, v);
        }
    }
    for (name, value) in http_headers.iter() {
        h.append(name.clone(), value.clone());
    }
    out
}

async fn health(State(app): State<AppState>) -> Response {
    let svc = &app.services;
    let mut failing = Vec::new();
    let db_ok = matches!(
        tokio::time::timeout(Duration::from_secs(2), svc.db.ping()).await,
        Ok(Ok(()))
    );
    if !db_ok {
        failing.push("database");
    }
    if let Some(redis) = &svc.redis {
        if redis.ping().await.is_err() {
            failing.push("redis");
        }
    }
    if failing.is_empty() {
        (StatusCode::OK, axum::Json(json!({ "status": "ok" }))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "unavailable", "failing": failing })),
        )
            .into_response()
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.services.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_with_mutations_are_parsed_but_never_cached() {
        let documents = moka::sync::Cache::new(100);
        let secret = r#"mutation { login(username: "a", password: "hunter2") { __typename } }"#;
        let mixed = r#"query Q { me { id } } mutation M { changePassword(currentPassword: "x", newPassword: "y") }"#;
        let subscription = "subscription { sessionEvents { id } }";
        for query in [secret, mixed, subscription] {
            assert!(known_document(&documents, query).is_some(), "{query}");
            assert!(!documents.contains_key(query), "{query} was cached");
        }
        let read = "{ activeSession { id } }";
        let first = known_document(&documents, read).expect("parses");
        assert!(documents.contains_key(read));
        let again = known_document(&documents, read).expect("cached");
        assert!(Arc::ptr_eq(&first, &again), "served from the cache");
        assert!(known_document(&documents, "{ activeSession { id }").is_none());
    }
}
