//! The session read behind a cache miss: the unrevoked session row of a token digest, with its
//! user and the user's grants, in one prepared statement.
//!
//! It is the statement the server runs most (on every request while the cache is off or
//! cold), and sea-orm's generic path cost more than the statement itself: its query future
//! holds every backend's driver future and is moved around whole (about 50 KB copied per
//! call), and it reads each column by name. So this one statement runs straight on the sqlx
//! pool that sea-orm holds, with the same connections, the same statement cache and the same
//! statement counter, and is read by column position.

use super::session::{user_from_grants, GrantCells};
use crate::domain::CachedUser;
use crate::metrics::Metrics;
use entity::{session, user};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::sqlx::{self, AssertSqlSafe, Row};
use sea_orm::{DatabaseConnection, DbBackend, DbErr, RuntimeErr};
use std::sync::Arc;

/// The session's columns in the order [`SessionRead`] selects them, which is the order of
/// [`session::Model`]'s fields that [`decode`] fills: position `i` of a row is
/// `SESSION_COLUMNS[i]`, and the grant columns follow.
const SESSION_COLUMNS: [session::Column; 20] = [
    session::Column::Id,
    session::Column::Kind,
    session::Column::TokenHash,
    session::Column::TokenIssuedAt,
    session::Column::RefreshHash,
    session::Column::PreviousRefreshHash,
    session::Column::RefreshRotatedAt,
    session::Column::UserId,
    session::Column::AuthenticationStrategy,
    session::Column::ActiveOrderId,
    session::Column::ActiveChannelId,
    session::Column::Invalidated,
    session::Column::RememberMe,
    session::Column::CreatedAt,
    session::Column::LastActiveAt,
    session::Column::AbsoluteExpiresAt,
    session::Column::IpAddress,
    session::Column::UserAgent,
    session::Column::Data,
    session::Column::DataVersion,
];

/// The statement, built once per server for its backend. Its one parameter is the token
/// digest.
#[derive(Clone)]
pub(super) struct SessionRead {
    sql: Arc<str>,
    backend: DbBackend,
}

/// What the read finds: the session row and its user (`None` for an anonymous session, and for
/// a session whose user has been deleted: its `user_id` is then still set).
pub(super) type Found = Option<(session::Model, Option<CachedUser>)>;

impl SessionRead {
    pub fn new(backend: DbBackend) -> SessionRead {
        use sea_orm::ExprTrait as _;
        let mut q = Query::select();
        q.columns(SESSION_COLUMNS.map(|c| (session::Entity, c)))
            .from(session::Entity)
            .left_join(
                user::Entity,
                Expr::col((user::Entity, user::Column::Id))
                    .equals((session::Entity, session::Column::UserId)),
            );
        // The grant columns follow the session's, in the order `decode` reads them.
        super::session::join_grants(&mut q);
        q.and_where(Expr::col((session::Entity, session::Column::TokenHash)).eq(String::new()))
            // Not `= false`: the digest stays the statement's only parameter.
            .and_where(Expr::col((session::Entity, session::Column::Invalidated)).not());
        let statement = backend.build(&q);
        SessionRead {
            sql: statement.sql.into(),
            backend,
        }
    }

    /// Runs the read for the token digest `hex` on `db`'s pool, counted like every statement.
    pub async fn run(
        &self,
        db: &DatabaseConnection,
        metrics: &Metrics,
        hex: String,
    ) -> Result<Found, DbErr> {
        metrics.db_statement();
        let sql = AssertSqlSafe(self.sql.clone());
        // The same call on each backend's pool (each its own row type).
        macro_rules! read_on {
            ($pool:expr) => {
                decode(
                    &sqlx::query(sql)
                        .bind(hex)
                        .fetch_all($pool)
                        .await
                        .map_err(query_err)?,
                )
            };
        }
        let found = match self.backend {
            DbBackend::Postgres => read_on!(db.get_postgres_connection_pool()),
            DbBackend::MySql => read_on!(db.get_mysql_connection_pool()),
            DbBackend::Sqlite => read_on!(db.get_sqlite_connection_pool()),
            other => return Err(DbErr::Custom(format!("no session read for {other:?}"))),
        };
        found.map_err(query_err)
    }
}

/// A driver error as sea-orm reports a failed query (so that `is_unavailable` and the error
/// mapping treat it like any other statement's).
fn query_err(e: sqlx::Error) -> DbErr {
    match e {
        sqlx::Error::PoolTimedOut => {
            DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout)
        }
        sqlx::Error::PoolClosed => {
            DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::ConnectionClosed)
        }
        e => DbErr::Query(RuntimeErr::SqlxError(Arc::new(e))),
    }
}

/// The session and user of the rows of one read, by column position (see [`SESSION_COLUMNS`]).
fn decode<R>(rows: &[R]) -> Result<Found, sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let model = session::Model {
        id: first.try_get(0)?,
        kind: first.try_get(1)?,
        token_hash: first.try_get(2)?,
        token_issued_at: first.try_get(3)?,
        refresh_hash: first.try_get(4)?,
        previous_refresh_hash: first.try_get(5)?,
        refresh_rotated_at: first.try_get(6)?,
        user_id: first.try_get(7)?,
        authentication_strategy: first.try_get(8)?,
        active_order_id: first.try_get(9)?,
        active_channel_id: first.try_get(10)?,
        invalidated: first.try_get(11)?,
        remember_me: first.try_get(12)?,
        created_at: first.try_get(13)?,
        last_active_at: first.try_get(14)?,
        absolute_expires_at: first.try_get(15)?,
        ip_address: first.try_get(16)?,
        user_agent: first.try_get(17)?,
        data: first.try_get(18)?,
        data_version: first.try_get(19)?,
    };
    const U: usize = SESSION_COLUMNS.len();
    let user = match first.try_get::<Option<i64>, _>(U)? {
        None => None,
        Some(id) => {
            let mut grants = Vec::with_capacity(rows.len());
            for row in rows {
                grants.push(GrantCells {
                    permissions: row.try_get(U + 3)?,
                    channel_id: row.try_get(U + 4)?,
                    code: row.try_get(U + 5)?,
                    token: row.try_get(U + 6)?,
                });
            }
            Some(user_from_grants(
                id,
                first.try_get(U + 1)?,
                first.try_get(U + 2)?,
                grants,
            ))
        }
    };
    Ok(Some((model, user)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token digest is the statement's only parameter, on every backend, and the columns
    /// come in the order `decode` reads them.
    #[test]
    fn the_token_digest_is_the_only_parameter() {
        for backend in [DbBackend::Postgres, DbBackend::MySql, DbBackend::Sqlite] {
            let read = SessionRead::new(backend);
            let placeholders = match backend {
                DbBackend::Postgres => read.sql.matches("$").count(),
                _ => read.sql.matches('?').count(),
            };
            assert_eq!(placeholders, 1, "{backend:?}: {}", read.sql);
            let select = &read.sql[..read.sql.find(" FROM ").expect("a FROM")];
            let names: Vec<&str> = select
                .trim_start_matches("SELECT ")
                .split(", ")
                .map(|c| {
                    c.rsplit(['.', ' '])
                        .next()
                        .unwrap_or(c)
                        .trim_matches(['"', '`'])
                })
                .collect();
            let mut expected: Vec<String> = SESSION_COLUMNS
                .iter()
                .map(|c| sea_orm::IdenStatic::as_str(c).to_string())
                .collect();
            expected.extend(
                [
                    "u_id",
                    "u_identifier",
                    "u_verified",
                    "r_permissions",
                    "c_id",
                    "c_code",
                    "c_token",
                ]
                .map(String::from),
            );
            assert_eq!(names, expected, "{backend:?}");
        }
    }

    /// Every column of the session table is read (a new column must be added here).
    #[test]
    fn every_session_column_is_read() {
        use sea_orm::{IdenStatic, Iterable};
        let table: Vec<&str> = session::Column::iter().map(|c| c.as_str()).collect();
        let read: Vec<&str> = SESSION_COLUMNS.iter().map(|c| c.as_str()).collect();
        assert_eq!(table, read);
    }
}
