//! The activity writer: moves `last_active_at` forward in the database off the request path.
//!
//! Requests record activity at most once per `SESSION_ACTIVITY_WRITE_INTERVAL` per session;
//! records are merged in memory and written in batches (one `UPDATE … CASE` per batch).

use entity::session;
use sea_orm::sea_query::{CaseStatement, Expr};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const BATCH: usize = 500;

enum Msg {
    Touch(i64, i64),
    Flush(oneshot::Sender<()>),
}

pub struct ActivityWriter {
    tx: mpsc::UnboundedSender<Msg>,
    /// Activity recorded but not yet written, readable by refresh (which must see it).
    pending: Arc<Mutex<HashMap<i64, i64>>>,
    /// How often pending records are written.
    pub flush_every: Duration,
}

impl ActivityWriter {
    /// Starts the writer task. `flush_every` bounds how long a record waits in memory.
    pub fn start(db: DatabaseConnection, flush_every: Duration) -> ActivityWriter {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let pending: Arc<Mutex<HashMap<i64, i64>>> = Arc::default();
        let shared = pending.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(flush_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(Msg::Touch(id, at)) => {
                            let mut map = shared.lock().unwrap_or_else(PoisonError::into_inner);
                            let slot = map.entry(id).or_insert(at);
                            *slot = (*slot).max(at);
                        }
                        Some(Msg::Flush(done)) => {
                            write_pending(&db, &shared).await;
                            let _ = done.send(());
                        }
                        None => {
                            write_pending(&db, &shared).await;
                            return;
                        }
                    },
                    _ = tick.tick() => write_pending(&db, &shared).await,
                }
            }
        });
        ActivityWriter {
            tx,
            pending,
            flush_every,
        }
    }

    /// Records that session `id` was used at `at` (ms).
    pub fn touch(&self, id: i64, at: i64) {
        let _ = self.tx.send(Msg::Touch(id, at));
    }

    /// Activity of `id` recorded in this process but not yet written.
    pub fn pending(&self, id: i64) -> Option<i64> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .copied()
    }

    /// Writes everything recorded so far and waits until it is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write_pending(db: &DatabaseConnection, pending: &Mutex<HashMap<i64, i64>>) {
    let batch: Vec<(i64, i64)> = {
        let map = pending.lock().unwrap_or_else(PoisonError::into_inner);
        if map.is_empty() {
            return;
        }
        map.iter().map(|(k, v)| (*k, *v)).collect()
    };
    use sea_orm::ExprTrait as _;
    for chunk in batch.chunks(BATCH) {
        // Never move a session backwards: another instance may have written a later time.
        let mut case = CaseStatement::new();
        for (id, at) in chunk {
            case = case.case(
                Expr::col(session::Column::Id)
                    .eq(*id)
                    .and(Expr::col(session::Column::LastActiveAt).lt(*at)),
                Expr::val(*at),
            );
        }
        let case = case.finally(Expr::col(session::Column::LastActiveAt));
        let ids: Vec<i64> = chunk.iter().map(|(id, _)| *id).collect();
        // Revoked sessions are left alone; their records are dropped below all the same.
        let result = session::Entity::update_many()
            .col_expr(session::Column::LastActiveAt, case.into())
            .filter(session::Column::Id.is_in(ids))
            .filter(session::Column::Invalidated.eq(false))
            .exec(db)
            .await;
        match result {
            Ok(_) => {
                let mut map = pending.lock().unwrap_or_else(PoisonError::into_inner);
                for (id, at) in chunk {
                    // Keep records that moved on while we were writing.
                    if map.get(id) == Some(at) {
                        map.remove(id);
                    }
                }
            }
            Err(e) => {
                // Kept in `pending`: retried on the next tick.
                tracing::warn!(error = %e, sessions = chunk.len(), "could not write session activity; will retry");
                return;
            }
        }
    }
}
