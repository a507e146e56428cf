//! Files of the browser pages, embedded in the binary at compile time (vendored GraphiQL and
//! React, the playground's and the console's own files; see `assets/README.md`): their URLs,
//! which carry a hash of the content so they can be cached for good, their responses, and the
//! headers every page sends (a Content-Security-Policy that allows only this origin).

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// One embedded file.
pub(super) struct Asset {
    /// The file name in URLs and in `{{asset:NAME}}` markers.
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $path:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Every embedded asset. Names are unique: both pages share one URL space per file.
static ASSETS: &[Asset] = &[
    asset!("graphiql.min.js", "graphiql/graphiql.min.js", JS),
    asset!("graphiql.min.css", "graphiql/graphiql.min.css", CSS),
    asset!("graphiql-LICENSE.txt", "graphiql/LICENSE", TEXT),
    asset!(
        "react.production.min.js",
        "react/react.production.min.js",
        JS
    ),
    asset!(
        "react-dom.production.min.js",
        "react/react-dom.production.min.js",
        JS
    ),
    asset!("react-LICENSE.txt", "react/LICENSE", TEXT),
    asset!("playground.js", "playground/playground.js", JS),
    asset!("playground.css", "playground/playground.css", CSS),
    asset!("console.js", "console/console.js", JS),
    asset!("console.css", "console/console.css", CSS),
    asset!("favicon.svg", "favicon.svg", SVG),
];

/// The first 16 hex digits of each asset's SHA-256, in `ASSETS` order.
static HASHES: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| hex::encode(&Sha256::digest(a.bytes)[..8]))
        .collect()
});

/// Where assets are served: `/assets/{hash}/{name}`.
pub(super) const ROUTE: &str = "/assets/{hash}/{name}";

/// The URL of an embedded asset. Panics on an unknown name: names come from our own pages,
/// and a test renders every page.
fn url(name: &str) -> String {
    let i = ASSETS
        .iter()
        .position(|a| a.name == name)
        .unwrap_or_else(|| panic!("no embedded asset named {name}"));
    format!("/assets/{}/{}", HASHES[i], name)
}

/// A page's HTML with every `{{asset:NAME}}` replaced by that asset's URL.
pub(super) fn render(template: &str) -> String {
    let mut out = String::with_capacity(template.len() + 512);
    let mut rest = template;
    while let Some(start) = rest.find("{{asset:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "{{asset:".len()..];
        let end = after.find("}}").expect("an {{asset:…}} marker is closed");
        out.push_str(&url(&after[..end]));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// What the pages may load: only this origin (plus `data:` fonts and images, which GraphiQL's
/// stylesheet carries inline), no inline script, no framing, no plugins.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// An HTML page with the security headers every page sends. Pages are not cached, so a new
/// binary's page (and with it the new asset URLs) is seen at once.
pub(super) fn page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        html,
    )
        .into_response()
}

/// `GET /assets/{hash}/{name}`: an embedded file, cached for a year (its URL changes with its
/// content). A name or hash that matches no current asset is a 404.
pub(super) async fn serve(Path((hash, name)): Path<(String, String)>) -> Response {
    let found = ASSETS
        .iter()
        .zip(HASHES.iter())
        .find(|(a, h)| a.name == name && **h == hash);
    let Some((asset, _)) = found else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, TEXT)],
            "no such asset\n",
        )
            .into_response();
    };
    let mut response = asset.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_marker_names_an_asset_and_urls_carry_the_hash() {
        let html = render("<script src=\"{{asset:console.js}}\"></script>");
        assert!(html.starts_with("<script src=\"/assets/"), "{html}");
        assert!(html.ends_with("/console.js\"></script>"), "{html}");
        assert!(!html.contains("{{"));
    }
}
