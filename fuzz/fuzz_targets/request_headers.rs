//! Reading the session token from request headers: arbitrary `Authorization` and `Cookie`
//! values never panic, a cookie value never carries a separator, and whatever token is found
//! only has a hash when it is well-formed.
#![no_main]

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use session_server::config::TokenMethods;
use session_server::http::request::{cookie, presented_token};

fuzz_target!(|data: &[u8]| {
    // The input is split into header values at newlines: the first is `Authorization`, the
    // others are `Cookie` headers. Values a client could not send are skipped.
    let mut headers = HeaderMap::new();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let Ok(value) = HeaderValue::from_bytes(line) else {
            continue;
        };
        if i == 0 {
            headers.insert(AUTHORIZATION, value);
        } else {
            headers.append(COOKIE, value);
        }
    }
    for name in ["session", "session_refresh", "", "a=b"] {
        if let Some(v) = cookie(&headers, name) {
            assert!(!v.contains(';'), "{v:?}");
        }
    }
    for (cookie_on, bearer_on) in [(true, true), (true, false), (false, true)] {
        let methods = TokenMethods {
            cookie: cookie_on,
            bearer: bearer_on,
        };
        if let Some(p) = presented_token(&headers, methods) {
            if let Some(hash) = p.hash {
                // A hash is only ever computed for a well-formed token.
                let raw = [
                    cookie(&headers, "session"),
                    headers
                        .get(AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().split_once(' '))
                        .map(|(_, t)| t.trim()),
                ];
                assert!(
                    raw.iter()
                        .flatten()
                        .any(|t| session_server::token::parse(t) == Some(hash)),
                    "a hash for a malformed token"
                );
            }
        }
    }
});
