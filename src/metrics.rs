//! Process-wide counters, rendered in the Prometheus text format at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub graphql_requests: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cache_errors: AtomicU64,
    pub sessions_created: AtomicU64,
    pub sessions_refreshed: AtomicU64,
    pub sessions_revoked: AtomicU64,
    pub sessions_cleaned_up: AtomicU64,
    pub logins_succeeded: AtomicU64,
    pub logins_failed: AtomicU64,
    pub database_errors: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let rows: [(&str, &str, &AtomicU64); 11] = [
            (
                "session_server_graphql_requests_total",
                "GraphQL requests executed",
                &self.graphql_requests,
            ),
            (
                "session_server_cache_hits_total",
                "Session lookups answered by the cache",
                &self.cache_hits,
            ),
            (
                "session_server_cache_misses_total",
                "Session lookups that went to the database",
                &self.cache_misses,
            ),
            (
                "session_server_cache_errors_total",
                "Cache calls that failed or timed out",
                &self.cache_errors,
            ),
            (
                "session_server_sessions_created_total",
                "Sessions created",
                &self.sessions_created,
            ),
            (
                "session_server_sessions_refreshed_total",
                "Successful refresh-token rotations",
                &self.sessions_refreshed,
            ),
            (
                "session_server_sessions_revoked_total",
                "Sessions revoked or logged out",
                &self.sessions_revoked,
            ),
            (
                "session_server_sessions_cleaned_up_total",
                "Expired or invalidated sessions deleted",
                &self.sessions_cleaned_up,
            ),
            (
                "session_server_logins_succeeded_total",
                "Successful logins",
                &self.logins_succeeded,
            ),
            (
                "session_server_logins_failed_total",
                "Failed logins",
                &self.logins_failed,
            ),
            (
                "session_server_database_errors_total",
                "Database errors answered as SERVICE_UNAVAILABLE or INTERNAL",
                &self.database_errors,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        out
    }
}
