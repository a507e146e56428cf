//! Session events: every event type appears with its fields after its change, nothing after a
//! refused one, a forced failure leaves neither the change nor its event, the listings page,
//! filter and stay within the caller's channels, and retention deletes old events.

use crate::helpers::{str_of, TestApp, Variant, ADMIN, ADMIN_PASSWORD};
use crate::variants;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{json, Value};
use std::time::Duration;

variants!(
    login_events_carry_the_request,
    session_events_record_who_and_why,
    account_and_role_events,
    refused_changes_record_nothing,
    a_failed_event_write_undoes_the_login,
    expired_sessions_and_retention,
    listing_pages_and_filters,
    listing_is_scoped_to_the_callers_channels,
    my_events_show_what_an_admin_did_but_not_where_from,
);

const UA: &str = "events-test/1.0";

const EVENT_FIELDS: &str = "id type at sessionId userId actorUserId identifier ipAddress \
                            userAgent channelCode reason";

/// Every event the caller may see that matches `filter`, newest first (follows the pages).
async fn events(app: &TestApp, token: &str, filter: Value) -> Vec<Value> {
    let q = format!(
        "query($f: SessionEventFilter, $a: String) {{ sessionEvents(filter: $f, first: 100, after: $a) {{
            nodes {{ {EVENT_FIELDS} }} pageInfo {{ hasNextPage endCursor }} }} }}"
    );
    let mut out = vec![];
    let mut after = Value::Null;
    loop {
        let r = app
            .gql_as(token, &q, json!({ "f": filter, "a": after }))
            .await
            .ok();
        let c = &r.data()["sessionEvents"];
        out.extend(c["nodes"].as_array().unwrap().iter().cloned());
        if c["pageInfo"]["hasNextPage"] != true {
            return out;
        }
        after = c["pageInfo"]["endCursor"].clone();
    }
}

/// The events of these types, newest first.
async fn of_type(app: &TestApp, token: &str, types: &[&str]) -> Vec<Value> {
    events(app, token, json!({ "types": types })).await
}

/// Logs in with the test user agent: the response.
async fn login_ua(
    app: &TestApp,
    token: Option<&str>,
    user: &str,
    password: &str,
) -> crate::helpers::Gql {
    let mut req = app
        .post(
            "mutation($u: String!, $p: String!) { login(username: $u, password: $p) {
                __typename ... on AuthenticationSuccess { user { id } session { id } } } }",
            json!({ "u": user, "p": password }),
        )
        .header("user-agent", UA);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    TestApp::send(req).await
}

/// A successful login with the test user agent: (token, refresh token, user id, session id).
async fn sign_in(app: &TestApp, user: &str, password: &str) -> (String, String, String, String) {
    let r = login_ua(app, None, user, password).await.ok();
    let l = &r.data()["login"];
    assert_eq!(l["__typename"], "AuthenticationSuccess", "{}", r.body);
    (
        r.session_token().unwrap(),
        r.refresh_token().unwrap(),
        str_of(&l["user"]["id"]),
        str_of(&l["session"]["id"]),
    )
}

async fn admin(app: &TestApp) -> (String, String) {
    let (t, _, uid, _) = sign_in(app, ADMIN, ADMIN_PASSWORD).await;
    (t, uid)
}

/// Every event, as the superadmin sees them.
async fn all_events(app: &TestApp, admin: &str) -> Vec<Value> {
    events(app, admin, json!(null)).await
}

async fn login_events_carry_the_request(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| c.login_max_attempts = 2).await else {
        return;
    };
    let (admin, admin_id) = admin(&app).await;
    let alice = app
        .create_user(&admin, "alice", "alice-password-1", &[])
        .await;

    // A new anonymous session.
    let r = TestApp::send(
        app.post("mutation { createAnonymousSession { id } }", json!({}))
            .header("user-agent", UA),
    )
    .await
    .ok();
    let anon_token = r.session_token().unwrap();
    let anon_id = str_of(&r.data()["createAnonymousSession"]["id"]);
    let created = of_type(&app, &admin, &["SESSION_CREATED"]).await;
    assert_eq!(created.len(), 1, "{created:?}");
    let e = &created[0];
    assert_eq!(e["sessionId"], anon_id.as_str());
    assert_eq!(e["userId"], Value::Null);
    assert_eq!(e["actorUserId"], Value::Null);
    assert_eq!(e["ipAddress"], "127.0.0.1");
    assert_eq!(e["userAgent"], UA);
    assert_eq!(e["channelCode"], "default");

    // Wrong password for a known identifier, then an unknown identifier.
    let r = login_ua(&app, None, "alice", "wrong").await.ok();
    assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
    let r = login_ua(&app, None, "nobody", "wrong").await.ok();
    assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
    let failed = of_type(&app, &admin, &["LOGIN_FAILED"]).await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0]["identifier"], "nobody");
    assert_eq!(failed[0]["userId"], Value::Null);
    assert_eq!(failed[1]["identifier"], "alice");
    assert_eq!(failed[1]["userId"], alice.as_str());
    for e in &failed {
        assert_eq!(e["reason"], "bad_credentials");
        assert_eq!(e["sessionId"], Value::Null);
        assert_eq!(e["ipAddress"], "127.0.0.1");
        assert_eq!(e["userAgent"], UA);
    }

    // An unverified account.
    let r = app
        .gql_as(
            &admin,
            "mutation($i: CreateUserInput!) { createUser(input: $i) { id } }",
            json!({ "i": { "identifier": "frank", "password": "frank-password-1", "verified": false } }),
        )
        .await
        .ok();
    let frank = str_of(&r.data()["createUser"]["id"]);
    let r = login_ua(&app, None, "frank", "frank-password-1").await.ok();
    assert_eq!(r.data()["login"]["__typename"], "NotVerifiedError");
    let failed = of_type(&app, &admin, &["LOGIN_FAILED"]).await;
    assert_eq!(failed[0]["reason"], "unverified");
    assert_eq!(failed[0]["userId"], frank.as_str());

    // Throttled: alice has one failure; a second makes two, the third attempt is refused.
    let r = login_ua(&app, None, "alice", "wrong").await.ok();
    assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
    let r = login_ua(&app, None, "alice", "alice-password-1").await.ok();
    assert_eq!(r.data()["login"]["__typename"], "TooManyAttemptsError");
    let throttled = of_type(&app, &admin, &["LOGIN_THROTTLED"]).await;
    assert_eq!(throttled.len(), 1, "{throttled:?}");
    assert_eq!(throttled[0]["identifier"], "alice");
    assert_eq!(throttled[0]["reason"], "identifier");
    assert_eq!(throttled[0]["ipAddress"], "127.0.0.1");

    // A login from the anonymous session: LOGIN_SUCCEEDED for the new session, and the
    // anonymous session it replaces ends.
    let (_, _, uid, sid) = sign_in(&app, ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(uid, admin_id);
    let ok = of_type(&app, &admin, &["LOGIN_SUCCEEDED"]).await;
    assert_eq!(ok.len(), 2, "{ok:?}");
    let e = &ok[0];
    assert_eq!(e["sessionId"], sid.as_str());
    assert_eq!(e["userId"], admin_id.as_str());
    assert_eq!(e["actorUserId"], admin_id.as_str());
    assert_eq!(e["identifier"], ADMIN);
    assert_eq!(e["ipAddress"], "127.0.0.1");
    assert_eq!(e["userAgent"], UA);
    assert_eq!(e["channelCode"], "default");
    assert_eq!(e["reason"], Value::Null);

    let before = of_type(&app, &admin, &["SESSION_REVOKED"]).await.len();
    let r = login_ua(&app, Some(&anon_token), ADMIN, ADMIN_PASSWORD)
        .await
        .ok();
    assert_eq!(r.data()["login"]["__typename"], "AuthenticationSuccess");
    let revoked = of_type(&app, &admin, &["SESSION_REVOKED"]).await;
    assert_eq!(revoked.len(), before + 1);
    assert_eq!(revoked[0]["sessionId"], anon_id.as_str());
    assert_eq!(revoked[0]["reason"], "replaced");

    // A huge user agent is cut to the column, not a failed change.
    let huge = "x".repeat(5000);
    TestApp::send(
        app.post("mutation { createAnonymousSession { id } }", json!({}))
            .header("user-agent", &huge),
    )
    .await
    .ok();
    let e = &of_type(&app, &admin, &["SESSION_CREATED"]).await[0];
    assert_eq!(e["userAgent"], huge[..512]);
}

async fn session_events_record_who_and_why(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.refresh_reuse_grace = Duration::from_secs(1);
        c.session_max_per_user = 3;
    })
    .await
    else {
        return;
    };
    let (admin, admin_id) = admin(&app).await;
    let bob = app.create_user(&admin, "bob", "bob-password-1", &[]).await;
    let refresh_q = "mutation($r: String) { refreshSession(refreshToken: $r) { __typename } }";

    // Refresh, then reuse of the superseded token after the grace.
    let (t1, r1, _, s1) = sign_in(&app, "bob", "bob-password-1").await;
    let r = app.gql(refresh_q, json!({ "r": r1 })).await.ok();
    assert_eq!(
        r.data()["refreshSession"]["__typename"],
        "AuthenticationSuccess"
    );
    let e = &of_type(&app, &admin, &["SESSION_REFRESHED"]).await[0];
    assert_eq!(e["sessionId"], s1.as_str());
    assert_eq!(e["userId"], bob.as_str());
    assert_eq!(e["actorUserId"], bob.as_str());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = app.gql(refresh_q, json!({ "r": r1 })).await.ok();
    assert_eq!(
        r.data()["refreshSession"]["__typename"],
        "InvalidRefreshTokenError"
    );
    let reuse = of_type(&app, &admin, &["REFRESH_REUSE_DETECTED"]).await;
    assert_eq!(reuse.len(), 1);
    assert_eq!(reuse[0]["sessionId"], s1.as_str());
    assert_eq!(reuse[0]["userId"], bob.as_str());
    assert_eq!(reuse[0]["reason"], "REUSED");
    let revoked = of_type(&app, &admin, &["SESSION_REVOKED"]).await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["sessionId"], s1.as_str());
    assert_eq!(revoked[0]["reason"], "REUSED");
    assert!(app.active_session(&t1).await.is_null());

    // Logout.
    let (t2, _, _, s2) = sign_in(&app, "bob", "bob-password-1").await;
    app.gql_as(&t2, "mutation { logout }", json!({})).await.ok();
    let out = of_type(&app, &admin, &["LOGGED_OUT"]).await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["sessionId"], s2.as_str());
    assert_eq!(out[0]["actorUserId"], bob.as_str());
    assert_eq!(out[0]["reason"], "logout");

    // Revoking one's own other session, then an admin revocation.
    let (t3, _, _, s3) = sign_in(&app, "bob", "bob-password-1").await;
    let (t4, _, _, s4) = sign_in(&app, "bob", "bob-password-1").await;
    let q = "mutation($id: ID!) { revokeMySession(id: $id) }";
    let r = app.gql_as(&t3, q, json!({ "id": s4 })).await.ok();
    assert_eq!(r.data()["revokeMySession"], true);
    let e = &of_type(&app, &admin, &["SESSION_REVOKED"]).await[0];
    assert_eq!(e["sessionId"], s4.as_str());
    assert_eq!(e["reason"], "user");
    assert_eq!(e["actorUserId"], bob.as_str());
    assert!(app.active_session(&t4).await.is_null());
    let q = "mutation($id: ID!) { revokeSession(id: $id) }";
    let r = app.gql_as(&admin, q, json!({ "id": s3 })).await.ok();
    assert_eq!(r.data()["revokeSession"], true);
    let e = &of_type(&app, &admin, &["SESSION_REVOKED"]).await[0];
    assert_eq!(e["sessionId"], s3.as_str());
    assert_eq!(e["userId"], bob.as_str());
    assert_eq!(e["actorUserId"], admin_id.as_str());
    assert_eq!(e["reason"], "admin");

    // The session cap (3): the fourth live session ends the least recently used.
    let (t5, _, _, s5) = sign_in(&app, "bob", "bob-password-1").await;
    let (_t6, _, _, _s6) = sign_in(&app, "bob", "bob-password-1").await;
    let (_t7, _, _, _s7) = sign_in(&app, "bob", "bob-password-1").await;
    let (_t8, _, _, _s8) = sign_in(&app, "bob", "bob-password-1").await;
    let limit: Vec<Value> = of_type(&app, &admin, &["SESSION_REVOKED"])
        .await
        .into_iter()
        .filter(|e| e["reason"] == "session_limit")
        .collect();
    assert_eq!(limit.len(), 1, "{limit:?}");
    assert_eq!(limit[0]["sessionId"], s5.as_str());
    assert_eq!(limit[0]["userId"], bob.as_str());
    assert!(app.active_session(&t5).await.is_null());

    // A password change: the event, and the other sessions end with their reason.
    let (t9, _, _, s9) = sign_in(&app, "bob", "bob-password-1").await;
    let q = "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }";
    app.gql_as(
        &t9,
        q,
        json!({ "c": "bob-password-1", "n": "bob-password-2" }),
    )
    .await
    .ok();
    let e = &of_type(&app, &admin, &["PASSWORD_CHANGED"]).await[0];
    assert_eq!(e["userId"], bob.as_str());
    assert_eq!(e["actorUserId"], bob.as_str());
    assert_eq!(e["sessionId"], s9.as_str());
    let ended: Vec<Value> = of_type(&app, &admin, &["SESSION_REVOKED"])
        .await
        .into_iter()
        .filter(|e| e["reason"] == "password_changed")
        .collect();
    assert_eq!(ended.len(), 2, "the two other live sessions: {ended:?}");
    assert!(ended.iter().all(|e| e["sessionId"] != s9.as_str()));

    // logoutEverywhere: one LOGGED_OUT per live session.
    let (_t10, _, _, _) = sign_in(&app, "bob", "bob-password-2").await;
    let r = app
        .gql_as(&t9, "mutation { logoutEverywhere }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["logoutEverywhere"], 2);
    let everywhere: Vec<Value> = of_type(&app, &admin, &["LOGGED_OUT"])
        .await
        .into_iter()
        .filter(|e| e["reason"] == "logout_everywhere")
        .collect();
    assert_eq!(everywhere.len(), 2, "{everywhere:?}");

    // No event carries a token or a password.
    let all = serde_json::to_string(&all_events(&app, &admin).await).unwrap();
    for secret in [
        t1.as_str(),
        &r1,
        &t2,
        &t9,
        "bob-password-1",
        "bob-password-2",
    ] {
        assert!(!all.contains(secret), "an event holds a secret");
    }
}

async fn account_and_role_events(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (admin, admin_id) = admin(&app).await;
    let role = app.create_role(&admin, "support", &["READ_SESSION"]).await;
    let e = &of_type(&app, &admin, &["ROLE_CHANGED"]).await[0];
    assert_eq!(e["reason"], "support");
    assert_eq!(e["actorUserId"], admin_id.as_str());
    let carol = app
        .create_user(&admin, "carol", "carol-password-1", &[&role])
        .await;
    let e = &of_type(&app, &admin, &["USER_CREATED"]).await[0];
    assert_eq!(e["userId"], carol.as_str());
    assert_eq!(e["identifier"], "carol");
    assert_eq!(e["actorUserId"], admin_id.as_str());
    assert_eq!(e["channelCode"], "default");
    let e = &of_type(&app, &admin, &["ROLE_ASSIGNED"]).await[0];
    assert_eq!(e["userId"], carol.as_str());
    assert_eq!(e["reason"], "support");

    let q = "mutation($u: ID!, $r: ID!) { removeRole(userId: $u, roleId: $r) { id } }";
    app.gql_as(&admin, q, json!({ "u": carol, "r": role }))
        .await
        .ok();
    let e = &of_type(&app, &admin, &["ROLE_REMOVED"]).await[0];
    assert_eq!(e["userId"], carol.as_str());
    assert_eq!(e["reason"], "support");
    let q = "mutation($u: ID!, $r: ID!) { assignRole(userId: $u, roleId: $r) { id } }";
    app.gql_as(&admin, q, json!({ "u": carol, "r": role }))
        .await
        .ok();
    assert_eq!(of_type(&app, &admin, &["ROLE_ASSIGNED"]).await.len(), 2);
    // Assigning a role the user already holds changes nothing and records nothing.
    app.gql_as(&admin, q, json!({ "u": carol, "r": role }))
        .await
        .ok();
    assert_eq!(of_type(&app, &admin, &["ROLE_ASSIGNED"]).await.len(), 2);

    let q = "mutation($i: UpdateRoleInput!) { updateRole(input: $i) { id } }";
    app.gql_as(
        &admin,
        q,
        json!({ "i": { "id": role, "permissions": ["READ_SESSION", "READ_USER"] } }),
    )
    .await
    .ok();
    assert_eq!(of_type(&app, &admin, &["ROLE_CHANGED"]).await.len(), 2);

    let update = "mutation($i: UpdateUserInput!) { updateUser(input: $i) { id } }";
    app.gql_as(
        &admin,
        update,
        json!({ "i": { "id": carol, "identifier": "carol2" } }),
    )
    .await
    .ok();
    let e = &of_type(&app, &admin, &["USER_UPDATED"]).await[0];
    assert_eq!(e["userId"], carol.as_str());
    assert_eq!(e["identifier"], "carol2");

    // A new password set by an admin ends the sessions.
    let (_, _, _, s1) = sign_in(&app, "carol2", "carol-password-1").await;
    app.gql_as(
        &admin,
        update,
        json!({ "i": { "id": carol, "password": "carol-password-2" } }),
    )
    .await
    .ok();
    let e = &of_type(&app, &admin, &["PASSWORD_CHANGED"]).await[0];
    assert_eq!(e["userId"], carol.as_str());
    assert_eq!(e["actorUserId"], admin_id.as_str());
    let e = &of_type(&app, &admin, &["SESSION_REVOKED"]).await[0];
    assert_eq!(e["sessionId"], s1.as_str());
    assert_eq!(e["reason"], "password_changed");

    // Unverifying ends them too.
    let (_, _, _, s2) = sign_in(&app, "carol2", "carol-password-2").await;
    app.gql_as(
        &admin,
        update,
        json!({ "i": { "id": carol, "verified": false } }),
    )
    .await
    .ok();
    let e = &of_type(&app, &admin, &["SESSION_REVOKED"]).await[0];
    assert_eq!(e["sessionId"], s2.as_str());
    assert_eq!(e["reason"], "unverified");

    // Deletion: the sessions end, then the account goes.
    app.gql_as(
        &admin,
        update,
        json!({ "i": { "id": carol, "verified": true } }),
    )
    .await
    .ok();
    let (_, _, _, s3) = sign_in(&app, "carol2", "carol-password-2").await;
    let r = app
        .gql_as(
            &admin,
            "mutation($id: ID!) { deleteUser(id: $id) }",
            json!({ "id": carol }),
        )
        .await
        .ok();
    assert_eq!(r.data()["deleteUser"], true);
    let e = &of_type(&app, &admin, &["SESSION_REVOKED"]).await[0];
    assert_eq!(e["sessionId"], s3.as_str());
    assert_eq!(e["reason"], "user_deleted");
    let e = &of_type(&app, &admin, &["USER_DELETED"]).await[0];
    assert_eq!(e["userId"], carol.as_str());
    assert_eq!(e["identifier"], "carol2");
    assert_eq!(e["actorUserId"], admin_id.as_str());
    // The history outlives the account.
    let history = events(&app, &admin, json!({ "userId": carol })).await;
    assert!(history.len() >= 10, "{history:?}");
}

async fn refused_changes_record_nothing(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (admin, _) = admin(&app).await;
    let dave = app
        .create_user(&admin, "dave", "dave-password-1", &[])
        .await;
    let (dave_token, _, _, _) = sign_in(&app, "dave", "dave-password-1").await;
    let role = app.create_role(&admin, "viewer", &["READ_SESSION"]).await;
    let count = all_events(&app, &admin).await.len();

    // FORBIDDEN: no WRITE_USER / REVOKE_SESSION.
    let r = app
        .gql_as(
            &dave_token,
            "mutation { createUser(input: {identifier: \"eve\", password: \"eve-password-1\"}) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(r.error_code(), Some("FORBIDDEN"));
    let r = app
        .gql_as(
            &dave_token,
            "mutation($u: ID!) { revokeSessionsByUser(userId: $u) }",
            json!({ "u": dave }),
        )
        .await;
    assert_eq!(r.error_code(), Some("FORBIDDEN"));
    // The identifier is taken.
    let r = app
        .gql_as(
            &admin,
            "mutation { createUser(input: {identifier: \"dave\", password: \"x-password-1\"}) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{}", r.body);
    // BAD_USER_INPUT: a wrong current password, an empty identifier, the superadmin's role.
    let q = "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }";
    let r = app
        .gql_as(
            &dave_token,
            q,
            json!({ "c": "wrong", "n": "dave-password-2" }),
        )
        .await;
    assert_eq!(r.error_code(), Some("BAD_USER_INPUT"));
    let r = app
        .gql_as(
            &admin,
            "mutation($i: UpdateUserInput!) { updateUser(input: $i) { id } }",
            json!({ "i": { "id": dave, "identifier": "" } }),
        )
        .await;
    assert_eq!(r.error_code(), Some("BAD_USER_INPUT"));
    let r = app
        .gql_as(
            &admin,
            "mutation($i: UpdateRoleInput!) { updateRole(input: $i) { id } }",
            json!({ "i": { "id": "1", "description": "mine" } }),
        )
        .await;
    assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{}", r.body);
    let r = app
        .gql_as(
            &dave_token,
            "mutation($u: ID!, $r: ID!) { assignRole(userId: $u, roleId: $r) { id } }",
            json!({ "u": dave, "r": role }),
        )
        .await;
    assert_eq!(r.error_code(), Some("FORBIDDEN"));
    // CONFLICT: a stale data version.
    let r = app
        .gql_as(
            &dave_token,
            "mutation { updateSessionData(set: {a: 1}, expectedVersion: 7) { dataVersion } }",
            json!({}),
        )
        .await;
    assert_eq!(r.error_code(), Some("CONFLICT"), "{}", r.body);
    // Revoking a session that is not one's own is `false` and ends nothing.
    let r = app
        .gql_as(
            &dave_token,
            "mutation { revokeMySession(id: \"1\") }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(r.data()["revokeMySession"], false);

    let after = all_events(&app, &admin).await;
    assert_eq!(
        after.len(),
        count,
        "nothing recorded: {:?}",
        &after[..after.len() - count]
    );
}

/// Installs, on the test's own database, a trigger that refuses to store `LOGIN_SUCCEEDED`.
async fn refuse_login_events(app: &TestApp) {
    let db = Database::connect(&app.database_url).await.unwrap();
    let statements: Vec<&str> = match app.variant {
        Variant::PostgresRedis | Variant::PostgresMemory | Variant::PostgresTiered => vec![
            "CREATE FUNCTION refuse_login_event() RETURNS trigger AS $$ BEGIN \
             RAISE EXCEPTION 'forced'; END; $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_login_event BEFORE INSERT ON session_event FOR EACH ROW \
             WHEN (NEW.kind = 'LOGIN_SUCCEEDED') EXECUTE FUNCTION refuse_login_event()",
        ],
        Variant::MysqlMemory | Variant::MysqlRedis | Variant::MysqlTiered => vec![
            "CREATE TRIGGER refuse_login_event BEFORE INSERT ON session_event FOR EACH ROW \
             BEGIN IF NEW.kind = 'LOGIN_SUCCEEDED' THEN \
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'forced'; END IF; END",
        ],
        _ => vec![
            "CREATE TRIGGER refuse_login_event BEFORE INSERT ON session_event \
             WHEN NEW.kind = 'LOGIN_SUCCEEDED' BEGIN SELECT RAISE(ABORT, 'forced'); END",
        ],
    };
    for s in statements {
        db.execute_unprepared(s).await.unwrap();
    }
    let _ = db.close().await;
}

async fn a_failed_event_write_undoes_the_login(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (admin, _) = admin(&app).await;
    let erin = app
        .create_user(&admin, "erin", "erin-password-1", &[])
        .await;
    let (anon, anon_id) = app.anonymous_session().await;
    refuse_login_events(&app).await;

    let r = login_ua(&app, Some(&anon), "erin", "erin-password-1").await;
    assert!(r.error_code().is_some(), "the login fails: {}", r.body);
    assert!(r.session_token().is_none());
    // Neither the session, nor the login time, nor the claim of the anonymous session.
    let r = app
        .gql_as(
            &admin,
            "query($u: ID!) { sessions(filter: {userId: $u, includeExpired: true, includeInvalidated: true}) { totalCount }
              user(id: $u) { lastLoginAt } }",
            json!({ "u": erin }),
        )
        .await
        .ok();
    assert_eq!(r.data()["sessions"]["totalCount"], 0);
    assert_eq!(r.data()["user"]["lastLoginAt"], Value::Null);
    let s = app.active_session(&anon).await;
    assert_eq!(s["id"], anon_id.as_str(), "the anonymous session lives on");
    assert!(events(
        &app,
        &admin,
        json!({ "userId": erin, "types": ["LOGIN_SUCCEEDED"] })
    )
    .await
    .is_empty());
    assert!(of_type(&app, &admin, &["SESSION_REVOKED"]).await.is_empty());
}

async fn expired_sessions_and_retention(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.session_idle_timeout = Duration::from_secs(2);
        c.session_activity_write_interval = Duration::from_millis(200);
        c.event_retention = Duration::from_secs(4);
    })
    .await
    else {
        return;
    };
    let (old_admin, _, _, old_admin_sid) = sign_in(&app, ADMIN, ADMIN_PASSWORD).await;
    let (_, anon_id) = app.anonymous_session().await;
    let (_, revoked_id) = app.anonymous_session().await;
    let q = "mutation($id: ID!) { revokeSession(id: $id) }";
    app.gql_as(&old_admin, q, json!({ "id": revoked_id }))
        .await
        .ok();
    tokio::time::sleep(Duration::from_millis(4500)).await;

    let (admin, _, admin_id, admin_sid) = sign_in(&app, ADMIN, ADMIN_PASSWORD).await;
    let r = app
        .gql_as(&admin, "mutation { cleanUpExpiredSessions }", json!({}))
        .await
        .ok();
    assert_eq!(
        r.data()["cleanUpExpiredSessions"],
        3,
        "two expired (the first admin session, the anonymous one), one revoked"
    );
    let all = all_events(&app, &admin).await;
    let kinds: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    // Everything recorded before the retention window is gone; what the clean-up and the new
    // login recorded stays.
    assert_eq!(
        kinds,
        ["SESSION_EXPIRED", "SESSION_EXPIRED", "LOGIN_SUCCEEDED"],
        "{all:?}"
    );
    let expired: Vec<&Value> = all
        .iter()
        .filter(|e| e["type"] == "SESSION_EXPIRED")
        .collect();
    let mut ids: Vec<&str> = expired
        .iter()
        .map(|e| e["sessionId"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut want = vec![anon_id.as_str(), old_admin_sid.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);
    assert!(!ids.contains(&admin_sid.as_str()));
    assert!(
        !ids.contains(&revoked_id.as_str()),
        "a revoked session is not also expired"
    );
    for e in &expired {
        assert_eq!(e["reason"], "idle");
        assert_eq!(e["channelCode"], "default");
        assert_eq!(e["actorUserId"], Value::Null);
        // The admin's expired session names its user; the anonymous one names none.
        let user = if e["sessionId"] == old_admin_sid.as_str() {
            json!(admin_id)
        } else {
            Value::Null
        };
        assert_eq!(e["userId"], user, "{e}");
    }
    let login = &all[2];
    assert_eq!(login["userId"], admin_id.as_str());
}

async fn listing_pages_and_filters(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (admin, admin_id) = admin(&app).await;
    let mut anon = vec![];
    for _ in 0..5 {
        anon.push(app.anonymous_session().await.1);
    }
    let frank = app
        .create_user(&admin, "frank", "frank-password-1", &[])
        .await;
    let (frank_token, _, _, frank_sid) = sign_in(&app, "frank", "frank-password-1").await;
    let all = all_events(&app, &admin).await;
    assert_eq!(all.len(), 8, "{all:?}");
    let ids: Vec<i64> = all
        .iter()
        .map(|e| str_of(&e["id"]).parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // Pages of 3, with cursors and a total.
    let q = "query($a: String) { sessionEvents(first: 3, after: $a) { totalCount
        edges { cursor node { id } } nodes { id } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }";
    let mut seen = vec![];
    let mut after = Value::Null;
    for page in 0..3 {
        let r = app.gql_as(&admin, q, json!({ "a": after })).await.ok();
        let c = &r.data()["sessionEvents"];
        assert_eq!(c["totalCount"], 8);
        let nodes: Vec<String> = c["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| str_of(&n["id"]))
            .collect();
        let edges: Vec<String> = c["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| str_of(&n["node"]["id"]))
            .collect();
        assert_eq!(nodes, edges);
        assert_eq!(c["pageInfo"]["hasNextPage"], page < 2);
        assert_eq!(c["pageInfo"]["hasPreviousPage"], page > 0);
        assert_eq!(
            c["pageInfo"]["endCursor"],
            c["edges"][nodes.len() - 1]["cursor"]
        );
        seen.extend(nodes);
        after = c["pageInfo"]["endCursor"].clone();
    }
    let expected: Vec<String> = all.iter().map(|e| str_of(&e["id"])).collect();
    assert_eq!(seen, expected);

    // Filters.
    let created = events(&app, &admin, json!({ "types": ["SESSION_CREATED"] })).await;
    assert_eq!(created.len(), 5);
    let two = events(
        &app,
        &admin,
        json!({ "types": ["SESSION_CREATED", "USER_CREATED"] }),
    )
    .await;
    assert_eq!(two.len(), 6);
    let everything = events(&app, &admin, json!({ "types": [] })).await;
    assert_eq!(everything.len(), 8);
    let of_frank = events(&app, &admin, json!({ "userId": frank })).await;
    let kinds: Vec<&str> = of_frank
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["LOGIN_SUCCEEDED", "USER_CREATED"]);
    let of_session = events(&app, &admin, json!({ "sessionId": anon[2] })).await;
    assert_eq!(of_session.len(), 1);
    assert_eq!(of_session[0]["sessionId"], anon[2].as_str());
    let of_admin_and_type = events(
        &app,
        &admin,
        json!({ "userId": admin_id, "types": ["LOGIN_SUCCEEDED"] }),
    )
    .await;
    assert_eq!(of_admin_and_type.len(), 1);
    // Time range: `since` inclusive, `until` exclusive.
    let at = |e: &Value| str_of(&e["at"]);
    let first_created = &created[4];
    let last_created = &created[0];
    let range = events(
        &app,
        &admin,
        json!({ "types": ["SESSION_CREATED"], "since": at(first_created), "until": at(last_created) }),
    )
    .await;
    assert!(range
        .iter()
        .all(|e| e["id"] != last_created["id"] || at(e) < at(last_created)));
    assert!(range.iter().any(|e| e["id"] == first_created["id"]));
    let since_last = events(&app, &admin, json!({ "since": at(last_created) })).await;
    assert!(since_last.iter().any(|e| e["id"] == last_created["id"]));
    assert!(since_last.iter().all(|e| at(e) >= at(last_created)));
    let future = events(&app, &admin, json!({ "since": "2999-01-01T00:00:00Z" })).await;
    assert!(future.is_empty());
    let past = events(&app, &admin, json!({ "until": "2000-01-01T00:00:00Z" })).await;
    assert!(past.is_empty());

    // A time-filtered listing pages by (at, id), newest first, with the same cursors.
    let q = "query($a: String) { sessionEvents(first: 3, after: $a, filter: {since: \"2000-01-01T00:00:00Z\"}) {
        totalCount nodes { id at } pageInfo { hasNextPage endCursor } } }";
    let mut timed: Vec<(String, i64)> = vec![];
    let mut after = Value::Null;
    loop {
        let r = app.gql_as(&admin, q, json!({ "a": after })).await.ok();
        let c = &r.data()["sessionEvents"];
        assert_eq!(c["totalCount"], 8);
        for n in c["nodes"].as_array().unwrap() {
            timed.push((at(n), str_of(&n["id"]).parse().unwrap()));
        }
        if c["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = c["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(timed.len(), 8);
    assert!(
        timed.windows(2).all(|w| w[0] > w[1]),
        "newest first by (at, id): {timed:?}"
    );
    let mut timed_ids: Vec<String> = timed.iter().map(|t| t.1.to_string()).collect();
    timed_ids.sort_unstable();
    let mut all_ids = expected.clone();
    all_ids.sort_unstable();
    assert_eq!(timed_ids, all_ids);

    // Bad input.
    for (vars, what) in [
        (json!({ "first": 101 }), "first > 100"),
        (json!({ "first": -1 }), "negative first"),
        (json!({ "after": "not-a-cursor" }), "cursor"),
        (json!({ "f": { "userId": "abc" } }), "user id"),
        (json!({ "f": { "sessionId": "-4" } }), "session id"),
    ] {
        let r = app
            .gql_as(
                &admin,
                "query($f: SessionEventFilter, $first: Int, $after: String) {
                    sessionEvents(filter: $f, first: $first, after: $after) { totalCount } }",
                vars,
            )
            .await;
        assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{what}: {}", r.body);
    }
    let r = app
        .gql_as(
            &admin,
            "{ sessionEvents(filter: {since: \"yesterday\"}) { totalCount } }",
            json!({}),
        )
        .await;
    assert!(r.error_code().is_some(), "{}", r.body);

    // Who may read: not an anonymous caller, not a user without READ_SESSION.
    let q = "{ sessionEvents { totalCount } }";
    let r = app.gql(q, json!({})).await;
    assert_eq!(r.error_code(), Some("UNAUTHENTICATED"));
    let r = app.gql_as(&frank_token, q, json!({})).await;
    assert_eq!(r.error_code(), Some("FORBIDDEN"));

    // mySessionEvents: one's own only; refused to an anonymous caller, like mySessions.
    let q = "query($a: String) { mySessionEvents(first: 1, after: $a) { totalCount nodes { type userId sessionId }
        pageInfo { hasNextPage endCursor } } }";
    let r = app.gql_as(&frank_token, q, json!({})).await.ok();
    let c = &r.data()["mySessionEvents"];
    assert_eq!(c["totalCount"], 2);
    assert_eq!(c["nodes"][0]["type"], "LOGIN_SUCCEEDED");
    assert_eq!(c["nodes"][0]["sessionId"], frank_sid.as_str());
    assert_eq!(c["pageInfo"]["hasNextPage"], true);
    let r = app
        .gql_as(&frank_token, q, json!({ "a": c["pageInfo"]["endCursor"] }))
        .await
        .ok();
    let c = &r.data()["mySessionEvents"];
    assert_eq!(c["nodes"][0]["type"], "USER_CREATED");
    assert_eq!(c["nodes"][0]["userId"], frank.as_str());
    assert_eq!(c["pageInfo"]["hasNextPage"], false);
    let r = app.gql(q, json!({})).await;
    assert_eq!(r.error_code(), Some("UNAUTHENTICATED"));
    let (anon_token, _) = app.anonymous_session().await;
    let r = app.gql_as(&anon_token, q, json!({})).await;
    assert_eq!(r.error_code(), Some("UNAUTHENTICATED"));
    let r = app
        .gql_as(
            &frank_token,
            "{ mySessionEvents(first: 101) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(r.error_code(), Some("BAD_USER_INPUT"));
}

async fn listing_is_scoped_to_the_callers_channels(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (admin, _) = admin(&app).await;
    let (eu, eu_token) = app.create_channel(&admin, "eu").await;
    let role = app
        .create_role_in(&admin, "eu-support", &["READ_SESSION"], &[&eu])
        .await;
    app.create_user(&admin, "gina", "gina-password-1", &[&role])
        .await;
    app.create_user(&admin, "hank", "hank-password-1", &[])
        .await;
    // Gina works in the eu channel; hank shops in the default channel, then in eu.
    let in_eu = |q: &str, vars: Value| app.post(q, vars).header("channel-token", &eu_token);
    let login_q =
        "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { __typename } }";
    let r = TestApp::send(in_eu(
        login_q,
        json!({ "u": "gina", "p": "gina-password-1" }),
    ))
    .await
    .ok();
    let gina = r.session_token().unwrap();
    let (_, hank_default_sid) = app.anonymous_session().await;
    let r = TestApp::send(in_eu(
        "mutation { createAnonymousSession { id } }",
        json!({}),
    ))
    .await
    .ok();
    let hank_eu_sid = str_of(&r.data()["createAnonymousSession"]["id"]);
    let r = TestApp::send(in_eu(login_q, json!({ "u": "hank", "p": "wrong" })))
        .await
        .ok();
    assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");

    let q = "{ sessionEvents(first: 100) { totalCount nodes { type sessionId channelCode identifier } } }";
    let r = TestApp::send(in_eu(q, json!({})).bearer_auth(&gina))
        .await
        .ok();
    let c = &r.data()["sessionEvents"];
    let nodes = c["nodes"].as_array().unwrap();
    assert!(nodes.iter().all(|n| n["channelCode"] == "eu"), "{nodes:?}");
    let kinds: Vec<&str> = nodes.iter().map(|n| n["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["LOGIN_FAILED", "SESSION_CREATED", "LOGIN_SUCCEEDED"]
    );
    assert_eq!(
        c["totalCount"], 3,
        "the total counts only what the caller sees"
    );
    assert_eq!(nodes[1]["sessionId"], hank_eu_sid.as_str());
    assert!(nodes
        .iter()
        .all(|n| n["sessionId"] != hank_default_sid.as_str()));
    // Filters stay within the scope too.
    let r = TestApp::send(
        in_eu(
            "query($s: ID!) { sessionEvents(filter: {sessionId: $s}) { totalCount } }",
            json!({ "s": hank_default_sid }),
        )
        .bearer_auth(&gina),
    )
    .await
    .ok();
    assert_eq!(r.data()["sessionEvents"]["totalCount"], 0);
    // Without READ_SESSION in the request's channel, refused.
    let r = app.gql_as(&gina, q, json!({})).await;
    assert_eq!(r.error_code(), Some("FORBIDDEN"));
    // The superadmin sees both channels.
    let all = all_events(&app, &admin).await;
    assert!(all.iter().any(|e| e["channelCode"] == "default"));
    assert_eq!(all.iter().filter(|e| e["channelCode"] == "eu").count(), 3);
}

/// `mySessionEvents` shows a user what an admin did to them (and who), but not the admin's
/// address and user agent; the user's own logins keep theirs, as does the admin's listing.
async fn my_events_show_what_an_admin_did_but_not_where_from(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (root, root_id) = admin(&app).await;
    app.create_user(&root, "uma", "password-one", &[]).await;
    let (uma, _, uma_id, uma_sid) = sign_in(&app, "uma", "password-one").await;
    let (other, _, _, _) = sign_in(&app, "uma", "password-one").await;
    let revoke = app
        .post(
            "mutation($id: ID!) { revokeSession(id: $id) }",
            json!({ "id": uma_sid }),
        )
        .bearer_auth(&root)
        .header("user-agent", "admin-console/9");
    assert_eq!(
        TestApp::send(revoke).await.ok().data()["revokeSession"],
        true
    );

    let q =
        "{ mySessionEvents(first: 100) { nodes { type userId actorUserId ipAddress userAgent } } }";
    let r = app.gql_as(&other, q, json!({})).await.ok();
    let mine = r.data()["mySessionEvents"]["nodes"]
        .as_array()
        .unwrap()
        .clone();
    let revoked = mine
        .iter()
        .find(|e| e["type"] == "SESSION_REVOKED")
        .unwrap_or_else(|| panic!("no revocation: {mine:?}"));
    assert_eq!(revoked["actorUserId"], json!(root_id), "{revoked}");
    assert_eq!(revoked["userId"], json!(uma_id), "{revoked}");
    assert!(
        revoked["ipAddress"].is_null(),
        "the admin's address: {revoked}"
    );
    assert!(
        revoked["userAgent"].is_null(),
        "the admin's user agent: {revoked}"
    );
    let logins: Vec<_> = mine
        .iter()
        .filter(|e| e["type"] == "LOGIN_SUCCEEDED")
        .collect();
    assert_eq!(logins.len(), 2, "{mine:?}");
    for l in logins {
        assert_eq!(l["userAgent"], UA, "{l}");
        assert!(!l["ipAddress"].is_null(), "{l}");
    }
    // The admin's own listing keeps where the revocation came from.
    let seen = of_type(&app, &root, &["SESSION_REVOKED"]).await;
    assert_eq!(seen[0]["userAgent"], "admin-console/9", "{seen:?}");
    drop(uma);
}
