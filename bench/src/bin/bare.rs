//! The bare floor: the least an async-graphql 7 + axum 0.8 server can do. One query type, one
//! route (`POST /graphql`, JSON in and out, every request parsed and fully validated), no
//! middleware, no session, no cache. The benchmark's `bare-floor` row answers `{ __typename }`
//! here, so that session-server's own floor can be shown to cost no more. It uses the same
//! global allocator as the server (mimalloc), so the rows compare layers, not allocators.
//! Not part of the server.
//!
//! Environment: `BARE_BIND` (default 127.0.0.1:3200). Routes: `POST /graphql`, `GET /health`.

use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Query;

#[Object]
impl Query {
    /// Always true (a schema needs one field; the benchmark asks only for `__typename`).
    async fn ok(&self) -> bool {
        true
    }
}

type BareSchema = Schema<Query, EmptyMutation, EmptySubscription>;

async fn graphql(
    State(schema): State<BareSchema>,
    Json(req): Json<async_graphql::Request>,
) -> Json<async_graphql::Response> {
    Json(schema.execute(req).await)
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("bare: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let bind = std::env::var("BARE_BIND").unwrap_or_else(|_| "127.0.0.1:3200".into());
    let schema = Schema::new(Query, EmptyMutation, EmptySubscription);
    let app = Router::new()
        .route("/graphql", post(graphql))
        .route("/health", get(|| async { "ok" }))
        .with_state(schema);
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .map_err(|e| format!("binding {bind}: {e}"))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        })
        .await?;
    Ok(())
}
