//! Authorization rules: no one gains or grants what they do not hold (createRole, updateRole,
//! assignRole, createUser with roles, changes to and revocations of more privileged users, each
//! refused with `FORBIDDEN` and nothing changed), and a permission held through a role reaches
//! only that role's channels (listings, counts, lookups, revocations and changes).

use crate::helpers::{str_of, Gql, TestApp, Variant, ADMIN, ADMIN_PASSWORD};
use serde_json::{json, Value};

crate::all_caches!(
    create_role_beyond_the_caller_is_forbidden,
    update_role_beyond_the_caller_is_forbidden,
    assign_role_beyond_the_caller_is_forbidden,
    create_user_with_roles_beyond_the_caller_is_forbidden,
    superadmin_cannot_be_taken_over_or_locked_out,
    super_admins_cannot_be_deleted_or_stripped,
    sessions_of_super_admins_cannot_be_revoked_by_an_admin,
    channel_scope_is_real,
    admins_can_do_what_they_hold_and_see_only_their_channels,
    concurrent_role_changes_cannot_combine_into_an_escalation,
    update_role_cannot_change_holders_the_caller_may_not_change,
    clean_up_by_a_channel_admin_deletes_only_that_channels_sessions,
    a_users_roles_show_only_within_the_callers_read_user_channels,
);
crate::variants!(the_superadmin_identifier_names_no_one_after_a_rename);

const CREATE_ROLE: &str =
    "mutation($i: CreateRoleInput!) { createRole(input: $i) { id code permissions } }";
const UPDATE_ROLE: &str = "mutation($i: UpdateRoleInput!) { updateRole(input: $i) { id } }";
const ASSIGN: &str = "mutation($u: ID!, $r: ID!) { assignRole(userId: $u, roleId: $r) { id } }";
const REMOVE: &str = "mutation($u: ID!, $r: ID!) { removeRole(userId: $u, roleId: $r) { id } }";
const CREATE_USER: &str = "mutation($i: CreateUserInput!) { createUser(input: $i) { id } }";
const UPDATE_USER: &str = "mutation($i: UpdateUserInput!) { updateUser(input: $i) { id } }";
const DELETE_USER: &str = "mutation($id: ID!) { deleteUser(id: $id) }";
const REVOKE: &str = "mutation($id: ID!) { revokeSession(id: $id) }";
const REVOKE_BY_USER: &str = "mutation($id: ID!) { revokeSessionsByUser(userId: $id) }";
const REVOKE_BY_ORDER: &str = "mutation($id: ID!) { revokeSessionsByActiveOrder(orderId: $id) }";
const ROLES: &str = "{ roles { id code description permissions channels { code } } }";
const STATS: &str =
    "{ sessionStats { anonymous authenticated expiredAwaitingCleanup invalidated } }";
const SESSIONS: &str = "query($f: SessionFilter) { sessions(filter: $f, first: 100) {
    totalCount nodes { id } } }";
const USERS: &str = "{ users(first: 100) { totalCount nodes { identifier } } }";
const USER: &str = "query($id: ID!) { user(id: $id) { id identifier verified roles { code } } }";
const SESSION: &str = "query($id: ID!) { session(id: $id) { id } }";
const ME: &str = "{ me { channels { channelCode permissions } } }";

/// Asserts a refusal: `FORBIDDEN`, no HTTP 500, and no value for `field`.
fn refused(r: &Gql, field: &str, what: &str) {
    assert_eq!(r.error_code(), Some("FORBIDDEN"), "{what}: {}", r.body);
    assert_ne!(r.status, 500, "{what}");
    assert!(
        r.data().is_null() || r.data()[field].is_null(),
        "{what}: {}",
        r.body
    );
}

/// Creates a role (as `token`) and returns its id.
async fn role_in(
    app: &TestApp,
    token: &str,
    code: &str,
    permissions: &[&str],
    channels: &[&str],
) -> String {
    app.create_role_in(token, code, permissions, channels).await
}

/// Creates a user with `roles` (as the superadmin) and logs them in: `(id, token, session id)`.
async fn user_with(
    app: &TestApp,
    root: &str,
    name: &str,
    roles: &[&str],
) -> (String, String, String) {
    let id = app
        .create_user(root, name, &format!("{name}-pw"), roles)
        .await;
    let (token, sid) = login(app, name, &format!("{name}-pw")).await;
    (id, token, sid)
}

/// Logs in: `(token, session id)`.
async fn login(app: &TestApp, name: &str, password: &str) -> (String, String) {
    let l = app.login(name, password).await;
    let sid = str_of(&l.body["data"]["login"]["session"]["id"]);
    (l.token, sid)
}

/// The superadmin's user id.
async fn my_id(app: &TestApp, token: &str) -> String {
    let r = app.gql_as(token, "{ me { id } }", json!({})).await.ok();
    str_of(&r.data()["me"]["id"])
}

/// The id of the role with `code`, as the superadmin sees it.
async fn role_id(app: &TestApp, root: &str, code: &str) -> String {
    let r = app.gql_as(root, ROLES, json!({})).await.ok();
    let roles = r.data()["roles"].as_array().expect("roles").clone();
    let role = roles
        .iter()
        .find(|r| r["code"] == code)
        .unwrap_or_else(|| panic!("no role {code}: {roles:?}"));
    str_of(&role["id"])
}

/// Every role, as the superadmin sees it (to compare before and after a refusal).
async fn all_roles(app: &TestApp, root: &str) -> Value {
    app.gql_as(root, ROLES, json!({})).await.ok().data()["roles"].clone()
}

/// The role codes of a user, as the superadmin sees them.
async fn roles_of(app: &TestApp, root: &str, user: &str) -> Vec<String> {
    let r = app.gql_as(root, USER, json!({ "id": user })).await.ok();
    r.data()["user"]["roles"]
        .as_array()
        .unwrap_or_else(|| panic!("user {user}: {}", r.body))
        .iter()
        .map(|r| str_of(&r["code"]))
        .collect()
}

async fn create_order(app: &TestApp, token: &str) -> String {
    let r = app
        .gql_as(token, "mutation { createOrder { id } }", json!({}))
        .await
        .ok();
    str_of(&r.data()["createOrder"]["id"])
}

fn is_live(session: &Value, id: &str) -> bool {
    session["id"] == id
}

/// A channel admin: the `user-admin` role (READ_USER, WRITE_USER in the default channel).
async fn user_admin(app: &TestApp, root: &str, default: &str) -> (String, String) {
    let role = role_in(
        app,
        root,
        "user-admin",
        &["READ_USER", "WRITE_USER"],
        &[default],
    )
    .await;
    let (id, token, _) = user_with(app, root, "mallory", &[&role]).await;
    (id, token)
}

async fn create_role_beyond_the_caller_is_forbidden(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let root = app.admin_token().await;
    let default = app.default_channel_id(&root).await;
    let (eu, _) = app.create_channel(&root, "eu").await;
    let (_, admin) = user_admin(&app, &root, &default).await;
    let before = all_roles(&app, &root).await;

    for (code, permissions, channels) in [
        ("root2", vec!["SUPER_ADMIN"], vec![default.as_str()]),
        ("root3", vec!["SUPER_ADMIN"], vec![]),
        ("root4", vec!["READ_USER", "SUPER_ADMIN"], vec![eu.as_str()]),
        ("reader", vec!["READ_SESSION"], vec![default.as_str()]),
        ("writer", vec!["WRITE_CHANNEL"], vec![default.as_str()]),
        ("eu-users", vec!["READ_USER"], vec![eu.as_str()]),
        (
            "wide",
            vec!["READ_USER"],
            vec![default.as_str(), eu.as_str()],
        ),
    ] {
        let r = app
            .gql_as(
                &admin,
                CREATE_ROLE,
                json!({ "i": { "code": code, "permissions": permissions, "channelIds": channels } }),
            )
            .await;
        refused(&r, "createRole", code);
    }
    assert_eq!(all_roles(&app, &root).await, before, "no role was created");
    // The caller still holds only what they held.
    let r = app
        .gql_as(&admin, "mutation { clearSessionCache }", json!({}))
        .await;
    refused(&r, "clearSessionCache", "no SUPER_ADMIN");

    // What the caller holds, in their channel, they may grant.
    let r = app
        .gql_as(
            &admin,
            CREATE_ROLE,
            json!({ "i": { "code": "helper", "permissions": ["READ_USER"], "channelIds": [default] } }),
        )
        .await
        .ok();
    assert_eq!(r.data()["createRole"]["permissions"], json!(["READ_USER"]));
}

async fn update_role_beyond_the_caller_is_forbidden(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let root = app.admin_token().await;
    let default = app.default_channel_id(&root).await;
    let (eu, _) = app.create_channel(&root, "eu").await;
    let (_, admin) = user_admin(&app, &root, &default).await;
    let own = role_id(&app, &root, "user-admin").await;
    let helper = role_in(&app, &root, "helper", &["READ_USER"], &[&default]).await;
    let wide = role_in(&app, &root, "wide", &["READ_USER"], &[&default, &eu]).await;
    let super_role = role_id(&app, &root, "SUPER_ADMIN").await;
    let (_, holder, _) = user_with(&app, &root, "holder", &[&helper]).await;
    let holder_before = app.gql_as(&holder, ME, json!({})).await.ok().body;
    let admin_before = app.gql_as(&admin, ME, json!({})).await.ok().body;
    let before = all_roles(&app, &root).await;

    for (what, input) in [
        (
            "add a permission not held",
            json!({ "id": helper, "permissions": ["READ_USER", "READ_SESSION"] }),
        ),
        (
            "add SUPER_ADMIN",
            json!({ "id": helper, "permissions": ["SUPER_ADMIN"] }),
        ),
        (
            "extend to a channel not administered",
            json!({ "id": helper, "channelIds": [default, eu] }),
        ),
        (
            "move to a channel not administered",
            json!({ "id": helper, "channelIds": [eu] }),
        ),
        (
            "take over a role reaching beyond the caller",
            json!({ "id": wide, "description": "mine now" }),
        ),
        (
            "strip a role reaching beyond the caller",
            json!({ "id": wide, "channelIds": [default] }),
        ),
        (
            "escalate through the caller's own role",
            json!({ "id": own, "permissions": ["READ_USER", "WRITE_USER", "REVOKE_SESSION"] }),
        ),
        (
            "change the SUPER_ADMIN role",
            json!({ "id": super_role, "description": "x" }),
        ),
    ] {
        let r = app.gql_as(&admin, UPDATE_ROLE, json!({ "i": input })).await;
        refused(&r, "updateRole", what);
    }
    assert_eq!(all_roles(&app, &root).await, before, "no role changed");
    assert_eq!(
        app.gql_as(&holder, ME, json!({})).await.ok().body,
        holder_before
    );
    assert_eq!(
        app.gql_as(&admin, ME, json!({})).await.ok().body,
        admin_before
    );

    // A role within the caller's reach they may change.
    app.gql_as(
        &admin,
        UPDATE_ROLE,
        json!({ "i": { "id": helper, "description": "reads users" } }),
    )
    .await
    .ok();
}

async fn assign_role_beyond_the_caller_is_forbidden(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let root = app.admin_token().await;
    let default = app.default_channel_id(&root).await;
    let (eu, _) = app.create_channel(&root, "eu").await;
    let (me, admin) = user_admin(&app, &root, &default).await;
    let super_role = role_id(&app, &root, "SUPER_ADMIN").await;
    let reader = role_in(&app, &root, "reader", &["READ_SESSION"], &[&default]).await;
    let eu_users = role_in(&app, &root, "eu-users", &["READ_USER"], &[&eu]).await;
    let helper = role_in(&app, &root, "helper", &["READ_USER"], &[&default]).await;
    let bob = app.create_user(&root, "bob", "bob-pw", &[]).await;
    let admin_before = app.gql_as(&admin, ME, json!({})).await.ok().body;

    for (what, user, role) in [
        ("the SUPER_ADMIN role to oneself", &me, &super_role),
        ("a permission not held, to oneself", &me, &reader),
        ("a channel not administered, to oneself", &me, &eu_users),
        ("the SUPER_ADMIN role to another", &bob, &super_role),
        ("a permission not held, to another", &bob, &reader),
        ("a channel not administered, to another", &bob, &eu_users),
    ] {
        let r = app
            .gql_as(&admin, ASSIGN, json!({ "u": user, "r": role }))
            .await;
        refused(&r, "assignRole", what);
    }
    assert_eq!(roles_of(&app, &root, &me).await, ["user-admin"]);
    assert!(roles_of(&app, &root, &bob).await.is_empty());
    // The caller gained nothing, on this session or a new one.
    assert_eq!(
        app.gql_as(&admin, ME, json!({})).await.ok().body,
        admin_before
    );
    let (fresh, _) = login(&app, "mallory", "mallory-pw").await;
    for t in [&admin, &fresh] {
        let r = app.gql_as(t, STATS, json!({})).await;
        refused(&r, "sessionStats", "no READ_SESSION was gained");
        let r = app
            .gql_as(t, "mutation { clearSessionCache }", json!({}))
            .await;
        refused(&r, "clearSessionCache", "no SUPER_ADMIN was gained");
    }
    let (bob_t, _) = login(&app, "bob", "bob-pw").await;
    let r = app.gql_as(&bob_t, STATS, json!({})).await;
    refused(&r, "sessionStats", "bob gained nothing");

    // bob holds no role: a customer, outside every channel admin's reach. Giving him a role
    // would bring him into reach, and then `updateUser` could take his account over.
    let r = app
        .gql_as(&admin, ASSIGN, json!({ "u": bob, "r": helper }))
        .await;
    refused(&r, "assignRole", "a role-less user (a customer)");
    assert!(roles_of(&app, &root, &bob).await.is_empty());
    let r = app
        .gql_as(
            &admin,
            "mutation($i: UpdateUserInput!) { updateUser(input: $i) { id } }",
            json!({ "i": { "id": bob, "password": "taken-over" } }),
        )
        .await;
    refused(&r, "updateUser", "a role-less user (a customer)");
    app.login("bob", "bob-pw").await;
    // A user within the caller's reach (holding a role in their channel) they may give a role
    // they could grant.
    let staff = role_in(&app, &root, "staff", &[], &[&default]).await;
    let (carol, _, _) = user_with(&app, &root, "carol", &[&staff]).await;
    app.gql_as(&admin, ASSIGN, json!({ "u": carol, "r": helper }))
        .await
        .ok();
    assert_eq!(roles_of(&app, &root, &carol).await, ["helper", "staff"]);
}

async fn create_user_with_roles_beyond_the_caller_is_forbidden(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let root = app.admin_token().await;
    let default = app.default_channel_id(&root).await;
    let (eu, _) = app.create_channel(&root, "eu").await;
    let (_, admin) = user_admin(&app, &root, &default).await;
    let super_role = role_id(&app, &root, "SUPER_ADMIN").await;
    let reader = role_in(&app, &root, "reader", &["READ_SESSION"], &[&default]).await;
    let eu_users = role_in(&app, &root, "eu-users", &["READ_USER"], &[&eu]).await;
    let helper = role_in(&app, &root, "helper", &["READ_USER"], &[&default]).await;
    let count = || async {
        app.gql_as(&root, USERS, json!({})).await.ok().data()["users"]["totalCount"].clone()
    };
    let before = count().await;

    for (what, roles) in [
        ("the SUPER_ADMIN role", vec![&super_role]),
        ("a permission not held", vec![&reader]),
        ("a channel not administered", vec![&eu_users]),
        ("one allowed role and one not", vec![&helper, &super_role]),
    ] {
        let r = app
            .gql_as(
                &admin,
                CREATE_USER,
                json!({ "i": { "identifier": "eve", "password": "eve-pw", "roleIds": roles } }),
            )
            .await;
        refused(&r, "createUser", what);
        let r = app.try_login("eve", "eve-pw").await.ok();
        assert_eq!(
            r.data()["login"]["__typename"],
            "InvalidCredentialsError",
            "{what}: no user was created"
        );
    }
    assert_eq!(count().await, before);

    let r = app
        .gql_as(
            &admin,
            CREATE_USER,
            json!({ "i": { "identifier": "eve", "password": "eve-pw", "roleIds": [helper] } }),
        )
        .await
        .ok();
    let eve = str_of(&r.data()["createUser"]["id"]);
    assert_eq!(roles_of(&app, &root, &eve).await, ["helper"]);
    app.login("eve", "eve-pw").await;
}

async fn superadmin_cannot_be_taken_over_or_locked_out(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let root = app.admin_token().await;
    let root_id = my_id(&app, &root).await;
    let default = app.default_channel_id(&root).await;
    let (_, admin) = user_admin(&app, &root, &default).await;
    let reader = role_in(&app, &root, "reader", &["READ_SESSION"], &[&default]).await;
    let (carol, carol_t, carol_sid) = user_with(&app, &root, "carol", &[&reader]).await;

    for (what, input) in [
        (
            "take over the superadmin",
            json!({ "id": root_id, "password": "owned-password" }),
        ),
        (
            "lock out the superadmin",
            json!({ "id": root_id, "verified": false }),
        ),
        (
            "rename the superadmin",
            json!({ "id": root_id, "identifier": "former-admin" }),
        ),
        (
            "take over a user holding a permission the caller lacks",
            json!({ "id": carol, "password": "owned-password" }),
        ),
        (
            "lock out a user holding a permission the caller lacks",
            json!({ "id": carol, "verified": false }),
        ),
    ] {
        let r = app.gql_as(&admin, UPDATE_USER, json!({ "i": input })).await;
        refused(&r, "updateUser", what);
    }
    // Nothing changed: the sessions live on, the old passwords work, the new ones do not.
    assert_eq!(app.active_session(&root).await["user"]["identifier"], ADMIN);
    assert!(is_live(&app.active_session(&carol_t).await, &carol_sid));
    app.login(ADMIN, ADMIN_PASSWORD).await;
    app.login("carol", "carol-pw").await;
    for name in [ADMIN, "carol"] {
        let r = app.try_login(name, "owned-password").await.ok();
        assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
    }
    let r = app.gql_as(&root, USER, json!({ "id": root_id })).await.ok();
    assert_eq!(r.data()["user"]["identifier"], ADMIN);
    assert_eq!(r.data()["user"]["verified"], true);
}

async fn super_admins_cannot_be_deleted_or_stripped(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let root = app.admin_token().await;
    let root_id = my_id(&app, &root).await;
    let default = app.default_channel_id(&root).await;
    let (_, admin) = user_admin(&app, &root, &default).await;
    let super_role = role_id(&app, &root, "SUPER_ADMIN").await;
    let reader = role_in(&app, &root, "reader", &["READ_SESSION"], &[&default]).await;
    let (root2, root2_t, root2_sid) = user_with(&app, &root, "root2", &[&super_role]).await;
    let (carol, carol_t, carol_sid) = user_with(&app, &root, "carol", &[&reader]).await;

    for (what, id) in [
        ("the bootstrap superadmin", &root_id),
        ("another super admin", &root2),
        ("a user holding a permission the caller lacks", &carol),
    ] {
        let r = app.gql_as(&admin, DELETE_USER, json!({ "id": id })).await;
        refused(&r, "deleteUser", what);
    }
    for (what, user, role) in [
        (
            "SUPER_ADMIN from the bootstrap superadmin",
            &root_id,
            &super_role,
        ),
        ("SUPER_ADMIN from another super admin", &root2, &super_role),
        ("a role the caller does not hold", &carol, &reader),
    ] {
        let r = app
            .gql_as(&admin, REMOVE, json!({ "u": user, "r": role }))
            .await;
        refused(&r, "removeRole", what);
    }
    // Nothing changed.
    assert_eq!(roles_of(&app, &root, &root_id).await, ["SUPER_ADMIN"]);
    assert_eq!(roles_of(&app, &root, &root2).await, ["SUPER_ADMIN"]);
    assert_eq!(roles_of(&app, &root, &carol).await, ["reader"]);
    assert!(is_live(&app.active_session(&root2_t).await, &root2_sid));
    assert!(is_live(&app.active_session(&carol_t).await, &carol_sid));
    app.gql_as(&root2_t, STATS, json!({})).await.ok();
    app.gql_as(&carol_t, STATS, json!({})).await.ok();
    app.login("root2", "root2-pw").await;
    app.login(ADMIN, ADMIN_PASSWORD).await;
}

async fn sessions_of_super_admins_cannot_be_revoked_by_an_admin(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (root, root_sid) = login(&app, ADMIN, ADMIN_PASSWORD).await;
    let root_id = my_id(&app, &root).await;
    let root_order = create_order(&app, &root).await;
    let default = app.default_channel_id(&root).await;
    let revoker = role_in(
        &app,
        &root,
        "revoker",
        &["READ_SESSION", "REVOKE_SESSION"],
        &[&default],
    )
    .await;
    let writer = role_in(&app, &root, "writer", &["WRITE_USER"], &[&default]).await;
    let (_, sam, _) = user_with(&app, &root, "sam", &[&revoker]).await;
    let (carol, carol_t, carol_sid) = user_with(&app, &root, "carol", &[&writer]).await;
    let carol_order = create_order(&app, &carol_t).await;

    for (what, q, field, id) in [
        (
            "a super admin's session",
            REVOKE,
            "revokeSession",
            &root_sid,
        ),
        (
            "a super admin's sessions",
            REVOKE_BY_USER,
            "revokeSessionsByUser",
            &root_id,
        ),
        (
            "a super admin's session by its order",
            REVOKE_BY_ORDER,
            "revokeSessionsByActiveOrder",
            &root_order,
        ),
        (
            "the session of a user holding a permission the caller lacks",
            REVOKE,
            "revokeSession",
            &carol_sid,
        ),
        (
            "the sessions of a user holding a permission the caller lacks",
            REVOKE_BY_USER,
            "revokeSessionsByUser",
            &carol,
        ),
        (
            "by the order of a user holding a permission the caller lacks",
            REVOKE_BY_ORDER,
            "revokeSessionsByActiveOrder",
            &carol_order,
        ),
    ] {
        let r = app.gql_as(&sam, q, json!({ "id": id })).await;
        refused(&r, field, what);
    }
    // The sessions still work and are not marked revoked.
    assert!(is_live(&app.active_session(&root).await, &root_sid));
    assert!(is_live(&app.active_session(&carol_t).await, &carol_sid));
    let r = app
        .gql_as(
            &root,
            SESSIONS,
            json!({ "f": { "includeInvalidated": true, "kind": "AUTHENTICATED" } }),
        )
        .await
        .ok();
    assert_eq!(r.data()["sessions"]["totalCount"], 3, "{}", r.body);
    let r = app.gql_as(&root, STATS, json!({})).await.ok();
    assert_eq!(r.data()["sessionStats"]["invalidated"], 0);

    // Sessions of users the caller outranks they may revoke.
    let (guest, guest_sid) = app.anonymous_session().await;
    let r = app
        .gql_as(&sam, REVOKE, json!({ "id": guest_sid }))
        .await
        .ok();
    assert_eq!(r.data()["revokeSession"], true);
    assert!(app.active_session(&guest).await.is_null());
}

/// Sends `query` as `token` in the channel whose token is `channel`.
async fn in_channel(app: &TestApp, token: &str, channel: &str, query: &str, vars: Value) -> Gql {
    TestApp::send(
        app.post(query, vars)
            .bearer_auth(token)
            .header("channel-token", channel),
    )
    .await
}

fn ids(conn: &Value) -> Vec<String> {
    conn["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("nodes: {conn}"))
        .iter()
        .map(|n| str_of(n.get("id").or_else(|| n.get("identifier")).unwrap()))
        .collect()
}

async fn channel_scope_is_real(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let root = app.admin_token().await;
    let default = app.default_channel_id(&root).await;
    let (eu, eu_token) = app.create_channel(&root, "eu").await;
    let eu_admin = role_in(
        &app,
        &root,
        "eu-admin",
        &["READ_SESSION", "REVOKE_SESSION", "READ_USER", "WRITE_USER"],
        &[&eu],
    )
    .await;
    let default_member = role_in(&app, &root, "default-member", &[], &[&default]).await;
    let eu_member = role_in(&app, &root, "eu-member", &[], &[&eu]).await;

    // dana: a user of the default channel only, with a session (and an active order) there.
    let (dana, dana_t, dana_sid) = user_with(&app, &root, "dana", &[&default_member]).await;
    let dana_order = create_order(&app, &dana_t).await;
    // eve: a user of eu, with a session active in eu.
    let (eve, eve_t, eve_sid) = user_with(&app, &root, "eve", &[&eu_member]).await;
    let r = app
        .gql_as(
            &eve_t,
            "mutation($t: String!) { setActiveChannel(token: $t) { activeChannel { code } } }",
            json!({ "t": eu_token }),
        )
        .await
        .ok();
    assert_eq!(r.data()["setActiveChannel"]["activeChannel"]["code"], "eu");
    // ronin: no role at all.
    let ronin = app.create_user(&root, "ronin", "ronin-pw", &[]).await;
    // Guests: one in the default channel, one created in eu.
    let (guest, guest_sid) = app.anonymous_session().await;
    let r = TestApp::send(
        app.post("mutation { createAnonymousSession { id } }", json!({}))
            .header("channel-token", &eu_token),
    )
    .await
    .ok();
    let eu_guest = r.session_token().expect("session-token");
    let eu_guest_sid = str_of(&r.data()["createAnonymousSession"]["id"]);

    let (_, admin, admin_sid) = user_with(&app, &root, "euadmin", &[&eu_admin]).await;
    let eu_q = |q: &'static str, vars: Value| {
        let (app, admin, eu_token) = (&app, &admin, &eu_token);
        async move { in_channel(app, admin, eu_token, q, vars).await }
    };

    // Outside eu the admin holds nothing.
    let r = app.gql_as(&admin, SESSIONS, json!({})).await;
    refused(&r, "sessions", "no READ_SESSION in the default channel");

    // Reads: only what is in eu, counted in SQL.
    let r = eu_q(SESSIONS, json!({})).await.ok();
    let conn = &r.data()["sessions"];
    assert_eq!(ids(conn), [eu_guest_sid.clone(), eve_sid.clone()], "{conn}");
    assert_eq!(conn["totalCount"], 2);
    for filter in [
        json!({ "channelId": default }),
        json!({ "userId": dana }),
        json!({ "includeInvalidated": true, "includeExpired": true, "kind": "AUTHENTICATED" }),
    ] {
        let r = eu_q(SESSIONS, json!({ "f": filter })).await.ok();
        let conn = &r.data()["sessions"];
        assert!(
            !ids(conn).contains(&dana_sid) && !ids(conn).contains(&guest_sid),
            "{filter}: {conn}"
        );
        assert_eq!(conn["totalCount"], ids(conn).len(), "{filter}: {conn}");
    }
    for sid in [&dana_sid, &guest_sid, &admin_sid] {
        let r = eu_q(SESSION, json!({ "id": sid })).await.ok();
        assert!(r.data()["session"].is_null(), "session {sid}: {}", r.body);
    }
    for sid in [&eve_sid, &eu_guest_sid] {
        let r = eu_q(SESSION, json!({ "id": sid })).await.ok();
        assert_eq!(r.data()["session"]["id"], **sid);
    }
    let r = eu_q(STATS, json!({})).await.ok();
    assert_eq!(
        r.data()["sessionStats"],
        json!({ "anonymous": 1, "authenticated": 1, "expiredAwaitingCleanup": 0, "invalidated": 0 })
    );
    // Users holding a role in eu (the SUPER_ADMIN role covers every channel); not dana, and not
    // ronin, who holds no role anywhere.
    let r = eu_q(USERS, json!({})).await.ok();
    let users = &r.data()["users"];
    assert_eq!(ids(users), [ADMIN, "eve", "euadmin"], "{users}");
    assert_eq!(users["totalCount"], 3);
    for id in [&dana, &ronin] {
        let r = eu_q(USER, json!({ "id": id })).await.ok();
        assert!(r.data()["user"].is_null(), "user {id}: {}", r.body);
    }
    let r = eu_q(USER, json!({ "id": eve })).await.ok();
    assert_eq!(r.data()["user"]["identifier"], "eve");
    let r = eu_q(ROLES, json!({})).await.ok();
    let codes: Vec<String> = r.data()["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| str_of(&r["code"]))
        .collect();
    assert_eq!(codes, ["SUPER_ADMIN", "eu-admin", "eu-member"]);

    // Revocations outside eu find nothing, and change nothing.
    for (q, field, id) in [
        (REVOKE, "revokeSession", &dana_sid),
        (REVOKE, "revokeSession", &guest_sid),
        (REVOKE_BY_USER, "revokeSessionsByUser", &dana),
        (REVOKE_BY_ORDER, "revokeSessionsByActiveOrder", &dana_order),
    ] {
        let r = eu_q(q, json!({ "id": id })).await.ok();
        assert!(
            r.data()[field] == false || r.data()[field] == 0,
            "{field}({id}): {}",
            r.body
        );
    }
    assert!(is_live(&app.active_session(&dana_t).await, &dana_sid));
    assert!(is_live(&app.active_session(&guest).await, &guest_sid));

    // Changes to a user outside eu: FORBIDDEN, nothing changed.
    let r = eu_q(
        UPDATE_USER,
        json!({ "i": { "id": dana, "verified": false } }),
    )
    .await;
    refused(&r, "updateUser", "a user of the default channel");
    let r = eu_q(DELETE_USER, json!({ "id": dana })).await;
    refused(&r, "deleteUser", "a user of the default channel");
    let r = eu_q(REMOVE, json!({ "u": dana, "r": default_member })).await;
    refused(&r, "removeRole", "a user of the default channel");
    let r = eu_q(ASSIGN, json!({ "u": dana, "r": eu_member })).await;
    refused(&r, "assignRole", "a user of the default channel");
    let r = eu_q(
        UPDATE_ROLE,
        json!({ "i": { "id": default_member, "channelIds": [eu] } }),
    )
    .await;
    refused(&r, "updateRole", "a role of the default channel");
    assert_eq!(roles_of(&app, &root, &dana).await, ["default-member"]);
    assert!(is_live(&app.active_session(&dana_t).await, &dana_sid));
    app.login("dana", "dana-pw").await;

    // A user without roles (a customer) is in no channel: a channel admin cannot pull them into
    // reach by giving them a role.
    let r = eu_q(ASSIGN, json!({ "u": ronin, "r": eu_member })).await;
    refused(&r, "assignRole", "a user with no role");
    let r = eu_q(USER, json!({ "id": ronin })).await.ok();
    assert!(r.data()["user"].is_null(), "{}", r.body);

    // What is in eu the admin can revoke.
    let r = eu_q(REVOKE, json!({ "id": eu_guest_sid })).await.ok();
    assert_eq!(r.data()["revokeSession"], true);
    assert!(app.active_session(&eu_guest).await.is_null());
    let r = eu_q(REVOKE_BY_USER, json!({ "id": eve })).await.ok();
    assert_eq!(r.data()["revokeSessionsByUser"], 1);
    assert!(app.active_session(&eve_t).await.is_null());
    let r = eu_q(STATS, json!({})).await.ok();
    assert_eq!(
        r.data()["sessionStats"],
        json!({ "anonymous": 0, "authenticated": 0, "expiredAwaitingCleanup": 0, "invalidated": 2 })
    );
    // The superadmin still sees every channel.
    let r = app.gql_as(&root, STATS, json!({})).await.ok();
    assert_eq!(
        r.data()["sessionStats"],
        json!({ "anonymous": 1, "authenticated": 4, "expiredAwaitingCleanup": 0, "invalidated": 2 })
    );
}

async fn admins_can_do_what_they_hold_and_see_only_their_channels(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let root = app.admin_token().await;
    let default = app.default_channel_id(&root).await;
    let (eu, _) = app.create_channel(&root, "eu").await;
    let ops = role_in(
        &app,
        &root,
        "ops",
        &["READ_SESSION", "REVOKE_SESSION", "READ_USER", "WRITE_USER"],
        &[&default],
    )
    .await;
    let eu_only = role_in(&app, &root, "eu-only", &["READ_USER"], &[&eu]).await;
    app.create_user(&root, "euro", "euro-pw", &[&eu_only]).await;
    let (_, admin, _) = user_with(&app, &root, "ada", &[&ops]).await;

    // Roles and users: theirs, within their channel.
    let helper = role_in(&app, &admin, "helper", &["READ_USER"], &[&default]).await;
    let r = app
        .gql_as(
            &admin,
            CREATE_USER,
            json!({ "i": { "identifier": "bob", "password": "bob-pw", "roleIds": [helper] } }),
        )
        .await
        .ok();
    let bob = str_of(&r.data()["createUser"]["id"]);
    app.gql_as(
        &admin,
        UPDATE_ROLE,
        json!({ "i": { "id": helper, "description": "reads", "permissions": ["READ_USER", "READ_SESSION"] } }),
    )
    .await
    .ok();
    let r = app.gql_as(&admin, USERS, json!({})).await.ok();
    assert_eq!(
        ids(&r.data()["users"]),
        [ADMIN, "ada", "bob"],
        "not euro, whose only role is in eu"
    );
    assert_eq!(r.data()["users"]["totalCount"], 3);
    let r = app.gql_as(&admin, ROLES, json!({})).await.ok();
    let codes: Vec<String> = r.data()["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| str_of(&r["code"]))
        .collect();
    assert_eq!(codes, ["SUPER_ADMIN", "ops", "helper"], "not eu-only");

    // Users they outrank they may change, revoke and delete.
    let (bob_t, _) = login(&app, "bob", "bob-pw").await;
    app.gql_as(
        &admin,
        UPDATE_USER,
        json!({ "i": { "id": bob, "password": "bob-new-pw" } }),
    )
    .await
    .ok();
    assert!(app.active_session(&bob_t).await.is_null());
    let (bob_t, bob_sid) = login(&app, "bob", "bob-new-pw").await;
    let r = app
        .gql_as(&admin, REVOKE, json!({ "id": bob_sid }))
        .await
        .ok();
    assert_eq!(r.data()["revokeSession"], true);
    assert!(app.active_session(&bob_t).await.is_null());
    let (bob_t, _) = login(&app, "bob", "bob-new-pw").await;
    let order = create_order(&app, &bob_t).await;
    let r = app
        .gql_as(&admin, REVOKE_BY_ORDER, json!({ "id": order }))
        .await
        .ok();
    assert_eq!(r.data()["revokeSessionsByActiveOrder"], 1);
    let (bob_t, _) = login(&app, "bob", "bob-new-pw").await;
    let r = app
        .gql_as(&admin, REVOKE_BY_USER, json!({ "id": bob }))
        .await
        .ok();
    assert_eq!(r.data()["revokeSessionsByUser"], 1);
    assert!(app.active_session(&bob_t).await.is_null());
    app.gql_as(&admin, REMOVE, json!({ "u": bob, "r": helper }))
        .await
        .ok();
    assert!(roles_of(&app, &root, &bob).await.is_empty());
    // Without a role bob is in no channel: only a super admin brings him back into reach.
    let r = app
        .gql_as(&admin, ASSIGN, json!({ "u": bob, "r": helper }))
        .await;
    refused(&r, "assignRole", "a user with no role");
    app.gql_as(&root, ASSIGN, json!({ "u": bob, "r": helper }))
        .await
        .ok();
    assert_eq!(roles_of(&app, &root, &bob).await, ["helper"]);
    let r = app
        .gql_as(&admin, DELETE_USER, json!({ "id": bob }))
        .await
        .ok();
    assert_eq!(r.data()["deleteUser"], true);
    let r = app.try_login("bob", "bob-new-pw").await.ok();
    assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
}

/// The role `id` as the superadmin sees it: `(permissions, channel codes)`.
async fn role_state(app: &TestApp, root: &str, id: &str) -> (Vec<String>, Vec<String>) {
    let roles = all_roles(app, root).await;
    let role = roles
        .as_array()
        .expect("roles")
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no role {id}: {roles}"))
        .clone();
    let list = |v: &Value, key: Option<&str>| -> Vec<String> {
        v.as_array()
            .expect("a list")
            .iter()
            .map(|x| str_of(key.map_or(x, |k| &x[k])))
            .collect()
    };
    (
        list(&role["permissions"], None),
        list(&role["channels"], Some("code")),
    )
}

/// Two `updateRole`s, each allowed alone (one adds a permission the caller holds in the role's
/// channel, the other moves the role to a channel where the caller holds `WRITE_USER` only),
/// sent at once: whatever the interleaving, the role never ends up granting the permission in
/// the other channel (to the caller, who holds the role).
async fn concurrent_role_changes_cannot_combine_into_an_escalation(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let root = app.admin_token().await;
    let default = app.default_channel_id(&root).await;
    let (eu, eu_token) = app.create_channel(&root, "eu").await;
    let home = role_in(
        &app,
        &root,
        "home",
        &["WRITE_USER", "READ_SESSION"],
        &[&default],
    )
    .await;
    let eu_writer = role_in(&app, &root, "eu-writer", &["WRITE_USER"], &[&eu]).await;
    let (me, admin, _) = user_with(&app, &root, "mallory", &[&home, &eu_writer]).await;
    // The caller's own, empty role, which they hold.
    let seed = role_in(&app, &admin, "seed", &[], &[&default]).await;
    app.gql_as(&admin, ASSIGN, json!({ "u": me, "r": seed }))
        .await
        .ok();

    for attempt in 0..40 {
        let grow = app.gql_as(
            &admin,
            UPDATE_ROLE,
            json!({ "i": { "id": seed, "permissions": ["READ_SESSION"] } }),
        );
        let moved = app.gql_as(
            &admin,
            UPDATE_ROLE,
            json!({ "i": { "id": seed, "channelIds": [eu] } }),
        );
        let (grow, moved) = tokio::join!(grow, moved);
        for r in [&grow, &moved] {
            assert_ne!(r.status, 500, "{}", r.body);
            assert!(
                r.error_code().is_none() || r.error_code() == Some("FORBIDDEN"),
                "{}",
                r.body
            );
        }
        let (permissions, channels) = role_state(&app, &root, &seed).await;
        assert!(
            !(permissions.contains(&"READ_SESSION".to_string())
                && channels.contains(&"eu".to_string())),
            "attempt {attempt}: the role now grants READ_SESSION in eu: {permissions:?} {channels:?}"
        );
        // Back to the start (as the superadmin).
        app.gql_as(
            &root,
            UPDATE_ROLE,
            json!({ "i": { "id": seed, "permissions": [], "channelIds": [default] } }),
        )
        .await
        .ok();
    }
    let r = in_channel(&app, &admin, &eu_token, STATS, json!({})).await;
    refused(&r, "sessionStats", "no READ_SESSION in eu was gained");
}

/// Changing what a role grants changes every holder: refused (`FORBIDDEN`, nothing changed)
/// when a holder is someone the caller may not change (a super admin, or a user holding a
/// permission the caller lacks), as `removeRole` / `assignRole` on them would be.
async fn update_role_cannot_change_holders_the_caller_may_not_change(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let root = app.admin_token().await;
    let root_id = my_id(&app, &root).await;
    let default = app.default_channel_id(&root).await;
    let (_, admin) = user_admin(&app, &root, &default).await;
    let helper = role_in(&app, &root, "helper", &["READ_USER"], &[&default]).await;
    let reader = role_in(&app, &root, "reader", &["READ_SESSION"], &[&default]).await;
    let shared = role_in(&app, &root, "shared", &["READ_USER"], &[&default]).await;
    // carol holds READ_SESSION, which the caller lacks; the superadmin holds `shared`.
    let (carol, carol_t, _) = user_with(&app, &root, "carol", &[&helper, &reader]).await;
    app.gql_as(&root, ASSIGN, json!({ "u": root_id, "r": shared }))
        .await
        .ok();
    let r = app
        .gql_as(&admin, REMOVE, json!({ "u": carol, "r": helper }))
        .await;
    refused(&r, "removeRole", "carol is beyond the caller");
    let carol_before = app.gql_as(&carol_t, ME, json!({})).await.ok().body;
    let before = all_roles(&app, &root).await;

    for (what, input) in [
        (
            "strip carol's permission",
            json!({ "id": helper, "permissions": [] }),
        ),
        (
            "strip carol's channel",
            json!({ "id": helper, "channelIds": [] }),
        ),
        (
            "grow carol's privileges",
            json!({ "id": helper, "permissions": ["READ_USER", "WRITE_USER"] }),
        ),
        (
            "change a role a super admin holds",
            json!({ "id": shared, "permissions": [] }),
        ),
    ] {
        let r = app.gql_as(&admin, UPDATE_ROLE, json!({ "i": input })).await;
        refused(&r, "updateRole", what);
    }
    assert_eq!(all_roles(&app, &root).await, before, "no role changed");
    assert_eq!(
        app.gql_as(&carol_t, ME, json!({})).await.ok().body,
        carol_before
    );
    assert_eq!(roles_of(&app, &root, &carol).await, ["helper", "reader"]);

    // What grants nothing new (the description, or the same grants) they may still change.
    app.gql_as(
        &admin,
        UPDATE_ROLE,
        json!({ "i": { "id": helper, "description": "reads users", "permissions": ["READ_USER"],
                       "channelIds": [default] } }),
    )
    .await
    .ok();
    // Once carol no longer holds it (removed by the superadmin), the role is theirs to change.
    app.gql_as(&root, REMOVE, json!({ "u": carol, "r": helper }))
        .await
        .ok();
    app.gql_as(
        &admin,
        UPDATE_ROLE,
        json!({ "i": { "id": helper, "permissions": ["READ_USER", "WRITE_USER"] } }),
    )
    .await
    .ok();
}

/// `SUPERADMIN_IDENTIFIER` names the user created on the first start only: once the superadmin
/// is renamed, whoever takes the name (a channel admin renaming themselves) gains nothing when
/// an instance starts, and the renamed superadmin stays the superadmin.
async fn the_superadmin_identifier_names_no_one_after_a_rename(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let root = app.admin_token().await;
    let root_id = my_id(&app, &root).await;
    let default = app.default_channel_id(&root).await;
    let (mallory, mallory_t) = user_admin(&app, &root, &default).await;
    app.gql_as(
        &root,
        UPDATE_USER,
        json!({ "i": { "id": root_id, "identifier": "root@corp" } }),
    )
    .await
    .ok();
    app.gql_as(
        &mallory_t,
        UPDATE_USER,
        json!({ "i": { "id": mallory, "identifier": ADMIN } }),
    )
    .await
    .ok();

    // A new instance of the deployment bootstraps on the same database.
    let next = app.sibling().await;
    let holds_super_admin = |r: &Gql| {
        r.data()["me"]["channels"]
            .as_array()
            .expect("channels")
            .iter()
            .any(|c| {
                c["permissions"]
                    .as_array()
                    .expect("permissions")
                    .contains(&json!("SUPER_ADMIN"))
            })
    };
    let (taker, _) = login(&app, ADMIN, "mallory-pw").await;
    let r = next.gql_as(&taker, ME, json!({})).await.ok();
    assert!(
        !holds_super_admin(&r),
        "the name's new holder became superadmin: {}",
        r.body
    );
    let r = next.gql_as(&taker, STATS, json!({})).await;
    refused(&r, "sessionStats", "a channel admin reads the statistics");
    assert_eq!(
        roles_of(&app, &root, &mallory).await,
        vec!["user-admin".to_string()]
    );

    let (renamed, _) = login(&app, "root@corp", ADMIN_PASSWORD).await;
    let r = next.gql_as(&renamed, ME, json!({})).await.ok();
    assert!(holds_super_admin(&r), "the renamed superadmin: {}", r.body);
    // The new instance still protects the renamed superadmin.
    let r = next
        .gql_as(
            &taker,
            UPDATE_USER,
            json!({ "i": { "id": root_id, "password": "owned-password" } }),
        )
        .await;
    refused(&r, "updateUser", "take over the renamed superadmin");
}

/// `cleanUpExpiredSessions` by an admin holding `REVOKE_SESSION` in one channel deletes the
/// revoked sessions of that channel only: those of another channel stay, for that channel's
/// admins to see, until a super admin or the background clean-up deletes them.
async fn clean_up_by_a_channel_admin_deletes_only_that_channels_sessions(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let root = app.admin_token().await;
    let (eu, eu_token) = app.create_channel(&root, "eu").await;
    let eu_admin = role_in(
        &app,
        &root,
        "eu-revoker",
        &["READ_SESSION", "REVOKE_SESSION"],
        &[&eu],
    )
    .await;
    let (_, admin, _) = user_with(&app, &root, "eurevoker", &[&eu_admin]).await;
    // A guest session in each channel, both revoked by the superadmin.
    let (_, default_sid) = app.anonymous_session().await;
    let r = TestApp::send(
        app.post("mutation { createAnonymousSession { id } }", json!({}))
            .header("channel-token", &eu_token),
    )
    .await
    .ok();
    let eu_sid = str_of(&r.data()["createAnonymousSession"]["id"]);
    for sid in [&default_sid, &eu_sid] {
        let r = app.gql_as(&root, REVOKE, json!({ "id": sid })).await.ok();
        assert_eq!(r.data()["revokeSession"], true, "{}", r.body);
    }
    let r = in_channel(
        &app,
        &admin,
        &eu_token,
        "mutation { cleanUpExpiredSessions }",
        json!({}),
    )
    .await
    .ok();
    assert_eq!(r.data()["cleanUpExpiredSessions"], 1, "{}", r.body);
    let kept = json!({ "f": { "includeInvalidated": true, "includeExpired": true } });
    let r = app.gql_as(&root, SESSIONS, kept.clone()).await.ok();
    let left = ids(&r.data()["sessions"]);
    assert!(left.contains(&default_sid), "{left:?}");
    assert!(!left.contains(&eu_sid), "{left:?}");
    // The superadmin's clean-up reaches every channel.
    let r = app
        .gql_as(&root, "mutation { cleanUpExpiredSessions }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["cleanUpExpiredSessions"], 1, "{}", r.body);
    let r = app.gql_as(&root, SESSIONS, kept).await.ok();
    assert!(!ids(&r.data()["sessions"]).contains(&default_sid));
}

/// A user reached through a listed session (or `user` / `users`) shows only the roles the
/// caller may see, as `roles` does: those with a channel where the caller holds `READ_USER`.
/// An eu admin listing eu sessions does not learn what their users hold in other channels, and
/// an admin with `READ_SESSION` only sees who owns a session but none of their roles.
async fn a_users_roles_show_only_within_the_callers_read_user_channels(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let root = app.admin_token().await;
    let default = app.default_channel_id(&root).await;
    let (eu, eu_token) = app.create_channel(&root, "eu").await;
    let eu_reader = role_in(
        &app,
        &root,
        "eu-reader",
        &["READ_SESSION", "READ_USER"],
        &[&eu],
    )
    .await;
    let eu_watcher = role_in(&app, &root, "eu-watcher", &["READ_SESSION"], &[&eu]).await;
    let eu_member = role_in(&app, &root, "eu-member", &[], &[&eu]).await;
    let default_staff = role_in(&app, &root, "default-staff", &["READ_ORDER"], &[&default]).await;
    // mia: a role in each channel, and a session active in eu.
    let (mia, mia_t, _) = user_with(&app, &root, "mia", &[&eu_member, &default_staff]).await;
    let r = app
        .gql_as(
            &mia_t,
            "mutation($t: String!) { setActiveChannel(token: $t) { id } }",
            json!({ "t": eu_token }),
        )
        .await
        .ok();
    assert!(r.data()["setActiveChannel"]["id"].is_string(), "{}", r.body);
    let listed = "{ sessions(first: 100) { nodes { user { identifier roles { code } } } } }";
    let mia_roles = |r: &Gql| -> Option<Vec<String>> {
        r.data()["sessions"]["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["user"]["identifier"] == "mia")
            .map(|n| {
                n["user"]["roles"]
                    .as_array()
                    .unwrap_or_else(|| panic!("roles: {}", r.body))
                    .iter()
                    .map(|x| str_of(&x["code"]))
                    .collect()
            })
    };
    let (_, reader, _) = user_with(&app, &root, "eureader", &[&eu_reader]).await;
    let r = in_channel(&app, &reader, &eu_token, listed, json!({}))
        .await
        .ok();
    assert_eq!(
        mia_roles(&r),
        Some(vec!["eu-member".to_string()]),
        "{}",
        r.body
    );
    let r = in_channel(&app, &reader, &eu_token, USER, json!({ "id": mia }))
        .await
        .ok();
    assert_eq!(
        r.data()["user"]["roles"],
        json!([{ "code": "eu-member" }]),
        "{}",
        r.body
    );
    let (_, watcher, _) = user_with(&app, &root, "euwatcher", &[&eu_watcher]).await;
    let r = in_channel(&app, &watcher, &eu_token, listed, json!({}))
        .await
        .ok();
    assert_eq!(mia_roles(&r), Some(vec![]), "{}", r.body);
    // The superadmin sees every role; mia sees her own.
    let r = in_channel(&app, &root, &eu_token, listed, json!({}))
        .await
        .ok();
    let mut all = mia_roles(&r).expect("mia's session");
    all.sort();
    assert_eq!(all, ["default-staff", "eu-member"], "{}", r.body);
    let r = app
        .gql_as(
            &mia_t,
            "{ activeSession { user { roles { code } } } }",
            json!({}),
        )
        .await
        .ok();
    let own = r.data()["activeSession"]["user"]["roles"]
        .as_array()
        .map(Vec::len);
    assert_eq!(own, Some(2), "{}", r.body);
}
