//! Client-visible errors. Every error a client can see carries one of the contract's
//! `extensions.code` values; internal causes keep their cause chain, are logged once (by
//! [`AppError::log`], called where an error becomes a response) and are never sent.

use sea_orm::{DbErr, SqlErr};
use std::error::Error as StdError;
use std::fmt;

/// The contract's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthenticated,
    Forbidden,
    BadUserInput,
    NotFound,
    RateLimited,
    /// A write named a version that is no longer current (`updateSessionData`).
    Conflict,
    ServiceUnavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::BadUserInput => "BAD_USER_INPUT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

/// Causes that are logged but never shown to a client.
#[derive(thiserror::Error, Debug)]
pub enum InternalError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    /// argon2's error (a leaf: it has no cause of its own, and no `std::error::Error` impl
    /// without the crate's `std` feature).
    #[error("password hashing: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("the password hashing queue is closed")]
    HasherClosed(#[source] tokio::sync::AcquireError),
    #[error("background task: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("signing a session JWT")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    #[error("encoding a new JWT signing key")]
    KeyEncoding(#[source] ed25519_dalek::pkcs8::Error),
    #[error("a stored JWT signing key is not base64")]
    KeyBase64(#[source] base64::DecodeError),
    /// A state the code rules out (a row that must exist is missing, data the schema always
    /// carries is absent): a bug, with no underlying error to keep.
    #[error("broken invariant: {0}")]
    Invariant(&'static str),
}

/// An error and its `source()` chain on one line: `outer: cause: root cause`. A cause whose
/// text the previous message already shows (thiserror's `"…: {0}"`) is not repeated.
pub struct DisplayChain<'a>(pub &'a (dyn StdError + 'a));

impl fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !shown.contains(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            next = cause.source();
        }
        Ok(())
    }
}

/// An error of the service layer.
///
/// It deliberately does not implement `Display`: that keeps async-graphql's blanket
/// `From<T: Display>` away from it, so `?` in a resolver always goes through the conversion
/// below, which attaches the code and keeps internals out of the message.
#[derive(Debug)]
pub enum AppError {
    /// A client-facing error: a stable code and a message safe to show.
    Client(ErrorCode, String),
    /// The database does not answer.
    Unavailable(DbErr),
    /// Anything else: logged, answered with `INTERNAL` and a generic message.
    Internal(InternalError),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn unauthenticated(msg: impl Into<String>) -> Self {
        AppError::Client(ErrorCode::Unauthenticated, msg.into())
    }
    pub fn forbidden(msg: impl Into<String>) -> Self {
        AppError::Client(ErrorCode::Forbidden, msg.into())
    }
    pub fn bad_input(msg: impl Into<String>) -> Self {
        AppError::Client(ErrorCode::BadUserInput, msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        AppError::Client(ErrorCode::NotFound, msg.into())
    }
    pub fn rate_limited(msg: impl Into<String>) -> Self {
        AppError::Client(ErrorCode::RateLimited, msg.into())
    }
    pub fn version_conflict(msg: impl Into<String>) -> AppError {
        AppError::Client(ErrorCode::Conflict, msg.into())
    }
    /// A broken invariant (see [`InternalError::Invariant`]).
    pub fn internal(what: &'static str) -> Self {
        AppError::Internal(InternalError::Invariant(what))
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            AppError::Client(code, _) => *code,
            AppError::Unavailable(_) => ErrorCode::ServiceUnavailable,
            AppError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The message a client sees. It never logs: the boundary that answers calls [`Self::log`].
    pub fn client_message(&self) -> String {
        match self {
            AppError::Client(_, msg) => msg.clone(),
            AppError::Unavailable(_) => "the database is unavailable; try again shortly".into(),
            AppError::Internal(_) => "internal error".into(),
        }
    }

    /// Logs what the client is not told: the cause chain of an internal error (at `error`) or
    /// of an unavailable database (at `warn`); client errors are the client's and not logged.
    /// Called once per error, where it becomes a response (the GraphQL conversion below, the
    /// HTTP layer's error responses).
    pub fn log(&self) {
        match self {
            AppError::Client(..) => {}
            AppError::Unavailable(cause) => {
                tracing::warn!(error = %DisplayChain(cause), "database unavailable")
            }
            AppError::Internal(cause) => {
                tracing::error!(error = %DisplayChain(cause), "internal error")
            }
        }
    }

    /// The whole error on one line, cause chain included, for code that handles an error
    /// itself (a background task, a best-effort step) and logs it in its own words.
    pub fn chain(&self) -> String {
        DisplayChain(&Described(self)).to_string()
    }

    /// Whether this is a database deadlock (see [`crate::service::retry_deadlocks`]).
    pub fn is_deadlock(&self) -> bool {
        matches!(self, AppError::Internal(InternalError::Db(e)) if is_deadlock(e))
    }

    /// Maps a unique-constraint violation to a `BAD_USER_INPUT` naming what already exists.
    pub fn conflict(err: DbErr, what: &str) -> AppError {
        match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => {
                AppError::bad_input(format!("{what} already exists"))
            }
            _ => AppError::from(err),
        }
    }
}

/// An [`AppError`] as a standard error, its cause as `source()`: for start-up, which has no
/// client to answer and reports the error itself. (`AppError` has no `Display`; see there.)
#[derive(Debug)]
pub struct ServiceError(pub AppError);

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Described(&self.0).fmt(f)
    }
}

impl StdError for ServiceError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        cause_of(&self.0)
    }
}

/// The one description of an [`AppError`] behind [`ServiceError`] and [`AppError::chain`].
#[derive(Debug)]
struct Described<'a>(&'a AppError);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            AppError::Client(code, msg) => write!(f, "{msg} ({})", code.as_str()),
            AppError::Unavailable(_) => f.write_str("the database is unavailable"),
            AppError::Internal(cause) => cause.fmt(f),
        }
    }
}

impl StdError for Described<'_> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        cause_of(self.0)
    }
}

/// The cause under [`Described`]'s text (an internal error's text is its own first line).
fn cause_of(err: &AppError) -> Option<&(dyn StdError + 'static)> {
    match err {
        AppError::Client(..) => None,
        AppError::Unavailable(cause) => Some(cause),
        AppError::Internal(cause) => cause.source(),
    }
}

/// True when an error means the database cannot be reached, rather than a bad statement.
pub fn is_unavailable(err: &DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    use sea_orm::RuntimeErr;
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => matches!(
            e.as_ref(),
            Sqlx::Io(_)
                | Sqlx::PoolTimedOut
                | Sqlx::PoolClosed
                | Sqlx::WorkerCrashed
                | Sqlx::Tls(_)
        ),
        _ => false,
    }
}

/// True when the database ended the statement's transaction to break a deadlock (or a
/// serialization conflict): running it again is safe and usually succeeds.
fn is_deadlock(err: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|code| code == "40001" || code == "40P01"),
        _ => false,
    }
}

impl From<DbErr> for AppError {
    fn from(err: DbErr) -> Self {
        if is_unavailable(&err) {
            return AppError::Unavailable(err);
        }
        // A row the write refers to, or the row it updates, was deleted by a concurrent
        // request (a `deleteUser` racing an `assignRole` or `updateUser`): the caller's
        // target no longer exists, which is not the server's fault.
        let gone = matches!(err, DbErr::RecordNotUpdated)
            || matches!(
                err.sql_err(),
                Some(sea_orm::SqlErr::ForeignKeyConstraintViolation(_))
            );
        if gone {
            return AppError::not_found("what this refers to no longer exists");
        }
        AppError::Internal(InternalError::Db(err))
    }
}

impl From<InternalError> for AppError {
    fn from(err: InternalError) -> Self {
        match err {
            InternalError::Db(db) => AppError::from(db),
            other => AppError::Internal(other),
        }
    }
}

impl From<tokio::task::JoinError> for AppError {
    fn from(err: tokio::task::JoinError) -> Self {
        AppError::Internal(InternalError::Join(err))
    }
}

/// The GraphQL boundary: a resolver's error becomes the response's error here, so this is
/// where its cause is logged.
impl From<AppError> for async_graphql::Error {
    fn from(err: AppError) -> Self {
        err.log();
        let code = err.code().as_str();
        let mut e = async_graphql::Error::new(err.client_message());
        e = e.extend_with(|_, ext| ext.set("code", code));
        e
    }
}

use async_graphql::ErrorExtensions as _;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A log destination that keeps what is written.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines logged while `f` runs.
    fn logged(f: impl FnOnce()) -> Vec<String> {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    /// An error whose root cause (tokio's "semaphore closed") is not in its own message.
    fn hasher_closed() -> InternalError {
        let permits = tokio::sync::Semaphore::new(0);
        permits.close();
        let closed = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(permits.acquire())
            .unwrap_err();
        InternalError::HasherClosed(closed)
    }

    #[test]
    fn an_internal_error_is_logged_once_at_the_boundary_with_its_root_cause() {
        let err = AppError::from(hasher_closed());
        assert!(logged(|| assert_eq!(err.client_message(), "internal error")).is_empty());
        let mut answer = None;
        let lines = logged(|| answer = Some(async_graphql::Error::from(err)));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("ERROR"), "{}", lines[0]);
        assert!(
            lines[0].contains("the password hashing queue is closed: semaphore closed"),
            "{}",
            lines[0]
        );
        // The client is told nothing of it.
        assert_eq!(answer.unwrap().message, "internal error");
    }

    #[test]
    fn client_errors_are_not_logged() {
        let err = AppError::bad_input("no such thing");
        assert!(logged(|| drop(async_graphql::Error::from(err))).is_empty());
    }

    #[test]
    fn a_start_up_error_shows_its_whole_chain_once() {
        let err = crate::startup::StartupError::Passwords(ServiceError(hasher_closed().into()));
        assert_eq!(
            DisplayChain(&err).to_string(),
            "cannot start password hashing: the password hashing queue is closed: semaphore closed"
        );
        // A cause already shown by the message above it is not repeated.
        let err = AppError::from(DbErr::Custom("disk full".into()));
        assert_eq!(err.chain(), "database: Custom Error: disk full");
    }
}
