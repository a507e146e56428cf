//! `/health` (the database and, when configured, Redis answer) and `/metrics` (Prometheus).

use super::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::Duration;

pub(super) async fn health(State(app): State<AppState>) -> Response {
    let health = app.services.health(Duration::from_secs(2)).await;
    let mut failing = Vec::new();
    if !health.database {
        failing.push("database");
    }
    if health.redis == Some(false) {
        failing.push("redis");
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
        app.services.metrics().render(),
    )
        .into_response()
}
