//! sea-orm entities of the session server, one module per table.
//!
//! Every timestamp column holds UTC milliseconds since the Unix epoch (`BIGINT`): the same
//! exact, sortable representation on SQLite, PostgreSQL and MySQL/MariaDB.

pub mod channel;
pub mod jwt_key;
pub mod order;
pub mod role;
pub mod role_channel;
pub mod session;
pub mod session_event;
pub mod session_refresh_token;
pub mod user;
pub mod user_role;
pub mod webhook_outbox;
