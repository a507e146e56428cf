//! Reads that miss the session cache: the session, its user and the user's per-channel
//! permissions load in one SQL statement (counted by `session_server_db_statements_total`),
//! after `clearSessionCache` and with the cache turned off (`SESSION_CACHE_TTL` of 1 ms), and
//! the permissions so loaded are the union of the user's roles in each channel. Uncached reads
//! that arrive together share statements, and each still gets exactly its own session.

use crate::cache_reads::counted;
use crate::helpers::{str_of, TestApp, Variant};
use serde_json::{json, Value};
use std::time::Duration;

crate::all_caches!(
    a_cold_session_read_is_one_statement_after_a_cache_clear,
    with_the_cache_off_every_session_read_is_one_statement,
);

crate::variants!(uncached_reads_at_the_same_time_share_statements_and_each_gets_its_own);

const SESSION_USER: &str = "{ activeSession { user { identifier } } }";

/// `me`'s channels as `code -> sorted permissions`, for comparing regardless of order.
async fn grants(app: &TestApp, token: &str) -> Value {
    let r = app
        .gql_as(
            token,
            "{ me { channels { channelCode permissions } } }",
            json!({}),
        )
        .await
        .ok();
    let mut out = serde_json::Map::new();
    for c in r.data()["me"]["channels"].as_array().expect("channels") {
        let mut perms: Vec<String> = c["permissions"]
            .as_array()
            .expect("permissions")
            .iter()
            .map(|p| p.as_str().expect("a permission").to_string())
            .collect();
        perms.sort();
        let code = c["channelCode"].as_str().expect("a code").to_string();
        assert!(out.insert(code, json!(perms)).is_none(), "a channel twice");
    }
    Value::Object(out)
}

/// Alice holds two roles: `READ_SESSION` in the default channel and `eu`, and `READ_USER` in the
/// default channel. Returns the app's admin token and alice's token.
async fn alice_with_two_roles(app: &TestApp) -> (String, String) {
    let admin = app.admin_token().await;
    let default = app.default_channel_id(&admin).await;
    let (eu, _) = app.create_channel(&admin, "eu").await;
    let sessions = app
        .create_role_in(&admin, "sessions", &["READ_SESSION"], &[&default, &eu])
        .await;
    let users = app
        .create_role_in(&admin, "users", &["READ_USER"], &[&default])
        .await;
    app.create_user(&admin, "alice", "alice-pw", &[&sessions, &users])
        .await;
    let token = app.login("alice", "alice-pw").await.token;
    (admin, token)
}

fn alice_grants() -> Value {
    json!({ "default": ["READ_SESSION", "READ_USER"], "eu": ["READ_SESSION"] })
}

async fn a_cold_session_read_is_one_statement_after_a_cache_clear(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        // No background writes during the count.
        c.session_activity_write_interval = Duration::from_secs(3600);
        c.cleanup_interval = Duration::from_secs(3600);
    })
    .await
    else {
        return;
    };
    let (admin, alice) = alice_with_two_roles(&app).await;
    let expected = json!({ "activeSession": { "user": { "identifier": "alice" } } });
    let (data, _) = counted(&app, &alice, SESSION_USER).await;
    assert_eq!(data, expected);

    for round in 0..2 {
        let r = app
            .gql_as(&admin, "mutation { clearSessionCache }", json!({}))
            .await
            .ok();
        assert_eq!(r.data()["clearSessionCache"], true);
        let (data, n) = counted(&app, &alice, SESSION_USER).await;
        assert_eq!(data, expected);
        assert_eq!(
            n, 1,
            "round {round}: a cold activeSession with its user ran {n} statements, not one"
        );
        // What that one statement loaded is what the roles grant.
        assert_eq!(grants(&app, &alice).await, alice_grants(), "round {round}");
    }
    // An anonymous session reads in one statement too.
    let (anonymous, _) = app.anonymous_session().await;
    app.gql_as(&admin, "mutation { clearSessionCache }", json!({}))
        .await
        .ok();
    let (data, n) = counted(&app, &anonymous, "{ activeSession { kind user { id } } }").await;
    assert_eq!(
        data,
        json!({ "activeSession": { "kind": "ANONYMOUS", "user": null } })
    );
    assert_eq!(n, 1, "a cold anonymous activeSession ran {n} statements");
}

async fn with_the_cache_off_every_session_read_is_one_statement(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.session_cache_ttl = Duration::from_millis(1);
        c.session_activity_write_interval = Duration::from_secs(3600);
        c.cleanup_interval = Duration::from_secs(3600);
    })
    .await
    else {
        return;
    };
    let (admin, alice) = alice_with_two_roles(&app).await;
    let expected = json!({ "activeSession": { "user": { "identifier": "alice" } } });
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (data, n) = counted(&app, &alice, SESSION_USER).await;
        assert_eq!(data, expected);
        assert_eq!(
            n, 1,
            "an uncached activeSession with its user ran {n} statements"
        );
    }
    assert_eq!(grants(&app, &alice).await, alice_grants());

    // Read uncached, a change to the user shows at once and a logout holds at once.
    let r = app
        .gql_as(
            &admin,
            "mutation($i: UpdateUserInput!) { updateUser(input: $i) { identifier } }",
            json!({ "i": { "id": user_id(&app, &alice).await, "identifier": "alice2" } }),
        )
        .await
        .ok();
    assert_eq!(r.data()["updateUser"]["identifier"], "alice2");
    let (data, _) = counted(&app, &alice, SESSION_USER).await;
    assert_eq!(
        data,
        json!({ "activeSession": { "user": { "identifier": "alice2" } } })
    );
    let r = app
        .gql_as(&alice, "mutation { logout }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["logout"], true);
    assert!(app.active_session(&alice).await.is_null());
}

async fn user_id(app: &TestApp, token: &str) -> String {
    let r = app
        .gql_as(token, "{ activeSession { user { id } } }", json!({}))
        .await
        .ok();
    str_of(&r.data()["activeSession"]["user"]["id"])
}

async fn uncached_reads_at_the_same_time_share_statements_and_each_gets_its_own(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.session_cache_ttl = Duration::from_millis(1);
        // Two reads out at most, whatever the machine's cores: the rest must queue.
        c.database_max_connections = 2;
        c.session_activity_write_interval = Duration::from_secs(3600);
        c.cleanup_interval = Duration::from_secs(3600);
    })
    .await
    else {
        return;
    };
    const QUERY: &str = "{ activeSession { id kind user { identifier } } }";
    let (_admin, alice) = alice_with_two_roles(&app).await;
    let alice_id = str_of(
        &app.gql_as(&alice, "{ activeSession { id } }", json!({}))
            .await
            .ok()
            .data()["activeSession"]["id"],
    );
    // Token -> the exact answer it must get.
    let mut cases: Vec<(String, Value)> = vec![(
        alice.clone(),
        json!({ "activeSession": { "id": alice_id, "kind": "AUTHENTICATED", "user": { "identifier": "alice" } } }),
    )];
    for _ in 0..24 {
        let (token, id) = app.anonymous_session().await;
        cases.push((
            token,
            json!({ "activeSession": { "id": id, "kind": "ANONYMOUS", "user": null } }),
        ));
    }
    // A session that has ended, and a well-formed token that was never issued.
    let (ended, _) = app.anonymous_session().await;
    let r = app
        .gql_as(&ended, "mutation { logout }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["logout"], true);
    cases.push((ended, json!({ "activeSession": null })));
    let (issued, _) = app.anonymous_session().await;
    let first = if issued.starts_with('A') { "B" } else { "A" };
    cases.push((
        format!("{first}{}", &issued[1..]),
        json!({ "activeSession": null }),
    ));

    tokio::time::sleep(Duration::from_millis(5)).await;
    let before = app.metric("session_server_db_statements_total").await;
    const REQUESTS: usize = 240;
    let answers = futures_util::future::join_all((0..REQUESTS).map(|i| {
        let (token, expected) = &cases[i % cases.len()];
        let app = &app;
        async move { (app.gql_as(token, QUERY, json!({})).await.ok(), expected) }
    }))
    .await;
    for (answer, expected) in answers {
        assert_eq!(answer.data(), expected);
    }
    let n = app.metric("session_server_db_statements_total").await - before;
    println!("{REQUESTS} uncached reads at once ran {n} statements");
    assert!(
        n <= REQUESTS as u64 * 3 / 4,
        "{REQUESTS} uncached reads at once ran {n} statements"
    );
}
