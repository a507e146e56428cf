//! The parsed-document cache: clients repeat the same few query texts, so most requests skip
//! the parser, and a document that passed full validation once skips the static rules after.

use async_graphql::parser::types::{ExecutableDocument, OperationType};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Parsed documents by query text.
pub type Documents = moka::sync::Cache<String, Arc<KnownDocument>>;

/// Longest query text whose parsed document is cached.
const MAX_CACHED_QUERY_BYTES: usize = 8 * 1024;

/// A parsed query text, and whether it has passed full validation without variables.
pub struct KnownDocument {
    doc: ExecutableDocument,
    validated: AtomicBool,
}

impl KnownDocument {
    /// Whether the document passed full validation with no variables and no operation name.
    pub(super) fn validated(&self) -> bool {
        self.validated.load(Ordering::Relaxed)
    }

    pub(super) fn mark_validated(&self) {
        self.validated.store(true, Ordering::Relaxed);
    }
}

pub(super) fn new_cache() -> Documents {
    moka::sync::Cache::new(1_000)
}

/// Attaches the cached parse of the request's query, parsing and caching it on a miss.
pub(super) fn attach(
    documents: &Documents,
    mut request: async_graphql::Request,
) -> (async_graphql::Request, Option<Arc<KnownDocument>>) {
    if request.query.len() > MAX_CACHED_QUERY_BYTES {
        return (request, None);
    }
    let known = known_document(documents, &request.query);
    if let Some(known) = &known {
        request.set_parsed_query(known.doc.clone());
    }
    (request, known)
}

/// `known` when its validation can stand for `request`'s. Static validation depends only on
/// the document, except where variable values are checked: a document that passed full
/// validation with no variables and no operation name cannot fail it again under the same
/// conditions.
pub(super) fn reusable_for(
    known: Option<Arc<KnownDocument>>,
    request: &async_graphql::Request,
) -> Option<Arc<KnownDocument>> {
    known.filter(|_| request.variables.is_empty() && request.operation_name.is_none())
}

/// The parse of `query`, from `documents` or parsed now; `None` when it does not parse
/// (execution reports the syntax error). Only documents without a mutation or subscription
/// are kept: those are the ones that carry secrets inline (passwords of `login`, `createUser`
/// or `changePassword`, refresh tokens), and a cache must not hold them in memory.
fn known_document(documents: &Documents, query: &str) -> Option<Arc<KnownDocument>> {
    if let Some(known) = documents.get(query) {
        return Some(known);
    }
    let doc = async_graphql::parser::parse_query(query).ok()?;
    let holds_writes = doc.operations.iter().any(|(_, op)| {
        matches!(
            op.node.ty,
            OperationType::Mutation | OperationType::Subscription
        )
    });
    let known = Arc::new(KnownDocument {
        doc,
        validated: AtomicBool::new(false),
    });
    if !holds_writes {
        documents.insert(query.to_string(), known.clone());
    }
    Some(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_with_mutations_are_parsed_but_never_cached() {
        let documents = moka::sync::Cache::new(100);
        let secret = r#"mutation { login(username: "a", password: "hunter2") { __typename } }"#;
        let mixed = r#"query Q { me { id } } mutation M { changePassword(currentPassword: "x", newPassword: "y") }"#;
        let subscription = "subscription { sessionEvents { id } }";
        for query in [secret, mixed, subscription] {
            assert!(known_document(&documents, query).is_some(), "{query}");
            assert!(!documents.contains_key(query), "{query} was cached");
        }
        let read = "{ activeSession { id } }";
        let first = known_document(&documents, read).expect("parses");
        assert!(documents.contains_key(read));
        let again = known_document(&documents, read).expect("cached");
        assert!(Arc::ptr_eq(&first, &again), "served from the cache");
        assert!(known_document(&documents, "{ activeSession { id }").is_none());
    }
}
