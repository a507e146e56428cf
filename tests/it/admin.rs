//! Admin API: session listings (order, filters, expiry, cursor pagination), `session`,
//! `sessionStats`, revocation (one, by user, by active order), clean-up (on demand and in the
//! background), `clearSessionCache`, permission checks per channel, users/roles/channels,
//! `createChannel` / `createUser` rules, `mySessions` / `revokeMySession`, and the protected
//! superadmin.

use crate::helpers::{str_of, Gql, TestApp, Variant, ADMIN, ADMIN_PASSWORD};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

crate::variants!(
    sessions_newest_first_with_every_filter,
    expired_and_invalidated_sessions_only_on_request,
    cursor_pagination_walks_every_page,
    revoke_session_and_revoke_by_user,
    revoke_sessions_by_active_order,
    clean_up_deletes_every_batch_in_one_call,
    background_clean_up_runs_by_itself,
    clear_session_cache_needs_super_admin,
    permission_checks_per_channel,
    users_pagination_and_details,
    create_channel_rules,
    create_user_rules,
    my_sessions_lists_only_my_live_sessions,
    revoke_my_session_only_mine,
    superadmin_cannot_be_deleted,
);

// Interleavings forced with row locks (see each test).
crate::server_databases!(assigning_a_role_to_a_user_deleted_meanwhile_is_not_found,);

const SESSIONS: &str = "query($f: SessionFilter, $first: Int, $after: String) {
    sessions(filter: $f, first: $first, after: $after) {
        totalCount
        pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
        edges { cursor node { id kind invalidated } }
        nodes { id kind invalidated user { id identifier } }
    } }";

const STATS: &str =
    "{ sessionStats { anonymous authenticated expiredAwaitingCleanup invalidated } }";

/// Logs in: `(token, session id)`.
async fn login(app: &TestApp, user: &str, password: &str) -> (String, String) {
    let l = app.login(user, password).await;
    let id = str_of(&l.body["data"]["login"]["session"]["id"]);
    (l.token, id)
}

/// Runs `sessions` and checks that edges and nodes agree; returns the response.
async fn sessions(app: &TestApp, token: &str, filter: Value, first: Option<i64>) -> Gql {
    let r = app
        .gql_as(
            token,
            SESSIONS,
            json!({ "f": filter, "first": first, "after": null }),
        )
        .await
        .ok();
    check_edges_match_nodes(&r.data()["sessions"]);
    r
}

fn check_edges_match_nodes(conn: &Value) {
    let edges = conn["edges"].as_array().expect("edges");
    let nodes = conn["nodes"].as_array().expect("nodes");
    assert_eq!(edges.len(), nodes.len(), "{conn}");
    for (e, n) in edges.iter().zip(nodes) {
        assert_eq!(e["node"]["id"], n["id"], "{conn}");
        assert!(
            e["cursor"].as_str().is_some_and(|c| !c.is_empty()),
            "{conn}"
        );
    }
    if let (Some(first), Some(last)) = (edges.first(), edges.last()) {
        assert_eq!(conn["pageInfo"]["startCursor"], first["cursor"], "{conn}");
        assert_eq!(conn["pageInfo"]["endCursor"], last["cursor"], "{conn}");
    }
}

fn node_ids(conn: &Value) -> Vec<String> {
    conn["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| str_of(&n["id"]))
        .collect()
}

async fn ids_for(app: &TestApp, token: &str, filter: Value) -> Vec<String> {
    let r = sessions(app, token, filter, Some(100)).await;
    let conn = &r.data()["sessions"];
    let ids = node_ids(conn);
    assert_eq!(conn["totalCount"], ids.len(), "{conn}");
    ids
}

fn v(ids: &[&String]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

async fn stats(app: &TestApp, token: &str) -> Value {
    app.gql_as(token, STATS, json!({})).await.ok().data()["sessionStats"].clone()
}

async fn revoke(app: &TestApp, admin: &str, id: &str) -> bool {
    app.gql_as(
        admin,
        "mutation($id: ID!) { revokeSession(id: $id) }",
        json!({ "id": id }),
    )
    .await
    .ok()
    .data()["revokeSession"]
        .as_bool()
        .expect("a boolean")
}

async fn create_order(app: &TestApp, token: &str) -> String {
    let r = app
        .gql_as(token, "mutation { createOrder { id state } }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["createOrder"]["state"], "ACTIVE");
    str_of(&r.data()["createOrder"]["id"])
}

async fn sessions_newest_first_with_every_filter(v_: Variant) {
    let Some(app) = TestApp::spawn(v_).await else {
        return;
    };
    let (admin, admin_sid) = login(&app, ADMIN, ADMIN_PASSWORD).await;
    let default_channel = app.default_channel_id(&admin).await;
    let (eu_id, eu_token) = app.create_channel(&admin, "eu").await;
    let alice_id = app.create_user(&admin, "alice", "alice-pw", &[]).await;
    let (alice, alice_sid) = login(&app, "alice", "alice-pw").await;
    let order = create_order(&app, &alice).await;
    let (_a1, a1_sid) = app.anonymous_session().await;
    let (a2, a2_sid) = app.anonymous_session().await;
    let r = app
        .gql_as(
            &a2,
            "mutation($t: String!) { setActiveChannel(token: $t) { activeChannel { id } } }",
            json!({ "t": eu_token }),
        )
        .await
        .ok();
    assert_eq!(r.data()["setActiveChannel"]["activeChannel"]["id"], eu_id);
    let (_a3, a3_sid) = app.anonymous_session().await;
    assert!(revoke(&app, &admin, &a3_sid).await);

    // Newest first, the invalidated session left out.
    let all = ids_for(&app, &admin, json!(null)).await;
    assert_eq!(all, v(&[&a2_sid, &a1_sid, &alice_sid, &admin_sid]));
    assert_eq!(ids_for(&app, &admin, json!({})).await, all);
    let r = sessions(&app, &admin, json!({ "includeInvalidated": true }), None).await;
    let conn = &r.data()["sessions"];
    assert_eq!(
        node_ids(conn),
        v(&[&a3_sid, &a2_sid, &a1_sid, &alice_sid, &admin_sid])
    );
    assert_eq!(conn["nodes"][0]["invalidated"], true);
    assert_eq!(conn["nodes"][1]["invalidated"], false);
    assert_eq!(conn["totalCount"], 5);

    // userId
    assert_eq!(
        ids_for(&app, &admin, json!({ "userId": alice_id })).await,
        v(&[&alice_sid])
    );
    let r = sessions(&app, &admin, json!({ "userId": alice_id }), None).await;
    assert_eq!(
        r.data()["sessions"]["nodes"][0]["user"]["identifier"],
        "alice"
    );
    // kind
    assert_eq!(
        ids_for(&app, &admin, json!({ "kind": "ANONYMOUS" })).await,
        v(&[&a2_sid, &a1_sid])
    );
    assert_eq!(
        ids_for(&app, &admin, json!({ "kind": "AUTHENTICATED" })).await,
        v(&[&alice_sid, &admin_sid])
    );
    assert_eq!(
        ids_for(
            &app,
            &admin,
            json!({ "kind": "ANONYMOUS", "includeInvalidated": true })
        )
        .await,
        v(&[&a3_sid, &a2_sid, &a1_sid])
    );
    // channelId: a session without an active channel is in the default channel.
    assert_eq!(
        ids_for(&app, &admin, json!({ "channelId": eu_id })).await,
        v(&[&a2_sid])
    );
    assert_eq!(
        ids_for(&app, &admin, json!({ "channelId": default_channel })).await,
        v(&[&a1_sid, &alice_sid, &admin_sid])
    );
    // activeOrderId
    assert_eq!(
        ids_for(&app, &admin, json!({ "activeOrderId": order })).await,
        v(&[&alice_sid])
    );
    // Filters combine.
    assert!(ids_for(
        &app,
        &admin,
        json!({ "activeOrderId": order, "kind": "ANONYMOUS" })
    )
    .await
    .is_empty());
}

async fn expired_and_invalidated_sessions_only_on_request(v_: Variant) {
    let Some(app) = TestApp::spawn_with(v_, |c| {
        c.session_idle_timeout = Duration::from_secs(3);
        c.session_activity_write_interval = Duration::from_millis(200);
    })
    .await
    else {
        return;
    };
    let (expired, expired_sid) = app.anonymous_session().await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (admin, admin_sid) = login(&app, ADMIN, ADMIN_PASSWORD).await;
    let (_live, live_sid) = app.anonymous_session().await;
    let (_revoked, revoked_sid) = app.anonymous_session().await;
    assert!(revoke(&app, &admin, &revoked_sid).await);

    assert_eq!(
        ids_for(&app, &admin, json!(null)).await,
        v(&[&live_sid, &admin_sid])
    );
    assert_eq!(
        ids_for(&app, &admin, json!({ "includeExpired": true })).await,
        v(&[&live_sid, &admin_sid, &expired_sid])
    );
    assert_eq!(
        ids_for(&app, &admin, json!({ "includeInvalidated": true })).await,
        v(&[&revoked_sid, &live_sid, &admin_sid])
    );
    assert_eq!(
        ids_for(
            &app,
            &admin,
            json!({ "includeInvalidated": true, "includeExpired": true })
        )
        .await,
        v(&[&revoked_sid, &live_sid, &admin_sid, &expired_sid])
    );
    assert_eq!(
        stats(&app, &admin).await,
        json!({ "anonymous": 1, "authenticated": 1, "expiredAwaitingCleanup": 1, "invalidated": 1 })
    );
    // session(id:) finds sessions whatever their state.
    let r = app
        .gql_as(
            &admin,
            "query($id: ID!) { session(id: $id) { id kind invalidated current } }",
            json!({ "id": revoked_sid }),
        )
        .await
        .ok();
    assert_eq!(
        r.data()["session"],
        json!({ "id": revoked_sid, "kind": "ANONYMOUS", "invalidated": true, "current": false })
    );
    assert!(app.active_session(&expired).await.is_null());
}

async fn cursor_pagination_walks_every_page(v_: Variant) {
    let Some(app) = TestApp::spawn(v_).await else {
        return;
    };
    let admin = app.admin_token().await;
    let mut created = vec![];
    for _ in 0..5 {
        created.push(app.anonymous_session().await.1);
    }
    created.reverse(); // newest first
    let filter = json!({ "kind": "ANONYMOUS" });
    let mut seen: Vec<String> = vec![];
    let mut after: Option<String> = None;
    let mut pages = vec![];
    loop {
        let r = app
            .gql_as(
                &admin,
                SESSIONS,
                json!({ "f": filter, "first": 2, "after": after }),
            )
            .await
            .ok();
        let conn = r.data()["sessions"].clone();
        check_edges_match_nodes(&conn);
        assert_eq!(
            conn["totalCount"], 5,
            "totalCount counts every match: {conn}"
        );
        let ids = node_ids(&conn);
        pages.push((
            ids.len(),
            conn["pageInfo"]["hasNextPage"].as_bool().unwrap(),
            conn["pageInfo"]["hasPreviousPage"].as_bool().unwrap(),
        ));
        seen.extend(ids);
        if !conn["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            break;
        }
        after = Some(str_of(&conn["pageInfo"]["endCursor"]));
        assert!(pages.len() < 10, "pagination does not end");
    }
    assert_eq!(
        pages,
        vec![(2, true, false), (2, true, true), (1, false, true)]
    );
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no repeats: {seen:?}");
    assert_eq!(seen, created, "every session once, newest first");

    // first: 0 gives an empty page that still counts.
    let r = sessions(&app, &admin, filter.clone(), Some(0)).await;
    assert_eq!(r.data()["sessions"]["totalCount"], 5);
    assert_eq!(r.data()["sessions"]["nodes"], json!([]));

    // session(id:)
    let r = app
        .gql_as(
            &admin,
            "query($id: ID!) { session(id: $id) { id kind invalidated user { id } } }",
            json!({ "id": created[2] }),
        )
        .await
        .ok();
    assert_eq!(
        r.data()["session"],
        json!({ "id": created[2], "kind": "ANONYMOUS", "invalidated": false, "user": null })
    );
    let r = app
        .gql_as(
            &admin,
            "query($id: ID!) { session(id: $id) { id } }",
            json!({ "id": "987654321" }),
        )
        .await
        .ok();
    assert!(r.data()["session"].is_null());
}

async fn revoke_session_and_revoke_by_user(v_: Variant) {
    let Some(app) = TestApp::spawn(v_).await else {
        return;
    };
    let admin = app.admin_token().await;
    let alice_id = app.create_user(&admin, "alice", "alice-pw", &[]).await;
    let (s1, s1_id) = login(&app, "alice", "alice-pw").await;
    let (s2, _) = login(&app, "alice", "alice-pw").await;
    // Warm the cache.
    assert!(!app.active_session(&s1).await.is_null());
    assert!(!app.active_session(&s2).await.is_null());

    assert!(revoke(&app, &admin, &s1_id).await);
    assert!(
        app.active_session(&s1).await.is_null(),
        "a revoked token stops working at once"
    );
    assert!(!app.active_session(&s2).await.is_null());
    assert!(
        !revoke(&app, &admin, &s1_id).await,
        "already revoked: false"
    );
    assert!(!revoke(&app, &admin, "987654321").await, "no such session");

    let (s3, _) = login(&app, "alice", "alice-pw").await;
    assert!(!app.active_session(&s3).await.is_null());
    let (other, _) = app.anonymous_session().await;
    let r = app
        .gql_as(
            &admin,
            "mutation($u: ID!) { revokeSessionsByUser(userId: $u) }",
            json!({ "u": alice_id }),
        )
        .await
        .ok();
    assert_eq!(
        r.data()["revokeSessionsByUser"],
        2,
        "only live sessions count"
    );
    assert!(app.active_session(&s2).await.is_null());
    assert!(app.active_session(&s3).await.is_null());
    assert!(!app.active_session(&other).await.is_null());
    assert!(!app.active_session(&admin).await.is_null());
    let r = app
        .gql_as(
            &admin,
            "mutation($u: ID!) { revokeSessionsByUser(userId: $u) }",
            json!({ "u": alice_id }),
        )
        .await
        .ok();
    assert_eq!(r.data()["revokeSessionsByUser"], 0);
}

async fn revoke_sessions_by_active_order(v_: Variant) {
    let Some(app) = TestApp::spawn(v_).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "alice", "alice-pw", &[]).await;
    let (s1, _) = login(&app, "alice", "alice-pw").await;
    let order = create_order(&app, &s1).await;
    let (s2, _) = login(&app, "alice", "alice-pw").await;
    let r = app
        .gql_as(
            &s2,
            "mutation($o: ID!) { setActiveOrder(orderId: $o) { activeOrder { id } } }",
            json!({ "o": order }),
        )
        .await
        .ok();
    assert_eq!(r.data()["setActiveOrder"]["activeOrder"]["id"], order);
    let (s3, _) = login(&app, "alice", "alice-pw").await;
    let (guest, _) = app.anonymous_session().await;
    let guest_order = create_order(&app, &guest).await;
    assert_ne!(guest_order, order);
    for t in [&s1, &s2, &s3, &guest] {
        assert!(!app.active_session(t).await.is_null());
    }
    let q = "mutation($o: ID!) { revokeSessionsByActiveOrder(orderId: $o) }";
    let r = app.gql_as(&admin, q, json!({ "o": order })).await.ok();
    assert_eq!(r.data()["revokeSessionsByActiveOrder"], 2);
    assert!(app.active_session(&s1).await.is_null());
    assert!(app.active_session(&s2).await.is_null());
    assert!(
        !app.active_session(&s3).await.is_null(),
        "no active order: kept"
    );
    assert!(!app.active_session(&guest).await.is_null());
    let r = app.gql_as(&admin, q, json!({ "o": order })).await.ok();
    assert_eq!(r.data()["revokeSessionsByActiveOrder"], 0);
}

async fn clean_up_deletes_every_batch_in_one_call(v_: Variant) {
    let Some(app) = TestApp::spawn_with(v_, |c| {
        c.session_idle_timeout = Duration::from_secs(3);
        c.session_activity_write_interval = Duration::from_millis(200);
        c.cleanup_batch_size = 2;
    })
    .await
    else {
        return;
    };
    let mut doomed = vec![];
    for _ in 0..3 {
        doomed.push(app.anonymous_session().await.1);
    }
    tokio::time::sleep(Duration::from_millis(3800)).await;
    let (admin, admin_sid) = login(&app, ADMIN, ADMIN_PASSWORD).await;
    for _ in 0..3 {
        let id = app.anonymous_session().await.1;
        assert!(revoke(&app, &admin, &id).await);
        doomed.push(id);
    }
    let (live, live_sid) = app.anonymous_session().await;
    assert_eq!(
        stats(&app, &admin).await,
        json!({ "anonymous": 1, "authenticated": 1, "expiredAwaitingCleanup": 3, "invalidated": 3 })
    );
    let r = app
        .gql_as(&admin, "mutation { cleanUpExpiredSessions }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["cleanUpExpiredSessions"], 6);
    assert_eq!(
        stats(&app, &admin).await,
        json!({ "anonymous": 1, "authenticated": 1, "expiredAwaitingCleanup": 0, "invalidated": 0 })
    );
    let all = ids_for(
        &app,
        &admin,
        json!({ "includeExpired": true, "includeInvalidated": true }),
    )
    .await;
    assert_eq!(all, v(&[&live_sid, &admin_sid]));
    for id in &doomed {
        let r = app
            .gql_as(
                &admin,
                "query($id: ID!) { session(id: $id) { id } }",
                json!({ "id": id }),
            )
            .await
            .ok();
        assert!(r.data()["session"].is_null(), "session {id} was deleted");
    }
    assert!(!app.active_session(&live).await.is_null());
    let r = app
        .gql_as(&admin, "mutation { cleanUpExpiredSessions }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["cleanUpExpiredSessions"], 0);
}

async fn background_clean_up_runs_by_itself(v_: Variant) {
    let Some(app) = TestApp::spawn_with(v_, |c| {
        c.session_idle_timeout = Duration::from_secs(2);
        c.session_activity_write_interval = Duration::from_millis(100);
        c.cleanup_interval = Duration::from_millis(500);
    })
    .await
    else {
        return;
    };
    let (admin, _) = login(&app, ADMIN, ADMIN_PASSWORD).await;
    let (_r, revoked_sid) = app.anonymous_session().await;
    let (_e, expired_sid) = app.anonymous_session().await;
    let found = app
        .gql_as(
            &admin,
            "query($a: ID!, $b: ID!) { a: session(id: $a) { id } b: session(id: $b) { id } }",
            json!({ "a": revoked_sid, "b": expired_sid }),
        )
        .await
        .ok();
    assert_eq!(found.data()["a"]["id"], revoked_sid);
    assert_eq!(found.data()["b"]["id"], expired_sid);
    assert!(revoke(&app, &admin, &revoked_sid).await);

    let mut left = Value::Null;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (admin, _) = login(&app, ADMIN, ADMIN_PASSWORD).await;
        let r = sessions(
            &app,
            &admin,
            json!({ "kind": "ANONYMOUS", "includeExpired": true, "includeInvalidated": true }),
            Some(10),
        )
        .await;
        left = r.data()["sessions"].clone();
        if left["totalCount"] == 0 {
            return;
        }
    }
    panic!("the background clean-up did not delete the sessions: {left}");
}

async fn clear_session_cache_needs_super_admin(v_: Variant) {
    let Some(app) = TestApp::spawn(v_).await else {
        return;
    };
    let admin = app.admin_token().await;
    let reader = app.create_role(&admin, "reader", &["READ_SESSION"]).await;
    app.create_user(&admin, "bob", "bob-pw", &[&reader]).await;
    let (bob, _) = login(&app, "bob", "bob-pw").await;
    let (guest, guest_sid) = app.anonymous_session().await;
    stats(&app, &bob).await; // warm
                             // Carol's identifier is throttled (five wrong passwords): a clear must not lift it.
    app.create_user(&admin, "carol", "carol-pw", &[]).await;
    for _ in 0..5 {
        let r = app.try_login("carol", "wrong").await.ok();
        assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
    }
    // A revoked token's tombstone survives a clear too (Redis strategies keep it there).
    let (revoked, revoked_sid) = app.anonymous_session().await;
    app.gql_as(
        &admin,
        "mutation($id: ID!) { revokeSession(id: $id) }",
        json!({ "id": revoked_sid }),
    )
    .await
    .ok();

    let r = app
        .gql_as(&bob, "mutation { clearSessionCache }", json!({}))
        .await;
    assert_eq!(r.error_code(), Some("FORBIDDEN"), "{}", r.body);
    let r = app
        .gql_as(&admin, "mutation { clearSessionCache }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["clearSessionCache"], true);

    // Sessions are re-read from the database.
    let s = app.active_session(&bob).await;
    assert_eq!(s["user"]["identifier"], "bob");
    stats(&app, &bob).await;
    assert_eq!(app.active_session(&guest).await["id"], guest_sid);
    assert_eq!(
        app.active_session(&admin).await["user"]["identifier"],
        ADMIN
    );
    let r = app.try_login("carol", "carol-pw").await.ok();
    assert_eq!(
        r.data()["login"]["__typename"],
        "TooManyAttemptsError",
        "the clear lifted the throttle: {}",
        r.body
    );
    assert!(app.active_session(&revoked).await.is_null());
    // (On one Redis; the cluster variant's nodes are elsewhere.)
    if app.variant.uses_redis() && app.variant != Variant::SqliteRedisCluster {
        let hash = session_server::token::parse(&revoked)
            .expect("a token")
            .to_hex();
        let client = redis::Client::open(std::env::var("TEST_REDIS_URL").unwrap()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let key = format!("{}{{t:{hash}}}", app.redis_prefix);
        let kept: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(kept.as_deref(), Some("!"), "the tombstone of {key}");
    }
}

async fn permission_checks_per_channel(v_: Variant) {
    let Some(app) = TestApp::spawn(v_).await else {
        return;
    };
    let admin = app.admin_token().await;
    let (eu_id, eu_token) = app.create_channel(&admin, "eu").await;
    let reader = app.create_role(&admin, "reader", &["READ_SESSION"]).await;
    let eu_reader = app
        .create_role_in(&admin, "eu-reader", &["READ_SESSION"], &[&eu_id])
        .await;
    app.create_user(&admin, "plain", "plain-pw", &[]).await;
    app.create_user(&admin, "reader", "reader-pw", &[&reader])
        .await;
    app.create_user(&admin, "eureader", "eureader-pw", &[&eu_reader])
        .await;
    let (plain, _) = login(&app, "plain", "plain-pw").await;
    let (reader_t, _) = login(&app, "reader", "reader-pw").await;
    let (eu_t, _) = login(&app, "eureader", "eureader-pw").await;
    let (guest, guest_sid) = app.anonymous_session().await;

    // Without a token, or with an anonymous session: UNAUTHENTICATED.
    let r = app.gql(STATS, json!({})).await;
    assert_eq!(r.error_code(), Some("UNAUTHENTICATED"), "{}", r.body);
    assert!(r.data().is_null() || r.data()["sessionStats"].is_null());
    let r = app.gql_as(&guest, STATS, json!({})).await;
    assert_eq!(r.error_code(), Some("UNAUTHENTICATED"), "{}", r.body);
    let r = app.gql_as(&guest, "{ mySessions { id } }", json!({})).await;
    assert_eq!(r.error_code(), Some("UNAUTHENTICATED"), "{}", r.body);
    // Logged in without the permission: FORBIDDEN.
    for q in [
        STATS,
        "{ sessions { totalCount } }",
        "{ users { totalCount } }",
        "{ roles { id } }",
        "{ channels { id } }",
    ] {
        let r = app.gql_as(&plain, q, json!({})).await;
        assert_eq!(r.error_code(), Some("FORBIDDEN"), "{q}: {}", r.body);
    }
    // With the permission: allowed, and only that permission.
    stats(&app, &reader_t).await;
    let r = app
        .gql_as(&reader_t, "{ users { totalCount } }", json!({}))
        .await;
    assert_eq!(r.error_code(), Some("FORBIDDEN"), "{}", r.body);
    let r = app
        .gql_as(
            &reader_t,
            "mutation($id: ID!) { revokeSession(id: $id) }",
            json!({ "id": guest_sid }),
        )
        .await;
    assert_eq!(r.error_code(), Some("FORBIDDEN"), "{}", r.body);
    assert_eq!(
        app.active_session(&guest).await["id"],
        guest_sid,
        "a refused revocation changes nothing"
    );

    // A permission granted in another channel does not count in the default channel...
    let r = app.gql_as(&eu_t, STATS, json!({})).await;
    assert_eq!(r.error_code(), Some("FORBIDDEN"), "{}", r.body);
    // ...but does when that channel is selected, and then counts only sessions active there
    // (every login here is in the default channel).
    let r = TestApp::send(
        app.post(STATS, json!({}))
            .bearer_auth(&eu_t)
            .header("channel-token", &eu_token),
    )
    .await
    .ok();
    assert_eq!(r.data()["sessionStats"]["authenticated"], 0, "{}", r.body);
    // And the default-channel reader is refused in the other channel.
    let r = TestApp::send(
        app.post(STATS, json!({}))
            .bearer_auth(&reader_t)
            .header("channel-token", &eu_token),
    )
    .await;
    assert_eq!(r.error_code(), Some("FORBIDDEN"), "{}", r.body);
    // SUPER_ADMIN passes everywhere.
    TestApp::send(
        app.post(STATS, json!({}))
            .bearer_auth(&admin)
            .header("channel-token", &eu_token),
    )
    .await
    .ok();
}

async fn users_pagination_and_details(v_: Variant) {
    let Some(app) = TestApp::spawn(v_).await else {
        return;
    };
    let admin = app.admin_token().await;
    let (eu_id, _) = app.create_channel(&admin, "eu").await;
    let reader = app.create_role(&admin, "reader", &["READ_SESSION"]).await;
    let mut expected = vec![ADMIN.to_string()];
    let mut alice_id = String::new();
    for name in ["alice", "bob", "carol", "dave"] {
        let roles: Vec<&str> = if name == "alice" {
            vec![&reader]
        } else {
            vec![]
        };
        let id = app
            .create_user(&admin, name, &format!("{name}-pw"), &roles)
            .await;
        if name == "alice" {
            alice_id = id;
        }
        expected.push(name.to_string());
    }

    let q = "query($first: Int, $after: String) { users(first: $first, after: $after) {
        totalCount pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
        edges { cursor node { id identifier } } nodes { id identifier } } }";
    let mut seen = vec![];
    let mut after: Option<String> = None;
    let mut flags = vec![];
    loop {
        let r = app
            .gql_as(&admin, q, json!({ "first": 2, "after": after }))
            .await
            .ok();
        let conn = r.data()["users"].clone();
        check_edges_match_nodes(&conn);
        assert_eq!(conn["totalCount"], 5, "{conn}");
        for n in conn["nodes"].as_array().unwrap() {
            seen.push(str_of(&n["identifier"]));
        }
        let next = conn["pageInfo"]["hasNextPage"].as_bool().unwrap();
        flags.push((
            conn["nodes"].as_array().unwrap().len(),
            next,
            conn["pageInfo"]["hasPreviousPage"].as_bool().unwrap(),
        ));
        if !next {
            break;
        }
        after = Some(str_of(&conn["pageInfo"]["endCursor"]));
        assert!(flags.len() < 10, "pagination does not end");
    }
    assert_eq!(
        flags,
        vec![(2, true, false), (2, true, true), (1, false, true)]
    );
    assert_eq!(seen, expected, "every user once, in creation order");

    // user(id) with roles and the live session count.
    let (a1, a1_sid) = login(&app, "alice", "alice-pw").await;
    login(&app, "alice", "alice-pw").await;
    let uq = "query($id: ID!) { user(id: $id) { id identifier verified lastLoginAt
        activeSessionCount roles { id code permissions channels { code } } } }";
    let r = app.gql_as(&admin, uq, json!({ "id": alice_id })).await.ok();
    let u = &r.data()["user"];
    assert_eq!(u["identifier"], "alice");
    assert_eq!(u["verified"], true);
    assert!(u["lastLoginAt"].is_string(), "{u}");
    assert_eq!(u["activeSessionCount"], 2);
    assert_eq!(
        u["roles"],
        json!([{ "id": reader, "code": "reader", "permissions": ["READ_SESSION"], "channels": [{ "code": "default" }] }])
    );
    assert!(revoke(&app, &admin, &a1_sid).await);
    assert!(app.active_session(&a1).await.is_null());
    let r = app.gql_as(&admin, uq, json!({ "id": alice_id })).await.ok();
    assert_eq!(r.data()["user"]["activeSessionCount"], 1);
    let r = app
        .gql_as(&admin, uq, json!({ "id": "987654321" }))
        .await
        .ok();
    assert!(r.data()["user"].is_null());

    // roles and channels listings
    let r = app
        .gql_as(
            &admin,
            "{ roles { code permissions channels { code } } channels { id code token } }",
            json!({}),
        )
        .await
        .ok();
    let roles = r.data()["roles"].as_array().unwrap();
    let sa = roles
        .iter()
        .find(|r| r["code"] == "SUPER_ADMIN")
        .expect("the SUPER_ADMIN role is listed");
    assert!(sa["permissions"]
        .as_array()
        .unwrap()
        .contains(&json!("SUPER_ADMIN")));
    assert!(roles.iter().any(|r| r["code"] == "reader"));
    assert_eq!(roles.len(), 2);
    let channels = r.data()["channels"].as_array().unwrap();
    let codes: Vec<&str> = channels.iter().filter_map(|c| c["code"].as_str()).collect();
    assert_eq!(codes.len(), 2, "{channels:?}");
    assert!(codes.contains(&"default") && codes.contains(&"eu"));
    assert!(channels.iter().any(|c| c["id"] == eu_id));
}

async fn create_channel_rules(v_: Variant) {
    let Some(app) = TestApp::spawn(v_).await else {
        return;
    };
    let admin = app.admin_token().await;
    let q = "mutation($i: CreateChannelInput!) { createChannel(input: $i) { id code token createdAt } }";
    let r = app
        .gql_as(
            &admin,
            q,
            json!({ "i": { "code": "eu", "token": "eu-token" } }),
        )
        .await
        .ok();
    assert_eq!(r.data()["createChannel"]["code"], "eu");
    assert_eq!(r.data()["createChannel"]["token"], "eu-token");
    assert!(r.data()["createChannel"]["createdAt"].is_string());
    let r = app
        .gql_as(&admin, q, json!({ "i": { "code": "us" } }))
        .await
        .ok();
    let us_token = str_of(&r.data()["createChannel"]["token"]);
    assert!(!us_token.is_empty());
    assert_ne!(us_token, "eu-token");

    // The new channels answer to their tokens.
    for (token, code) in [("eu-token", "eu"), (us_token.as_str(), "us")] {
        let r = TestApp::send(
            app.post("{ activeChannel { code } }", json!({}))
                .header("channel-token", token),
        )
        .await
        .ok();
        assert_eq!(r.data()["activeChannel"]["code"], code);
    }

    // Duplicate code, duplicate token: BAD_USER_INPUT, nothing created.
    for input in [
        json!({ "code": "eu" }),
        json!({ "code": "eu", "token": "other-token" }),
        json!({ "code": "asia", "token": "eu-token" }),
    ] {
        let r = app.gql_as(&admin, q, json!({ "i": input })).await;
        assert_eq!(
            r.error_code(),
            Some("BAD_USER_INPUT"),
            "{input}: {}",
            r.body
        );
        assert_ne!(r.status, 500);
    }
    // Without a token: UNAUTHENTICATED.
    let r = app.gql(q, json!({ "i": { "code": "nope" } })).await;
    assert_eq!(r.error_code(), Some("UNAUTHENTICATED"), "{}", r.body);
    let r = app
        .gql_as(&admin, "{ channels { code } }", json!({}))
        .await
        .ok();
    let mut codes: Vec<String> = r.data()["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| str_of(&c["code"]))
        .collect();
    codes.sort();
    assert_eq!(codes, vec!["default", "eu", "us"]);
}

async fn create_user_rules(v_: Variant) {
    let Some(app) = TestApp::spawn(v_).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "alice", "alice-pw", &[]).await;
    let q = "mutation($i: CreateUserInput!) { createUser(input: $i) { id } }";
    let r = app
        .gql_as(
            &admin,
            q,
            json!({ "i": { "identifier": "alice", "password": "another-pw" } }),
        )
        .await;
    assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{}", r.body);
    let r = app
        .gql_as(
            &admin,
            q,
            json!({ "i": { "identifier": "bob", "password": "bob-pw", "roleIds": ["987654"] } }),
        )
        .await;
    assert_eq!(r.error_code(), Some("NOT_FOUND"), "{}", r.body);

    // Nothing changed: two users, alice's password unchanged, no bob.
    let r = app
        .gql_as(&admin, "{ users { totalCount } }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["users"]["totalCount"], 2);
    app.login("alice", "alice-pw").await;
    let r = app.try_login("alice", "another-pw").await.ok();
    assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
    let r = app.try_login("bob", "bob-pw").await.ok();
    assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
}

/// Logs in with a given User-Agent: `(token, session id)`.
async fn login_with_agent(
    app: &TestApp,
    user: &str,
    password: &str,
    agent: &str,
) -> (String, String) {
    let r = TestApp::send(
        app.post(
            "mutation($u: String!, $p: String!) { login(username: $u, password: $p) {
                ... on AuthenticationSuccess { session { id } } } }",
            json!({ "u": user, "p": password }),
        )
        .header("user-agent", agent),
    )
    .await
    .ok();
    (
        r.session_token().expect("session-token"),
        str_of(&r.data()["login"]["session"]["id"]),
    )
}

async fn my_sessions_lists_only_my_live_sessions(v_: Variant) {
    let Some(app) = TestApp::spawn(v_).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "alice", "alice-pw", &[]).await;
    app.create_user(&admin, "bob", "bob-pw", &[]).await;
    let (_phone, phone_sid) = login_with_agent(&app, "alice", "alice-pw", "phone/1.0").await;
    let (_gone, gone_sid) = login_with_agent(&app, "alice", "alice-pw", "old/1.0").await;
    let (laptop, laptop_sid) = login_with_agent(&app, "alice", "alice-pw", "laptop/2.0").await;
    login_with_agent(&app, "bob", "bob-pw", "bob/1.0").await;
    app.anonymous_session().await;
    assert!(revoke(&app, &admin, &gone_sid).await);

    let r = app
        .gql_as(
            &laptop,
            "{ mySessions { id current kind ipAddress userAgent user { identifier } } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(
        r.data()["mySessions"],
        json!([
            { "id": laptop_sid, "current": true, "kind": "AUTHENTICATED", "ipAddress": "127.0.0.1",
              "userAgent": "laptop/2.0", "user": { "identifier": "alice" } },
            { "id": phone_sid, "current": false, "kind": "AUTHENTICATED", "ipAddress": "127.0.0.1",
              "userAgent": "phone/1.0", "user": { "identifier": "alice" } },
        ])
    );
    let r = app.gql("{ mySessions { id } }", json!({})).await;
    assert_eq!(r.error_code(), Some("UNAUTHENTICATED"), "{}", r.body);
}

async fn revoke_my_session_only_mine(v_: Variant) {
    let Some(app) = TestApp::spawn(v_).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "alice", "alice-pw", &[]).await;
    app.create_user(&admin, "bob", "bob-pw", &[]).await;
    let (s1, s1_id) = login(&app, "alice", "alice-pw").await;
    let (s2, s2_id) = login(&app, "alice", "alice-pw").await;
    let (b1, b1_id) = login(&app, "bob", "bob-pw").await;
    for t in [&s1, &s2, &b1] {
        assert!(!app.active_session(t).await.is_null());
    }
    let q = "mutation($id: ID!) { revokeMySession(id: $id) }";
    let r = app.gql_as(&s1, q, json!({ "id": s2_id })).await.ok();
    assert_eq!(r.data()["revokeMySession"], true);
    assert!(app.active_session(&s2).await.is_null());
    let r = app.gql_as(&s1, q, json!({ "id": s2_id })).await.ok();
    assert_eq!(r.data()["revokeMySession"], false, "already revoked");

    let r = app.gql_as(&s1, q, json!({ "id": b1_id })).await.ok();
    assert_eq!(r.data()["revokeMySession"], false, "not alice's session");
    assert_eq!(app.active_session(&b1).await["id"], b1_id);
    let r = app.gql_as(&s1, q, json!({ "id": "987654321" })).await.ok();
    assert_eq!(r.data()["revokeMySession"], false);

    let r = app.gql_as(&s1, q, json!({ "id": s1_id })).await.ok();
    assert_eq!(r.data()["revokeMySession"], true);
    assert!(app.active_session(&s1).await.is_null());
    assert_eq!(app.active_session(&b1).await["id"], b1_id);
}

async fn superadmin_cannot_be_deleted(v_: Variant) {
    let Some(app) = TestApp::spawn(v_).await else {
        return;
    };
    let admin = app.admin_token().await;
    let r = app.gql_as(&admin, "{ me { id } }", json!({})).await.ok();
    let id = str_of(&r.data()["me"]["id"]);
    let r = app
        .gql_as(
            &admin,
            "mutation($id: ID!) { deleteUser(id: $id) }",
            json!({ "id": id }),
        )
        .await;
    assert!(r.error_code().is_some(), "refused: {}", r.body);
    assert_ne!(r.status, 500);
    assert!(r.data().is_null() || r.data()["deleteUser"].is_null());
    // Nothing changed.
    assert_eq!(
        app.active_session(&admin).await["user"]["identifier"],
        ADMIN
    );
    let r = app
        .gql_as(
            &admin,
            "query($id: ID!) { user(id: $id) { identifier } }",
            json!({ "id": id }),
        )
        .await
        .ok();
    assert_eq!(r.data()["user"]["identifier"], ADMIN);
    app.login(ADMIN, ADMIN_PASSWORD).await;
}

/// `assignRole` for a user that `deleteUser` removes while it runs: `NOT_FOUND`, never an
/// internal error. The test holds the role's row (the assignment waits there, after finding
/// the user) while the user is deleted.
async fn assigning_a_role_to_a_user_deleted_meanwhile_is_not_found(v: Variant) {
    use entity::role;
    use sea_orm::{ColumnTrait, Database, EntityTrait, QueryFilter};
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let reader = app.create_role(&admin, "reader", &["READ_SESSION"]).await;
    let dora = app.create_user(&admin, "dora", "dora-pw", &[]).await;
    let db = Database::connect(&app.database_url).await.expect("connect");
    let hold = crate::helpers::hold_rows(
        &db,
        role::Entity::find().filter(role::Column::Code.eq("reader")),
    )
    .await;
    let assign = tokio::spawn({
        let api = crate::helpers::Api::new(app.port, Duration::from_secs(30));
        let (admin, dora, reader) = (admin.clone(), dora.clone(), reader.clone());
        async move {
            api.gql_as(
                &admin,
                "mutation($u: ID!, $r: ID!) { assignRole(userId: $u, roleId: $r) { id } }",
                json!({ "u": dora, "r": reader }),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !assign.is_finished(),
        "the assignment did not wait for the role"
    );
    let r = app
        .gql_as(
            &admin,
            "mutation($id: ID!) { deleteUser(id: $id) }",
            json!({ "id": dora }),
        )
        .await
        .ok();
    assert_eq!(r.data()["deleteUser"], true);
    hold.commit().await.expect("release the role");
    let r = assign.await.expect("assign task");
    assert_ne!(r.status, 500, "{}", r.body);
    assert_eq!(r.error_code(), Some("NOT_FOUND"), "{}", r.body);
}
