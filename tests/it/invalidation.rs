//! Changes to users, roles and permissions take effect on the affected user's very next request
//! (with the default 5-minute cache TTL and a warmed cache): removeRole, assignRole, updateRole
//! (permissions and channels), updateUser (verified, password, identifier), deleteUser, and
//! `me.channels`.

use crate::helpers::{str_of, TestApp, Variant};
use serde_json::{json, Value};

crate::variants!(
    remove_role_forbids_the_next_request,
    assign_role_allows_the_next_request,
    update_role_permissions_apply_at_once,
    update_role_channels_apply_at_once,
    unverifying_a_user_ends_their_sessions,
    new_password_ends_sessions,
    new_identifier_shows_at_once,
    delete_user_ends_sessions,
);

const STATS: &str = "{ sessionStats { authenticated } }";
const ME: &str = "{ me { id identifier verified channels { channelCode permissions } } }";

/// Asserts the token may read session stats (and so warms the cache).
async fn allowed(app: &TestApp, token: &str) {
    app.gql_as(token, STATS, json!({})).await.ok();
}

async fn forbidden(app: &TestApp, token: &str) {
    let r = app.gql_as(token, STATS, json!({})).await;
    assert_eq!(r.error_code(), Some("FORBIDDEN"), "{}", r.body);
}

/// `me.channels` as `[(code, [permissions])]`.
async fn my_channels(app: &TestApp, token: &str) -> Value {
    app.gql_as(token, ME, json!({})).await.ok().data()["me"]["channels"].clone()
}

/// An app, the admin token, and a verified user `alice` with `roles`, logged in twice.
async fn setup(app: &TestApp, roles: &[&str]) -> (String, String, [String; 2]) {
    let admin = app.admin_token().await;
    let alice = app.create_user(&admin, "alice", "alice-pw", roles).await;
    let t1 = app.login("alice", "alice-pw").await.token;
    let t2 = app.login("alice", "alice-pw").await.token;
    (admin, alice, [t1, t2])
}

async fn update_user(app: &TestApp, admin: &str, input: Value) -> Value {
    app.gql_as(
        admin,
        "mutation($i: UpdateUserInput!) { updateUser(input: $i) { id identifier verified } }",
        json!({ "i": input }),
    )
    .await
    .ok()
    .data()["updateUser"]
        .clone()
}

async fn remove_role_forbids_the_next_request(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let reader = app.create_role(&admin, "reader", &["READ_SESSION"]).await;
    let alice = app
        .create_user(&admin, "alice", "alice-pw", &[&reader])
        .await;
    let tokens = [
        app.login("alice", "alice-pw").await.token,
        app.login("alice", "alice-pw").await.token,
    ];
    for t in &tokens {
        allowed(&app, t).await;
        assert_eq!(
            my_channels(&app, t).await,
            json!([{ "channelCode": "default", "permissions": ["READ_SESSION"] }])
        );
    }
    let r = app
        .gql_as(
            &admin,
            "mutation($u: ID!, $r: ID!) { removeRole(userId: $u, roleId: $r) { id roles { id } } }",
            json!({ "u": alice, "r": reader }),
        )
        .await
        .ok();
    assert_eq!(r.data()["removeRole"]["roles"], json!([]));
    for t in &tokens {
        forbidden(&app, t).await;
        assert_eq!(my_channels(&app, t).await, json!([]));
        // The session itself lives on.
        assert_eq!(app.active_session(t).await["user"]["id"], alice);
    }
}

async fn assign_role_allows_the_next_request(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (admin, alice, tokens) = setup(&app, &[]).await;
    let reader = app.create_role(&admin, "reader", &["READ_SESSION"]).await;
    for t in &tokens {
        forbidden(&app, t).await;
        assert_eq!(my_channels(&app, t).await, json!([]));
    }
    let r = app
        .gql_as(
            &admin,
            "mutation($u: ID!, $r: ID!) { assignRole(userId: $u, roleId: $r) { id roles { code } } }",
            json!({ "u": alice, "r": reader }),
        )
        .await
        .ok();
    assert_eq!(r.data()["assignRole"]["id"], alice);
    for t in &tokens {
        allowed(&app, t).await;
        assert_eq!(
            my_channels(&app, t).await,
            json!([{ "channelCode": "default", "permissions": ["READ_SESSION"] }])
        );
    }
}

async fn update_role_permissions_apply_at_once(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let role = app
        .create_role(&admin, "staff", &["READ_SESSION", "READ_USER"])
        .await;
    app.create_user(&admin, "alice", "alice-pw", &[&role]).await;
    let tokens = [
        app.login("alice", "alice-pw").await.token,
        app.login("alice", "alice-pw").await.token,
    ];
    for t in &tokens {
        allowed(&app, t).await;
        app.gql_as(t, "{ users { totalCount } }", json!({}))
            .await
            .ok();
        assert_eq!(
            my_channels(&app, t).await,
            json!([{ "channelCode": "default", "permissions": ["READ_SESSION", "READ_USER"] }])
        );
    }
    let r = app
        .gql_as(
            &admin,
            "mutation($i: UpdateRoleInput!) { updateRole(input: $i) { permissions } }",
            json!({ "i": { "id": role, "permissions": ["READ_USER"] } }),
        )
        .await
        .ok();
    assert_eq!(r.data()["updateRole"]["permissions"], json!(["READ_USER"]));
    for t in &tokens {
        forbidden(&app, t).await;
        app.gql_as(t, "{ users { totalCount } }", json!({}))
            .await
            .ok();
        assert_eq!(
            my_channels(&app, t).await,
            json!([{ "channelCode": "default", "permissions": ["READ_USER"] }])
        );
    }
    // And back: granting takes effect at once too.
    app.gql_as(
        &admin,
        "mutation($i: UpdateRoleInput!) { updateRole(input: $i) { id } }",
        json!({ "i": { "id": role, "permissions": ["READ_SESSION"] } }),
    )
    .await
    .ok();
    for t in &tokens {
        allowed(&app, t).await;
        let r = app.gql_as(t, "{ users { totalCount } }", json!({})).await;
        assert_eq!(r.error_code(), Some("FORBIDDEN"), "{}", r.body);
    }
}

async fn update_role_channels_apply_at_once(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let r = app
        .gql_as(
            &admin,
            "mutation { createChannel(input: { code: \"eu\" }) { id token } }",
            json!({}),
        )
        .await
        .ok();
    let eu_id = str_of(&r.data()["createChannel"]["id"]);
    let eu_token = str_of(&r.data()["createChannel"]["token"]);
    let role = app.create_role(&admin, "reader", &["READ_SESSION"]).await;
    app.create_user(&admin, "alice", "alice-pw", &[&role]).await;
    let tokens = [
        app.login("alice", "alice-pw").await.token,
        app.login("alice", "alice-pw").await.token,
    ];
    let in_eu = |t: &str| {
        app.post(STATS, json!({}))
            .bearer_auth(t)
            .header("channel-token", eu_token.clone())
    };
    for t in &tokens {
        allowed(&app, t).await;
        let r = TestApp::send(in_eu(t)).await;
        assert_eq!(r.error_code(), Some("FORBIDDEN"), "{}", r.body);
    }
    let r = app
        .gql_as(
            &admin,
            "mutation($i: UpdateRoleInput!) { updateRole(input: $i) { channels { code } } }",
            json!({ "i": { "id": role, "channelIds": [eu_id] } }),
        )
        .await
        .ok();
    assert_eq!(
        r.data()["updateRole"]["channels"],
        json!([{ "code": "eu" }])
    );
    for t in &tokens {
        forbidden(&app, t).await;
        TestApp::send(in_eu(t)).await.ok();
        assert_eq!(
            my_channels(&app, t).await,
            json!([{ "channelCode": "eu", "permissions": ["READ_SESSION"] }])
        );
    }
}

async fn unverifying_a_user_ends_their_sessions(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (admin, alice, tokens) = setup(&app, &[]).await;
    for t in &tokens {
        assert_eq!(app.active_session(t).await["user"]["id"], alice);
        let r = app.gql_as(t, ME, json!({})).await.ok();
        assert_eq!(r.data()["me"]["verified"], true);
    }
    let u = update_user(&app, &admin, json!({ "id": alice, "verified": false })).await;
    assert_eq!(u["verified"], false);
    for t in &tokens {
        assert!(app.active_session(t).await.is_null());
        let r = app.gql_as(t, ME, json!({})).await.ok();
        assert!(r.data()["me"].is_null());
    }
    let r = app.try_login("alice", "alice-pw").await.ok();
    assert_eq!(r.data()["login"]["__typename"], "NotVerifiedError");
    assert!(r.session_token().is_none());
    // Verified again: logs in.
    update_user(&app, &admin, json!({ "id": alice, "verified": true })).await;
    app.login("alice", "alice-pw").await;
}

async fn new_password_ends_sessions(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (admin, alice, tokens) = setup(&app, &[]).await;
    for t in &tokens {
        assert_eq!(app.active_session(t).await["user"]["id"], alice);
    }
    update_user(&app, &admin, json!({ "id": alice, "password": "new-pw" })).await;
    for t in &tokens {
        assert!(app.active_session(t).await.is_null());
    }
    let r = app.try_login("alice", "alice-pw").await.ok();
    assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
    let t = app.login("alice", "new-pw").await.token;
    assert_eq!(app.active_session(&t).await["user"]["id"], alice);
}

async fn new_identifier_shows_at_once(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (admin, alice, tokens) = setup(&app, &[]).await;
    for t in &tokens {
        let r = app.gql_as(t, ME, json!({})).await.ok();
        assert_eq!(r.data()["me"]["identifier"], "alice");
    }
    let u = update_user(
        &app,
        &admin,
        json!({ "id": alice, "identifier": "alice@example.com" }),
    )
    .await;
    assert_eq!(u["identifier"], "alice@example.com");
    for t in &tokens {
        let r = app.gql_as(t, ME, json!({})).await.ok();
        assert_eq!(r.data()["me"]["identifier"], "alice@example.com");
        assert_eq!(
            app.active_session(t).await["user"]["identifier"],
            "alice@example.com",
            "the identifier change does not end sessions"
        );
    }
    let t = app.login("alice@example.com", "alice-pw").await.token;
    assert_eq!(app.active_session(&t).await["user"]["id"], alice);
    let r = app.try_login("alice", "alice-pw").await.ok();
    assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
}

async fn delete_user_ends_sessions(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let reader_admin = app.admin_token().await;
    let reader = app
        .create_role(&reader_admin, "reader", &["READ_SESSION"])
        .await;
    let (admin, alice, tokens) = setup(&app, &[&reader]).await;
    for t in &tokens {
        allowed(&app, t).await;
    }
    let r = app
        .gql_as(
            &admin,
            "mutation($id: ID!) { deleteUser(id: $id) }",
            json!({ "id": alice }),
        )
        .await
        .ok();
    assert_eq!(r.data()["deleteUser"], true);
    for t in &tokens {
        assert!(app.active_session(t).await.is_null());
        let r = app.gql_as(t, STATS, json!({})).await;
        assert_eq!(r.error_code(), Some("UNAUTHENTICATED"), "{}", r.body);
    }
    let r = app
        .gql_as(
            &admin,
            "query($id: ID!) { user(id: $id) { id } }",
            json!({ "id": alice }),
        )
        .await
        .ok();
    assert!(r.data()["user"].is_null());
    let r = app.try_login("alice", "alice-pw").await.ok();
    assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
    // Deleting again: false, not an error.
    let r = app
        .gql_as(
            &admin,
            "mutation($id: ID!) { deleteUser(id: $id) }",
            json!({ "id": alice }),
        )
        .await
        .ok();
    assert_eq!(r.data()["deleteUser"], false);
}
