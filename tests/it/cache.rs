//! Cache behaviour: entries older than `SESSION_CACHE_TTL` are re-read from the database, and a
//! Redis that stops answering costs a cache miss, never a failed request.

use crate::helpers::{TestApp, Variant, ADMIN};
use crate::variants;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, Database, EntityTrait, QueryFilter};
use serde_json::json;
use std::time::Duration;

variants!(stale_entries_are_reread_after_the_cache_ttl);

mod a_new_instance_keeps_sessions_already_in_redis_in_its_local_tier {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_tiered() {
        super::a_new_instance_keeps_sessions_already_in_redis_in_its_local_tier(
            crate::helpers::Variant::SqliteTiered,
        )
        .await
    }
}

/// A tiered instance that starts (or resubscribes) after a session was cached in Redis serves
/// it from its own tier after the first lookup: forgetting the local tier on (re)subscription
/// must not keep out what Redis already holds.
async fn a_new_instance_keeps_sessions_already_in_redis_in_its_local_tier(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let token = app.admin_token().await;
    app.active_session(&token).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let next = app.sibling().await;
    let hits = |text: String| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(
                    "session_server_cache_lookups_total{tier=\"memory\",result=\"hit\"} ",
                )
            })
            .map_or(0.0, |n| n.trim().parse::<f64>().unwrap_or(0.0))
    };
    let before = hits(next.metrics().await);
    for _ in 0..5 {
        assert!(!next.active_session(&token).await.is_null());
    }
    let after = hits(next.metrics().await);
    assert!(
        after - before >= 4.0,
        "local-tier hits on the new instance: {before} -> {after}"
    );
}

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

/// `TEST_REDIS_URL`, or `None` after a notice (a failure under `REQUIRE_SERVICES=1`).
fn test_redis_url() -> Option<String> {
    let url = std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        assert!(
            !crate::helpers::services_required(),
            "REQUIRE_SERVICES=1 but TEST_REDIS_URL is not set"
        );
        eprintln!("skipped: TEST_REDIS_URL is not set");
    }
    url
}

/// The server's Redis cache on `url` under `prefix`.
async fn redis_cache(
    url: &str,
    prefix: &str,
    ttl: Duration,
) -> session_server::cache::redis::RedisCache {
    redis_cache_within(url, prefix, ttl, Duration::from_secs(5)).await
}

/// The server's Redis cache on `url` under `prefix`, each call bounded by `timeout`.
async fn redis_cache_within(
    url: &str,
    prefix: &str,
    ttl: Duration,
    timeout: Duration,
) -> session_server::cache::redis::RedisCache {
    session_server::cache::redis::RedisCache::connect(
        session_server::config::RedisTarget::parse(url).expect("a Redis URL"),
        prefix,
        timeout,
        ttl,
        std::sync::Arc::default(),
    )
    .await
    .expect("Redis answers")
}

/// The cache on `TEST_REDIS_URL` under a prefix of the test's own, with a plain connection
/// beside it; `None` (after a notice) without `TEST_REDIS_URL`.
async fn redis_under_own_prefix(
    ttl: Duration,
) -> Option<(
    String,
    session_server::cache::redis::RedisCache,
    redis::aio::MultiplexedConnection,
)> {
    let url = test_redis_url()?;
    let prefix = format!("it-{}:", crate::helpers::random_suffix());
    let cache = redis_cache(&url, &prefix, ttl).await;
    let conn = raw_redis(&url).await;
    Some((prefix, cache, conn))
}

/// A plain Redis connection, for what the test does behind the cache's back.
async fn raw_redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers")
}

/// Deletes every key under `prefix`.
async fn delete_keys(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(conn)
            .await
            .expect("DEL");
    }
}

/// The `data_version` (in these tests also the revision) of the entry Redis holds for `hash`.
async fn version_in_redis(
    cache: &session_server::cache::redis::RedisCache,
    hash: &session_server::token::TokenHash,
) -> i64 {
    use session_server::cache::SessionCache;
    cache
        .get(hash)
        .await
        .expect("read")
        .expect("cached")
        .data_version
}

/// Writes `body` as the entry of `hash` (in `user`'s slot, or at the token's key when
/// anonymous) behind the cache's back, as another instance or an earlier version would.
async fn write_entry_behind(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    user: Option<i64>,
    hash: &session_server::token::TokenHash,
    body: Vec<u8>,
) {
    let key = match user {
        None => format!("{prefix}{{t:{}}}", hash.to_hex()),
        Some(id) => format!("{prefix}{{u:{id}}}:s:{}", hash.to_hex()),
    };
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(body)
        .arg("PX")
        .arg(60_000)
        .query_async(conn)
        .await
        .expect("SET");
}

/// A cached session with `data_version` for the Redis entry tests.
fn entry(
    hash: session_server::token::TokenHash,
    user: Option<i64>,
    data_version: i64,
) -> std::sync::Arc<session_server::domain::CachedSession> {
    session_server::domain::CachedSession::for_tests(hash, user, data_version)
}

/// A cache fill that read older session data than Redis holds never replaces it: for an
/// anonymous session (its entry sits at the token's key) and an authenticated one (in the
/// user's slot), whether the newer entry is MessagePack or JSON written by an earlier version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_entries_never_go_back_to_older_data() {
    let ttl = Duration::from_secs(60);
    let Some((prefix, cache, mut conn)) = redis_under_own_prefix(ttl).await else {
        return;
    };
    for user in [None, Some(7)] {
        let hash = session_server::token::generate().hash;
        assert!(cache.store(entry(hash, user, 5), ttl).await.expect("store"));
        let refused = !cache.store(entry(hash, user, 3), ttl).await.expect("store");
        assert!(refused, "older data refused ({user:?})");
        assert_eq!(version_in_redis(&cache, &hash).await, 5, "{user:?}");
        assert!(cache.store(entry(hash, user, 6), ttl).await.expect("store"));
        assert_eq!(version_in_redis(&cache, &hash).await, 6, "{user:?}");

        // An earlier version's JSON entry with newer data: no revision, the data version first.
        let json = serde_json::to_string(&*entry(hash, user, 9)).expect("JSON");
        let json_entry = json.replacen(r#"{"revision":9,"#, "{", 1).into_bytes();
        assert!(json_entry.starts_with(br#"{"data_version":9,"#));
        write_entry_behind(&mut conn, &prefix, user, &hash, json_entry).await;
        assert_eq!(
            version_in_redis(&cache, &hash).await,
            9,
            "JSON entries are read"
        );
        let refused = !cache.store(entry(hash, user, 8), ttl).await.expect("store");
        assert!(refused, "older data refused over a JSON entry ({user:?})");
        assert_eq!(version_in_redis(&cache, &hash).await, 9, "{user:?}");
    }
    delete_keys(&mut conn, &prefix).await;
}

/// A Redis that refuses the one-round-trip lookup script (here an ACL without EVAL/EVALSHA; a
/// proxy or a Redis checking a script's keys refuses it the same way) still answers lookups,
/// through GETs, for anonymous and authenticated sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_work_where_redis_refuses_the_lookup_script() {
    use session_server::cache::SessionCache;
    let Some(url) = test_redis_url() else {
        return;
    };
    let suffix = crate::helpers::random_suffix();
    let prefix = format!("it-{suffix}:");
    let ttl = Duration::from_secs(60);
    let full = redis_cache(&url, &prefix, ttl).await;
    let mut conn = raw_redis(&url).await;
    let user = format!("it-noscript-{suffix}");
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">it-pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-eval")
        .arg("-evalsha")
        .query_async(&mut conn)
        .await
        .expect("ACL SETUSER");
    let host = url
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_string();
    let limited = redis_cache(&format!("redis://{user}:it-pw@{host}"), &prefix, ttl).await;
    let hashes: Vec<_> = [None, Some(11)]
        .into_iter()
        .map(|u| {
            let hash = session_server::token::generate().hash;
            (hash, u)
        })
        .collect();
    for (hash, u) in &hashes {
        assert!(full.store(entry(*hash, *u, 4), ttl).await.expect("store"));
    }
    for round in 0..2 {
        for (hash, u) in &hashes {
            let found = limited.get(hash).await;
            let found = found.unwrap_or_else(|e| panic!("round {round}, {u:?}: {e}"));
            let session = found.unwrap_or_else(|| panic!("round {round}, {u:?}: a miss"));
            assert_eq!((session.data_version, session.user_id()), (4, *u));
        }
    }
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut conn)
        .await
        .expect("ACL DELUSER");
    delete_keys(&mut conn, &prefix).await;
}

/// Lookups waiting at the same time go to Redis together, and each gets its own answer: 240
/// concurrent lookups (anonymous entries, entries in five users' slots, revoked tokens and
/// tokens Redis never saw) on a private Redis take far fewer script calls than lookups, and
/// every lookup sees exactly its own entry or none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_share_calls_and_each_gets_its_own_answer() {
    use session_server::cache::SessionCache;
    let Some(redis) = crate::procs::RedisProc::start(false).await else {
        return;
    };
    let url = redis.url();
    let ttl = Duration::from_secs(60);
    let cache = redis_cache(&url, "it-batch:", ttl).await;
    let mut conn = raw_redis(&url).await;
    // (hash, the data version expected back, or None for a miss)
    let mut expected = Vec::new();
    for i in 0..240i64 {
        let hash = session_server::token::generate().hash;
        let user = (i % 3 != 0).then_some(i % 5);
        match i % 8 {
            // Never stored.
            7 => expected.push((hash, None)),
            // Stored, then revoked (a tombstone at the pointer).
            6 => {
                assert!(cache.store(entry(hash, user, i), ttl).await.expect("store"));
                cache.revoke(&hash).await.expect("revoke");
                expected.push((hash, None));
            }
            _ => {
                assert!(cache.store(entry(hash, user, i), ttl).await.expect("store"));
                expected.push((hash, Some((i, user))));
            }
        }
    }
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .expect("CONFIG RESETSTAT");
    let answers =
        futures_util::future::join_all(expected.iter().map(|(hash, _)| cache.get(hash))).await;
    for ((_, want), got) in expected.iter().zip(answers) {
        let got = got
            .expect("a lookup")
            .map(|s| (s.data_version, s.user_id()));
        assert_eq!(&got, want);
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    let calls: u64 = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        (1..=60).contains(&calls),
        "{calls} script calls for {} lookups:\n{stats}",
        expected.len()
    );
}

/// A lookup waits at most `REDIS_TIMEOUT` in all, also when it queued behind calls that were
/// already out: with Redis stalled (`CLIENT PAUSE` on a private Redis), lookups asked over the
/// first part of the timeout all end, as errors, within the timeout plus scheduling slack, not
/// up to twice it; once the pause ends, lookups are answered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_wait_at_most_the_redis_timeout_even_when_queued() {
    use session_server::cache::SessionCache;
    use std::time::Instant;
    let Some(redis) = crate::procs::RedisProc::start(false).await else {
        return;
    };
    let url = redis.url();
    let ttl = Duration::from_secs(60);
    let timeout = Duration::from_millis(600);
    let cache = std::sync::Arc::new(redis_cache_within(&url, "it-stall:", ttl, timeout).await);
    let hash = session_server::token::generate().hash;
    assert!(cache
        .store(entry(hash, Some(1), 1), ttl)
        .await
        .expect("store"));
    let mut conn = raw_redis(&url).await;
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "2000", "ALL"])
        .query_async(&mut conn)
        .await
        .expect("CLIENT PAUSE");
    // Four calls go out at once and stall; the lookups asked after them queue, then go out in
    // calls of their own when those time out.
    let lookups: Vec<_> = (0..120u64)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 3)).await;
                let asked = Instant::now();
                let answer = cache.get(&hash).await;
                (asked.elapsed(), answer.is_err())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for lookup in lookups {
        let (took, failed) = lookup.await.expect("the lookup ends");
        assert!(failed, "a stalled Redis cannot have answered");
        slowest = slowest.max(took);
    }
    assert!(
        slowest < timeout + Duration::from_millis(250),
        "a lookup took {slowest:?} with a {timeout:?} Redis timeout"
    );
    // The pause ends by itself (a paused Redis also holds a new connection's UNPAUSE).
    let deadline = Instant::now() + Duration::from_secs(6);
    while let Err(e) = cache.get(&hash).await {
        assert!(
            Instant::now() < deadline,
            "no answer after the pause ended: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Entries read before the failure are distrusted (an invalidation may have been lost); a
    // fresh one is served.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(cache
        .store(entry(hash, Some(1), 2), ttl)
        .await
        .expect("store"));
    let fresh = cache
        .get(&hash)
        .await
        .expect("a lookup")
        .expect("the entry");
    assert_eq!(fresh.data_version, 2);
}

/// A lookup that gets the same entry back from Redis reuses the session decoded the time
/// before, and one that gets a changed entry, a tombstone or nothing never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_entries_are_decoded_once_and_changes_always_show() {
    use session_server::cache::SessionCache;
    let ttl = Duration::from_secs(60);
    let Some((prefix, cache, mut conn)) = redis_under_own_prefix(ttl).await else {
        return;
    };
    for user in [None, Some(3)] {
        let hash = session_server::token::generate().hash;
        assert!(cache.store(entry(hash, user, 1), ttl).await.expect("store"));
        let first = cache.get(&hash).await.expect("read").expect("cached");
        let again = cache.get(&hash).await.expect("read").expect("cached");
        assert!(
            std::sync::Arc::ptr_eq(&first, &again),
            "{user:?}: decoded twice"
        );
        assert!(cache.store(entry(hash, user, 2), ttl).await.expect("store"));
        let changed = cache.get(&hash).await.expect("read").expect("cached");
        assert_eq!(changed.data_version, 2, "{user:?}");
        // Changed behind the cache's back (another instance): the new bytes are decoded.
        let body = rmp_serde::to_vec_named(&*entry(hash, user, 7)).expect("MessagePack");
        write_entry_behind(&mut conn, &prefix, user, &hash, body).await;
        let elsewhere = cache.get(&hash).await.expect("read").expect("cached");
        assert_eq!(elsewhere.data_version, 7, "{user:?}");
        cache.revoke(&hash).await.expect("revoke");
        assert!(cache.get(&hash).await.expect("read").is_none(), "{user:?}");
    }
    delete_keys(&mut conn, &prefix).await;
}

/// Two instances write one session's data at the same moment and their cache writes reach
/// Redis out of order (version 21 first, then 20): no instance may then cache the older data,
/// neither the late write nor a database read that started before version 21 was written, on
/// the `redis` and the `tiered` caches, for anonymous and authenticated sessions. (Each
/// instance also remembers the versions it wrote itself; this is about the ones it did not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_data_writes_on_two_instances_never_leave_older_data_cached() {
    use session_server::config::CacheMode;
    let ttl = Duration::from_secs(60);
    let Some(url) = test_redis_url() else {
        return;
    };
    let prefix = format!("it-{}:", crate::helpers::random_suffix());
    let instance = |mode: CacheMode| shared_store(&url, &prefix, ttl, mode);
    for mode in [CacheMode::Redis, CacheMode::Tiered] {
        let (a, b, c) = (
            instance(mode).await,
            instance(mode).await,
            instance(mode).await,
        );
        if mode == CacheMode::Tiered {
            // Let the instances hear each other's heartbeats, so each waits for the others'
            // acknowledgements, as running instances do.
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        for user in [None, Some(5)] {
            let case = format!("{mode:?}, user {user:?}");
            let hash = session_server::token::generate().hash;
            // Instance c reads the row before version 21 is written, and sees version 20.
            let stale_read = c.start_read();
            b.put_read(entry(hash, user, 20), b.start_read()).await;
            assert_eq!(version(&c, &hash).await, Some(20), "{case}: cached");
            a.replace(entry(hash, user, 21)).await;
            assert_eq!(
                version(&c, &hash).await,
                Some(21),
                "{case}: the newer write"
            );
            // Instance b's write of version 20 arrives late: Redis refuses it, and b drops the
            // entry (a refusal may also mean the entry was read before a drop of its user's
            // sessions, so what is cached is not trusted either).
            b.replace(entry(hash, user, 20)).await;
            for (name, store) in [("a", &a), ("b", &b), ("c", &c)] {
                assert_eq!(
                    version(store, &hash).await,
                    None,
                    "{case}: dropped on {name}"
                );
            }
            // Neither c's old read nor a late fill of version 20 from any instance comes back.
            c.put_read(entry(hash, user, 20), stale_read).await;
            a.put_read(entry(hash, user, 20), a.start_read()).await;
            b.put_read(entry(hash, user, 20), b.start_read()).await;
            for (name, store) in [("a", &a), ("b", &b), ("c", &c)] {
                assert_ne!(
                    version(store, &hash).await,
                    Some(20),
                    "{case}: older data cached again on {name}"
                );
            }
        }
    }
    let mut conn = raw_redis(&url).await;
    delete_keys(&mut conn, &prefix).await;
}

/// One instance switches a session's channel while another fills its cache from a database
/// read that started before the switch (same data, older row): the older row never replaces
/// the switch, on the `redis` and the `tiered` caches, for anonymous and authenticated
/// sessions. Entries are compared by the row's revision, which every write raises; the data
/// version alone, unchanged by a channel switch, let the stale fill win. (On `tiered`, b also
/// hears of a's write before the fill and refuses it itself; `redis` has only the revision.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_from_before_another_instances_channel_switch_never_replaces_it() {
    use session_server::config::CacheMode;
    let ttl = Duration::from_secs(60);
    let Some(url) = test_redis_url() else {
        return;
    };
    let prefix = format!("it-{}:", crate::helpers::random_suffix());
    let instance = |mode: CacheMode| shared_store(&url, &prefix, ttl, mode);
    // The session at `revision`, in `channel`, with the same data (version 3) throughout.
    let row = |hash, user, revision: i64, channel: i64| {
        let mut s = entry(hash, user, 3).with_active(None, Some(channel));
        s.revision = revision;
        std::sync::Arc::new(s)
    };
    for mode in [CacheMode::Redis, CacheMode::Tiered] {
        let (a, b) = (instance(mode).await, instance(mode).await);
        if mode == CacheMode::Tiered {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        for user in [None, Some(6)] {
            let case = format!("{mode:?}, user {user:?}");
            let hash = session_server::token::generate().hash;
            // b misses and reads the row at revision 4 (channel 1) ...
            let read = b.start_read();
            // ... a switches the channel (revision 5) and writes through ...
            a.replace(row(hash, user, 5, 2)).await;
            // ... and b's fill arrives.
            b.put_read(row(hash, user, 4, 1), read).await;
            for (name, store) in [("a", &a), ("b", &b)] {
                let cached = store.get(&hash).await.map(|s| s.active_channel_id);
                assert!(
                    cached.is_none() || cached == Some(Some(2)),
                    "{case}: {name} holds channel {cached:?}"
                );
            }
            // A fresh instance reads what Redis holds: the switch.
            let c = instance(mode).await;
            let seen = c
                .get(&hash)
                .await
                .map(|s| (s.revision, s.active_channel_id));
            assert_eq!(seen, Some((5, Some(2))), "{case}: in Redis");
            c.leave().await;
        }
    }
    let mut conn = raw_redis(&url).await;
    delete_keys(&mut conn, &prefix).await;
}

/// One instance's session store on the Redis at `url`, under `prefix` (instances that share
/// it share their entries): a cache TTL of `ttl`, 1,000 entries in process, a one-hour idle
/// timeout.
async fn shared_store(
    url: &str,
    prefix: &str,
    ttl: Duration,
    mode: session_server::config::CacheMode,
) -> session_server::cache::SessionStore {
    let redis = std::sync::Arc::new(redis_cache(url, prefix, ttl).await);
    session_server::cache::SessionStore::for_mode(
        mode,
        Some(redis),
        1000,
        std::sync::Arc::default(),
        ttl,
        Duration::from_secs(3600),
    )
}

/// The data version an instance's cache holds for `hash`, if any.
async fn version(
    store: &session_server::cache::SessionStore,
    hash: &session_server::token::TokenHash,
) -> Option<i64> {
    store.get(hash).await.map(|s| s.data_version)
}
