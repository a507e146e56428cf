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

/// Whether tokens travel in cookies at all (`TOKEN_METHOD`), and whether those are `Secure`.
#[derive(Clone, Copy)]
pub(super) struct CookieMode {
    pub on: bool,
    pub secure: bool,
}

impl CookieMode {
    pub fn of(config: &Config) -> CookieMode {
        CookieMode {
            on: config.token_method.cookie,
            secure: config.cookie_secure,
        }
    }
}

/// Writes the resolvers' token changes, in order: each issue sets the token headers (the last
/// one wins) and, in cookie mode, appends its cookies; each clear expires both cookies.
pub(super) fn write_token_changes(h: &mut HeaderMap, changes: &[TokenChange], mode: CookieMode) {
    let CookieMode {
        on: cookies,
        secure,
    } = mode;
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
pub(super) fn clear_dead_session_cookie(h: &mut HeaderMap, mode: CookieMode) {
    if mode.on {
        set_cookie(h, session_cookie("", mode.secure, Some(0)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn issued(token: &str, refresh: Option<&str>, remember_days: Option<u64>) -> TokenChange {
        TokenChange::Issued {
            token: token.into(),
            refresh_token: refresh.map(String::from),
            remember_for: remember_days.map(|d| Duration::from_secs(d * 86_400)),
        }
    }

    fn written(changes: &[TokenChange], mode: CookieMode) -> (Vec<String>, HeaderMap) {
        let mut h = HeaderMap::new();
        write_token_changes(&mut h, changes, mode);
        let cookies = h
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        (cookies, h)
    }

    #[test]
    fn changes_are_written_in_order_with_the_last_token_in_the_headers() {
        let mode = CookieMode {
            on: true,
            secure: true,
        };
        let changes = [
            TokenChange::Cleared,
            issued("a", Some("r1"), None),
            issued("b", None, Some(30)),
        ];
        let (cookies, h) = written(&changes, mode);
        assert_eq!(
            cookies,
            [
                "session=; HttpOnly; SameSite=Lax; Path=/; Secure; Max-Age=0",
                "session_refresh=; HttpOnly; SameSite=Strict; Path=/graphql; Secure; Max-Age=0",
                "session=a; HttpOnly; SameSite=Lax; Path=/; Secure",
                "session_refresh=r1; HttpOnly; SameSite=Strict; Path=/graphql; Secure",
                "session=b; HttpOnly; SameSite=Lax; Path=/; Secure; Max-Age=2592000",
            ]
        );
        assert_eq!(h.get_all("session-token").iter().count(), 1);
        assert_eq!(h["session-token"], "b");
        // An issue without a refresh token leaves the earlier one in place.
        assert_eq!(h["refresh-token"], "r1");
    }

    #[test]
    fn without_cookie_mode_only_the_headers_are_written() {
        let mode = CookieMode {
            on: false,
            secure: true,
        };
        let (cookies, h) = written(
            &[issued("a", Some("r"), Some(1)), TokenChange::Cleared],
            mode,
        );
        assert!(cookies.is_empty(), "{cookies:?}");
        assert_eq!(h["session-token"], "a");
        assert_eq!(h["refresh-token"], "r");
        let mut h = HeaderMap::new();
        clear_dead_session_cookie(&mut h, mode);
        assert!(h.is_empty());
    }

    #[test]
    fn insecure_cookies_and_the_dead_session_cookie() {
        let mode = CookieMode {
            on: true,
            secure: false,
        };
        let (cookies, _) = written(&[issued("t", Some("r"), Some(1))], mode);
        assert_eq!(
            cookies,
            [
                "session=t; HttpOnly; SameSite=Lax; Path=/; Max-Age=86400",
                "session_refresh=r; HttpOnly; SameSite=Strict; Path=/graphql; Max-Age=86400",
            ]
        );
        let mut h = HeaderMap::new();
        clear_dead_session_cookie(&mut h, mode);
        assert_eq!(
            h[header::SET_COOKIE],
            "session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"
        );
    }
}
