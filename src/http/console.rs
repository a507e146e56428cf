//! The operator console at `GET /console`: a page of plain HTML, CSS and JavaScript embedded in
//! the binary, which signs an admin in and lists, filters and revokes sessions through the
//! public GraphQL API only (it has no endpoint of its own).

use super::assets;
use axum::response::Response;
use std::sync::LazyLock;

static PAGE: LazyLock<String> =
    LazyLock::new(|| assets::render(include_str!("../../assets/console/index.html")));

/// `GET /console`.
pub(super) async fn page() -> Response {
    assets::page(PAGE.as_str())
}
