//! # session-server
//!
//! A standalone GraphQL session server: anonymous and authenticated sessions, refresh tokens
//! with reuse detection, idle and absolute expiry, and an admin surface to list and revoke.
//!
//! # Layout
//!
//! Requests flow `http -> graphql -> service -> (cache | entity)`:
//!
//! - [`config`]: the only place that reads the environment; validates lifetimes and `REDIS_URL`.
//! - [`startup`]: `Application::build / port / run_until_stopped`, migrations and bootstrap.
//! - [`http`]: everything about HTTP, one file per job: the router and shared state (`mod.rs`),
//!   transport rules (JSON bodies, no mutations over GET, timeout; `transport`), the parsed
//!   document cache (`documents`), running one request (identify the caller, execute, error
//!   codes, 503; `execute`), reading the token, channel and client (`request`), the token
//!   headers and cookies (`cookies`), CORS (`cors`), `/health` and `/metrics` (`health`),
//!   the browser pages' embedded files and headers (`assets`), GraphiQL (`playground`) and
//!   the operator console (`console`).
//! - [`graphql`]: the schema, thin resolvers, the GraphQL types (never entity models), the
//!   per-request context (resolvers record tokens issued or cleared there; `http` writes them)
//!   and the per-request batches that load a listing's related rows together
//!   (`graphql::batch`). No axum types below this layer.
//! - [`service`]: identifying a request's session and channel (`identify`), sessions,
//!   authorization (who may do what, channel scopes), login and throttling, users / roles /
//!   channels, orders, batched reads, id-cursor paging, clean-up.
//! - [`events`]: session events: the audit log written with each change, the live bus, and the
//!   webhook outbox with its delivery worker (`events::webhook`).
//! - [`domain`]: the session and user a request knows ([`domain::CachedSession`]), shared by
//!   the service and the cache.
//! - [`cache`]: the [`cache::SessionCache`] trait and its `memory`, `redis` and `tiered`
//!   (per-process tier in front of Redis, invalidated over pub/sub) strategies.
//! - [`metrics`]: the Prometheus registry (requests, cache hits, SQL statements, errors).
//! - [`permission`]: the permission enum and its compact set; [`clock`]: milliseconds and
//!   RFC 3339; [`token`]: token generation, parsing and hashing; [`error`]: client-visible
//!   error codes.

pub mod cache;
pub mod clock;
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
