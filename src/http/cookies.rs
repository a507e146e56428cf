//! Handing tokens to the client and taking them back: the `session-token` / `refresh-token`
//! response headers and the `session` / `session_refresh` cookies. The one place their names
//! and attributes are written; resolvers only record what they issued or cleared.

use crate::config::Config;
use crate::graphql::TokenChange;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};

/// The cookie that carries the session token (cookie mode).
pub const SESSION_COOKIE: &str = "session";
/// The cookie that carries the refresh token; sent only to `/graphql`.
pub const REFRESH_COOKIE: &str = "session_refresh";
/// The response header that carries a newly issued session token.
pub const SESSION_TOKEN_HEADER: HeaderName = HeaderName::from_static("session-token");
/// The response header that carries a newly issued refresh token.
pub const REFRESH_TOKEN_HEADER: HeaderName = HeaderName::from_static("refresh-token");

/// Writes the resolvers' token changes, in order: each issue sets the token headers (the last
/// one wins) and, in cookie mode, appends its cookies; each clear expires both cookies.
pub(super) fn write_token_changes(h: &mut HeaderMap, changes: &[TokenChange], config: &Config) {
    let cookies = config.token_method.cookie;
    let secure = config.cookie_secure;
    for change in changes {
        match change {
            TokenChange::Issued {
                token,
                refresh_token,
                remember_for,
            } => {
                if let Ok(v) = HeaderValue::from_str(token) {
                    h.insert(SESSION_TOKEN_HEADER, v);
                }
                if let Some(refresh) = refresh_token {
                    if let Ok(v) = HeaderValue::from_str(refresh) {
                        h.insert(REFRESH_TOKEN_HEADER, v);
                    }
                }
                if cookies {
                    let max_age = remember_for.map(|d| d.as_secs() as i64);
                    set_cookie(h, session_cookie(token, secure, max_age));
                    if let Some(refresh) = refresh_token {
                        set_cookie(h, refresh_cookie(refresh, secure, max_age));
                    }
                }
            }
            TokenChange::Cleared => {
                if cookies {
                    set_cookie(h, session_cookie("", secure, Some(0)));
                    set_cookie(h, refresh_cookie("", secure, Some(0)));
                }
            }
        }
    }
}

/// Expires the session cookie of a request whose cookie named no live session, so the client
/// stops sending it.
pub(super) fn clear_dead_session_cookie(h: &mut HeaderMap, config: &Config) {
    if config.token_method.cookie {
        set_cookie(h, session_cookie("", config.cookie_secure, Some(0)));
    }
}

fn set_cookie(h: &mut HeaderMap, cookie: String) {
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        h.append(header::SET_COOKIE, v);
    }
}

/// The session cookie: sent on every same-site request and top-level navigation.
fn session_cookie(token: &str, secure: bool, max_age: Option<i64>) -> String {
    cookie(SESSION_COOKIE, token, "Lax", "/", secure, max_age)
}

/// The refresh cookie: only to `/graphql`, never cross-site.
fn refresh_cookie(token: &str, secure: bool, max_age: Option<i64>) -> String {
    cookie(REFRESH_COOKIE, token, "Strict", "/graphql", secure, max_age)
}

/// Attributes shared by setting and clearing; `max_age` `None` makes a cookie that lasts
/// until the browser closes.
fn cookie(
    name: &str,
    value: &str,
    same_site: &str,
    path: &str,
    secure: bool,
    max_age: Option<i64>,
) -> String {
    let mut c = format!("{name}={value}; HttpOnly; SameSite={same_site}; Path={path}");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    c
}
