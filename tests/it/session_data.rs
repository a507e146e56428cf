//! Session data (the contract's "Session data"): merge semantics, limits, versions, no lost
//! updates under concurrency, login carry-over, deletion on logout, and who may read it.

use crate::helpers::{str_of, Api, Gql, TestApp, Variant};
use serde_json::{json, Value};

crate::all_caches!(
    set_merges_and_unset_removes,
    bad_input_changes_nothing,
    stale_expected_version_is_a_conflict,
    concurrent_updates_of_different_keys_all_survive,
    exactly_one_writer_of_a_version_wins,
    login_carries_data_over_and_logout_deletes_it,
    other_sessions_data_needs_read_session,
);

const UPDATE: &str = "mutation($set: JSON, $unset: [String!], $v: Int) { \
    updateSessionData(set: $set, unset: $unset, expectedVersion: $v) { id data dataVersion } }";
const READ: &str = "{ activeSession { id data dataVersion } }";

async fn spawn(v: Variant) -> Option<TestApp> {
    TestApp::spawn_with(v, |c| {
        c.session_data_max_bytes = 200;
        c.anonymous_sessions_per_address = 0;
    })
    .await
}

async fn update(app: &TestApp, token: &str, vars: Value) -> Gql {
    app.gql_as(token, UPDATE, vars).await
}

/// `(data, dataVersion)` of the token's session.
async fn read(app: &TestApp, token: &str) -> (Value, i64) {
    let r = app.gql_as(token, READ, json!({})).await.ok();
    let s = &r.data()["activeSession"];
    (
        s["data"].clone(),
        s["dataVersion"].as_i64().expect("dataVersion"),
    )
}

/// A storefront with no session sets its locale: the call starts an anonymous session and
/// hands out its token; later calls merge and remove keys.
async fn set_merges_and_unset_removes(v: Variant) {
    let Some(app) = spawn(v).await else {
        return;
    };
    let r = app
        .gql(
            UPDATE,
            json!({ "set": { "locale": "de", "currency": "EUR" } }),
        )
        .await
        .ok();
    let token = r.session_token().expect("a new session's token");
    assert_eq!(
        r.data()["updateSessionData"]["data"],
        json!({ "locale": "de", "currency": "EUR" })
    );
    assert_eq!(r.data()["updateSessionData"]["dataVersion"], 1);
    assert_eq!(
        read(&app, &token).await,
        (json!({ "locale": "de", "currency": "EUR" }), 1)
    );

    let r = update(
        &app,
        &token,
        json!({ "set": { "currency": "CHF", "cart": { "items": [1, 2] } }, "unset": ["locale"] }),
    )
    .await
    .ok();
    assert!(
        r.session_token().is_none(),
        "no new session: {:?}",
        r.headers
    );
    let expected = json!({ "currency": "CHF", "cart": { "items": [1, 2] } });
    assert_eq!(r.data()["updateSessionData"]["data"], expected);
    assert_eq!(read(&app, &token).await, (expected, 2));

    // Unsetting every key leaves no data (null) and still counts as an update.
    let r = update(
        &app,
        &token,
        json!({ "unset": ["currency", "cart", "absent"] }),
    )
    .await
    .ok();
    assert_eq!(r.data()["updateSessionData"]["data"], Value::Null);
    assert_eq!(read(&app, &token).await, (Value::Null, 3));
}

async fn bad_input_changes_nothing(v: Variant) {
    let Some(app) = spawn(v).await else {
        return;
    };
    let long = "k".repeat(65);
    let big = "x".repeat(300);
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let refused = [
        json!({ "set": { "deep": deep } }),
        json!({ "set": [1, 2] }),
        json!({ "set": "text" }),
        json!({ "set": { "": 1 } }),
        json!({ "set": { long.clone(): 1 } }),
        json!({ "unset": [long.clone()] }),
        json!({ "unset": [""] }),
        json!({ "set": { "a": 1 }, "unset": ["a"] }),
        json!({ "set": { "big": big } }),
    ];
    // Without a session: refused, and no session is started for it.
    for vars in &refused {
        let r = app.gql(UPDATE, vars.clone()).await;
        assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{vars}: {}", r.body);
        assert!(r.session_token().is_none(), "{vars} started a session");
    }
    // With a session holding data: refused, data and version unchanged.
    let r = app
        .gql(UPDATE, json!({ "set": { "locale": "fr" } }))
        .await
        .ok();
    let token = r.session_token().unwrap();
    for vars in &refused {
        let r = update(&app, &token, vars.clone()).await;
        assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{vars}: {}", r.body);
        assert_eq!(
            read(&app, &token).await,
            (json!({ "locale": "fr" }), 1),
            "{vars}"
        );
    }
    // The limit applies to the merged object: two halves that fit alone do not fit together.
    let half = "y".repeat(100);
    update(&app, &token, json!({ "set": { "a": half } }))
        .await
        .ok();
    let r = update(&app, &token, json!({ "set": { "b": half } })).await;
    assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{}", r.body);
    let (data, version) = read(&app, &token).await;
    assert_eq!((data["b"].clone(), version), (Value::Null, 2));
    // Keys of exactly 64 characters (not bytes) are fine.
    let key: String = "é".repeat(64);
    update(
        &app,
        &token,
        json!({ "set": { key.clone(): 1 }, "unset": ["a"] }),
    )
    .await
    .ok();
    assert_eq!(read(&app, &token).await.0[&key], 1);
}

async fn stale_expected_version_is_a_conflict(v: Variant) {
    let Some(app) = spawn(v).await else {
        return;
    };
    let r = app
        .gql(UPDATE, json!({ "set": { "step": "cart" } }))
        .await
        .ok();
    let token = r.session_token().unwrap();
    let r = update(
        &app,
        &token,
        json!({ "set": { "step": "address" }, "v": 1 }),
    )
    .await
    .ok();
    assert_eq!(r.data()["updateSessionData"]["dataVersion"], 2);
    let r = update(
        &app,
        &token,
        json!({ "set": { "step": "payment" }, "v": 1 }),
    )
    .await;
    assert_eq!(r.error_code(), Some("CONFLICT"), "{}", r.body);
    assert_eq!(read(&app, &token).await, (json!({ "step": "address" }), 2));
    // No session yet: only version 0 can be expected.
    let r = app.gql(UPDATE, json!({ "set": { "a": 1 }, "v": 3 })).await;
    assert_eq!(r.error_code(), Some("CONFLICT"), "{}", r.body);
    assert!(r.session_token().is_none());
    let r = app
        .gql(UPDATE, json!({ "set": { "a": 1 }, "v": 0 }))
        .await
        .ok();
    assert_eq!(r.data()["updateSessionData"]["dataVersion"], 1);
}

/// tower-sessions' lost updates (its issues #35–37): twenty requests at once, each setting its
/// own key, all land, on the cached read and on the database's.
async fn concurrent_updates_of_different_keys_all_survive(v: Variant) {
    let Some(app) = spawn(v).await else {
        return;
    };
    let r = app.gql(UPDATE, json!({ "set": { "start": 0 } })).await.ok();
    let token = r.session_token().unwrap();
    let writers = (0..20).map(|i| {
        let api = Api::new(app.port, std::time::Duration::from_secs(60));
        let token = token.clone();
        async move {
            api.gql_as(&token, UPDATE, json!({ "set": { format!("k{i}"): i } }))
                .await
                .ok()
        }
    });
    futures_util::future::join_all(writers).await;
    let mut expected = serde_json::Map::new();
    expected.insert("start".into(), json!(0));
    for i in 0..20 {
        expected.insert(format!("k{i}"), json!(i));
    }
    let expected = Value::Object(expected);
    assert_eq!(
        read(&app, &token).await,
        (expected.clone(), 21),
        "cached read"
    );
    // And the database agrees once the cache is emptied.
    let admin = app.admin_token().await;
    app.gql_as(&admin, "mutation { clearSessionCache }", json!({}))
        .await
        .ok();
    assert_eq!(read(&app, &token).await, (expected, 21), "database read");
}

/// Ten writers that all saw version 1: exactly one wins, the others get CONFLICT.
async fn exactly_one_writer_of_a_version_wins(v: Variant) {
    let Some(app) = spawn(v).await else {
        return;
    };
    let r = app
        .gql(UPDATE, json!({ "set": { "seat": "none" } }))
        .await
        .ok();
    let token = r.session_token().unwrap();
    let writers = (0..10).map(|i| {
        let api = Api::new(app.port, std::time::Duration::from_secs(60));
        let token = token.clone();
        async move {
            api.gql_as(&token, UPDATE, json!({ "set": { "seat": i }, "v": 1 }))
                .await
        }
    });
    let results = futures_util::future::join_all(writers).await;
    let winners: Vec<&Gql> = results
        .iter()
        .filter(|r| r.error_code().is_none())
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "{:?}",
        results.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    for r in results.iter().filter(|r| r.error_code().is_some()) {
        assert_eq!(r.error_code(), Some("CONFLICT"), "{}", r.body);
    }
    let seat = winners[0].data()["updateSessionData"]["data"]["seat"].clone();
    assert_eq!(read(&app, &token).await, (json!({ "seat": seat }), 2));
}

/// A storefront sets locale and currency before login; they are still there after it (the
/// anonymous session's data moves to the new session), and logout deletes them.
async fn login_carries_data_over_and_logout_deletes_it(v: Variant) {
    let Some(app) = spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "alice", "alice-pw", &[]).await;
    let r = app
        .gql(
            UPDATE,
            json!({ "set": { "locale": "de", "currency": "EUR" } }),
        )
        .await
        .ok();
    let guest = r.session_token().unwrap();
    let guest_id = str_of(&r.data()["updateSessionData"]["id"]);
    let r = Api::send(
        app.post(
            "mutation { login(username: \"alice\", password: \"alice-pw\") { \
             ... on AuthenticationSuccess { session { id data } } } }",
            json!({}),
        )
        .bearer_auth(&guest),
    )
    .await
    .ok();
    let token = r.session_token().expect("login token");
    assert_eq!(
        r.data()["login"]["session"]["data"],
        json!({ "locale": "de", "currency": "EUR" })
    );
    assert_eq!(
        read(&app, &token).await.0,
        json!({ "locale": "de", "currency": "EUR" })
    );
    let session_id = str_of(&r.data()["login"]["session"]["id"]);

    // The guest session is gone, and its data with it.
    let q = "query($id: ID!) { session(id: $id) { invalidated data } }";
    let r = app.gql_as(&admin, q, json!({ "id": guest_id })).await.ok();
    assert_eq!(
        r.data()["session"],
        json!({ "invalidated": true, "data": null })
    );

    let r = app
        .gql_as(&token, "mutation { logout }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["logout"], true);
    let r = app
        .gql_as(&admin, q, json!({ "id": session_id }))
        .await
        .ok();
    assert_eq!(
        r.data()["session"],
        json!({ "invalidated": true, "data": null })
    );
}

/// A user sees the data of the session they call with; of their other sessions only with
/// READ_SESSION. Admins with READ_SESSION see it in listings.
async fn other_sessions_data_needs_read_session(v: Variant) {
    let Some(app) = spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "alice", "alice-pw", &[]).await;
    let first = app.login("alice", "alice-pw").await.token;
    let second = app.login("alice", "alice-pw").await.token;
    update(&app, &first, json!({ "set": { "device": "phone" } }))
        .await
        .ok();
    update(&app, &second, json!({ "set": { "device": "laptop" } }))
        .await
        .ok();
    let r = app
        .gql_as(&second, "{ mySessions { current data } }", json!({}))
        .await
        .ok();
    let sessions = r.data()["mySessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 2);
    for s in sessions {
        if s["current"] == true {
            assert_eq!(s["data"], json!({ "device": "laptop" }));
        } else {
            assert_eq!(s["data"], Value::Null, "another session's data leaked: {s}");
        }
    }
    let r = app
        .gql_as(
            &admin,
            "{ sessions(first: 10) { nodes { data } } }",
            json!({}),
        )
        .await
        .ok();
    let mut devices: Vec<Value> = r.data()["sessions"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["data"].get("device").cloned())
        .collect();
    devices.sort_by_key(|d| d.to_string());
    assert_eq!(devices, vec![json!("laptop"), json!("phone")]);
}
