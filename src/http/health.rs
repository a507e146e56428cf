//! `/health` (the database and, when configured, Redis answer) and `/metrics` (Prometheus).

use super::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
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

/// OpenMetrics to a scraper that asks for it (Prometheus does), else Prometheus text 0.0.4.
pub(super) async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let metrics = app.services.metrics();
    let open_metrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if open_metrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            metrics.render(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            metrics.render_prometheus_text(),
        )
            .into_response()
    }
}
