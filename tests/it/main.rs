//! The integration suite: one binary, every test drives a real server over HTTP on port 0 with
//! its own database and Redis namespace. See `helpers.rs` for the backend variants.

mod helpers;

mod admin;
mod admin_cli;
mod auth;
mod authz;
mod bad_input;
mod browser;
mod cache;
mod cache_reads;
mod cli;
mod cluster;
mod config_file;
mod contract;
mod db_reads;
mod events;
mod fuzz;
mod gateway;
mod invalidation;
mod jwt;
mod lifetimes;
mod logs;
mod outage;
mod procs;
mod read_plans;
mod refresh;
mod revocation;
mod scale;
mod session_data;
mod shutdown;
mod startup;
mod storefront;
mod subscription;
mod throttle;
mod transport;
mod webhooks;
