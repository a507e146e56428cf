//! Reads answered from the caller's cached session: `activeSession { user { id identifier
//! verified } }` runs no SQL statement once the cache is warm (counted by
//! `session_server_db_statements_total` in `/metrics`), a change to the user shows on the
//! user's next request, and fields the cache does not hold still load from the database.

use crate::helpers::{str_of, TestApp, Variant};
use serde_json::{json, Value};
use std::time::Duration;

crate::all_caches!(
    cached_session_user_needs_no_query_and_shows_a_new_identifier,
    cached_session_user_loads_other_fields_on_demand,
);

const SESSION_USER: &str = "{ activeSession { user { id identifier verified } } }";

/// A server whose background work (activity writes, clean-up) stays out of the way of the
/// statement counter during a test.
async fn spawn(v: Variant) -> Option<TestApp> {
    TestApp::spawn_with(v, |c| {
        c.session_activity_write_interval = Duration::from_secs(3600);
        c.cleanup_interval = Duration::from_secs(3600);
    })
    .await
}

/// `session_server_db_statements_total` from `/metrics`.
async fn statements(app: &TestApp) -> u64 {
    let text = app.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix("session_server_db_statements_total "))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no statement counter in /metrics:\n{text}")) as u64
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
