//! The Rust peer: the bar the session server has to beat. A minimal axum 0.8 service with
//! `tower-sessions` 0.14 and `tower-sessions-redis-store` 0.16 (fred) that reads one value from
//! a cookie session; no GraphQL at all. Not part of the server.
//!
//! Environment: `PEER_BIND` (default 127.0.0.1:3100), `PEER_REDIS_URL` (default
//! redis://127.0.0.1:6379; the store writes unprefixed keys, so the benchmark gives it a
//! private Redis).
//!
//! Routes: `POST /seed?value=N` creates a session holding `N` (the response sets the `id`
//! cookie); `GET /read` answers the stored value, or 401 without a session; `GET /health`.

use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use std::collections::HashMap;
use tower_sessions::{Session, SessionManagerLayer};
use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};
use tower_sessions_redis_store::RedisStore;

const KEY: &str = "value";

async fn seed(session: Session, Query(q): Query<HashMap<String, String>>) -> StatusCode {
    let value: u64 = q.get("value").and_then(|v| v.parse().ok()).unwrap_or(0);
    match session.insert(KEY, value).await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn read(session: Session) -> Result<String, StatusCode> {
    match session.get::<u64>(KEY).await {
        Ok(Some(v)) => Ok(v.to_string()),
        Ok(None) => Err(StatusCode::UNAUTHORIZED),
        Err(_) => Err(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("peer: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let bind = std::env::var("PEER_BIND").unwrap_or_else(|_| "127.0.0.1:3100".into());
    let redis_url =
        std::env::var("PEER_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let config =
        Config::from_url(&redis_url).map_err(|e| format!("bad PEER_REDIS_URL {redis_url}: {e}"))?;
    let pool = Pool::new(config, None, None, None, 4)?;
    pool.init()
        .await
        .map_err(|e| format!("connecting to Redis at {redis_url}: {e}"))?;
    let store = RedisStore::new(pool);
    // Default expiry (end of browser session, record kept two weeks): a read never writes.
    let layer = SessionManagerLayer::new(store).with_secure(false);
    let app = Router::new()
        .route("/seed", post(seed))
        .route("/read", get(read))
        .layer(layer)
        .route("/health", get(|| async { "ok" }));
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
