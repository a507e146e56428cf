//! Scale-out: three real server processes sharing one PostgreSQL database and one Redis. A
//! logout, a revocation, a role removal and password changes made through one instance hold on
//! the others on their very next request (`redis` and `tiered` caches, warmed first); the
//! `memory` cache still works across instances; login throttling is shared through Redis; a
//! `tiered` instance that stops is not waited for.

use crate::procs::{pg_and_redis, PgDatabase, ServerProc};
use serde_json::json;
use std::time::Duration;

const SESSIONS: &str = "{ sessions(first: 1) { totalCount } }";

/// Starts `n` servers on `db` (the first alone, so it applies the migrations), all with `env`.
pub async fn start_instances(n: usize, db: &PgDatabase, env: &[(&str, &str)]) -> Vec<ServerProc> {
    let mut full: Vec<(&str, &str)> = vec![("DATABASE_URL", db.url.as_str())];
    full.extend_from_slice(env);
    let first = ServerProc::spawn(&full).await;
    let rest = futures_util::future::join_all((1..n).map(|_| ServerProc::spawn(&full))).await;
    std::iter::once(first).chain(rest).collect()
}

/// A Redis key prefix of this test's own.
pub fn own_prefix() -> String {
    format!(
        "ss-scale-{}:",
        session_server::token::random_string(8).replace(['-', '_'], "x")
    )
}

/// Asserts that `token` is alice's live session on every server (and so warms their caches).
async fn warm(servers: &[ServerProc], token: &str) {
    for (i, s) in servers.iter().enumerate() {
        let session = s.active_session(token).await;
        assert_eq!(
            session["user"]["identifier"], "alice",
            "instance {i} before the change: {session}"
        );
    }
}

/// Asserts that `token` no longer works on any of `servers`: their very next request.
async fn gone_everywhere(servers: &[&ServerProc], token: &str, what: &str) {
    for (i, s) in servers.iter().enumerate() {
        let session = s.active_session(token).await;
        assert!(
            session.is_null(),
            "{what}: instance {i} still serves the session: {session}"
        );
    }
}

/// The whole multi-instance invalidation scenario against a Redis at `redis_url` (a single
/// server or `redis-cluster://…`) with the cache strategy `mode`. The other instances are asked
/// `settle` after each change: zero means their very next request.
pub async fn invalidations_hold_on_every_instance(
    db: &PgDatabase,
    redis_url: &str,
    mode: &str,
    settle: Duration,
) {
    let prefix = own_prefix();
    let servers = start_instances(
        3,
        db,
        &[
            ("REDIS_URL", redis_url),
            ("SESSION_CACHE", mode),
            ("REDIS_KEY_PREFIX", &prefix),
        ],
    )
    .await;
    let [a, b, c] = [&servers[0], &servers[1], &servers[2]];
    let admin = a.admin_token().await;
    let role = a.create_role(&admin, "reader", &["READ_SESSION"]).await;
    let alice = a
        .create_user(&admin, "alice", "password-one", &[&role])
        .await;

    // Logout through B.
    let t = a.login("alice", "password-one").await.token;
    warm(&servers, &t).await;
    let r = b.gql_as(&t, "mutation { logout }", json!({})).await.ok();
    assert_eq!(r.data()["logout"], true);
    tokio::time::sleep(settle).await;
    gone_everywhere(&[a, c, b], &t, "logout through B").await;

    // revokeSession (superadmin) through A.
    let t = c.login("alice", "password-one").await.token;
    warm(&servers, &t).await;
    let id = c.active_session(&t).await["id"].clone();
    let r = a
        .gql_as(
            &admin,
            "mutation($id: ID!) { revokeSession(id: $id) }",
            json!({ "id": id }),
        )
        .await
        .ok();
    assert_eq!(r.data()["revokeSession"], true);
    tokio::time::sleep(settle).await;
    gone_everywhere(&[b, c, a], &t, "revokeSession through A").await;

    // removeRole through C: FORBIDDEN on A and B at once; the session itself lives on.
    let t = a.login("alice", "password-one").await.token;
    warm(&servers, &t).await;
    for (i, s) in servers.iter().enumerate() {
        let r = s.gql_as(&t, SESSIONS, json!({})).await;
        assert!(r.error_code().is_none(), "instance {i}: {}", r.body);
    }
    c.gql_as(
        &admin,
        "mutation($u: ID!, $r: ID!) { removeRole(userId: $u, roleId: $r) { id } }",
        json!({ "u": alice, "r": role }),
    )
    .await
    .ok();
    tokio::time::sleep(settle).await;
    for (i, s) in [a, b, c].iter().enumerate() {
        let r = s.gql_as(&t, SESSIONS, json!({})).await;
        assert_eq!(
            r.error_code(),
            Some("FORBIDDEN"),
            "removeRole through C, instance {i}: {}",
            r.body
        );
    }
    warm(&servers, &t).await;

    // A new password set by an admin through A ends alice's sessions on B and C.
    let t2 = b.login("alice", "password-one").await.token;
    warm(&servers, &t2).await;
    let r = a
        .gql_as(
            &admin,
            "mutation($i: UpdateUserInput!) { updateUser(input: $i) { id } }",
            json!({ "i": { "id": alice, "password": "password-two" } }),
        )
        .await;
    r.ok();
    tokio::time::sleep(settle).await;
    gone_everywhere(&[b, c, a], &t2, "updateUser password through A").await;
    gone_everywhere(
        &[b, c, a],
        &t,
        "updateUser password through A (older session)",
    )
    .await;

    // changePassword through C ends alice's other sessions on A and B; the caller's lives.
    let mine = a.login("alice", "password-two").await.token;
    let other = b.login("alice", "password-two").await.token;
    warm(&servers, &mine).await;
    warm(&servers, &other).await;
    let r = c
        .gql_as(
            &mine,
            "mutation { changePassword(currentPassword: \"password-two\", newPassword: \"password-three\") }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(r.data()["changePassword"], true);
    tokio::time::sleep(settle).await;
    gone_everywhere(&[a, b, c], &other, "changePassword through C").await;
    warm(&servers, &mine).await;
    assert_eq!(
        b.try_login("alice", "password-two").await.data()["login"]["__typename"],
        "InvalidCredentialsError"
    );
    b.login("alice", "password-three").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_hold_on_every_instance_redis() {
    let Some((db, redis)) = pg_and_redis().await else {
        return;
    };
    invalidations_hold_on_every_instance(&db, &redis.url(), "redis", Duration::ZERO).await;
}

/// The issue's rule for `tiered`: the very next request, with no pause. This holds because the
/// instance making a change waits until every live peer has acknowledged the invalidation;
/// with publish-and-forget it failed about one run in six under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_hold_on_every_instance_tiered() {
    let Some((db, redis)) = pg_and_redis().await else {
        return;
    };
    invalidations_hold_on_every_instance(&db, &redis.url(), "tiered", Duration::ZERO).await;
}

/// `tiered` with a short pause after each change: the invalidations reach every instance's
/// in-process tier (whose entries would otherwise live for the 5-minute cache TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_every_instance_tiered() {
    let Some((db, redis)) = pg_and_redis().await else {
        return;
    };
    let settle = Duration::from_millis(300);
    invalidations_hold_on_every_instance(&db, &redis.url(), "tiered", settle).await;
}

/// An instance that stops gracefully tells its peers, and they stop waiting for it at once: a
/// change right after it left completes without waiting out the acknowledgement limit (1.5 s,
/// for as long as the stopped instance was heard less than 3 s ago).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_tiered_instance_is_not_waited_for() {
    let Some((db, redis)) = pg_and_redis().await else {
        return;
    };
    let prefix = own_prefix();
    let servers = start_instances(
        2,
        &db,
        &[
            ("REDIS_URL", &redis.url()),
            ("SESSION_CACHE", "tiered"),
            ("REDIS_KEY_PREFIX", &prefix),
        ],
    )
    .await;
    let [leaving, staying] = [&servers[0], &servers[1]];
    let tokens = [
        staying.anonymous_session().await.0,
        staying.anonymous_session().await.0,
    ];
    // Long enough for both to have heard each other's heartbeats; a logout now waits for the
    // other instance's acknowledgement, which it sends.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = staying
        .gql_as(&tokens[0], "mutation { logout }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["logout"], true);

    leaving.terminate();
    let status = leaving.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some(), "the instance did not stop");
    let started = std::time::Instant::now();
    let r = staying
        .gql_as(&tokens[1], "mutation { logout }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["logout"], true);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "a logout right after the other instance stopped took {took:?}: it waited for the stopped instance"
    );
    assert!(staying.active_session(&tokens[1]).await.is_null());
}

/// With the in-process cache, instances share nothing but the database: a token issued by one
/// works on the others, and users created on one log in on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cache_instances_share_the_database() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let servers = start_instances(3, &db, &[("SESSION_CACHE", "memory")]).await;
    let [a, b, c] = [&servers[0], &servers[1], &servers[2]];
    let admin = a.admin_token().await;
    for s in [b, c] {
        assert_eq!(
            s.active_session(&admin).await["user"]["identifier"],
            "superadmin"
        );
        let r = s.gql_as(&admin, SESSIONS, json!({})).await.ok();
        assert!(r.data()["sessions"]["totalCount"].as_i64().unwrap() >= 1);
    }
    a.create_user(&admin, "bob", "bob-password", &[]).await;
    let bob = b.login("bob", "bob-password").await.token;
    assert_eq!(c.active_session(&bob).await["user"]["identifier"], "bob");
    assert_eq!(a.active_session(&bob).await["user"]["identifier"], "bob");
    // A logout on the instance that serves it holds there (and in the database).
    let r = c.gql_as(&bob, "mutation { logout }", json!({})).await.ok();
    assert_eq!(r.data()["logout"], true);
    assert!(c.active_session(&bob).await.is_null());
    let anon = b
        .gql("mutation { createAnonymousSession { id } }", json!({}))
        .await
        .ok();
    let anon = anon.session_token().expect("session-token");
    assert_eq!(a.active_session(&anon).await["kind"], "ANONYMOUS");
}

/// Failed logins for one identifier, alternated between two instances, add up in Redis: the
/// fourth attempt (LOGIN_MAX_ATTEMPTS=3) is refused on either instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_throttling_is_shared_between_instances() {
    let Some((db, redis)) = pg_and_redis().await else {
        return;
    };
    let prefix = own_prefix();
    let url = redis.url();
    let servers = start_instances(
        2,
        &db,
        &[
            ("REDIS_URL", &url),
            ("SESSION_CACHE", "redis"),
            ("REDIS_KEY_PREFIX", &prefix),
            ("LOGIN_MAX_ATTEMPTS", "3"),
        ],
    )
    .await;
    let [a, b] = [&servers[0], &servers[1]];
    let admin = a.admin_token().await;
    a.create_user(&admin, "carol", "carol-password", &[]).await;
    for (i, s) in [a, b, a].iter().enumerate() {
        let r = s.try_login("carol", "wrong").await.ok();
        assert_eq!(
            r.data()["login"]["__typename"],
            "InvalidCredentialsError",
            "attempt {}: {}",
            i + 1,
            r.body
        );
    }
    for (name, s) in [("B", b), ("A", a)] {
        let r = s.try_login("carol", "wrong").await.ok();
        assert_eq!(
            r.data()["login"]["__typename"],
            "TooManyAttemptsError",
            "4th attempt on {name}: {}",
            r.body
        );
        assert!(r.data()["login"]["retryAfterSeconds"].as_i64().unwrap() > 0);
        // Even the right password waits out the window.
        let r = s.try_login("carol", "carol-password").await.ok();
        assert_eq!(
            r.data()["login"]["__typename"],
            "TooManyAttemptsError",
            "{}",
            r.body
        );
    }
    // Another identifier is not affected.
    a.create_user(&admin, "dave", "dave-password", &[]).await;
    b.login("dave", "dave-password").await;
}
