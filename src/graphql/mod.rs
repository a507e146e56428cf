//! The GraphQL schema: thin resolvers over the service layer, the contract's types, and the
//! per-request context.

pub mod context;
mod mutation;
mod query;
pub mod types;

use crate::service::SharedServices;
use async_graphql::{EmptySubscription, Schema, SchemaBuilder};

pub use context::{RequestContext, TokenSource};
pub use mutation::Mutation;
pub use query::Query;

pub type AppSchema = Schema<Query, Mutation, EmptySubscription>;

/// Depth and complexity limits: generous for GraphiQL's introspection query, tight enough to
/// refuse abusive documents before they run.
fn builder() -> SchemaBuilder<Query, Mutation, EmptySubscription> {
    Schema::build(Query, Mutation, EmptySubscription)
        .limit_depth(16)
        .limit_complexity(1000)
        .limit_recursive_depth(32)
        .limit_directives(8)
}

pub fn build_schema(services: SharedServices) -> AppSchema {
    builder()
        .extension(crate::metrics::RequestMetrics(services.metrics.clone()))
        .data(services)
        .finish()
}

/// The schema in SDL, as written to `schema.graphql` by `export-schema`.
pub fn sdl() -> String {
    builder().finish().sdl()
}
