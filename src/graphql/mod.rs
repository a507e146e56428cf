//! The GraphQL schema: thin resolvers over the service layer, the contract's types, and the
//! per-request context.

pub mod batch;
pub mod context;
pub mod events;
mod mutation;
mod query;
pub mod read_plan;
pub mod subscription;
pub mod types;

use crate::service::SharedServices;
use async_graphql::{Schema, SchemaBuilder};

pub use context::{LazyClientInfo, RequestContext, TokenChange, TokenChanges};
pub use mutation::Mutation;
pub use query::Query;
pub use subscription::{LiveCredentials, Subscription};

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// The complexity of a root field that goes to the database (every mutation, and the queries
/// not answered from the cache): with the limit of 1000, a document holds at most about 45, so
/// aliases cannot turn one request into hundreds of statements, orders or signatures.
pub(crate) const DB_FIELD: usize = 20;

/// Depth and complexity limits: generous for GraphiQL's introspection query, tight enough to
/// refuse abusive documents before they run.
fn builder() -> SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(Query, Mutation, Subscription)
        .limit_depth(16)
        .limit_complexity(1000)
        .limit_recursive_depth(32)
        .limit_directives(8)
}

pub fn build_schema(services: SharedServices) -> AppSchema {
    builder().data(services).finish()
}

/// The schema for documents that already passed full validation: only the checks that do not
/// depend on the document alone (depth, complexity, fragment cycles) run again.
pub fn build_revalidating_schema(services: SharedServices) -> AppSchema {
    builder()
        .validation_mode(async_graphql::ValidationMode::Fast)
        .data(services)
        .finish()
}

/// The root fields of `Query` and `Mutation`, for labelling requests in metrics.
pub fn root_fields() -> (Vec<String>, Vec<String>) {
    use async_graphql::parser::types::{TypeKind, TypeSystemDefinition};
    // Introspection fields are valid roots too (GraphiQL sends `__schema`).
    let mut queries: Vec<String> = ["__typename", "__schema", "__type"]
        .map(String::from)
        .to_vec();
    let mut mutations: Vec<String> = vec!["__typename".into()];
    if let Ok(doc) = async_graphql::parser::parse_schema(sdl()) {
        for def in doc.definitions {
            let TypeSystemDefinition::Type(t) = def else {
                continue;
            };
            let TypeKind::Object(o) = &t.node.kind else {
                continue;
            };
            let names = o.fields.iter().map(|f| f.node.name.node.to_string());
            match t.node.name.node.as_str() {
                "Query" => queries.extend(names),
                "Mutation" => mutations.extend(names),
                _ => {}
            }
        }
    }
    (queries, mutations)
}

/// The schema in SDL, as written to `schema.graphql` by `export-schema`.
pub fn sdl() -> String {
    builder().finish().sdl()
}
