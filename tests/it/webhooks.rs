//! Webhooks: a real HTTP receiver started by the test verifies every POST's Standard Webhooks
//! signature with its own HMAC-SHA256 (the `hmac` and `sha2` crates, not the server's
//! `standardwebhooks`) and its timestamp, and can refuse (503) for a while. Every event
//! arrives once the receiver is back; `WEBHOOK_EVENTS` filters; three server processes on one
//! database deliver each event once; a server killed with undelivered events delivers them
//! after a restart; an event past `WEBHOOK_MAX_AGE` is given up; bad settings refuse to start.

use crate::helpers::{TestApp, Variant, ADMIN, ADMIN_PASSWORD};
use crate::procs::{metric, PgDatabase, ServerProc};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::Value;
use sha2::Sha256;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One POST the receiver accepted.
#[derive(Clone, Debug)]
struct Delivery {
    id: String,
    body: Value,
}

#[derive(Default)]
struct Inbox {
    accepted: Vec<Delivery>,
    refused: usize,
    /// What was wrong with each POST whose signature, timestamp or body did not check out.
    bad: Vec<String>,
}

/// The receiver's state: its key, when it starts accepting, what it saw.
struct Receiver {
    key: Vec<u8>,
    /// `None`: refuse every POST with 503; `Some(t)`: refuse before `t`, accept from then.
    open_at: Mutex<Option<Instant>>,
    /// How long each answer is held back.
    delay: Mutex<Duration>,
    inbox: Mutex<Inbox>,
}

/// A receiver listening on a loopback port of its own.
struct Hook {
    url: String,
    secret: String,
    state: Arc<Receiver>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hook {
    /// A receiver that accepts from `open_at` on (`None`: refuses until [`Hook::open`]).
    async fn start(open_at: Option<Instant>) -> Hook {
        let mut key = [0u8; 32];
        session_server::token::os_random(&mut key);
        let secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        let state = Arc::new(Receiver {
            key: key.to_vec(),
            open_at: Mutex::new(open_at),
            delay: Mutex::new(Duration::ZERO),
            inbox: Mutex::default(),
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Hook {
            url,
            secret,
            state,
            task,
        }
    }

    fn open(&self) {
        *self.state.open_at.lock().unwrap() = Some(Instant::now());
    }

    fn refused(&self) -> usize {
        self.state.inbox.lock().unwrap().refused
    }

    fn accepted(&self) -> Vec<Delivery> {
        self.state.inbox.lock().unwrap().accepted.clone()
    }

    /// Asserts that every POST so far was signed right, stamped now, and carried a valid body.
    fn assert_all_genuine(&self) {
        let bad = self.state.inbox.lock().unwrap().bad.clone();
        assert!(bad.is_empty(), "POSTs that did not check out: {bad:?}");
    }

    /// Accepted POSTs per `webhook-id`.
    fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for d in self.accepted() {
            *counts.entry(d.id).or_insert(0) += 1;
        }
        counts
    }

    /// Waits until the receiver has refused `n` POSTs.
    async fn wait_refused(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.refused() < n {
            assert!(
                Instant::now() < deadline,
                "only {} POSTs refused",
                self.refused()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every id of `expected` was accepted at least once; panics after `limit`.
    async fn wait_for(&self, expected: &BTreeSet<String>, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let got: BTreeSet<String> = self.counts().into_keys().collect();
            if expected.is_subset(&got) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "missing after {limit:?}: {:?} (accepted {}, refused {})",
                expected.difference(&got).collect::<Vec<_>>(),
                got.len(),
                self.refused()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Checks the signature the way a receiver in another language would: HMAC-SHA256 over
/// `{id}.{timestamp}.{body}` with the decoded key, compared in constant time with each `v1,`
/// entry of `webhook-signature`.
fn verify(key: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<String, String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(format!("no {name} header"))
    };
    let id = header("webhook-id")?;
    let timestamp = header("webhook-timestamp")?;
    let signature = header("webhook-signature")?;
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| format!("webhook-timestamp {timestamp}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if (now - ts).abs() > 300 {
        return Err(format!("webhook-timestamp {ts} is not now ({now})"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let matched = signature.split(' ').any(|entry| {
        let Some(("v1", sig)) = entry.split_once(',') else {
            return false;
        };
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig) else {
            return false;
        };
        mac.clone().verify_slice(&sig).is_ok()
    });
    if !matched {
        return Err(format!("signature {signature} does not match for {id}"));
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return Err("content-type is not application/json".into());
    }
    Ok(id)
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let delay = *r.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let checked = verify(&r.key, &headers, &body).and_then(|id| {
        let body: Value = serde_json::from_slice(&body).map_err(|e| format!("body: {e}"))?;
        if body["id"].as_str().map(|n| format!("evt_{n}")) != Some(id.clone()) {
            return Err(format!("webhook-id {id} is not the event's id: {body}"));
        }
        Ok(Delivery { id, body })
    });
    let open = r
        .open_at
        .lock()
        .unwrap()
        .is_some_and(|t| Instant::now() >= t);
    let mut inbox = r.inbox.lock().unwrap();
    match checked {
        Err(why) => {
            inbox.bad.push(why);
            StatusCode::BAD_REQUEST
        }
        Ok(_) if !open => {
            inbox.refused += 1;
            StatusCode::SERVICE_UNAVAILABLE
        }
        Ok(d) => {
            inbox.accepted.push(d);
            StatusCode::NO_CONTENT
        }
    }
}

async fn connect(url: &str) -> DatabaseConnection {
    Database::connect(url)
        .await
        .expect("connect to the test database")
}

/// The `webhook-id`s of every recorded event (of `types`, or all).
async fn event_ids(db: &DatabaseConnection, types: Option<&[&str]>) -> BTreeSet<String> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT id, kind FROM session_event",
        ))
        .await
        .unwrap();
    rows.iter()
        .filter(|r| {
            let kind: String = r.try_get("", "kind").unwrap();
            types.is_none_or(|t| t.contains(&kind.as_str()))
        })
        .map(|r| format!("evt_{}", r.try_get::<i64>("", "id").unwrap()))
        .collect()
}

async fn outbox_rows(db: &DatabaseConnection) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM webhook_outbox",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

/// Waits until every outbox row is gone (a row is deleted just after its receiver answered).
async fn wait_outbox_empty(db: &DatabaseConnection) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = outbox_rows(db).await;
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{n} rows stay in the outbox");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `metric_name` on `/metrics` satisfies `ok`; panics with the text after `limit`.
async fn wait_metric(api: &crate::helpers::Api, sample: &str, ok: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = api.metrics().await;
        if ok(metric(&text, sample)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} never as expected:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn spawn_with_hook(variant: Variant, hook: &Hook, events: &str) -> Option<TestApp> {
    let (url, secret, events) = (hook.url.clone(), hook.secret.clone(), events.to_owned());
    TestApp::spawn_with(variant, move |c| {
        c.webhook_urls = vec![url];
        c.webhook_secret = Some(session_server::config::Secret::new(secret));
        c.webhook_events = events.split(',').map(str::to_owned).collect();
    })
    .await
}

/// Logins (each records LOGIN_SUCCEEDED) made while the receiver refuses all arrive, signed,
/// with the event's fields, once it accepts; the outbox is empty afterwards.
async fn every_event_arrives_after_the_receiver_recovers(v: Variant) {
    let hook = Hook::start(None).await;
    let Some(app) = spawn_with_hook(v, &hook, "").await else {
        return;
    };
    let mut sessions = BTreeMap::new();
    for _ in 0..5 {
        let login = app.login(ADMIN, ADMIN_PASSWORD).await;
        let user = login.body["data"]["login"]["user"]["id"].clone();
        sessions.insert(
            login.body["data"]["login"]["session"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
            user,
        );
    }
    let db = connect(&app.database_url).await;
    let expected = event_ids(&db, None).await;
    assert!(expected.len() >= 5, "{expected:?}");
    hook.wait_refused(3).await;
    hook.open();
    hook.wait_for(&expected, Duration::from_secs(30)).await;
    hook.assert_all_genuine();

    let logins: Vec<Delivery> = hook
        .accepted()
        .into_iter()
        .filter(|d| d.body["type"] == "LOGIN_SUCCEEDED")
        .collect();
    let seen: BTreeSet<&str> = logins
        .iter()
        .map(|d| d.body["sessionId"].as_str().unwrap())
        .collect();
    assert_eq!(seen, sessions.keys().map(String::as_str).collect());
    for d in &logins {
        let b = &d.body;
        let keys: BTreeSet<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
        let names = [
            "id",
            "type",
            "at",
            "sessionId",
            "userId",
            "actorUserId",
            "identifier",
            "ipAddress",
            "userAgent",
            "channelCode",
            "reason",
        ];
        assert_eq!(keys, names.into_iter().collect(), "{b}");
        assert_eq!(
            b["userId"],
            sessions[b["sessionId"].as_str().unwrap()],
            "{b}"
        );
        assert_eq!(b["channelCode"], "default", "{b}");
        assert_eq!(b["ipAddress"], "127.0.0.1", "{b}");
        let at = chrono::DateTime::parse_from_rfc3339(b["at"].as_str().unwrap()).unwrap();
        let age = chrono::Utc::now().signed_duration_since(at);
        assert!(age.num_seconds() < 120 && age.num_seconds() >= 0, "{b}");
    }
    // Retried, not duplicated: the receiver's answers were not lost.
    assert!(
        hook.counts().values().all(|&n| n == 1),
        "{:?}",
        hook.counts()
    );
    wait_outbox_empty(&db).await;
    let delivered = r#"session_server_webhook_deliveries_total{outcome="delivered"}"#;
    wait_metric(&app, delivered, |n| n >= expected.len() as f64).await;
    wait_metric(
        &app,
        r#"session_server_webhook_deliveries_total{outcome="retried"}"#,
        |n| n >= 1.0,
    )
    .await;
    wait_metric(&app, "session_server_webhook_pending", |n| n == 0.0).await;
}

#[tokio::test]
async fn every_event_arrives_after_the_receiver_recovers_sqlite() {
    every_event_arrives_after_the_receiver_recovers(Variant::SqliteMemory).await
}

#[tokio::test]
async fn every_event_arrives_after_the_receiver_recovers_postgres() {
    every_event_arrives_after_the_receiver_recovers(Variant::PostgresMemory).await
}

#[tokio::test]
async fn every_event_arrives_after_the_receiver_recovers_mysql() {
    every_event_arrives_after_the_receiver_recovers(Variant::MysqlMemory).await
}

/// Only the `WEBHOOK_EVENTS` types are queued: the other events are recorded but get no
/// outbox row and are never sent.
#[tokio::test]
async fn webhook_events_selects_what_is_sent() {
    let hook = Hook::start(Some(Instant::now())).await;
    let Some(app) =
        spawn_with_hook(Variant::SqliteMemory, &hook, "user_created,ROLE_CHANGED").await
    else {
        return;
    };
    let admin = app.admin_token().await;
    for i in 0..2 {
        app.create_user(&admin, &format!("filtered-{i}"), "a long password 1", &[])
            .await;
    }
    app.login(ADMIN, ADMIN_PASSWORD).await;
    let db = connect(&app.database_url).await;
    let logins = event_ids(&db, Some(&["LOGIN_SUCCEEDED"])).await;
    assert_eq!(logins.len(), 2, "the logins were recorded");
    let wanted = event_ids(&db, Some(&["USER_CREATED", "ROLE_CHANGED"])).await;
    assert!(wanted.len() >= 2, "{wanted:?}");
    hook.wait_for(&wanted, Duration::from_secs(15)).await;
    // Time for anything else to show up, had it been queued.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got: BTreeSet<String> = hook.counts().into_keys().collect();
    assert_eq!(got, wanted, "only the selected types arrive");
    let types: BTreeSet<String> = hook
        .accepted()
        .iter()
        .map(|d| d.body["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, BTreeSet::from(["USER_CREATED".to_owned()]));
    assert!(event_ids(&db, None).await.len() > wanted.len());
    wait_outbox_empty(&db).await;
    hook.assert_all_genuine();
}

/// A request never waits for a receiver: with one that takes 8 s to answer, logins stay fast.
#[tokio::test]
async fn a_slow_receiver_does_not_slow_requests() {
    let hook = Hook::start(Some(Instant::now())).await;
    *hook.state.delay.lock().unwrap() = Duration::from_secs(8);
    let Some(app) = spawn_with_hook(Variant::SqliteMemory, &hook, "").await else {
        return;
    };
    app.login(ADMIN, ADMIN_PASSWORD).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the worker is now waiting on it
    for _ in 0..3 {
        let started = Instant::now();
        app.login(ADMIN, ADMIN_PASSWORD).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a login took {:?}",
            started.elapsed()
        );
    }
    let db = connect(&app.database_url).await;
    hook.wait_for(&event_ids(&db, None).await, Duration::from_secs(40))
        .await;
}

/// An event still undelivered `WEBHOOK_MAX_AGE` after it happened is given up: counted as
/// failed, removed from the outbox.
#[tokio::test]
async fn an_event_past_webhook_max_age_is_given_up() {
    let hook = Hook::start(None).await;
    let (url, secret) = (hook.url.clone(), hook.secret.clone());
    let Some(app) = TestApp::spawn_with(Variant::SqliteMemory, move |c| {
        c.webhook_urls = vec![url];
        c.webhook_secret = Some(session_server::config::Secret::new(secret));
        c.webhook_max_age = Duration::from_secs(3);
    })
    .await
    else {
        return;
    };
    app.login(ADMIN, ADMIN_PASSWORD).await;
    let db = connect(&app.database_url).await;
    let n = event_ids(&db, None).await.len();
    assert!(outbox_rows(&db).await >= 1);
    let failed = r#"session_server_webhook_deliveries_total{outcome="failed"}"#;
    wait_metric(&app, failed, |f| f >= n as f64).await;
    wait_outbox_empty(&db).await;
    assert!(hook.refused() >= 2, "retried before giving up");
    hook.open();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        hook.accepted().is_empty(),
        "a given-up event was still sent"
    );
}

/// A fresh MariaDB database made from `TEST_MYSQL_URL`, dropped with the guard.
struct MysqlDatabase {
    url: String,
    admin_url: String,
    name: String,
}

impl MysqlDatabase {
    async fn create() -> Option<MysqlDatabase> {
        let Some(admin_url) = std::env::var("TEST_MYSQL_URL")
            .ok()
            .filter(|v| !v.is_empty())
        else {
            crate::procs::skip("TEST_MYSQL_URL is not set");
            return None;
        };
        let name = format!("ss_hooks_{}", crate::helpers::random_suffix());
        let admin = connect(&admin_url).await;
        admin
            .execute_unprepared(&format!("CREATE DATABASE `{name}`"))
            .await
            .unwrap();
        Some(MysqlDatabase {
            url: crate::helpers::with_database(&admin_url, &name),
            admin_url,
            name,
        })
    }
}

impl Drop for MysqlDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS `{}`", self.name);
        crate::procs::drop_database(self.admin_url.clone(), sql);
    }
}

/// Three server processes on one database, a receiver that refuses for a while: every event
/// arrives, each accepted exactly once (no answer is lost here), sent by whichever instance
/// claimed it.
async fn three_instances_deliver_each_event_once(database_url: &str) {
    let hook = Hook::start(None).await;
    let env = [
        ("DATABASE_URL", database_url),
        ("WEBHOOK_URLS", hook.url.as_str()),
        ("WEBHOOK_SECRET", hook.secret.as_str()),
        // Concurrent logins each reserve an attempt before the password is checked.
        ("LOGIN_MAX_ATTEMPTS", "1000"),
        ("LOGIN_MAX_ATTEMPTS_PER_ADDRESS", "1000"),
        ("PASSWORD_QUEUE_TIMEOUT", "60s"),
    ];
    let first = ServerProc::spawn(&env).await;
    let rest = futures_util::future::join_all((0..2).map(|_| ServerProc::spawn(&env))).await;
    let servers: Vec<ServerProc> = std::iter::once(first).chain(rest).collect();
    // Logins through every instance at once, so all three workers have rows to race for; one
    // user per instance (concurrent logins of one user can deadlock on MariaDB, a matter of
    // the login, not of the webhooks).
    let admin = servers[0].admin_token().await;
    let mut users = vec![];
    for i in 0..3 {
        let name = format!("hook-user-{i}");
        servers[0]
            .create_user(&admin, &name, "a long password 1", &[])
            .await;
        users.push(name);
    }
    let logins =
        futures_util::future::join_all(servers.iter().zip(&users).map(|(s, u)| async move {
            for _ in 0..8 {
                let r = s.try_login(u, "a long password 1").await;
                if r.data()["login"]["__typename"] != "AuthenticationSuccess" {
                    return Err(format!("{}\n{}", r.body, s.log()));
                }
            }
            Ok(())
        }))
        .await;
    for l in logins {
        l.unwrap();
    }
    let db = connect(database_url).await;
    let expected = event_ids(&db, None).await;
    assert!(expected.len() >= 24, "{}", expected.len());
    hook.wait_refused(3).await;
    hook.open();
    hook.wait_for(&expected, Duration::from_secs(60)).await;
    // Time for a duplicate to show up, had any instance sent a row another one held.
    tokio::time::sleep(Duration::from_secs(3)).await;
    hook.assert_all_genuine();
    let twice: Vec<_> = hook.counts().into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    wait_outbox_empty(&db).await;
    assert!(hook.refused() >= 1);
}

#[tokio::test]
async fn three_instances_deliver_each_event_once_postgres() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    three_instances_deliver_each_event_once(&db.url).await;
}

#[tokio::test]
async fn three_instances_deliver_each_event_once_mariadb() {
    let Some(db) = MysqlDatabase::create().await else {
        return;
    };
    three_instances_deliver_each_event_once(&db.url).await;
}

/// A server killed (SIGKILL) while the receiver refuses keeps its events in the outbox; started
/// again, it delivers them all.
#[tokio::test]
async fn a_killed_server_delivers_after_restart() {
    let Some(pg) = PgDatabase::create().await else {
        return;
    };
    let hook = Hook::start(None).await;
    let env = [
        ("DATABASE_URL", pg.url.as_str()),
        ("WEBHOOK_URLS", hook.url.as_str()),
        ("WEBHOOK_SECRET", hook.secret.as_str()),
    ];
    let server = ServerProc::spawn(&env).await;
    for _ in 0..5 {
        server.login(ADMIN, ADMIN_PASSWORD).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while hook.refused() == 0 {
        assert!(Instant::now() < deadline, "no attempt was made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server); // SIGKILL: no shutdown code runs
    let db = connect(&pg.url).await;
    let expected = event_ids(&db, None).await;
    assert!(expected.len() >= 5);
    assert_eq!(outbox_rows(&db).await, expected.len() as i64, "rows kept");
    assert!(hook.accepted().is_empty());

    hook.open();
    let _again = ServerProc::spawn(&env).await;
    // A row the killed server had claimed waits for its 30 s lease to end.
    hook.wait_for(&expected, Duration::from_secs(60)).await;
    hook.assert_all_genuine();
    wait_outbox_empty(&db).await;
}

/// Bad webhook settings stop the server at start-up with a message naming the setting (and
/// never the secret).
#[tokio::test]
async fn bad_webhook_settings_refuse_to_start() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw8k0pbzH4KVM=";
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[("WEBHOOK_URLS", "https://hooks.example/a")],
            "WEBHOOK_SECRET is required",
        ),
        (
            &[
                ("WEBHOOK_URLS", "ftp://hooks.example/a"),
                ("WEBHOOK_SECRET", secret),
            ],
            "WEBHOOK_URLS",
        ),
        (
            &[
                ("WEBHOOK_URLS", "https://hooks.example/a"),
                ("WEBHOOK_SECRET", secret),
                ("WEBHOOK_EVENTS", "LOGIN_SUCCEEDED,LOGGED_IN"),
            ],
            "unknown event types LOGGED_IN",
        ),
        (
            &[
                ("WEBHOOK_URLS", "https://hooks.example/a"),
                ("WEBHOOK_SECRET", "whsec_c2hvcnQ="),
            ],
            "WEBHOOK_SECRET must decode to 24 to 64 bytes",
        ),
        (
            &[
                ("WEBHOOK_URLS", "https://hooks.example/a"),
                ("WEBHOOK_SECRET", secret),
                ("WEBHOOK_MAX_AGE", "0s"),
            ],
            "WEBHOOK_MAX_AGE",
        ),
    ];
    for (env, message) in cases {
        let s = ServerProc::spawn_unchecked(env);
        let status = s
            .wait_exit(Duration::from_secs(20))
            .await
            .expect("the server refused to start");
        assert!(!status.success());
        let log = s.log();
        assert!(log.contains(message), "{env:?}: {log}");
        assert!(
            !log.contains("c2hvcnQ") && !log.contains("MfKQ9r8G"),
            "{log}"
        );
    }
}
