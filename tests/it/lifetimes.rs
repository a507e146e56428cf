//! Session lifetimes: idle timeout, sliding expiry on the cache path (Vendure #4457), absolute
//! timeout, the `expiresAt` formula, and activity reaching the database.

use crate::helpers::{TestApp, Variant};
use chrono::{DateTime, FixedOffset};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

crate::variants!(
    idle_session_expires,
    sliding_expiry_on_the_cache_path,
    absolute_timeout_ends_active_sessions,
    expires_at_is_the_earlier_limit,
    activity_reaches_the_database,
);

fn time(v: &Value) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap_or_else(|e| panic!("{v} is not RFC 3339: {e}"))
}

async fn idle_session_expires(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.session_idle_timeout = Duration::from_secs(2);
        c.session_absolute_timeout = Duration::from_secs(3600);
    })
    .await
    else {
        return;
    };
    let (anon, _) = app.anonymous_session().await;
    let user = app.admin_token().await;
    assert!(!app.active_session(&anon).await.is_null());
    assert!(!app.active_session(&user).await.is_null());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        app.active_session(&anon).await.is_null(),
        "idle anonymous session lives"
    );
    assert!(
        app.active_session(&user).await.is_null(),
        "idle user session lives"
    );
}

async fn sliding_expiry_on_the_cache_path(v: Variant) {
    // The cache TTL is far longer than half the idle timeout, so every request after the first
    // is served from the cache: expiry must slide there too.
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.session_idle_timeout = Duration::from_secs(3);
        c.session_absolute_timeout = Duration::from_secs(3600);
        c.session_cache_ttl = Duration::from_secs(3600);
        c.session_activity_write_interval = Duration::from_millis(500);
    })
    .await
    else {
        return;
    };
    let (token, id) = app.anonymous_session().await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(7) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = app.active_session(&token).await;
        assert_eq!(
            s["id"],
            id.as_str(),
            "session died after {:?} despite a request every second",
            start.elapsed()
        );
    }
    // And it still expires once left alone.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(app.active_session(&token).await.is_null());
}

async fn absolute_timeout_ends_active_sessions(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.session_idle_timeout = Duration::from_secs(2);
        c.session_absolute_timeout = Duration::from_secs(4);
        c.session_activity_write_interval = Duration::from_millis(500);
    })
    .await
    else {
        return;
    };
    let before = Instant::now();
    let (token, _) = app.anonymous_session().await;
    let after = Instant::now();
    let mut died_at = None;
    while before.elapsed() < Duration::from_millis(6000) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent_after_created = after.elapsed();
        let sent_after_start = before.elapsed();
        let alive = !app.active_session(&token).await.is_null();
        if sent_after_created < Duration::from_millis(3000) {
            // Past the idle timeout, kept alive by activity.
            assert!(alive, "died after {sent_after_created:?}");
        }
        if !alive && died_at.is_none() {
            died_at = Some(sent_after_start);
        }
        if died_at.is_some() {
            assert!(!alive, "came back to life");
        }
    }
    let died_at = died_at.expect("the session outlived its absolute timeout");
    // Polls are 0.5 s apart plus latency on a busy machine.
    assert!(died_at < Duration::from_millis(5000), "died at {died_at:?}");
}

async fn expires_at_is_the_earlier_limit(v: Variant) {
    const Q: &str = "{ activeSession { createdAt lastActiveAt expiresAt absoluteExpiresAt } }";
    // Idle limit binding: expiresAt = lastActiveAt + idle.
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.session_idle_timeout = Duration::from_secs(3600);
        c.session_absolute_timeout = Duration::from_secs(7200);
    })
    .await
    else {
        return;
    };
    let (token, _) = app.anonymous_session().await;
    let first = app.gql_as(&token, Q, json!({})).await.ok().data()["activeSession"].clone();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = app.gql_as(&token, Q, json!({})).await.ok().data()["activeSession"].clone();
    let tolerance = chrono::Duration::milliseconds(100);
    let hour = chrono::Duration::hours(1);
    for s in [&first, &second] {
        let (created, last, expires, absolute) = (
            time(&s["createdAt"]),
            time(&s["lastActiveAt"]),
            time(&s["expiresAt"]),
            time(&s["absoluteExpiresAt"]),
        );
        assert!((absolute - (created + hour * 2)).abs() <= tolerance, "{s}");
        assert!((expires - (last + hour)).abs() <= tolerance, "{s}");
        assert!(expires < absolute, "{s}");
        assert!(last >= created - tolerance, "{s}");
    }
    let moved = time(&second["lastActiveAt"]) - time(&first["lastActiveAt"]);
    assert!(
        moved >= chrono::Duration::milliseconds(900),
        "lastActiveAt moved by {moved}: {first} -> {second}"
    );
    assert!(time(&second["expiresAt"]) > time(&first["expiresAt"]));
    assert_eq!(first["createdAt"], second["createdAt"]);
    assert_eq!(first["absoluteExpiresAt"], second["absoluteExpiresAt"]);
    drop(app);

    // Absolute limit binding: with idle = absolute, any activity after creation makes
    // lastActiveAt + idle later than createdAt + absolute.
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.session_idle_timeout = Duration::from_secs(3600);
        c.session_absolute_timeout = Duration::from_secs(3600);
    })
    .await
    else {
        return;
    };
    let (token, _) = app.anonymous_session().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let s = app.gql_as(&token, Q, json!({})).await.ok().data()["activeSession"].clone();
    let (created, last, expires, absolute) = (
        time(&s["createdAt"]),
        time(&s["lastActiveAt"]),
        time(&s["expiresAt"]),
        time(&s["absoluteExpiresAt"]),
    );
    assert!(last - created >= chrono::Duration::milliseconds(900), "{s}");
    assert!((absolute - (created + hour)).abs() <= tolerance, "{s}");
    assert!((expires - absolute).abs() <= tolerance, "{s}");
    assert!(
        expires < last + hour - chrono::Duration::milliseconds(500),
        "{s}"
    );
}

async fn activity_reaches_the_database(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.session_activity_write_interval = Duration::from_millis(300);
    })
    .await
    else {
        return;
    };
    let admin = app.admin_token().await;
    let (token, id) = app.anonymous_session().await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!app.active_session(&token).await.is_null());
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = app
        .gql_as(
            &admin,
            "query($id: ID!) { session(id: $id) { id createdAt lastActiveAt } }",
            json!({ "id": id }),
        )
        .await
        .ok();
    let s = &r.data()["session"];
    assert_eq!(s["id"], id.as_str(), "{}", r.body);
    let lag = time(&s["lastActiveAt"]) - time(&s["createdAt"]);
    assert!(
        lag >= chrono::Duration::milliseconds(1000),
        "the stored lastActiveAt did not follow the activity: {s}"
    );
}
