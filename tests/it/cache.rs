//! Cache behaviour: entries older than `SESSION_CACHE_TTL` are re-read from the database, and a
//! Redis that stops answering costs a cache miss, never a failed request.

use crate::helpers::{TestApp, Variant, ADMIN};
use crate::variants;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, Database, EntityTrait, QueryFilter};
use serde_json::json;
use std::time::Duration;

variants!(stale_entries_are_reread_after_the_cache_ttl);

/// Renames the superadmin behind the server's back (no invalidation): the cache keeps serving
/// the old name until its TTL, then the database is read again.
async fn stale_entries_are_reread_after_the_cache_ttl(v: Variant) {
    let Some(app) =
        TestApp::spawn_with(v, |c| c.session_cache_ttl = Duration::from_millis(1500)).await
    else {
        return;
    };
    let token = app.admin_token().await;
    let me = |t: String| {
        let app = &app;
        async move {
            app.gql_as(&t, "{ me { identifier } }", json!({}))
                .await
                .ok()
                .data()["me"]["identifier"]
                .clone()
        }
    };
    assert_eq!(me(token.clone()).await, ADMIN);
    let db = Database::connect(&app.database_url).await.unwrap();
    entity::user::Entity::update_many()
        .col_expr(
            entity::user::Column::Identifier,
            Expr::value("renamed-directly"),
        )
        .filter(entity::user::Column::Identifier.eq(ADMIN))
        .exec(&db)
        .await
        .unwrap();
    assert_eq!(
        me(token.clone()).await,
        ADMIN,
        "served from the cache within its TTL"
    );
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(
        me(token).await,
        "renamed-directly",
        "re-read from the database after the TTL"
    );
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_redis(port: u16) -> Option<std::process::Child> {
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn();
    match child {
        Ok(c) => Some(c),
        Err(_) => {
            assert!(
                std::env::var("REQUIRE_SERVICES").as_deref() != Ok("1"),
                "REQUIRE_SERVICES=1 but redis-server cannot be started"
            );
            eprintln!("skipped: redis-server is not installed");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failure_is_a_cache_miss_not_an_error() {
    let port = free_port();
    let Some(mut redis) = start_redis(port) else {
        return;
    };
    // Wait until it answers.
    let url = format!("redis://127.0.0.1:{port}");
    for _ in 0..50 {
        if redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let app = TestApp::spawn_with(Variant::SqliteMemory, |c| {
        c.redis_url = Some(url.clone());
        c.session_cache = session_server::config::CacheMode::Redis;
    })
    .await
    .expect("sqlite is always available");
    let token = app.admin_token().await;
    assert_eq!(
        app.active_session(&token).await["user"]["identifier"],
        ADMIN
    );

    redis.kill().unwrap();
    let _ = redis.wait();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let s = app.active_session(&token).await;
        assert_eq!(
            s["user"]["identifier"], ADMIN,
            "answered from the database while Redis is down"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }
    // Logging out still works and holds: the database is the truth.
    let r = app
        .gql_as(&token, "mutation { logout }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["logout"], true);
    assert!(app.active_session(&token).await.is_null());
}

variants!(sessions_slide_on_shared_caches_with_a_long_write_interval);

/// The shared cache learns of activity through the throttled writes; with the default
/// one-minute write interval and a three-second idle timeout, a session used every second must
/// still stay alive (the interval is capped at a quarter of the idle timeout).
async fn sessions_slide_on_shared_caches_with_a_long_write_interval(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.session_idle_timeout = Duration::from_secs(3);
        c.session_cache_ttl = Duration::from_secs(3600);
        c.session_activity_write_interval = Duration::from_secs(60);
    })
    .await
    else {
        return;
    };
    let token = app.admin_token().await;
    for second in 0..7 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !app.active_session(&token).await.is_null(),
            "the session expired after {} s of use every second",
            second + 1
        );
    }
}
