//! Authentication: login (headers, cookies, rememberMe, carry-over from an anonymous session,
//! lastLoginAt), login failures and rate limits, logout, logoutEverywhere, changePassword, `me`.

use crate::helpers::{TestApp, Variant};
use serde_json::{json, Value};
use std::time::Duration;

crate::variants!(
    login_issues_tokens_and_cookies,
    remember_me_adds_max_age,
    login_from_anonymous_session_carries_over,
    login_sets_last_login_at,
    concurrent_logins_of_one_user_all_succeed,
    concurrent_logins_through_two_instances_all_succeed,
    unknown_user_and_wrong_password_look_the_same,
    unverified_user_gets_not_verified_error,
    too_many_attempts_per_identifier_then_window_passes,
    too_many_attempts_per_address,
    logout_ends_only_this_session,
    logout_everywhere_ends_all_sessions,
    change_password_ends_other_sessions,
    change_password_with_wrong_current_password,
    me_is_null_when_anonymous_and_lists_permissions,
);

// Interleavings forced with row locks (see each test).
crate::server_databases!(
    a_login_racing_a_password_change_does_not_outlive_it,
    a_cart_created_during_the_login_is_carried_over,
    a_login_racing_a_role_removal_does_not_cache_the_old_grants,
    a_login_chosen_as_a_deadlock_victim_is_run_again,
    a_password_change_lands_with_the_end_of_the_other_sessions,
);

const LOGIN: &str = "mutation($u: String!, $p: String!, $r: Boolean) {
    login(username: $u, password: $p, rememberMe: $r) {
        __typename
        ... on AuthenticationSuccess { user { id identifier } session { id kind } }
        ... on InvalidCredentialsError { errorCode message }
        ... on NotVerifiedError { errorCode message }
        ... on TooManyAttemptsError { errorCode message retryAfterSeconds }
    } }";

async fn setup_user(app: &TestApp, identifier: &str, password: &str) -> String {
    let admin = app.admin_token().await;
    app.create_user(&admin, identifier, password, &[]).await
}

fn typename(r: &crate::helpers::Gql) -> String {
    r.data()["login"]["__typename"]
        .as_str()
        .unwrap_or_else(|| panic!("no login result: {}", r.body))
        .to_string()
}

/// A `Set-Cookie` line that deletes its cookie.
fn is_clearing(cookie: &str) -> bool {
    let lower = cookie.to_ascii_lowercase();
    lower.contains("max-age=0") || lower.contains("1970")
}

async fn login_issues_tokens_and_cookies(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let user_id = setup_user(&app, "alice", "alice-password-1").await;
    let r = app
        .gql(LOGIN, json!({ "u": "alice", "p": "alice-password-1" }))
        .await
        .ok();
    assert_eq!(typename(&r), "AuthenticationSuccess");
    assert_eq!(r.data()["login"]["user"]["id"], user_id.as_str());
    assert_eq!(r.data()["login"]["user"]["identifier"], "alice");
    assert_eq!(r.data()["login"]["session"]["kind"], "AUTHENTICATED");
    let token = r.session_token().expect("session-token header");
    let refresh = r.refresh_token().expect("refresh-token header");
    assert_eq!(token.len(), 43);
    assert_eq!(refresh.len(), 43);
    assert_ne!(token, refresh);
    let session = r.cookie("session").expect("session cookie");
    assert!(
        session.starts_with(&format!("session={token}")),
        "{session}"
    );
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Secure"] {
        assert!(session.contains(attr), "{session} lacks {attr}");
    }
    let rc = r.cookie("session_refresh").expect("session_refresh cookie");
    assert!(
        rc.starts_with(&format!("session_refresh={refresh}")),
        "{rc}"
    );
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/graphql", "Secure"] {
        assert!(rc.contains(attr), "{rc} lacks {attr}");
    }
    assert!(!session.contains("Max-Age"), "{session}");
    assert!(!rc.contains("Max-Age"), "{rc}");
    let s = app.active_session(&token).await;
    assert_eq!(s["kind"], "AUTHENTICATED");
    assert_eq!(s["user"]["id"], user_id.as_str());
    assert_eq!(s["id"], r.data()["login"]["session"]["id"]);
}

async fn remember_me_adds_max_age(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    setup_user(&app, "bob", "bob-password-1").await;
    let r = app
        .gql(
            LOGIN,
            json!({ "u": "bob", "p": "bob-password-1", "r": true }),
        )
        .await
        .ok();
    assert_eq!(typename(&r), "AuthenticationSuccess");
    for name in ["session", "session_refresh"] {
        let c = r.cookie(name).unwrap_or_else(|| panic!("{name} cookie"));
        let max_age = c
            .split(';')
            .map(str::trim)
            .find_map(|a| a.strip_prefix("Max-Age="))
            .unwrap_or_else(|| panic!("{c} lacks Max-Age"));
        let secs: i64 = max_age.parse().unwrap();
        assert!(secs > 0, "{c}");
    }
    let r = app
        .gql(
            LOGIN,
            json!({ "u": "bob", "p": "bob-password-1", "r": false }),
        )
        .await
        .ok();
    assert_eq!(typename(&r), "AuthenticationSuccess");
    for name in ["session", "session_refresh"] {
        let c = r.cookie(name).unwrap_or_else(|| panic!("{name} cookie"));
        assert!(!c.contains("Max-Age"), "{c}");
    }
}

async fn login_from_anonymous_session_carries_over(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let user_id = app
        .create_user(&admin, "carol", "carol-password-1", &[])
        .await;
    let r = app
        .gql_as(
            &admin,
            "mutation { createChannel(input: { code: \"eu\" }) { token } }",
            json!({}),
        )
        .await
        .ok();
    let eu_token = r.data()["createChannel"]["token"]
        .as_str()
        .unwrap()
        .to_string();

    // A guest: anonymous session in channel `eu` with an active order.
    let r = app
        .gql("mutation { createAnonymousSession { id } }", json!({}))
        .await
        .ok();
    let anon = r.session_token().unwrap();
    let anon_id = r.data()["createAnonymousSession"]["id"].clone();
    app.set_active_channel(&anon, &eu_token).await;
    let r = app
        .gql_as(
            &anon,
            "mutation { createOrder { id user { id } channel { code } } }",
            json!({}),
        )
        .await
        .ok();
    let order = r.data()["createOrder"].clone();
    assert!(order["user"].is_null());
    assert_eq!(order["channel"]["code"], "eu");

    let r = app
        .gql_as(
            &anon,
            LOGIN,
            json!({ "u": "carol", "p": "carol-password-1" }),
        )
        .await
        .ok();
    assert_eq!(typename(&r), "AuthenticationSuccess", "{}", r.body);
    let token = r.session_token().expect("a new session token");
    assert_ne!(token, anon);
    assert!(
        app.active_session(&anon).await.is_null(),
        "the anonymous token still works"
    );
    let r = app
        .gql_as(
            &token,
            "{ activeChannel { code }
               activeOrder { id state user { id } }
               activeSession { id kind user { id } activeChannel { code } activeOrder { id } } }",
            json!({}),
        )
        .await
        .ok();
    let d = r.data();
    assert_eq!(d["activeChannel"]["code"], "eu", "{d}");
    assert_eq!(d["activeSession"]["activeChannel"]["code"], "eu", "{d}");
    assert_eq!(d["activeOrder"]["id"], order["id"], "{d}");
    assert_eq!(d["activeOrder"]["state"], "ACTIVE", "{d}");
    assert_eq!(d["activeSession"]["activeOrder"]["id"], order["id"], "{d}");
    assert_eq!(d["activeOrder"]["user"]["id"], user_id.as_str(), "{d}");
    assert_eq!(d["activeSession"]["kind"], "AUTHENTICATED");
    assert_eq!(d["activeSession"]["user"]["id"], user_id.as_str());
    let _ = anon_id;
}

async fn login_sets_last_login_at(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let id = app
        .create_user(&admin, "dave", "dave-password-1", &[])
        .await;
    let query = "query($id: ID!) { user(id: $id) { id lastLoginAt } }";
    let r = app.gql_as(&admin, query, json!({ "id": id })).await.ok();
    assert!(r.data()["user"]["lastLoginAt"].is_null(), "{}", r.body);
    app.login("dave", "dave-password-1").await;
    let r = app.gql_as(&admin, query, json!({ "id": id })).await.ok();
    let at = r.data()["user"]["lastLoginAt"]
        .as_str()
        .unwrap_or_else(|| panic!("lastLoginAt not set: {}", r.body));
    let at = chrono::DateTime::parse_from_rfc3339(at).expect("RFC 3339");
    let age = chrono::Utc::now().signed_duration_since(at);
    assert!(age.num_seconds().abs() < 60, "{at}");
}

/// A user signing in on several devices at once: every login gets its session (on MariaDB the
/// session insert and the `lastLoginAt` update of two logins could deadlock into INTERNAL).
async fn concurrent_logins_of_one_user_all_succeed(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    setup_user(&app, "erin", "erin-password-1").await;
    // Four: attempts are reserved before the password is checked, and five per identifier
    // are allowed at once.
    for _ in 0..10 {
        let logins = (0..4).map(|_| app.try_login("erin", "erin-password-1"));
        for r in futures_util::future::join_all(logins).await {
            assert_eq!(typename(&r), "AuthenticationSuccess", "{}", r.body);
        }
    }
}

/// The same through two instances of one deployment, as behind a load balancer: each has its
/// own connection pool, so the inserts and `lastLoginAt` updates meet only in the database.
/// Every login succeeds, and every session it made is the user's and answers on both.
async fn concurrent_logins_through_two_instances_all_succeed(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let other = app.sibling().await;
    setup_user(&app, "erin", "erin-password-1").await;
    let mut tokens = Vec::new();
    for _ in 0..6 {
        let logins = (0..4).map(|i| {
            let api = if i % 2 == 0 { &app.api } else { &other.api };
            api.try_login("erin", "erin-password-1")
        });
        for r in futures_util::future::join_all(logins).await {
            assert_eq!(typename(&r), "AuthenticationSuccess", "{}", r.body);
            tokens.push(r.session_token().expect("session-token"));
        }
    }
    for (i, token) in tokens.iter().enumerate() {
        let api = if i % 2 == 0 { &other.api } else { &app.api };
        assert_eq!(
            api.active_session(token).await["user"]["identifier"],
            "erin"
        );
    }
}

async fn unknown_user_and_wrong_password_look_the_same(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    setup_user(&app, "erin", "erin-password-1").await;
    let unknown = app.try_login("nobody-here", "whatever-1").await.ok();
    let wrong = app.try_login("erin", "not-the-password").await.ok();
    assert_eq!(
        unknown.data()["login"]["__typename"],
        "InvalidCredentialsError"
    );
    assert_eq!(
        wrong.data()["login"]["__typename"],
        "InvalidCredentialsError"
    );
    assert_eq!(unknown.data()["login"], wrong.data()["login"]);
    assert!(unknown.data()["login"]["errorCode"].is_string());
    assert!(unknown.data()["login"]["message"].is_string());
    for r in [&unknown, &wrong] {
        assert!(r.session_token().is_none());
        assert!(r.refresh_token().is_none());
        assert!(r.cookie("session_refresh").is_none());
    }
}

async fn unverified_user_gets_not_verified_error(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.gql_as(
        &admin,
        "mutation($i: CreateUserInput!) { createUser(input: $i) { id verified } }",
        json!({ "i": { "identifier": "frank", "password": "frank-password-1", "verified": false } }),
    )
    .await
    .ok();
    let r = app.try_login("frank", "frank-password-1").await.ok();
    assert_eq!(
        r.data()["login"]["__typename"],
        "NotVerifiedError",
        "{}",
        r.body
    );
    assert!(r.data()["login"]["errorCode"].is_string());
    assert!(r.session_token().is_none());
    // The wrong password still gives InvalidCredentialsError (no verification oracle).
    let r = app.try_login("frank", "wrong-password").await.ok();
    assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
}

async fn too_many_attempts_per_identifier_then_window_passes(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.login_max_attempts = 3;
        c.login_window = Duration::from_secs(2);
    })
    .await
    else {
        return;
    };
    setup_user(&app, "gina", "gina-password-1").await;
    for i in 0..3 {
        let r = app.try_login("gina", "wrong-password").await.ok();
        let t = typename(&r);
        if i < 2 {
            assert_eq!(t, "InvalidCredentialsError", "attempt {i}: {}", r.body);
        } else {
            assert!(
                t == "InvalidCredentialsError" || t == "TooManyAttemptsError",
                "{}",
                r.body
            );
        }
    }
    let r = app.try_login("gina", "gina-password-1").await.ok();
    assert_eq!(typename(&r), "TooManyAttemptsError", "{}", r.body);
    assert!(r.data()["login"]["retryAfterSeconds"].as_i64().unwrap() > 0);
    assert!(r.session_token().is_none());
    // Another identifier is not affected.
    let admin = app.try_login("superadmin", "superadmin").await.ok();
    assert_eq!(typename(&admin), "AuthenticationSuccess");

    tokio::time::sleep(Duration::from_millis(2300)).await;
    let r = app.try_login("gina", "gina-password-1").await.ok();
    assert_eq!(typename(&r), "AuthenticationSuccess", "{}", r.body);
}

async fn too_many_attempts_per_address(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.login_max_attempts = 100;
        c.login_max_attempts_per_address = 3;
    })
    .await
    else {
        return;
    };
    setup_user(&app, "hank", "hank-password-1").await;
    for who in ["ivy", "jack", "kim"] {
        let r = app.try_login(who, "wrong-password").await.ok();
        let t = typename(&r);
        assert!(
            t == "InvalidCredentialsError" || t == "TooManyAttemptsError",
            "{}",
            r.body
        );
    }
    let r = app.try_login("hank", "hank-password-1").await.ok();
    assert_eq!(typename(&r), "TooManyAttemptsError", "{}", r.body);
    assert!(r.data()["login"]["retryAfterSeconds"].as_i64().unwrap() > 0);
}

async fn logout_ends_only_this_session(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    setup_user(&app, "lena", "lena-password-1").await;
    let first = app.login("lena", "lena-password-1").await;
    let second = app.login("lena", "lena-password-1").await;
    // Log out via cookie, so the response clears it.
    let r = app
        .gql_cookie(&first.token, "mutation { logout }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["logout"], true);
    let cleared = r
        .cookie("session")
        .expect("logout clears the session cookie");
    assert!(is_clearing(&cleared), "{cleared}");
    assert!(app.active_session(&first.token).await.is_null());
    let s = app.active_session(&second.token).await;
    assert_eq!(s["kind"], "AUTHENTICATED");
    // Its refresh token is dead too.
    let r = app
        .gql(
            "mutation($r: String) { refreshSession(refreshToken: $r) { __typename } }",
            json!({ "r": first.refresh_token }),
        )
        .await
        .ok();
    assert_eq!(
        r.data()["refreshSession"]["__typename"],
        "InvalidRefreshTokenError"
    );
    // Bearer logout works as well.
    let r = app
        .gql_as(&second.token, "mutation { logout }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["logout"], true);
    assert!(app.active_session(&second.token).await.is_null());
}

async fn logout_everywhere_ends_all_sessions(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    setup_user(&app, "mona", "mona-password-1").await;
    let mut sessions = vec![];
    for _ in 0..3 {
        sessions.push(app.login("mona", "mona-password-1").await);
    }
    let admin = app.admin_token().await;
    let r = app
        .gql_as(
            &sessions[0].token,
            "mutation { logoutEverywhere }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(r.data()["logoutEverywhere"], 3, "{}", r.body);
    for s in &sessions {
        assert!(app.active_session(&s.token).await.is_null());
    }
    // Other users are unaffected.
    assert!(!app.active_session(&admin).await.is_null());
}

async fn change_password_ends_other_sessions(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    setup_user(&app, "nina", "nina-password-1").await;
    let current = app.login("nina", "nina-password-1").await;
    let other = app.login("nina", "nina-password-1").await;
    let r = app
        .gql_as(
            &current.token,
            "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }",
            json!({ "c": "nina-password-1", "n": "nina-password-2" }),
        )
        .await
        .ok();
    assert_eq!(r.data()["changePassword"], true);
    assert!(!app.active_session(&current.token).await.is_null());
    assert!(app.active_session(&other.token).await.is_null());
    let r = app.try_login("nina", "nina-password-1").await.ok();
    assert_eq!(typename(&r), "InvalidCredentialsError");
    app.login("nina", "nina-password-2").await;
    // The current session keeps working afterwards as well.
    assert!(!app.active_session(&current.token).await.is_null());
}

async fn change_password_with_wrong_current_password(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    setup_user(&app, "olga", "olga-password-1").await;
    let current = app.login("olga", "olga-password-1").await;
    let other = app.login("olga", "olga-password-1").await;
    let r = app
        .gql_as(
            &current.token,
            "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }",
            json!({ "c": "not-my-password", "n": "olga-password-2" }),
        )
        .await;
    assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{}", r.body);
    assert!(!app.active_session(&current.token).await.is_null());
    assert!(!app.active_session(&other.token).await.is_null());
    app.login("olga", "olga-password-1").await;
    let r = app.try_login("olga", "olga-password-2").await.ok();
    assert_eq!(typename(&r), "InvalidCredentialsError");
}

async fn me_is_null_when_anonymous_and_lists_permissions(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let query = "{ me { id identifier verified channels { channelId channelCode channelToken permissions } } }";
    let r = app.gql(query, json!({})).await.ok();
    assert!(r.data()["me"].is_null());
    let anon = app
        .gql("mutation { createAnonymousSession { id } }", json!({}))
        .await
        .ok()
        .session_token()
        .unwrap();
    let r = app.gql_as(&anon, query, json!({})).await.ok();
    assert!(r.data()["me"].is_null());

    let admin = app.admin_token().await;
    let role = app.create_role(&admin, "reader", &["READ_SESSION"]).await;
    let user_id = app
        .create_user(&admin, "paul", "paul-password-1", &[&role])
        .await;
    let default_id = app.default_channel_id(&admin).await;
    let paul = app.login("paul", "paul-password-1").await;
    let r = app.gql_as(&paul.token, query, json!({})).await.ok();
    let me = &r.data()["me"];
    assert_eq!(me["id"], user_id.as_str());
    assert_eq!(me["identifier"], "paul");
    assert_eq!(me["verified"], true);
    let channels = me["channels"].as_array().expect("channels");
    assert_eq!(channels.len(), 1, "{me}");
    assert_eq!(channels[0]["channelId"], default_id.as_str());
    assert_eq!(channels[0]["channelCode"], "default");
    assert!(channels[0]["channelToken"].is_string());
    assert_eq!(channels[0]["permissions"], json!(["READ_SESSION"]));

    // The superadmin has SUPER_ADMIN in the default channel.
    let r = app.gql_as(&admin, query, json!({})).await.ok();
    let perms: Vec<Value> = r.data()["me"]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["channelCode"] == "default")
        .flat_map(|c| c["permissions"].as_array().unwrap().clone())
        .collect();
    assert!(perms.contains(&json!("SUPER_ADMIN")), "{}", r.body);
}

/// A login whose password check passed, but whose session opens after a password change
/// committed, fails instead of leaving a session the change never ended. The change is held
/// in the window: the test locks the user's row (so the login waits at its write), changes the
/// password hash in that transaction, and commits while the login waits.
async fn a_login_racing_a_password_change_does_not_outlive_it(v: Variant) {
    use entity::user;
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, Database, EntityTrait, QueryFilter};
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    setup_user(&app, "paula", "password-0").await;
    let db = Database::connect(&app.database_url).await.expect("connect");
    let change = crate::helpers::hold_rows(
        &db,
        user::Entity::find().filter(user::Column::Identifier.eq("paula")),
    )
    .await;
    let login = tokio::spawn({
        let api = crate::helpers::Api::new(app.port, Duration::from_secs(30));
        async move { api.try_login("paula", "password-0").await }
    });
    // The login reads the user (not blocked) and checks the password, then waits for the row.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!login.is_finished(), "the login did not wait for the row");
    user::Entity::update_many()
        .col_expr(user::Column::PasswordHash, Expr::value("changed-meanwhile"))
        .filter(user::Column::Identifier.eq("paula"))
        .exec(&change)
        .await
        .expect("change the password");
    change.commit().await.expect("commit");
    let r = login.await.expect("login task");
    assert_ne!(r.status, 500, "{}", r.body);
    assert_eq!(
        typename(&r),
        "InvalidCredentialsError",
        "a login checked against the old password opened a session: {}",
        r.body
    );
    assert!(r.session_token().is_none());
}

/// A guest's `createOrder` that lands while their login is under way: the login carries over
/// the session's order as committed, not the copy it read when it began, so the new cart
/// becomes the user's and stays active. The test holds the user's row (the login waits there,
/// after reading the guest session) while the order is created.
async fn a_cart_created_during_the_login_is_carried_over(v: Variant) {
    use entity::user;
    use sea_orm::{ColumnTrait, Database, EntityTrait, QueryFilter};
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    setup_user(&app, "greta", "password-0").await;
    let (guest, _) = app.anonymous_session().await;
    let db = Database::connect(&app.database_url).await.expect("connect");
    let hold = crate::helpers::hold_rows(
        &db,
        user::Entity::find().filter(user::Column::Identifier.eq("greta")),
    )
    .await;
    let login = tokio::spawn({
        let api = crate::helpers::Api::new(app.port, Duration::from_secs(30));
        let guest = guest.clone();
        async move {
            api.gql_as(&guest, LOGIN, json!({ "u": "greta", "p": "password-0" }))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!login.is_finished(), "the login did not wait for the row");
    let r = app
        .gql_as(&guest, "mutation { createOrder { id } }", json!({}))
        .await
        .ok();
    let order = r.data()["createOrder"]["id"].clone();
    hold.commit().await.expect("release the row");
    let r = login.await.expect("login task").ok();
    assert_eq!(typename(&r), "AuthenticationSuccess", "{}", r.body);
    let token = r.session_token().expect("session-token");
    let r = app
        .gql_as(
            &token,
            "{ activeOrder { id state user { identifier } } }",
            json!({}),
        )
        .await
        .ok();
    let active = &r.data()["activeOrder"];
    assert_eq!(
        active["id"], order,
        "the cart made during the login: {}",
        r.body
    );
    assert_eq!(active["state"], "ACTIVE");
    assert_eq!(active["user"]["identifier"], "greta");
}

/// A login that read the user's grants before a role was removed, and opens its session after,
/// does not cache the old grants: its entry counts as read when the login started, so the
/// removal's mark refuses it. The test holds the user's row, so the login waits at its write
/// (after reading the grants) while the role is removed.
async fn a_login_racing_a_role_removal_does_not_cache_the_old_grants(v: Variant) {
    use entity::user;
    use sea_orm::{ColumnTrait, Database, EntityTrait, QueryFilter};
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let role = app.create_role(&admin, "reader", &["READ_SESSION"]).await;
    let rita = app
        .create_user(&admin, "rita", "password-0", &[role.as_str()])
        .await;
    let db = Database::connect(&app.database_url).await.expect("connect");
    let hold = crate::helpers::hold_rows(
        &db,
        user::Entity::find().filter(user::Column::Identifier.eq("rita")),
    )
    .await;
    let login = tokio::spawn({
        let api = crate::helpers::Api::new(app.port, Duration::from_secs(30));
        async move { api.try_login("rita", "password-0").await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!login.is_finished(), "the login did not wait for the row");
    let removed = tokio::time::timeout(
        Duration::from_secs(10),
        app.gql_as(
            &admin,
            "mutation($u: ID!, $r: ID!) { removeRole(userId: $u, roleId: $r) { id } }",
            json!({ "u": rita, "r": role }),
        ),
    )
    .await
    .expect("removeRole does not wait for the user's row");
    removed.ok();
    hold.commit().await.expect("release the row");
    let r = login.await.expect("login task").ok();
    assert_eq!(typename(&r), "AuthenticationSuccess", "{}", r.body);
    let token = r.session_token().expect("a session token");
    let me = app
        .gql_as(&token, "{ me { channels { permissions } } }", json!({}))
        .await
        .ok();
    assert!(
        !me.body.to_string().contains("READ_SESSION"),
        "the removed role's permission came back: {}",
        me.body
    );
}

/// A login that the database picks as the victim of a deadlock is run again instead of
/// answering INTERNAL. The deadlock is the one a re-login in one tab and a `createOrder` in
/// another make on MariaDB: the login holds the user's row and waits for the presented
/// session's row; the test's transaction holds that session's row (and has changed more rows,
/// so it is not the victim) and inserts an order of the user, whose foreign key waits for the
/// user's row. PostgreSQL's foreign-key lock does not wait there: no deadlock, same outcome.
async fn a_login_chosen_as_a_deadlock_victim_is_run_again(v: Variant) {
    use entity::{channel, order, session};
    use sea_orm::sea_query::Expr;
    use sea_orm::{ActiveValue::Set, ColumnTrait, Database, EntityTrait, QueryFilter};
    let Some(app) = TestApp::spawn_with(v, |c| c.anonymous_sessions_per_address = 0).await else {
        return;
    };
    let admin = app.admin_token().await;
    let lena = app.create_user(&admin, "lena", "password-0", &[]).await;
    let lena: i64 = lena.parse().expect("a numeric id");
    for _ in 0..20 {
        app.anonymous_session().await;
    }
    let first = app.login("lena", "password-0").await.token;
    let first_id: i64 = crate::helpers::str_of(&app.active_session(&first).await["id"])
        .parse()
        .expect("a numeric id");
    let db = Database::connect(&app.database_url).await.expect("connect");
    let default_channel = channel::Entity::find()
        .filter(channel::Column::Code.eq("default"))
        .one(&db)
        .await
        .expect("read the channels")
        .expect("the default channel");
    let tab = crate::helpers::hold_rows(
        &db,
        session::Entity::find().filter(session::Column::Id.eq(first_id)),
    )
    .await;
    let login = tokio::spawn({
        let api = crate::helpers::Api::new(app.port, Duration::from_secs(30));
        let first = first.clone();
        async move {
            crate::helpers::Api::send(
                api.post(LOGIN, json!({ "u": "lena", "p": "password-0" }))
                    .bearer_auth(&first),
            )
            .await
        }
    });
    // The login has the user's row and waits for the session's.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!login.is_finished(), "the login did not wait for the row");
    session::Entity::update_many()
        .col_expr(session::Column::UserAgent, Expr::value("another tab"))
        .filter(session::Column::Id.ne(first_id))
        .exec(&tab)
        .await
        .expect("change other rows");
    let now = chrono::Utc::now().timestamp_millis();
    order::Entity::insert(order::ActiveModel {
        code: Set("DEADLOCK0001".into()),
        state: Set("ACTIVE".into()),
        user_id: Set(Some(lena)),
        session_id: Set(None),
        channel_id: Set(default_channel.id),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    })
    .exec(&tab)
    .await
    .expect("the test's transaction is not the victim");
    tab.commit().await.expect("commit");
    let r = login.await.expect("login task");
    assert_ne!(r.status, 500, "{}", r.body);
    let r = r.ok();
    assert_eq!(typename(&r), "AuthenticationSuccess", "{}", r.body);
}

/// `changePassword` changes the password and ends the user's other sessions in one
/// transaction: never the password without the sessions (a failure in between used to leave
/// the new password with an attacker's session still live). The test holds the other
/// session's row: while it waits, the old password is still the password; once released,
/// both have happened.
async fn a_password_change_lands_with_the_end_of_the_other_sessions(v: Variant) {
    use entity::{session, user};
    use sea_orm::{ColumnTrait, Database, EntityTrait, QueryFilter};
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    setup_user(&app, "olga", "olga-password-1").await;
    let current = app.login("olga", "olga-password-1").await;
    let other = app.login("olga", "olga-password-1").await;
    let db = Database::connect(&app.database_url).await.expect("connect");
    let stored_hash = || async {
        user::Entity::find()
            .filter(user::Column::Identifier.eq("olga"))
            .one(&db)
            .await
            .expect("read the user")
            .expect("the user")
            .password_hash
    };
    let before = stored_hash().await;
    let other_id: i64 = crate::helpers::str_of(&other.body["data"]["login"]["session"]["id"])
        .parse()
        .expect("a numeric id");
    let hold = crate::helpers::hold_rows(
        &db,
        session::Entity::find().filter(session::Column::Id.eq(other_id)),
    )
    .await;
    let change = tokio::spawn({
        let api = crate::helpers::Api::new(app.port, Duration::from_secs(30));
        let token = current.token.clone();
        async move {
            api.gql_as(
                &token,
                "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }",
                json!({ "c": "olga-password-1", "n": "olga-password-2" }),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !change.is_finished(),
        "the change did not wait for the session"
    );
    assert_eq!(
        stored_hash().await,
        before,
        "the new password landed before the other session ended"
    );
    hold.commit().await.expect("release the row");
    let r = change.await.expect("changePassword task").ok();
    assert_eq!(r.data()["changePassword"], true, "{}", r.body);
    assert_ne!(stored_hash().await, before);
    assert!(app.active_session(&other.token).await.is_null());
    assert!(!app.active_session(&current.token).await.is_null());
}
