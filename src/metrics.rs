//! Prometheus metrics (prometheus-client), served in the text format at `/metrics`: GraphQL
//! requests and latency per operation, cache lookups per tier, session lifecycle events,
//! logins, and database and Redis errors.

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextRequest,
};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection,
};
use async_graphql::{Response, ServerResult, Variables};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    /// `query.<root field>` or `mutation.<root field>` (bounded by the schema), or `invalid`.
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
    sessions: Family<EventLabels, Counter>,
    logins: Family<OutcomeLabels, Counter>,
    errors: Family<ComponentLabels, Counter>,
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
        Metrics {
            registry,
            requests,
            latency,
            cache,
            sessions,
            logins,
            errors,
        }
    }
}

impl Metrics {
    pub fn request(&self, operation: String, seconds: f64) {
        let labels = OperationLabels { operation };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
    }

    /// A cache lookup in `tier` (`memory` or `redis`).
    pub fn cache_lookup(&self, tier: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache
            .get_or_create(&CacheLabels { tier, result })
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

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("metrics could not be encoded");
        }
        out
    }
}

/// Times every GraphQL request and labels it with its operation type and first root field.
pub struct RequestMetrics(pub Arc<Metrics>);

impl ExtensionFactory for RequestMetrics {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RequestTimer {
            metrics: self.0.clone(),
            label: Mutex::new(None),
        })
    }
}

struct RequestTimer {
    metrics: Arc<Metrics>,
    label: Mutex<Option<String>>,
}

fn label_of(doc: &ExecutableDocument) -> String {
    let op = match &doc.operations {
        DocumentOperations::Single(op) => Some(&op.node),
        // Several named operations: label by the first; still bounded by the schema.
        DocumentOperations::Multiple(ops) => ops.values().next().map(|op| &op.node),
    };
    let Some(op) = op else {
        return "invalid".into();
    };
    let kind = match op.ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    };
    let field = op
        .selection_set
        .node
        .items
        .iter()
        .find_map(|sel| match &sel.node {
            Selection::Field(f) => Some(f.node.name.node.to_string()),
            _ => None,
        });
    format!("{kind}.{}", field.unwrap_or_else(|| "fragment".into()))
}

#[async_trait::async_trait]
impl Extension for RequestTimer {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let started = Instant::now();
        let response = next.run(ctx).await;
        let label = self
            .label
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_else(|| "invalid".into());
        self.metrics.request(label, started.elapsed().as_secs_f64());
        response
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        *self.label.lock().unwrap_or_else(PoisonError::into_inner) = Some(label_of(&doc));
        Ok(doc)
    }
}
