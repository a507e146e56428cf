//! A session event still to be POSTed to one webhook URL. Inserted with the event, in the same
//! transaction; deleted once delivered or given up.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The `session_event` row to send.
    pub event_id: i64,
    pub url: String,
    /// When the event happened; the row is given up `WEBHOOK_MAX_AGE` after it.
    pub created_at: i64,
    /// When the row may next be taken: due now, after a failed attempt's backoff, or, while an
    /// instance delivers it, the end of that instance's lease.
    pub next_attempt_at: i64,
    /// Attempts started so far.
    pub attempts: i32,
    /// The random token of the instance's claim that holds the row (`None` when unclaimed);
    /// only the holder may finish the row.
    pub claim: Option<String>,
    /// Why the last attempt failed (the status or the transport error).
    pub last_error: Option<String>,
}

impl ActiveModelBehavior for ActiveModel {}
