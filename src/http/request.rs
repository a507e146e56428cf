//! Reading a request: the session token (bearer, else cookie), the refresh cookie, the
//! channel token, and the client's address and user agent.

use super::cookies::{REFRESH_COOKIE, SESSION_COOKIE};
use crate::config::{TokenMethods, TrustProxy};
use crate::service::ClientInfo;
use crate::token::{self, TokenHash};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use std::net::{IpAddr, SocketAddr};

/// The request header that names the request's channel.
pub const CHANNEL_TOKEN_HEADER: HeaderName = HeaderName::from_static("channel-token");

/// Where the request's token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Bearer,
    Cookie,
}

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
        // What clients send, `Bearer <token>` exactly, without the general parse below (the
        // same answer: a well-formed token is visible ASCII with nothing to trim).
        let exact = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .and_then(token::parse_bytes);
        if let Some(hash) = exact {
            return Some(PresentedToken {
                source: TokenSource::Bearer,
                hash: Some(hash),
            });
        }
        if let Some(raw) = bearer(headers) {
            return Some(PresentedToken {
                source: TokenSource::Bearer,
                hash: token::parse(raw),
            });
        }
    }
    if methods.cookie {
        if let Some(raw) = cookie(headers, SESSION_COOKIE).filter(|v| !v.is_empty()) {
            return Some(PresentedToken {
                source: TokenSource::Cookie,
                hash: token::parse(raw),
            });
        }
    }
    None
}

/// The refresh token in the refresh cookie, for `refreshSession` without an argument.
pub fn refresh_cookie(headers: &HeaderMap) -> Option<String> {
    cookie(headers, REFRESH_COOKIE).map(str::to_string)
}

/// The `channel-token` header; a value that is not visible ASCII names no channel (so none is
/// found).
pub fn channel_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(CHANNEL_TOKEN_HEADER)
        .map(|v| v.to_str().unwrap_or(""))
}

/// Where the request came from, kept raw: only mutations that create sessions need strings.
pub struct ClientSource {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<HeaderValue>,
}

impl ClientSource {
    /// The address and user agent as strings (the session layer caps what it stores).
    pub fn info(&self) -> ClientInfo {
        ClientInfo {
            ip_address: self.ip.map(|ip| ip.to_string()),
            user_agent: self
                .user_agent
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }
}

/// The client's address and user agent, kept raw until a mutation needs them as strings.
///
/// Behind `TRUST_PROXY=N` proxies the address is the N-th entry from the right of
/// `X-Forwarded-For` (all such headers read in order, as one list): the one the outermost
/// trusted proxy appended. Entries to its left come from the client and are never used. When
/// the list is shorter than N, or that entry is not an IP address, the peer address is used.
pub fn client_info(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trust_proxy: TrustProxy,
) -> ClientSource {
    ClientSource {
        ip: forwarded_for(headers, trust_proxy.hops).or(peer.map(|p| p.ip())),
        user_agent: headers.get(header::USER_AGENT).cloned(),
    }
}

/// The `hops`-th `X-Forwarded-For` entry from the right, if it is an address (`ip` or
/// `ip:port`, IPv6 with a port in brackets).
fn forwarded_for(headers: &HeaderMap, hops: u8) -> Option<IpAddr> {
    let mut skip = usize::from(hops).checked_sub(1)?;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        // An unreadable header hides how many entries it holds: trust nothing left of it.
        for entry in value.to_str().ok()?.rsplit(',') {
            if skip == 0 {
                let entry = entry.trim();
                return entry
                    .parse::<IpAddr>()
                    .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
                    .ok();
            }
            skip -= 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_bearer_token_gives_its_hash() {
        let good = token::generate();
        let methods = TokenMethods {
            cookie: true,
            bearer: true,
        };
        let t = &good.token;
        for (value, hash) in [
            (format!("Bearer {t}"), Some(good.hash)),
            (format!("bearer {t}"), Some(good.hash)),
            (format!("  BEARER   {t} "), Some(good.hash)),
            (format!("Bearer {t}!"), None),
            (format!("Bearer {}", &t[..42]), None),
            (format!("Bearer  {}", &t[..42]), None),
            (format!("Basic {t}"), None),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&value).unwrap(),
            );
            let p = presented_token(&h, methods);
            match value
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("bearer ")
            {
                true => {
                    let p = p.unwrap_or_else(|| panic!("{value:?}: no token"));
                    assert_eq!(p.source, TokenSource::Bearer, "{value:?}");
                    assert_eq!(p.hash, hash, "{value:?}");
                }
                false => assert!(p.is_none(), "{value:?}"),
            }
        }
    }

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

    fn address(h: &HeaderMap, hops: u8) -> Option<String> {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        client_info(h, Some(peer), TrustProxy::hops(hops))
            .info()
            .ip_address
    }

    fn forwarded(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn forwarded_address_only_behind_a_trusted_proxy() {
        let h = forwarded(&["203.0.113.9, 10.0.0.1"]);
        assert_eq!(address(&h, 0).as_deref(), Some("127.0.0.1"));
        // The right-most entry is the one the nearest proxy appended; the left one is the
        // client's word.
        assert_eq!(address(&h, 1).as_deref(), Some("10.0.0.1"));
        assert_eq!(address(&h, 2).as_deref(), Some("203.0.113.9"));
        // Fewer entries than trusted proxies: the peer.
        assert_eq!(address(&h, 3).as_deref(), Some("127.0.0.1"));
        assert_eq!(address(&forwarded(&[]), 1).as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn forwarded_entries_span_every_header_in_order() {
        let h = forwarded(&["198.51.100.1, 203.0.113.9", "10.0.0.1"]);
        assert_eq!(address(&h, 1).as_deref(), Some("10.0.0.1"));
        assert_eq!(address(&h, 2).as_deref(), Some("203.0.113.9"));
        assert_eq!(address(&h, 3).as_deref(), Some("198.51.100.1"));
    }

    #[test]
    fn forwarded_entries_that_are_not_addresses_fall_back_to_the_peer() {
        assert_eq!(
            address(&forwarded(&["garbage"]), 1).as_deref(),
            Some("127.0.0.1")
        );
        // Garbage to the left of the trusted entry does not matter.
        assert_eq!(
            address(&forwarded(&["garbage, ,10.0.0.1"]), 1).as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            address(&forwarded(&["10.0.0.1, "]), 1).as_deref(),
            Some("127.0.0.1")
        );
        // Addresses with ports, IPv6 too.
        assert_eq!(
            address(&forwarded(&["10.0.0.1:4711"]), 1).as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            address(&forwarded(&["[2001:db8::1]:443"]), 1).as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(
            address(&forwarded(&["2001:db8::2"]), 1).as_deref(),
            Some("2001:db8::2")
        );
        let mut h = forwarded(&["10.0.0.1"]);
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"10.0.0.\xff").unwrap(),
        );
        assert_eq!(address(&h, 1).as_deref(), Some("127.0.0.1"));
    }
}
