//! Building and running the application: database connection and migrations, the cache
//! strategy, bootstrap data (default channel, `SUPER_ADMIN` role, superadmin user), background
//! tasks, and the HTTP listener.

use crate::cache::{PubSub, RedisCache, SessionStore};
use crate::config::{Config, ConfigError};
use crate::error::{AppResult, ServiceError};
use crate::events::webhook::{self, Webhooks};
use crate::events::EventBus;
use crate::graphql::build_schema;
use crate::http::{router, AppState};
use crate::metrics::Metrics;
use crate::service::{auth, directory, jwt::JwtKeys, Parts, Services, SharedServices};
use entity::channel;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Why the server did not start. Each variant keeps its cause as `source()`; its message also
/// shows the cause, so `{e}` alone names what went wrong (main prints the whole chain).
#[derive(thiserror::Error, Debug)]
pub enum StartupError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot connect to the database: {0}")]
    Database(#[source] sea_orm::DbErr),
    #[error("cannot apply database migrations: {0}")]
    Migration(#[source] sea_orm::DbErr),
    #[error("cannot connect to Redis: {0}")]
    Redis(#[source] crate::cache::CacheError),
    #[error("cannot start password hashing: {0}")]
    Passwords(#[source] ServiceError),
    #[error("cannot create the default channel, role or superadmin: {0}")]
    Bootstrap(#[source] ServiceError),
    #[error("cannot read SUPERADMIN_PASSWORD_FILE {path}: {source}")]
    PasswordFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the superadmin '{identifier}' still has the default password and BIND ({bind}) is not a \
         loopback address: start once with a strong SUPERADMIN_PASSWORD or \
         SUPERADMIN_PASSWORD_FILE before the superadmin exists, or change the password \
         (changePassword) while bound to 127.0.0.1; ALLOW_DEFAULT_PASSWORD=true starts anyway"
    )]
    DefaultPassword {
        identifier: String,
        bind: SocketAddr,
    },
    #[error("cannot set up the webhooks: {0}")]
    Webhooks(#[source] crate::events::webhook::WebhookSetupError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    port: u16,
}

/// How long a pooled database connection may sit idle before it is pinged on checkout. Under
/// load connections come back within milliseconds and go straight out again; a connection
/// that waited longer (after a quiet spell, or after a database restart emptied the pool's
/// traffic) is checked first, as sqlx checks every one by default.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// Connects with settings that suit each backend (WAL and a busy timeout for SQLite).
///
/// Instances starting at once on one new SQLite file can find it locked while another switches
/// it to WAL (SQLite answers that without waiting); such a connection is tried again, with a
/// growing pause, until `timeout` has passed.
pub async fn connect_database(
    url: &str,
    max_connections: u32,
    timeout: Duration,
) -> Result<DatabaseConnection, sea_orm::DbErr> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        match Database::connect(connect_options(url, max_connections, timeout)).await {
            Err(e) if sqlite_locked(&e) && started.elapsed() + pause < timeout => {
                tracing::debug!(error = %e, "the SQLite database is locked; connecting again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            done => return done,
        }
    }
}

fn connect_options(url: &str, max_connections: u32, timeout: Duration) -> ConnectOptions {
    let mut opts = ConnectOptions::new(url.to_string());
    opts.max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(timeout)
        .acquire_timeout(timeout)
        // sqlx pings a pooled connection on every checkout by default: one more round trip
        // for every statement (PostgreSQL's share of the CPU of a cold session read).
        .test_before_acquire_if_idle_for(IDLE_BEFORE_PING)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|o| {
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
        });
    opts
}

/// SQLite's "database is locked" (`SQLITE_BUSY` and its extended codes, `SQLITE_LOCKED`).
fn sqlite_locked(err: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr};
    let (DbErr::Conn(RuntimeErr::SqlxError(e))
    | DbErr::Exec(RuntimeErr::SqlxError(e))
    | DbErr::Query(RuntimeErr::SqlxError(e))) = err
    else {
        return false;
    };
    e.as_database_error()
        .and_then(|d| d.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

/// Which cache strategy [`assemble`] gives the services.
#[derive(Clone, Copy)]
enum CacheRole {
    /// The server's: `SESSION_CACHE`.
    Server,
    /// The command line's: invalidations reach running instances through Redis when configured
    /// ([`SessionStore::for_operator`]).
    Operator,
}

/// Everything but the listener and the background tasks: the configuration validated, the
/// database connected and migrated, Redis, password hashing, the bootstrap rows and JWT keys.
struct Assembled {
    services: Services,
    /// The webhooks of `WEBHOOK_URLS` (the server runs their delivery worker).
    webhooks: Option<Arc<Webhooks>>,
    /// A handle on the pool for the webhook worker.
    db: DatabaseConnection,
    default_password_in_use: bool,
    superadmin_user_id: i64,
}

async fn assemble(
    config: Config,
    role: CacheRole,
    settle: bool,
) -> Result<Assembled, StartupError> {
    config.validate()?;
    let mut config = config;
    if let Some(path) = &config.superadmin_password_file {
        let text = std::fs::read_to_string(path).map_err(|source| StartupError::PasswordFile {
            path: path.clone(),
            source,
        })?;
        config.superadmin_password = text.trim_end_matches(['\n', '\r']).to_string();
        config.validate()?;
    }
    let mut db = connect_database(
        &config.database_url,
        config.database_max_connections,
        config.database_timeout,
    )
    .await
    .map_err(StartupError::Database)?;
    Migrator::up(&db, None)
        .await
        .map_err(StartupError::Migration)?;

    let metrics = Arc::new(Metrics::default());
    // Counts every statement from here on (`session_server_db_statements_total`); set before
    // the connection is cloned, so every clone shares it.
    let statements = metrics.db_statements();
    db.set_metric_callback(move |_| {
        statements.inc();
    });
    let redis_target = config.redis_target().map_err(ConfigError::from)?;
    let redis = match redis_target {
        // Configured Redis also holds the login throttling counters, whatever the cache.
        Some(target) => Some(Arc::new(
            RedisCache::connect(
                target,
                &config.redis_key_prefix,
                config.redis_timeout,
                config.session_cache_ttl,
                metrics.clone(),
            )
            .await
            .map_err(StartupError::Redis)?,
        )),
        None => None,
    };
    let store = match role {
        CacheRole::Server => SessionStore::for_mode(
            config.session_cache,
            redis.clone(),
            config.session_cache_capacity,
            metrics.clone(),
            config.session_cache_ttl,
            config.session_idle_timeout,
        ),
        CacheRole::Operator => SessionStore::for_operator(
            redis.clone(),
            metrics.clone(),
            config.session_cache_ttl,
            config.session_idle_timeout,
        ),
    };

    if settle {
        store.settle().await;
    }

    let passwords = auth::Passwords::new(
        config.password_hash_concurrency,
        config.password_queue_timeout,
    )
    .await
    .map_err(|e| StartupError::Passwords(ServiceError(e)))?;
    let boot = bootstrap(&db, &passwords, &config)
        .await
        .map_err(|e| StartupError::Bootstrap(ServiceError(e)))?;

    let jwt = JwtKeys::new(
        config.session_jwt_ttl,
        config.jwt_key_rotation,
        config.jwt_issuer.clone(),
    );
    jwt.refresh(&db)
        .await
        .map_err(|e| StartupError::Bootstrap(ServiceError(e)))?;
    let superadmin_user_id = boot.superadmin_user_id;
    // With Redis, every instance's events reach this instance's subscribers (and the command
    // line's changes reach every running instance's).
    let event_bus = EventBus::start(
        config.event_subscriber_backlog,
        Some(metrics.clone()),
        redis.clone().map(PubSub::new),
    );
    let webhooks = webhooks(&config)?;
    let worker_db = db.clone();
    let services = Services::compose(Parts {
        config,
        db,
        redis,
        store,
        events: crate::events::EventLog::new(event_bus).with_webhooks(webhooks.clone()),
        metrics,
        passwords,
        jwt_keys: jwt,
        default_channel: boot.default_channel,
        known_channels: boot.channels,
        super_admin_role_id: boot.super_admin_role_id,
        superadmin_user_id,
    });
    Ok(Assembled {
        services,
        webhooks,
        db: worker_db,
        default_password_in_use: boot.default_password_in_use,
        superadmin_user_id,
    })
}

/// The services for the command line (`users …`, `sessions …`, `cleanup`), acting as the
/// superadmin; see [`crate::cli`].
pub struct Operator {
    pub services: Services,
    pub caller: crate::service::authz::Caller,
    /// Recorded on the events of the command's changes: the superadmin, in the default
    /// channel, with the user agent `session-server-cli`.
    pub origin: crate::service::events::Origin,
}

impl Operator {
    /// Connects and migrates like `serve`, without listening or background tasks. `settle`:
    /// the command will invalidate cached sessions, so first learn which instances listen
    /// (about a second, with Redis only; see [`SessionStore::settle`]).
    pub async fn build(config: Config, settle: bool) -> Result<Operator, StartupError> {
        let assembled = assemble(config, CacheRole::Operator, settle).await?;
        let caller = crate::service::authz::Caller::operator(
            assembled.superadmin_user_id,
            assembled.services.sessions.default_channel().id,
        );
        let origin = crate::service::events::Origin {
            actor_user_id: Some(assembled.superadmin_user_id),
            client: crate::service::ClientInfo {
                ip_address: None,
                user_agent: Some("session-server-cli".into()),
            },
            channel_id: Some(assembled.services.sessions.default_channel().id),
        };
        Ok(Operator {
            services: assembled.services,
            caller,
            origin,
        })
    }
}

impl StartupError {
    /// Whether the database or Redis could not be reached (rather than refusing something).
    pub fn is_unreachable(&self) -> bool {
        match self {
            StartupError::Database(_) | StartupError::Redis(_) => true,
            StartupError::Migration(e) => crate::error::is_unavailable(e),
            StartupError::Passwords(ServiceError(e)) | StartupError::Bootstrap(ServiceError(e)) => {
                matches!(e, crate::error::AppError::Unavailable(_))
            }
            _ => false,
        }
    }
}

impl Application {
    pub async fn build(config: Config) -> Result<Application, StartupError> {
        let bind = config.bind;
        let allow_default_password = config.allow_default_password;
        let assembled = assemble(config, CacheRole::Server, false).await?;
        if assembled.default_password_in_use && !bind.ip().is_loopback() && !allow_default_password
        {
            return Err(StartupError::DefaultPassword {
                identifier: assembled.services.config().superadmin_identifier.clone(),
                bind,
            });
        }
        let webhooks = assembled.webhooks;
        let worker_db = assembled.db;
        let services: SharedServices = Arc::new(assembled.services);

        let addr = services.config().bind;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { addr, source })?
            .port();
        spawn_cleanup(services.clone());
        spawn_jwt_key_refresh(services.clone());
        if let Some(webhooks) = webhooks {
            webhook::spawn_worker(
                Arc::downgrade(&services),
                worker_db,
                services.metrics().clone(),
                webhooks,
            );
        }
        let schema = build_schema(services.clone());
        let (query_fields, mutation_fields) = crate::graphql::root_fields();
        let labeler = crate::metrics::OperationLabeler::new(
            services.metrics(),
            &query_fields,
            &mutation_fields,
        );
        Ok(Application {
            listener,
            state: AppState::new(
                services.clone(),
                schema,
                crate::graphql::build_revalidating_schema(services),
                labeler,
            ),
            port,
        })
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn services(&self) -> SharedServices {
        self.state.services.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
    /// (for at most [`DRAIN_LIMIT`]), and writes pending session activity before returning.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let services = self.state.services.clone();
        let app = router(self.state).into_make_service_with_connect_info::<SocketAddr>();
        tracing::info!(port = self.port, "session-server listening");
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let leaving = services.clone();
        let signal = async move {
            shutdown.await;
            let _ = stopping_tx.send(());
            // Requests still in flight read the shared tier from now on, so the other
            // instances need not wait for this one to apply their invalidations.
            leaving.leave_cache().await;
        };
        let serve = axum::serve(self.listener, app)
            .with_graceful_shutdown(signal)
            .into_future();
        let drain_deadline = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(DRAIN_LIMIT).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let served = tokio::select! {
            served = serve => served,
            _ = drain_deadline => {
                tracing::warn!("in-flight requests did not finish within {DRAIN_LIMIT:?}; stopping anyway");
                Ok(())
            }
        };
        if tokio::time::timeout(Duration::from_secs(1), services.flush_activity())
            .await
            .is_err()
        {
            tracing::warn!("pending session activity could not be written before exit");
        }
        tracing::info!("session-server stopped");
        served
    }
}

/// The webhooks of `WEBHOOK_URLS`, if set: the event log queues their events, the delivery
/// worker sends them.
fn webhooks(config: &Config) -> Result<Option<Arc<Webhooks>>, StartupError> {
    match config.webhooks()? {
        Some(settings) => Ok(Some(Arc::new(
            Webhooks::new(settings).map_err(StartupError::Webhooks)?,
        ))),
        None => Ok(None),
    }
}

/// How long a shutdown waits for in-flight requests, leaving time to flush within 10 s.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(8);

/// Runs `job` every `every` until the application is gone (tests build many in one process);
/// a failure is logged with its cause chain and the next tick tries again.
fn spawn_every<F, Fut>(services: SharedServices, every: Duration, what: &'static str, job: F)
where
    F: Fn(SharedServices) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = AppResult<()>> + Send,
{
    let weak = Arc::downgrade(&services);
    drop(services);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(services) = weak.upgrade() else {
                return;
            };
            if let Err(e) = job(services).await {
                tracing::warn!(error = %e.chain(), "background {what} failed");
            }
        }
    });
}

/// Reloads the JWT signing keys (others' new keys, rotation when due) now and then.
fn spawn_jwt_key_refresh(services: SharedServices) {
    let every = services.jwt.refresh_every();
    spawn_every(services, every, "JWT signing key refresh", |s| async move {
        s.jwt.refresh().await
    });
}

/// Deletes expired and invalidated sessions every `CLEANUP_INTERVAL`.
fn spawn_cleanup(services: SharedServices) {
    let every = services.config().cleanup_interval;
    spawn_every(services, every, "session clean-up", |s| async move {
        s.clean_up().await.map(|_| ())
    });
}

struct Bootstrapped {
    default_channel: channel::Model,
    /// Every channel (the default one included).
    channels: Vec<channel::Model>,
    super_admin_role_id: i64,
    superadmin_user_id: i64,
    /// Whether the superadmin's password is still `superadmin`.
    default_password_in_use: bool,
}

/// The superadmin's password when none is configured.
const DEFAULT_PASSWORD: &str = "superadmin";

/// Makes sure the default channel, the `SUPER_ADMIN` role and the superadmin user exist, through
/// the directory's start-up functions: safe to run from several instances at once.
async fn bootstrap(
    db: &DatabaseConnection,
    passwords: &auth::Passwords,
    config: &Config,
) -> AppResult<Bootstrapped> {
    let default_channel = directory::ensure_channel(db, "default").await?;
    let super_role = directory::ensure_super_admin_role(db).await?;
    // The superadmin is the first holder of the role once there is one: SUPERADMIN_IDENTIFIER
    // names the user created on the first start only. Looking the identifier up again on each
    // start would hand the role to whoever took that name after the superadmin was renamed.
    let admin = match directory::first_holder_of(db, super_role.id).await? {
        Some(admin) => {
            if admin.identifier != entity::user::normalize_identifier(&config.superadmin_identifier)
            {
                tracing::info!(
                    superadmin = %admin.identifier,
                    "the superadmin was renamed: SUPERADMIN_IDENTIFIER only names the user created on the first start"
                );
            }
            admin
        }
        None => {
            directory::ensure_user(
                db,
                passwords,
                &config.superadmin_identifier,
                &config.superadmin_password,
                &[super_role.id],
            )
            .await?
        }
    };
    // Where it matters (reachable from other hosts), the stored hash decides, not the setting:
    // a password changed since is fine, and a new SUPERADMIN_PASSWORD does not change an
    // existing superadmin. Elsewhere the setting is enough for a warning (no hashing cost).
    let exposed = !config.bind.ip().is_loopback() && !config.allow_default_password;
    let default_in_use = if exposed {
        passwords
            .verify(DEFAULT_PASSWORD, Some(&admin.password_hash))
            .await?
    } else {
        config.superadmin_password == DEFAULT_PASSWORD
    };
    if default_in_use {
        tracing::warn!(
            "the superadmin still has the default password 'superadmin': set a strong one before exposing this server"
        );
    }
    Ok(Bootstrapped {
        default_password_in_use: default_in_use,
        channels: directory::ChannelDirectory::load_all(db).await?,
        default_channel,
        super_admin_role_id: super_role.id,
        superadmin_user_id: admin.id,
    })
}
