//! # session-server
//!
//! A standalone GraphQL session server: anonymous and authenticated sessions, refresh tokens
//! with reuse detection, idle and absolute expiry, and an admin surface to list and revoke.
//!
//! # Layout
//!
//! Requests flow `http -> graphql -> service -> (cache | entity)`:
//!
//! - [`config`]: the only place that reads the environment (and the `--config` TOML file,
//!   layered defaults < file < environment < flags; `--print-config`); validates the settings.
//! - [`startup`]: `Application::build / port / run_until_stopped`, migrations and bootstrap;
//!   `Operator::build`, the same services for the command line.
//! - [`cli`]: the admin command line (`users …`, `sessions …`, `cleanup`): parses, calls one
//!   service function, prints; exit codes 0 / 1 refused / 2 unreachable.
//! - [`http`]: everything about HTTP, one file per job: the router and shared state (`mod.rs`),
//!   transport rules (JSON bodies, no mutations over GET, timeout; `transport`), the parsed
//!   document cache (`documents`), running one request (identify the caller, execute, error
//!   codes, 503; `execute`), reading the token, channel and client (`request`), the token
//!   headers and cookies (`cookies`), CORS (`cors`), `/health` and `/metrics` (`health`),
//!   the browser pages' embedded files and headers (`assets`), GraphiQL (`playground`) and
//!   the operator console (`console`), and GraphQL subscriptions over WebSocket (`websocket`).
//! - [`graphql`]: the schema, thin resolvers, the GraphQL types (never entity models), the
//!   per-request context (resolvers record tokens issued or cleared there; `http` writes them)
//!   and the per-request batches that load a listing's related rows together
//!   (`graphql::batch`). No axum types below this layer.
//! - [`service`]: one value per service, composed in `Services::compose`: `sessions`
//!   (identify a request's session and channel, lifecycle, refresh, data), `auth` (login,
//!   passwords, throttles), `directory` (users, roles, channels), `orders`, `admin` (listings,
//!   revocation, clean-up), `jwt`, `loads` (a listing's related rows in one statement each);
//!   with `authz` rules and id-cursor `paging`.
//! - [`events`]: session events: the audit log written with each change, the live bus (Redis
//!   fan-out between instances), each subscriber's stream, and the webhook outbox and worker.
//! - [`domain`]: the session and user a request knows ([`domain::CachedSession`]), shared by
//!   the service and the cache.
//! - [`cache`]: the [`cache::SessionCache`] trait and its `memory`, `redis` and `tiered`
//!   (per-process tier in front of Redis, invalidated over pub/sub) strategies, the staleness
//!   protocol in front of them (`cache::SessionStore`), and the throttles' shared counters
//!   (`cache::RedisWindows`), and the publish/subscribe facility the event bus uses
//!   (`cache::pubsub`). The only layer that talks to Redis.
//! - `coalesce`: calls that wait at the same time sent as one (the Redis lookups, the session
//!   reads on the database).
//! - [`metrics`]: the Prometheus registry (requests, cache hits, SQL statements, errors).
//! - [`permission`]: the permission enum and its compact set; [`clock`]: milliseconds and
//!   RFC 3339; [`token`]: token generation, parsing and hashing; [`error`]: client-visible
//!   error codes.

pub mod cache;
pub mod cli;
pub mod clock;
mod coalesce;
pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod graphql;
pub mod http;
pub mod metrics;
pub mod permission;
pub mod service;
pub mod startup;
pub mod token;
