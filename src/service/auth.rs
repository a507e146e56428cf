//! Login and passwords: argon2id hashing on a bounded blocking pool with a bounded wait, login
//! (throttled through `throttle`) with anonymous-session carry-over, password changes.

use super::events::Origin;
use super::retry_deadlocks;
use super::session::Sessions;
use super::session::{Issued, NewSession};
use super::throttle::Throttle;
use crate::cache::SessionStore;
use crate::clock::now_ms;
use crate::domain::{CachedSession, CachedUser};
use crate::error::{AppError, AppResult, InternalError};
use crate::events::EventType;
use crate::metrics::Metrics;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use entity::{order, session, user};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect, TransactionTrait};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub const MAX_IDENTIFIER_BYTES: usize = 255;
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// argon2id hashing and verification, run on the blocking pool so the async workers keep
/// serving; a semaphore bounds how many hashes run at once, and how long a request may wait
/// for its turn: past `PASSWORD_QUEUE_TIMEOUT` it gets `RATE_LIMITED` instead of queueing
/// without end behind a flood of logins.
pub struct Passwords {
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
    /// Verified against when the user does not exist, so both failures take the same time.
    dummy_hash: String,
}

impl Passwords {
    /// `concurrency`: hashes at once; `None` leaves a core for everything else (hashing is
    /// CPU-bound and would otherwise stall session lookups during a burst of logins).
    pub async fn new(concurrency: Option<usize>, queue_timeout: Duration) -> AppResult<Passwords> {
        let workers = concurrency.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
        });
        let permits = Arc::new(Semaphore::new(workers.max(1)));
        let placeholder = crate::token::random_string(24);
        let dummy_hash = tokio::task::spawn_blocking(move || hash_blocking(&placeholder)).await??;
        Ok(Passwords {
            permits,
            queue_timeout,
            dummy_hash,
        })
    }

    /// A turn at hashing, waited for at most `queue_timeout`. The permit moves into the
    /// blocking task, so it is held until the hash is done even if the request is dropped.
    async fn turn(&self) -> AppResult<OwnedSemaphorePermit> {
        match tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(closed)) => Err(InternalError::HasherClosed(closed).into()),
            Err(_) => Err(AppError::rate_limited(
                "the server is busy checking passwords; try again in a moment",
            )),
        }
    }

    pub async fn hash(&self, password: &str) -> AppResult<String> {
        let permit = self.turn().await?;
        let password = password.to_string();
        Ok(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash_blocking(&password)
        })
        .await??)
    }

    /// Verifies `password` against `hash`, or against a dummy hash when there is no user.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> AppResult<bool> {
        let permit = self.turn().await?;
        let password = password.to_string();
        let (hash, real) = match hash {
            Some(h) => (h.to_string(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
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
    let salt = SaltString::encode_b64(&salt).map_err(InternalError::Hash)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(InternalError::Hash)
}

/// The expected outcomes of a login.
pub enum LoginOutcome {
    Success { issued: Issued, user: CachedUser },
    InvalidCredentials,
    NotVerified,
    TooManyAttempts { retry_after_seconds: i64 },
}

/// The normalized identifier ([`normalize_identifier`]), if it is at most
/// [`MAX_IDENTIFIER_BYTES`]; every place that stores, looks up or counts identifiers goes
/// through it.
pub fn check_identifier(identifier: &str) -> AppResult<String> {
    let normal = normalize_identifier(identifier);
    if normal.len() > MAX_IDENTIFIER_BYTES {
        return Err(AppError::bad_input(format!(
            "identifier must be at most {MAX_IDENTIFIER_BYTES} bytes"
        )));
    }
    // PostgreSQL refuses a NUL in text outright; no identifier needs any control character.
    if normal.chars().any(char::is_control) {
        return Err(AppError::bad_input(
            "identifier must not contain control characters",
        ));
    }
    Ok(normal)
}

pub use entity::user::normalize_identifier;

pub fn check_password(password: &str) -> AppResult<()> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AppError::bad_input(format!(
            "password must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The authentication service: login (with its throttles) and password changes.
pub struct Auth {
    db: sea_orm::DatabaseConnection,
    sessions: Sessions,
    /// Caches the session a login opens.
    store: Arc<SessionStore>,
    passwords: Arc<Passwords>,
    throttle: Arc<Throttle>,
    metrics: Arc<Metrics>,
}

impl Auth {
    pub(super) fn new(
        db: sea_orm::DatabaseConnection,
        sessions: Sessions,
        store: Arc<SessionStore>,
        passwords: Arc<Passwords>,
        throttle: Arc<Throttle>,
        metrics: Arc<Metrics>,
    ) -> Auth {
        Auth {
            db,
            sessions,
            store,
            passwords,
            throttle,
            metrics,
        }
    }

    /// Verifies credentials and opens an authenticated session, carrying the current anonymous
    /// session's channel and order over in one transaction.
    pub async fn login(
        &self,
        identifier: &str,
        password: &str,
        remember_me: bool,
        current: Option<Arc<CachedSession>>,
        origin: &Origin,
    ) -> AppResult<LoginOutcome> {
        let identifier = check_identifier(identifier)?;
        check_password(password)?;
        let client = &origin.client;
        let now = now_ms();
        let address = client.ip_address.as_deref();
        // The attempt is reserved before the password is checked, so concurrent guesses cannot
        // all pass the check: a wrong password keeps it (a counted failure), anything else gives
        // it back.
        let turn = self.throttle.login_turn(&identifier).await;
        let reservation = match self.throttle.reserve_login(&identifier, address).await {
            Ok(r) => r,
            Err(throttled) => {
                drop(turn);
                self.metrics.login("throttled");
                let event = origin
                    .event(EventType::LoginThrottled)
                    .identifier(&identifier)
                    .reason(throttled.by.as_str());
                self.sessions.record_now(vec![event]).await?;
                return Ok(LoginOutcome::TooManyAttempts {
                    retry_after_seconds: throttled.retry_after_seconds,
                });
            }
        };
        let checked = self.check_credentials(&identifier, password).await;
        let failed = |user: Option<i64>, reason: &str| {
            origin
                .event(EventType::LoginFailed)
                .identifier(&identifier)
                .user(user)
                .reason(reason)
        };
        let found = match checked {
            Ok((Some(found), true)) => found,
            Ok((found, _)) => {
                // The reservation stays: it is this failure, counted.
                drop(turn);
                self.metrics.login("invalid_credentials");
                let event = failed(found.map(|u| u.id), "bad_credentials");
                self.sessions.record_now(vec![event]).await?;
                return Ok(LoginOutcome::InvalidCredentials);
            }
            Err(e) => {
                self.throttle.release(reservation).await;
                return Err(e);
            }
        };
        self.throttle.release(reservation).await;
        if !found.verified {
            self.metrics.login("not_verified");
            self.sessions
                .record_now(vec![failed(Some(found.id), "unverified")])
                .await?;
            return Ok(LoginOutcome::NotVerified);
        }
        self.throttle.clear_identifier(&identifier).await;
        drop(turn);
        let Some(user) = self.sessions.load_cached_user(&self.db, found.id).await? else {
            return Ok(LoginOutcome::InvalidCredentials);
        };

        let as_user = origin.acting_as(found.id);
        // One transaction, run again if the database picks it as a deadlock's victim (on
        // MariaDB a `createOrder` of the presented session, whose insert share-locks the user
        // row, can cross this login's locks). Only writes come first in it: on SQLite a
        // transaction that reads first and then writes can fail to upgrade its lock under
        // concurrency.
        let opened = retry_deadlocks(|| async {
            let txn = self.db.begin().await?;
            // The user row first: its exclusive lock queues concurrent logins of the same user.
            // Taken after the session insert (whose foreign key share-locks the user row on
            // MariaDB), two such logins deadlocked.
            // Only if the credentials checked above still stand: a password change, a reset or an
            // unverification that committed since (and ended the user's sessions) ends this login
            // too, instead of leaving it a session the change never saw.
            let still = user::Entity::update_many()
                .col_expr(user::Column::LastLoginAt, Expr::value(now))
                .filter(user::Column::Id.eq(found.id))
                .filter(user::Column::PasswordHash.eq(found.password_hash.as_str()))
                .filter(user::Column::Verified.eq(true))
                .exec(&txn)
                .await?;
            if still.rows_affected == 0 {
                txn.rollback().await?;
                return Ok(None);
            }
            // The presented session is replaced: claim it (only one login may consume it).
            let mut carried = (None, None);
            let mut carried_data = None;
            let mut events = Vec::new();
            if let Some(old) = &current {
                let claimed = super::session::revise_sessions()
                    .col_expr(session::Column::Invalidated, Expr::value(true))
                    .filter(session::Column::Id.eq(old.id))
                    .filter(session::Column::Invalidated.eq(false))
                    .exec(&txn)
                    .await?;
                if claimed.rows_affected == 1 {
                    events.push(
                        as_user
                            .event(EventType::SessionRevoked)
                            .session(old.id)
                            .user(old.user_id())
                            .reason("replaced"),
                    );
                }
                if claimed.rows_affected == 1 && old.user.is_none() {
                    // The order, channel and data as committed, not as this request's copy of the
                    // session has them (a `createOrder` or `setActiveChannel` may have landed since
                    // it began); the claim above already holds the row, so none can land now.
                    let (order_id, channel_id): (Option<i64>, Option<i64>) =
                        session::Entity::find_by_id(old.id)
                            .select_only()
                            .columns([
                                session::Column::ActiveOrderId,
                                session::Column::ActiveChannelId,
                            ])
                            .into_tuple()
                            .one(&txn)
                            .await?
                            .unwrap_or((None, None));
                    carried_data = super::session_data::take_data(&txn, old.id).await?;
                    let mut order_carried = None;
                    if let Some(order_id) = order_id {
                        // The guest order becomes the user's, if it is still a cart (a
                        // `placeOrder` may have won the race).
                        let moved = order::Entity::update_many()
                            .col_expr(order::Column::UserId, Expr::value(found.id))
                            .col_expr(order::Column::SessionId, Expr::value(Option::<i64>::None))
                            .col_expr(order::Column::UpdatedAt, Expr::value(now))
                            .filter(order::Column::Id.eq(order_id))
                            .filter(order::Column::SessionId.eq(old.id))
                            .filter(order::Column::State.eq(super::order::ACTIVE))
                            .exec(&txn)
                            .await?;
                        if moved.rows_affected == 1 {
                            order_carried = Some(order_id);
                        }
                    }
                    carried = (order_carried, channel_id);
                }
            }
            let issued = self
                .sessions
                .insert_session(
                    &txn,
                    NewSession {
                        user: Some(user.clone()),
                        read_at: now,
                        authentication_strategy: Some("native".into()),
                        active_order_id: carried.0,
                        active_channel_id: carried.1,
                        data: carried_data,
                        remember_me,
                        client,
                    },
                )
                .await?;
            events.push(
                as_user
                    .event(EventType::LoginSucceeded)
                    .session(issued.session.id)
                    .user(Some(found.id))
                    .identifier(&identifier),
            );
            let recorded = self.sessions.events().record(&txn, now, events).await?;
            txn.commit().await?;
            Ok(Some((issued, recorded)))
        })
        .await?;
        let Some((issued, recorded)) = opened else {
            self.metrics.login("invalid_credentials");
            let event = failed(Some(found.id), "credentials_changed");
            self.sessions.record_now(vec![event]).await?;
            return Ok(LoginOutcome::InvalidCredentials);
        };
        self.sessions.events().publish(recorded);

        if let Some(old) = &current {
            self.sessions.revoke_token(&old.token_hash).await;
        }
        self.store.put_new(issued.session.clone()).await;
        // The login stands even if the cap cannot be applied now; the next login applies it.
        if let Err(e) = self
            .sessions
            .enforce_session_cap(found.id, issued.session.id, &as_user)
            .await
        {
            tracing::warn!(error = %e.chain(), user_id = found.id, "could not apply SESSION_MAX_PER_USER");
        }
        self.metrics.login("success");
        tracing::info!(user_id = found.id, session_id = issued.session.id, "login");
        Ok(LoginOutcome::Success { issued, user })
    }

    /// The user with this identifier, if any, and whether the password is theirs; an unknown
    /// user costs the same argon2 work as a wrong password.
    async fn check_credentials(
        &self,
        identifier: &str,
        password: &str,
    ) -> AppResult<(Option<user::Model>, bool)> {
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
        Ok((found, ok))
    }

    /// Changes the caller's password and ends their other sessions.
    pub async fn change_password(
        &self,
        current: &CachedSession,
        old_password: &str,
        new_password: &str,
        origin: &Origin,
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
        // Throttled like logins: a stolen session must not become a password-guessing oracle.
        let reservation = self.throttle.reserve_password_change(user_id).await?;
        let verified = self
            .passwords
            .verify(old_password, Some(&found.password_hash))
            .await;
        match verified {
            Ok(true) => self.throttle.release(reservation).await,
            Ok(false) => {
                return Err(AppError::bad_input("the current password is not correct"));
            }
            Err(e) => {
                self.throttle.release(reservation).await;
                return Err(e);
            }
        }
        let hash = self.passwords.hash(new_password).await?;
        // The user's other sessions end in the password's transaction: the change never lands
        // without them ending.
        let (ended, recorded) = retry_deadlocks(|| async {
            let txn = self.db.begin().await?;
            user::Entity::update_many()
                .col_expr(user::Column::PasswordHash, Expr::value(hash.clone()))
                .filter(user::Column::Id.eq(user_id))
                .exec(&txn)
                .await?;
            let (ended, revoked) = self
                .sessions
                .end_in(
                    &txn,
                    sea_orm::Condition::all()
                        .add(session::Column::UserId.eq(user_id))
                        .add(session::Column::Id.ne(current.id)),
                    &origin
                        .event(EventType::SessionRevoked)
                        .reason("password_changed"),
                )
                .await?;
            let mut events = vec![origin
                .event(EventType::PasswordChanged)
                .session(current.id)
                .user(Some(user_id))];
            events.extend(revoked);
            let recorded = self
                .sessions
                .events()
                .record(&txn, now_ms(), events)
                .await?;
            txn.commit().await?;
            Ok((ended, recorded))
        })
        .await?;
        self.sessions.events().publish(recorded);
        self.sessions.ended(ended).await;
        self.sessions.invalidate_user(user_id).await;
        Ok(())
    }
}

pub fn validate_new_password(password: &str) -> AppResult<()> {
    if password.is_empty() {
        return Err(AppError::bad_input("the password must not be empty"));
    }
    check_password(password)
}
