//! Outages: Redis killed under a steady stream of requests and restarted on the same port (with
//! its data, as with AOF) for the `redis` and `tiered` caches, database cut off by a TCP proxy
//! (SERVICE_UNAVAILABLE, /health 503, recovery without restart), and what `/health` and
//! `/metrics` report.

use crate::helpers::Gql;
use crate::procs::{metric, PgDatabase, RedisProc, ServerProc, TcpProxy};
use crate::scale::{own_prefix, start_instances};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REFRESH: &str = "mutation($r: String) { refreshSession(refreshToken: $r) {
    __typename
    ... on AuthenticationSuccess { session { id } }
    ... on InvalidRefreshTokenError { reason }
} }";
const REDIS_HIT: &str = "session_server_cache_lookups_total{tier=\"redis\",result=\"hit\"}";

/// A steady stream of authenticated requests: every 50 ms the next of `tokens` (with the
/// identifier it must resolve to) on the next of `addresses`. Every answer must be correct and
/// arrive within [`SLOWEST`], and the median within [`MEDIAN`]: a request stuck on the dead
/// Redis (a connect timeout is 2 s) would exceed both.
struct Stream {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<Duration>, Vec<String>)>,
}

/// Generous for a loaded 2-core machine running other server processes in parallel (alone,
/// the slowest request during the outage takes about 0.2 s).
const SLOWEST: Duration = Duration::from_millis(1500);
const MEDIAN: Duration = Duration::from_millis(300);

impl Stream {
    fn start(addresses: Vec<String>, tokens: Vec<(String, &'static str)>) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let (mut n, mut times, mut problems) = (0usize, vec![], vec![]);
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    let address = &addresses[n % addresses.len()];
                    let (token, who) = &tokens[(n / addresses.len()) % tokens.len()];
                    let started = Instant::now();
                    let r = client
                        .post(format!("{address}/graphql"))
                        .header("content-type", "application/json")
                        .bearer_auth(token)
                        .body(
                            json!({ "query": "{ activeSession { user { identifier } } }" })
                                .to_string(),
                        )
                        .send()
                        .await;
                    let took = started.elapsed();
                    times.push(took);
                    let body: Value = match r {
                        Ok(r) => r.json().await.unwrap_or(Value::Null),
                        Err(e) => json!({ "transport": e.to_string() }),
                    };
                    if body["data"]["activeSession"]["user"]["identifier"] != *who {
                        problems.push(format!("request {n} to {address}: {body}"));
                    }
                    if took > SLOWEST {
                        problems.push(format!("request {n} to {address} took {took:?}"));
                    }
                    n += 1;
                }
                (times, problems)
            })
        };
        Stream { stop, task }
    }

    /// Stops the stream and asserts every answer was right and quick.
    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let (mut times, problems) = self.task.await.unwrap();
        assert!(
            problems.is_empty(),
            "{} bad answers: {problems:#?}",
            problems.len()
        );
        times.sort();
        let (n, median) = (times.len(), times[times.len() / 2]);
        eprintln!(
            "stream: {n} requests, median {median:?}, slowest {:?}",
            times[n - 1]
        );
        assert!(median < MEDIAN, "median request time {median:?}");
        n
    }
}

async fn wait_health(s: &ServerProc, status: u16, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (got, body) = s.health().await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/health still {got} {body} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn typename(r: &Gql, field: &str) -> String {
    r.data()[field]["__typename"]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} result: {}", r.body))
        .to_string()
}

/// Kills Redis under a stream of requests on two instances, changes things while it is down
/// (logout, failed logins, a refresh), and restarts it with the data it had.
async fn redis_outage(mode: &str) {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let Some(mut redis) = RedisProc::start(true).await else {
        return;
    };
    let prefix = own_prefix();
    let url = redis.url();
    let servers = start_instances(
        2,
        &db,
        &[
            ("REDIS_URL", &url),
            ("SESSION_CACHE", mode),
            ("REDIS_KEY_PREFIX", &prefix),
            ("LOGIN_MAX_ATTEMPTS", "3"),
        ],
    )
    .await;
    let [a, b] = [&servers[0], &servers[1]];
    let admin = a.admin_token().await;
    a.create_user(&admin, "alice", "alice-password", &[]).await;
    a.create_user(&admin, "erin", "erin-password", &[]).await;
    let alice = b.login("alice", "alice-password").await.token;
    let victim = a.login("erin", "erin-password").await.token;
    let refreshable = b.login("erin", "erin-password").await;
    for s in [a, b] {
        for t in [&victim, &refreshable.token] {
            assert_eq!(s.active_session(t).await["user"]["identifier"], "erin");
        }
    }

    let stream = Stream::start(
        vec![a.address.clone(), b.address.clone()],
        vec![(admin.clone(), "superadmin"), (alice.clone(), "alice")],
    );
    tokio::time::sleep(Duration::from_millis(700)).await;

    redis.kill();
    for s in [a, b] {
        let body = wait_health(s, 503, Duration::from_secs(3)).await;
        assert_eq!(
            body,
            json!({ "status": "unavailable", "failing": ["redis"] })
        );
    }

    // A logout while Redis is down holds on both instances at once.
    let r = a
        .gql_as(&victim, "mutation { logout }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["logout"], true);
    for s in [b, a] {
        assert!(s.active_session(&victim).await.is_null(), "logged out");
    }

    // Login throttling still counts (in the instance, while Redis is away).
    for i in 1..=3 {
        let r = a.try_login("nobody", "wrong").await.ok();
        assert_eq!(
            typename(&r, "login"),
            "InvalidCredentialsError",
            "attempt {i}"
        );
    }
    let r = a.try_login("nobody", "wrong").await.ok();
    assert_eq!(typename(&r, "login"), "TooManyAttemptsError", "{}", r.body);

    // Refresh rotation: the new pair works everywhere, the old session token does not, and the
    // superseded refresh token is refused without harm.
    let r = b
        .gql(REFRESH, json!({ "r": refreshable.refresh_token }))
        .await
        .ok();
    assert_eq!(
        typename(&r, "refreshSession"),
        "AuthenticationSuccess",
        "{}",
        r.body
    );
    let rotated = r.session_token().expect("session-token");
    let rotated_refresh = r.refresh_token().expect("refresh-token");
    for s in [a, b] {
        assert!(
            s.active_session(&refreshable.token).await.is_null(),
            "old token"
        );
        assert_eq!(
            s.active_session(&rotated).await["user"]["identifier"],
            "erin"
        );
    }
    let r = a
        .gql(REFRESH, json!({ "r": refreshable.refresh_token }))
        .await
        .ok();
    assert_eq!(
        r.data()["refreshSession"]["reason"],
        "SUPERSEDED",
        "{}",
        r.body
    );
    assert_eq!(
        b.active_session(&rotated).await["user"]["identifier"],
        "erin"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Redis comes back with the entries it held before the outage.
    redis.restart().await;
    for s in [a, b] {
        wait_health(s, 200, Duration::from_secs(5)).await;
    }
    // Nothing stale: what changed during the outage still holds, on the very next requests.
    for s in [b, a] {
        assert!(
            s.active_session(&victim).await.is_null(),
            "the logout made during the outage still holds"
        );
        assert!(
            s.active_session(&refreshable.token).await.is_null(),
            "rotated away"
        );
        assert_eq!(
            s.active_session(&rotated).await["user"]["identifier"],
            "erin"
        );
    }
    for s in [b, a] {
        assert!(s.active_session(&victim).await.is_null());
    }

    // The cache is used again: a session created on A is a Redis hit on B.
    let before = metric(&b.metrics().await, REDIS_HIT);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let fresh = a.login("alice", "alice-password").await.token;
        assert_eq!(
            b.active_session(&fresh).await["user"]["identifier"],
            "alice"
        );
        if metric(&b.metrics().await, REDIS_HIT) > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Redis hits after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = a.gql(REFRESH, json!({ "r": rotated_refresh })).await.ok();
    assert_eq!(
        typename(&r, "refreshSession"),
        "AuthenticationSuccess",
        "{}",
        r.body
    );
    assert!(
        metric(
            &a.metrics().await,
            "session_server_errors_total{component=\"redis\"}"
        ) > 0.0
    );

    let n = stream.finish().await;
    assert!(n >= 40, "only {n} requests in the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_redis_cache() {
    redis_outage("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_tiered_cache() {
    redis_outage("tiered").await;
}

/// The server reaches PostgreSQL through a proxy that drops every connection: requests that
/// need the database get SERVICE_UNAVAILABLE fast, /health names the database, and service
/// comes back by itself when the proxy accepts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_service_unavailable_then_recovers() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let proxy = TcpProxy::start(db.server_addr()).await;
    let url = db.url_via(&proxy.addr.to_string());
    let s = ServerProc::spawn(&[
        ("DATABASE_URL", &url),
        ("DATABASE_TIMEOUT", "1s"),
        ("SESSION_CACHE", "memory"),
    ])
    .await;
    let admin = s.admin_token().await;
    let list = "{ sessions(first: 5) { totalCount } }";
    s.gql_as(&admin, list, json!({})).await.ok();

    proxy.cut();
    for _ in 0..3 {
        let started = Instant::now();
        let r = s.gql_as(&admin, list, json!({})).await;
        assert_eq!(r.error_code(), Some("SERVICE_UNAVAILABLE"), "{}", r.body);
        // The code is the contract; the HTTP status is 200 (GraphQL) or 503, never 500.
        assert!(r.status == 200 || r.status == 503, "HTTP {}", r.status);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let r = s.try_login("superadmin", "superadmin").await;
        assert_eq!(r.error_code(), Some("SERVICE_UNAVAILABLE"), "{}", r.body);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    let (status, body) = s.health().await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({ "status": "unavailable", "failing": ["database"] })
    );
    assert!(
        metric(
            &s.metrics().await,
            "session_server_errors_total{component=\"database\"}"
        ) > 0.0
    );

    proxy.restore();
    wait_health(&s, 200, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = s.gql_as(&admin, list, json!({})).await;
        if r.error_code().is_none() {
            assert!(r.data()["sessions"]["totalCount"].as_i64().unwrap() >= 1);
            break;
        }
        assert!(Instant::now() < deadline, "not recovered: {}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = s.admin_token().await;
    assert_eq!(
        s.active_session(&again).await["user"]["identifier"],
        "superadmin"
    );
}

/// `/health` and `/metrics` with Redis: per-operation request counts and latency histograms,
/// cache lookups per tier, session events, and Redis errors once Redis is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_cover_each_part() {
    let Some(mut redis) = RedisProc::start(false).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/m.db?mode=rwc", dir.path().display());
    let url = redis.url();
    let prefix = own_prefix();
    let s = ServerProc::spawn(&[
        ("DATABASE_URL", &db),
        ("REDIS_URL", &url),
        ("SESSION_CACHE", "tiered"),
        ("REDIS_KEY_PREFIX", &prefix),
    ])
    .await;
    assert_eq!(s.health().await, (200, json!({ "status": "ok" })));
    let login = s.login("superadmin", "superadmin").await;
    for _ in 0..3 {
        s.active_session(&login.token).await;
    }
    let other = s.login("superadmin", "superadmin").await;
    let r = s
        .gql(REFRESH, json!({ "r": other.refresh_token }))
        .await
        .ok();
    assert_eq!(typename(&r, "refreshSession"), "AuthenticationSuccess");
    let rotated = r.session_token().unwrap();
    let id = s.active_session(&rotated).await["id"].clone();
    s.gql_as(
        &login.token,
        "mutation($id: ID!) { revokeSession(id: $id) }",
        json!({ "id": id }),
    )
    .await
    .ok();
    let m = s.metrics().await;
    for sample in [
        "session_server_graphql_requests_total{operation=\"query.activeSession\"}",
        "session_server_graphql_requests_total{operation=\"mutation.login\"}",
        "session_server_graphql_request_duration_seconds_count{operation=\"query.activeSession\"}",
        "session_server_sessions_total{event=\"created\"}",
        "session_server_sessions_total{event=\"refreshed\"}",
        "session_server_sessions_total{event=\"revoked\"}",
        "session_server_cache_lookups_total{tier=\"memory\",result=\"hit\"}",
    ] {
        assert!(metric(&m, sample) >= 1.0, "{sample} missing from:\n{m}");
    }
    assert!(
        m.lines().any(
            |l| l.starts_with("session_server_graphql_request_duration_seconds_bucket{")
                && l.contains("operation=\"query.activeSession\"")
                && l.contains("le=")
        ),
        "latency histogram buckets:\n{m}"
    );
    assert!(
        metric(
            &m,
            "session_server_graphql_requests_total{operation=\"query.activeSession\"}"
        ) >= 4.0
    );

    redis.kill();
    let body = wait_health(&s, 503, Duration::from_secs(3)).await;
    assert_eq!(
        body,
        json!({ "status": "unavailable", "failing": ["redis"] })
    );
    let fresh = s.login("superadmin", "superadmin").await;
    assert_eq!(
        s.active_session(&fresh.token).await["user"]["identifier"],
        "superadmin"
    );
    let m = s.metrics().await;
    assert!(
        metric(&m, "session_server_errors_total{component=\"redis\"}") >= 1.0,
        "{m}"
    );
}
