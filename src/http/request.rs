//! Reading a request: the session token (bearer, else cookie), the refresh cookie, and the
//! client's address and user agent.

use crate::config::TokenMethods;
use crate::graphql::ClientSource;
use crate::graphql::TokenSource;
use crate::token::{self, TokenHash};
use axum::http::{header, HeaderMap};
use std::net::{IpAddr, SocketAddr};

/// A token the client presented; `hash` is `None` when it was malformed.
pub struct PresentedToken {
    pub source: TokenSource,
    pub hash: Option<TokenHash>,
}

/// The value of cookie `name`, from any `Cookie` header.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The request's session token: the bearer token when both are present and allowed.
pub fn presented_token(headers: &HeaderMap, methods: TokenMethods) -> Option<PresentedToken> {
    if methods.bearer {
        if let Some(raw) = bearer(headers) {
            return Some(PresentedToken {
                source: TokenSource::Bearer,
                hash: token::parse(raw),
            });
        }
    }
    if methods.cookie {
        if let Some(raw) = cookie(headers, "session").filter(|v| !v.is_empty()) {
            return Some(PresentedToken {
                source: TokenSource::Cookie,
                hash: token::parse(raw),
            });
        }
    }
    None
}

/// The client's address (the peer, or the first `X-Forwarded-For` entry behind a trusted
/// proxy) and user agent, kept raw until a mutation needs them as strings.
pub fn client_info(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trust_proxy: bool,
) -> ClientSource {
    let forwarded = trust_proxy
        .then(|| headers.get("x-forwarded-for"))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|first| first.trim().parse::<IpAddr>().ok());
    ClientSource {
        ip: forwarded.or(peer.map(|p| p.ip())),
        user_agent: headers.get(header::USER_AGENT).cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_wins_over_cookie_and_malformed_tokens_have_no_hash() {
        let good = token::generate();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; session={}", good.token)).unwrap(),
        );
        let both = TokenMethods {
            cookie: true,
            bearer: true,
        };
        let p = presented_token(&h, both).unwrap();
        assert_eq!(p.source, TokenSource::Cookie);
        assert_eq!(p.hash, Some(good.hash));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer not-a-token"),
        );
        let p = presented_token(&h, both).unwrap();
        assert_eq!(p.source, TokenSource::Bearer);
        assert_eq!(p.hash, None);
        let cookie_only = TokenMethods {
            cookie: true,
            bearer: false,
        };
        assert_eq!(
            presented_token(&h, cookie_only).unwrap().source,
            TokenSource::Cookie
        );
    }

    #[test]
    fn forwarded_address_only_behind_a_trusted_proxy() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 10.0.0.1"),
        );
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(
            client_info(&h, Some(peer), false)
                .info()
                .ip_address
                .as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            client_info(&h, Some(peer), true)
                .info()
                .ip_address
                .as_deref(),
            Some("203.0.113.9")
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(
            client_info(&h, Some(peer), true)
                .info()
                .ip_address
                .as_deref(),
            Some("127.0.0.1")
        );
    }
}
