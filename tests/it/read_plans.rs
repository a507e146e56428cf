//! Read plans (`src/graphql/read_plan.rs`): a known query made only of fields the caller's
//! cached session and the request's channel answer is answered without async-graphql's
//! executor. These tests generate such documents (any subset of the plan's fields, in any
//! order, with and without aliases and `__typename`, anonymous or named) and check that the
//! plan's answer is the executor's, byte for byte but for the timestamps that move with every
//! request: the executor's answer comes from the same document wrapped in `... on Query`, which
//! no plan takes. `session_server_graphql_read_plan_answers_total` in `/metrics` proves the
//! plan answered.

use crate::helpers::{TestApp, Variant};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};

crate::all_caches!(plans_answer_like_the_executor);
crate::sqlite_only!(
    a_plan_answer_clears_a_dead_cookie_and_follows_changes,
    documents_a_plan_cannot_answer_go_to_the_executor,
);

/// A field of a generated document: its name, its alias, and its subfields (empty for a leaf).
#[derive(Clone, Debug)]
struct Field {
    name: &'static str,
    alias: Option<String>,
    children: Vec<Field>,
}

impl Field {
    fn key(&self) -> &str {
        self.alias.as_deref().unwrap_or(self.name)
    }

    fn write(&self, out: &mut String) {
        if let Some(a) = &self.alias {
            out.push_str(a);
            out.push_str(": ");
        }
        out.push_str(self.name);
        if !self.children.is_empty() {
            write_set(&self.children, out);
        }
        out.push(' ');
    }
}

fn write_set(fields: &[Field], out: &mut String) {
    out.push_str(" { ");
    for f in fields {
        f.write(out);
    }
    out.push('}');
}

const USER: &[&str] = &["__typename", "id", "identifier", "verified"];
const GRANT: &[&str] = &[
    "__typename",
    "channelId",
    "channelCode",
    "channelToken",
    "permissions",
];
const CHANNEL: &[&str] = &["__typename", "id", "code", "token", "createdAt"];
const SESSION: &[&str] = &[
    "__typename",
    "id",
    "cursor",
    "kind",
    "current",
    "invalidated",
    "user",
    "activeChannel",
    "authenticationStrategy",
    "createdAt",
    "lastActiveAt",
    "expiresAt",
    "absoluteExpiresAt",
    "data",
    "dataVersion",
    "ipAddress",
    "userAgent",
];
const ME: &[&str] = &["__typename", "id", "identifier", "verified", "channels"];
const ROOT: &[&str] = &["__typename", "activeSession", "me", "activeChannel"];

/// The subfields a field of `name` selects from.
fn children_of(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "activeSession" => SESSION,
        "me" => ME,
        "activeChannel" => CHANNEL,
        "user" => USER,
        "channels" => GRANT,
        _ => return None,
    })
}

/// A selection set over `names`: some of them, shuffled, some aliased (aliases are unique in a
/// set; a few are another field's name).
fn selection(names: &'static [&'static str], depth: u32) -> BoxedStrategy<Vec<Field>> {
    let picks = proptest::sample::subsequence(names.to_vec(), 1..=names.len().min(6));
    picks
        .prop_shuffle()
        .prop_flat_map(move |picked| {
            let fields: Vec<BoxedStrategy<Field>> = picked
                .into_iter()
                .enumerate()
                .map(|(i, name)| field(name, i, depth))
                .collect();
            fields
        })
        .boxed()
}

fn field(name: &'static str, i: usize, depth: u32) -> BoxedStrategy<Field> {
    let alias = prop_oneof![
        3 => Just(None),
        1 => Just(Some(format!("a{i}"))),
        // A field's name as another field's alias: the key is still unique in its set.
        1 => Just(Some(format!("{name}{i}"))),
    ];
    match children_of(name).filter(|_| depth < 3) {
        Some(names) => (alias, selection(names, depth + 1))
            .prop_map(move |(alias, children)| Field {
                name,
                alias,
                children,
            })
            .boxed(),
        None => alias
            .prop_map(move |alias| Field {
                name,
                alias,
                children: vec![],
            })
            .boxed(),
    }
}

/// A document: its root fields, the operation name if it is named, and whether the request
/// names the operation (`operationName`) too.
fn document() -> impl Strategy<Value = (Vec<Field>, Option<&'static str>, bool)> {
    (
        selection(ROOT, 0),
        prop_oneof![Just(None), Just(Some("Header"))],
        any::<bool>(),
    )
}

fn text(root: &[Field], name: Option<&str>, wrapped: bool) -> String {
    let mut out = String::new();
    if let Some(n) = name {
        out.push_str("query ");
        out.push_str(n);
    }
    if wrapped {
        out.push_str(" { ... on Query");
        write_set(root, &mut out);
        out.push_str(" }");
    } else {
        write_set(root, &mut out);
    }
    out
}

/// Who asks: a bearer token (or none) and a `channel-token` header (or none).
struct Caller {
    label: &'static str,
    token: Option<String>,
    channel_token: Option<String>,
    /// Whether the header names another channel than the session's active one: the session's
    /// `activeChannel` is then the executor's to load.
    other_channel: bool,
}

/// The raw body of `query` sent as `caller` (named `name`), with its status.
async fn raw(app: &TestApp, caller: &Caller, query: &str, name: Option<&str>) -> String {
    let mut body = json!({ "query": query, "variables": {} });
    if let Some(n) = name {
        body["operationName"] = json!(n);
    }
    let mut req = app
        .api
        .client
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = &caller.token {
        req = req.bearer_auth(t);
    }
    if let Some(c) = &caller.channel_token {
        req = req.header("channel-token", c);
    }
    let resp = req.send().await.expect("answered");
    assert_eq!(resp.status(), 200, "{query}");
    resp.text().await.expect("a body")
}

/// `session_server_graphql_read_plan_answers_total` from `/metrics`.
async fn plan_answers(app: &TestApp) -> u64 {
    app.metric("session_server_graphql_read_plan_answers_total")
        .await
}

/// The timestamps that move with every request (the session slides forward).
const MOVING: &[&str] = &["lastActiveAt", "expiresAt"];

/// Compares the executor's answer and the plan's, field by field along the document; a moving
/// timestamp may differ by a few seconds.
fn compare(fields: &[Field], executor: &Value, plan: &Value, at: &str) {
    for f in fields {
        let path = format!("{at}.{}", f.key());
        let (e, p) = (&executor[f.key()], &plan[f.key()]);
        assert!(
            executor.get(f.key()).is_some() && plan.get(f.key()).is_some(),
            "{path} missing: executor {executor}, plan {plan}"
        );
        if f.children.is_empty() {
            if MOVING.contains(&f.name) {
                let ms = |v: &Value| {
                    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
                        .unwrap_or_else(|_| panic!("{path}: not a timestamp: {v}"))
                        .timestamp_millis()
                };
                assert!((ms(e) - ms(p)).abs() < 30_000, "{path}: {e} vs {p}");
            } else {
                assert_eq!(e, p, "{path}");
            }
            continue;
        }
        match (e, p) {
            (Value::Null, Value::Null) => {}
            (Value::Array(es), Value::Array(ps)) => {
                assert_eq!(es.len(), ps.len(), "{path}: {e} vs {p}");
                for (i, (e, p)) in es.iter().zip(ps).enumerate() {
                    compare(&f.children, e, p, &format!("{path}[{i}]"));
                }
            }
            (Value::Object(_), Value::Object(_)) => compare(&f.children, e, p, &path),
            _ => panic!("{path}: executor {e}, plan {p}"),
        }
    }
}

/// Replaces every RFC 3339 timestamp in a JSON body by `T`, keeping everything else (string
/// escapes included).
fn mask_timestamps(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.char_indices();
    while let Some((_, c)) = chars.next() {
        out.push(c);
        if c != '"' {
            continue;
        }
        // A string: up to the next quote that no backslash escapes.
        let mut content = String::new();
        let mut escaped = false;
        for (_, c) in chars.by_ref() {
            if c == '"' && !escaped {
                break;
            }
            escaped = c == '\\' && !escaped;
            content.push(c);
        }
        if content.len() == 24 && chrono::DateTime::parse_from_rfc3339(&content).is_ok() {
            out.push('T');
        } else {
            out.push_str(&content);
        }
        out.push('"');
    }
    out
}

#[test]
fn masking_keeps_escapes_and_hides_only_timestamps() {
    let body = r#"{"a":"x\"y","t":"2026-11-26T10:00:00.000Z","b":"\\","c":"2026"}"#;
    assert_eq!(
        mask_timestamps(body),
        r#"{"a":"x\"y","t":"T","b":"\\","c":"2026"}"#
    );
}

/// Every caller the plans must answer like the executor: none, a dead token, an anonymous
/// session, a user with roles in two channels and an active channel (asking in it and in none,
/// with an identifier that JSON must escape), and the superadmin asking in another channel than
/// their session's.
async fn callers(app: &TestApp) -> Vec<Caller> {
    let admin = app.admin_token().await;
    let default_token = app
        .gql_as(&admin, "{ activeChannel { token } }", json!({}))
        .await
        .ok()
        .data()["activeChannel"]["token"]
        .as_str()
        .expect("the default channel's token")
        .to_string();
    let default = app.default_channel_id(&admin).await;
    let (shop, shop_token) = app.create_channel(&admin, "shop").await;
    let here = app
        .create_role_in(&admin, "here", &["READ_SESSION", "READ_USER"], &[&default])
        .await;
    let there = app
        .create_role_in(&admin, "there", &["READ_ORDER"], &[&shop, &default])
        .await;
    let identifier = "zoë \"q\" \\ </script>";
    app.create_user(&admin, identifier, "pw-of-zoe", &[&here, &there])
        .await;
    let user = app.login(identifier, "pw-of-zoe").await.token;
    app.set_active_channel(&user, &shop_token).await;
    app.set_active_channel(&admin, &shop_token).await;
    let (anonymous, _) = app.anonymous_session().await;
    // Session data with what JSON writers may disagree on: key order, escapes, non-ASCII,
    // numbers of every kind, nesting, null.
    let data = json!({
        "zeta": "last?", "alpha": { "list": [1, -2, 3.5, 1e21, 0.1, null, true], "q": "a\"b\\c</script>" },
        "big": u64::MAX, "neg": i64::MIN, "emoji": "🛒 zoë", "ctl": "\u{1}\t\n", "empty": {}
    });
    for token in [&anonymous, &user] {
        let r = app
            .gql_as(
                token,
                "mutation($d: JSON) { updateSessionData(set: $d) { dataVersion } }",
                json!({ "d": data }),
            )
            .await
            .ok();
        assert_eq!(
            r.data()["updateSessionData"]["dataVersion"],
            1,
            "{}",
            r.body
        );
    }
    vec![
        Caller {
            label: "nobody",
            token: None,
            channel_token: None,
            other_channel: false,
        },
        Caller {
            label: "dead token",
            token: Some("not-a-live-token".into()),
            channel_token: None,
            other_channel: false,
        },
        Caller {
            label: "anonymous",
            token: Some(anonymous),
            channel_token: Some(shop_token.clone()),
            other_channel: false,
        },
        Caller {
            label: "user",
            token: Some(user.clone()),
            channel_token: None,
            other_channel: false,
        },
        Caller {
            label: "user in shop",
            token: Some(user),
            channel_token: Some(shop_token),
            other_channel: false,
        },
        Caller {
            label: "superadmin",
            token: Some(admin),
            channel_token: Some(default_token),
            other_channel: true,
        },
    ]
}

async fn plans_answer_like_the_executor(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let callers = callers(&app).await;
    // Deterministic: the same documents every run, so a failure reproduces.
    let mut runner = TestRunner::deterministic();
    let mut expected_plans = 0;
    let mut seen = std::collections::HashSet::new();
    let before = plan_answers(&app).await;
    for case in 0..32 {
        let (root, doc_name, send_name) = document()
            .new_tree(&mut runner)
            .expect("a document")
            .current();
        let plain = text(&root, doc_name, false);
        let wrapped = text(&root, doc_name, true);
        let name = doc_name.filter(|_| send_name);
        let shows_session_channel = root.iter().any(|f| {
            f.name == "activeSession" && f.children.iter().any(|c| c.name == "activeChannel")
        });
        let mut validated = !seen.insert(plain.clone());
        for caller in &callers {
            // The first sight of a document validates it; the plan answers from the second.
            let plannable = !(caller.other_channel && shows_session_channel);
            raw(&app, caller, &plain, name).await;
            if validated && plannable {
                expected_plans += 1;
            }
            validated = true;
            let from_plan = raw(&app, caller, &plain, name).await;
            if plannable {
                expected_plans += 1;
            }
            let from_executor = raw(&app, caller, &wrapped, name).await;
            let context = format!("case {case}, {}: {plain}", caller.label);
            let (e, p): (Value, Value) = (
                serde_json::from_str(&from_executor).expect("JSON"),
                serde_json::from_str(&from_plan).expect("JSON"),
            );
            assert!(e.get("errors").is_none(), "{context}: {from_executor}");
            compare(&root, &e["data"], &p["data"], &context);
            assert_eq!(
                mask_timestamps(&from_executor),
                mask_timestamps(&from_plan),
                "{context}: same bytes, keys in the same order"
            );
        }
    }
    assert_eq!(plan_answers(&app).await - before, expected_plans);
}

/// On the plan's path a cookie naming no live session is still cleared, and the answer
/// follows a change to the user (their identifier) on the next request.
async fn a_plan_answer_clears_a_dead_cookie_and_follows_changes(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let query = "{ activeSession { id user { identifier } } me { identifier } }";
    let before = plan_answers(&app).await;
    for _ in 0..2 {
        let r = app.gql_cookie("no-such-token", query, json!({})).await;
        let clears = r.cookie("session");
        let r = r.ok();
        assert_eq!(r.data()["activeSession"], Value::Null, "{}", r.body);
        assert!(
            clears.as_deref().is_some_and(|c| c.contains("Max-Age=0")),
            "the dead cookie is cleared: {clears:?}"
        );
    }
    assert_eq!(
        plan_answers(&app).await - before,
        1,
        "the second sight was the plan's"
    );
    let admin = app.admin_token().await;
    let uid = app.create_user(&admin, "bob", "bob-pw", &[]).await;
    let bob = app.login("bob", "bob-pw").await.token;
    let before = plan_answers(&app).await;
    for _ in 0..2 {
        let r = app.gql_as(&bob, query, json!({})).await.ok();
        assert_eq!(r.data()["activeSession"]["user"]["identifier"], "bob");
        assert_eq!(r.data()["me"]["identifier"], "bob");
    }
    let r = app
        .gql_as(
            &admin,
            "mutation($id: ID!) { updateUser(input: { id: $id, identifier: \"robert\" }) { id } }",
            json!({ "id": uid }),
        )
        .await
        .ok();
    assert!(r.data()["updateUser"]["id"].is_string(), "{}", r.body);
    let r = app.gql_as(&bob, query, json!({})).await.ok();
    assert_eq!(r.data()["activeSession"]["user"]["identifier"], "robert");
    assert_eq!(r.data()["me"]["identifier"], "robert");
    assert!(plan_answers(&app).await - before >= 3, "the plan answered");
}

/// Documents outside the plans' table keep the executor's answers: fields that need the
/// database, arguments, directives, fragments, variables, repeated keys, and errors.
async fn documents_a_plan_cannot_answer_go_to_the_executor(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let before = plan_answers(&app).await;
    let cases = [
        (
            "{ activeSession { user { identifier roles { code } } } }",
            json!({}),
        ),
        (
            "{ activeSession { id @include(if: false) kind } }",
            json!({}),
        ),
        (
            "query($x: Boolean!) { activeSession { id @skip(if: $x) kind } }",
            json!({ "x": true }),
        ),
        ("{ me { identifier } me { id } }", json!({})),
        (
            "{ ...F } fragment F on Query { me { identifier } }",
            json!({}),
        ),
        ("{ sessionStats { anonymous } }", json!({})),
    ];
    for (query, vars) in &cases {
        for _ in 0..2 {
            let r = app.gql_as(&admin, query, vars.clone()).await.ok();
            assert!(r.data().is_object(), "{query}: {}", r.body);
        }
    }
    for _ in 0..2 {
        let r = app
            .gql_as(&admin, "{ activeSession { nope } }", json!({}))
            .await;
        assert_eq!(r.error_code(), Some("BAD_USER_INPUT"), "{}", r.body);
    }
    assert_eq!(
        plan_answers(&app).await,
        before,
        "no plan answered these documents"
    );
    let r = app
        .gql_as(
            &admin,
            "{ activeSession { id @include(if: false) kind } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(
        r.data()["activeSession"],
        json!({ "kind": "AUTHENTICATED" })
    );
    // Operation names the document does not have: the executor's error, every time.
    for (query, name) in [
        ("{ activeSession { id } }", "Header"),
        ("query Header { activeSession { id } }", "Other"),
    ] {
        // Validated, so a plan exists for the document.
        app.gql_as(&admin, query, json!({})).await.ok();
        let before = plan_answers(&app).await;
        let body = json!({ "query": query, "operationName": name }).to_string();
        for _ in 0..2 {
            let r = TestApp::send(
                app.client
                    .post(app.url("/graphql"))
                    .header("content-type", "application/json")
                    .bearer_auth(&admin)
                    .body(body.clone()),
            )
            .await;
            assert!(
                r.body["errors"][0]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Unknown operation")),
                "{query} as {name}: {}",
                r.body
            );
        }
        assert_eq!(plan_answers(&app).await, before, "{query} as {name}");
    }
}
