//! Webhooks: the outbox rows [`super::EventLog::record`] writes with each event (in the change's
//! transaction), and the worker that POSTs them, signed the Standard Webhooks way, at least once.
//! Every instance runs a worker; a row is claimed by one of them at a time (`FOR UPDATE SKIP
//! LOCKED` on PostgreSQL and MariaDB, one writer on SQLite), so each delivery is made once
//! unless a receiver's answer is lost.

use super::Event;
use crate::clock::{ms, now_ms, rfc3339};
use crate::config::{redact_url, WebhookSettings};
use crate::error::{AppResult, DisplayChain};
use crate::events::EventType;
use crate::metrics::Metrics;
use entity::{channel, session_event, webhook_outbox};
use futures_util::StreamExt;
use sea_orm::sea_query::{Expr, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, EntityTrait, IsolationLevel,
    QueryFilter, QueryOrder, QuerySelect, Set, Statement, TransactionTrait,
};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Longest a receiver may take to answer one POST.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed row belongs to the instance delivering it. Longer than [`HTTP_TIMEOUT`],
/// so a row is taken again only when its instance died (or lost the database) mid-delivery.
pub const LEASE: Duration = Duration::from_secs(30);
/// Rows claimed at once.
const BATCH: u64 = 64;
/// POSTs in flight at once per instance.
const CONCURRENCY: usize = 8;
/// How often an idle worker looks for due rows (a commit on this instance wakes it sooner).
const POLL: Duration = Duration::from_secs(1);
/// How often the pending-count and oldest-age gauges are refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
/// Retry delays double from this, with jitter, up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(600);
/// Outbox rows inserted per statement (well under every backend's parameter limit).
const INSERT_CHUNK: usize = 1000;

/// The configured webhooks of this process: where which events go, the signer, the HTTP
/// client, and the bell that wakes the worker after a commit.
pub struct Webhooks {
    settings: WebhookSettings,
    signer: standardwebhooks::Webhook,
    client: reqwest::Client,
    wake: Notify,
}

/// Why the webhooks could not be set up at start-up.
#[derive(thiserror::Error, Debug)]
pub enum WebhookSetupError {
    #[error("the signing key is not usable: {0}")]
    Key(#[source] standardwebhooks::WebhookError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl Webhooks {
    pub fn new(settings: WebhookSettings) -> Result<Webhooks, WebhookSetupError> {
        let signer = standardwebhooks::Webhook::from_bytes(settings.key.clone())
            .map_err(WebhookSetupError::Key)?;
        let client = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_TIMEOUT / 2)
            // A redirect could send the signed event somewhere else: a 3xx is a failed attempt.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("session-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(WebhookSetupError::Client)?;
        Ok(Webhooks {
            settings,
            signer,
            client,
            wake: Notify::new(),
        })
    }

    /// Whether events of `kind` are sent (`WEBHOOK_EVENTS`).
    pub fn wants(&self, kind: EventType) -> bool {
        self.settings.events.contains(&kind)
    }

    /// Queues `events` (those `WEBHOOK_EVENTS` selects) for every URL, with `db`: the change's
    /// own transaction, so the rows exist exactly when the events do.
    pub(super) async fn enqueue<C: ConnectionTrait>(
        &self,
        db: &C,
        at: i64,
        events: &[Event],
    ) -> AppResult<()> {
        let rows: Vec<webhook_outbox::ActiveModel> = events
            .iter()
            .filter(|e| self.wants(e.kind))
            .flat_map(|e| {
                self.settings
                    .urls
                    .iter()
                    .map(move |url| webhook_outbox::ActiveModel {
                        event_id: Set(e.id),
                        url: Set(url.clone()),
                        created_at: Set(at),
                        next_attempt_at: Set(at),
                        attempts: Set(0),
                        claim: Set(None),
                        last_error: Set(None),
                        ..Default::default()
                    })
            })
            .collect();
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<_> = rows.by_ref().take(INSERT_CHUNK).collect();
            webhook_outbox::Entity::insert_many(chunk)
                .exec_without_returning(db)
                .await?;
        }
        Ok(())
    }

    /// Wakes this instance's worker once committed `events` include one to send.
    pub(super) fn committed(&self, events: &[Event]) {
        if events.iter().any(|e| self.wants(e.kind)) {
            self.wake.notify_one();
        }
    }
}

/// The body POSTed for an event: the GraphQL `SessionEvent` fields, named as there.
pub fn payload(event: &Event, channel_code: Option<&str>) -> String {
    let id = |n: Option<i64>| n.map(|n| n.to_string());
    serde_json::json!({
        "id": event.id.to_string(),
        "type": event.kind.as_str(),
        "at": rfc3339(event.at),
        "sessionId": id(event.session_id),
        "userId": id(event.user_id),
        "actorUserId": id(event.actor_user_id),
        "identifier": event.identifier,
        "ipAddress": event.ip_address,
        "userAgent": event.user_agent,
        "channelCode": channel_code,
        "reason": event.reason,
    })
    .to_string()
}

/// The `webhook-id` of an event: the same for every attempt and URL, so receivers can dedupe.
pub fn message_id(event_id: i64) -> String {
    format!("evt_{event_id}")
}

/// The wait before the next attempt after `attempts` failed ones: doubling from
/// [`BACKOFF_BASE`], capped at [`BACKOFF_CAP`], the second half random so that rows that failed
/// together (a receiver that was down) do not all come back at once.
fn backoff(attempts: i32) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 20) as u32;
    let full = BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_CAP);
    let half = full / 2;
    let jitter = rand::Rng::random_range(&mut rand::rng(), 0..=ms(half).max(0) as u64);
    half + Duration::from_millis(jitter)
}

/// Why an attempt did not deliver.
enum Failure {
    /// Worth trying again (a refusal, a timeout, a connection error).
    Retry(String),
    /// Never deliverable (the event is gone, the URL is no longer configured).
    Drop(String),
}

/// Starts this instance's delivery worker. It runs until `alive` (the application) is gone;
/// rows it had claimed then stay in the table and are taken again when their lease ends.
pub fn spawn_worker<T: Send + Sync + 'static>(
    alive: Weak<T>,
    db: DatabaseConnection,
    metrics: Arc<Metrics>,
    webhooks: Arc<Webhooks>,
) {
    tokio::spawn(async move {
        let worker = Worker {
            db,
            metrics,
            webhooks,
        };
        let mut counted: Option<Instant> = None;
        while alive.strong_count() > 0 {
            let full = match worker.run_once().await {
                Ok(n) => n as u64 == BATCH,
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "webhook delivery round failed");
                    false
                }
            };
            if counted.is_none_or(|t| t.elapsed() >= BACKLOG_EVERY) {
                counted = Some(Instant::now());
                if let Err(e) = worker.count_backlog().await {
                    tracing::warn!(error = %e.chain(), "could not count the webhook outbox");
                }
            }
            if !full {
                tokio::select! {
                    _ = worker.webhooks.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
    });
}

struct Worker {
    db: DatabaseConnection,
    metrics: Arc<Metrics>,
    webhooks: Arc<Webhooks>,
}

impl Worker {
    /// Claims the due rows, POSTs them, and finishes each; returns how many were claimed.
    async fn run_once(&self) -> AppResult<usize> {
        let now = now_ms();
        let claim = crate::token::random_string(16);
        let rows = self.claim(now, &claim).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let bodies = self.bodies(&rows).await?;
        let claimed = rows.len();
        futures_util::stream::iter(rows)
            .for_each_concurrent(CONCURRENCY, |row| {
                let body = bodies.get(&row.event_id);
                let claim = claim.as_str();
                async move {
                    let outcome = self.attempt(&row, body).await;
                    if let Err(e) = self.finish(&row, claim, outcome).await {
                        // The row keeps its lease and is tried again once it ends.
                        tracing::warn!(error = %e.chain(), event_id = row.event_id, "could not record a webhook attempt");
                    }
                }
            })
            .await;
        Ok(claimed)
    }

    /// Takes up to [`BATCH`] due rows for [`LEASE`]: no other instance sees them until it ends.
    async fn claim(&self, now: i64, claim: &str) -> AppResult<Vec<webhook_outbox::Model>> {
        use sea_orm::sea_query::ExprTrait;
        use webhook_outbox::Column as C;
        let lease_end = now.saturating_add(ms(LEASE));
        if self.db.get_database_backend() == DatabaseBackend::Sqlite {
            // One writer: a single UPDATE … RETURNING is atomic, and writing first avoids a
            // read lock that cannot be upgraded under concurrency.
            let sql = "UPDATE webhook_outbox SET next_attempt_at = ?, attempts = attempts + 1, \
                       claim = ? WHERE id IN (SELECT id FROM webhook_outbox \
                       WHERE next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?) \
                       RETURNING id, event_id, url, created_at, next_attempt_at, attempts, \
                       claim, last_error";
            let stmt = Statement::from_sql_and_values(
                DatabaseBackend::Sqlite,
                sql,
                [
                    lease_end.into(),
                    claim.into(),
                    now.into(),
                    (BATCH as i64).into(),
                ],
            );
            let mut rows = webhook_outbox::Entity::find()
                .from_raw_sql(stmt)
                .all(&self.db)
                .await?;
            rows.sort_by_key(|r| (r.created_at, r.id));
            return Ok(rows);
        }
        // PostgreSQL and MariaDB: rows another instance is claiming right now are skipped, not
        // waited for; the short transaction only sets the lease, the POSTs happen after it.
        // READ COMMITTED: on MariaDB the locking read then takes no gap locks, so it never holds
        // up the requests inserting new rows.
        let txn = self
            .db
            .begin_with_config(Some(IsolationLevel::ReadCommitted), None)
            .await?;
        let mut rows = webhook_outbox::Entity::find()
            .filter(C::NextAttemptAt.lte(now))
            .order_by_asc(C::NextAttemptAt)
            .order_by_asc(C::Id)
            .limit(BATCH)
            .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
            .all(&txn)
            .await?;
        if !rows.is_empty() {
            webhook_outbox::Entity::update_many()
                .col_expr(C::NextAttemptAt, Expr::value(lease_end))
                .col_expr(C::Attempts, Expr::col(C::Attempts).add(1))
                .col_expr(C::Claim, Expr::value(claim))
                .filter(C::Id.is_in(rows.iter().map(|r| r.id)))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        for r in &mut rows {
            r.attempts += 1;
            r.next_attempt_at = lease_end;
            r.claim = Some(claim.to_owned());
        }
        Ok(rows)
    }

    /// The body of each claimed row's event, by event id (missing: the event is gone).
    async fn bodies(&self, rows: &[webhook_outbox::Model]) -> AppResult<HashMap<i64, String>> {
        let mut ids: Vec<i64> = rows.iter().map(|r| r.event_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let events: Vec<Event> = session_event::Entity::find()
            .filter(session_event::Column::Id.is_in(ids))
            .all(&self.db)
            .await?
            .into_iter()
            .filter_map(Event::from_model)
            .collect();
        let mut channel_ids: Vec<i64> = events.iter().filter_map(|e| e.channel_id).collect();
        channel_ids.sort_unstable();
        channel_ids.dedup();
        let codes: HashMap<i64, String> = if channel_ids.is_empty() {
            HashMap::new()
        } else {
            channel::Entity::find()
                .filter(channel::Column::Id.is_in(channel_ids))
                .all(&self.db)
                .await?
                .into_iter()
                .map(|c| (c.id, c.code))
                .collect()
        };
        Ok(events
            .iter()
            .map(|e| {
                let code = e.channel_id.and_then(|c| codes.get(&c)).map(String::as_str);
                (e.id, payload(e, code))
            })
            .collect())
    }

    /// One signed POST of `body` to the row's URL.
    async fn attempt(
        &self,
        row: &webhook_outbox::Model,
        body: Option<&String>,
    ) -> Result<(), Failure> {
        let Some(body) = body else {
            return Err(Failure::Drop("the event no longer exists".into()));
        };
        if !self.webhooks.settings.urls.contains(&row.url) {
            return Err(Failure::Drop("the URL is no longer in WEBHOOK_URLS".into()));
        }
        let id = message_id(row.event_id);
        let timestamp = now_ms() / 1000;
        let signature = self
            .webhooks
            .signer
            .sign(&id, timestamp, body.as_bytes())
            .map_err(|e| Failure::Drop(format!("cannot sign: {e}")))?;
        let sent = self
            .webhooks
            .client
            .post(&row.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(standardwebhooks::HEADER_WEBHOOK_ID, id)
            .header(
                standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
                timestamp.to_string(),
            )
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(Failure::Retry(format!("HTTP {}", r.status().as_u16()))),
            // Without the URL: it may hold credentials.
            Err(e) => Err(Failure::Retry(DisplayChain(&e.without_url()).to_string())),
        }
    }

    /// Deletes a delivered or hopeless row, or schedules the next attempt; only while this
    /// claim still holds the row.
    async fn finish(
        &self,
        row: &webhook_outbox::Model,
        claim: &str,
        outcome: Result<(), Failure>,
    ) -> AppResult<()> {
        use webhook_outbox::Column as C;
        let mine = || {
            webhook_outbox::Entity::delete_many()
                .filter(C::Id.eq(row.id))
                .filter(C::Claim.eq(claim))
        };
        let now = now_ms();
        let deadline = row
            .created_at
            .saturating_add(ms(self.webhooks.settings.max_age));
        let why = match outcome {
            Ok(()) => {
                mine().exec(&self.db).await?;
                self.metrics.webhook("delivered", 1);
                return Ok(());
            }
            Err(Failure::Drop(why)) => why,
            Err(Failure::Retry(why)) if now >= deadline => {
                format!("{why}; still failing after WEBHOOK_MAX_AGE")
            }
            Err(Failure::Retry(why)) => {
                let next = now.saturating_add(ms(backoff(row.attempts))).min(deadline);
                webhook_outbox::Entity::update_many()
                    .col_expr(C::NextAttemptAt, Expr::value(next))
                    .col_expr(
                        C::LastError,
                        Expr::value(crate::service::session::truncate(&why, 512)),
                    )
                    .col_expr(C::Claim, Expr::value(Option::<String>::None))
                    .filter(C::Id.eq(row.id))
                    .filter(C::Claim.eq(claim))
                    .exec(&self.db)
                    .await?;
                self.metrics.webhook("retried", 1);
                tracing::debug!(event_id = row.event_id, attempts = row.attempts, error = %why, "webhook attempt failed; will retry");
                return Ok(());
            }
        };
        let removed = mine().exec(&self.db).await?;
        if removed.rows_affected == 1 {
            self.metrics.webhook("failed", 1);
            tracing::warn!(
                event_id = row.event_id,
                url = %redact_url(&row.url),
                attempts = row.attempts,
                error = %why,
                "webhook delivery given up"
            );
        }
        Ok(())
    }

    /// Refreshes the pending-count and oldest-age gauges from the outbox.
    async fn count_backlog(&self) -> AppResult<()> {
        use webhook_outbox::Column as C;
        let counted = {
            use sea_orm::sea_query::ExprTrait;
            webhook_outbox::Entity::find()
                .select_only()
                .column_as(Expr::col(C::Id).count(), "n")
                .column_as(Expr::col(C::CreatedAt).min(), "oldest")
        };
        let counted: Option<(i64, Option<i64>)> = counted.into_tuple().one(&self.db).await?;
        let (n, oldest) = counted.unwrap_or((0, None));
        let age = oldest.map_or(0, |o| (now_ms() - o).max(0) / 1000);
        self.metrics.webhook_backlog(n, age);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempts in [0, 1] {
            let d = backoff(attempts);
            assert!(
                d >= Duration::from_millis(500) && d <= Duration::from_secs(1),
                "{d:?}"
            );
        }
        let d = backoff(4);
        assert!(
            d >= Duration::from_secs(4) && d <= Duration::from_secs(8),
            "{d:?}"
        );
        for attempts in [11, 30, i32::MAX] {
            let d = backoff(attempts);
            assert!(
                d >= BACKOFF_CAP / 2 && d <= BACKOFF_CAP,
                "{attempts}: {d:?}"
            );
        }
    }

    #[test]
    fn the_payload_uses_the_graphql_names() {
        let e = Event {
            id: 7,
            kind: EventType::LoginSucceeded,
            at: 1_764_000_000_123,
            session_id: Some(3),
            user_id: Some(2),
            actor_user_id: None,
            identifier: None,
            ip_address: Some("127.0.0.1".into()),
            user_agent: Some("ua".into()),
            channel_id: Some(1),
            reason: None,
        };
        let v: serde_json::Value = serde_json::from_str(&payload(&e, Some("default"))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "7", "type": "LOGIN_SUCCEEDED", "at": "2025-11-24T16:00:00.123Z",
                "sessionId": "3", "userId": "2", "actorUserId": null, "identifier": null,
                "ipAddress": "127.0.0.1", "userAgent": "ua", "channelCode": "default", "reason": null})
        );
        assert_eq!(message_id(7), "evt_7");
    }
}
