//! The GraphiQL playground, served at `GET /graphql` to browsers (`Accept: text/html`): a page
//! that loads GraphiQL and React from this server's embedded assets only, with a bootstrap
//! script of its own (cookies on the same origin, the headers editor for bearer tokens, an
//! example document that walks through `createAnonymousSession`, `login` and `activeSession`).

use super::assets;
use axum::response::Response;
use std::sync::LazyLock;

static PAGE: LazyLock<String> =
    LazyLock::new(|| assets::render(include_str!("../../assets/playground/index.html")));

/// The GraphiQL page.
pub(super) fn page() -> Response {
    assets::page(PAGE.as_str())
}
