//! Reads answered from the caller's cached session: `activeSession { user { id identifier
//! verified } }` runs no SQL statement once the cache is warm (counted by
//! `session_server_db_statements_total` in `/metrics`), a change to the user shows on the
//! user's next request, and fields the cache does not hold still load from the database.

use crate::helpers::{str_of, Api, TestApp, Variant};
use serde_json::{json, Value};
use std::time::Duration;

crate::all_caches!(
    cached_session_user_needs_no_query_and_shows_a_new_identifier,
    cached_session_user_loads_other_fields_on_demand,
    warm_session_user_me_and_channels_run_no_statement,
    admin_listing_runs_a_fixed_number_of_statements,
    user_listing_runs_a_fixed_number_of_statements,
    warm_session_data_runs_no_statement,
    a_cold_session_read_is_one_statement,
);

const SESSION_USER: &str = "{ activeSession { user { id identifier verified } } }";

/// A server whose background work (activity writes, clean-up) stays out of the way of the
/// statement counter during a test.
pub(crate) async fn spawn(v: Variant) -> Option<TestApp> {
    TestApp::spawn_with(v, |c| {
        c.session_activity_write_interval = Duration::from_secs(3600);
        c.cleanup_interval = Duration::from_secs(3600);
        // A Redis reply slower than the timeout is a miss answered from the database, which
        // would add statements under a loaded machine: the counts are about the read path.
        c.redis_timeout = Duration::from_secs(10);
    })
    .await
}

/// `session_server_db_statements_total` from `/metrics`.
async fn statements(app: &TestApp) -> u64 {
    app.metric("session_server_db_statements_total").await
}

/// Runs `query` as `token` (it must succeed) and returns its data and the number of SQL
/// statements the server ran meanwhile.
pub(crate) async fn counted(app: &TestApp, token: &str, query: &str) -> (Value, u64) {
    let before = statements(app).await;
    let data = app
        .gql_as(token, query, json!({}))
        .await
        .ok()
        .data()
        .clone();
    (data, statements(app).await - before)
}

async fn cached_session_user_needs_no_query_and_shows_a_new_identifier(v: Variant) {
    let Some(app) = spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let alice = app.create_user(&admin, "alice", "alice-pw", &[]).await;
    let token = app.login("alice", "alice-pw").await.token;
    let expected = |identifier: &str| json!({ "activeSession": { "user": { "id": alice, "identifier": identifier, "verified": true } } });

    // Warm the cache, then the same read runs no statement.
    let (data, _) = counted(&app, &token, SESSION_USER).await;
    assert_eq!(data, expected("alice"));
    let (data, n) = counted(&app, &token, SESSION_USER).await;
    assert_eq!(data, expected("alice"));
    assert_eq!(
        n, 0,
        "a warm activeSession with its user ran {n} statements"
    );

    // An admin renames alice: her very next request shows it.
    let r = app
        .gql_as(
            &admin,
            "mutation($i: UpdateUserInput!) { updateUser(input: $i) { identifier } }",
            json!({ "i": { "id": alice, "identifier": "alice.renamed" } }),
        )
        .await
        .ok();
    assert_eq!(r.data()["updateUser"]["identifier"], "alice.renamed");
    let (data, _) = counted(&app, &token, SESSION_USER).await;
    assert_eq!(data, expected("alice.renamed"));
    // And from then on it comes from the cache again, still renamed.
    let (data, n) = counted(&app, &token, SESSION_USER).await;
    assert_eq!(data, expected("alice.renamed"));
    assert_eq!(
        n, 0,
        "a warm activeSession with its user ran {n} statements"
    );
}

async fn cached_session_user_loads_other_fields_on_demand(v: Variant) {
    let Some(app) = spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let reader = app.create_role(&admin, "reader", &["READ_SESSION"]).await;
    let alice = app
        .create_user(&admin, "alice", "alice-pw", &[&reader])
        .await;
    let token = app.login("alice", "alice-pw").await.token;

    // The database's view of alice, through the admin listing path.
    let r = app
        .gql_as(
            &admin,
            "query($id: ID!) { user(id: $id) { createdAt lastLoginAt } }",
            json!({ "id": alice }),
        )
        .await
        .ok();
    let row = r.data()["user"].clone();
    assert!(row["createdAt"].is_string(), "{row}");
    assert!(row["lastLoginAt"].is_string(), "{row}");

    let query = "{ activeSession { user { id identifier createdAt lastLoginAt roles { code } } } }";
    // Twice: the second on a warm cache, where only the fields the cache lacks load.
    for _ in 0..2 {
        let (data, _) = counted(&app, &token, query).await;
        let user = &data["activeSession"]["user"];
        assert_eq!(str_of(&user["id"]), alice);
        assert_eq!(user["identifier"], "alice");
        assert_eq!(user["createdAt"], row["createdAt"]);
        assert_eq!(user["lastLoginAt"], row["lastLoginAt"]);
        assert_eq!(user["roles"], json!([{ "code": "reader" }]));
    }
    // The row loads once for both timestamps.
    let (data, n) = counted(
        &app,
        &token,
        "{ activeSession { user { identifier createdAt lastLoginAt } } }",
    )
    .await;
    assert_eq!(data["activeSession"]["user"]["createdAt"], row["createdAt"]);
    assert_eq!(n, 1, "the user row should load once, not {n} times");
}

/// Runs `query` as `token` in the channel of `channel_token` (it must succeed) and returns its
/// data and the number of SQL statements the server ran meanwhile.
async fn counted_in(app: &TestApp, token: &str, channel_token: &str, query: &str) -> (Value, u64) {
    let before = statements(app).await;
    let r = Api::send(
        app.post(query, json!({}))
            .bearer_auth(token)
            .header("channel-token", channel_token),
    )
    .await
    .ok();
    (r.data().clone(), statements(app).await - before)
}

/// The read every storefront header sends, with `me` and the channel, in a non-default channel
/// named by `channel-token` and with the session's active channel set: none of it touches the
/// database once the cache is warm.
async fn warm_session_user_me_and_channels_run_no_statement(v: Variant) {
    let Some(app) = spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let (shop, shop_token) = app.create_channel(&admin, "shop").await;
    let buyer = app
        .create_role_in(&admin, "buyer", &["READ_SESSION"], &[&shop])
        .await;
    app.create_user(&admin, "alice", "alice-pw", &[&buyer])
        .await;
    let token = app.login("alice", "alice-pw").await.token;
    app.set_active_channel(&token, &shop_token).await;

    let query = "{ activeSession { current createdAt lastActiveAt expiresAt absoluteExpiresAt \
                 user { identifier } activeChannel { code } } \
                 me { identifier channels { channelCode permissions } } activeChannel { code } }";
    let expected = json!({
        "user": { "identifier": "alice" },
        "activeChannel": { "code": "shop" },
        "current": true,
    });
    for round in 0..3 {
        // The channel named by header, and the session's own (no header).
        let (data, n_header) = counted_in(&app, &token, &shop_token, query).await;
        let (plain, n_plain) = counted(&app, &token, query).await;
        for d in [&data, &plain] {
            let session = &d["activeSession"];
            for (k, v) in expected.as_object().unwrap() {
                assert_eq!(&session[k], v, "activeSession.{k} in {d}");
            }
            assert_eq!(d["me"]["identifier"], "alice", "{d}");
            assert_eq!(
                d["me"]["channels"],
                json!([{ "channelCode": "shop", "permissions": ["READ_SESSION"] }]),
                "{d}"
            );
            assert_eq!(d["activeChannel"]["code"], "shop", "{d}");
        }
        if round > 0 {
            assert_eq!(
                n_header, 0,
                "warm read with channel-token ran {n_header} statements"
            );
            assert_eq!(n_plain, 0, "warm read ran {n_plain} statements");
        }
    }
}

/// `n` users, each with a role in the default channel and one in a second channel, and `per`
/// logged-in sessions each: their ids, identifiers and role codes.
async fn populate(app: &TestApp, admin: &str, n: usize, per: usize) -> Vec<(String, String)> {
    let default = app.default_channel_id(admin).await;
    let (second, _) = app.create_channel(admin, "second").await;
    let mut users = Vec::new();
    for i in 0..n {
        let r1 = app
            .create_role_in(admin, &format!("r{i}a"), &["READ_SESSION"], &[&default])
            .await;
        let r2 = app
            .create_role_in(
                admin,
                &format!("r{i}b"),
                &["READ_USER"],
                &[&default, &second],
            )
            .await;
        let name = format!("user{i}");
        let id = app.create_user(admin, &name, "user-pw", &[&r1, &r2]).await;
        for k in 0..per {
            let token = app.login(&name, "user-pw").await.token;
            // Every user's first session holds an order (listed as `activeOrder`).
            if k == 0 {
                app.gql_as(&token, "mutation { createOrder { code } }", json!({}))
                    .await
                    .ok();
            }
        }
        users.push((id, name));
    }
    users
}

/// Checks one listed user against what `populate` made.
fn check_listed_user(user: &Value, per: usize) {
    let name = user["identifier"].as_str().expect("identifier").to_string();
    if name == "superadmin" {
        return;
    }
    let i = name.trim_start_matches("user");
    assert_eq!(
        user["roles"],
        json!([
            { "code": format!("r{i}a"), "channels": [{ "code": "default" }] },
            { "code": format!("r{i}b"), "channels": [{ "code": "default" }, { "code": "second" }] },
        ]),
        "{user}"
    );
    assert_eq!(user["activeSessionCount"], per, "{user}");
}

/// `sessions(first: 50)` with each session's user, the user's roles and their channels, and
/// the user's live session count: a fixed number of statements however many rows (page, users,
/// roles, channels, counts), not one per row.
async fn admin_listing_runs_a_fixed_number_of_statements(v: Variant) {
    let Some(app) = spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let per = 4;
    populate(&app, &admin, 12, per).await;
    let query = "{ sessions(first: 50) { nodes { id user { identifier roles { code channels { code } } activeSessionCount } } } }";
    for _ in 0..2 {
        let (data, n) = counted(&app, &admin, query).await;
        let nodes = data["sessions"]["nodes"].as_array().expect("nodes");
        assert_eq!(
            nodes.len(),
            49,
            "12 users × 4 sessions + the admin's: {data}"
        );
        for node in nodes {
            check_listed_user(&node["user"], per);
        }
        assert!(n <= 6, "the listing ran {n} statements (at most 6)");
    }
    // The same with edges, the total and the active orders: still a fixed number.
    let query = "{ sessions(first: 50) { totalCount edges { cursor node { user { identifier activeSessionCount } activeOrder { code user { identifier } } } } } }";
    let (data, n) = counted(&app, &admin, query).await;
    assert_eq!(data["sessions"]["totalCount"], 49, "{data}");
    let edges = data["sessions"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 49);
    let with_orders: Vec<&Value> = edges
        .iter()
        .filter(|e| !e["node"]["activeOrder"].is_null())
        .collect();
    assert_eq!(with_orders.len(), 12, "one order per user: {data}");
    for e in with_orders {
        assert_eq!(
            e["node"]["activeOrder"]["user"]["identifier"], e["node"]["user"]["identifier"],
            "{e}"
        );
    }
    assert!(
        n <= 6,
        "the listing with edges ran {n} statements (at most 6)"
    );
}

/// `users` with roles, channels and session counts, and `roles` with channels: fixed counts.
async fn user_listing_runs_a_fixed_number_of_statements(v: Variant) {
    let Some(app) = spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    populate(&app, &admin, 10, 2).await;
    let query = "{ users(first: 50) { totalCount nodes { identifier roles { code channels { code } } activeSessionCount } } }";
    let (data, n) = counted(&app, &admin, query).await;
    let nodes = data["users"]["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 11, "{data}");
    assert_eq!(data["users"]["totalCount"], 11, "{data}");
    for user in nodes {
        check_listed_user(user, 2);
    }
    assert!(n <= 6, "the user listing ran {n} statements (at most 6)");

    let (data, n) = counted(&app, &admin, "{ roles { code channels { code } } }").await;
    assert_eq!(data["roles"].as_array().unwrap().len(), 21, "{data}");
    assert!(n <= 2, "roles with channels ran {n} statements (at most 2)");
}

/// Reads served from each instance's cache follow a change made through another instance on
/// the very next request: a session's active channel, the channels a role grants (seen through
/// `me`), and a renamed user (seen through the cached `Session.user`).
async fn cached_reads_follow_changes_on_every_instance(mode: &str) {
    use crate::procs::pg_and_redis;
    use crate::scale::{own_prefix, start_instances};
    let Some((db, redis)) = pg_and_redis().await else {
        return;
    };
    let prefix = own_prefix();
    let url = redis.url();
    let servers = start_instances(
        3,
        &db,
        &[
            ("REDIS_URL", url.as_str()),
            ("SESSION_CACHE", mode),
            ("REDIS_KEY_PREFIX", prefix.as_str()),
        ],
    )
    .await;
    let [a, b, c] = [&servers[0], &servers[1], &servers[2]];
    let admin = a.admin_token().await;
    let default = a.default_channel_id(&admin).await;
    let (_, shop_token) = a.create_channel(&admin, "shop").await;
    let (outlet, _) = b.create_channel(&admin, "outlet").await;
    let role = a
        .create_role_in(&admin, "reader", &["READ_SESSION"], &[&default])
        .await;
    let alice = a.create_user(&admin, "alice", "alice-pw", &[&role]).await;
    let token = a.login("alice", "alice-pw").await.token;
    let query = "{ activeSession { user { identifier } activeChannel { code } } \
                 me { channels { channelCode } } activeChannel { code } }";
    let seen = |d: &Value| {
        (
            d["activeSession"]["user"]["identifier"].clone(),
            d["activeSession"]["activeChannel"]["code"].clone(),
            d["me"]["channels"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .map(|c| c["channelCode"].clone())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
            d["activeChannel"]["code"].clone(),
        )
    };
    let everywhere = |expected: (Value, Value, Vec<Value>, Value), what: &'static str| {
        let servers = &servers;
        let token = &token;
        async move {
            // Twice on each: the first read after the change, then one from the warm cache.
            for _ in 0..2 {
                for (i, s) in servers.iter().enumerate() {
                    let r = s.gql_as(token, query, json!({})).await.ok();
                    assert_eq!(seen(r.data()), expected, "{what}: instance {i}: {}", r.body);
                }
            }
        }
    };
    everywhere(
        (
            json!("alice"),
            Value::Null,
            vec![json!("default")],
            json!("default"),
        ),
        "before any change",
    )
    .await;

    // B moves the session to `shop`.
    b.set_active_channel(&token, &shop_token).await;
    everywhere(
        (
            json!("alice"),
            json!("shop"),
            vec![json!("default")],
            json!("shop"),
        ),
        "setActiveChannel through B",
    )
    .await;

    // C grants the role in `outlet` too.
    c.gql_as(
        &admin,
        "mutation($i: UpdateRoleInput!) { updateRole(input: $i) { id } }",
        json!({ "i": { "id": role, "channelIds": [default, outlet] } }),
    )
    .await
    .ok();
    everywhere(
        (
            json!("alice"),
            json!("shop"),
            vec![json!("default"), json!("outlet")],
            json!("shop"),
        ),
        "updateRole channels through C",
    )
    .await;

    // C writes session data: A and B read it on their next request.
    c.gql_as(
        &token,
        "mutation { updateSessionData(set: { locale: \"de\" }) { dataVersion } }",
        json!({}),
    )
    .await
    .ok();
    for _ in 0..2 {
        for (i, s) in servers.iter().enumerate() {
            let r = s
                .gql_as(&token, "{ activeSession { data dataVersion } }", json!({}))
                .await
                .ok();
            assert_eq!(
                r.data()["activeSession"],
                json!({ "data": { "locale": "de" }, "dataVersion": 1 }),
                "updateSessionData through C, instance {i}"
            );
        }
    }

    // A renames alice.
    a.gql_as(
        &admin,
        "mutation($i: UpdateUserInput!) { updateUser(input: $i) { id } }",
        json!({ "i": { "id": alice, "identifier": "alice.renamed" } }),
    )
    .await
    .ok();
    everywhere(
        (
            json!("alice.renamed"),
            json!("shop"),
            vec![json!("default"), json!("outlet")],
            json!("shop"),
        ),
        "updateUser identifier through A",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_follow_changes_on_every_instance_tiered() {
    cached_reads_follow_changes_on_every_instance("tiered").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_follow_changes_on_every_instance_redis() {
    cached_reads_follow_changes_on_every_instance("redis").await;
}

/// `activeSession { data }` (1 KiB of data) comes from the cache, right after an update too:
/// the update writes the new data through to the cache.
async fn warm_session_data_runs_no_statement(v: Variant) {
    let Some(app) = spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "alice", "alice-pw", &[]).await;
    let token = app.login("alice", "alice-pw").await.token;
    let note = "n".repeat(1000);
    let r = app
        .gql_as(
            &token,
            "mutation($s: JSON) { updateSessionData(set: $s) { dataVersion } }",
            json!({ "s": { "locale": "de", "note": note } }),
        )
        .await
        .ok();
    assert_eq!(r.data()["updateSessionData"]["dataVersion"], 1);
    let query = "{ activeSession { data dataVersion } }";
    for _ in 0..2 {
        let (data, n) = counted(&app, &token, query).await;
        assert_eq!(data["activeSession"]["data"]["locale"], "de");
        assert_eq!(data["activeSession"]["data"]["note"], note);
        assert_eq!(data["activeSession"]["dataVersion"], 1);
        assert_eq!(n, 0, "a warm read of session data ran {n} statements");
    }
}

/// On a cold cache the session, its user and the user's permissions in every channel come
/// from one statement (counted like every other), and the next request needs none.
async fn a_cold_session_read_is_one_statement(v: Variant) {
    let Some(app) = spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let reader = app.create_role(&admin, "reader", &["READ_SESSION"]).await;
    app.create_user(&admin, "alice", "alice-pw", &[&reader])
        .await;
    let token = app.login("alice", "alice-pw").await.token;
    let query = "{ activeSession { kind user { identifier } } me { identifier channels { channelCode permissions } } }";
    let expected = json!({
        "activeSession": { "kind": "AUTHENTICATED", "user": { "identifier": "alice" } },
        "me": { "identifier": "alice", "channels": [
            { "channelCode": "default", "permissions": ["READ_SESSION"] }
        ] },
    });
    let (data, _) = counted(&app, &token, query).await;
    assert_eq!(data, expected);
    app.gql_as(&admin, "mutation { clearSessionCache }", json!({}))
        .await
        .ok();
    let (data, n) = counted(&app, &token, query).await;
    assert_eq!(data, expected);
    assert_eq!(
        n, 1,
        "a cold read of the session with its user ran {n} statements"
    );
    let (data, n) = counted(&app, &token, query).await;
    assert_eq!(data, expected);
    assert_eq!(n, 0, "the warm read after it ran {n} statements");
}
