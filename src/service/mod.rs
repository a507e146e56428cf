//! The service layer: every rule about sessions, users, roles, channels and orders lives here.
//! [`Services::compose`] builds each service once; resolvers call one function of the service
//! that owns the rule and map the result. No SQL or Redis above this layer.
//!
//! Services (each a value with private fields):
//! - [`session::Sessions`] (`session`, `identify`, `session_data`): find a request's session and
//!   channel, create, slide, end and refresh sessions, the per-user cap, session data.
//! - [`auth::Auth`] (`auth`): passwords, login and password changes, using `throttle`.
//! - [`directory::Directory`] (`directory`): users, roles and channels.
//! - [`order::Orders`] (`order`): orders and the session's active order.
//! - [`session_admin::SessionAdmin`] (`session_admin`): listings, statistics, revocation, clean-up.
//! - [`jwt::Jwt`] (`jwt`): session JWTs and their signing keys (the JWKS).
//! - [`batch::Loads`] (`batch`): related rows for many parents in one statement each.
//! - [`events::SessionEvents`] (`events`): the session event listings and retention;
//!   [`events::Origin`] says who made a change and from where.
//!
//! Helpers they share: `authz` (who may do what, channel scopes), `throttle` (sliding-window
//! throttles; their shared counters are in `cache::RedisWindows`), `paging` (id-cursor pages),
//! `activity` (the batched last-activity writer).

pub mod activity;
pub mod auth;
pub mod authz;
pub mod batch;
pub mod directory;
pub mod events;
pub mod identify;
pub mod jwt;
pub mod order;
pub mod paging;
pub mod session;
pub mod session_admin;
pub mod session_data;
mod session_read;
pub mod throttle;

use crate::cache::{RedisCache, SessionStore};
use crate::config::Config;
use crate::metrics::Metrics;
use entity::channel;
use sea_orm::DatabaseConnection;
use std::sync::Arc;

pub use self::session::{ActiveChange, ClientInfo, Issued};

/// Shared state of the whole server; cheap to clone.
pub type SharedServices = Arc<Services>;

/// Every service of the server, composed once at start-up ([`Services::compose`]). Each is a
/// separate value with private fields; they share the database pool and the session store.
pub struct Services {
    /// Finding a request's session and channel, creating, sliding, refreshing and ending
    /// sessions, session data.
    pub sessions: session::Sessions,
    /// Login and password changes, with their throttles.
    pub auth: auth::Auth,
    /// Users, roles and channels.
    pub directory: directory::Directory,
    /// Orders and a session's active order.
    pub orders: order::Orders,
    /// Admin listings, statistics, revocations and the expiry clean-up.
    pub admin: session_admin::SessionAdmin,
    /// Session JWTs and the published signing keys.
    pub jwt: jwt::Jwt,
    /// A listing's related rows, for many parents in one statement each.
    pub loads: batch::Loads,
    /// Session event listings and retention.
    pub events: events::SessionEvents,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    /// For `/health`.
    db: DatabaseConnection,
    /// For `/health`: the Redis connection when one is configured.
    redis: Option<Arc<RedisCache>>,
    /// Flushed on shutdown.
    activity: Arc<activity::ActivityWriter>,
}

/// What start-up hands over to compose the services: connections, the cache, and what the
/// bootstrap made sure exists.
pub struct Parts {
    pub config: Config,
    pub db: DatabaseConnection,
    pub redis: Option<Arc<RedisCache>>,
    pub store: SessionStore,
    pub metrics: Arc<Metrics>,
    pub passwords: auth::Passwords,
    pub jwt_keys: jwt::JwtKeys,
    /// Records session events in the transactions of the changes and publishes them after.
    pub events: crate::events::EventLog,
    /// The channel with code `default`, used when a request names none.
    pub default_channel: channel::Model,
    /// Every channel at start-up (kept in process, see [`directory::ChannelDirectory::new`]).
    pub known_channels: Vec<channel::Model>,
    /// Id of the `SUPER_ADMIN` role, which every new channel is added to.
    pub super_admin_role_id: i64,
    /// Id of the superadmin user, who cannot be deleted or lose that role.
    pub superadmin_user_id: i64,
}

/// Whether the database and (when configured) Redis answer.
pub struct Health {
    pub database: bool,
    pub redis: Option<bool>,
}

impl Services {
    /// Builds every service from the start-up parts; the one place that wires them together.
    pub fn compose(parts: Parts) -> Services {
        let Parts {
            config,
            db,
            redis,
            store,
            metrics,
            passwords,
            jwt_keys,
            events,
            default_channel,
            known_channels,
            super_admin_role_id,
            superadmin_user_id,
        } = parts;
        let config = Arc::new(config);
        let lifetimes = session::Lifetimes::new(&config);
        let store = Arc::new(store);
        let activity = Arc::new(activity::ActivityWriter::start(
            db.clone(),
            lifetimes.flush_every(),
        ));
        let channels = Arc::new(directory::ChannelDirectory::new(
            db.clone(),
            config.database_timeout,
            known_channels,
        ));
        let default_channel = channels.remember(default_channel);
        let passwords = Arc::new(passwords);
        let throttle = Arc::new(throttle::Throttle::new(&config, redis.clone()));
        let authz = authz::Authz::new(
            db.clone(),
            super_admin_role_id,
            superadmin_user_id,
            default_channel.id,
        );
        let sessions = session::Sessions::new(session::SessionsParts {
            db: db.clone(),
            store: store.clone(),
            lifetimes,
            activity: activity.clone(),
            metrics: metrics.clone(),
            throttle: throttle.clone(),
            config: config.clone(),
            channels: channels.clone(),
            default_channel: default_channel.clone(),
            events,
        });
        Services {
            auth: auth::Auth::new(
                db.clone(),
                sessions.clone(),
                store.clone(),
                passwords.clone(),
                throttle,
                metrics.clone(),
            ),
            directory: directory::Directory::new(
                db.clone(),
                sessions.clone(),
                authz.clone(),
                channels.clone(),
                passwords,
            ),
            orders: order::Orders::new(db.clone(), sessions.clone()),
            admin: session_admin::SessionAdmin::new(
                db.clone(),
                sessions.clone(),
                authz,
                lifetimes,
                config.clone(),
                metrics.clone(),
            ),
            jwt: jwt::Jwt::new(db.clone(), jwt_keys, lifetimes),
            loads: batch::Loads::new(db.clone(), lifetimes, channels),
            events: events::SessionEvents::new(db.clone(), config.clone()),
            sessions,
            config,
            metrics,
            db,
            redis,
            activity,
        }
    }

    /// The effective configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The Prometheus registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Pings the database (within `limit`) and Redis (within its own command timeout).
    pub async fn health(&self, limit: std::time::Duration) -> Health {
        let database = matches!(
            tokio::time::timeout(limit, self.db.ping()).await,
            Ok(Ok(()))
        );
        let redis = match &self.redis {
            Some(redis) => Some(redis.ping().await.is_ok()),
            None => None,
        };
        Health { database, redis }
    }

    /// The clean-up (every `CLEANUP_INTERVAL`, and `session-server cleanup`): expired and
    /// invalidated sessions, then session events past `EVENT_RETENTION`. Returns how many
    /// sessions were deleted.
    pub async fn clean_up(&self) -> crate::error::AppResult<u64> {
        let sessions = self.admin.clean_up_expired_sessions(None).await?;
        self.events.clean_up_old_events().await?;
        Ok(sessions)
    }

    /// `cleanUpExpiredSessions`: the clean-up of the sessions `caller`'s `REVOKE_SESSION`
    /// reaches (the channels where they hold it); events past `EVENT_RETENTION` too for a
    /// super admin, whose reach is every channel.
    pub async fn clean_up_as(&self, caller: &authz::Caller) -> crate::error::AppResult<u64> {
        let sessions = self.admin.clean_up_expired_sessions(Some(caller)).await?;
        if caller.is_super_admin() {
            self.events.clean_up_old_events().await?;
        }
        Ok(sessions)
    }

    /// Writes the pending session activity (on shutdown).
    pub async fn flush_activity(&self) {
        self.activity.flush().await;
    }

    /// The server is stopping: the session cache stops using this process's own tier and
    /// tells the other instances not to wait for it (a `tiered` cache; nothing otherwise).
    pub async fn leave_cache(&self) {
        self.sessions.store.leave().await;
    }
}

/// Runs `op` again, a few times, when the database picked it as the victim of a deadlock.
///
/// MySQL/MariaDB lock secondary index entries too: an update of one session that finds its row
/// through the `invalidated` index and a revocation that found it by id can deadlock.
pub(crate) async fn retry_deadlocks<T, Fut>(
    mut op: impl FnMut() -> Fut,
) -> crate::error::AppResult<T>
where
    Fut: std::future::Future<Output = crate::error::AppResult<T>>,
{
    let mut tries = 0u64;
    loop {
        match op().await {
            Err(e) if e.is_deadlock() && tries < 3 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5 * tries)).await;
            }
            done => return done,
        }
    }
}
