//! The admin command line (`users …`, `sessions …`, `cleanup`), run as the real binary against
//! the database of a running server: what it creates logs in, what it revokes the server
//! refuses (on the next request with `SESSION_CACHE=redis` or `tiered`), exit codes 0 / 1 / 2,
//! and `--json` that parses.

use crate::helpers::{TestApp, Variant, ADMIN, ADMIN_PASSWORD};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The environment a server's operator would give the command line: the same database, Redis
/// and key prefix, and the same superadmin.
fn env_of(app: &TestApp) -> Vec<(String, String)> {
    let mut env = vec![
        ("DATABASE_URL".to_string(), app.database_url.clone()),
        ("SUPERADMIN_IDENTIFIER".into(), ADMIN.into()),
        ("SUPERADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
        ("REDIS_KEY_PREFIX".into(), app.redis_prefix.clone()),
    ];
    if app.variant.uses_redis() {
        env.push(("REDIS_URL".into(), std::env::var("TEST_REDIS_URL").unwrap()));
    }
    env
}

/// Runs the binary off the runtime's threads (the server under test runs on them), with a clean
/// environment plus `env`, feeding `stdin`.
async fn run(args: &[&str], env: Vec<(String, String)>, stdin: &str) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_session-server"))
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        // The binary may exit before reading (a refused command): ignore a closed pipe.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        child.wait_with_output().expect("the binary runs")
    })
    .await
    .unwrap()
}

async fn cli(app: &TestApp, args: &[&str], stdin: &str) -> Output {
    run(args, env_of(app), stdin).await
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn succeeded(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", err(o));
    out(o)
}

fn json(o: &Output) -> Value {
    serde_json::from_str(&succeeded(o)).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out(o)))
}

/// Whether the server still accepts a token. With the in-process cache the server only
/// re-reads the database after SESSION_CACHE_TTL (set to 1s for that variant).
async fn accepted(app: &TestApp, token: &str) -> bool {
    if !app.variant.uses_redis() {
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    !app.active_session(token).await.is_null()
}

async fn spawn(v: Variant) -> Option<TestApp> {
    TestApp::spawn_with(v, |c| {
        if !v.uses_redis() {
            c.session_cache_ttl = Duration::from_secs(1);
        }
    })
    .await
}

/// Create a user with a role, log in as them, list their sessions, revoke them; set a new
/// password (ending their sessions); delete them.
async fn users_and_sessions(v: Variant) {
    let Some(app) = spawn(v).await else { return };

    let created = cli(
        &app,
        &[
            "users",
            "create",
            "Carol@Example.com",
            "--role",
            "SUPER_ADMIN",
        ],
        "first-Passw0rd!\n",
    )
    .await;
    assert!(
        succeeded(&created).contains("created user carol@example.com"),
        "{}",
        out(&created)
    );
    let carol = app.login("carol@example.com", "first-Passw0rd!").await;
    let other = app.login("carol@example.com", "first-Passw0rd!").await;
    let me = app.active_session(&carol.token).await;
    assert_eq!(me["user"]["identifier"], "carol@example.com");
    let session_id: i64 = me["id"].as_str().unwrap().parse().unwrap();

    // The listing finds both sessions, by identifier and by kind.
    let listed = json(
        &cli(
            &app,
            &[
                "sessions",
                "list",
                "--user",
                "carol@example.com",
                "--kind",
                "authenticated",
                "--json",
            ],
            "",
        )
        .await,
    );
    let ids: Vec<i64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{listed}");
    assert!(ids.contains(&session_id), "{listed}");
    assert!(listed[0]["expiresAt"].as_str().is_some(), "{listed}");

    // One session by id: that token stops working, the other goes on.
    let revoked = cli(
        &app,
        &["sessions", "revoke", "--id", &session_id.to_string()],
        "",
    )
    .await;
    assert!(
        succeeded(&revoked).contains("revoked 1"),
        "{}",
        out(&revoked)
    );
    assert!(
        !accepted(&app, &carol.token).await,
        "revoked session accepted"
    );
    assert!(accepted(&app, &other.token).await);

    // A new password ends every session of the user; the new one logs in, the old does not.
    let changed = cli(
        &app,
        &["users", "set-password", "carol@example.com"],
        "second-Passw0rd!\n",
    )
    .await;
    succeeded(&changed);
    assert!(
        !accepted(&app, &other.token).await,
        "session survived set-password"
    );
    let r = app.try_login("carol@example.com", "first-Passw0rd!").await;
    assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
    let again = app.login("carol@example.com", "second-Passw0rd!").await;

    // Every session of a user, by identifier.
    let revoked = cli(
        &app,
        &["sessions", "revoke", "--user", "carol@example.com"],
        "",
    )
    .await;
    assert!(
        succeeded(&revoked).contains("revoked 1"),
        "{}",
        out(&revoked)
    );
    assert!(!accepted(&app, &again.token).await);

    // All sessions.
    let admin = app.admin_token().await;
    let (anonymous, _) = app.anonymous_session().await;
    succeeded(&cli(&app, &["sessions", "revoke", "--all"], "").await);
    assert!(!accepted(&app, &admin).await);
    assert!(!accepted(&app, &anonymous).await);
    let stats = json(&cli(&app, &["sessions", "stats", "--json"], "").await);
    assert_eq!(stats["anonymous"], 0, "{stats}");
    assert_eq!(stats["authenticated"], 0, "{stats}");
    assert!(stats["invalidated"].as_u64().unwrap() >= 5, "{stats}");
    let cleaned = json(&cli(&app, &["cleanup", "--json"], "").await);
    assert!(cleaned["deleted"].as_u64().unwrap() >= 5, "{cleaned}");

    // Delete: gone from the listing, cannot log in.
    succeeded(&cli(&app, &["users", "delete", "carol@example.com"], "").await);
    let users = json(&cli(&app, &["users", "list", "--json"], "").await);
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["identifier"].as_str().unwrap())
        .collect();
    assert_eq!(names, [ADMIN], "{users}");
    let r = app.try_login("carol@example.com", "second-Passw0rd!").await;
    assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
}

mod users_and_sessions {
    use crate::helpers::Variant;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_memory() {
        super::users_and_sessions(Variant::SqliteMemory).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_tiered() {
        super::users_and_sessions(Variant::SqliteTiered).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_redis() {
        super::users_and_sessions(Variant::PostgresRedis).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_tiered() {
        super::users_and_sessions(Variant::PostgresTiered).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql_redis() {
        super::users_and_sessions(Variant::MysqlRedis).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql_memory() {
        super::users_and_sessions(Variant::MysqlMemory).await
    }
}

/// Refusals exit 1 with a message and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_exit_1_with_a_message() {
    let Some(app) = TestApp::spawn(Variant::SqliteMemory).await else {
        return;
    };
    let refused = |o: &Output, expect: &str| {
        assert_eq!(o.status.code(), Some(1), "{expect}: stderr {}", err(o));
        assert!(err(o).contains(expect), "{expect}: stderr {}", err(o));
    };
    refused(
        &cli(&app, &["users", "delete", "nobody"], "").await,
        "no user nobody",
    );
    refused(
        &cli(
            &app,
            &["users", "set-password", "nobody"],
            "x-Long-enough-1\n",
        )
        .await,
        "no user nobody",
    );
    refused(
        &cli(&app, &["sessions", "revoke", "--user", "nobody"], "").await,
        "no user nobody",
    );
    refused(
        &cli(&app, &["sessions", "list", "--user", "nobody"], "").await,
        "no user nobody",
    );
    refused(
        &cli(&app, &["sessions", "revoke", "--id", "999999"], "").await,
        "no live session 999999",
    );
    refused(
        &cli(
            &app,
            &["users", "create", "dave", "--role", "NO_SUCH_ROLE"],
            "pw-Long-enough-1\n",
        )
        .await,
        "no role NO_SUCH_ROLE (roles: SUPER_ADMIN)",
    );
    refused(
        &cli(&app, &["users", "create", "dave"], "").await,
        "no password on standard input",
    );
    refused(
        &cli(&app, &["users", "delete", ADMIN], "").await,
        "the superadmin user cannot be deleted",
    );
    // A usage error: clap's message, exit 1 as well.
    refused(
        &cli(&app, &["sessions", "revoke"], "").await,
        "required arguments were not provided",
    );
    refused(
        &cli(&app, &["sessions", "revoke", "--id", "1", "--all"], "").await,
        "cannot be used with",
    );
    // Nothing was created.
    let users = json(&cli(&app, &["users", "list", "--json"], "").await);
    assert_eq!(users.as_array().unwrap().len(), 1, "{users}");
    // A duplicate is refused by the service's own rule.
    succeeded(&cli(&app, &["users", "create", "erin"], "pw-Long-enough-1").await);
    let dup = cli(&app, &["users", "create", "ERIN"], "pw-Long-enough-1").await;
    assert_eq!(dup.status.code(), Some(1), "{}", err(&dup));
    // The password is the first line, without its newline: it logs in as typed.
    app.login("erin", "pw-Long-enough-1").await;
}

/// An unreachable database or Redis exits 2, saying which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_or_redis_exits_2() {
    // Port 1 on loopback: nothing listens there.
    let down = run(
        &["sessions", "stats"],
        vec![
            ("DATABASE_URL".into(), "postgres://u:p@127.0.0.1:1/x".into()),
            ("DATABASE_TIMEOUT".into(), "1s".into()),
        ],
        "",
    )
    .await;
    assert_eq!(down.status.code(), Some(2), "{}", err(&down));
    assert!(
        err(&down).contains("cannot connect to the database"),
        "{}",
        err(&down)
    );

    let dir = tempfile::tempdir().unwrap();
    let down = run(
        &["users", "list"],
        vec![
            (
                "DATABASE_URL".into(),
                format!("sqlite://{}/x.db?mode=rwc", dir.path().display()),
            ),
            ("REDIS_URL".into(), "redis://127.0.0.1:1/0".into()),
        ],
        "",
    )
    .await;
    assert_eq!(down.status.code(), Some(2), "{}", err(&down));
    assert!(
        err(&down).contains("cannot connect to Redis"),
        "{}",
        err(&down)
    );
}

/// `--json` output parses, and text output has a header and a line per row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_text_listings() {
    let Some(app) = TestApp::spawn(Variant::SqliteMemory).await else {
        return;
    };
    let (_, anonymous_id) = app.anonymous_session().await;
    app.admin_token().await;
    let sessions = json(&cli(&app, &["sessions", "list", "--json"], "").await);
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    // Newest first.
    assert_eq!(sessions[0]["kind"], "authenticated");
    assert_eq!(
        sessions[1]["id"].as_i64().unwrap().to_string(),
        anonymous_id
    );
    assert!(sessions[1]["userId"].is_null());
    let anonymous = json(
        &cli(
            &app,
            &["sessions", "list", "--kind", "anonymous", "--json"],
            "",
        )
        .await,
    );
    assert_eq!(anonymous.as_array().unwrap().len(), 1);
    // By user id as well as identifier.
    let by_id = json(&cli(&app, &["sessions", "list", "--user", "1", "--json"], "").await);
    assert_eq!(by_id.as_array().unwrap().len(), 1, "{by_id}");

    let stats = json(&cli(&app, &["sessions", "stats", "--json"], "").await);
    assert_eq!(stats["anonymous"], 1);
    assert_eq!(stats["authenticated"], 1);
    let users = json(&cli(&app, &["users", "list", "--json"], "").await);
    assert_eq!(users[0]["identifier"], ADMIN);
    assert_eq!(users[0]["verified"], true);

    let text = succeeded(&cli(&app, &["sessions", "list"], "").await);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("id\tkind\tuser"), "{text}");
    assert_eq!(lines.len(), 3, "{text}");
    // An empty listing is still valid JSON.
    let none = json(
        &cli(
            &app,
            &[
                "sessions",
                "list",
                "--user",
                ADMIN,
                "--kind",
                "anonymous",
                "--json",
            ],
            "",
        )
        .await,
    );
    assert_eq!(none, serde_json::json!([]));
}
