//! Read plans: a query made only of fields the request's own identity answers (the caller's
//! cached session and user, the request's channel) is answered by a plan compiled once per
//! document, without async-graphql's executor, which spends about 2,000 instructions on every
//! field (a boxed future, a path segment, a map insert, a value) and re-checks the limits on
//! every request.
//!
//! A plan is made only from a document that already passed full validation, so every name in
//! it exists and the limits hold. It covers plain fields and aliases: any argument, directive,
//! fragment, variable definition, repeated response key or field outside the table below leaves
//! the document to the executor. The fields are the same ones the resolvers answer without
//! I/O from the same values, in the same order and the same JSON; the integration test
//! `read_plans::plans_answer_like_the_executor` compares both on generated documents.
//!
//! | type | fields |
//! | --- | --- |
//! | `Query` | `activeSession`, `me`, `activeChannel` |
//! | `Session` (the caller's) | `id`, `cursor`, `kind`, `current`, `invalidated`, `user`, `activeChannel`, `authenticationStrategy`, `createdAt`, `lastActiveAt`, `expiresAt`, `absoluteExpiresAt`, `data`, `dataVersion`, `ipAddress`, `userAgent` |
//! | `User` (the caller's) | `id`, `identifier`, `verified` |
//! | `CurrentUser` | `id`, `identifier`, `verified`, `channels` |
//! | `ChannelPermissions` | `channelId`, `channelCode`, `channelToken`, `permissions` |
//! | `Channel` | `id`, `code`, `token`, `createdAt` |
//!
//! and `__typename` everywhere. `Session.activeChannel` is answered when it is the request's
//! channel (no `channel-token` header names another) or null; otherwise the executor loads it.

use super::types::encode_cursor;
use crate::clock::rfc3339;
use crate::domain::{CachedSession, CachedUser, ChannelGrant, SessionKind};
use crate::service::session::Lifetimes;
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
};
use entity::channel;

/// A compiled query: its root fields in document order.
#[derive(Debug)]
pub struct ReadPlan {
    /// The operation's name, if it has one: a request naming another operation is not ours.
    name: Option<String>,
    root: Fields<RootField>,
    /// Whether the plan shows the session's active channel: it can only when that is the
    /// request's channel.
    shows_session_channel: bool,
}

/// The fields of one selection set, each with its response key already written as JSON
/// (`"key":`).
type Fields<F> = Vec<(Box<str>, F)>;

#[derive(Debug)]
enum RootField {
    Typename,
    ActiveSession(Fields<SessionField>),
    Me(Fields<MeField>),
    ActiveChannel(Fields<ChannelField>),
}

#[derive(Debug)]
enum SessionField {
    Typename,
    Id,
    Cursor,
    Kind,
    Current,
    Invalidated,
    User(Fields<UserField>),
    ActiveChannel(Fields<ChannelField>),
    AuthenticationStrategy,
    CreatedAt,
    LastActiveAt,
    ExpiresAt,
    AbsoluteExpiresAt,
    Data,
    DataVersion,
    IpAddress,
    UserAgent,
}

#[derive(Debug)]
enum UserField {
    Typename,
    Id,
    Identifier,
    Verified,
}

#[derive(Debug)]
enum MeField {
    Typename,
    Id,
    Identifier,
    Verified,
    Channels(Fields<GrantField>),
}

#[derive(Debug)]
enum GrantField {
    Typename,
    ChannelId,
    ChannelCode,
    ChannelToken,
    Permissions,
}

#[derive(Debug)]
enum ChannelField {
    Typename,
    Id,
    Code,
    Token,
    CreatedAt,
}

/// What a plan reads: the request's identity and the session lifetimes.
pub struct Identity<'a> {
    pub session: Option<&'a CachedSession>,
    pub channel: &'a channel::Model,
    pub lifetimes: &'a Lifetimes,
}

impl ReadPlan {
    /// The plan of a validated document, or `None` when any part of it needs the executor.
    pub fn compile(doc: &ExecutableDocument) -> Option<ReadPlan> {
        if !doc.fragments.is_empty() {
            return None;
        }
        let (name, op) = match &doc.operations {
            DocumentOperations::Single(op) => (None, op),
            DocumentOperations::Multiple(ops) if ops.len() == 1 => {
                let (name, op) = ops.iter().next()?;
                (Some(name.to_string()), op)
            }
            DocumentOperations::Multiple(_) => return None,
        };
        let op = &op.node;
        if op.ty != OperationType::Query
            || !op.variable_definitions.is_empty()
            || !op.directives.is_empty()
        {
            return None;
        }
        let root = fields(&op.selection_set.node, |name, set| {
            Some(match name {
                "__typename" => leaf(set, RootField::Typename)?,
                "activeSession" => RootField::ActiveSession(fields(set, session_field)?),
                "me" => RootField::Me(fields(set, me_field)?),
                "activeChannel" => RootField::ActiveChannel(fields(set, channel_field)?),
                _ => return None,
            })
        })?;
        let shows_session_channel = root.iter().any(|(_, f)| match f {
            RootField::ActiveSession(set) => set
                .iter()
                .any(|(_, f)| matches!(f, SessionField::ActiveChannel(_))),
            _ => false,
        });
        Some(ReadPlan {
            name,
            root,
            shows_session_channel,
        })
    }

    /// Whether a request naming `operation_name` runs this plan's operation.
    pub fn runs(&self, operation_name: Option<&str>) -> bool {
        operation_name.is_none_or(|n| self.name.as_deref() == Some(n))
    }

    /// The response body, as async-graphql would write it; `None` when this request needs the
    /// executor after all (the session's active channel is not the request's).
    pub fn render(&self, id: &Identity<'_>) -> Option<Vec<u8>> {
        if self.shows_session_channel
            && id
                .session
                .and_then(|s| s.active_channel_id)
                .is_some_and(|c| c != id.channel.id)
        {
            return None;
        }
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"data\":");
        object(&mut out, &self.root, |out, field| match field {
            RootField::Typename => string(out, "Query"),
            RootField::ActiveSession(set) => match id.session {
                Some(s) => object(out, set, |out, f| write_session(out, f, s, id)),
                None => null(out),
            },
            RootField::Me(set) => match id.session.and_then(|s| s.user.as_deref()) {
                Some(u) => object(out, set, |out, f| write_me(out, f, u)),
                None => null(out),
            },
            RootField::ActiveChannel(set) => {
                object(out, set, |out, f| write_channel(out, f, id.channel))
            }
        });
        out.push(b'}');
        Some(out)
    }
}

/// Compiles each field of `set` with `field(name, its selection set)`; `None` when any field
/// is refused or has arguments or directives, or a response key repeats (the executor merges
/// repeated keys; plans leave that to it).
fn fields<F>(
    set: &SelectionSet,
    field: impl Fn(&str, &SelectionSet) -> Option<F>,
) -> Option<Fields<F>> {
    let mut out: Fields<F> = Vec::with_capacity(set.items.len());
    let mut keys: Vec<&str> = Vec::with_capacity(set.items.len());
    for item in &set.items {
        let Selection::Field(f) = &item.node else {
            return None;
        };
        let f = &f.node;
        if !f.arguments.is_empty() || !f.directives.is_empty() {
            return None;
        }
        let key = f.response_key().node.as_str();
        if keys.contains(&key) {
            return None;
        }
        keys.push(key);
        let compiled = field(f.name.node.as_str(), &f.selection_set.node)?;
        let mut written = serde_json::to_string(key).ok()?;
        written.push(':');
        out.push((written.into_boxed_str(), compiled));
    }
    (!out.is_empty()).then_some(out)
}

/// `value` for a field without a selection set.
fn leaf<F>(set: &SelectionSet, value: F) -> Option<F> {
    set.items.is_empty().then_some(value)
}

fn session_field(name: &str, set: &SelectionSet) -> Option<SessionField> {
    use SessionField::*;
    match name {
        "user" => return Some(User(fields(set, user_field)?)),
        "activeChannel" => return Some(ActiveChannel(fields(set, channel_field)?)),
        _ => {}
    }
    let f = match name {
        "__typename" => Typename,
        "id" => Id,
        "cursor" => Cursor,
        "kind" => Kind,
        "current" => Current,
        "invalidated" => Invalidated,
        "authenticationStrategy" => AuthenticationStrategy,
        "createdAt" => CreatedAt,
        "lastActiveAt" => LastActiveAt,
        "expiresAt" => ExpiresAt,
        "absoluteExpiresAt" => AbsoluteExpiresAt,
        "data" => Data,
        "dataVersion" => DataVersion,
        "ipAddress" => IpAddress,
        "userAgent" => UserAgent,
        _ => return None,
    };
    leaf(set, f)
}

fn user_field(name: &str, set: &SelectionSet) -> Option<UserField> {
    let f = match name {
        "__typename" => UserField::Typename,
        "id" => UserField::Id,
        "identifier" => UserField::Identifier,
        "verified" => UserField::Verified,
        _ => return None,
    };
    leaf(set, f)
}

fn me_field(name: &str, set: &SelectionSet) -> Option<MeField> {
    if name == "channels" {
        return Some(MeField::Channels(fields(set, grant_field)?));
    }
    let f = match name {
        "__typename" => MeField::Typename,
        "id" => MeField::Id,
        "identifier" => MeField::Identifier,
        "verified" => MeField::Verified,
        _ => return None,
    };
    leaf(set, f)
}

fn grant_field(name: &str, set: &SelectionSet) -> Option<GrantField> {
    let f = match name {
        "__typename" => GrantField::Typename,
        "channelId" => GrantField::ChannelId,
        "channelCode" => GrantField::ChannelCode,
        "channelToken" => GrantField::ChannelToken,
        "permissions" => GrantField::Permissions,
        _ => return None,
    };
    leaf(set, f)
}

fn channel_field(name: &str, set: &SelectionSet) -> Option<ChannelField> {
    let f = match name {
        "__typename" => ChannelField::Typename,
        "id" => ChannelField::Id,
        "code" => ChannelField::Code,
        "token" => ChannelField::Token,
        "createdAt" => ChannelField::CreatedAt,
        _ => return None,
    };
    leaf(set, f)
}

fn write_session(out: &mut Vec<u8>, field: &SessionField, s: &CachedSession, id: &Identity<'_>) {
    match field {
        SessionField::Typename => string(out, "Session"),
        SessionField::Id => gql_id(out, s.id),
        SessionField::Cursor => string(out, &encode_cursor(s.id)),
        SessionField::Kind => string(
            out,
            match s.kind {
                SessionKind::Anonymous => "ANONYMOUS",
                SessionKind::Authenticated => "AUTHENTICATED",
            },
        ),
        // The request's session is always the current one, and a cached session is live.
        SessionField::Current => out.extend_from_slice(b"true"),
        SessionField::Invalidated => out.extend_from_slice(b"false"),
        SessionField::User(set) => match s.user.as_deref() {
            Some(u) => object(out, set, |out, f| write_user(out, f, u)),
            None => null(out),
        },
        // `render` checked that a session channel is the request's.
        SessionField::ActiveChannel(set) => match s.active_channel_id {
            Some(_) => object(out, set, |out, f| write_channel(out, f, id.channel)),
            None => null(out),
        },
        SessionField::AuthenticationStrategy => {
            opt_string(out, s.authentication_strategy.as_deref())
        }
        SessionField::CreatedAt => timestamp(out, s.created_at),
        SessionField::LastActiveAt => timestamp(out, s.last_active()),
        SessionField::ExpiresAt => timestamp(
            out,
            id.lifetimes
                .expires_at(s.last_active(), s.absolute_expires_at),
        ),
        SessionField::AbsoluteExpiresAt => timestamp(out, s.absolute_expires_at),
        // The executor turns the map into its own value (keys in the map's order) and writes
        // it with serde_json: the same bytes as writing the map directly.
        SessionField::Data => match s.data.as_deref() {
            Some(data) => {
                let _ = serde_json::to_writer(&mut *out, data);
            }
            None => null(out),
        },
        SessionField::DataVersion => out.extend_from_slice(
            itoa::Buffer::new()
                .format(s.data_version.clamp(0, i32::MAX as i64))
                .as_bytes(),
        ),
        SessionField::IpAddress => opt_string(out, s.ip_address.as_deref()),
        SessionField::UserAgent => opt_string(out, s.user_agent.as_deref()),
    }
}

fn write_user(out: &mut Vec<u8>, field: &UserField, u: &CachedUser) {
    match field {
        UserField::Typename => string(out, "User"),
        UserField::Id => gql_id(out, u.id),
        UserField::Identifier => string(out, &u.identifier),
        UserField::Verified => boolean(out, u.verified),
    }
}

fn write_me(out: &mut Vec<u8>, field: &MeField, u: &CachedUser) {
    match field {
        MeField::Typename => string(out, "CurrentUser"),
        MeField::Id => gql_id(out, u.id),
        MeField::Identifier => string(out, &u.identifier),
        MeField::Verified => boolean(out, u.verified),
        MeField::Channels(set) => list(out, &u.channels, |out, grant| {
            object(out, set, |out, f| write_grant(out, f, grant))
        }),
    }
}

fn write_grant(out: &mut Vec<u8>, field: &GrantField, g: &ChannelGrant) {
    match field {
        GrantField::Typename => string(out, "ChannelPermissions"),
        GrantField::ChannelId => gql_id(out, g.channel_id),
        GrantField::ChannelCode => string(out, &g.code),
        GrantField::ChannelToken => string(out, &g.token),
        // Permission names are plain ASCII: nothing to escape.
        GrantField::Permissions => list(out, g.permissions.iter(), |out, p| {
            out.push(b'"');
            out.extend_from_slice(p.name().as_bytes());
            out.push(b'"');
        }),
    }
}

fn write_channel(out: &mut Vec<u8>, field: &ChannelField, c: &channel::Model) {
    match field {
        ChannelField::Typename => string(out, "Channel"),
        ChannelField::Id => gql_id(out, c.id),
        ChannelField::Code => string(out, &c.code),
        ChannelField::Token => string(out, &c.token),
        ChannelField::CreatedAt => timestamp(out, c.created_at),
    }
}

fn object<F>(out: &mut Vec<u8>, set: &Fields<F>, mut write: impl FnMut(&mut Vec<u8>, &F)) {
    out.push(b'{');
    for (i, (key, field)) in set.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(key.as_bytes());
        write(out, field);
    }
    out.push(b'}');
}

fn list<T>(
    out: &mut Vec<u8>,
    items: impl IntoIterator<Item = T>,
    mut write: impl FnMut(&mut Vec<u8>, T),
) {
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
    out.push(b']');
}

fn string(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail, and a str always serializes.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => null(out),
    }
}

fn gql_id(out: &mut Vec<u8>, n: i64) {
    out.push(b'"');
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.push(b'"');
}

fn timestamp(out: &mut Vec<u8>, ms: i64) {
    string(out, &rfc3339(ms));
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"null");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(query: &str) -> Option<ReadPlan> {
        ReadPlan::compile(&async_graphql::parser::parse_query(query).expect("parses"))
    }

    #[test]
    fn only_plain_fields_of_the_table_compile() {
        for query in [
            "{ __typename }",
            "{ activeSession { id kind user { id identifier } } }",
            "query Header { s: activeSession { i: id } me { channels { channelCode permissions } } }",
            "{ activeChannel { __typename id code token createdAt } }",
        ] {
            assert!(plan(query).is_some(), "{query}");
        }
        for query in [
            "{ activeSession { user { roles { code } } } }",
            "{ activeSession { activeOrder { id } } }",
            "{ sessionJwt { token } }",
            "{ activeSession { id @include(if: true) } }",
            "{ ... on Query { __typename } }",
            "{ ...F } fragment F on Query { __typename }",
            "query Q($x: Int) { __typename }",
            "{ a: __typename a: __typename }",
            "{ me { id } me { identifier } }",
            "mutation { logout }",
            "query One { __typename } query Other { __typename }",
            "{ activeSession { id(x: 1) } }",
        ] {
            assert!(plan(query).is_none(), "{query}");
        }
    }

    #[test]
    fn a_named_plan_runs_only_for_its_name() {
        let named = plan("query Header { __typename }").expect("compiles");
        assert!(named.runs(None) && named.runs(Some("Header")));
        assert!(!named.runs(Some("Other")));
        let anonymous = plan("{ __typename }").expect("compiles");
        assert!(anonymous.runs(None) && !anonymous.runs(Some("Header")));
    }

    #[test]
    fn renders_json_in_document_order_with_escaped_keys_and_values() {
        let channel = channel::Model {
            id: 1,
            code: "default \"main\"".into(),
            token: "tok".into(),
            created_at: 0,
        };
        let lifetimes = Lifetimes {
            idle_ms: 1_000,
            absolute_ms: 1_000,
            write_threshold_ms: 0,
            write_interval_ms: 1,
            token_ttl_ms: None,
            cache_ttl_ms: 1_000,
            grace_ms: 0,
        };
        let id = Identity {
            session: None,
            channel: &channel,
            lifetimes: &lifetimes,
        };
        let body = plan(
            "{ t: __typename activeSession { id } me { id } activeChannel { code createdAt id } }",
        )
        .expect("compiles")
        .render(&id)
        .expect("answers");
        assert_eq!(
            String::from_utf8(body).expect("utf-8"),
            r#"{"data":{"t":"Query","activeSession":null,"me":null,"activeChannel":{"code":"default \"main\"","createdAt":"1970-01-01T00:00:00.000Z","id":"1"}}}"#
        );
    }
}
