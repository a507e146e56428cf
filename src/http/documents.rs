//! The parsed-document cache: clients repeat the same few query texts, so most requests skip
//! the parser, a document that passed full validation once skips the static rules after, and
//! one made only of fields the caller's identity answers gets a read plan (see
//! [`crate::graphql::read_plan`]) that answers it without the executor.

use crate::graphql::read_plan::ReadPlan;
use async_graphql::parser::types::{ExecutableDocument, OperationType};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Parsed documents by query text, bounded by the bytes of query text they hold.
pub type Documents = quick_cache::sync::Cache<String, Arc<KnownDocument>, QueryBytes>;

/// Longest query text whose parsed document is cached.
const MAX_CACHED_QUERY_BYTES: usize = 8 * 1024;

/// Query text the cache holds at most: a parse grows with its text, so a flood of long
/// distinct queries evicts more entries instead of holding more memory.
const CACHED_QUERY_BYTES: u64 = 1 << 20;

/// About how many documents the cache holds (short queries; it sizes the cache's shards).
const CACHED_DOCUMENTS: usize = 2_000;

/// Weighs a cached document by its query text (plus a fixed part for the entry itself).
#[derive(Clone)]
pub struct QueryBytes;

impl quick_cache::Weighter<String, Arc<KnownDocument>> for QueryBytes {
    fn weight(&self, query: &String, _: &Arc<KnownDocument>) -> u64 {
        query.len() as u64 + 128
    }
}

/// A parsed query text, whether it has passed full validation without variables, and its read
/// plan once it has.
pub struct KnownDocument {
    doc: ExecutableDocument,
    validated: AtomicBool,
    plan: OnceLock<Option<ReadPlan>>,
}

impl KnownDocument {
    /// Whether the document passed full validation with no variables and no operation name.
    pub(super) fn validated(&self) -> bool {
        self.validated.load(Ordering::Relaxed)
    }

    /// Hands the parse to `request`, so the executor skips the parser.
    pub(super) fn attach_to(&self, request: &mut async_graphql::Request) {
        request.set_parsed_query(self.doc.clone());
    }

    pub(super) fn mark_validated(&self) {
        self.validated.store(true, Ordering::Relaxed);
    }

    /// The read plan of a validated document, compiled on first use; `None` before validation
    /// and for documents that need the executor.
    pub(super) fn read_plan(&self) -> Option<&ReadPlan> {
        if !self.validated() {
            return None;
        }
        self.plan
            .get_or_init(|| ReadPlan::compile(&self.doc))
            .as_ref()
    }
}

pub(super) fn new_cache() -> Documents {
    Documents::with_weighter(CACHED_DOCUMENTS, CACHED_QUERY_BYTES, QueryBytes)
}

/// The cached parse of `query`, parsing and caching it on a miss; `None` for a query too long
/// to cache or one that does not parse.
pub(super) fn lookup(documents: &Documents, query: &str) -> Option<Arc<KnownDocument>> {
    if query.len() > MAX_CACHED_QUERY_BYTES {
        return None;
    }
    known_document(documents, query)
}

/// `known` when its validation can stand for `request`'s. Static validation depends only on
/// the document, except where variable values are checked: a document that passed full
/// validation with no variables cannot fail it again under the same condition. The operation
/// name plays no part in it (async-graphql checks every operation of the document, and picks
/// the named one only to run it).
pub(super) fn reusable_for<'a>(
    known: Option<&'a Arc<KnownDocument>>,
    request: &async_graphql::Request,
) -> Option<&'a KnownDocument> {
    known.map(|k| &**k).filter(|_| request.variables.is_empty())
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
        plan: OnceLock::new(),
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
        let documents = new_cache();
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

    #[test]
    fn long_distinct_queries_are_bounded_by_their_bytes() {
        let documents = new_cache();
        let pad = "x".repeat(7_900);
        for i in 0..300 {
            let query = format!("# {i} {pad}\n{{ __typename }}");
            assert!(known_document(&documents, &query).is_some());
        }
        assert!(
            documents.weight() <= CACHED_QUERY_BYTES,
            "{}",
            documents.weight()
        );
        let most = (CACHED_QUERY_BYTES / 8_000) as usize;
        assert!(
            documents.len() <= most,
            "held {} long documents",
            documents.len()
        );
        // A client's own query is still cached after the flood.
        let read = "{ activeSession { id } }";
        let first = known_document(&documents, read).expect("parses");
        let again = known_document(&documents, read).expect("cached");
        assert!(Arc::ptr_eq(&first, &again), "served from the cache");
    }
}
