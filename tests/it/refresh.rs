//! Refresh tokens: rotation (argument and `session_refresh` cookie), SUPERSEDED within the reuse
//! grace, REUSED after it (revokes the session), concurrent refreshes, UNKNOWN and EXPIRED
//! failures, `session_token_ttl`, and no refresh token for anonymous sessions.

use crate::helpers::{Gql, Login, TestApp, Variant};
use serde_json::json;
use std::time::Duration;

crate::variants!(
    refresh_rotates_both_tokens,
    refresh_token_from_cookie,
    superseded_within_grace_changes_nothing,
    reuse_after_grace_revokes_the_session,
    concurrent_refreshes_one_wins,
    garbage_and_unknown_refresh_tokens,
    session_token_ttl_requires_refresh,
    idle_expired_session_cannot_refresh,
    anonymous_sessions_have_no_refresh_token,
);

// Interleavings forced with row locks (see each test).
crate::server_databases!(a_write_racing_a_refresh_shows_through_the_new_token,);

const REFRESH: &str = "mutation($r: String) { refreshSession(refreshToken: $r) {
    __typename
    ... on AuthenticationSuccess { user { id identifier } session { id kind } }
    ... on InvalidRefreshTokenError { errorCode message reason }
} }";

async fn refresh(app: &TestApp, refresh_token: &str) -> Gql {
    app.gql(REFRESH, json!({ "r": refresh_token })).await.ok()
}

fn outcome(r: &Gql) -> &str {
    r.data()["refreshSession"]["__typename"]
        .as_str()
        .unwrap_or_else(|| panic!("no refresh result: {}", r.body))
}

fn reason(r: &Gql) -> &str {
    assert_eq!(outcome(r), "InvalidRefreshTokenError", "{}", r.body);
    r.data()["refreshSession"]["reason"].as_str().unwrap()
}

/// Asserts a successful refresh and returns the new tokens.
fn rotated(r: &Gql) -> Login {
    assert_eq!(outcome(r), "AuthenticationSuccess", "{}", r.body);
    Login {
        token: r.session_token().expect("session-token header"),
        refresh_token: r.refresh_token().expect("refresh-token header"),
        body: r.body.clone(),
    }
}

async fn user_login(app: &TestApp) -> Login {
    app.login("superadmin", "superadmin").await
}

async fn refresh_rotates_both_tokens(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let first = user_login(&app).await;
    let session_id = app.active_session(&first.token).await["id"].clone();
    let r = refresh(&app, &first.refresh_token).await;
    let second = rotated(&r);
    assert_ne!(second.token, first.token);
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.token.len(), 43);
    assert_eq!(second.refresh_token.len(), 43);
    assert_eq!(
        r.data()["refreshSession"]["user"]["identifier"],
        "superadmin"
    );
    let cookie = r.cookie("session").expect("session cookie");
    assert!(cookie.starts_with(&format!("session={}", second.token)));
    let rc = r.cookie("session_refresh").expect("session_refresh cookie");
    assert!(rc.starts_with(&format!("session_refresh={}", second.refresh_token)));
    assert!(app.active_session(&first.token).await.is_null());
    let s = app.active_session(&second.token).await;
    assert_eq!(s["kind"], "AUTHENTICATED");
    // The same session continues under the new token.
    assert_eq!(s["id"], session_id);
    // And it rotates again.
    let third = rotated(&refresh(&app, &second.refresh_token).await);
    assert!(!app.active_session(&third.token).await.is_null());
    assert!(app.active_session(&second.token).await.is_null());
}

async fn refresh_token_from_cookie(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let first = user_login(&app).await;
    let r = TestApp::send(
        app.post(REFRESH, json!({}))
            .header("cookie", format!("session_refresh={}", first.refresh_token)),
    )
    .await
    .ok();
    let second = rotated(&r);
    assert_ne!(second.token, first.token);
    assert!(app.active_session(&first.token).await.is_null());
    assert!(!app.active_session(&second.token).await.is_null());
    // Without argument and cookie there is nothing to refresh.
    let r = app.gql(REFRESH, json!({})).await.ok();
    assert_eq!(reason(&r), "UNKNOWN");
}

async fn superseded_within_grace_changes_nothing(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let first = user_login(&app).await;
    let second = rotated(&refresh(&app, &first.refresh_token).await);
    let r = refresh(&app, &first.refresh_token).await;
    assert_eq!(reason(&r), "SUPERSEDED");
    assert!(r.session_token().is_none());
    assert!(r.refresh_token().is_none());
    assert!(!app.active_session(&second.token).await.is_null());
    let third = rotated(&refresh(&app, &second.refresh_token).await);
    assert!(!app.active_session(&third.token).await.is_null());
}

async fn reuse_after_grace_revokes_the_session(v: Variant) {
    let Some(app) =
        TestApp::spawn_with(v, |c| c.refresh_reuse_grace = Duration::from_secs(1)).await
    else {
        return;
    };
    let first = user_login(&app).await;
    let other = user_login(&app).await;
    let second = rotated(&refresh(&app, &first.refresh_token).await);
    assert!(!app.active_session(&second.token).await.is_null());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = refresh(&app, &first.refresh_token).await;
    assert_eq!(reason(&r), "REUSED");
    assert!(app.active_session(&second.token).await.is_null());
    let r = refresh(&app, &second.refresh_token).await;
    assert_eq!(outcome(&r), "InvalidRefreshTokenError", "{}", r.body);
    // Only that session: another session of the same user lives on.
    assert!(!app.active_session(&other.token).await.is_null());
}

async fn concurrent_refreshes_one_wins(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let first = user_login(&app).await;
    let results =
        futures_util::future::join_all((0..8).map(|_| refresh(&app, &first.refresh_token))).await;
    let winners: Vec<&Gql> = results
        .iter()
        .filter(|r| outcome(r) == "AuthenticationSuccess")
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "{:?}",
        results.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    for r in &results {
        if outcome(r) != "AuthenticationSuccess" {
            assert!(r.session_token().is_none());
        }
    }
    let winner = rotated(winners[0]);
    assert!(!app.active_session(&winner.token).await.is_null());
    assert!(app.active_session(&first.token).await.is_null());
    rotated(&refresh(&app, &winner.refresh_token).await);
}

async fn garbage_and_unknown_refresh_tokens(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let login = user_login(&app).await;
    let unknown = session_server::token::random_string(32);
    for token in [
        "garbage",
        "",
        "%%%%",
        unknown.as_str(),
        // A session token is not a refresh token.
        login.token.as_str(),
    ] {
        let r = refresh(&app, token).await;
        assert_eq!(reason(&r), "UNKNOWN", "{token}");
        assert!(r.session_token().is_none());
    }
    // None of that harmed the real session.
    assert!(!app.active_session(&login.token).await.is_null());
    rotated(&refresh(&app, &login.refresh_token).await);
}

async fn session_token_ttl_requires_refresh(v: Variant) {
    let Some(app) =
        TestApp::spawn_with(v, |c| c.session_token_ttl = Some(Duration::from_secs(1))).await
    else {
        return;
    };
    let first = user_login(&app).await;
    assert!(!app.active_session(&first.token).await.is_null());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        app.active_session(&first.token).await.is_null(),
        "the session token outlived SESSION_TOKEN_TTL"
    );
    let second = rotated(&refresh(&app, &first.refresh_token).await);
    let s = app.active_session(&second.token).await;
    assert_eq!(s["kind"], "AUTHENTICATED");
    assert_eq!(s["user"]["identifier"], "superadmin");
}

async fn idle_expired_session_cannot_refresh(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.session_idle_timeout = Duration::from_secs(2);
        c.session_absolute_timeout = Duration::from_secs(3600);
    })
    .await
    else {
        return;
    };
    let login = user_login(&app).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = refresh(&app, &login.refresh_token).await;
    assert_eq!(reason(&r), "EXPIRED");
    assert!(r.session_token().is_none());
}

async fn anonymous_sessions_have_no_refresh_token(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let r = app
        .gql("mutation { createAnonymousSession { id } }", json!({}))
        .await
        .ok();
    assert!(r.session_token().is_some());
    assert!(r.refresh_token().is_none());
    assert!(r.cookie("session_refresh").is_none());
    let r = app
        .gql("mutation { createOrder { id } }", json!({}))
        .await
        .ok();
    assert!(r.session_token().is_some());
    assert!(r.refresh_token().is_none());
    assert!(r.cookie("session_refresh").is_none());
}

/// A write through the session token in flight while a refresh rotates it: the new token's
/// cached session must show every write that succeeded. The test holds the session's row
/// locked (so both requests wait at their writes after reading it) and lets them go in one
/// order, then the other: a write queued before the rotation shows through the new token; one
/// queued after it finds its token rotated out (`UNAUTHENTICATED`), as if revoked.
async fn a_write_racing_a_refresh_shows_through_the_new_token(v: Variant) {
    use entity::session;
    use sea_orm::{ColumnTrait, Database, EntityTrait, QueryFilter};
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let db = Database::connect(&app.database_url).await.expect("connect");
    const SET: &str = "mutation($s: JSON) { updateSessionData(set: $s) { dataVersion } }";
    const READ: &str = "{ activeSession { data dataVersion } }";
    for write_first in [true, false] {
        let login = user_login(&app).await;
        app.gql_as(&login.token, SET, json!({ "s": { "step": "zero" } }))
            .await
            .ok();
        let sid = app.active_session(&login.token).await["id"].clone();
        let sid: i64 = sid.as_str().expect("id").parse().expect("numeric id");
        let lock = crate::helpers::hold_rows(
            &db,
            session::Entity::find().filter(session::Column::Id.eq(sid)),
        )
        .await;
        let api = || crate::helpers::Api::new(app.port, Duration::from_secs(30));
        let write = {
            let (api, token) = (api(), login.token.clone());
            async move {
                api.gql_as(&token, SET, json!({ "s": { "step": "one" } }))
                    .await
            }
        };
        let refresh = {
            let (api, r) = (api(), login.refresh_token.clone());
            async move { api.gql(REFRESH, json!({ "r": r })).await }
        };
        let (write, refresh) = if write_first {
            let w = tokio::spawn(write);
            tokio::time::sleep(Duration::from_millis(400)).await;
            let r = tokio::spawn(refresh);
            tokio::time::sleep(Duration::from_millis(400)).await;
            (w, r)
        } else {
            let r = tokio::spawn(refresh);
            tokio::time::sleep(Duration::from_millis(400)).await;
            let w = tokio::spawn(write);
            tokio::time::sleep(Duration::from_millis(400)).await;
            (w, r)
        };
        assert!(
            !write.is_finished() && !refresh.is_finished(),
            "both wait for the row"
        );
        lock.commit().await.expect("release the row");
        let (write, refresh) = (write.await.unwrap(), refresh.await.unwrap().ok());
        let new = rotated(&refresh);
        let seen = app.gql_as(&new.token, READ, json!({})).await.ok();
        let seen = &seen.data()["activeSession"];
        if write_first {
            assert_eq!(
                write.body["data"]["updateSessionData"]["dataVersion"], 2,
                "{}",
                write.body
            );
            assert_eq!(seen["data"], json!({ "step": "one" }), "{seen}");
            assert_eq!(seen["dataVersion"], 2, "{seen}");
        } else {
            assert_eq!(
                write.error_code(),
                Some("UNAUTHENTICATED"),
                "{}",
                write.body
            );
            assert_eq!(seen["data"], json!({ "step": "zero" }), "{seen}");
            assert_eq!(seen["dataVersion"], 1, "{seen}");
        }
    }
}
