//! `TestApp`: a real server on port 0 with its own database (a SQLite file, or a fresh
//! PostgreSQL / MariaDB database) and its own Redis key namespace, plus GraphQL helpers.
//!
//! Backends other than SQLite come from `TEST_POSTGRES_URL`, `TEST_MYSQL_URL` and
//! `TEST_REDIS_URL`; without them a test prints a notice and passes, unless
//! `REQUIRE_SERVICES=1`, under which a skip is a failure.

#![allow(dead_code)]

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{json, Value};
use session_server::config::{CacheMode, Config};
use session_server::startup::Application;
use std::time::Duration;

/// The database and cache a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    SqliteMemory,
    SqliteRedis,
    PostgresRedis,
    PostgresMemory,
    MysqlMemory,
    MysqlRedis,
    /// The `tiered` cache (in process in front of Redis).
    SqliteTiered,
    PostgresTiered,
    MysqlTiered,
    /// SQLite with the `redis` cache on a three-master Redis Cluster started once per test
    /// binary (see [`crate::cluster::shared_cluster`]); needs `redis-server` and `redis-cli`.
    SqliteRedisCluster,
}

impl Variant {
    fn needs(self) -> Vec<&'static str> {
        let mut v = vec![];
        match self {
            Variant::PostgresRedis | Variant::PostgresMemory | Variant::PostgresTiered => {
                v.push("TEST_POSTGRES_URL")
            }
            Variant::MysqlMemory | Variant::MysqlRedis | Variant::MysqlTiered => {
                v.push("TEST_MYSQL_URL")
            }
            _ => {}
        }
        if self.uses_redis() && self != Variant::SqliteRedisCluster {
            v.push("TEST_REDIS_URL");
        }
        v
    }

    pub fn uses_redis(self) -> bool {
        matches!(
            self,
            Variant::SqliteRedis | Variant::PostgresRedis | Variant::MysqlRedis
        ) || self == Variant::SqliteRedisCluster
            || self.tiered()
    }

    pub fn tiered(self) -> bool {
        matches!(
            self,
            Variant::SqliteTiered | Variant::PostgresTiered | Variant::MysqlTiered
        )
    }
}

/// Generates one `#[tokio::test]` per variant for each named `async fn name(v: Variant)`.
/// Every backend is covered with both cache strategies across the set.
#[macro_export]
macro_rules! variants {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::helpers::Variant;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_memory() { super::$name(Variant::SqliteMemory).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_redis() { super::$name(Variant::SqliteRedis).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_redis() { super::$name(Variant::PostgresRedis).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql_memory() { super::$name(Variant::MysqlMemory).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_redis_cluster() { super::$name(Variant::SqliteRedisCluster).await }
            }
        )*
    };
}

/// Like [`variants!`] but over every database with every cache strategy (memory, redis and
/// tiered each at least once, every database at least twice): for the trust rules, which must
/// hold everywhere.
#[macro_export]
macro_rules! all_caches {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::helpers::Variant;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_memory() { super::$name(Variant::SqliteMemory).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_tiered() { super::$name(Variant::SqliteTiered).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_memory() { super::$name(Variant::PostgresMemory).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_redis() { super::$name(Variant::PostgresRedis).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql_memory() { super::$name(Variant::MysqlMemory).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql_tiered() { super::$name(Variant::MysqlTiered).await }
            }
        )*
    };
}

/// Generates tests on PostgreSQL and MariaDB only, for tests that force an interleaving with
/// a row lock (`SELECT … FOR UPDATE` from the test), which SQLite does not have.
#[macro_export]
macro_rules! server_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::helpers::Variant;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() { super::$name(Variant::PostgresMemory).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql() { super::$name(Variant::MysqlMemory).await }
            }
        )*
    };
}

/// Like [`variants!`] but only on SQLite with the memory cache: for transport rules that do
/// not depend on the backend.
#[macro_export]
macro_rules! sqlite_only {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_memory() { super::$name($crate::helpers::Variant::SqliteMemory).await }
            }
        )*
    };
}

/// A short random lower-case suffix for a test database's name.
pub fn random_suffix() -> String {
    session_server::token::random_string(9)
        .to_lowercase()
        .replace(['-', '_'], "x")
}

/// Replaces the database name (the URL path) of a connection URL.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..host_end], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

enum DbGuard {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Server {
        admin_url: String,
        name: String,
        postgres: bool,
    },
}

impl Drop for DbGuard {
    fn drop(&mut self) {
        if let DbGuard::Server {
            admin_url,
            name,
            postgres,
        } = self
        {
            let sql = if *postgres {
                format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")
            } else {
                format!("DROP DATABASE IF EXISTS `{name}`")
            };
            crate::procs::drop_database(admin_url.clone(), sql);
        }
    }
}

pub struct TestApp {
    /// The GraphQL client of this server (methods reachable through `Deref`).
    pub api: Api,
    pub port: u16,
    pub variant: Variant,
    pub database_url: String,
    pub redis_prefix: String,
    /// The configuration it started with (a [`TestApp::sibling`] starts with the same).
    pub config: Config,
    running: Running,
    _db: DbGuard,
}

/// A server running in this process; stopped when dropped.
struct Running {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Starts a server with `config` and returns it with its port.
    async fn start(config: Config) -> (Running, u16) {
        let app = Application::build(config).await.expect("the server starts");
        let port = app.port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = app
                .run_until_stopped(async {
                    let _ = rx.await;
                })
                .await;
        });
        let running = Running {
            shutdown: Some(tx),
            server: Some(server),
        };
        (running, port)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            h.abort();
        }
    }
}

/// A second instance of a [`TestApp`]'s deployment: same database, cache and Redis prefix.
pub struct Sibling {
    pub api: Api,
    _running: Running,
}

impl std::ops::Deref for Sibling {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A GraphQL response: status, headers and the JSON body.
pub struct Gql {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Gql {
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }

    /// `extensions.code` of the first error, if any.
    pub fn error_code(&self) -> Option<&str> {
        self.body["errors"][0]["extensions"]["code"].as_str()
    }

    /// Panics with the whole body when the response has errors.
    pub fn ok(self) -> Self {
        assert!(
            self.body.get("errors").is_none_or(|e| e.is_null()),
            "unexpected errors: {}",
            self.body
        );
        self
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn session_token(&self) -> Option<String> {
        self.header("session-token")
    }

    pub fn refresh_token(&self) -> Option<String> {
        self.header("refresh-token")
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    }

    /// The `Set-Cookie` line for cookie `name`, if the response set one.
    pub fn cookie(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}=");
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with(&prefix))
    }
}

/// Tokens from a successful login.
pub struct Login {
    pub token: String,
    pub refresh_token: String,
    pub body: Value,
}

/// Whether `REQUIRE_SERVICES=1` turns skips into failures.
pub fn services_required() -> bool {
    std::env::var("REQUIRE_SERVICES").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The environment variables a variant needs, or `None` (after a notice) when it is skipped.
fn service_urls(variant: Variant) -> Option<Vec<String>> {
    let mut urls = vec![];
    if variant == Variant::SqliteRedisCluster {
        urls.push(crate::cluster::shared_cluster()?.url.clone());
    }
    for var in variant.needs() {
        match std::env::var(var).ok().filter(|v| !v.is_empty()) {
            Some(url) => urls.push(url),
            None => {
                assert!(
                    !services_required(),
                    "REQUIRE_SERVICES=1 but {var} is not set ({variant:?})"
                );
                eprintln!("skipped {variant:?}: {var} is not set");
                return None;
            }
        }
    }
    Some(urls)
}

/// A JSON string value as a `String`; panics with the value otherwise.
pub fn str_of(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
        .to_string()
}

pub const ADMIN: &str = "superadmin";
pub const ADMIN_PASSWORD: &str = "superadmin";

impl TestApp {
    /// A server with the default configuration, or `None` when the variant is skipped.
    pub async fn spawn(variant: Variant) -> Option<TestApp> {
        Self::spawn_with(variant, |_| {}).await
    }

    /// A server whose configuration `tweak` may change before it starts.
    pub async fn spawn_with(variant: Variant, tweak: impl FnOnce(&mut Config)) -> Option<TestApp> {
        let urls = service_urls(variant)?;
        let suffix = random_suffix();
        let (database_url, guard) = match variant {
            Variant::SqliteMemory
            | Variant::SqliteRedis
            | Variant::SqliteTiered
            | Variant::SqliteRedisCluster => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/test.db?mode=rwc", dir.path().display());
                (url, DbGuard::Sqlite(dir))
            }
            Variant::PostgresRedis
            | Variant::PostgresMemory
            | Variant::PostgresTiered
            | Variant::MysqlMemory
            | Variant::MysqlRedis
            | Variant::MysqlTiered => {
                let postgres = matches!(
                    variant,
                    Variant::PostgresRedis | Variant::PostgresMemory | Variant::PostgresTiered
                );
                let admin_url = std::env::var(if postgres {
                    "TEST_POSTGRES_URL"
                } else {
                    "TEST_MYSQL_URL"
                })
                .unwrap();
                let name = format!("ss_test_{suffix}");
                let admin = Database::connect(&admin_url)
                    .await
                    .expect("connect to the test database server");
                let create = if postgres {
                    format!("CREATE DATABASE \"{name}\"")
                } else {
                    format!("CREATE DATABASE `{name}`")
                };
                admin
                    .execute_unprepared(&create)
                    .await
                    .expect("create the test database");
                let _ = admin.close().await;
                (
                    with_database(&admin_url, &name),
                    DbGuard::Server {
                        admin_url,
                        name,
                        postgres,
                    },
                )
            }
        };
        let mut config = Config::from_env().expect("default configuration");
        config.bind = "127.0.0.1:0".parse().unwrap();
        config.database_url = database_url.clone();
        config.database_max_connections = 5;
        config.redis_key_prefix = format!("ss-test:{suffix}:");
        if variant == Variant::SqliteRedisCluster {
            config.redis_url = Some(urls[0].clone());
            config.session_cache = CacheMode::Redis;
        } else if variant.tiered() {
            config.redis_url = Some(std::env::var("TEST_REDIS_URL").unwrap());
            config.session_cache = CacheMode::Tiered;
        } else if variant.uses_redis() {
            config.redis_url = Some(std::env::var("TEST_REDIS_URL").unwrap());
            config.session_cache = CacheMode::Redis;
        } else {
            config.redis_url = None;
            config.session_cache = CacheMode::Memory;
        }
        config.superadmin_identifier = ADMIN.into();
        config.superadmin_password = ADMIN_PASSWORD.into();
        config.log = "warn".into();
        tweak(&mut config);
        let (running, port) = Running::start(config.clone()).await;
        Some(TestApp {
            api: Api::new(port, Duration::from_secs(30)),
            port,
            variant,
            database_url,
            redis_prefix: format!("ss-test:{suffix}:"),
            config,
            running,
            _db: guard,
        })
    }

    /// Another instance of this deployment (same database, cache strategy and Redis prefix,
    /// its own port and in-process caches), as a second server behind a load balancer.
    pub async fn sibling(&self) -> Sibling {
        let (running, port) = Running::start(self.config.clone()).await;
        Sibling {
            api: Api::new(port, Duration::from_secs(30)),
            _running: running,
        }
    }
}

/// A GraphQL client for one server: requests, logins and admin shortcuts.
pub struct Api {
    pub address: String,
    pub client: reqwest::Client,
}

impl TestApp {
    pub async fn send(req: reqwest::RequestBuilder) -> Gql {
        Api::send(req).await
    }
}

impl std::ops::Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Api {
    pub fn new(port: u16, timeout: Duration) -> Api {
        Api {
            address: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder().timeout(timeout).build().unwrap(),
        }
    }

    /// `GET /health`: status and JSON body.
    pub async fn health(&self) -> (u16, Value) {
        let r = self
            .client
            .get(self.url("/health"))
            .send()
            .await
            .expect("/health answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("/metrics answers")
            .text()
            .await
            .unwrap()
    }

    /// The value of the unlabelled metric `name` (e.g. `session_server_db_statements_total`)
    /// in `/metrics`; panics when it is missing.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}")) as u64
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A POST to `/graphql` with a JSON body, ready for extra headers.
    pub fn post(&self, query: &str, variables: Value) -> reqwest::RequestBuilder {
        self.client
            .post(self.url("/graphql"))
            .header("content-type", "application/json")
            .body(json!({ "query": query, "variables": variables }).to_string())
    }

    pub async fn send(req: reqwest::RequestBuilder) -> Gql {
        let resp = req.send().await.expect("the request is answered");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
        Gql {
            status,
            headers,
            body,
        }
    }

    /// Runs an operation without a token.
    pub async fn gql(&self, query: &str, variables: Value) -> Gql {
        Self::send(self.post(query, variables)).await
    }

    /// Runs an operation with a bearer token.
    pub async fn gql_as(&self, token: &str, query: &str, variables: Value) -> Gql {
        Self::send(self.post(query, variables).bearer_auth(token)).await
    }

    /// Runs an operation with the token in the `session` cookie.
    pub async fn gql_cookie(&self, token: &str, query: &str, variables: Value) -> Gql {
        Self::send(
            self.post(query, variables)
                .header("cookie", format!("session={token}")),
        )
        .await
    }

    /// Logs in; returns the response whatever its outcome.
    pub async fn try_login(&self, username: &str, password: &str) -> Gql {
        self.gql(
            "mutation($u: String!, $p: String!) { login(username: $u, password: $p) {
                __typename
                ... on AuthenticationSuccess { user { id identifier } session { id kind } }
                ... on InvalidCredentialsError { errorCode message }
                ... on NotVerifiedError { errorCode message }
                ... on TooManyAttemptsError { errorCode message retryAfterSeconds }
            } }",
            json!({ "u": username, "p": password }),
        )
        .await
    }

    /// Logs in and panics unless it succeeds.
    pub async fn login(&self, username: &str, password: &str) -> Login {
        let r = self.try_login(username, password).await.ok();
        assert_eq!(
            r.data()["login"]["__typename"],
            "AuthenticationSuccess",
            "login failed: {}",
            r.body
        );
        Login {
            token: r.session_token().expect("session-token header"),
            refresh_token: r.refresh_token().expect("refresh-token header"),
            body: r.body,
        }
    }

    /// The superadmin's session token.
    pub async fn admin_token(&self) -> String {
        self.login(ADMIN, ADMIN_PASSWORD).await.token
    }

    /// Creates a verified user (as the superadmin) and returns their id.
    pub async fn create_user(
        &self,
        admin: &str,
        identifier: &str,
        password: &str,
        role_ids: &[&str],
    ) -> String {
        let r = self
            .gql_as(
                admin,
                "mutation($i: CreateUserInput!) { createUser(input: $i) { id } }",
                json!({ "i": { "identifier": identifier, "password": password, "roleIds": role_ids } }),
            )
            .await
            .ok();
        r.data()["createUser"]["id"].as_str().unwrap().to_string()
    }

    /// Makes the channel of `channel_token` the session's active channel; panics unless it
    /// succeeds.
    pub async fn set_active_channel(&self, token: &str, channel_token: &str) {
        let r = self
            .gql_as(
                token,
                "mutation($t: String!) { setActiveChannel(token: $t) { id } }",
                json!({ "t": channel_token }),
            )
            .await
            .ok();
        assert!(r.data()["setActiveChannel"]["id"].is_string(), "{}", r.body);
    }

    /// Starts an anonymous session: `(token, session id)`.
    pub async fn anonymous_session(&self) -> (String, String) {
        let r = self
            .gql("mutation { createAnonymousSession { id } }", json!({}))
            .await
            .ok();
        (
            r.session_token().expect("session-token header"),
            str_of(&r.data()["createAnonymousSession"]["id"]),
        )
    }

    /// Creates a channel (as `admin`) with a generated token and returns (id, token).
    pub async fn create_channel(&self, admin: &str, code: &str) -> (String, String) {
        let r = self
            .gql_as(
                admin,
                "mutation($i: CreateChannelInput!) { createChannel(input: $i) { id code token } }",
                json!({ "i": { "code": code } }),
            )
            .await
            .ok();
        let c = &r.data()["createChannel"];
        assert_eq!(c["code"], code);
        let text = |v: &Value| v.as_str().expect("a string").to_string();
        (text(&c["id"]), text(&c["token"]))
    }

    /// Creates a role with `permissions` in the default channel and returns its id.
    pub async fn create_role(&self, admin: &str, code: &str, permissions: &[&str]) -> String {
        let channel = self.default_channel_id(admin).await;
        let r = self
            .gql_as(
                admin,
                "mutation($i: CreateRoleInput!) { createRole(input: $i) { id } }",
                json!({ "i": { "code": code, "permissions": permissions, "channelIds": [channel] } }),
            )
            .await
            .ok();
        r.data()["createRole"]["id"].as_str().unwrap().to_string()
    }

    /// Creates a role (as `token`) with `permissions` in `channels` and returns its id.
    pub async fn create_role_in(
        &self,
        token: &str,
        code: &str,
        permissions: &[&str],
        channels: &[&str],
    ) -> String {
        let r = self
            .gql_as(
                token,
                "mutation($i: CreateRoleInput!) { createRole(input: $i) { id } }",
                json!({ "i": { "code": code, "permissions": permissions, "channelIds": channels } }),
            )
            .await
            .ok();
        str_of(&r.data()["createRole"]["id"])
    }

    pub async fn default_channel_id(&self, token: &str) -> String {
        let r = self
            .gql_as(token, "{ activeChannel { id code } }", json!({}))
            .await
            .ok();
        assert_eq!(r.data()["activeChannel"]["code"], "default");
        r.data()["activeChannel"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The `activeSession` of a token (null when it is not valid).
    pub async fn active_session(&self, token: &str) -> Value {
        self.gql_as(
            token,
            "{ activeSession { id kind current lastActiveAt expiresAt user { id identifier } } }",
            json!({}),
        )
        .await
        .ok()
        .data()["activeSession"]
            .clone()
    }
}

/// Holds the rows `query` selects (`SELECT … FOR UPDATE`) in a transaction of its own until
/// it is committed: a request that writes them waits, so a test can let another request in
/// between. Panics when the query selects nothing.
pub async fn hold_rows<E: sea_orm::EntityTrait>(
    db: &sea_orm::DatabaseConnection,
    query: sea_orm::Select<E>,
) -> sea_orm::DatabaseTransaction {
    use sea_orm::{QuerySelect, TransactionTrait};
    let txn = db.begin().await.expect("begin");
    let held = query
        .lock_exclusive()
        .all(&txn)
        .await
        .expect("lock the rows");
    assert!(!held.is_empty(), "no row to hold");
    txn
}
