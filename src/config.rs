//! Configuration: every setting is an environment variable and a `serve` flag (clap), with the
//! defaults of the API contract. This is the only module that reads the environment.

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod layers;
mod redis_url;

pub use self::layers::{load, load_from, mask_url_password, Effective, Invocation, LoadError};
pub use self::redis_url::{RedisTarget, RedisUrlError};

/// A configuration the server refuses to start with; the message names the setting.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    #[error("{0} must be greater than zero")]
    NotPositive(&'static str),
    #[error(
        "SESSION_IDLE_TIMEOUT ({idle}) must not be longer than SESSION_ABSOLUTE_TIMEOUT ({absolute})"
    )]
    IdleLongerThanAbsolute { idle: String, absolute: String },
    #[error("SESSION_CACHE={0} needs REDIS_URL")]
    CacheNeedsRedis(&'static str),
    #[error(transparent)]
    RedisUrl(#[from] RedisUrlError),
    /// Any other refused setting, with the rule it breaks.
    #[error("{0}")]
    Refused(&'static str),
    /// A refused webhook setting; the message names the setting and the offending entries
    /// (never the secret).
    #[error("{0}")]
    Webhook(String),
}

#[derive(Parser, Debug)]
#[command(name = "session-server", version, about = "A GraphQL session server")]
pub struct Cli {
    /// A TOML file of settings: the keys are the environment variables in lower case
    /// (`session_idle_timeout = "2h"`); the environment and flags override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve(Box<Serve>),
    /// Apply pending database migrations and exit.
    Migrate {
        /// Overrides DATABASE_URL (and `database_url` of the config file).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Print the GraphQL schema (SDL) to stdout, or write it to a file.
    ExportSchema {
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Manage users directly in the database (as the superadmin).
    Users {
        #[command(subcommand)]
        command: crate::cli::UsersCommand,
    },
    /// List, count and revoke sessions directly in the database (as the superadmin).
    Sessions {
        #[command(subcommand)]
        command: crate::cli::SessionsCommand,
    },
    /// Delete expired and invalidated sessions now (the server does it every CLEANUP_INTERVAL).
    Cleanup {
        #[arg(long)]
        json: bool,
    },
}

/// `serve`: the settings, each a flag and an environment variable, and what to do with them.
#[derive(Args, Debug, Clone)]
pub struct Serve {
    /// Print the effective configuration (defaults < config file < environment < flags) as
    /// TOML, with secrets masked, and exit.
    #[arg(long)]
    pub print_config: bool,

    #[command(flatten)]
    pub config: Config,
}

pub const DEFAULT_DATABASE_URL: &str = "sqlite://session-server.db?mode=rwc";

/// The default `DATABASE_MAX_CONNECTIONS`: four per core, 4 to 16. A request holds a connection
/// only for its statement, so connections beyond what the cores can keep busy add no
/// throughput, only queueing inside the database (whose CPU competes with ours when both run on
/// one machine); the cap keeps several instances within a database's connection limit.
pub fn default_max_connections() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (4 * cores).clamp(4, 16) as u32
}

/// How log lines are written.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the request's span (and its `request_id`) in each.
    Json,
}

/// Which [`crate::cache::SessionCache`] strategy serves session lookups.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// Bounded in-process cache.
    Memory,
    /// Redis, shared by every instance.
    Redis,
    /// In-process cache in front of Redis.
    Tiered,
}

/// Where session tokens are accepted from and sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenMethods {
    pub cookie: bool,
    pub bearer: bool,
}

fn parse_token_methods(s: &str) -> Result<TokenMethods, String> {
    let mut methods = TokenMethods {
        cookie: false,
        bearer: false,
    };
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.to_ascii_lowercase().as_str() {
            "cookie" => methods.cookie = true,
            "bearer" => methods.bearer = true,
            other => {
                return Err(format!(
                    "unknown token method '{other}': use cookie, bearer or cookie,bearer"
                ))
            }
        }
    }
    if !methods.cookie && !methods.bearer {
        return Err("at least one token method is needed: cookie, bearer or cookie,bearer".into());
    }
    Ok(methods)
}

/// How many proxies in front of the server append the address they received a request from to
/// `X-Forwarded-For`. The client address is the entry the outermost of them appended: the
/// `hops`-th from the right. Entries further left were written by the client and prove nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrustProxy {
    /// 0: ignore `X-Forwarded-For` and use the peer address.
    pub hops: u8,
}

impl TrustProxy {
    pub const OFF: TrustProxy = TrustProxy { hops: 0 };

    pub fn hops(hops: u8) -> TrustProxy {
        TrustProxy { hops }
    }
}

/// `false`/`true` (and the other boolish words) or a number of proxies, 0 to 255.
fn parse_trust_proxy(s: &str) -> Result<TrustProxy, String> {
    let hops = match s.trim().to_ascii_lowercase().as_str() {
        "false" | "f" | "no" | "n" | "off" => 0,
        "true" | "t" | "yes" | "y" | "on" => 1,
        n => n.parse::<u8>().map_err(|_| {
            format!(
                "invalid TRUST_PROXY '{s}': use false, true, or the number of proxies in front of \
                 the server (0 to 255)"
            )
        })?,
    };
    Ok(TrustProxy { hops })
}

/// Durations are written like `500ms`, `30s`, `15m`, `12h` or `7d`.
/// A duration in the units the settings are written in (`31d`, `1h 30m`, `250ms`), never in
/// months or years as humantime would put it.
fn display_duration(d: Duration) -> String {
    let mut left = d.as_millis();
    if left == 0 {
        return "0s".to_string();
    }
    let mut parts = Vec::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        let n = left / size;
        if n > 0 {
            parts.push(format!("{n}{unit}"));
            left -= n * size;
        }
    }
    parts.join(" ")
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration '{s}' ({e}): expected a positive duration such as 500ms, 30s, 15m or 7d")
    })
}

/// A secret setting: its `Debug` output never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(hidden)")
    }
}

/// Never fails: a bad secret is refused by [`Config::validate`], whose message, unlike clap's,
/// does not repeat the value.
fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret(s.to_owned()))
}

/// Most `WEBHOOK_URLS`: each event is queued once per URL, in the transaction of its change.
pub const MAX_WEBHOOK_URLS: usize = 16;
/// Longest webhook URL (the outbox column's width).
pub const MAX_WEBHOOK_URL_LEN: usize = 2048;

/// The webhook settings, checked: where to send which events, signed with what.
#[derive(Clone)]
pub struct WebhookSettings {
    /// Distinct http(s) URLs, in the configured order.
    pub urls: Vec<String>,
    /// The HMAC-SHA256 key (decoded from `WEBHOOK_SECRET`).
    pub key: Vec<u8>,
    /// The event types sent (all when `WEBHOOK_EVENTS` is empty).
    pub events: Vec<crate::events::EventType>,
    /// Past this age an undelivered event is given up.
    pub max_age: Duration,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("urls", &self.urls.len())
            .field("key", &"hidden")
            .field("events", &self.events)
            .field("max_age", &self.max_age)
            .finish()
    }
}

/// The key of a Standard Webhooks secret: `whsec_` (optional) then standard base64 of 24 to 64
/// bytes. The error never contains the secret.
pub fn decode_webhook_secret(secret: &str) -> Result<Vec<u8>, &'static str> {
    use base64::Engine;
    let raw = secret.trim();
    let raw = raw.strip_prefix("whsec_").unwrap_or(raw);
    let key = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .map_err(|_| {
            "WEBHOOK_SECRET must be whsec_ followed by standard base64 (or the bare base64)"
        })?;
    if !(24..=64).contains(&key.len()) {
        return Err("WEBHOOK_SECRET must decode to 24 to 64 bytes (e.g. whsec_ and the base64 of 32 random bytes: `openssl rand -base64 32`)");
    }
    Ok(key)
}

/// Settings of the `serve` command. Each field is also an environment variable and a key of the
/// config file (the variable in lower case), with no other code: adding a setting is adding a
/// field here (and its validation in [`Config::validate`]). A secret sets `hide_env_values =
/// true`, which also masks it in `--print-config`.
#[derive(Args, Debug, Clone)]
pub struct Config {
    /// Address and port to listen on.
    #[arg(long, env = "BIND", default_value = "127.0.0.1:3000")]
    pub bind: SocketAddr,

    /// SQLite, PostgreSQL or MySQL/MariaDB connection URL.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Largest number of pooled database connections; default: four per core, 4 to 16.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = default_max_connections())]
    pub database_max_connections: u32,

    /// Longest wait for a database connection; past it the request gets SERVICE_UNAVAILABLE.
    #[arg(long, env = "DATABASE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub database_timeout: Duration,

    /// Longest a `/graphql` request may take; past it the client gets SERVICE_UNAVAILABLE (503).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Redis URL (`redis://host:port/db`); needed by the `redis` and `tiered` caches.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key this server writes; `clear` deletes only keys under it.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "session-server:")]
    pub redis_key_prefix: String,

    /// A Redis reply slower than this is logged and treated as a cache miss.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "50ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// Session cache strategy: memory, redis or tiered.
    #[arg(long, env = "SESSION_CACHE", value_enum, default_value = "memory")]
    pub session_cache: CacheMode,

    /// A cached session older than this is re-read from the database.
    #[arg(long, env = "SESSION_CACHE_TTL", default_value = "5m", value_parser = parse_duration)]
    pub session_cache_ttl: Duration,

    /// Most sessions held by the in-process cache.
    #[arg(long, env = "SESSION_CACHE_CAPACITY", default_value_t = 100_000)]
    pub session_cache_capacity: u64,

    /// Largest session data object, serialized as JSON (bytes, 2 to 1048576).
    #[arg(long, env = "SESSION_DATA_MAX_BYTES", default_value_t = 16_384)]
    pub session_data_max_bytes: usize,

    /// A session unused this long expires.
    #[arg(long, env = "SESSION_IDLE_TIMEOUT", default_value = "7d", value_parser = parse_duration)]
    pub session_idle_timeout: Duration,

    /// A session expires this long after it was created, however active.
    #[arg(long, env = "SESSION_ABSOLUTE_TIMEOUT", default_value = "30d", value_parser = parse_duration)]
    pub session_absolute_timeout: Duration,

    /// The stored last-activity time may lag the real one by at most this much.
    #[arg(long, env = "SESSION_ACTIVITY_WRITE_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub session_activity_write_interval: Duration,

    /// When set, a session token stops working this long after it was issued (refresh it).
    #[arg(long, env = "SESSION_TOKEN_TTL", value_parser = parse_duration)]
    pub session_token_ttl: Option<Duration>,

    /// A superseded refresh token presented within this window is refused without revoking.
    #[arg(long, env = "REFRESH_REUSE_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub refresh_reuse_grace: Duration,

    /// Where tokens are read from: cookie, bearer, or both.
    #[arg(long, env = "TOKEN_METHOD", default_value = "cookie,bearer", value_parser = parse_token_methods)]
    pub token_method: TokenMethods,

    /// Mark cookies `Secure` (sent over HTTPS only).
    #[arg(long, env = "COOKIE_SECURE", default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub cookie_secure: bool,

    /// Proxies in front of the server that append to `X-Forwarded-For`: `false` (the peer
    /// address is the client), `true` (one) or their number.
    #[arg(long, env = "TRUST_PROXY", default_value = "false", value_parser = parse_trust_proxy)]
    pub trust_proxy: TrustProxy,

    /// Failed logins per identifier within `LOGIN_WINDOW` before logins are refused.
    #[arg(long, env = "LOGIN_MAX_ATTEMPTS", default_value_t = 5)]
    pub login_max_attempts: u32,

    /// Failed logins per client address within `LOGIN_WINDOW` before logins are refused.
    #[arg(long, env = "LOGIN_MAX_ATTEMPTS_PER_ADDRESS", default_value_t = 100)]
    pub login_max_attempts_per_address: u32,

    /// Window over which failed logins are counted.
    #[arg(long, env = "LOGIN_WINDOW", default_value = "15m", value_parser = parse_duration)]
    pub login_window: Duration,

    /// Most live sessions per user; a login beyond it ends the user's least recently used
    /// sessions. 0: no limit.
    #[arg(long, env = "SESSION_MAX_PER_USER", default_value_t = 100)]
    pub session_max_per_user: u32,

    /// New anonymous sessions per client address per minute; beyond it RATE_LIMITED. 0: no limit.
    #[arg(long, env = "ANONYMOUS_SESSIONS_PER_ADDRESS", default_value_t = 600)]
    pub anonymous_sessions_per_address: u32,

    /// Lifetime of a session JWT (`sessionJwt`, `/auth?jwt=1`); never past the session's expiry.
    #[arg(long, env = "SESSION_JWT_TTL", default_value = "5m", value_parser = parse_duration)]
    pub session_jwt_ttl: Duration,

    /// The `iss` claim of session JWTs.
    #[arg(long, env = "JWT_ISSUER", default_value = "session-server")]
    pub jwt_issuer: String,

    /// How long one signing key signs before a new one takes over.
    #[arg(long, env = "JWT_KEY_ROTATION", default_value = "30d", value_parser = parse_duration)]
    pub jwt_key_rotation: Duration,

    /// Password hashes computed at once; unset: one less than the number of cores, at least 1.
    #[arg(long, env = "PASSWORD_HASH_CONCURRENCY")]
    pub password_hash_concurrency: Option<usize>,

    /// Longest wait for a turn at password hashing; past it the request gets RATE_LIMITED.
    #[arg(long, env = "PASSWORD_QUEUE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub password_queue_timeout: Duration,

    /// How often expired and invalidated sessions are deleted in the background.
    #[arg(long, env = "CLEANUP_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub cleanup_interval: Duration,

    /// Sessions deleted per statement by the clean-up.
    #[arg(long, env = "CLEANUP_BATCH_SIZE", default_value_t = 1000)]
    pub cleanup_batch_size: u64,

    /// How long session events are kept; the clean-up deletes older ones.
    #[arg(long, env = "EVENT_RETENTION", default_value = "90d", value_parser = parse_duration)]
    pub event_retention: Duration,

    /// Identifier of the superadmin user created on first start.
    #[arg(long, env = "SUPERADMIN_IDENTIFIER", default_value = "superadmin")]
    pub superadmin_identifier: String,

    /// Password of the superadmin user created on first start.
    #[arg(
        long,
        env = "SUPERADMIN_PASSWORD",
        default_value = "superadmin",
        hide_env_values = true
    )]
    pub superadmin_password: String,

    /// A file holding the superadmin's password (a container secret); overrides
    /// SUPERADMIN_PASSWORD. A trailing newline is ignored.
    #[arg(long, env = "SUPERADMIN_PASSWORD_FILE")]
    pub superadmin_password_file: Option<PathBuf>,

    /// Start even though the superadmin still has the default password while BIND is not a
    /// loopback address (never do this in production).
    #[arg(long, env = "ALLOW_DEFAULT_PASSWORD", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub allow_default_password: bool,

    /// Browser origins allowed to call the API with credentials (comma-separated). Empty: any
    /// origin may call without credentials (bearer tokens), none with cookies.
    #[arg(
        long,
        env = "CORS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub cors_allowed_origins: Vec<String>,

    /// Where session events are POSTed: comma-separated http(s) URLs. Empty: no webhooks.
    #[arg(long, env = "WEBHOOK_URLS", value_delimiter = ',', default_value = "")]
    pub webhook_urls: Vec<String>,

    /// The webhook signing key: `whsec_<base64>` (Standard Webhooks) or the bare base64, 24 to
    /// 64 bytes once decoded. Required with WEBHOOK_URLS.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub webhook_secret: Option<Secret>,

    /// Event types sent to the webhooks: comma-separated `SessionEventType` names. Empty: all.
    #[arg(
        long,
        env = "WEBHOOK_EVENTS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub webhook_events: Vec<String>,

    /// An event not delivered this long after it happened is given up (counted as failed).
    #[arg(long, env = "WEBHOOK_MAX_AGE", default_value = "24h", value_parser = parse_duration)]
    pub webhook_max_age: Duration,
    /// How many session events a live subscriber may fall behind before it is dropped (the
    /// bound on what a slow subscriber can hold up).
    #[arg(long, env = "EVENT_SUBSCRIBER_BACKLOG", default_value_t = crate::events::DEFAULT_SUBSCRIBER_BACKLOG)]
    pub event_subscriber_backlog: usize,

    /// Log filter in `tracing` syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,

    /// `text` (human-readable lines) or `json` (one JSON object per line).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// Defaults overlaid with the environment, as `serve` without flags sees them.
    pub fn from_env() -> Result<Config, clap::Error> {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
        Only::try_parse_from(["session-server"]).map(|o| o.config)
    }

    /// Refuses settings the server cannot honour, with a message that names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("SESSION_IDLE_TIMEOUT", self.session_idle_timeout),
            ("SESSION_ABSOLUTE_TIMEOUT", self.session_absolute_timeout),
            ("SESSION_CACHE_TTL", self.session_cache_ttl),
            (
                "SESSION_ACTIVITY_WRITE_INTERVAL",
                self.session_activity_write_interval,
            ),
            ("LOGIN_WINDOW", self.login_window),
            ("CLEANUP_INTERVAL", self.cleanup_interval),
            ("EVENT_RETENTION", self.event_retention),
            ("REDIS_TIMEOUT", self.redis_timeout),
            ("DATABASE_TIMEOUT", self.database_timeout),
            ("PASSWORD_QUEUE_TIMEOUT", self.password_queue_timeout),
            ("REQUEST_TIMEOUT", self.request_timeout),
            ("SESSION_JWT_TTL", self.session_jwt_ttl),
            ("JWT_KEY_ROTATION", self.jwt_key_rotation),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::NotPositive(name));
            }
        }
        let refuse = |rule| Err(ConfigError::Refused(rule));
        if self.session_token_ttl.is_some_and(|d| d.is_zero()) {
            return refuse("SESSION_TOKEN_TTL must be greater than zero when set");
        }
        if self.session_idle_timeout > self.session_absolute_timeout {
            return Err(ConfigError::IdleLongerThanAbsolute {
                idle: display_duration(self.session_idle_timeout),
                absolute: display_duration(self.session_absolute_timeout),
            });
        }
        if self.jwt_key_rotation < Duration::from_secs(1) {
            return refuse("JWT_KEY_ROTATION must be at least 1s");
        }
        // Retention is compared with millisecond timestamps; beyond this it would overflow.
        if self.event_retention > Duration::from_secs(100 * 365 * 86_400) {
            return refuse("EVENT_RETENTION must be at most 100 years");
        }
        if self.session_cache_capacity == 0 {
            return refuse("SESSION_CACHE_CAPACITY must be at least 1");
        }
        if !(2..=1_048_576).contains(&self.session_data_max_bytes) {
            return refuse("SESSION_DATA_MAX_BYTES must be between 2 and 1048576");
        }
        if self.database_max_connections == 0 {
            return refuse("DATABASE_MAX_CONNECTIONS must be at least 1");
        }
        if !(1..=1_000_000).contains(&self.event_subscriber_backlog) {
            return refuse("EVENT_SUBSCRIBER_BACKLOG must be between 1 and 1000000");
        }
        if self.cleanup_batch_size == 0 {
            return refuse("CLEANUP_BATCH_SIZE must be at least 1");
        }
        if self.login_max_attempts == 0 || self.login_max_attempts_per_address == 0 {
            return refuse(
                "LOGIN_MAX_ATTEMPTS and LOGIN_MAX_ATTEMPTS_PER_ADDRESS must be at least 1",
            );
        }
        if self.password_hash_concurrency == Some(0) {
            return refuse("PASSWORD_HASH_CONCURRENCY must be at least 1 when set");
        }
        if self.session_cache != CacheMode::Memory && self.redis_url.is_none() {
            return Err(ConfigError::CacheNeedsRedis(match self.session_cache {
                CacheMode::Redis => "redis",
                _ => "tiered",
            }));
        }
        self.redis_target()?;
        if self.redis_key_prefix.contains(['{', '}']) {
            return refuse(
                "REDIS_KEY_PREFIX must not contain braces (they are Redis Cluster hash tags)",
            );
        }
        if self.superadmin_identifier.trim().is_empty() || self.superadmin_password.is_empty() {
            return refuse("SUPERADMIN_IDENTIFIER and SUPERADMIN_PASSWORD must not be empty");
        }
        self.webhooks()?;
        Ok(())
    }

    /// The checked webhook settings; `None` when `WEBHOOK_URLS` is empty. The other
    /// `WEBHOOK_*` settings are checked even then, so a typo is caught before it matters.
    pub fn webhooks(&self) -> Result<Option<WebhookSettings>, ConfigError> {
        let refuse = |msg: String| Err(ConfigError::Webhook(msg));
        let mut urls: Vec<String> = vec![];
        for raw in self
            .webhook_urls
            .iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
        {
            let shown = redact_url(raw);
            let Ok(url) = reqwest::Url::parse(raw) else {
                return refuse(format!("WEBHOOK_URLS: '{shown}' is not a URL"));
            };
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return refuse(format!(
                    "WEBHOOK_URLS: '{shown}' must be an http:// or https:// URL with a host"
                ));
            }
            let url = url.to_string();
            if url.len() > MAX_WEBHOOK_URL_LEN {
                return refuse(format!(
                    "WEBHOOK_URLS: a URL is longer than {MAX_WEBHOOK_URL_LEN} characters"
                ));
            }
            if urls.contains(&url) {
                return refuse(format!("WEBHOOK_URLS: '{shown}' is listed twice"));
            }
            urls.push(url);
        }
        if urls.len() > MAX_WEBHOOK_URLS {
            return refuse(format!("WEBHOOK_URLS: at most {MAX_WEBHOOK_URLS} URLs"));
        }
        let mut events = vec![];
        let mut unknown = vec![];
        for name in self
            .webhook_events
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
        {
            match crate::events::EventType::parse(&name.to_ascii_uppercase()) {
                Some(t) if !events.contains(&t) => events.push(t),
                Some(_) => {}
                None => unknown.push(name.chars().take(64).collect::<String>()),
            }
        }
        if !unknown.is_empty() {
            let known: Vec<&str> = crate::events::EventType::ALL
                .iter()
                .map(|t| t.as_str())
                .collect();
            return refuse(format!(
                "WEBHOOK_EVENTS: unknown event types {} (known: {})",
                unknown.join(", "),
                known.join(", ")
            ));
        }
        if events.is_empty() {
            events = crate::events::EventType::ALL.to_vec();
        }
        if self.webhook_max_age < Duration::from_secs(1) {
            return refuse("WEBHOOK_MAX_AGE must be at least 1s".into());
        }
        let key = match &self.webhook_secret {
            Some(secret) => Some(
                decode_webhook_secret(secret.expose())
                    .map_err(|m| ConfigError::Webhook(m.into()))?,
            ),
            None => None,
        };
        if urls.is_empty() {
            return Ok(None);
        }
        let Some(key) = key else {
            return refuse("WEBHOOK_SECRET is required when WEBHOOK_URLS is set".into());
        };
        Ok(Some(WebhookSettings {
            urls,
            key,
            events,
            max_age: self.webhook_max_age,
        }))
    }

    /// The Redis of `REDIS_URL`, if one is configured.
    pub fn redis_target(&self) -> Result<Option<RedisTarget>, RedisUrlError> {
        self.redis_url
            .as_deref()
            .map(RedisTarget::parse)
            .transpose()
    }
}

/// A URL as it may be shown in messages and logs: scheme, host, port and path, without the
/// user info, query or fragment (which may carry credentials).
pub fn redact_url(raw: &str) -> String {
    match reqwest::Url::parse(raw) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{host}{port}{}", u.scheme(), u.path())
        }
        // Not a URL: show only its first characters, up to anything that may start a secret.
        Err(_) => raw
            .chars()
            .take_while(|c| !matches!(c, '@' | '?' | '#'))
            .take(64)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
        let mut argv = vec!["session-server"];
        argv.extend_from_slice(args);
        let c = Only::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .config;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.session_idle_timeout, Duration::from_secs(7 * 86400));
        assert_eq!(c.session_absolute_timeout, Duration::from_secs(30 * 86400));
        assert_eq!(c.refresh_reuse_grace, Duration::from_secs(10));
        assert!(c.token_method.cookie && c.token_method.bearer);
        assert!(c.cookie_secure);
        assert_eq!(c.trust_proxy, TrustProxy::OFF);
        assert_eq!(c.session_cache, CacheMode::Memory);
        assert_eq!(c.session_max_per_user, 100);
        assert_eq!(c.anonymous_sessions_per_address, 600);
        assert_eq!(c.password_queue_timeout, Duration::from_secs(2));
        assert_eq!(c.password_hash_concurrency, None);
        assert_eq!(c.database_max_connections, default_max_connections());
        assert!((4..=16).contains(&c.database_max_connections));
        assert_eq!(c.session_jwt_ttl, Duration::from_secs(300));
        assert_eq!(c.jwt_issuer, "session-server");
        assert_eq!(c.jwt_key_rotation, Duration::from_secs(30 * 86400));
        assert_eq!(c.event_retention, Duration::from_secs(90 * 86400));
        let err = parse(&["--event-retention", "0s"]).unwrap_err();
        assert!(err.contains("EVENT_RETENTION"), "{err}");
        let err = parse(&["--event-retention", "200y"]).unwrap_err();
        assert!(err.contains("EVENT_RETENTION"), "{err}");
        let err = parse(&["--jwt-key-rotation", "500ms"]).unwrap_err();
        assert!(err.contains("JWT_KEY_ROTATION"), "{err}");
        let err = parse(&["--session-jwt-ttl", "0s"]).unwrap_err();
        assert!(err.contains("SESSION_JWT_TTL"), "{err}");
    }

    #[test]
    fn bad_timeouts_are_refused_with_a_clear_message() {
        let err = parse(&["--session-idle-timeout", "0s"]).unwrap_err();
        assert!(err.contains("SESSION_IDLE_TIMEOUT"), "{err}");
        let err = parse(&["--session-idle-timeout=-5m"]).unwrap_err();
        assert!(err.contains("positive duration"), "{err}");
        let err = parse(&["--session-idle-timeout", "40d"]).unwrap_err();
        assert!(err.contains("must not be longer"), "{err}");
        let err = parse(&["--session-cache", "redis"]).unwrap_err();
        assert!(err.contains("REDIS_URL"), "{err}");
        let err = parse(&["--password-hash-concurrency", "0"]).unwrap_err();
        assert!(err.contains("PASSWORD_HASH_CONCURRENCY"), "{err}");
        let err = parse(&["--password-queue-timeout", "0s"]).unwrap_err();
        assert!(err.contains("PASSWORD_QUEUE_TIMEOUT"), "{err}");
        let err = parse(&["--database-max-connections", "0"]).unwrap_err();
        assert!(err.contains("DATABASE_MAX_CONNECTIONS"), "{err}");
        assert_eq!(
            parse(&["--database-max-connections", "40"]).map(|c| c.database_max_connections),
            Ok(40)
        );
        assert!(parse(&["--token-method", "smoke"]).is_err());
        assert!(parse(&["--cookie-secure", "false"]).is_ok_and(|c| !c.cookie_secure));
    }

    #[test]
    fn trust_proxy_takes_a_flag_or_a_number_of_proxies() {
        let hops = |v: &str| parse(&[&format!("--trust-proxy={v}")]).map(|c| c.trust_proxy.hops);
        assert_eq!(hops("false"), Ok(0));
        assert_eq!(hops("0"), Ok(0));
        assert_eq!(hops("true"), Ok(1));
        assert_eq!(hops("TRUE"), Ok(1));
        assert_eq!(hops("1"), Ok(1));
        assert_eq!(hops("3"), Ok(3));
        for garbage in ["-1", "256", "maybe", "", "1.5"] {
            let err = hops(garbage).unwrap_err();
            assert!(err.contains("TRUST_PROXY"), "{garbage}: {err}");
        }
    }

    /// 32 bytes, base64.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw8k0pbzH4KVM=";

    #[test]
    fn webhooks_are_off_by_default_and_checked_when_set() {
        let c = parse(&[]).unwrap();
        assert!(c.webhooks().unwrap().is_none());
        assert_eq!(c.webhook_max_age, Duration::from_secs(24 * 3600));

        let urls = "--webhook-urls=https://hooks.example/a, http://127.0.0.1:9000/b";
        let c = parse(&[urls, &format!("--webhook-secret={SECRET}")]).unwrap();
        let w = c.webhooks().unwrap().unwrap();
        assert_eq!(
            w.urls,
            ["https://hooks.example/a", "http://127.0.0.1:9000/b"]
        );
        assert_eq!(w.key.len(), 32);
        assert_eq!(w.events.len(), crate::events::EventType::ALL.len());
        // The bare base64 is accepted too; the secret never shows in Debug output.
        let bare = SECRET.trim_start_matches("whsec_");
        let c = parse(&[urls, &format!("--webhook-secret={bare}")]).unwrap();
        assert_eq!(c.webhooks().unwrap().unwrap().key, w.key);
        assert!(!format!("{c:?}").contains(bare));
        assert!(!format!("{w:?}").contains(bare));

        let c = parse(&[
            urls,
            &format!("--webhook-secret={SECRET}"),
            "--webhook-events=login_succeeded,SESSION_REVOKED,LOGIN_SUCCEEDED",
        ])
        .unwrap();
        use crate::events::EventType as T;
        assert_eq!(
            c.webhooks().unwrap().unwrap().events,
            [T::LoginSucceeded, T::SessionRevoked]
        );
    }

    #[test]
    fn bad_webhook_settings_are_refused_with_a_clear_message() {
        let secret = format!("--webhook-secret={SECRET}");
        let url = "--webhook-urls=https://hooks.example/a";
        let err = parse(&[url]).unwrap_err();
        assert!(err.contains("WEBHOOK_SECRET is required"), "{err}");
        for bad in [
            "ftp://hooks.example/a",
            "not a url",
            "https://",
            "mailto:a@b.c",
        ] {
            let err = parse(&[&format!("--webhook-urls={bad}"), &secret]).unwrap_err();
            assert!(err.contains("WEBHOOK_URLS"), "{bad}: {err}");
        }
        let err = parse(&[
            "--webhook-urls=https://u:pw@hooks.example/a?token=t0ps3cret,https://u:pw@hooks.example/a?token=t0ps3cret",
            &secret,
        ])
        .unwrap_err();
        assert!(
            err.contains("listed twice") && !err.contains("t0ps3cret") && !err.contains("pw@"),
            "{err}"
        );
        let err = parse(&[
            url,
            &secret,
            "--webhook-events=LOGIN_SUCCEEDED,LOGIN_BOGUS,nope",
        ])
        .unwrap_err();
        assert!(
            err.contains("WEBHOOK_EVENTS") && err.contains("LOGIN_BOGUS, nope"),
            "{err}"
        );
        // Unknown names are refused even without URLs: a typo is caught before it matters.
        let err = parse(&["--webhook-events=LOGIN_BOGUS"]).unwrap_err();
        assert!(err.contains("LOGIN_BOGUS"), "{err}");
        for bad in ["whsec_short", "whsec_!!!notbase64!!!", "", "whsec_"] {
            let err = parse(&[url, &format!("--webhook-secret={bad}")]).unwrap_err();
            assert!(err.contains("WEBHOOK_SECRET"), "{bad}: {err}");
            if !bad.is_empty() && bad != "whsec_" {
                assert!(!err.contains(bad), "the secret is repeated: {err}");
            }
        }
        let err = parse(&[url, &secret, "--webhook-max-age=0s"]).unwrap_err();
        assert!(err.contains("WEBHOOK_MAX_AGE"), "{err}");
    }

    #[test]
    fn request_timeout_defaults_to_30s_and_must_be_positive() {
        assert_eq!(parse(&[]).unwrap().request_timeout, Duration::from_secs(30));
        let err = parse(&["--request-timeout", "0s"]).unwrap_err();
        assert!(err.contains("REQUEST_TIMEOUT"), "{err}");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Any duration up to about 300 years, to the nanosecond.
        fn duration() -> impl Strategy<Value = Duration> {
            (0u64..10_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn arbitrary_text_never_panics(raw in any::<String>()) {
                let _ = parse_duration(&raw);
            }

            #[test]
            fn arbitrary_duration_like_text_never_panics(raw in "[ -]?[0-9]{0,30}[ .]?[0-9]{0,5}(ns|us|ms|s|m|h|d|w|M|y|x)?") {
                let _ = parse_duration(&raw);
            }

            #[test]
            fn what_is_displayed_parses_back(ms in 0u64..10_000_000_000_000) {
                let d = Duration::from_millis(ms);
                let text = display_duration(d);
                prop_assert!(!text.contains('M') && !text.contains('y'), "{}", text);
                prop_assert_eq!(parse_duration(&text), Ok(d), "{}", text);
            }

            #[test]
            fn what_is_formatted_parses_back(d in duration()) {
                let text = humantime::format_duration(d).to_string();
                prop_assert_eq!(parse_duration(&text), Ok(d), "{}", text);
            }

            #[test]
            fn the_documented_units_mean_what_they_say(n in 0u64..1_000_000, unit in 0usize..5) {
                let (suffix, ms) = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)][unit];
                let parsed = parse_duration(&format!("{n}{suffix}"));
                prop_assert_eq!(parsed, Ok(Duration::from_millis(n * ms)));
            }

            #[test]
            fn negatives_are_refused(d in duration()) {
                let text = humantime::format_duration(d).to_string();
                let negative = format!("-{text}");
                prop_assert!(parse_duration(&negative).is_err(), "{} parsed", negative);
                let negative = format!(" -{}s", d.as_secs());
                prop_assert!(parse_duration(&negative).is_err(), "{} parsed", negative);
            }
        }
    }
}
