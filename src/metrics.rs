//! Prometheus metrics (prometheus-client), served in the text format at `/metrics`: GraphQL
//! requests and latency per operation, cache lookups per tier, session lifecycle events,
//! logins, database and Redis errors, and webhook deliveries.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    /// `query.<root field>` or `mutation.<root field>` (bounded by the schema), or `other`.
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    tier: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    /// `local` (this instance's changes) or `remote` (another instance's, over Redis).
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    component: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~6.5 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 17,
    ))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<OperationLabels, Counter>,
    latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    cache: Family<CacheLabels, Counter>,
    /// The `cache` counters of the two tiers' hits and misses, taken from the family on first
    /// use: a lookup happens on every request, and the family's own lookup (a lock and a hash
    /// of the labels) costs more than the increment.
    cache_counters: [std::sync::OnceLock<Counter>; 4],
    sessions: Family<EventLabels, Counter>,
    logins: Family<OutcomeLabels, Counter>,
    errors: Family<ComponentLabels, Counter>,
    db_statements: Counter,
    read_plan_answers: Counter,
    event_subscribers: Gauge,
    events_fanned_out: Family<SourceLabels, Counter>,
    event_subscribers_dropped: Family<ReasonLabels, Counter>,
    webhook_deliveries: Family<OutcomeLabels, Counter>,
    webhook_pending: Gauge,
    webhook_oldest_pending_age: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("session_server");
        let requests = Family::<OperationLabels, Counter>::default();
        let latency = Family::<OperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let cache = Family::<CacheLabels, Counter>::default();
        let sessions = Family::<EventLabels, Counter>::default();
        let logins = Family::<OutcomeLabels, Counter>::default();
        let errors = Family::<ComponentLabels, Counter>::default();
        let db_statements = Counter::default();
        let read_plan_answers = Counter::default();
        let event_subscribers = Gauge::default();
        let events_fanned_out = Family::<SourceLabels, Counter>::default();
        let event_subscribers_dropped = Family::<ReasonLabels, Counter>::default();
        let webhook_deliveries = Family::<OutcomeLabels, Counter>::default();
        let webhook_pending = Gauge::default();
        let webhook_oldest_pending_age = Gauge::default();
        registry.register(
            "graphql_requests",
            "GraphQL requests by operation",
            requests.clone(),
        );
        registry.register(
            "graphql_request_duration_seconds",
            "GraphQL request latency by operation",
            latency.clone(),
        );
        registry.register(
            "cache_lookups",
            "Session cache lookups by tier and result",
            cache.clone(),
        );
        registry.register("sessions", "Session lifecycle events", sessions.clone());
        registry.register("logins", "Login attempts by outcome", logins.clone());
        registry.register("errors", "Database and Redis errors", errors.clone());
        registry.register(
            "db_statements",
            "SQL statements run on the server's database connection",
            db_statements.clone(),
        );
        registry.register(
            "graphql_read_plan_answers",
            "GraphQL requests answered by a read plan (from the caller's cached session and the \
             request's channel, without the executor)",
            read_plan_answers.clone(),
        );
        registry.register(
            "event_subscribers",
            "Live session event subscriptions open on this instance",
            event_subscribers.clone(),
        );
        registry.register(
            "events_fanned_out",
            "Session events handed to this instance's live subscribers, by where they were made",
            events_fanned_out.clone(),
        );
        registry.register(
            "event_subscribers_dropped",
            "Live subscriptions (lagged, session_ended, forbidden) and WebSocket connections \
             (stopped_reading) the server ended, by reason",
            event_subscribers_dropped.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by outcome: delivered, retried (an attempt failed; it will be \
             tried again) or failed (given up after WEBHOOK_MAX_AGE)",
            webhook_deliveries.clone(),
        );
        registry.register(
            "webhook_pending",
            "Webhook deliveries waiting in the outbox (shared by every instance)",
            webhook_pending.clone(),
        );
        registry.register(
            "webhook_oldest_pending_age_seconds",
            "Age of the oldest webhook delivery waiting in the outbox",
            webhook_oldest_pending_age.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            cache,
            cache_counters: Default::default(),
            sessions,
            logins,
            errors,
            db_statements,
            read_plan_answers,
            event_subscribers,
            events_fanned_out,
            event_subscribers_dropped,
            webhook_deliveries,
            webhook_pending,
            webhook_oldest_pending_age,
        }
    }
}

impl Metrics {
    /// A request answered by a read plan.
    pub fn read_plan_answer(&self) {
        self.read_plan_answers.inc();
    }

    /// A cache lookup in `tier` (`memory` or `redis`).
    pub fn cache_lookup(&self, tier: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        let labels = CacheLabels { tier, result };
        let slot = match tier {
            "memory" => 0,
            "redis" => 2,
            _ => {
                self.cache.get_or_create(&labels).inc();
                return;
            }
        } + usize::from(!hit);
        self.cache_counters[slot]
            .get_or_init(|| self.cache.get_or_create(&labels).clone())
            .inc();
    }

    /// `created`, `refreshed`, `revoked` or `cleaned_up`.
    pub fn session_event(&self, event: &'static str, n: u64) {
        self.sessions
            .get_or_create(&EventLabels { event })
            .inc_by(n);
    }

    /// `success`, `invalid_credentials`, `not_verified` or `throttled`.
    pub fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// `database` or `redis`.
    pub fn error(&self, component: &'static str) {
        self.errors
            .get_or_create(&ComponentLabels { component })
            .inc();
    }

    /// A live event subscription opened (`+1`) or closed (`-1`).
    pub fn event_subscribers(&self, delta: i64) {
        self.event_subscribers.inc_by(delta);
    }

    /// Events handed to this instance's subscribers: `local` or `remote` (from another instance).
    pub fn events_fanned_out(&self, source: &'static str, n: u64) {
        self.events_fanned_out
            .get_or_create(&SourceLabels { source })
            .inc_by(n);
    }

    /// A live subscription the server ended (`lagged`, `session_ended`, `forbidden`), or a
    /// WebSocket connection whose client stopped reading (`stopped_reading`).
    pub fn event_subscriber_dropped(&self, reason: &'static str) {
        self.event_subscribers_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The counter of SQL statements, for the database connection's metric callback.
    pub fn db_statements(&self) -> Counter {
        self.db_statements.clone()
    }

    /// Counts one SQL statement run outside sea-orm (whose statements the callback counts).
    pub fn db_statement(&self) {
        self.db_statements.inc();
    }

    /// A webhook delivery's outcome: `delivered`, `retried` or `failed`, `n` times.
    pub fn webhook(&self, outcome: &'static str, n: u64) {
        self.webhook_deliveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(n);
    }

    /// The outbox as last counted: rows waiting and the oldest one's age.
    pub fn webhook_backlog(&self, pending: i64, oldest_age_seconds: i64) {
        self.webhook_pending.set(pending);
        self.webhook_oldest_pending_age.set(oldest_age_seconds);
    }

    /// The metrics in the OpenMetrics text format (`application/openmetrics-text`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("metrics could not be encoded");
        }
        out
    }

    /// The metrics in the Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), for
    /// scrapers and parsers that do not ask for OpenMetrics.
    pub fn render_prometheus_text(&self) -> String {
        prometheus_text(&self.render())
    }
}

/// Rewrites OpenMetrics text as Prometheus text 0.0.4: a counter family is named as its
/// samples are (`…_total`), `info` families are gauges, and the `# UNIT` and `# EOF` lines,
/// which 0.0.4 does not have, are left out. Samples are the same in both formats.
fn prometheus_text(open_metrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in open_metrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# TYPE ")
            .map(|rest| ("# TYPE ", rest))
            .or_else(|| line.strip_prefix("# HELP ").map(|rest| ("# HELP ", rest)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(kind);
                out.push_str(name);
                if counters.contains(name) && !name.ends_with("_total") {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(if kind == "# TYPE " && tail == "info" {
                    "gauge"
                } else {
                    tail
                });
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Counter and histogram of one operation label, created up front so a request allocates nothing.
#[derive(Clone)]
pub struct OperationHandles {
    requests: Counter,
    latency: Histogram,
    label: Arc<str>,
}

impl OperationHandles {
    /// `query.activeSession`, `mutation.login`, … or `other` (never client text).
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    pub fn record(&self, seconds: f64) {
        self.requests.inc();
        self.latency.observe(seconds);
    }
}

/// Labels requests by operation type and first root field (`query.activeSession`) without
/// parsing the document: a short scan of its first tokens, checked against the schema's root
/// fields, so label cardinality is bounded by the schema. Anything else is `other`.
pub struct OperationLabeler {
    queries: HashMap<String, OperationHandles>,
    mutations: HashMap<String, OperationHandles>,
    other: OperationHandles,
}

impl OperationLabeler {
    pub fn new(
        metrics: &Metrics,
        query_fields: &[String],
        mutation_fields: &[String],
    ) -> OperationLabeler {
        let handles = |label: String| {
            let labels = OperationLabels {
                operation: label.clone(),
            };
            OperationHandles {
                requests: metrics.requests.get_or_create(&labels).clone(),
                latency: metrics.latency.get_or_create(&labels).clone(),
                label: Arc::from(label),
            }
        };
        OperationLabeler {
            queries: query_fields
                .iter()
                .map(|f| (f.clone(), handles(format!("query.{f}"))))
                .collect(),
            mutations: mutation_fields
                .iter()
                .map(|f| (f.clone(), handles(format!("mutation.{f}"))))
                .collect(),
            other: handles("other".into()),
        }
    }

    pub fn handles(&self, query: &str) -> &OperationHandles {
        let found = match first_root_field(query) {
            Some((false, field)) => self.queries.get(field),
            Some((true, field)) => self.mutations.get(field),
            None => None,
        };
        found.unwrap_or(&self.other)
    }
}

/// Skips white space, commas, comments and a byte-order mark.
fn skip_ignored(b: &[u8], i: &mut usize) {
    while *i < b.len() {
        match b[*i] {
            b' ' | b'\t' | b'\n' | b'\r' | b',' => *i += 1,
            0xEF if b[*i..].starts_with(&[0xEF, 0xBB, 0xBF]) => *i += 3,
            b'#' => {
                while *i < b.len() && b[*i] != b'\n' {
                    *i += 1;
                }
            }
            _ => return,
        }
    }
}

fn read_name<'a>(q: &'a str, i: &mut usize) -> Option<&'a str> {
    let b = q.as_bytes();
    let start = *i;
    while *i < b.len() && (b[*i] == b'_' || b[*i].is_ascii_alphanumeric()) {
        *i += 1;
    }
    (*i > start && !b[start].is_ascii_digit()).then(|| &q[start..*i])
}

/// Skips a parenthesised group (variable definitions), minding strings.
fn skip_parens(b: &[u8], i: &mut usize) -> Option<()> {
    let mut depth = 0usize;
    while *i < b.len() {
        match b[*i] {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    *i += 1;
                    return Some(());
                }
            }
            b'"' => {
                *i += 1;
                while *i < b.len() && b[*i] != b'"' {
                    if b[*i] == b'\\' {
                        *i += 1;
                    }
                    *i += 1;
                }
            }
            _ => {}
        }
        *i += 1;
    }
    None
}

/// `(is_mutation, first root field)` of the first operation, when the document starts with one.
fn first_root_field(q: &str) -> Option<(bool, &str)> {
    let b = q.as_bytes();
    let mut i = 0;
    skip_ignored(b, &mut i);
    let mut mutation = false;
    if b.get(i) != Some(&b'{') {
        match read_name(q, &mut i)? {
            "query" => {}
            "mutation" => mutation = true,
            _ => return None,
        }
        skip_ignored(b, &mut i);
        if b.get(i)
            .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        {
            read_name(q, &mut i)?;
            skip_ignored(b, &mut i);
        }
        if b.get(i) == Some(&b'(') {
            skip_parens(b, &mut i)?;
            skip_ignored(b, &mut i);
        }
        if b.get(i) != Some(&b'{') {
            return None;
        }
    }
    i += 1;
    skip_ignored(b, &mut i);
    let first = read_name(q, &mut i)?;
    skip_ignored(b, &mut i);
    if b.get(i) == Some(&b':') {
        i += 1;
        skip_ignored(b, &mut i);
        return Some((mutation, read_name(q, &mut i)?));
    }
    Some((mutation, first))
}

#[cfg(test)]
mod tests {

    #[test]
    fn prometheus_text_names_counter_families_as_their_samples() {
        let open = "# HELP app_requests Requests.\n# TYPE app_requests counter\n\
            app_requests_total{op=\"a\"} 3\n# HELP app_up Up.\n# TYPE app_up gauge\n\
            app_up 1\n# TYPE app_build info\napp_build_info{v=\"1\"} 1\n\
            # TYPE app_latency_seconds histogram\n# UNIT app_latency_seconds seconds\n\
            app_latency_seconds_count 2\n# EOF\n";
        let text = super::prometheus_text(open);
        assert_eq!(
            text,
            "# HELP app_requests_total Requests.\n# TYPE app_requests_total counter\n\
            app_requests_total{op=\"a\"} 3\n# HELP app_up Up.\n# TYPE app_up gauge\n\
            app_up 1\n# TYPE app_build gauge\napp_build_info{v=\"1\"} 1\n\
            # TYPE app_latency_seconds histogram\napp_latency_seconds_count 2\n"
        );
    }

    use super::{first_root_field, Metrics};

    /// The counters taken from the family on first use are the family's own: each tier and
    /// result is counted under its labels, and only those that happened are listed.
    #[test]
    fn cache_lookups_are_counted_under_their_labels() {
        let metrics = Metrics::default();
        for _ in 0..3 {
            metrics.cache_lookup("memory", true);
        }
        metrics.cache_lookup("memory", false);
        metrics.cache_lookup("redis", true);
        metrics.cache_lookup("redis", true);
        let text = metrics.render();
        let count = |tier: &str, result: &str| {
            let name = format!(
                "session_server_cache_lookups_total{{tier=\"{tier}\",result=\"{result}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(name.as_str()))
                .map(|n| n.parse::<u64>().expect("a count"))
        };
        assert_eq!(count("memory", "hit"), Some(3), "{text}");
        assert_eq!(count("memory", "miss"), Some(1), "{text}");
        assert_eq!(count("redis", "hit"), Some(2), "{text}");
        assert_eq!(count("redis", "miss"), None, "{text}");
    }

    #[test]
    fn root_fields_are_found_cheaply() {
        assert_eq!(
            first_root_field("{ activeSession { id } }"),
            Some((false, "activeSession"))
        );
        assert_eq!(
            first_root_field("  # hi\n query Q { me { id } }"),
            Some((false, "me"))
        );
        assert_eq!(
            first_root_field("mutation L($u: String! = \"a)b\", $p: String!) { r: login(username: $u, password: $p) { __typename } }"),
            Some((true, "login"))
        );
        assert_eq!(
            first_root_field("fragment F on Session { id } query { activeSession { ...F } }"),
            None
        );
        assert_eq!(first_root_field("subscription { x }"), None);
        assert_eq!(first_root_field("{"), None);
        assert_eq!(first_root_field(""), None);
    }
}
