//! Building and running the application: database connection and migrations, the cache
//! strategy, bootstrap data (default channel, `SUPER_ADMIN` role, superadmin user), background
//! tasks, and the HTTP listener.

use crate::cache::{RedisCache, SessionStore};
use crate::clock::now_ms;
use crate::config::Config;
use crate::error::AppError;
use crate::graphql::build_schema;
use crate::http::{router, AppState};
use crate::metrics::Metrics;
use crate::permission::{Permission, PermissionSet};
use crate::service::{
    activity::ActivityWriter, auth, directory, jwt::JwtKeys, session::Lifetimes,
    throttle::Throttle, Services, SharedServices,
};
use entity::{channel, role, user, user_role};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectOptions, Database, DatabaseConnection, EntityTrait,
    QueryFilter,
};
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(thiserror::Error, Debug)]
pub enum StartupError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot connect to the database: {0}")]
    Database(#[source] sea_orm::DbErr),
    #[error("cannot apply database migrations: {0}")]
    Migration(#[source] sea_orm::DbErr),
    #[error("cannot connect to Redis: {0}")]
    Redis(#[source] crate::cache::CacheError),
    #[error("cannot create the default channel, role or superadmin: {0}")]
    Bootstrap(String),
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

/// Connects with settings that suit each backend (WAL and a busy timeout for SQLite).
pub async fn connect_database(
    url: &str,
    max_connections: u32,
    timeout: Duration,
) -> Result<DatabaseConnection, sea_orm::DbErr> {
    let mut opts = ConnectOptions::new(url.to_string());
    opts.max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(timeout)
        .acquire_timeout(timeout)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|o| {
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
        });
    Database::connect(opts).await
}

impl Application {
    pub async fn build(config: Config) -> Result<Application, StartupError> {
        config.validate().map_err(StartupError::Config)?;
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
        let redis = match &config.redis_url {
            // Configured Redis also holds the login throttling counters, whatever the cache.
            Some(url) => Some(Arc::new(
                RedisCache::connect(
                    url,
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
        let store = SessionStore::for_mode(
            config.session_cache,
            redis.clone(),
            config.session_cache_capacity,
            metrics.clone(),
            config.session_cache_ttl,
            config.session_idle_timeout,
        );

        let passwords = auth::Passwords::new(
            config.password_hash_concurrency,
            config.password_queue_timeout,
        )
        .await
        .map_err(|e| StartupError::Bootstrap(e.client_message()))?;
        let channels = directory::ChannelDirectory::default();
        let boot = bootstrap(&db, &passwords, &config)
            .await
            .map_err(|e| StartupError::Bootstrap(format!("{e:?}")))?;

        let jwt = JwtKeys::new(
            config.session_jwt_ttl,
            config.jwt_key_rotation,
            config.jwt_issuer.clone(),
        );
        jwt.refresh(&db)
            .await
            .map_err(|e| StartupError::Bootstrap(format!("JWT signing key: {e:?}")))?;
        let lifetimes = Lifetimes::new(&config);
        let services: SharedServices = Arc::new(Services {
            lifetimes,
            activity: ActivityWriter::start(db.clone(), lifetimes.flush_every()),
            throttle: Throttle::new(&config, redis.clone()),
            jwt,
            metrics,
            default_channel: Arc::new(boot.default_channel),
            super_admin_role_id: boot.super_admin_role_id,
            superadmin_user_id: boot.superadmin_user_id,
            channels,
            passwords,
            store,
            redis,
            db,
            config,
        });

        let addr = services.config.bind;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { addr, source })?
            .port();
        spawn_cleanup(services.clone());
        spawn_jwt_key_refresh(services.clone());
        let schema = build_schema(services.clone());
        let (query_fields, mutation_fields) = crate::graphql::root_fields();
        let labeler = crate::metrics::OperationLabeler::new(
            &services.metrics,
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
        let signal = async move {
            shutdown.await;
            let _ = stopping_tx.send(());
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
        if tokio::time::timeout(Duration::from_secs(1), services.activity.flush())
            .await
            .is_err()
        {
            tracing::warn!("pending session activity could not be written before exit");
        }
        tracing::info!("session-server stopped");
        served
    }
}

/// How long a shutdown waits for in-flight requests, leaving time to flush within 10 s.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(8);

/// Reloads the JWT signing keys (others' new keys, rotation when due) now and then.
fn spawn_jwt_key_refresh(services: SharedServices) {
    let every = services.jwt.refresh_every();
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
            if let Err(e) = services.jwt.refresh(&services.db).await {
                tracing::warn!(error = %e.client_message(), "JWT signing keys could not be refreshed");
            }
        }
    });
}

/// Deletes expired and invalidated sessions every `CLEANUP_INTERVAL`.
fn spawn_cleanup(services: SharedServices) {
    let every = services.config.cleanup_interval;
    let weak = Arc::downgrade(&services);
    drop(services);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            // Stop once the application is gone (tests build many in one process).
            let Some(services) = weak.upgrade() else {
                return;
            };
            if let Err(e) = services.clean_up_expired_sessions().await {
                tracing::warn!(error = %e.client_message(), "background session clean-up failed");
            }
        }
    });
}

struct Bootstrapped {
    default_channel: channel::Model,
    super_admin_role_id: i64,
    superadmin_user_id: i64,
}

/// Makes sure the default channel, the `SUPER_ADMIN` role and the superadmin user exist. Safe
/// to run concurrently from several instances: a lost insert race re-reads the winner's row.
async fn bootstrap(
    db: &DatabaseConnection,
    passwords: &auth::Passwords,
    config: &Config,
) -> Result<Bootstrapped, AppError> {
    let now = now_ms();
    let find_channel = || {
        channel::Entity::find()
            .filter(channel::Column::Code.eq("default"))
            .one(db)
    };
    let default_channel = match find_channel().await? {
        Some(c) => c,
        None => {
            let inserted = channel::Entity::insert(channel::ActiveModel {
                code: Set("default".into()),
                token: Set(crate::token::random_string(16)),
                created_at: Set(now),
                ..Default::default()
            })
            .exec_with_returning(db)
            .await;
            match inserted {
                Ok(c) => c,
                Err(_) => find_channel()
                    .await?
                    .ok_or_else(|| AppError::internal("default channel missing"))?,
            }
        }
    };

    let find_role = || {
        role::Entity::find()
            .filter(role::Column::Code.eq("SUPER_ADMIN"))
            .one(db)
    };
    let super_role = match find_role().await? {
        Some(r) => r,
        None => {
            let all: PermissionSet = Permission::ALL.into_iter().collect();
            let inserted = role::Entity::insert(role::ActiveModel {
                code: Set("SUPER_ADMIN".into()),
                description: Set("Super administrator: every permission in every channel".into()),
                permissions: Set(all.to_stored()),
                created_at: Set(now),
                ..Default::default()
            })
            .exec_with_returning(db)
            .await;
            match inserted {
                Ok(r) => r,
                Err(_) => find_role()
                    .await?
                    .ok_or_else(|| AppError::internal("SUPER_ADMIN role missing"))?,
            }
        }
    };
    let channel_ids: Vec<i64> = channel::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect();
    directory::link_channels(db, super_role.id, &channel_ids).await?;

    let identifier = auth::check_identifier(&config.superadmin_identifier)?;
    let identifier = identifier.as_str();
    let find_user = || {
        user::Entity::find()
            .filter(user::Column::Identifier.eq(identifier))
            .one(db)
    };
    let admin = match find_user().await? {
        Some(u) => u,
        None => {
            let hash = passwords.hash(&config.superadmin_password).await?;
            let inserted = user::Entity::insert(user::ActiveModel {
                identifier: Set(identifier.to_string()),
                password_hash: Set(hash),
                verified: Set(true),
                created_at: Set(now),
                last_login_at: Set(None),
                ..Default::default()
            })
            .exec_with_returning(db)
            .await;
            match inserted {
                Ok(u) => u,
                Err(_) => find_user()
                    .await?
                    .ok_or_else(|| AppError::internal("superadmin missing"))?,
            }
        }
    };
    let linked = user_role::Entity::find()
        .filter(user_role::Column::UserId.eq(admin.id))
        .filter(user_role::Column::RoleId.eq(super_role.id))
        .one(db)
        .await?;
    if linked.is_none() {
        let _ = user_role::Entity::insert(user_role::ActiveModel {
            user_id: Set(admin.id),
            role_id: Set(super_role.id),
        })
        .exec(db)
        .await;
    }
    if config.superadmin_password == "superadmin" {
        tracing::warn!(
            "SUPERADMIN_PASSWORD is the default 'superadmin': set a strong password before exposing this server"
        );
    }
    Ok(Bootstrapped {
        default_channel,
        super_admin_role_id: super_role.id,
        superadmin_user_id: admin.id,
    })
}
