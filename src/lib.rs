//! # session-server
//!
//! A standalone GraphQL session server: anonymous and authenticated sessions, refresh tokens
//! with reuse detection, idle and absolute expiry, and an admin surface to list and revoke.
//!
//! # Layout
//!
//! Requests flow `http -> graphql -> service -> (cache | entity)`:
//!
//! - [`config`]: the only place that reads the environment; validates lifetimes.
//! - [`startup`]: `Application::build / port / run_until_stopped`, migrations and bootstrap.
//! - [`http`]: the router, token extraction (bearer / cookie), CSRF rules, health, metrics.
//! - [`graphql`]: the schema, thin resolvers and the GraphQL types (never entity models).
//! - [`service`]: sessions, authorization (who may do what, channel scopes), login and
//!   throttling, users / roles / channels, orders, clean-up.
//! - [`cache`]: the [`cache::SessionCache`] trait and its `memory`, `redis` and `tiered`
//!   strategies.
//! - [`token`]: token generation, parsing and hashing; [`error`]: client-visible error codes.

pub mod cache;
pub mod clock;
pub mod config;
pub mod error;
pub mod graphql;
pub mod http;
pub mod metrics;
pub mod permission;
pub mod service;
pub mod startup;
pub mod token;
