//! The session read behind a cache miss: the unrevoked session row of a token digest, with its
//! user and the user's grants, in one prepared statement.
//!
//! It is the statement the server runs most (on every request while the cache is off or
//! cold), and sea-orm's generic path cost more than the statement itself: its query future
//! holds every backend's driver future and is moved around whole (about 50 KB copied per
//! call), and it reads each column by name. So this one statement runs straight on the sqlx
//! pool that sea-orm holds, with the same connections, the same statement cache and the same
//! statement counter, and is read by column position.
//!
//! Reads that wait at the same time go out together (see [`crate::coalesce`]): one statement
//! answers up to [`MAX_BATCH`] distinct digests. Under load the database then parses, plans
//! and answers one statement where it did dozens, which is most of its work per read. A lone
//! read runs at once, as a statement of its own. On PostgreSQL the digests of a batch are one
//! array parameter, each looked up in the unique index ([`POSTGRES_BATCH_ROWS`]); elsewhere
//! they are `token_hash IN (…)` lists in a few sizes (1, 2, 4, … 64 digests, a short list
//! padded with its first digest), so each size is one prepared statement per connection.

use super::session::{user_from_grants, GrantCells};
use crate::coalesce::{BatchCall, Coalescer, Limits};
use crate::domain::CachedUser;
use crate::metrics::Metrics;
use entity::{session, user};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::sqlx::{self, AssertSqlSafe, Row};
use sea_orm::{DatabaseConnection, DbBackend, DbErr, RuntimeErr};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Most digests in one statement (a power of two: the statement sizes double up to it).
const MAX_BATCH: usize = 64;
/// Most reads waiting for a statement; beyond this a read fails at once as if no connection
/// could be had (the database is overloaded).
const QUEUE: usize = 4096;

/// The session's columns in the order [`SessionRead`] selects them, which is the order of
/// [`session::Model`]'s fields that [`decode_all`] fills: position `i` of a row is
/// `SESSION_COLUMNS[i]`, and the grant columns follow.
const SESSION_COLUMNS: [session::Column; 21] = [
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
    session::Column::Revision,
];

/// What the read finds: the session row and its user (`None` for an anonymous session, and for
/// a session whose user has been deleted: its `user_id` is then still set).
pub(super) type Found = Option<(session::Model, Option<CachedUser>)>;

/// The statements, built once per server for its backend: `sql[i]` reads `2^i` token digests,
/// its only parameters.
struct Statements {
    sql: Vec<Arc<str>>,
    backend: DbBackend,
    db: DatabaseConnection,
    metrics: Arc<Metrics>,
    /// Longest a read waits for its statement to go out, and longest the statement may run.
    timeout: Duration,
}

/// The session reads of a server (see the module docs); clones share them.
#[derive(Clone)]
pub(super) struct SessionRead {
    calls: Coalescer<Statements>,
}

/// The statement reading `n` token digests.
fn statement(backend: DbBackend, n: usize) -> Arc<str> {
    use sea_orm::ExprTrait as _;
    let mut q = Query::select();
    q.columns(SESSION_COLUMNS.map(|c| (session::Entity, c)))
        .from(session::Entity)
        .left_join(
            user::Entity,
            Expr::col((user::Entity, user::Column::Id))
                .equals((session::Entity, session::Column::UserId)),
        );
    // The grant columns follow the session's, in the order `decode_all` reads them.
    super::session::join_grants(&mut q);
    if n > 1 && backend == DbBackend::Postgres {
        if let Some(sql) = postgres_batch(&backend.build(&q).sql) {
            return sql;
        }
    }
    let digest = Expr::col((session::Entity, session::Column::TokenHash));
    if n == 1 {
        q.and_where(digest.eq(String::new()));
    } else if backend == DbBackend::Postgres {
        // Only if the statement above could not be written (the unit tests check it can).
        let digests = Query::select()
            .expr(Expr::cust("unnest(CAST($1 AS text[]))"))
            .to_owned();
        q.and_where(digest.in_subquery(digests));
    } else {
        q.and_where(digest.is_in(vec![String::new(); n]));
    }
    // Not `= false`: the digests stay the statement's only parameters.
    q.and_where(Expr::col((session::Entity, session::Column::Invalidated)).not());
    backend.build(&q).sql.into()
}

/// The session rows PostgreSQL reads for a batch: one index lookup per digest of the array
/// `$1`, named `session` so that the rest of the statement reads them as the table.
///
/// Not `token_hash IN ($1, …, $n)`: a generic plan may check such a list against every live
/// session (on a table without statistics it scanned them all, 64 comparisons each: 7 ms for
/// 64 digests of 2,000 sessions). `IN (SELECT unnest($1))` still let the planner scan the whole
/// table into a hash. `OFFSET 0` keeps the subquery from being merged into the join, so each
/// digest is one probe of the unique index whatever the statistics say.
const POSTGRES_BATCH_ROWS: &str = r#"unnest(CAST($1 AS text[])) AS "t" CROSS JOIN LATERAL (SELECT * FROM "session" WHERE "session"."token_hash" = "t"."t" AND NOT "session"."invalidated" OFFSET 0) AS "session""#;

/// `select`, a statement over `FROM "session"` with no `WHERE`, reading the sessions of the
/// digest array `$1` instead (see [`POSTGRES_BATCH_ROWS`]); `None` if `select` is not so.
fn postgres_batch(select: &str) -> Option<Arc<str>> {
    const FROM: &str = r#" FROM "session" "#;
    let (columns, joins) = select.split_once(FROM)?;
    (!joins.contains(" WHERE "))
        .then(|| format!("{columns} FROM {POSTGRES_BATCH_ROWS} {joins}").into())
}

impl SessionRead {
    /// Reads on `db`'s pool, at most `max_in_flight` statements at once, each counted in
    /// `metrics` like every statement; a read waits at most `timeout` for its statement to go
    /// out, and the statement may run at most `timeout` (then `SERVICE_UNAVAILABLE`).
    pub fn new(
        db: DatabaseConnection,
        metrics: Arc<Metrics>,
        max_in_flight: usize,
        timeout: Duration,
    ) -> SessionRead {
        let backend = db.get_database_backend();
        let sizes = MAX_BATCH.ilog2() as usize + 1;
        let statements = Statements {
            sql: (0..sizes).map(|i| statement(backend, 1 << i)).collect(),
            backend,
            db,
            metrics,
            timeout,
        };
        let limits = Limits {
            max_in_flight,
            max_batch: MAX_BATCH,
            queue: QUEUE,
            max_wait: timeout,
        };
        SessionRead {
            calls: Coalescer::new(statements, limits),
        }
    }

    /// The unrevoked session of the token digest `hex`, with its user.
    pub async fn run(&self, hex: String) -> Result<Found, DbErr> {
        self.calls.ask(hex).await
    }
}

impl BatchCall for Statements {
    type Key = String;
    type Answer = Result<Found, DbErr>;

    async fn call(&self, asked: Vec<String>, _waited: Duration) -> Vec<Self::Answer> {
        // Each digest once (callers with the same token share its answer): a batch of one
        // token asked many times is then one lookup, not one per caller, each over all the
        // others' rows.
        let mut digests: Vec<&str> = Vec::with_capacity(asked.len());
        let mut position: HashMap<&str, usize> = HashMap::with_capacity(asked.len());
        let slots: Vec<usize> = asked
            .iter()
            .map(|d| {
                *position.entry(d).or_insert_with(|| {
                    digests.push(d);
                    digests.len() - 1
                })
            })
            .collect();
        let mut found = match tokio::time::timeout(self.timeout, self.read(&digests)).await {
            Ok(found) => found,
            Err(_) => {
                let late = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "a session read took longer than DATABASE_TIMEOUT ({:?})",
                        self.timeout
                    ),
                );
                vec![Err(Arc::new(sqlx::Error::Io(late))); digests.len()]
            }
        };
        // The last caller of a digest takes its answer; only the others get copies.
        let mut callers = vec![0usize; digests.len()];
        for &i in &slots {
            callers[i] += 1;
        }
        slots
            .into_iter()
            .map(|i| {
                callers[i] -= 1;
                let answer = if callers[i] == 0 {
                    std::mem::replace(&mut found[i], Ok(None))
                } else {
                    found[i].clone()
                };
                answer.map_err(|e| query_err(&e))
            })
            .collect()
    }

    fn not_sent(why: &'static str) -> Self::Answer {
        tracing::warn!(why, "a session read was not sent to the database");
        Err(DbErr::ConnectionAcquire(
            sea_orm::error::ConnAcquireErr::Timeout,
        ))
    }
}

/// A digest's answer, or the statement's failure (shared by the batch's callers).
type Read = Result<Found, Arc<sqlx::Error>>;

impl Statements {
    /// One statement reading `digests` (distinct, at most [`MAX_BATCH`]); an answer for each.
    async fn read(&self, digests: &[&str]) -> Vec<Read> {
        let n = digests.len();
        let size = n.next_power_of_two().min(MAX_BATCH);
        let Some(sql) = self.sql.get(size.ilog2() as usize).filter(|_| n <= size) else {
            let e = Arc::new(sqlx::Error::Protocol(format!(
                "{n} session reads in one statement"
            )));
            return vec![Err(e); n];
        };
        self.metrics.db_statement();
        let sql = AssertSqlSafe(sql.clone());
        // Each backend's pool has its own row type; PostgreSQL takes a batch as one array.
        macro_rules! run_on {
            ($q:expr, $pool:expr) => {
                match $q.fetch_all($pool).await {
                    Ok(rows) => decode_all(&rows, digests),
                    Err(e) => vec![Err(Arc::new(e)); n],
                }
            };
        }
        macro_rules! read_on {
            (array $pool:expr) => {
                if size > 1 {
                    run_on!(sqlx::query(sql).bind(digests), $pool)
                } else {
                    read_on!(list $pool)
                }
            };
            (list $pool:expr) => {{
                let mut q = sqlx::query(sql);
                for i in 0..size {
                    q = q.bind(digests[if i < n { i } else { 0 }]);
                }
                run_on!(q, $pool)
            }};
        }
        match self.backend {
            DbBackend::Postgres => read_on!(array self.db.get_postgres_connection_pool()),
            DbBackend::MySql => read_on!(list self.db.get_mysql_connection_pool()),
            DbBackend::Sqlite => read_on!(list self.db.get_sqlite_connection_pool()),
            other => {
                let e = Arc::new(sqlx::Error::Protocol(format!(
                    "no session read for {other:?}"
                )));
                vec![Err(e); n]
            }
        }
    }
}

/// Each digest's answer from the rows of one statement, grouped by the session's digest
/// (column 2): rows of different sessions may come interleaved. Each group is read by column
/// position (see [`SESSION_COLUMNS`]).
fn decode_all<R>(rows: &[R], digests: &[&str]) -> Vec<Read>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut by_digest: HashMap<String, Vec<&R>> = HashMap::with_capacity(digests.len());
    for row in rows {
        match row.try_get::<String, _>(2) {
            Ok(digest) => by_digest.entry(digest).or_default().push(row),
            Err(e) => return vec![Err(Arc::new(e)); digests.len()],
        }
    }
    // The session and user of one group of rows.
    let decode = |rows: &[&R]| -> Result<Found, sqlx::Error> {
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
            revision: first.try_get(20)?,
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
    };
    digests
        .iter()
        .map(|d| match by_digest.get(*d) {
            None => Ok(None),
            Some(rows) => decode(rows).map_err(Arc::new),
        })
        .collect()
}

/// A driver error as sea-orm reports a failed query (so that `is_unavailable` and the error
/// mapping treat it like any other statement's).
fn query_err(e: &Arc<sqlx::Error>) -> DbErr {
    match e.as_ref() {
        sqlx::Error::PoolTimedOut => {
            DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout)
        }
        sqlx::Error::PoolClosed => {
            DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::ConnectionClosed)
        }
        _ => DbErr::Query(RuntimeErr::SqlxError(e.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token digests are the statements' only parameters, on every backend (as many as the
    /// statement reads, or one array on PostgreSQL), and the columns come in the order `decode_all` reads them.
    #[test]
    fn the_token_digests_are_the_only_parameters() {
        for backend in [DbBackend::Postgres, DbBackend::MySql, DbBackend::Sqlite] {
            for n in [1, 2, 4, MAX_BATCH] {
                let sql = statement(backend, n);
                let (placeholders, expected) = match backend {
                    DbBackend::Postgres => (sql.matches("$").count(), 1),
                    _ => (sql.matches('?').count(), n),
                };
                assert_eq!(placeholders, expected, "{backend:?}: {sql}");
                if backend == DbBackend::Postgres && n > 1 {
                    assert!(sql.contains(POSTGRES_BATCH_ROWS), "{sql}");
                }
                let select = &sql[..sql.find(" FROM ").expect("a FROM")];
                assert!(!select.contains('('), "{select}");
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
