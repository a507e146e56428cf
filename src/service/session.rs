//! Sessions: resolve a presented token (cache first, then the database), create sessions,
//! slide their expiry, invalidate them, and rotate refresh tokens.

use super::activity::ActivityWriter;
use super::directory::ChannelDirectory;
use super::events::Origin;
use super::retry_deadlocks;
use super::throttle::Throttle;
use crate::cache::SessionStore;
use crate::clock::{ms, now_ms};
use crate::config::Config;
use crate::domain::{CachedSession, CachedUser, ChannelGrant, SessionKind};
use crate::error::{AppError, AppResult};
use crate::events::{Event, EventLog, EventType, NewEvent};
use crate::metrics::Metrics;
use crate::permission::PermissionSet;
use crate::token::{self, TokenHash};
use entity::{channel, role, role_channel, session, session_refresh_token, user, user_role};
use sea_orm::sea_query::{Expr, Query, SelectStatement};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryResult,
    QuerySelect, TransactionTrait,
};
use std::collections::btree_map::{BTreeMap, Entry};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Session lifetimes in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    pub idle_ms: i64,
    pub absolute_ms: i64,
    /// Activity is written once it is this much newer than the stored value.
    pub write_threshold_ms: i64,
    pub write_interval_ms: i64,
    pub token_ttl_ms: Option<i64>,
    pub cache_ttl_ms: i64,
    pub grace_ms: i64,
}

impl Lifetimes {
    pub fn new(config: &Config) -> Lifetimes {
        let idle_ms = ms(config.session_idle_timeout);
        // Shared caches learn of activity only through these writes, so a session must be
        // written several times per idle period or it would expire while in use.
        let write_interval_ms =
            ms(config.session_activity_write_interval).min((idle_ms / 4).max(1));
        let flush_ms = Self::flush_every_ms(write_interval_ms);
        Lifetimes {
            idle_ms,
            absolute_ms: ms(config.session_absolute_timeout),
            // Leave room for the writer's flush delay, so the stored value never lags by more
            // than the interval.
            write_threshold_ms: (write_interval_ms - flush_ms).max(0),
            write_interval_ms,
            token_ttl_ms: config.session_token_ttl.map(ms),
            cache_ttl_ms: ms(config.session_cache_ttl),
            grace_ms: ms(config.refresh_reuse_grace),
        }
    }

    /// How often the activity writer flushes: a quarter of the write interval, 10 ms to 1 s.
    fn flush_every_ms(write_interval_ms: i64) -> i64 {
        (write_interval_ms / 4).clamp(10, 1000)
    }

    pub fn flush_every(&self) -> Duration {
        Duration::from_millis(Self::flush_every_ms(self.write_interval_ms) as u64)
    }

    pub fn expires_at(&self, last_active_at: i64, absolute_expires_at: i64) -> i64 {
        last_active_at
            .saturating_add(self.idle_ms)
            .min(absolute_expires_at)
    }
}

/// The client's address and user agent, recorded on the sessions it creates.
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
}

/// A session just created or rotated, with the tokens to hand to the client (once).
pub struct Issued {
    pub session: Arc<CachedSession>,
    pub token: String,
    pub refresh_token: Option<String>,
}

/// What a new session starts with.
pub struct NewSession<'a> {
    pub user: Option<CachedUser>,
    /// When `user` (row and grants) began to be read (ms): the entry's `loaded_at`, so a cache
    /// refuses it if the user's entries were dropped since (a role change during a login).
    pub read_at: i64,
    pub authentication_strategy: Option<String>,
    pub active_order_id: Option<i64>,
    pub active_channel_id: Option<i64>,
    /// Data carried over from the session this one replaces (login).
    pub data: Option<Arc<crate::domain::SessionData>>,
    pub remember_me: bool,
    pub client: &'a ClientInfo,
}

/// Whether looking a session up counts as its use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// A request: the session's idle expiry moves forward.
    Slide,
    /// A background re-check (a live subscription): the session is checked, not used.
    Observe,
}

/// Why a refresh token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshFailure {
    Unknown,
    Expired,
    Superseded,
    Reused,
}

impl CachedSession {
    /// Builds the cache form from a row and its user (already with per-channel permissions).
    pub fn from_model(m: &session::Model, user: Option<CachedUser>, now: i64) -> CachedSession {
        CachedSession {
            revision: m.revision,
            data_version: m.data_version,
            data: super::session_data::parse_stored(m.data.as_deref()),
            id: m.id,
            token_hash: TokenHash::from_hex(&m.token_hash).unwrap_or(TokenHash([0; 32])),
            kind: SessionKind::from_db(&m.kind),
            user: user.map(Box::new),
            authentication_strategy: m.authentication_strategy.as_deref().map(Box::from),
            active_order_id: m.active_order_id,
            active_channel_id: m.active_channel_id,
            created_at: m.created_at,
            token_issued_at: m.token_issued_at,
            absolute_expires_at: m.absolute_expires_at,
            remember_me: m.remember_me,
            ip_address: m.ip_address.as_deref().map(Box::from),
            user_agent: m.user_agent.as_deref().map(Box::from),
            last_active_at: AtomicI64::new(m.last_active_at),
            persisted_active_at: AtomicI64::new(m.last_active_at),
            loaded_at: now,
        }
    }

    /// A copy with a different active order and channel, keeping the activity counters.
    pub fn with_active(&self, order: Option<i64>, channel: Option<i64>) -> CachedSession {
        CachedSession {
            revision: self.revision,
            data_version: self.data_version,
            data: self.data.clone(),
            id: self.id,
            token_hash: self.token_hash,
            kind: self.kind,
            user: self.user.clone(),
            authentication_strategy: self.authentication_strategy.clone(),
            active_order_id: order,
            active_channel_id: channel,
            created_at: self.created_at,
            token_issued_at: self.token_issued_at,
            absolute_expires_at: self.absolute_expires_at,
            remember_me: self.remember_me,
            ip_address: self.ip_address.clone(),
            user_agent: self.user_agent.clone(),
            last_active_at: AtomicI64::new(self.last_active()),
            persisted_active_at: AtomicI64::new(self.persisted_active_at.load(Ordering::Relaxed)),
            loaded_at: self.loaded_at,
        }
    }
}

/// The live-session condition: not revoked, not idle too long, not past the absolute expiry.
pub fn live_condition(now: i64, lifetimes: &Lifetimes) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(session::Column::Invalidated.eq(false))
        .add(session::Column::LastActiveAt.gt(now - lifetimes.idle_ms))
        .add(session::Column::AbsoluteExpiresAt.gt(now))
}

/// The one active column a storefront write changes (the other stays as the row has it).
#[derive(Clone, Copy, Debug)]
pub enum ActiveChange {
    Order(Option<i64>),
    Channel(Option<i64>),
    /// Neither: only lock the live row (a write of a column with its own value).
    Lock,
}

/// What a write of a session row can change of its cached entry: active order, active channel,
/// data, data version; and the row's revision.
type WrittenColumns = (Option<i64>, Option<i64>, Option<String>, i64, i64);

/// Sessions ended in a transaction by [`Sessions::end_in`]: the tokens whose cached entries
/// must go once it commits. Token hashes read with the rows locked, so no refresh can have
/// rotated them since.
#[must_use]
pub(crate) struct EndedInTxn {
    hashes: Vec<String>,
}

/// An update of session rows that changes what caches hold of them (anything but the activity
/// time): it increments their revision, so no cache goes back to the rows as they were.
pub(crate) fn revise_sessions() -> sea_orm::UpdateMany<session::Entity> {
    use sea_orm::sea_query::ExprTrait;
    session::Entity::update_many().col_expr(
        session::Column::Revision,
        Expr::col(session::Column::Revision).add(1),
    )
}

/// The update that ends sessions (a revision of their rows): marks them invalidated and deletes
/// their data; the rows stay for the listing until the clean-up.
fn end_sessions() -> sea_orm::UpdateMany<session::Entity> {
    revise_sessions()
        .col_expr(session::Column::Invalidated, Expr::value(true))
        .col_expr(session::Column::Data, Expr::value(Option::<String>::None))
}

/// The session service: finds a request's session and channel, creates sessions, slides their
/// expiry, ends them, rotates refresh tokens, and keeps session data. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    pub(super) db: sea_orm::DatabaseConnection,
    /// The session cache with its staleness protocol.
    pub(super) store: Arc<SessionStore>,
    pub(super) lifetimes: Lifetimes,
    /// Batched last-activity writes.
    pub(super) activity: Arc<ActivityWriter>,
    pub(super) metrics: Arc<Metrics>,
    /// The anonymous-session limit.
    pub(super) throttle: Arc<Throttle>,
    /// `SESSION_DATA_MAX_BYTES`, `SESSION_MAX_PER_USER`.
    pub(super) config: Arc<Config>,
    /// Channels kept in process, for `identify`.
    pub(super) channels: Arc<ChannelDirectory>,
    /// The channel with code `default`, used when a request names none.
    pub(super) default_channel: Arc<channel::Model>,
    /// Records session events in the transactions of the changes; publishes them after.
    pub(super) events: EventLog,
    /// The statements of [`Sessions::load_session`], built once; reads waiting at the same time
    /// share one.
    session_read: super::session_read::SessionRead,
}

/// What [`Sessions`] is built from.
pub(super) struct SessionsParts {
    pub db: sea_orm::DatabaseConnection,
    pub store: Arc<SessionStore>,
    pub lifetimes: Lifetimes,
    pub activity: Arc<ActivityWriter>,
    pub metrics: Arc<Metrics>,
    pub throttle: Arc<Throttle>,
    pub config: Arc<Config>,
    pub channels: Arc<ChannelDirectory>,
    pub default_channel: Arc<channel::Model>,
    pub events: EventLog,
}

impl Sessions {
    pub(super) fn new(p: SessionsParts) -> Sessions {
        // As many reads out as the machine has cores, at least two (one slow statement must
        // not hold up all), at most the pool's connections: more only split the waiting reads
        // into smaller statements.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let reads_out = cores.max(2).min(p.config.database_max_connections as usize);
        let session_read = super::session_read::SessionRead::new(
            p.db.clone(),
            p.metrics.clone(),
            reads_out,
            p.config.database_timeout,
        );
        Sessions {
            db: p.db,
            store: p.store,
            lifetimes: p.lifetimes,
            activity: p.activity,
            metrics: p.metrics,
            throttle: p.throttle,
            config: p.config,
            channels: p.channels,
            default_channel: p.default_channel,
            events: p.events,
            session_read,
        }
    }

    /// The lifetimes in milliseconds.
    pub fn lifetimes(&self) -> &Lifetimes {
        &self.lifetimes
    }

    /// The event log: recording in a change's transaction, publishing, subscribing.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// Records events that stand alone (a failed or throttled login changes nothing else)
    /// and publishes them.
    pub(super) async fn record_now(&self, events: Vec<NewEvent>) -> AppResult<()> {
        let recorded = self.events.record(&self.db, now_ms(), events).await?;
        self.events.publish(recorded);
        Ok(())
    }

    /// The channel with code `default`.
    pub fn default_channel(&self) -> &Arc<channel::Model> {
        &self.default_channel
    }

    /// The session for a presented token, or `None` when it is unknown, expired or revoked.
    ///
    /// Cached path: one cache lookup, an expiry check, and an atomic store to slide the expiry.
    pub async fn resolve_session(&self, hash: &TokenHash) -> AppResult<Option<Arc<CachedSession>>> {
        self.resolve(hash, Activity::Slide).await
    }

    /// [`Self::resolve_session`], moving the session's activity forward or not.
    pub(super) async fn resolve(
        &self,
        hash: &TokenHash,
        activity: Activity,
    ) -> AppResult<Option<Arc<CachedSession>>> {
        let now = now_ms();
        let mut stale = None;
        if let Some(s) = self.store.get(hash).await {
            if self.store.is_fresh(&s, now) && now < s.expires_at(self.lifetimes.idle_ms) {
                return Ok(self.accept(s, now, activity).await);
            }
            // Stale, or expired as far as this copy knows; activity seen elsewhere (another
            // instance, the pending writes) may say otherwise, so the database decides.
            stale = Some(s);
        }
        if self.store.is_known_unknown(hash) {
            return Ok(None);
        }
        let read = self.store.start_read();
        let Some((model, user)) = self.load_session(hash).await? else {
            self.store.remember_unknown(hash);
            return Ok(None);
        };
        if model.user_id.is_some() && user.is_none() {
            // The session's user has been deleted.
            return Ok(None);
        }
        // `loaded_at` is when the read started: a Redis cache refuses the entry if the user's
        // sessions were dropped after that.
        let cached = CachedSession::from_model(&model, user, read.started_at);
        if let Some(pending) = self.activity.pending(model.id) {
            cached.last_active_at.fetch_max(pending, Ordering::Relaxed);
            cached
                .persisted_active_at
                .fetch_max(pending, Ordering::Relaxed);
        }
        if let Some(old) = &stale {
            // The stale entry may know of activity the database has not seen yet.
            cached
                .last_active_at
                .fetch_max(old.last_active(), Ordering::Relaxed);
            cached.persisted_active_at.fetch_max(
                old.persisted_active_at.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
        }
        let cached = Arc::new(cached);
        if now >= cached.expires_at(self.lifetimes.idle_ms) {
            // Expired sessions never come back: remember the token as dead.
            self.store.remember_unknown(hash);
            if stale.is_some() {
                self.store.invalidate_token(hash).await;
            }
            return Ok(None);
        }
        self.store.put_read(cached.clone(), read).await;
        Ok(self.accept(cached, now, activity).await)
    }

    /// Checks expiry and token age, and (with [`Activity::Slide`]) slides the session forward.
    async fn accept(
        &self,
        s: Arc<CachedSession>,
        now: i64,
        activity: Activity,
    ) -> Option<Arc<CachedSession>> {
        if now >= s.expires_at(self.lifetimes.idle_ms) {
            self.store.drop_expired(&s.token_hash).await;
            return None;
        }
        if let Some(ttl) = self.lifetimes.token_ttl_ms {
            if now >= s.token_issued_at.saturating_add(ttl) {
                return None;
            }
        }
        if activity == Activity::Observe {
            return Some(s);
        }
        s.last_active_at.fetch_max(now, Ordering::Relaxed);
        let persisted = s.persisted_active_at.load(Ordering::Relaxed);
        if now - persisted >= self.lifetimes.write_threshold_ms
            && s.persisted_active_at
                .compare_exchange(persisted, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.activity.touch(s.id, now);
            self.store.slid(&s, now);
        }
        Some(s)
    }

    /// Drops one token's cached entry after its row changed; the token stays usable.
    pub async fn invalidate_token(&self, hash: &TokenHash) {
        self.store.invalidate_token(hash).await;
    }

    /// Drops a dead token's cached entry and keeps it out of the cache for a while (see
    /// [`SessionStore::revoke`](crate::cache::SessionStore::revoke)).
    pub async fn revoke_token(&self, hash: &TokenHash) {
        self.store.revoke(hash).await;
    }

    /// [`Sessions::revoke_token`] for each of the stored token digests (lowercase hex).
    async fn revoke_tokens(&self, digests: &[String]) {
        for hash in digests.iter().filter_map(|h| TokenHash::from_hex(h)) {
            self.revoke_token(&hash).await;
        }
    }

    /// Drops every cached entry of one user (after a change to the user or their roles).
    pub async fn invalidate_user(&self, user_id: i64) {
        self.store.invalidate_user(user_id).await;
    }

    /// Empties the session cache (`clearSessionCache`).
    pub async fn clear_cache(&self) -> AppResult<()> {
        self.store.clear().await;
        Ok(())
    }

    /// The unrevoked session row of a token hash with its user and the user's per-channel
    /// permissions, in one statement. The user is `None` for an anonymous session, and for a
    /// session whose user has been deleted (its `user_id` is then still set).
    async fn load_session(&self, hash: &TokenHash) -> AppResult<super::session_read::Found> {
        Ok(self.session_read.run(hash.to_hex()).await?)
    }

    /// A user with per-channel permissions, as cached with their sessions, in one statement.
    /// `None` if deleted.
    pub async fn load_cached_user<C: ConnectionTrait>(
        &self,
        db: &C,
        user_id: i64,
    ) -> AppResult<Option<CachedUser>> {
        use sea_orm::ExprTrait as _;
        let mut q = Query::select();
        q.from(user::Entity);
        join_grants(&mut q);
        q.and_where(Expr::col((user::Entity, user::Column::Id)).eq(user_id));
        user_from_rows(&db.query_all(&q).await?)
    }

    /// Inserts a session and returns it with its tokens. Authenticated sessions get a refresh
    /// token; anonymous ones do not. Nothing is cached here: callers cache after commit.
    pub async fn insert_session<C: ConnectionTrait>(
        &self,
        db: &C,
        new: NewSession<'_>,
    ) -> AppResult<Issued> {
        let now = now_ms();
        let token = token::generate();
        let refresh = new.user.as_ref().map(|_| token::generate());
        let kind = if new.user.is_some() {
            SessionKind::Authenticated
        } else {
            SessionKind::Anonymous
        };
        let user_agent = new
            .client
            .user_agent
            .as_ref()
            .map(|ua| truncate(ua, 512).to_string());
        let model = session::ActiveModel {
            kind: Set(kind.as_db().to_string()),
            token_hash: Set(token.hash.to_hex()),
            token_issued_at: Set(now),
            refresh_hash: Set(refresh.as_ref().map(|r| r.hash.to_hex())),
            previous_refresh_hash: Set(None),
            refresh_rotated_at: Set(None),
            user_id: Set(new.user.as_ref().map(|u| u.id)),
            authentication_strategy: Set(new.authentication_strategy.clone()),
            active_order_id: Set(new.active_order_id),
            active_channel_id: Set(new.active_channel_id),
            invalidated: Set(false),
            remember_me: Set(new.remember_me),
            created_at: Set(now),
            last_active_at: Set(now),
            absolute_expires_at: Set(now.saturating_add(self.lifetimes.absolute_ms)),
            ip_address: Set(new.client.ip_address.clone()),
            user_agent: Set(user_agent),
            data: Set(new.data.as_deref().map(super::session_data::to_stored)),
            data_version: Set(0),
            revision: Set(0),
            ..Default::default()
        };
        let inserted = session::Entity::insert(model)
            .exec_with_returning(db)
            .await?;
        self.metrics.session_event("created", 1);
        Ok(Issued {
            session: Arc::new(CachedSession::from_model(
                &inserted,
                new.user,
                new.read_at.min(now),
            )),
            token: token.token,
            refresh_token: refresh.map(|r| r.token),
        })
    }

    /// `createAnonymousSession`, and the implicit session of `createOrder`.
    pub async fn create_anonymous_session(
        &self,
        origin: &Origin,
        channel_id: Option<i64>,
    ) -> AppResult<Issued> {
        let client = &origin.client;
        self.throttle
            .admit_anonymous(client.ip_address.as_deref())
            .await?;
        let txn = self.db.begin().await?;
        let issued = self
            .insert_session(
                &txn,
                NewSession {
                    user: None,
                    read_at: now_ms(),
                    authentication_strategy: None,
                    active_order_id: None,
                    active_channel_id: channel_id,
                    data: None,
                    remember_me: false,
                    client,
                },
            )
            .await?;
        let created = origin
            .event(EventType::SessionCreated)
            .session(issued.session.id);
        let recorded = self.events.record(&txn, now_ms(), vec![created]).await?;
        txn.commit().await?;
        self.events.publish(recorded);
        self.store.put_new(issued.session.clone()).await;
        Ok(issued)
    }

    /// Marks sessions invalidated, records `ending` (completed with each session and its user)
    /// for every one of them in the same transaction, batch by batch, publishes the events, and
    /// drops the sessions from the cache. `also` is recorded with the first batch (what caused
    /// the revocation, e.g. `REFRESH_REUSE_DETECTED`). Returns how many of them were live.
    pub async fn invalidate_sessions(
        &self,
        filter: sea_orm::Condition,
        ending: &NewEvent,
        also: Vec<NewEvent>,
    ) -> AppResult<u64> {
        let now = now_ms();
        let targets: Vec<(i64, String, i64, i64, Option<i64>)> = session::Entity::find()
            .select_only()
            .columns([
                session::Column::Id,
                session::Column::TokenHash,
                session::Column::LastActiveAt,
                session::Column::AbsoluteExpiresAt,
                session::Column::UserId,
            ])
            .filter(filter)
            .filter(session::Column::Invalidated.eq(false))
            .into_tuple()
            .all(&self.db)
            .await?;
        if targets.is_empty() {
            return Ok(0);
        }
        let mut dead: Vec<String> = targets.iter().map(|t| t.1.clone()).collect();
        let mut also = Some(also);
        let mut live = 0;
        for chunk in targets.chunks(1000) {
            let rows: Vec<(i64, Option<i64>)> = chunk.iter().map(|t| (t.0, t.4)).collect();
            let ended: std::collections::HashSet<i64> = self
                .end_batch(rows, ending, also.take().unwrap_or_default())
                .await?
                .into_iter()
                .collect();
            // A refresh may have rotated a token between the read above and the update; now
            // that the rows are marked no write can change them, so this read is final.
            let ids: Vec<i64> = chunk.iter().map(|t| t.0).collect();
            let current: Vec<String> = session::Entity::find()
                .select_only()
                .column(session::Column::TokenHash)
                .filter(session::Column::Id.is_in(ids))
                .into_tuple()
                .all(&self.db)
                .await?;
            dead.extend(current);
            for (id, _, last_active, absolute, _) in chunk {
                if !ended.contains(id) {
                    continue;
                }
                let last_active = (*last_active).max(self.activity.pending(*id).unwrap_or(0));
                if now < self.lifetimes.expires_at(last_active, *absolute) {
                    live += 1;
                }
            }
        }
        dead.sort_unstable();
        dead.dedup();
        self.revoke_tokens(&dead).await;
        self.metrics.session_event("revoked", live);
        Ok(live)
    }

    /// Invalidates one batch of `(session id, user id)` and records their events in one
    /// transaction; returns the ids this call ended. Sessions another request revoked
    /// meanwhile are left to that request's events: when the update does not change every
    /// row, it is rolled back and tried again with the rows still live, so each session gets
    /// exactly one ending event.
    async fn end_batch(
        &self,
        mut rows: Vec<(i64, Option<i64>)>,
        ending: &NewEvent,
        mut also: Vec<NewEvent>,
    ) -> AppResult<Vec<i64>> {
        loop {
            if rows.is_empty() {
                return Ok(Vec::new());
            }
            let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let attempt = retry_deadlocks(|| async {
                let txn = self.db.begin().await?;
                let updated = end_sessions()
                    .filter(session::Column::Id.is_in(ids.clone()))
                    .filter(session::Column::Invalidated.eq(false))
                    .exec(&txn)
                    .await?;
                if updated.rows_affected != ids.len() as u64 {
                    txn.rollback().await?;
                    return Ok(None);
                }
                let mut events = also.clone();
                events.extend(
                    rows.iter()
                        .map(|(id, user_id)| ending.clone().session(*id).user(*user_id)),
                );
                let recorded = self.events.record(&txn, now_ms(), events).await?;
                txn.commit().await?;
                Ok(Some(recorded))
            })
            .await?;
            if let Some(recorded) = attempt {
                self.events.publish(recorded);
                return Ok(ids);
            }
            // Another request revoked some of them meanwhile: retry with those still live.
            let still: Vec<(i64, Option<i64>)> = session::Entity::find()
                .select_only()
                .columns([session::Column::Id, session::Column::UserId])
                .filter(session::Column::Id.is_in(ids))
                .filter(session::Column::Invalidated.eq(false))
                .into_tuple()
                .all(&self.db)
                .await?;
            rows = still;
            if rows.is_empty() {
                // What caused the revocation still happened; record it on its own.
                if !also.is_empty() {
                    let recorded = self
                        .events
                        .record(&self.db, now_ms(), std::mem::take(&mut also))
                        .await?;
                    self.events.publish(recorded);
                }
                return Ok(Vec::new());
            }
        }
    }

    /// Ends every session of a user, in the database and in every cache, recording `ending`
    /// for each.
    /// Ends the live sessions matching `filter` inside the caller's transaction, so they end
    /// with the change that ends them (a password change) or not at all. Locks their rows, marks
    /// them invalidated and returns one `ending` event per session, for the caller to record in
    /// the same transaction; once it commits, pass the [`EndedInTxn`] to [`Sessions::ended`].
    pub(crate) async fn end_in<C: ConnectionTrait>(
        &self,
        txn: &C,
        filter: sea_orm::Condition,
        ending: &NewEvent,
    ) -> AppResult<(EndedInTxn, Vec<NewEvent>)> {
        let rows: Vec<(i64, String, Option<i64>)> = session::Entity::find()
            .select_only()
            .columns([
                session::Column::Id,
                session::Column::TokenHash,
                session::Column::UserId,
            ])
            .filter(filter)
            .filter(session::Column::Invalidated.eq(false))
            .lock_exclusive()
            .into_tuple()
            .all(txn)
            .await?;
        if !rows.is_empty() {
            end_sessions()
                .filter(session::Column::Id.is_in(rows.iter().map(|r| r.0)))
                .exec(txn)
                .await?;
        }
        let events = rows
            .iter()
            .map(|(id, _, user_id)| ending.clone().session(*id).user(*user_id))
            .collect();
        let hashes = rows.into_iter().map(|r| r.1).collect();
        Ok((EndedInTxn { hashes }, events))
    }

    /// The transaction of [`Sessions::end_in`] committed: drops the ended sessions' cached
    /// entries everywhere.
    pub(crate) async fn ended(&self, ended: EndedInTxn) {
        self.revoke_tokens(&ended.hashes).await;
        self.metrics
            .session_event("revoked", ended.hashes.len() as u64);
    }

    pub async fn end_user_sessions(&self, user_id: i64, ending: &NewEvent) -> AppResult<u64> {
        let n = self
            .invalidate_sessions(
                sea_orm::Condition::all().add(session::Column::UserId.eq(user_id)),
                ending,
                Vec::new(),
            )
            .await?;
        self.invalidate_user(user_id).await;
        Ok(n)
    }

    /// Sets one of the session's active columns, in the database and the cache, leaving the
    /// other as the row has it (a concurrent `createOrder` and `setActiveChannel` both land).
    /// Fails with `UNAUTHENTICATED`, and writes nothing, if the session was revoked since it was
    /// resolved.
    pub async fn set_active(
        &self,
        s: &CachedSession,
        change: ActiveChange,
    ) -> AppResult<Arc<CachedSession>> {
        retry_deadlocks(|| async {
            let txn = self.db.begin().await?;
            self.write_active(&txn, s, change).await?;
            self.commit_through(txn, s).await
        })
        .await
    }

    /// The row update of [`Self::set_active`], for callers that need it in their transaction:
    /// only a live row is changed, through its current token, and only the column named;
    /// a revoked session is `UNAUTHENTICATED`. It locks the row until the transaction ends.
    pub(crate) async fn write_active<C: ConnectionTrait>(
        &self,
        db: &C,
        s: &CachedSession,
        change: ActiveChange,
    ) -> AppResult<()> {
        let (column, value) = match change {
            ActiveChange::Order(order) => (session::Column::ActiveOrderId, Expr::value(order)),
            ActiveChange::Channel(channel) => {
                (session::Column::ActiveChannelId, Expr::value(channel))
            }
            // The column written with its own value: locks the row and checks it is live.
            ActiveChange::Lock => (
                session::Column::ActiveOrderId,
                Expr::col(session::Column::ActiveOrderId),
            ),
        };
        let written = revise_sessions()
            .col_expr(column, value)
            .filter(session::Column::Id.eq(s.id))
            // Through the token still current: one rotated out by a refresh while this request
            // ran is dead, like a revoked one (its write would miss the new token's entry).
            .filter(session::Column::TokenHash.eq(s.token_hash.to_hex()))
            .filter(session::Column::Invalidated.eq(false))
            .exec(db)
            .await?;
        if written.rows_affected == 0 {
            return Err(AppError::unauthenticated(
                "the session has been revoked, or its token replaced",
            ));
        }
        Ok(())
    }

    /// Ends a transaction that wrote the session's row (which it holds locked): reads back what
    /// the cache holds of the row, commits, then replaces the cached entry with what it read.
    ///
    /// The read-back is a locking read, so it sees every write committed before this one (on
    /// MySQL too, whose plain reads may use an older snapshot), and its ticket is taken while
    /// the row is still locked: on this instance, writes of one session replace the entry in
    /// the order the database applied them, and a later write's entry is never overwritten by
    /// an earlier one's. The replacement runs in a task of its own, so a request dropped after
    /// the commit still updates the cache.
    pub(crate) async fn commit_through(
        &self,
        txn: sea_orm::DatabaseTransaction,
        s: &CachedSession,
    ) -> AppResult<Arc<CachedSession>> {
        let row: Option<WrittenColumns> = session::Entity::find_by_id(s.id)
            .select_only()
            .columns([
                session::Column::ActiveOrderId,
                session::Column::ActiveChannelId,
                session::Column::Data,
                session::Column::DataVersion,
                session::Column::Revision,
            ])
            .lock_exclusive()
            .into_tuple()
            .one(&txn)
            .await?;
        let (order, channel, data, data_version, revision) =
            row.ok_or_else(|| AppError::unauthenticated("the session has ended"))?;
        let mut entry = s.with_active(order, channel);
        entry.data = super::session_data::parse_stored(data.as_deref());
        entry.data_version = data_version;
        entry.revision = revision;
        let entry = Arc::new(entry);
        let ticket = self.store.write_ticket();
        txn.commit().await?;
        let (store, written) = (self.store.clone(), entry.clone());
        let _ = tokio::spawn(async move { store.replace_written(written, ticket).await }).await;
        Ok(entry)
    }

    /// Rotates both tokens of the session that owns `refresh_token`.
    ///
    /// The rotation is a compare-and-swap on the stored refresh hash, so of several concurrent
    /// refreshes with one token exactly one succeeds; the others see `SUPERSEDED`. The token it
    /// supersedes is recorded with the time, in the same transaction, so any token the session
    /// ever had is recognised: within `REFRESH_REUSE_GRACE` of its own rotation it gets
    /// `SUPERSEDED`, later it revokes the session (`REUSED`), however many rotations followed.
    pub async fn refresh_session(
        &self,
        refresh_token: &str,
        origin: &Origin,
    ) -> AppResult<Result<Issued, RefreshFailure>> {
        let Some(hash) = token::parse(refresh_token) else {
            return Ok(Err(RefreshFailure::Unknown));
        };
        let hex = hash.to_hex();
        let now = now_ms();
        let current = session::Entity::find()
            .filter(session::Column::RefreshHash.eq(hex.clone()))
            .one(&self.db)
            .await?;
        if let Some(s) = current {
            if s.invalidated {
                return Ok(Err(RefreshFailure::Unknown));
            }
            let last_active = s
                .last_active_at
                .max(self.activity.pending(s.id).unwrap_or(0));
            if now
                >= self
                    .lifetimes
                    .expires_at(last_active, s.absolute_expires_at)
            {
                return Ok(Err(RefreshFailure::Expired));
            }
            let Some(user_id) = s.user_id else {
                return Ok(Err(RefreshFailure::Unknown));
            };
            let token = token::generate();
            let refresh = token::generate();
            let refreshed = origin
                .acting_as(user_id)
                .event(EventType::SessionRefreshed)
                .session(s.id)
                .user(Some(user_id));
            let rotated =
                retry_deadlocks(|| self.rotate(&s, &hex, &token, &refresh, now, &refreshed))
                    .await?;
            let Some(recorded) = rotated else {
                return Ok(Err(RefreshFailure::Superseded));
            };
            self.events.publish(recorded);
            if let Some(old) = TokenHash::from_hex(&s.token_hash) {
                self.revoke_token(&old).await;
            }
            // Read afresh, as the next request would, not built from the row read before the
            // rotation: a write through the old token that landed in between (session data,
            // the active order or channel) went to the old token's entry, and a copy cached
            // for the new token must not miss it. A session revoked since is none.
            let Some(session) = self.resolve(&token.hash, Activity::Observe).await? else {
                return Ok(Err(RefreshFailure::Unknown));
            };
            self.metrics.session_event("refreshed", 1);
            return Ok(Ok(Issued {
                session,
                token: token.token,
                refresh_token: Some(refresh.token),
            }));
        }
        let Some(superseded) = session_refresh_token::Entity::find_by_id(hex)
            .one(&self.db)
            .await?
        else {
            return Ok(Err(RefreshFailure::Unknown));
        };
        let owner = session::Entity::find_by_id(superseded.session_id)
            .one(&self.db)
            .await?;
        if owner.as_ref().is_none_or(|s| s.invalidated) {
            return Ok(Err(RefreshFailure::Unknown));
        }
        if now - superseded.superseded_at <= self.lifetimes.grace_ms {
            return Ok(Err(RefreshFailure::Superseded));
        }
        // A rotated-out token used after its grace window: assume it was stolen, end the session.
        tracing::warn!(
            session_id = superseded.session_id,
            "superseded refresh token reused; revoking the session"
        );
        let owner_id = owner.and_then(|s| s.user_id);
        let detected = origin
            .event(EventType::RefreshReuseDetected)
            .session(superseded.session_id)
            .user(owner_id)
            .reason("REUSED");
        self.invalidate_sessions(
            sea_orm::Condition::all().add(session::Column::Id.eq(superseded.session_id)),
            &origin.event(EventType::SessionRevoked).reason("REUSED"),
            vec![detected],
        )
        .await?;
        Ok(Err(RefreshFailure::Reused))
    }

    /// The rotation of [`Self::refresh_session`]: swaps in the new token hashes if `old_refresh`
    /// is still the session's refresh token and the session is live, and records the old one
    /// as superseded, and records `refreshed`, in one transaction. `None` when it was not (any
    /// more); else the recorded event, to publish.
    async fn rotate(
        &self,
        s: &session::Model,
        old_refresh: &str,
        token: &token::IssuedToken,
        refresh: &token::IssuedToken,
        now: i64,
        refreshed: &NewEvent,
    ) -> AppResult<Option<Vec<Event>>> {
        let txn = self.db.begin().await?;
        let rotated = revise_sessions()
            .col_expr(session::Column::TokenHash, Expr::value(token.hash.to_hex()))
            .col_expr(session::Column::TokenIssuedAt, Expr::value(now))
            .col_expr(
                session::Column::RefreshHash,
                Expr::value(refresh.hash.to_hex()),
            )
            .col_expr(
                session::Column::PreviousRefreshHash,
                Expr::value(old_refresh),
            )
            .col_expr(session::Column::RefreshRotatedAt, Expr::value(now))
            .col_expr(
                session::Column::LastActiveAt,
                Expr::value(now.max(s.last_active_at)),
            )
            .filter(session::Column::Id.eq(s.id))
            .filter(session::Column::RefreshHash.eq(old_refresh))
            .filter(session::Column::Invalidated.eq(false))
            .exec(&txn)
            .await?;
        if rotated.rows_affected != 1 {
            txn.rollback().await?;
            return Ok(None);
        }
        session_refresh_token::Entity::insert(session_refresh_token::ActiveModel {
            hash: Set(old_refresh.to_string()),
            session_id: Set(s.id),
            superseded_at: Set(now),
        })
        .exec_without_returning(&txn)
        .await?;
        let recorded = self
            .events
            .record(&txn, now, vec![refreshed.clone()])
            .await?;
        txn.commit().await?;
        Ok(Some(recorded))
    }
}

impl Sessions {
    /// Ends a user's least recently used live sessions beyond `SESSION_MAX_PER_USER`, never
    /// `keep` (the session just issued). Returns how many were ended.
    ///
    /// "Recently used" is the stored activity, moved forward by this instance's pending writes,
    /// so it is exact to within `SESSION_ACTIVITY_WRITE_INTERVAL`.
    pub async fn enforce_session_cap(
        &self,
        user_id: i64,
        keep: i64,
        origin: &super::events::Origin,
    ) -> AppResult<u64> {
        let max = self.config.session_max_per_user as usize;
        if max == 0 {
            return Ok(0);
        }
        let now = now_ms();
        let rows: Vec<(i64, i64, i64)> = session::Entity::find()
            .select_only()
            .columns([
                session::Column::Id,
                session::Column::LastActiveAt,
                session::Column::AbsoluteExpiresAt,
            ])
            .filter(session::Column::UserId.eq(user_id))
            .filter(session::Column::Invalidated.eq(false))
            .filter(session::Column::AbsoluteExpiresAt.gt(now))
            .into_tuple()
            .all(&self.db)
            .await?;
        // Only sessions older than `keep` (ids follow the commits of one user's logins, which
        // queue on the user's row): a login committing at the same moment is newer, and applies
        // the cap itself, counting this one. Counting each other, two logins under a cap of one
        // ended each other and left the user with none.
        let mut others: Vec<(i64, i64)> = rows
            .into_iter()
            .filter(|(id, ..)| *id < keep)
            .filter_map(|(id, last_active, absolute)| {
                let last_active = last_active.max(self.activity.pending(id).unwrap_or(0));
                (now < self.lifetimes.expires_at(last_active, absolute))
                    .then_some((last_active, id))
            })
            .collect();
        // `keep` takes one of the `max` places.
        let Some(excess) = (others.len() + 1).checked_sub(max).filter(|n| *n > 0) else {
            return Ok(0);
        };
        others.sort_unstable();
        let ids: Vec<i64> = others.iter().take(excess).map(|(_, id)| *id).collect();
        let ended = self
            .invalidate_sessions(
                sea_orm::Condition::all().add(session::Column::Id.is_in(ids)),
                &origin
                    .event(crate::events::EventType::SessionRevoked)
                    .reason("session_limit"),
                Vec::new(),
            )
            .await?;
        tracing::info!(
            user_id,
            ended,
            "session cap reached: least recently used sessions ended"
        );
        Ok(ended)
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Adds to a query that already has `user` the user's columns and one row per (role, channel)
/// grant: `user` → `user_role` → `role` → `role_channel` → `channel`, left joins, so a user with
/// no grant (or no user at all) still gives one row, with NULLs. Read by [`user_from_rows`].
pub(super) fn join_grants(q: &mut SelectStatement) {
    use sea_orm::ExprTrait as _;
    q.expr_as(Expr::col((user::Entity, user::Column::Id)), "u_id")
        .expr_as(
            Expr::col((user::Entity, user::Column::Identifier)),
            "u_identifier",
        )
        .expr_as(
            Expr::col((user::Entity, user::Column::Verified)),
            "u_verified",
        )
        .expr_as(
            Expr::col((role::Entity, role::Column::Permissions)),
            "r_permissions",
        )
        .expr_as(Expr::col((channel::Entity, channel::Column::Id)), "c_id")
        .expr_as(
            Expr::col((channel::Entity, channel::Column::Code)),
            "c_code",
        )
        .expr_as(
            Expr::col((channel::Entity, channel::Column::Token)),
            "c_token",
        )
        .left_join(
            user_role::Entity,
            Expr::col((user_role::Entity, user_role::Column::UserId))
                .equals((user::Entity, user::Column::Id)),
        )
        .left_join(
            role::Entity,
            Expr::col((role::Entity, role::Column::Id))
                .equals((user_role::Entity, user_role::Column::RoleId)),
        )
        .left_join(
            role_channel::Entity,
            Expr::col((role_channel::Entity, role_channel::Column::RoleId))
                .equals((role::Entity, role::Column::Id)),
        )
        .left_join(
            channel::Entity,
            Expr::col((channel::Entity, channel::Column::Id))
                .equals((role_channel::Entity, role_channel::Column::ChannelId)),
        );
}

/// The user in the rows of a [`join_grants`] query, with the permissions of all their roles
/// in a channel joined, channels ordered by id; `None` when the rows carry no user.
fn user_from_rows(rows: &[QueryResult]) -> AppResult<Option<CachedUser>> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let Some(id) = first.try_get::<Option<i64>>("", "u_id")? else {
        return Ok(None);
    };
    let grants = rows
        .iter()
        .map(|row| {
            Ok(GrantCells {
                channel_id: row.try_get("", "c_id")?,
                permissions: row.try_get("", "r_permissions")?,
                code: row.try_get("", "c_code")?,
                token: row.try_get("", "c_token")?,
            })
        })
        .collect::<AppResult<Vec<_>>>()?;
    Ok(Some(user_from_grants(
        id,
        first.try_get("", "u_identifier")?,
        first.try_get("", "u_verified")?,
        grants,
    )))
}

/// One row's grant columns of a [`join_grants`] query: a role's permissions in a channel, or
/// all `None` for a row without a grant.
pub(super) struct GrantCells {
    pub channel_id: Option<i64>,
    pub permissions: Option<String>,
    pub code: Option<String>,
    pub token: Option<String>,
}

/// A cached user from their columns and the grant columns of every row, the permissions of
/// all their roles in a channel joined, channels ordered by id.
pub(super) fn user_from_grants(
    id: i64,
    identifier: String,
    verified: bool,
    rows: Vec<GrantCells>,
) -> CachedUser {
    let mut grants: BTreeMap<i64, ChannelGrant> = BTreeMap::new();
    for row in rows {
        let (Some(channel_id), Some(permissions), Some(code), Some(token)) =
            (row.channel_id, row.permissions, row.code, row.token)
        else {
            continue;
        };
        let permissions = PermissionSet::from_stored(&permissions);
        match grants.entry(channel_id) {
            Entry::Occupied(mut e) => {
                let grant = e.get_mut();
                grant.permissions = grant.permissions.union(permissions);
            }
            Entry::Vacant(e) => {
                e.insert(ChannelGrant {
                    channel_id,
                    code,
                    token,
                    permissions,
                });
            }
        }
    }
    CachedUser::new(id, identifier, verified, grants.into_values().collect())
}

#[cfg(test)]
mod lifetime_properties {
    use super::*;
    use proptest::prelude::*;

    fn lifetimes(idle_ms: i64) -> Lifetimes {
        Lifetimes {
            idle_ms,
            absolute_ms: idle_ms,
            write_threshold_ms: 0,
            write_interval_ms: 1,
            token_ttl_ms: None,
            cache_ttl_ms: 1,
            grace_ms: 0,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// `expiresAt = min(lastActiveAt + idle, absolute)`, saturating instead of overflowing,
        /// and never beyond the absolute expiry, whatever the stored values.
        #[test]
        fn expiry_is_the_earlier_of_idle_and_absolute(
            idle in 1i64..=i64::MAX,
            last in any::<i64>(),
            absolute in any::<i64>(),
        ) {
            let at = lifetimes(idle).expires_at(last, absolute);
            prop_assert!(at <= absolute);
            prop_assert!(at <= last.saturating_add(idle));
            prop_assert!(at == absolute || at == last.saturating_add(idle));
            prop_assert_eq!(at, last.saturating_add(idle).min(absolute));
        }

        /// Sliding never moves the expiry backwards, nor past the absolute expiry.
        #[test]
        fn activity_only_moves_expiry_forward(
            idle in 1i64..=(400 * 86_400_000),
            last in 0i64..=(1i64 << 50),
            later in 0i64..=(1i64 << 40),
            absolute in 0i64..=(1i64 << 51),
        ) {
            let l = lifetimes(idle);
            let before = l.expires_at(last, absolute);
            let after = l.expires_at(last + later, absolute);
            prop_assert!(before <= after && after <= absolute);
        }

        /// The write interval is capped at a quarter of the idle timeout (at least 1 ms), the
        /// write threshold leaves room for the flush delay, and the rest come from the config.
        #[test]
        fn the_write_interval_is_at_most_a_quarter_of_the_idle_timeout(
            idle in prop_oneof![1u64..1_000, 1_000u64..86_400_000, 86_400_000u64..=(10 * 365 * 86_400_000)],
            extra in 0u64..=(10 * 365 * 86_400_000),
            interval in prop_oneof![1u64..1_000, 1_000u64..=(2 * 86_400_000)],
        ) {
            let mut config = Config::from_env().expect("the default configuration");
            config.session_idle_timeout = Duration::from_millis(idle);
            config.session_absolute_timeout = Duration::from_millis(idle + extra);
            config.session_activity_write_interval = Duration::from_millis(interval);
            let l = Lifetimes::new(&config);
            let idle = idle as i64;
            prop_assert_eq!(l.idle_ms, idle);
            prop_assert_eq!(l.absolute_ms, idle + extra as i64);
            prop_assert!(l.write_interval_ms >= 1);
            prop_assert!(l.write_interval_ms <= (idle / 4).max(1));
            prop_assert!(l.write_interval_ms <= interval as i64);
            prop_assert!(l.write_threshold_ms >= 0 && l.write_threshold_ms <= l.write_interval_ms);
            let flush = l.flush_every().as_millis() as i64;
            prop_assert!((10..=1000).contains(&flush));
            if l.write_interval_ms >= 40 {
                prop_assert!(l.write_threshold_ms + flush <= l.write_interval_ms);
            }
        }
    }
}
