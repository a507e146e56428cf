//! `/health` (the database and, when configured, Redis answer) and `/metrics` (Prometheus).

use super::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::Duration;

pub(super) async fn health(State(app): State<AppState>) -> Response {
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

pub(super) async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.services.metrics.render(),
    )
        .into_response()
}
