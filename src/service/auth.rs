//! Login and passwords: argon2id hashing on a bounded blocking pool, failed-login throttling per
//! identifier and per client address, login with anonymous-session carry-over, password changes.

use super::session::{ClientInfo, Issued, NewSession};
use super::Services;
use crate::cache::{CachedSession, CachedUser, RedisCache};
use crate::clock::{ms, now_ms};
use crate::error::{AppError, AppResult, InternalError};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use entity::{order, session, user};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Semaphore;

pub const MAX_IDENTIFIER_BYTES: usize = 255;
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// argon2id hashing and verification, run on the blocking pool so the async workers keep
/// serving; a semaphore bounds how many hashes run at once (about one per core).
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// Verified against when the user does not exist, so both failures take the same time.
    dummy_hash: String,
}

impl Passwords {
    pub async fn new() -> AppResult<Passwords> {
        // Leave a core for everything else: hashing is CPU-bound and would otherwise stall
        // session lookups during a burst of logins.
        let workers =
            std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1));
        let permits = Arc::new(Semaphore::new(workers));
        let placeholder = crate::token::random_string(24);
        let dummy_hash = tokio::task::spawn_blocking(move || hash_blocking(&placeholder)).await??;
        Ok(Passwords {
            permits,
            dummy_hash,
        })
    }

    pub async fn hash(&self, password: &str) -> AppResult<String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| AppError::internal("hasher closed"))?;
        let password = password.to_string();
        Ok(tokio::task::spawn_blocking(move || hash_blocking(&password)).await??)
    }

    /// Verifies `password` against `hash`, or against a dummy hash when there is no user.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> AppResult<bool> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| AppError::internal("hasher closed"))?;
        let password = password.to_string();
        let (hash, real) = match hash {
            Some(h) => (h.to_string(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await?;
        Ok(ok && real)
    }
}

fn hash_blocking(password: &str) -> Result<String, InternalError> {
    let mut salt = [0u8; 16];
    crate::token::os_random(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| InternalError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| InternalError::Hash(e.to_string()))
}

/// Failed-login counters over a sliding window, per identifier and per client address.
///
/// With Redis configured the counters live there (a sorted set of failure times per key), so
/// every instance sees the same counts; each instance also keeps its own, which answer while
/// Redis does not.
pub struct LoginThrottle {
    /// Key -> times (ms) of recent failures, newest last; at most `max` kept per key.
    failures: moka::sync::Cache<String, Arc<Mutex<Vec<i64>>>>,
    redis: Option<Arc<RedisCache>>,
    window_ms: i64,
    max_per_identifier: u32,
    max_per_address: u32,
}

/// One counter a login attempt is checked against.
struct Counter {
    key: String,
    max: usize,
}

impl LoginThrottle {
    pub fn new(
        window: Duration,
        max_per_identifier: u32,
        max_per_address: u32,
        redis: Option<Arc<RedisCache>>,
    ) -> LoginThrottle {
        LoginThrottle {
            failures: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_idle(window)
                .build(),
            redis,
            window_ms: ms(window),
            max_per_identifier,
            max_per_address,
        }
    }

    fn counters(&self, identifier: &str, address: Option<&str>) -> Vec<Counter> {
        let mut out = vec![Counter {
            key: format!("id:{}", identifier.to_lowercase()),
            max: self.max_per_identifier as usize,
        }];
        if let Some(addr) = address {
            out.push(Counter {
                key: format!("ip:{addr}"),
                max: self.max_per_address as usize,
            });
        }
        out
    }

    /// The Redis key of a counter: hashed, so identifiers are neither stored nor able to
    /// smuggle hash-tag braces into the key.
    fn redis_key(redis: &RedisCache, key: &str) -> String {
        format!(
            "{}{{th:{}}}",
            redis.prefix(),
            &crate::token::TokenHash::of(key).to_hex()[..32]
        )
    }

    /// Recent failure times of a counter: from Redis when it answers, else from this process.
    async fn recent(&self, key: &str, now: i64) -> Vec<i64> {
        if let Some(redis) = &self.redis {
            let mut conn = redis.conn();
            let read = redis
                .bounded(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(Self::redis_key(redis, key))
                        .arg(now - self.window_ms + 1)
                        .arg("+inf")
                        .query_async::<Vec<String>>(&mut conn),
                )
                .await;
            match read {
                Ok(members) => {
                    let mut times: Vec<i64> = members
                        .iter()
                        .filter_map(|m| m.split(':').next()?.parse().ok())
                        .collect();
                    times.sort_unstable();
                    return times;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "login throttle: Redis unavailable, using this instance's counters")
                }
            }
        }
        match self.failures.get(key) {
            Some(times) => times
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .copied()
                .filter(|t| now - t < self.window_ms)
                .collect(),
            None => vec![],
        }
    }

    /// Seconds until a login may be tried again, if any counter is full.
    pub async fn retry_after(
        &self,
        identifier: &str,
        address: Option<&str>,
        now: i64,
    ) -> Option<i64> {
        let mut wait = None;
        for counter in self.counters(identifier, address) {
            let recent = self.recent(&counter.key, now).await;
            if recent.len() >= counter.max {
                // Free again when the oldest failure that keeps the count at `max` ages out.
                let oldest = recent[recent.len() - counter.max];
                let secs = ((oldest + self.window_ms - now) as f64 / 1000.0).ceil() as i64;
                wait = Some(wait.unwrap_or(0).max(secs.max(1)));
            }
        }
        wait
    }

    pub async fn record_failure(&self, identifier: &str, address: Option<&str>, now: i64) {
        for counter in self.counters(identifier, address) {
            let entry = self.failures.get_with(counter.key.clone(), Arc::default);
            {
                let mut times = entry.lock().unwrap_or_else(PoisonError::into_inner);
                times.retain(|t| now - t < self.window_ms);
                times.push(now);
                if times.len() > counter.max {
                    let excess = times.len() - counter.max;
                    times.drain(..excess);
                }
            }
            if let Some(redis) = &self.redis {
                let key = Self::redis_key(redis, &counter.key);
                let member = format!("{now}:{}", crate::token::random_string(6));
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("ZADD")
                    .arg(&key)
                    .arg(now)
                    .arg(member)
                    .ignore()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(now - self.window_ms)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(self.window_ms)
                    .ignore();
                let mut conn = redis.conn();
                if let Err(e) = redis.bounded(pipe.query_async::<()>(&mut conn)).await {
                    tracing::warn!(error = %e, "login throttle: could not record a failure in Redis");
                }
            }
        }
    }

    pub async fn clear_identifier(&self, identifier: &str) {
        let key = format!("id:{}", identifier.to_lowercase());
        self.failures.invalidate(&key);
        if let Some(redis) = &self.redis {
            let mut conn = redis.conn();
            let _ = redis
                .bounded(
                    redis::cmd("DEL")
                        .arg(Self::redis_key(redis, &key))
                        .query_async::<()>(&mut conn),
                )
                .await;
        }
    }
}

/// The expected outcomes of a login.
pub enum LoginOutcome {
    Success { issued: Issued, user: CachedUser },
    InvalidCredentials,
    NotVerified,
    TooManyAttempts { retry_after_seconds: i64 },
}

pub fn check_identifier(identifier: &str) -> AppResult<()> {
    if identifier.len() > MAX_IDENTIFIER_BYTES {
        return Err(AppError::bad_input(format!(
            "identifier must be at most {MAX_IDENTIFIER_BYTES} bytes"
        )));
    }
    Ok(())
}

pub fn check_password(password: &str) -> AppResult<()> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AppError::bad_input(format!(
            "password must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

impl Services {
    /// Verifies credentials and opens an authenticated session, carrying the current anonymous
    /// session's channel and order over in one transaction.
    pub async fn login(
        &self,
        identifier: &str,
        password: &str,
        remember_me: bool,
        current: Option<Arc<CachedSession>>,
        client: &ClientInfo,
    ) -> AppResult<LoginOutcome> {
        check_identifier(identifier)?;
        check_password(password)?;
        let now = now_ms();
        let address = client.ip_address.as_deref();
        if let Some(secs) = self.throttle.retry_after(identifier, address, now).await {
            self.metrics.login("throttled");
            return Ok(LoginOutcome::TooManyAttempts {
                retry_after_seconds: secs,
            });
        }
        let found = if identifier.is_empty() {
            None
        } else {
            user::Entity::find()
                .filter(user::Column::Identifier.eq(identifier))
                .one(&self.db)
                .await?
        };
        let ok = self
            .passwords
            .verify(password, found.as_ref().map(|u| u.password_hash.as_str()))
            .await?;
        let Some(found) = found.filter(|_| ok) else {
            self.throttle.record_failure(identifier, address, now).await;
            self.metrics.login("invalid_credentials");
            return Ok(LoginOutcome::InvalidCredentials);
        };
        if !found.verified {
            self.metrics.login("not_verified");
            return Ok(LoginOutcome::NotVerified);
        }
        self.throttle.clear_identifier(identifier).await;
        let Some(user) = self.load_cached_user(&self.db, found.id).await? else {
            return Ok(LoginOutcome::InvalidCredentials);
        };

        // Only writes inside the transaction: on SQLite a transaction that reads first and then
        // writes can fail to upgrade its lock under concurrency.
        let txn = self.db.begin().await?;
        // The presented session is replaced: claim it (only one login may consume it).
        let mut carried = (None, None);
        if let Some(old) = &current {
            let claimed = session::Entity::update_many()
                .col_expr(session::Column::Invalidated, Expr::value(true))
                .filter(session::Column::Id.eq(old.id))
                .filter(session::Column::Invalidated.eq(false))
                .exec(&txn)
                .await?;
            if claimed.rows_affected == 1 && old.user.is_none() {
                carried = (old.active_order_id, old.active_channel_id);
                if let Some(order_id) = old.active_order_id {
                    // The guest order becomes the user's.
                    order::Entity::update_many()
                        .col_expr(order::Column::UserId, Expr::value(found.id))
                        .col_expr(order::Column::SessionId, Expr::value(Option::<i64>::None))
                        .col_expr(order::Column::UpdatedAt, Expr::value(now))
                        .filter(order::Column::Id.eq(order_id))
                        .filter(order::Column::SessionId.eq(old.id))
                        .exec(&txn)
                        .await?;
                }
            }
        }
        let issued = self
            .insert_session(
                &txn,
                NewSession {
                    user: Some(user.clone()),
                    authentication_strategy: Some("native".into()),
                    active_order_id: carried.0,
                    active_channel_id: carried.1,
                    remember_me,
                    client,
                },
            )
            .await?;
        user::Entity::update_many()
            .col_expr(user::Column::LastLoginAt, Expr::value(now))
            .filter(user::Column::Id.eq(found.id))
            .exec(&txn)
            .await?;
        txn.commit().await?;

        if let Some(old) = &current {
            self.revoke_token(&old.token_hash).await;
        }
        self.cache_new(issued.session.clone()).await;
        self.metrics.login("success");
        tracing::info!(user_id = found.id, session_id = issued.session.id, "login");
        Ok(LoginOutcome::Success { issued, user })
    }

    /// Changes the caller's password and ends their other sessions.
    pub async fn change_password(
        &self,
        current: &CachedSession,
        old_password: &str,
        new_password: &str,
    ) -> AppResult<()> {
        let Some(user_id) = current.user_id() else {
            return Err(AppError::unauthenticated("log in to change your password"));
        };
        check_password(old_password)?;
        validate_new_password(new_password)?;
        let found = user::Entity::find_by_id(user_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| AppError::unauthenticated("the user no longer exists"))?;
        if !self
            .passwords
            .verify(old_password, Some(&found.password_hash))
            .await?
        {
            return Err(AppError::bad_input("the current password is not correct"));
        }
        let hash = self.passwords.hash(new_password).await?;
        user::Entity::update_many()
            .col_expr(user::Column::PasswordHash, Expr::value(hash))
            .filter(user::Column::Id.eq(user_id))
            .exec(&self.db)
            .await?;
        self.invalidate_sessions(
            sea_orm::Condition::all()
                .add(session::Column::UserId.eq(user_id))
                .add(session::Column::Id.ne(current.id)),
        )
        .await?;
        self.invalidate_user(user_id).await;
        Ok(())
    }
}

pub fn validate_new_password(password: &str) -> AppResult<()> {
    if password.is_empty() {
        return Err(AppError::bad_input("the password must not be empty"));
    }
    check_password(password)
}
