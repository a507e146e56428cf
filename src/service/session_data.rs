//! Session data (the contract's "Session data"): the application's own JSON object per
//! session, merged key by key, versioned, and never lost to a concurrent update.
//!
//! Every update is a compare-and-swap on `data_version`: read the row, merge, write only if
//! the version is still the one read, else read again. Concurrent updates of different keys all
//! land; with `expectedVersion` only the writer that still holds the current version wins and
//! the others get `CONFLICT`. The data is cached with the session and written through, so
//! reads cost no query.

use super::retry_deadlocks;
use super::session::Sessions;
use crate::domain::{CachedSession, SessionData};
use crate::error::{AppError, AppResult};
use entity::session;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, TransactionTrait,
};
use std::sync::Arc;

/// Longest key, in characters.
pub const MAX_KEY_CHARS: usize = 64;

/// Deepest nesting of arrays and objects in a value (the cached entry embeds the data, and
/// its decoders stop at 128 levels).
pub const MAX_DEPTH: usize = 32;

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Compare-and-swap rounds before giving up (each round, one of the racing writers wins).
const MAX_ROUNDS: usize = 200;

/// One `updateSessionData`: keys to write, keys to remove, and the version the client saw.
pub struct DataChange {
    pub set: SessionData,
    pub unset: Vec<String>,
    pub expected_version: Option<i64>,
}

impl DataChange {
    /// Checks the keys (1 to 64 characters, none both set and unset).
    pub fn validate(&self) -> AppResult<()> {
        for key in self.set.keys().chain(self.unset.iter()) {
            let n = key.chars().count();
            if n == 0 || n > MAX_KEY_CHARS {
                return Err(AppError::bad_input(format!(
                    "session data keys are 1 to {MAX_KEY_CHARS} characters; '{}' is {n}",
                    crate::graphql::context::clip(key, 70)
                )));
            }
        }
        if let Some((key, _)) = self.set.iter().find(|(_, v)| depth(v) > MAX_DEPTH) {
            return Err(AppError::bad_input(format!(
                "the value of '{}' nests deeper than {MAX_DEPTH} levels",
                crate::graphql::context::clip(key, 70)
            )));
        }
        if let Some(key) = self
            .unset
            .iter()
            .find(|k| self.set.contains_key(k.as_str()))
        {
            return Err(AppError::bad_input(format!(
                "the key '{key}' is both set and unset"
            )));
        }
        Ok(())
    }

    fn apply(&self, mut data: SessionData) -> SessionData {
        for key in &self.unset {
            data.remove(key);
        }
        for (key, value) in &self.set {
            data.insert(key.clone(), value.clone());
        }
        data
    }
}

/// The stored column as data; `None` when empty or unreadable (it is only ever written here).
pub fn parse_stored(stored: Option<&str>) -> Option<Arc<SessionData>> {
    let data: SessionData = serde_json::from_str(stored?).ok()?;
    (!data.is_empty()).then(|| Arc::new(data))
}

/// Data as stored in the `data` column.
pub fn to_stored(data: &SessionData) -> String {
    serde_json::Value::Object(data.clone()).to_string()
}

/// Reads a session's data and deletes it (login moves an anonymous session's data to the new
/// session inside its transaction).
pub(crate) async fn take_data<C: ConnectionTrait>(
    db: &C,
    session_id: i64,
) -> AppResult<Option<Arc<SessionData>>> {
    let stored: Option<Option<String>> = session::Entity::find_by_id(session_id)
        .select_only()
        .column(session::Column::Data)
        .into_tuple()
        .one(db)
        .await?;
    let data = parse_stored(stored.flatten().as_deref());
    if data.is_some() {
        super::session::revise_sessions()
            .col_expr(session::Column::Data, Expr::value(Option::<String>::None))
            .filter(session::Column::Id.eq(session_id))
            .exec(db)
            .await?;
    }
    Ok(data)
}

/// What an update reads of the row.
type Current = (Option<String>, i64);

impl Sessions {
    /// Applies `change` to the session's data and returns the session as it now is.
    ///
    /// `BAD_USER_INPUT` (and nothing written) when a key is invalid or the result would exceed
    /// `SESSION_DATA_MAX_BYTES`; `CONFLICT` when `expected_version` is not the current version;
    /// `UNAUTHENTICATED` when the session ended meanwhile.
    pub async fn update_session_data(
        &self,
        s: &CachedSession,
        change: DataChange,
    ) -> AppResult<Arc<CachedSession>> {
        change.validate()?;
        let max = self.config.session_data_max_bytes;
        let hash = s.token_hash.to_hex();
        for _ in 0..MAX_ROUNDS {
            let current: Option<Current> = session::Entity::find_by_id(s.id)
                .select_only()
                .columns([session::Column::Data, session::Column::DataVersion])
                .filter(session::Column::Invalidated.eq(false))
                // Through the token still current (see the write below).
                .filter(session::Column::TokenHash.eq(hash.as_str()))
                .into_tuple()
                .one(&self.db)
                .await?;
            let Some((stored, version)) = current else {
                return Err(AppError::unauthenticated("the session has ended"));
            };
            if let Some(expected) = change.expected_version {
                if expected != version {
                    return Err(AppError::version_conflict(format!(
                        "the session data is at version {version}, not {expected}"
                    )));
                }
            }
            let merged = change.apply(
                parse_stored(stored.as_deref())
                    .map(Arc::unwrap_or_clone)
                    .unwrap_or_default(),
            );
            let text = (!merged.is_empty()).then(|| to_stored(&merged));
            let size = text.as_ref().map_or(2, String::len);
            if size > max {
                return Err(AppError::bad_input(format!(
                    "the session data would be {size} bytes as JSON; at most {max} are allowed"
                )));
            }
            let written = retry_deadlocks(|| async {
                let txn = self.db.begin().await?;
                let written = super::session::revise_sessions()
                    .col_expr(session::Column::Data, Expr::value(text.clone()))
                    .col_expr(session::Column::DataVersion, Expr::value(version + 1))
                    .filter(session::Column::Id.eq(s.id))
                    .filter(session::Column::DataVersion.eq(version))
                    .filter(session::Column::Invalidated.eq(false))
                    // A token rotated out by a refresh meanwhile is dead: its write would go
                    // to its own cache entry, and the new token's would miss it.
                    .filter(session::Column::TokenHash.eq(hash.as_str()))
                    .exec(&txn)
                    .await?
                    .rows_affected;
                if written == 0 {
                    return Ok(None);
                }
                // The active order and channel as the row has them now, not as first read.
                self.commit_through(txn, s).await.map(Some)
            })
            .await?;
            if let Some(updated) = written {
                return Ok(updated);
            }
            // Another update (or a revocation) landed between the read and the write.
        }
        Err(AppError::rate_limited(
            "too many concurrent updates of this session's data; try again",
        ))
    }
}
