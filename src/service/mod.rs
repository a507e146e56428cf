//! The service layer: every rule about sessions, users, roles, channels and orders lives here.
//! Resolvers call one function of [`Services`] and map the result; no SQL or Redis above this.
//!
//! - `identify`: the session and channel of a request, in one call.
//! - `session`: resolve a token (cache, then database), create, extend, invalidate; refresh.
//! - `session_admin`: listings, statistics, revocation, expiry clean-up.
//! - `authz`: who may do what: the caller of an admin operation and their channel scopes.
//! - `auth`: passwords, login and password changes.
//! - `throttle`: atomic sliding-window throttles (logins, password changes, anonymous
//!   sessions) and the per-user session cap.
//! - `directory`: users, roles and channels (and the cached channel lookups).
//! - `batch`: related rows (users, roles, channels, orders, session counts) for many parents
//!   in one statement each, for listings.
//! - `order`: orders and the session's active order.
//! - `paging`: the id-cursor page of a listing (users, sessions, a user's sessions).
//! - `activity`: the throttled, batched last-activity writer.
//! - `jwt`: session JWTs and their signing keys (the JWKS).
//! - `events`: who made a change ([`events::Origin`]), the session event listings, retention.

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
pub mod throttle;

use crate::cache::{RedisCache, SessionStore};
use crate::config::Config;
use crate::metrics::Metrics;
use entity::channel;
use sea_orm::DatabaseConnection;
use std::sync::Arc;

pub use self::session::{ClientInfo, Issued};

/// Shared state of the whole server; cheap to clone.
pub type SharedServices = Arc<Services>;

pub struct Services {
    pub config: Config,
    pub db: DatabaseConnection,
    /// The session cache (the `SESSION_CACHE` strategy) with its staleness protocol.
    pub store: SessionStore,
    /// The Redis connection when one is configured (for `/health`).
    pub redis: Option<Arc<RedisCache>>,
    pub metrics: Arc<Metrics>,
    /// Lifetimes in milliseconds, derived once from the configuration.
    pub lifetimes: session::Lifetimes,
    pub activity: activity::ActivityWriter,
    pub channels: directory::ChannelDirectory,
    pub passwords: auth::Passwords,
    pub throttle: throttle::Throttle,
    /// The session JWT signing keys, shared through the database.
    pub jwt: jwt::JwtKeys,
    /// Records session events in the transactions of the changes and publishes them after.
    pub events: crate::events::EventLog,
    /// The channel with code `default`, used when a request names none.
    pub default_channel: Arc<channel::Model>,
    /// Id of the `SUPER_ADMIN` role, which every new channel is added to.
    pub super_admin_role_id: i64,
    /// Id of the superadmin user, who cannot be deleted or lose that role.
    pub superadmin_user_id: i64,
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
