//! Throttles and limits: concurrent password guesses cannot race the login throttle (per
//! identifier and per client address), `changePassword` is throttled per user, identifiers are
//! one normalized form everywhere (and the migration brings stored ones to it),
//! `SESSION_MAX_PER_USER` ends the least recently used sessions, `ANONYMOUS_SESSIONS_PER_ADDRESS`
//! limits new anonymous sessions, and a login waits a bounded time for password hashing.

use crate::helpers::{services_required, str_of, Gql, TestApp, Variant, ADMIN, ADMIN_PASSWORD};
use futures_util::future::join_all;
use sea_orm::{ActiveValue::Set, ConnectionTrait, Database, EntityTrait};
use serde_json::json;
use session_server::config::{CacheMode, Config, TrustProxy};
use session_server::startup::Application;
use std::time::{Duration, Instant};

crate::all_caches!(
    concurrent_guesses_for_one_identifier_are_not_all_evaluated,
    concurrent_right_passwords_for_one_identifier_all_succeed,
    concurrent_guesses_from_one_address_are_not_all_evaluated,
    change_password_is_throttled_per_user,
    identifiers_are_one_normalized_form,
    login_beyond_session_max_ends_least_recently_used,
    anonymous_sessions_are_limited_per_address,
    one_request_checks_one_password,
    ipv6_clients_are_limited_per_64_network,
);

crate::variants!(concurrent_logins_under_the_session_cap_leave_one_live);

// The hashing queue does not depend on the database or the cache.
crate::sqlite_only!(a_login_waits_for_hashing_at_most_the_queue_timeout);

const CHANGE_PASSWORD: &str =
    "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }";

fn typename(r: &Gql) -> &str {
    r.data()["login"]["__typename"]
        .as_str()
        .unwrap_or_else(|| panic!("no login result: {}", r.body))
}

/// How many responses have each login outcome: (invalid credentials, too many attempts).
fn tally(responses: &[Gql]) -> (usize, usize) {
    let count = |t: &str| responses.iter().filter(|r| typename(r) == t).count();
    let (invalid, throttled) = (
        count("InvalidCredentialsError"),
        count("TooManyAttemptsError"),
    );
    assert_eq!(
        invalid + throttled,
        responses.len(),
        "unexpected outcomes: {:?}",
        responses.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    (invalid, throttled)
}

async fn concurrent_guesses_for_one_identifier_are_not_all_evaluated(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| c.login_max_attempts = 5).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "victim", "victim-password-1", &[])
        .await;
    let app = &app;
    let guesses =
        (0..30).map(|i| async move { app.try_login("victim", &format!("guess-{i}")).await });
    let responses: Vec<Gql> = join_all(guesses).await.into_iter().map(Gql::ok).collect();
    let (evaluated, throttled) = tally(&responses);
    assert!(
        (1..=5).contains(&evaluated),
        "{evaluated} of 30 concurrent guesses were evaluated (LOGIN_MAX_ATTEMPTS=5)"
    );
    assert_eq!(throttled, 30 - evaluated);
    for r in responses
        .iter()
        .filter(|r| typename(r) == "TooManyAttemptsError")
    {
        assert!(r.data()["login"]["retryAfterSeconds"].as_i64().unwrap() > 0);
    }
    // The identifier stays locked, even for the right password.
    let r = app.try_login("victim", "victim-password-1").await.ok();
    assert_eq!(typename(&r), "TooManyAttemptsError", "{}", r.body);
}

/// Logins with the right password sent at once do not refuse each other: an attempt still
/// being checked is not counted against the next (it used to be, as a failure not yet known to
/// be a success, with a retry after the whole `LOGIN_WINDOW`). One hash at a time, so every
/// reservation overlaps another.
async fn concurrent_right_passwords_for_one_identifier_all_succeed(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.login_max_attempts = 2;
        c.password_hash_concurrency = Some(1);
    })
    .await
    else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "double", "double-password-1", &[])
        .await;
    let app = &app;
    let logins = (0..6).map(|_| async move { app.try_login("double", "double-password-1").await });
    let responses: Vec<Gql> = join_all(logins).await.into_iter().map(Gql::ok).collect();
    for r in &responses {
        assert_eq!(typename(r), "AuthenticationSuccess", "{}", r.body);
    }
    // Guesses are still counted: two wrong passwords lock the identifier.
    for _ in 0..2 {
        let r = app.try_login("double", "wrong").await.ok();
        assert_eq!(typename(&r), "InvalidCredentialsError", "{}", r.body);
    }
    let r = app.try_login("double", "double-password-1").await.ok();
    assert_eq!(typename(&r), "TooManyAttemptsError", "{}", r.body);
}

async fn concurrent_guesses_from_one_address_are_not_all_evaluated(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.login_max_attempts = 1000;
        c.login_max_attempts_per_address = 4;
    })
    .await
    else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "olga", "olga-password-1", &[])
        .await;
    let r = app
        .gql_as(
            &admin,
            "mutation($i: CreateUserInput!) { createUser(input: $i) { id } }",
            json!({ "i": { "identifier": "pending", "password": "pending-password-1", "verified": false } }),
        )
        .await
        .ok();
    assert!(r.data()["createUser"]["id"].is_string());
    // Right passwords give their reservations back: more of them than the limit all pass.
    for _ in 0..6 {
        app.login("olga", "olga-password-1").await;
        let r = app.try_login("pending", "pending-password-1").await.ok();
        assert_eq!(typename(&r), "NotVerifiedError", "{}", r.body);
    }
    let app = &app;
    let guesses =
        (0..30).map(|i| async move { app.try_login(&format!("someone-{i}"), "guess").await });
    let responses: Vec<Gql> = join_all(guesses).await.into_iter().map(Gql::ok).collect();
    let (evaluated, throttled) = tally(&responses);
    assert!(
        (1..=4).contains(&evaluated),
        "{evaluated} of 30 concurrent guesses from one address were evaluated (limit 4)"
    );
    assert_eq!(throttled, 30 - evaluated);
    let r = app.try_login("olga", "olga-password-1").await.ok();
    assert_eq!(typename(&r), "TooManyAttemptsError", "{}", r.body);
}

async fn change_password_is_throttled_per_user(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| c.login_max_attempts = 3).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "paul", "paul-password-1", &[])
        .await;
    app.create_user(&admin, "rita", "rita-password-1", &[])
        .await;

    // Sequential: a right password gives its attempt back; three wrong ones lock.
    let paul = app.login("paul", "paul-password-1").await.token;
    let change = |current: &str, new: &str| {
        app.gql_as(&paul, CHANGE_PASSWORD, json!({ "c": current, "n": new }))
    };
    for _ in 0..2 {
        let r = change("wrong-password", "new-password-1").await;
        assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{}", r.body);
    }
    let r = change("paul-password-1", "paul-password-2").await.ok();
    assert_eq!(r.data()["changePassword"], true);
    let r = change("wrong-password", "new-password-1").await;
    assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{}", r.body);
    let r = change("paul-password-2", "paul-password-3").await;
    assert_eq!(r.error_code(), Some("RATE_LIMITED"), "{}", r.body);
    // Refused means unchanged.
    app.login("paul", "paul-password-2").await;

    // Concurrent: at most LOGIN_MAX_ATTEMPTS wrong passwords are evaluated.
    let rita = app.login("rita", "rita-password-1").await.token;
    let guesses = (0..12).map(|i| {
        app.gql_as(
            &rita,
            CHANGE_PASSWORD,
            json!({ "c": format!("guess-{i}"), "n": "new-password-1" }),
        )
    });
    let responses = join_all(guesses).await;
    let codes: Vec<Option<&str>> = responses.iter().map(Gql::error_code).collect();
    let evaluated = codes
        .iter()
        .filter(|c| **c == Some("BAD_USER_INPUT"))
        .count();
    let limited = codes.iter().filter(|c| **c == Some("RATE_LIMITED")).count();
    assert!((1..=3).contains(&evaluated), "{codes:?}");
    assert_eq!(evaluated + limited, 12, "{codes:?}");
    // Another user is not affected.
    app.create_user(&admin, "sam", "sam-password-1", &[]).await;
    let sam = app.login("sam", "sam-password-1").await.token;
    let r = app
        .gql_as(
            &sam,
            CHANGE_PASSWORD,
            json!({ "c": "sam-password-1", "n": "sam-password-2" }),
        )
        .await
        .ok();
    assert_eq!(r.data()["changePassword"], true);
}

const CREATE_USER: &str =
    "mutation($i: CreateUserInput!) { createUser(input: $i) { id identifier } }";

async fn identifiers_are_one_normalized_form(v: Variant) {
    // The superadmin identifier is normalized too: the helpers log in as "superadmin".
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.login_max_attempts = 2;
        c.superadmin_identifier = " SuperAdmin ".into();
    })
    .await
    else {
        return;
    };
    let admin = app.admin_token().await;
    let id = app
        .create_user(&admin, "admin2", "admin2-password", &[])
        .await;
    let r = app
        .gql_as(
            &admin,
            CREATE_USER,
            json!({ "i": { "identifier": " Admin2 ", "password": "other-password" } }),
        )
        .await;
    assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{}", r.body);
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("already exists")),
        "{}",
        r.body
    );
    let r = app.try_login("ADMIN2 ", "admin2-password").await.ok();
    assert_eq!(typename(&r), "AuthenticationSuccess", "{}", r.body);
    assert_eq!(r.data()["login"]["user"]["id"], id.as_str());
    assert_eq!(r.data()["login"]["user"]["identifier"], "admin2");
    // Failures under two spellings count against one counter (LOGIN_MAX_ATTEMPTS=2).
    for spelling in ["Admin2", "admin2 "] {
        let r = app.try_login(spelling, "wrong-password").await.ok();
        assert_eq!(typename(&r), "InvalidCredentialsError", "{}", r.body);
    }
    let r = app.try_login("admin2", "admin2-password").await.ok();
    assert_eq!(typename(&r), "TooManyAttemptsError", "{}", r.body);

    // updateUser stores the normal form; NFC makes composed and decomposed accents one.
    let r = app
        .gql_as(
            &admin,
            "mutation($i: UpdateUserInput!) { updateUser(input: $i) { identifier } }",
            json!({ "i": { "id": id, "identifier": " Jos\u{e9}.Admin " } }),
        )
        .await
        .ok();
    assert_eq!(r.data()["updateUser"]["identifier"], "jos\u{e9}.admin");
    let r = app
        .try_login("JOSE\u{301}.ADMIN", "admin2-password")
        .await
        .ok();
    assert_eq!(typename(&r), "AuthenticationSuccess", "{}", r.body);
    assert_eq!(r.data()["login"]["user"]["id"], id.as_str());

    // Distinct identifiers stay distinct: no collation folds accents (MySQL's default would).
    let jose = app.create_user(&admin, "jose", "jose-password", &[]).await;
    let r = app
        .gql_as(
            &admin,
            CREATE_USER,
            json!({ "i": { "identifier": "jos\u{e9}", "password": "jos\u{e9}-password" } }),
        )
        .await
        .ok();
    let jose_accent = str_of(&r.data()["createUser"]["id"]);
    assert_ne!(jose, jose_accent);
    let r = app.try_login("jose", "jose-password").await.ok();
    assert_eq!(r.data()["login"]["user"]["id"], jose.as_str(), "{}", r.body);
    let r = app.try_login("Jos\u{c9}", "jos\u{e9}-password").await.ok();
    assert_eq!(
        r.data()["login"]["user"]["id"],
        jose_accent.as_str(),
        "{}",
        r.body
    );
}

async fn login_beyond_session_max_ends_least_recently_used(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.session_max_per_user = 3;
        // Activity reaches the database (or the pending writes) within a fraction of a second.
        c.session_activity_write_interval = Duration::from_millis(200);
    })
    .await
    else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "mia", "mia-password-1", &[]).await;
    let pause = Duration::from_millis(250);
    let mut tokens = vec![];
    for _ in 0..3 {
        tokens.push(app.login("mia", "mia-password-1").await.token);
        tokio::time::sleep(pause).await;
    }
    // A fourth login ends the least recently used: the first.
    tokens.push(app.login("mia", "mia-password-1").await.token);
    assert!(
        app.active_session(&tokens[0]).await.is_null(),
        "the least recently used session outlived SESSION_MAX_PER_USER"
    );
    // Using the second makes the third the least recently used, though it is newer.
    tokio::time::sleep(pause).await;
    assert_eq!(
        app.active_session(&tokens[1]).await["kind"],
        "AUTHENTICATED"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    tokens.push(app.login("mia", "mia-password-1").await.token);
    assert!(
        app.active_session(&tokens[2]).await.is_null(),
        "the third session (least recently used) is still live"
    );
    for (i, t) in tokens.iter().enumerate().skip(3).chain([(1, &tokens[1])]) {
        assert_eq!(
            app.active_session(t).await["kind"],
            "AUTHENTICATED",
            "session {} ended",
            i + 1
        );
    }
    // Other users' sessions are not counted.
    assert_eq!(app.active_session(&admin).await["kind"], "AUTHENTICATED");
}

async fn anonymous_sessions_are_limited_per_address(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| c.anonymous_sessions_per_address = 5).await else {
        return;
    };
    let creations =
        (0..12).map(|_| app.gql("mutation { createAnonymousSession { id } }", json!({})));
    let responses = join_all(creations).await;
    let created: Vec<String> = responses.iter().filter_map(Gql::session_token).collect();
    let limited = responses
        .iter()
        .filter(|r| r.error_code() == Some("RATE_LIMITED"))
        .count();
    assert_eq!(
        (created.len(), limited),
        (5, 7),
        "{:?}",
        responses.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    for r in responses.iter().filter(|r| r.error_code().is_some()) {
        assert!(r.session_token().is_none());
    }
    // createOrder's implicit session is counted by the same limit.
    let r = app.gql("mutation { createOrder { id } }", json!({})).await;
    assert_eq!(r.error_code(), Some("RATE_LIMITED"), "{}", r.body);
    assert!(r.session_token().is_none());
    // A client that has a session keeps it (no new session is created).
    let r = app
        .gql_as(
            &created[0],
            "mutation { createAnonymousSession { id } }",
            json!({}),
        )
        .await
        .ok();
    assert!(r.data()["createAnonymousSession"]["id"].is_string());
    let r = app
        .gql_as(&created[0], "mutation { createOrder { id } }", json!({}))
        .await
        .ok();
    assert!(r.data()["createOrder"]["id"].is_string());
    // Logins are not anonymous sessions.
    app.admin_token().await;
}

async fn a_login_waits_for_hashing_at_most_the_queue_timeout(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.password_hash_concurrency = Some(1);
        c.password_queue_timeout = Duration::from_millis(20);
        c.login_max_attempts = 1000;
        c.login_max_attempts_per_address = 1000;
    })
    .await
    else {
        return;
    };
    let app = &app;
    let attempts = (0..16).map(|i| async move {
        let started = Instant::now();
        let r = app.try_login(&format!("user-{i}"), "guess").await;
        (r, started.elapsed())
    });
    let answered = tokio::time::timeout(Duration::from_secs(20), join_all(attempts))
        .await
        .expect("every login is answered");
    let limited: Vec<Duration> = answered
        .iter()
        .filter(|(r, _)| r.error_code() == Some("RATE_LIMITED"))
        .map(|(_, took)| *took)
        .collect();
    let evaluated = answered
        .iter()
        .filter(|(r, _)| r.data()["login"]["__typename"] == "InvalidCredentialsError")
        .count();
    assert!(
        !limited.is_empty() && evaluated >= 1 && limited.len() + evaluated == 16,
        "{:?}",
        answered.iter().map(|(r, _)| &r.body).collect::<Vec<_>>()
    );
    // Refused while waiting, not after hashing everything queued before them.
    for took in &limited {
        assert!(
            *took < Duration::from_secs(5),
            "RATE_LIMITED after {took:?}"
        );
    }
    // Not evaluated means not counted, and the server is not stuck.
    let r = app.try_login(ADMIN, ADMIN_PASSWORD).await.ok();
    assert_eq!(typename(&r), "AuthenticationSuccess", "{}", r.body);
}

// ---- the migration that normalizes stored identifiers ----

/// A database of `variant`'s kind with only the first migration applied, dropped at the end.
pub(crate) struct OldDatabase {
    pub(crate) url: String,
    /// For PostgreSQL and MySQL: the server URL and the statement that drops the database.
    server: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl OldDatabase {
    /// A new database of its own, with only the first migration applied.
    pub(crate) async fn create(variant: Variant) -> Option<OldDatabase> {
        let var = match variant {
            Variant::PostgresMemory => Some("TEST_POSTGRES_URL"),
            Variant::MysqlMemory => Some("TEST_MYSQL_URL"),
            _ => None,
        };
        let (url, server, dir) = match var {
            None => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/old.db?mode=rwc", dir.path().display());
                (url, None, Some(dir))
            }
            Some(var) => {
                let Some(admin_url) = std::env::var(var).ok().filter(|u| !u.is_empty()) else {
                    assert!(
                        !services_required(),
                        "REQUIRE_SERVICES=1 but {var} is not set"
                    );
                    eprintln!("skipped {variant:?}: {var} is not set");
                    return None;
                };
                let name = format!(
                    "ss_old_{}",
                    session_server::token::random_string(9)
                        .to_lowercase()
                        .replace(['-', '_'], "x")
                );
                let (create, drop) = if var == "TEST_POSTGRES_URL" {
                    (
                        format!("CREATE DATABASE \"{name}\""),
                        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                    )
                } else {
                    (
                        format!("CREATE DATABASE `{name}`"),
                        format!("DROP DATABASE IF EXISTS `{name}`"),
                    )
                };
                let admin = Database::connect(&admin_url).await.expect("connect");
                admin
                    .execute_unprepared(&create)
                    .await
                    .expect("create the database");
                let url = crate::helpers::with_database(&admin_url, &name);
                (url, Some((admin_url, drop)), None)
            }
        };
        let db = Database::connect(&url).await.expect("connect");
        use migration::MigratorTrait as _;
        migration::Migrator::up(&db, Some(1))
            .await
            .expect("the first migration");
        Some(OldDatabase {
            url,
            server,
            _dir: dir,
        })
    }

    /// Inserts users as an older version stored them (identifiers only trimmed, or not at all).
    async fn insert_users(&self, users: &[(&str, &str)]) {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let db = Database::connect(&self.url).await.expect("connect");
        for (identifier, password) in users {
            let salt = SaltString::encode_b64(b"sixteen byte salt").unwrap();
            let hash = argon2::Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .unwrap()
                .to_string();
            entity::user::Entity::insert(entity::user::ActiveModel {
                identifier: Set(identifier.to_string()),
                password_hash: Set(hash),
                verified: Set(true),
                created_at: Set(0),
                last_login_at: Set(None),
                ..Default::default()
            })
            .exec(&db)
            .await
            .expect("insert a user");
        }
    }

    pub(crate) async fn drop_database(self) {
        if let Some((admin_url, drop)) = &self.server {
            let admin = Database::connect(admin_url).await.expect("connect");
            let _ = admin.execute_unprepared(drop).await;
        }
    }
}

pub(crate) fn config_for(url: &str) -> Config {
    let mut config = Config::from_env().expect("default configuration");
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.database_url = url.to_string();
    config.database_max_connections = 5;
    config.redis_url = None;
    config.session_cache = CacheMode::Memory;
    config.superadmin_identifier = ADMIN.into();
    config.superadmin_password = ADMIN_PASSWORD.into();
    config.log = "warn".into();
    config
}

async fn migration_normalizes_stored_identifiers(v: Variant) {
    let Some(old) = OldDatabase::create(v).await else {
        return;
    };
    old.insert_users(&[(" Alice ", "alice-password"), ("BOB", "bob-password")])
        .await;
    {
        let Some(app) = TestApp::spawn_with(v, |c| c.database_url = old.url.clone()).await else {
            return;
        };
        for (name, password) in [("alice", "alice-password"), ("Bob ", "bob-password")] {
            let r = app.try_login(name, password).await.ok();
            assert_eq!(typename(&r), "AuthenticationSuccess", "{}", r.body);
        }
        let admin = app.admin_token().await;
        let r = app
            .gql_as(&admin, "{ users { nodes { identifier } } }", json!({}))
            .await
            .ok();
        let mut stored: Vec<String> = r.data()["users"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| str_of(&u["identifier"]))
            .collect();
        stored.sort();
        assert_eq!(stored, ["alice", "bob", "superadmin"]);
    }
    old.drop_database().await;
}

async fn migration_refuses_identifiers_that_collide(v: Variant) {
    let Some(old) = OldDatabase::create(v).await else {
        return;
    };
    // Distinct before (even under MySQL's case-insensitive collation), one identifier after.
    old.insert_users(&[("carol", "carol-password"), (" Carol", "other-password")])
        .await;
    let err = match Application::build(config_for(&old.url)).await {
        Ok(_) => panic!("the server started with two users named 'carol'"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("migration") && err.contains("'carol'"),
        "the error does not name the identifier: {err}"
    );
    // Nothing was merged or rewritten.
    let db = Database::connect(&old.url).await.expect("connect");
    let mut identifiers: Vec<String> = entity::user::Entity::find()
        .all(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.identifier)
        .collect();
    identifiers.sort();
    assert_eq!(identifiers, [" Carol", "carol"]);
    drop(db);
    old.drop_database().await;
}

/// One test per database (the cache plays no part in a migration).
macro_rules! per_database {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use crate::helpers::Variant;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() { super::$name(Variant::SqliteMemory).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() { super::$name(Variant::PostgresMemory).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql() { super::$name(Variant::MysqlMemory).await }
            }
        )*
    };
}

per_database!(
    migration_normalizes_stored_identifiers,
    migration_refuses_identifiers_that_collide,
);

/// Logins at the same moment under `SESSION_MAX_PER_USER=1`: each ends only the sessions older
/// than its own. Counting each other, two logins whose commits both came before either's count
/// ended each other and left none. The interleaving is made exact: B logs in after A, then A's
/// count runs (through a second instance of the deployment): it must leave B alone.
async fn concurrent_logins_under_the_session_cap_leave_one_live(v: Variant) {
    use session_server::service::events::Origin;
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.session_max_per_user = 1;
        c.login_max_attempts = 1000;
    })
    .await
    else {
        return;
    };
    let admin = app.admin_token().await;
    let nina: i64 = app
        .create_user(&admin, "nina", "nina-password-1", &[])
        .await
        .parse()
        .expect("numeric id");
    let a = app.login("nina", "nina-password-1").await;
    let a_id: i64 = a.body["data"]["login"]["session"]["id"]
        .as_str()
        .expect("session id")
        .parse()
        .expect("numeric id");
    let b = app.login("nina", "nina-password-1").await;
    assert!(
        app.active_session(&a.token).await.is_null(),
        "B's count ends the older A"
    );
    let other = session_server::startup::Application::build(app.config.clone())
        .await
        .expect("a second instance");
    let origin = Origin {
        actor_user_id: Some(nina),
        client: Default::default(),
        channel_id: None,
    };
    let ended = other
        .services()
        .sessions
        .enforce_session_cap(nina, a_id, &origin)
        .await
        .expect("the cap");
    assert_eq!(ended, 0, "A's count ended a newer session");
    assert!(
        !app.active_session(&b.token).await.is_null(),
        "the newest login was ended"
    );
    // And logins at once leave exactly one live.
    let logins =
        futures_util::future::join_all((0..6).map(|_| app.try_login("nina", "nina-password-1")))
            .await;
    let mut live = 0;
    for l in &logins {
        assert_eq!(typename(l), "AuthenticationSuccess", "{}", l.body);
        if !app
            .active_session(&l.session_token().expect("token"))
            .await
            .is_null()
        {
            live += 1;
        }
    }
    assert_eq!(live, 1, "live sessions under a cap of one");
}

/// A document with many aliased `login`s (or `changePassword`s) checks one password: the
/// others are `BAD_USER_INPUT` and count as no attempt, so one request can neither lock an
/// identifier out nor multiply the events the throttle allows.
async fn one_request_checks_one_password(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| c.login_max_attempts = 3).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "aliased", "aliased-password-1", &[])
        .await;
    let logins: String = (0..20)
        .map(|i| {
            format!("l{i}: login(username: \"aliased\", password: \"guess-{i}\") {{ __typename }} ")
        })
        .collect();
    let r = app.gql(&format!("mutation {{ {logins}}}"), json!({})).await;
    // The first login runs; the second is refused, which (its field being non-null) ends the
    // document with `data: null`.
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{}", r.body);
    // One failure counted (of three allowed): the right password still logs in.
    let r = app.try_login("aliased", "aliased-password-1").await.ok();
    assert_eq!(typename(&r), "AuthenticationSuccess", "{}", r.body);
    let token = r.session_token().expect("session-token");
    let changes: String = (0..3)
        .map(|i| format!("c{i}: changePassword(currentPassword: \"aliased-password-1\", newPassword: \"new-{i}-password\") "))
        .collect();
    let r = app
        .gql_as(&token, &format!("mutation {{ {changes}}}"), json!({}))
        .await;
    assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{}", r.body);
    // The first change ran, and only it.
    let r = app.try_login("aliased", "new-0-password").await.ok();
    assert_eq!(typename(&r), "AuthenticationSuccess", "{}", r.body);
}

/// Per-address limits count an IPv6 client by its /64 network, which one client usually holds
/// whole: taking a fresh address in it for every attempt gains nothing. Other networks, and
/// IPv4 clients (also written IPv4-mapped), are counted on their own.
async fn ipv6_clients_are_limited_per_64_network(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.anonymous_sessions_per_address = 2;
        c.trust_proxy = TrustProxy::hops(1);
    })
    .await
    else {
        return;
    };
    let create = |from: &'static str| {
        let app = &app;
        async move {
            TestApp::send(
                app.post("mutation { createAnonymousSession { id } }", json!({}))
                    .header("x-forwarded-for", from),
            )
            .await
        }
    };
    for from in ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9"] {
        let r = create(from).await;
        assert!(r.session_token().is_some(), "{from}: {}", r.body);
    }
    let r = create("2001:db8:1:2:abcd:1:2:3").await;
    assert_eq!(r.error_code(), Some("RATE_LIMITED"), "{}", r.body);
    for from in ["2001:db8:1:3::1", "198.51.100.7", "::ffff:198.51.100.8"] {
        let r = create(from).await;
        assert!(r.session_token().is_some(), "{from}: {}", r.body);
    }
    // 198.51.100.7 written IPv4-mapped is the same client.
    let r = create("::ffff:198.51.100.7").await;
    assert!(r.session_token().is_some(), "{}", r.body);
    let r = create("198.51.100.7").await;
    assert_eq!(r.error_code(), Some("RATE_LIMITED"), "{}", r.body);
}
