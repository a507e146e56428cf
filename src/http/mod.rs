//! HTTP: everything the server says and hears over HTTP. This file builds the router and the
//! state its handlers share; each other job has a file of its own:
//!
//! - `transport.rs`: the `/graphql` endpoint's rules (JSON bodies and their size limit, no
//!   mutations over GET, the GraphiQL page, the request timeout) and the error responses for
//!   failures outside execution.
//! - `documents.rs`: the cache of parsed query texts, with whether each passed validation.
//! - `execute.rs`: one GraphQL request: identify the caller, run the schema, give every error a
//!   code, answer 503 while the database is down, write the tokens the resolvers issued or
//!   cleared.
//! - [`request`]: reading a request: the session token (bearer, else cookie), the refresh
//!   cookie, the channel token, the client's address and user agent.
//! - `cookies.rs`: handing tokens to the client and taking them back: the `session-token` /
//!   `refresh-token` headers and the cookies, their names and attributes.
//! - `cors.rs`: which origins may call, with which headers.
//! - `health.rs`: `/health` and `/metrics`.
//! - `request_log.rs`: request ids (`x-request-id`) and the access log.
//! - `assets.rs`: the browser pages' files embedded in the binary (`/assets/{hash}/{name}`) and
//!   the headers every page sends (Content-Security-Policy: this origin only).
//! - `playground.rs`: the GraphiQL page (`GET /graphql` with `Accept: text/html`).
//! - `console.rs`: the operator console (`/console`).
//! - `websocket.rs`: GraphQL subscriptions over WebSocket on `/graphql` (both subprotocols),
//!   the connection's authentication and limits.
//! - `gateway.rs`: the gateway check `/auth` (nginx `auth_request`, Traefik `ForwardAuth`,
//!   Envoy `ext_authz`) and the session JWT keys at `/.well-known/jwks.json`.

mod assets;
mod console;
mod cookies;
mod cors;
mod documents;
mod execute;
mod gateway;
mod health;
mod playground;
pub mod request;
mod request_log;
mod transport;
mod websocket;

pub use transport::MAX_BODY_BYTES;

use crate::error::ErrorCode;
use crate::graphql::AppSchema;
use crate::metrics::OperationLabeler;
use crate::service::SharedServices;
use axum::http::StatusCode;
use axum::routing::{any, get};
use axum::Router;
use std::sync::Arc;
use tower_http::catch_panic::CatchPanicLayer;

/// What every handler shares: one pointer, so handing it to a handler is one reference-count
/// increment.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The parts of [`AppState`].
pub struct Shared {
    pub services: SharedServices,
    /// The schema with full validation.
    pub schema: AppSchema,
    /// The same schema with only the validation that depends on more than the document
    /// (limits, fragment cycles): for documents that already passed full validation.
    pub schema_revalidated: AppSchema,
    /// Metric handles per operation.
    pub labeler: OperationLabeler,
    /// Parsed documents by query text: clients repeat the same few queries, so most requests
    /// skip the parser, and repeated variable-free ones skip the static validation rules.
    pub documents: documents::Documents,
    /// WebSocket connections still waiting for `connection_init`, per client address.
    pub pending_sockets: websocket::PendingSockets,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(
        services: SharedServices,
        schema: AppSchema,
        schema_revalidated: AppSchema,
        labeler: OperationLabeler,
    ) -> AppState {
        AppState(Arc::new(Shared {
            services,
            schema,
            schema_revalidated,
            labeler,
            documents: documents::new_cache(),
            pending_sockets: websocket::PendingSockets::default(),
        }))
    }
}

pub fn router(state: AppState) -> Router {
    let cors =
        cors::BrowserCorsLayer::new(cors::layer(&state.services.config().cors_allowed_origins));
    // The gateway check answers API gateways, never a browser's cross-origin request, so it
    // skips the CORS layer (a measurable share of its cost) and checks every method, OPTIONS
    // included.
    let gateway = Router::new()
        .route("/auth", any(gateway::check))
        .route("/auth/", any(gateway::check))
        .route("/auth/{*rest}", any(gateway::check));
    Router::new()
        .route(
            "/graphql",
            get(transport::graphql_get).post(transport::graphql_post),
        )
        .route("/.well-known/jwks.json", get(gateway::jwks))
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .route("/console", get(console::page))
        .route(assets::ROUTE, get(assets::serve))
        .layer(cors)
        .merge(gateway)
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            transport::error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error",
            )
        }))
        // Outermost: every response, a panic's too, carries the request id and is logged.
        .layer(axum::middleware::from_fn(request_log::layer))
        .with_state(state)
}
