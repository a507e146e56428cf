//! Abuse limits and fuzzing: `mySessions` pages and caps its list, a request that runs past
//! `REQUEST_TIMEOUT` is answered `SERVICE_UNAVAILABLE`, and a bounded HTTP fuzz run (mutated
//! documents, random variables, odd headers, broken JSON, huge and deep inputs) never gets a
//! 5xx other than 503, always gets a well-formed answer, and leaves a healthy server.
//!
//! The fuzz run prints its seed; `FUZZ_SEED=<seed> cargo test --test it fuzz::` replays it, and
//! `FUZZ_REQUESTS=<n>` sends more than the suite's 3000.

use crate::helpers::{str_of, TestApp, Variant, ADMIN, ADMIN_PASSWORD};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

crate::all_caches!(my_sessions_pages_with_first_and_after);
crate::sqlite_only!(
    my_sessions_without_first_returns_at_most_100,
    slow_requests_time_out_with_service_unavailable,
    fuzzed_requests_never_break_the_server,
);

const MY_SESSIONS: &str =
    "query($first: Int, $after: String) { mySessions(first: $first, after: $after) { id cursor current } }";

/// `mySessions` of `token` as `(id, cursor)` pairs, checked to be newest first.
async fn my_sessions(app: &TestApp, token: &str, first: Value, after: Value) -> Vec<(i64, String)> {
    let r = app
        .gql_as(
            token,
            MY_SESSIONS,
            json!({ "first": first, "after": after }),
        )
        .await
        .ok();
    let list: Vec<(i64, String)> = r.data()["mySessions"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {}", r.body))
        .iter()
        .map(|s| (str_of(&s["id"]).parse().unwrap(), str_of(&s["cursor"])))
        .collect();
    assert!(
        list.windows(2).all(|w| w[0].0 > w[1].0),
        "newest first: {list:?}"
    );
    list
}

/// Every page of `mySessions` with `first`, following `after` until an empty page.
async fn walk_my_sessions(app: &TestApp, token: &str, first: usize) -> Vec<i64> {
    let mut all = vec![];
    let mut after = Value::Null;
    loop {
        let page = my_sessions(app, token, json!(first), after).await;
        assert!(page.len() <= first, "{} > {first}", page.len());
        let Some(last) = page.last() else {
            break;
        };
        after = json!(last.1);
        all.extend(page.iter().map(|(id, _)| *id));
    }
    all
}

async fn my_sessions_pages_with_first_and_after(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "alice", "alice-pw", &[]).await;
    let mut tokens = vec![];
    for _ in 0..5 {
        tokens.push(app.login("alice", "alice-pw").await.token);
    }
    let newest = tokens.last().unwrap();
    let all = my_sessions(&app, newest, Value::Null, Value::Null).await;
    assert_eq!(all.len(), 5, "{all:?}");
    let ids: Vec<i64> = all.iter().map(|(id, _)| *id).collect();

    // Pages of two: 2 + 2 + 1, then nothing, in the same order as the whole list.
    let first_page = my_sessions(&app, newest, json!(2), Value::Null).await;
    assert_eq!(first_page, all[..2].to_vec());
    let second = my_sessions(&app, newest, json!(2), json!(first_page[1].1)).await;
    assert_eq!(second, all[2..4].to_vec());
    let third = my_sessions(&app, newest, json!(2), json!(second[1].1)).await;
    assert_eq!(third, all[4..].to_vec());
    assert!(my_sessions(&app, newest, json!(2), json!(third[0].1))
        .await
        .is_empty());
    assert_eq!(walk_my_sessions(&app, newest, 3).await, ids);
    assert!(my_sessions(&app, newest, json!(0), Value::Null)
        .await
        .is_empty());

    // A revoked session drops out of the pages.
    let r = app
        .gql_as(
            newest,
            "mutation($id: ID!) { revokeMySession(id: $id) }",
            json!({ "id": ids[2].to_string() }),
        )
        .await
        .ok();
    assert_eq!(r.data()["revokeMySession"], true);
    let mut left = ids.clone();
    left.remove(2);
    assert_eq!(walk_my_sessions(&app, newest, 2).await, left);

    for (first, after) in [
        (json!(101), Value::Null),
        (json!(-1), Value::Null),
        (json!(2), json!("not a cursor")),
    ] {
        let r = app
            .gql_as(
                newest,
                MY_SESSIONS,
                json!({ "first": first, "after": after }),
            )
            .await;
        assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{}", r.body);
    }
    let r = app
        .gql(MY_SESSIONS, json!({ "first": 2, "after": Value::Null }))
        .await;
    assert_eq!(r.error_code(), Some("UNAUTHENTICATED"), "{}", r.body);
}

/// Without `first`, at most the 100 newest sessions; paging still reaches every live one.
async fn my_sessions_without_first_returns_at_most_100(v: Variant) {
    // More live sessions than the cap of the list, so the per-user session limit must be higher.
    let Some(app) = TestApp::spawn_with(v, |c| c.session_max_per_user = 200).await else {
        return;
    };
    let admin = app.admin_token().await;
    let alice = app.create_user(&admin, "alice", "alice-pw", &[]).await;
    let mut newest = String::new();
    for _ in 0..101 {
        newest = app.login("alice", "alice-pw").await.token;
    }
    let r = app
        .gql_as(
            &admin,
            "query($u: ID!) { sessions(filter: { userId: $u }, first: 0) { totalCount } }",
            json!({ "u": alice }),
        )
        .await
        .ok();
    let live = r.data()["sessions"]["totalCount"].as_u64().unwrap() as usize;
    assert!(live >= 100, "{live} live sessions");
    let capped = my_sessions(&app, &newest, Value::Null, Value::Null).await;
    assert_eq!(capped.len(), 100, "the list is capped");
    let walked = walk_my_sessions(&app, &newest, 100).await;
    assert_eq!(walked.len(), live, "paging reaches every live session");
    let capped: Vec<i64> = capped.iter().map(|(id, _)| *id).collect();
    assert_eq!(capped, walked[..100].to_vec(), "the cap keeps the newest");
}

/// A login spends far more than a millisecond in argon2, so with `REQUEST_TIMEOUT=1ms` it is
/// always cut off: the client gets 503 with `SERVICE_UNAVAILABLE` in the usual error shape.
async fn slow_requests_time_out_with_service_unavailable(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| c.request_timeout = Duration::from_millis(1)).await
    else {
        return;
    };
    let started = Instant::now();
    let r = app.try_login(ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.error_code(), Some("SERVICE_UNAVAILABLE"), "{}", r.body);
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        r.body
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(r.session_token().is_none());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(app.health().await.0, 200);
}

// ---------------------------------------------------------------------------------------------
// The fuzz run.

/// How a variable of a corpus document is generated when it is generated well-typed.
#[derive(Clone, Copy)]
enum Hint {
    Str,
    Identifier,
    Int,
    Bool,
    Id,
    Ids,
    Cursor,
    ChannelToken,
    Permissions,
    Kind,
    Object(&'static [(&'static str, Hint)]),
}

use Hint::*;

const SESSION_FILTER: Hint = Object(&[
    ("userId", Id),
    ("kind", Kind),
    ("channelId", Id),
    ("activeOrderId", Id),
    ("includeExpired", Bool),
    ("includeInvalidated", Bool),
]);

/// Real operations of the schema, with the hints of their variables.
const CORPUS: &[(&str, &[(&str, Hint)])] = &[
    ("{ activeSession { id kind current invalidated createdAt lastActiveAt expiresAt absoluteExpiresAt ipAddress userAgent authenticationStrategy cursor user { id identifier } activeChannel { id code } activeOrder { id code state } } }", &[]),
    ("{ me { id identifier verified channels { channelId channelCode channelToken permissions } } }", &[]),
    ("{ activeChannel { id code token createdAt } activeOrder { id code state user { id } channel { code } createdAt updatedAt } }", &[]),
    (MY_SESSIONS, &[("first", Int), ("after", Cursor)]),
    ("query($f: SessionFilter, $first: Int, $after: String) { sessions(filter: $f, first: $first, after: $after) { totalCount edges { cursor node { id kind user { identifier } } } nodes { id } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }", &[("f", SESSION_FILTER), ("first", Int), ("after", Cursor)]),
    ("query($id: ID!) { session(id: $id) { id kind invalidated user { id } } }", &[("id", Id)]),
    ("{ sessionStats { anonymous authenticated expiredAwaitingCleanup invalidated } }", &[]),
    ("query($first: Int, $after: String) { users(first: $first, after: $after) { totalCount nodes { id identifier verified roles { code permissions channels { code } } createdAt lastLoginAt activeSessionCount } pageInfo { endCursor hasNextPage } } }", &[("first", Int), ("after", Cursor)]),
    ("query($id: ID!) { user(id: $id) { id identifier roles { id } } }", &[("id", Id)]),
    ("{ roles { id code description permissions channels { id } } channels { id code token } }", &[]),
    ("{ __typename }", &[]),
    ("query A { activeChannel { code } } query B { me { id } }", &[]),
    ("{ __schema { queryType { name } types { name kind } } }", &[]),
    ("fragment S on Session { id kind } { activeSession { ...S } }", &[]),
    ("query($skip: Boolean!) { activeSession @skip(if: $skip) { id } me @include(if: $skip) { id } }", &[("skip", Bool)]),
    ("mutation { createAnonymousSession { id kind } }", &[]),
    ("mutation($u: String!, $p: String!, $r: Boolean) { login(username: $u, password: $p, rememberMe: $r) { __typename ... on AuthenticationSuccess { user { id } session { id } } ... on InvalidCredentialsError { errorCode message } ... on NotVerifiedError { errorCode } ... on TooManyAttemptsError { retryAfterSeconds } } }", &[("u", Identifier), ("p", Str), ("r", Bool)]),
    ("mutation { login(username: \"nobody\", password: \"wrong\") { __typename } }", &[]),
    ("mutation { logout }", &[]),
    ("mutation { logoutEverywhere }", &[]),
    ("mutation($t: String) { refreshSession(refreshToken: $t) { __typename ... on InvalidRefreshTokenError { reason errorCode message } ... on AuthenticationSuccess { session { id } } } }", &[("t", ChannelToken)]),
    ("mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }", &[("c", Str), ("n", Str)]),
    ("mutation($id: ID!) { revokeMySession(id: $id) }", &[("id", Id)]),
    ("mutation($t: String!) { setActiveChannel(token: $t) { id activeChannel { code } } }", &[("t", ChannelToken)]),
    ("mutation { createOrder { id code state } }", &[]),
    ("mutation($id: ID!) { setActiveOrder(orderId: $id) { id activeOrder { id } } }", &[("id", Id)]),
    ("mutation { unsetActiveOrder { id } }", &[]),
    ("mutation { placeOrder { id state } }", &[]),
    ("mutation($id: ID!) { revokeSession(id: $id) }", &[("id", Id)]),
    ("mutation($id: ID!) { revokeSessionsByUser(userId: $id) }", &[("id", Id)]),
    ("mutation($id: ID!) { revokeSessionsByActiveOrder(orderId: $id) }", &[("id", Id)]),
    ("mutation { cleanUpExpiredSessions }", &[]),
    ("mutation { clearSessionCache }", &[]),
    ("mutation($i: CreateUserInput!) { createUser(input: $i) { id identifier roles { code } } }", &[("i", Object(&[("identifier", Identifier), ("password", Str), ("verified", Bool), ("roleIds", Ids)]))]),
    ("mutation($i: UpdateUserInput!) { updateUser(input: $i) { id verified } }", &[("i", Object(&[("id", Id), ("identifier", Identifier), ("verified", Bool), ("password", Str)]))]),
    ("mutation($id: ID!) { deleteUser(id: $id) }", &[("id", Id)]),
    ("mutation($i: CreateRoleInput!) { createRole(input: $i) { id code permissions } }", &[("i", Object(&[("code", Str), ("description", Str), ("permissions", Permissions), ("channelIds", Ids)]))]),
    ("mutation($i: UpdateRoleInput!) { updateRole(input: $i) { id permissions } }", &[("i", Object(&[("id", Id), ("description", Str), ("permissions", Permissions), ("channelIds", Ids)]))]),
    ("mutation($u: ID!, $r: ID!) { assignRole(userId: $u, roleId: $r) { id } }", &[("u", Id), ("r", Id)]),
    ("mutation($u: ID!, $r: ID!) { removeRole(userId: $u, roleId: $r) { id } }", &[("u", Id), ("r", Id)]),
    ("mutation($i: CreateChannelInput!) { createChannel(input: $i) { id code token } }", &[("i", Object(&[("code", Str), ("token", ChannelToken)]))]),
    ("mutation { createUser(input: { identifier: \"fz\", password: \"fuzz-password\", verified: false, roleIds: [\"9\"] }) { id } }", &[]),
    ("mutation { createRole(input: { code: \"fz\", permissions: [READ_SESSION, WRITE_ORDER], channelIds: [\"8\"] }) { id } }", &[]),
];

/// Names a mutation may put in place of another.
const NAMES: &[&str] = &[
    "activeSession",
    "me",
    "activeChannel",
    "activeOrder",
    "mySessions",
    "sessions",
    "session",
    "sessionStats",
    "users",
    "user",
    "roles",
    "channels",
    "login",
    "logout",
    "createUser",
    "updateUser",
    "deleteUser",
    "createRole",
    "assignRole",
    "revokeSession",
    "createOrder",
    "placeOrder",
    "setActiveChannel",
    "refreshSession",
    "changePassword",
    "id",
    "kind",
    "user",
    "roles",
    "permissions",
    "token",
    "code",
    "edges",
    "node",
    "nodes",
    "cursor",
    "totalCount",
    "query",
    "mutation",
    "subscription",
    "fragment",
    "on",
    "true",
    "false",
    "null",
    "__typename",
    "__schema",
    "__type",
    "Session",
    "User",
    "Query",
    "Mutation",
    "String",
    "Int",
    "ID",
    "Boolean",
    "DateTime",
    "SUPER_ADMIN",
    "READ_SESSION",
    "ANONYMOUS",
    "skip",
    "include",
    "deprecated",
    "_",
    "__proto__",
    "constructor",
    "x",
    "input",
    "filter",
    "first",
    "after",
];

/// Characters a mutation may insert.
const ODD_CHARS: &[char] = &[
    '{', '}', '(', ')', '[', ']', ':', '$', '!', '@', '#', '"', '\\', ' ', '\n', ',', '.', '|',
    '&', '=', '…', '\u{0}', '\u{feff}', '\u{202e}', 'é', '😀', '\t', '\r', '0', '9', '-', 'e',
];

/// Session tokens of a phase: `keep` (the fuzzing admin, a user, an anonymous visitor) are
/// never sent with an operation that ends its session; `throwaway` ones are.
struct Tokens {
    keep: Vec<String>,
    throwaway: Vec<String>,
}

/// The server's view of the world the generator draws from.
struct Known {
    /// Ids of rows the fuzz may touch (never the superadmin or the fuzzing admin).
    ids: Vec<String>,
    channel_token: String,
}

fn random_string(rng: &mut StdRng) -> String {
    let len = *[0usize, 1, 2, 3, 8, 20, 43, 64, 200, 1000, 5000]
        .choose(rng)
        .unwrap();
    let s: String = match rng.random_range(0..5) {
        0 => (0..len)
            .map(|_| char::from(rng.random_range(b'a'..=b'z')))
            .collect(),
        1 => (0..len)
            .map(|_| char::from(rng.random_range(0x20u8..0x7f)))
            .collect(),
        2 => (0..len)
            .map(|_| rng.random_range('\u{0}'..='\u{10ffff}'))
            .collect(),
        3 => (0..len).map(|_| *ODD_CHARS.choose(rng).unwrap()).collect(),
        _ => "x".repeat(len * 20),
    };
    // "1" is the superadmin's id: never aim an `updateUser` password change at it.
    if s == "1" {
        "11".into()
    } else {
        s
    }
}

fn random_id(rng: &mut StdRng, known: &Known) -> String {
    match rng.random_range(0..5) {
        0 | 1 => known.ids.choose(rng).unwrap().clone(),
        2 => rng.random_range(1000..1_000_000i64).to_string(),
        _ => [
            "0",
            "-1",
            "abc",
            "",
            " 2",
            "2.5",
            "0x10",
            "99999999999999999999999",
            "9223372036854775807",
            "-9223372036854775808",
            "２",
        ]
        .choose(rng)
        .unwrap()
        .to_string(),
    }
}

fn random_cursor(rng: &mut StdRng) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    match rng.random_range(0..4) {
        0 => b64.encode(format!("c:{}", rng.random_range(-5i64..100_000))),
        1 => b64.encode(format!("c:{}", rng.random::<i64>())),
        2 => b64.encode(
            (0..rng.random_range(0..30))
                .map(|_| rng.random::<u8>())
                .collect::<Vec<u8>>(),
        ),
        _ => random_string(rng),
    }
}

/// Any JSON value, `depth` levels deep at most.
fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth == 0 { 6 } else { 9 }) {
        0 => Value::Null,
        1 => json!(rng.random_bool(0.5)),
        // No 1: an ID may be given as a number, and 1 is the superadmin's.
        2 => json!(*[
            0i64,
            7,
            -1,
            20,
            100,
            101,
            i32::MAX as i64 + 1,
            i64::MAX,
            i64::MIN
        ]
        .choose(rng)
        .unwrap()),
        3 => json!(*[0.5f64, -0.0, 1e308, -1e308, 3.0, f64::EPSILON]
            .choose(rng)
            .unwrap()),
        4 | 5 => json!(random_string(rng)),
        6 => Value::Array(
            (0..rng.random_range(0..5))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.random_range(0..5) {
                let key = if rng.random_bool(0.5) {
                    NAMES.choose(rng).unwrap().to_string()
                } else {
                    random_string(rng)
                };
                m.insert(key, random_value(rng, depth - 1));
            }
            Value::Object(m)
        }
    }
}

/// A value for `hint`: usually of the right type, sometimes anything at all.
fn value_for(rng: &mut StdRng, hint: Hint, known: &Known) -> Value {
    if rng.random_bool(0.2) {
        return random_value(rng, 3);
    }
    match hint {
        Str => json!(random_string(rng)),
        Identifier => json!(
            *["alice", "Alice ", "ALICE", "nobody", "fz", "ops-ghost", ""]
                .choose(rng)
                .unwrap()
        ),
        Int => json!(*[0i64, 1, 2, 20, 100, 101, -1, i32::MAX as i64, i64::MAX]
            .choose(rng)
            .unwrap()),
        Bool => json!(rng.random_bool(0.5)),
        Id => json!(random_id(rng, known)),
        Ids => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| json!(random_id(rng, known)))
                .collect(),
        ),
        Cursor => json!(random_cursor(rng)),
        ChannelToken => match rng.random_range(0..3) {
            0 => json!(known.channel_token),
            1 => json!(session_server::token::generate().token),
            _ => json!(random_string(rng)),
        },
        Permissions => Value::Array(
            (0..rng.random_range(0..5))
                .map(|_| {
                    json!(*[
                        "READ_SESSION",
                        "REVOKE_SESSION",
                        "READ_USER",
                        "WRITE_USER",
                        "READ_CHANNEL",
                        "WRITE_CHANNEL",
                        "READ_ORDER",
                        "WRITE_ORDER",
                        "SUPER_ADMIN",
                        "NOPE",
                        "read_session",
                    ]
                    .choose(rng)
                    .unwrap())
                })
                .collect(),
        ),
        Kind => json!(*["ANONYMOUS", "AUTHENTICATED", "OTHER", "anonymous"]
            .choose(rng)
            .unwrap()),
        Object(fields) => {
            let mut m = Map::new();
            for (name, hint) in fields {
                if rng.random_bool(0.85) {
                    m.insert(name.to_string(), value_for(rng, *hint, known));
                }
            }
            if rng.random_bool(0.1) {
                m.insert(random_string(rng), random_value(rng, 2));
            }
            Value::Object(m)
        }
    }
}

/// A corpus document, left alone or with a few characters deleted, duplicated, swapped or
/// inserted, a name replaced, a piece repeated, or the end cut off.
fn mutate_document(rng: &mut StdRng, doc: &str) -> String {
    let mut chars: Vec<char> = doc.chars().collect();
    let edits = match rng.random_range(0..10) {
        0..=4 => 0,
        5..=7 => 1,
        _ => rng.random_range(2..=4),
    };
    for _ in 0..edits {
        if chars.is_empty() {
            break;
        }
        let at = rng.random_range(0..chars.len());
        match rng.random_range(0..7) {
            0 => {
                chars.remove(at);
            }
            1 => chars.insert(at, chars[at]),
            2 if at + 1 < chars.len() => chars.swap(at, at + 1),
            3 => chars.insert(at, *ODD_CHARS.choose(rng).unwrap()),
            4 => {
                // Replace the name that starts at or after `at`.
                let is_name = |c: &char| c.is_ascii_alphanumeric() || *c == '_';
                let Some(start) = (at..chars.len())
                    .find(|&i| is_name(&chars[i]) && (i == 0 || !is_name(&chars[i - 1])))
                else {
                    continue;
                };
                let end = (start..chars.len())
                    .find(|&i| !is_name(&chars[i]))
                    .unwrap_or(chars.len());
                let name: String = if rng.random_bool(0.05) {
                    "n".repeat(2000)
                } else {
                    NAMES.choose(rng).unwrap().to_string()
                };
                chars.splice(start..end, name.chars());
            }
            5 => {
                let end = (at + rng.random_range(1..40)).min(chars.len());
                let piece: Vec<char> = chars[at..end].to_vec();
                for _ in 0..rng.random_range(1..20) {
                    chars.splice(end..end, piece.iter().copied());
                }
            }
            _ => chars.truncate(at),
        }
    }
    chars.into_iter().collect()
}

/// One generated request.
struct FuzzRequest {
    what: &'static str,
    get: bool,
    /// The query string of a GET.
    query: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Vec<u8>,
    /// Bodies over the limit: the server may answer before reading them all and close the
    /// connection, which the client may see as a reset while still sending.
    oversized: bool,
}

/// Header value bytes: visible ASCII, obs-text (non-UTF-8) and tabs, no control characters.
fn header_bytes(rng: &mut StdRng, len: usize) -> HeaderValue {
    let bytes: Vec<u8> = (0..len)
        .map(|_| match rng.random_range(0..4) {
            0 => rng.random_range(0x80u8..=0xff),
            1 => b'\t',
            _ => rng.random_range(0x20u8..0x7f),
        })
        .collect();
    HeaderValue::from_bytes(&bytes).unwrap_or(HeaderValue::from_static("x"))
}

fn header(name: &'static str, value: impl AsRef<str>) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(name),
        HeaderValue::from_str(value.as_ref()).unwrap_or(HeaderValue::from_static("x")),
    )
}

/// Headers of an odd request: garbage tokens, malformed cookies, huge or non-UTF-8 values.
fn odd_headers(
    rng: &mut StdRng,
    tokens: &[String],
    known: &Known,
) -> Vec<(HeaderName, HeaderValue)> {
    let token = tokens.choose(rng).cloned().unwrap_or_default();
    let mut out = vec![];
    for _ in 0..rng.random_range(1..4) {
        let h = match rng.random_range(0..12) {
            0 => header(
                "authorization",
                *[
                    "Bearer",
                    "Bearer ",
                    "Bearer  ",
                    "Basic dXNlcjpwYXNz",
                    "Token abc",
                    "bearer",
                    "Bearer a b c",
                ]
                .choose(rng)
                .unwrap(),
            ),
            1 => header("authorization", format!("bearer {token}")),
            2 => header(
                "authorization",
                format!(
                    "Bearer {}",
                    [
                        format!("{token}x"),
                        token.chars().rev().collect(),
                        "A".repeat(8000),
                        format!("{token}, Bearer {token}")
                    ]
                    .choose(rng)
                    .unwrap()
                ),
            ),
            3 => (
                HeaderName::from_static("authorization"),
                header_bytes(rng, 60),
            ),
            4 => header(
                "cookie",
                [
                    "session".to_string(),
                    "session=".into(),
                    "session=;".into(),
                    "=".into(),
                    ";;;".into(),
                    "session=\"abc".into(),
                    format!("session={token}; session=garbage"),
                    format!("session={token}=extra"),
                    format!("session=\"{token}\""),
                    format!("a=b; session={token}; c"),
                    "session_refresh=garbage".into(),
                ]
                .choose(rng)
                .unwrap()
                .clone(),
            ),
            5 => header(
                "cookie",
                (0..300)
                    .map(|i| format!("c{i}=v{i}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            6 => (HeaderName::from_static("cookie"), header_bytes(rng, 80)),
            7 => header(
                "channel-token",
                match rng.random_range(0..4) {
                    0 => "t".repeat(rng.random_range(1000..20_000)),
                    1 => known.channel_token.clone(),
                    2 => String::new(),
                    _ => random_string(rng)
                        .chars()
                        .filter(|c| c.is_ascii_graphic())
                        .collect(),
                },
            ),
            8 => (
                HeaderName::from_static("channel-token"),
                header_bytes(rng, 40),
            ),
            9 => (HeaderName::from_static("user-agent"), {
                let len = rng.random_range(0..5000);
                header_bytes(rng, len)
            }),
            10 => header(
                "x-forwarded-for",
                *[
                    "garbage",
                    "1.2.3.4, , ,",
                    "::1",
                    "999.1.1.1",
                    "1.2.3.4, 5.6.7.8",
                ]
                .choose(rng)
                .unwrap(),
            ),
            _ => header(
                "accept",
                *["text/html", "*/*", "application/xml", ""]
                    .choose(rng)
                    .unwrap(),
            ),
        };
        out.push(h);
    }
    out
}

/// A well-formed GraphQL request body: a (mutated) corpus document with (random) variables.
/// Whether the second element is true: the operation ends the session that sends it.
fn graphql_body(rng: &mut StdRng, known: &Known) -> (Value, bool) {
    let (doc, vars) = CORPUS.choose(rng).unwrap();
    // A login replaces the presented session; these end it or its siblings.
    let ends = ["login", "logout", "changePassword", "revokeMySession"]
        .iter()
        .any(|name| doc.contains(name));
    let query = mutate_document(rng, doc);
    let mut variables = Map::new();
    for (name, hint) in vars.iter() {
        if rng.random_bool(0.9) {
            variables.insert(name.to_string(), value_for(rng, *hint, known));
        }
    }
    if rng.random_bool(0.05) {
        variables.insert(random_string(rng), random_value(rng, 3));
    }
    let mut body = json!({ "query": query, "variables": variables });
    if rng.random_bool(0.1) {
        body["operationName"] = match rng.random_range(0..3) {
            0 => json!("A"),
            1 => json!(random_string(rng)),
            _ => random_value(rng, 1),
        };
    }
    if rng.random_bool(0.05) {
        body["variables"] = random_value(rng, 2);
    }
    (body, ends)
}

/// Deep nesting: selections, list and object values, variable types, JSON.
fn deep_body(rng: &mut StdRng) -> (&'static str, Vec<u8>) {
    let n = *[20usize, 100, 1000, 10_000, 50_000].choose(rng).unwrap();
    let query = match rng.random_range(0..6) {
        0 => format!("{}{}", "{ activeSession ".repeat(n), "}".repeat(n)),
        1 => format!(
            "{{ sessions(filter: {{ userId: {}1{} }}) {{ totalCount }} }}",
            "[".repeat(n),
            "]".repeat(n)
        ),
        2 => format!(
            "{{ sessions(filter: {}{}) {{ totalCount }} }}",
            "{ userId: ".repeat(n),
            " }".repeat(n)
        ),
        3 => format!(
            "query($v: {}Int{}) {{ __typename }}",
            "[".repeat(n),
            "]".repeat(n)
        ),
        4 => {
            let n = n.min(2000);
            let mut q = String::from("{ ...F0 }");
            for i in 0..n {
                q.push_str(&format!(
                    " fragment F{i} on Query {{ ...F{} }}",
                    (i + 1) % n
                ));
            }
            q
        }
        _ => {
            let body = format!(
                "{{\"query\":\"query($v: String) {{ __typename }}\",\"variables\":{{\"v\":{}1{}}}}}",
                "[".repeat(n),
                "]".repeat(n)
            );
            return ("deep JSON", body.into_bytes());
        }
    };
    (
        "deep document",
        json!({ "query": query }).to_string().into_bytes(),
    )
}

/// Bodies that are not a GraphQL request in JSON.
fn broken_body(rng: &mut StdRng, known: &Known) -> Vec<u8> {
    let valid = graphql_body(rng, known).0.to_string();
    match rng.random_range(0..14) {
        0 => valid.as_bytes()[..rng.random_range(0..valid.len())].to_vec(),
        1 => (0..rng.random_range(0..500)).map(|_| rng.random::<u8>()).collect(),
        2 => format!("\u{feff}{valid}").into_bytes(),
        3 => format!("{valid} trailing").into_bytes(),
        4 => format!("[{valid}, {valid}]").into_bytes(),
        5 => br#"{"query": 5}"#.to_vec(),
        6 => br#"{"query": null, "variables": {}}"#.to_vec(),
        7 => br#"{"query": "{ __typename }", "variables": "{}"}"#.to_vec(),
        8 => br#"{"query": "{ __typename }", "variables": [1, 2]}"#.to_vec(),
        9 => br#"{"query": "\ud800 { __typename }"}"#.to_vec(),
        10 => br#"{"query": "{ __typename }", "query": "mutation { logout }"}"#.to_vec(),
        11 => br#"{"query": "{ sessions(first: 1e999999) { totalCount } }", "n": 1e999999}"#.to_vec(),
        12 => br#"{"query": "{ __typename }", "extensions": {"persistedQuery": {"version": 1, "sha256Hash": "abc"}}}"#.to_vec(),
        _ => ["", "null", "{}", "[]", "\"str\"", "0"].choose(rng).unwrap().as_bytes().to_vec(),
    }
}

fn generate(rng: &mut StdRng, tokens: &Tokens, known: &Known) -> FuzzRequest {
    let json_ct = header("content-type", "application/json");
    let mut req = FuzzRequest {
        what: "document",
        get: false,
        query: None,
        headers: vec![json_ct.clone()],
        body: vec![],
        oversized: false,
    };
    // Operations that end their session only ever get a throwaway one, so the fuzzing admin's
    // and user's sessions last the whole phase.
    let mut ends = false;
    match rng.random_range(0..100) {
        0..=54 => {
            let (body, e) = graphql_body(rng, known);
            req.body = body.to_string().into_bytes();
            ends = e;
        }
        55..=64 => {
            req.what = "broken JSON";
            req.body = broken_body(rng, known);
        }
        65..=74 => {
            req.what = "odd headers";
            let (body, e) = graphql_body(rng, known);
            let pool = if e { &tokens.throwaway } else { &tokens.keep };
            req.headers.extend(odd_headers(rng, pool, known));
            req.body = body.to_string().into_bytes();
            ends = e;
        }
        75..=79 => {
            req.what = "content type";
            req.headers.retain(|(n, _)| n != "content-type");
            let ct = match rng.random_range(0..12) {
                0 => Some(header("content-type", "text/plain")),
                1 => Some(header("content-type", "application/x-www-form-urlencoded")),
                2 => Some(header("content-type", "multipart/form-data; boundary=x")),
                3 => Some(header("content-type", "application/json; charset=utf-8")),
                4 => Some(header("content-type", "APPLICATION/JSON")),
                5 => Some(header("content-type", "application/json;;;")),
                6 => Some(header("content-type", "application/jsonp")),
                7 => Some(header("content-type", "application/graphql")),
                8 => Some(header("content-type", "application/graphql-response+json")),
                9 => Some(header("content-type", "")),
                10 => Some((
                    HeaderName::from_static("content-type"),
                    header_bytes(rng, 30),
                )),
                _ => None,
            };
            req.headers.extend(ct);
            let (body, e) = graphql_body(rng, known);
            req.body = body.to_string().into_bytes();
            ends = e;
        }
        80..=87 => {
            req.what = "GET";
            req.get = true;
            let (body, _) = graphql_body(rng, known);
            let enc = |s: &str| {
                reqwest::Url::parse_with_params("http://x/", [("v", s)])
                    .ok()
                    .and_then(|u| u.query().map(|q| q[2..].to_string()))
                    .unwrap_or_default()
            };
            let mut q = format!("query={}", enc(body["query"].as_str().unwrap_or("")));
            match rng.random_range(0..6) {
                0 => q.push_str(&format!(
                    "&variables={}",
                    enc(&body["variables"].to_string())
                )),
                1 => q.push_str("&variables=%7Bnot%20json"),
                2 => q.push_str(&format!("&operationName={}", enc(&random_string(rng)))),
                3 => q = "query=%FF%FE%00&query=%%".into(),
                4 => {
                    q = ["", "query", "&&&=", "variables={}", "query="]
                        .choose(rng)
                        .unwrap()
                        .to_string()
                }
                _ => {}
            }
            // Keep URLs within what the client sends (it refuses very long ones).
            if q.len() > 16 * 1024 {
                q = format!("query={}", enc(&mutate_document(rng, CORPUS[0].0)));
            }
            req.query = Some(q);
            req.body = vec![];
        }
        88..=91 => {
            req.what = "huge body";
            let size = rng.random_range(200 * 1024..1024 * 1024);
            req.oversized = size > 250 * 1024;
            req.body = match rng.random_range(0..4) {
                0 => json!({ "query": "mutation($u: String!) { login(username: $u, password: \"x\") { __typename } }", "variables": { "u": "u".repeat(size) } })
                    .to_string()
                    .into_bytes(),
                1 => json!({ "query": "{ __typename ".to_string() + &" __typename".repeat(size / 11) + " }" })
                    .to_string()
                    .into_bytes(),
                2 => json!({ "query": "{ activeSession { id } }", "variables": { "pad": random_value(rng, 1), "big": "p".repeat(size) } })
                    .to_string()
                    .into_bytes(),
                _ => (0..size).map(|_| rng.random::<u8>()).collect(),
            };
            req.oversized = req.body.len() > 250 * 1024;
        }
        92..=96 => {
            let (what, body) = deep_body(rng);
            req.what = what;
            req.oversized = body.len() > 250 * 1024;
            req.body = body;
        }
        _ => {
            req.what = "many operations";
            let ops: String = (0..rng.random_range(2..300))
                .map(|i| format!("query Q{i} {{ activeChannel {{ code }} }} "))
                .collect();
            req.body =
                json!({ "query": ops, "operationName": format!("Q{}", rng.random_range(0..400)) })
                    .to_string()
                    .into_bytes();
        }
    }
    // Usually a real session (anonymous, a plain user, an admin), sometimes none.
    let pool = if ends {
        &tokens.throwaway
    } else {
        &tokens.keep
    };
    if let Some(token) = pool.choose(rng).filter(|_| rng.random_bool(0.75)) {
        req.headers.push(if rng.random_bool(0.7) {
            header("authorization", format!("Bearer {token}"))
        } else {
            header("cookie", format!("session={token}"))
        });
    }
    req
}

const CODES: &[&str] = &[
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "BAD_USER_INPUT",
    "NOT_FOUND",
    "RATE_LIMITED",
    "SERVICE_UNAVAILABLE",
    "CONFLICT",
];

/// Whether a response is a well-formed answer: what it answered (`data`, the first error
/// code, or `html`), or the reason when it is not.
fn check(status: u16, content_type: Option<&str>, body: &[u8]) -> Result<String, String> {
    if status >= 500 && status != 503 {
        return Err(format!("status {status}"));
    }
    if content_type.is_some_and(|ct| ct.starts_with("text/html")) {
        // GraphiQL, for a GET that asked for HTML.
        return if status == 200 {
            Ok("html".into())
        } else {
            Err(format!("HTML with status {status}"))
        };
    }
    if content_type != Some("application/json") {
        return Err(format!("content type {content_type:?}"));
    }
    let body: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Some(obj) = body.as_object() else {
        return Err("the body is not an object".into());
    };
    if !obj.contains_key("data") && !obj.contains_key("errors") {
        return Err("neither data nor errors".into());
    }
    let mut answer = "data".to_string();
    if let Some(errors) = obj.get("errors") {
        let errors = errors.as_array().ok_or("errors is not a list")?;
        if errors.is_empty() {
            return Err("an empty errors list".into());
        }
        for e in errors {
            if e["message"].as_str().is_none_or(str::is_empty) {
                return Err(format!("an error without a message: {e}"));
            }
            let code = e["extensions"]["code"].as_str().unwrap_or("");
            if !CODES.contains(&code) {
                return Err(format!("an error with code {code:?}: {e}"));
            }
        }
        answer = errors[0]["extensions"]["code"]
            .as_str()
            .unwrap_or("")
            .into();
    } else if status != 200 {
        return Err(format!("status {status} without errors"));
    }
    Ok(answer)
}

/// Logs in, or `None` when the fuzz has changed or deleted the account meanwhile.
async fn try_token(app: &TestApp, user: &str, password: &str) -> Option<String> {
    app.try_login(user, password).await.session_token()
}

#[derive(Default)]
struct Tally {
    by_status: BTreeMap<u16, usize>,
    /// `data`, or the first error's code.
    answers: BTreeMap<String, usize>,
    resets: usize,
    failures: Vec<String>,
}

async fn fuzzed_requests_never_break_the_server(v: Variant) {
    const PER_PHASE: usize = 200;
    const WORKERS: usize = 8;
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.login_max_attempts = 1_000_000;
        c.login_max_attempts_per_address = 1_000_000;
    })
    .await
    else {
        return;
    };
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        });
    // FUZZ_REQUESTS runs a longer campaign by hand; the suite sends 3000.
    let requests: usize = std::env::var("FUZZ_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let phases = requests.div_ceil(PER_PHASE);
    eprintln!("fuzz seed: {seed} (FUZZ_SEED={seed} replays this run)");
    let mut rng = StdRng::seed_from_u64(seed);

    // An admin with every permission but SUPER_ADMIN, a plain user and a second channel.
    let admin = app.admin_token().await;
    let every: Vec<&str> = [
        "READ_SESSION",
        "REVOKE_SESSION",
        "READ_USER",
        "WRITE_USER",
        "READ_CHANNEL",
        "WRITE_CHANNEL",
        "READ_ORDER",
        "WRITE_ORDER",
    ]
    .to_vec();
    let role = app.create_role(&admin, "ops", &every).await;
    let ops = app
        .create_user(&admin, "ops", "ops-password", &[&role])
        .await;
    app.create_user(&admin, "alice", "alice-password", &[])
        .await;
    let (_, channel_token) = app.create_channel(&admin, "eu").await;
    // Ids are small integers shared by every table: aim at the rows just made (and sessions
    // and orders), never at the superadmin's or the fuzzing admin's id, which would let the
    // fuzz revoke its own admin or (before the escalation rules) change the superadmin.
    let known = Known {
        ids: (2..=15)
            .map(|n: i64| n.to_string())
            .filter(|id| *id != ops)
            .collect(),
        channel_token,
    };

    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    for phase in 0..phases {
        // Fresh sessions each phase: the fuzz may have logged them out or revoked them.
        let mut tokens = Tokens {
            keep: vec![],
            throwaway: vec![],
        };
        tokens
            .keep
            .extend(try_token(&app, "ops", "ops-password").await);
        tokens
            .keep
            .extend(try_token(&app, "alice", "alice-password").await);
        for pool in [&mut tokens.keep, &mut tokens.throwaway] {
            let r = app
                .gql("mutation { createAnonymousSession { id } }", json!({}))
                .await;
            pool.extend(r.session_token());
        }
        let requests: Vec<FuzzRequest> = (0..PER_PHASE)
            .map(|_| generate(&mut rng, &tokens, &known))
            .collect();
        let queue = Arc::new(Mutex::new(requests));
        let mut workers = vec![];
        for _ in 0..WORKERS {
            let queue = queue.clone();
            let tally = tally.clone();
            let client = app.client.clone();
            let url = app.url("/graphql");
            workers.push(tokio::spawn(async move {
                loop {
                    let Some(req) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    send_and_check(&client, &url, req, &tally).await;
                }
            }));
        }
        for w in workers {
            w.await.expect("a fuzz worker");
        }
        let t = tally.lock().unwrap();
        eprintln!(
            "fuzz phase {phase}: {:?} by status after {:.1} s",
            t.by_status,
            started.elapsed().as_secs_f64()
        );
        assert!(
            t.failures.is_empty(),
            "seed {seed}: {} bad answers, e.g.:\n{}",
            t.failures.len(),
            t.failures
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    {
        let t = tally.lock().unwrap();
        eprintln!(
            "fuzz: {} requests in {:.1} s, {} connection resets on oversized bodies; answers: {:?}",
            phases * PER_PHASE,
            started.elapsed().as_secs_f64(),
            t.resets,
            t.answers
        );
    }

    // Still healthy and still serving sessions.
    assert_eq!(app.health().await.0, 200, "seed {seed}");
    let login = app.login(ADMIN, ADMIN_PASSWORD).await;
    let session = app.active_session(&login.token).await;
    assert_eq!(session["user"]["identifier"], ADMIN, "seed {seed}");
    let r = app.gql("{ __typename }", json!({})).await.ok();
    assert_eq!(r.data()["__typename"], "Query");
}

async fn send_and_check(
    client: &reqwest::Client,
    url: &str,
    req: FuzzRequest,
    tally: &Mutex<Tally>,
) {
    let mut builder = if req.get {
        let mut u = reqwest::Url::parse(url).unwrap();
        u.set_query(req.query.as_deref());
        client.get(u)
    } else {
        client.post(url).body(req.body.clone())
    };
    for (name, value) in &req.headers {
        builder = builder.header(name, value.clone());
    }
    let outcome = match builder.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match resp.bytes().await {
                Ok(body) => Ok((status, check(status, ct.as_deref(), &body), body)),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let mut t = tally.lock().unwrap();
    match outcome {
        Ok((status, verdict, body)) => {
            *t.by_status.entry(status).or_default() += 1;
            if let Ok(answer) = &verdict {
                *t.answers.entry(answer.clone()).or_default() += 1;
            }
            if let Err(why) = verdict {
                let shown: String = String::from_utf8_lossy(&req.body)
                    .chars()
                    .take(300)
                    .collect();
                let answer: String = String::from_utf8_lossy(&body).chars().take(300).collect();
                t.failures.push(format!(
                    "{} ({}): {why}\n  request: {:?} {shown}\n  answer: {answer}",
                    req.what,
                    if req.get { "GET" } else { "POST" },
                    req.query,
                ));
            }
        }
        // The server may answer an oversized body before reading it and close the connection.
        Err(_) if req.oversized => t.resets += 1,
        Err(e) => t.failures.push(format!("{}: no answer: {e}", req.what)),
    }
}
