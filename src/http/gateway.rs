//! The gateway check, `/auth` (any method, any path below it): for nginx `auth_request`,
//! Traefik `ForwardAuth` and Envoy `ext_authz`. It identifies the caller exactly as `/graphql`
//! does (`Services::identify`: the same token rules, cache, sliding and revocation) and
//! answers with headers only, without GraphQL.
//!
//! `?kind=authenticated` refuses anonymous sessions, `?require=PERM1,PERM2` refuses users who
//! lack one of them in the request's channel; every answer carries the session JWT
//! (`x-session-jwt`) unless `?jwt=0`.

use super::request;
use super::transport::error_response;
use super::AppState;
use crate::error::{AppError, ErrorCode};
use crate::permission::{Permission, PermissionSet};
use crate::service::identify::Identity;
use crate::service::jwt::kind_name;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

pub const X_SESSION_ID: HeaderName = HeaderName::from_static("x-session-id");
pub const X_SESSION_KIND: HeaderName = HeaderName::from_static("x-session-kind");
pub const X_CHANNEL_CODE: HeaderName = HeaderName::from_static("x-channel-code");
pub const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
pub const X_USER_IDENTIFIER: HeaderName = HeaderName::from_static("x-user-identifier");
pub const X_PERMISSIONS: HeaderName = HeaderName::from_static("x-permissions");
pub const X_SESSION_JWT: HeaderName = HeaderName::from_static("x-session-jwt");

/// What the gateway asked for in the query string.
#[derive(Debug)]
struct Check {
    authenticated_only: bool,
    required: PermissionSet,
    jwt: bool,
}

impl Default for Check {
    fn default() -> Check {
        Check {
            authenticated_only: false,
            required: PermissionSet::default(),
            jwt: true,
        }
    }
}

/// Reads `kind`, `require` and `jwt`; other parameters are ignored. A value this check does
/// not understand is a mistake in the gateway's configuration: 400 says which.
fn parse_check(uri: &Uri) -> Result<Check, String> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|_| "the query string is not valid URL encoding".to_string())?;
    let mut check = Check::default();
    for (key, value) in pairs {
        match key.as_str() {
            "kind" => match value.as_str() {
                "authenticated" => check.authenticated_only = true,
                "any" | "" => {}
                other => {
                    return Err(format!(
                        "kind must be 'authenticated' or 'any', not '{}'",
                        clip(other)
                    ))
                }
            },
            "require" => {
                for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let p = Permission::ALL
                        .into_iter()
                        .find(|p| p.name() == name)
                        .ok_or_else(|| format!("require: unknown permission '{}'", clip(name)))?;
                    check.required.insert(p);
                }
            }
            "jwt" => match value.as_str() {
                "1" | "true" => check.jwt = true,
                "0" | "false" => check.jwt = false,
                other => return Err(format!("jwt must be 1 or 0, not '{}'", clip(other))),
            },
            _ => {}
        }
    }
    Ok(check)
}

fn clip(s: &str) -> &str {
    crate::service::session::truncate(s, 40)
}

/// `/auth`: 200 with the identity headers, 401 without a (suitable) session, 403 without the
/// required permissions.
pub(super) async fn check(State(app): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let check = match parse_check(&uri) {
        Ok(c) => c,
        Err(msg) => return error_response(StatusCode::BAD_REQUEST, ErrorCode::BadUserInput, &msg),
    };
    let svc = &app.services;
    let presented = request::presented_token(&headers, svc.config().token_method);
    let identity = match svc
        .sessions
        .identify(
            presented.as_ref().and_then(|p| p.hash.as_ref()),
            request::channel_token(&headers),
        )
        .await
    {
        Ok(identity) => identity,
        Err(e) => return identify_failed(e),
    };
    let Some(session) = identity.session.as_ref() else {
        return unauthorized();
    };
    if check.authenticated_only && session.user.is_none() {
        return unauthorized();
    }
    let permissions = identity.permissions();
    if !permissions.contains_all(check.required) {
        return status_only(StatusCode::FORBIDDEN);
    }
    let jwt = if check.jwt {
        match svc.jwt.gateway_jwt(&identity).await {
            Ok(jwt) => jwt,
            Err(e) => return identify_failed(e),
        }
    } else {
        None
    };

    let mut out = status_only(StatusCode::OK);
    let h = out.headers_mut();
    write_identity(h, &identity, permissions);
    if let Some(jwt) = jwt.and_then(|j| HeaderValue::try_from(j.token).ok()) {
        h.insert(X_SESSION_JWT, jwt);
    }
    out
}

/// The identity headers of a live session.
fn write_identity(h: &mut HeaderMap, identity: &Identity, permissions: PermissionSet) {
    let Some(s) = identity.session.as_ref() else {
        return;
    };
    h.insert(X_SESSION_ID, HeaderValue::from(s.id));
    h.insert(X_SESSION_KIND, HeaderValue::from_static(kind_name(s.kind)));
    // Channel codes and identifiers are validated text; a byte a header cannot carry (a control
    // character) leaves the header out rather than failing the check.
    if let Ok(v) = HeaderValue::from_bytes(identity.channel.code.as_bytes()) {
        h.insert(X_CHANNEL_CODE, v);
    }
    if let Some(u) = &s.user {
        let rendered = u.gateway_headers();
        h.insert(X_USER_ID, rendered.id.clone());
        if let Some(v) = &rendered.identifier {
            h.insert(X_USER_IDENTIFIER, v.clone());
        }
        if let Some(v) = rendered.permissions(permissions) {
            h.insert(X_PERMISSIONS, v);
        }
    }
}

fn status_only(status: StatusCode) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
    )
        .into_response()
}

fn unauthorized() -> Response {
    let mut out = status_only(StatusCode::UNAUTHORIZED);
    out.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    out
}

/// An unknown `channel-token` is the request's mistake (400); a database outage is 503.
fn identify_failed(e: AppError) -> Response {
    let status = match e.code() {
        ErrorCode::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    error_response(status, e.code(), &e.client_message())
}

/// `GET /.well-known/jwks.json`: the public keys that verify session JWTs.
pub(super) async fn jwks(State(app): State<AppState>) -> Response {
    let svc = &app.services;
    let body = svc.jwt.jwks().await;
    let cache = format!("public, max-age={}", svc.jwt.max_age_secs());
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::try_from(cache).unwrap_or(HeaderValue::from_static("no-cache")),
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<Check, String> {
        parse_check(&format!("/auth?{q}").parse::<Uri>().unwrap())
    }

    #[test]
    fn query_parameters_are_read_and_bad_ones_named() {
        let c = parse("kind=authenticated&require=READ_SESSION%2CWRITE_USER&jwt=1&x=y").unwrap();
        assert!(c.authenticated_only && c.jwt);
        assert!(c.required.contains(Permission::ReadSession));
        assert!(c.required.contains(Permission::WriteUser));
        assert!(!c.required.contains(Permission::ReadUser));
        assert!(parse("require=NOPE").unwrap_err().contains("NOPE"));
        assert!(parse("kind=admin").unwrap_err().contains("kind"));
        assert!(parse("jwt=yes").unwrap_err().contains("jwt"));
        let none = parse("").unwrap();
        assert!(!none.authenticated_only && none.jwt && none.required == PermissionSet::default());
        assert!(!parse("jwt=0").unwrap().jwt);
    }
}
