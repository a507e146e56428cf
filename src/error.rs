//! Client-visible errors. Every error a client can see carries one of the contract's
//! `extensions.code` values; internal causes are logged once, here, and never sent.

use sea_orm::{DbErr, SqlErr};

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
    #[error("password hashing: {0}")]
    Hash(String),
    #[error("background task: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Other(String),
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
    pub fn internal(msg: impl Into<String>) -> Self {
        AppError::Internal(InternalError::Other(msg.into()))
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            AppError::Client(code, _) => *code,
            AppError::Unavailable(_) => ErrorCode::ServiceUnavailable,
            AppError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The message a client sees; logs the internal cause (once, at this boundary).
    pub fn client_message(&self) -> String {
        match self {
            AppError::Client(_, msg) => msg.clone(),
            AppError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                "the database is unavailable; try again shortly".into()
            }
            AppError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                "internal error".into()
            }
        }
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

/// True when an error means the database cannot be reached, rather than a bad statement.
fn is_unavailable(err: &DbErr) -> bool {
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
            AppError::Unavailable(err)
        } else {
            AppError::Internal(InternalError::Db(err))
        }
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

impl From<AppError> for async_graphql::Error {
    fn from(err: AppError) -> Self {
        let code = err.code().as_str();
        let mut e = async_graphql::Error::new(err.client_message());
        e = e.extend_with(|_, ext| ext.set("code", code));
        e
    }
}

use async_graphql::ErrorExtensions as _;
