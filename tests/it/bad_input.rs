//! Bad input never yields HTTP 500: malformed and non-JSON bodies, mutations over GET, oversized
//! bodies, invalid IDs, overlong credentials, GraphQL syntax/validation/variable errors, deep and
//! complex queries, bad pagination arguments, malformed tokens, unknown channel tokens and huge
//! User-Agent headers each get a clear `extensions.code` and change nothing. A flood of made-up
//! channel tokens shares database statements instead of costing one each.

use crate::helpers::{str_of, Gql, TestApp, Variant};
use reqwest::header::HeaderValue;
use reqwest::Url;
use serde_json::{json, Value};

crate::sqlite_only!(
    malformed_bodies_are_refused,
    non_json_posts_are_refused_and_change_nothing,
    get_runs_queries_but_never_mutations,
    oversized_bodies_are_refused,
    graphql_errors_are_bad_user_input,
    deep_and_complex_queries_are_refused,
    malformed_tokens_mean_no_session,
    unknown_channel_token_is_not_found,
);

crate::variants!(
    invalid_ids_and_pagination_arguments,
    overlong_credentials_are_refused,
    huge_user_agent_is_truncated,
    made_up_channel_tokens_at_once_share_statements,
    a_channel_is_found_by_its_exact_token_right_after_a_miss,
    codes_and_tokens_that_differ_in_case_are_distinct,
    control_characters_in_identifiers_and_descriptions_are_refused,
);

const STATS: &str =
    "{ sessionStats { anonymous authenticated expiredAwaitingCleanup invalidated } }";

/// A POST to /graphql with an arbitrary body and content type, optionally with a session cookie.
async fn raw_post(
    app: &TestApp,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
    cookie: Option<&str>,
) -> Gql {
    let mut req = app.client.post(app.url("/graphql")).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(token) = cookie {
        req = req.header("cookie", format!("session={token}"));
    }
    TestApp::send(req).await
}

/// Asserts a refusal: not a 500, and the first error has `code`.
fn refused(r: &Gql, code: &str, what: &str) {
    assert_ne!(r.status.as_u16(), 500, "{what}: {}", r.body);
    assert_eq!(r.error_code(), Some(code), "{what}: {}", r.body);
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: a message: {}",
        r.body
    );
}

async fn still_works(app: &TestApp, token: &str, id: &str) {
    assert_eq!(
        app.active_session(token).await["id"],
        id,
        "the session still works"
    );
}

async fn malformed_bodies_are_refused(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (token, id) = app.anonymous_session().await;
    let json_ct = Some("application/json");
    let r = raw_post(
        &app,
        json_ct,
        r#"{"query": "mutation { logout }""#,
        Some(&token),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    refused(&r, "BAD_USER_INPUT", "malformed JSON");
    for (what, body) in [
        ("a JSON array", r#"[{"query": "mutation { logout }"}]"#),
        ("no query", r#"{"variables": {}}"#),
        ("a query that is not a string", r#"{"query": 42}"#),
        ("a JSON string", r#""mutation { logout }""#),
        ("null", "null"),
        ("an empty body", ""),
        (
            "variables not an object",
            r#"{"query": "{ __typename }", "variables": [1]}"#,
        ),
    ] {
        let r = raw_post(&app, json_ct, body, Some(&token)).await;
        refused(&r, "BAD_USER_INPUT", what);
    }
    // Bytes that are not UTF-8.
    let r = raw_post(&app, json_ct, vec![0xff_u8, 0xfe, 0x00, 0x7b], Some(&token)).await;
    refused(&r, "BAD_USER_INPUT", "binary garbage");
    still_works(&app, &token, &id).await;
}

async fn non_json_posts_are_refused_and_change_nothing(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (token, id) = app.anonymous_session().await;
    let logout = json!({ "query": "mutation { logout }" }).to_string();
    for ct in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonp"),
        None,
    ] {
        let r = raw_post(&app, ct, logout.clone(), Some(&token)).await;
        assert_eq!(r.status, 415, "{ct:?}: {}", r.body);
        refused(&r, "BAD_USER_INPUT", &format!("{ct:?}"));
        still_works(&app, &token, &id).await;
    }
    let r = raw_post(
        &app,
        Some("application/x-www-form-urlencoded"),
        "query=mutation%7Blogout%7D",
        Some(&token),
    )
    .await;
    assert_eq!(r.status, 415, "{}", r.body);
    refused(&r, "BAD_USER_INPUT", "form");
    still_works(&app, &token, &id).await;
    // The same logout as JSON does end the session (so the refusals above were meaningful).
    let r = app
        .gql_cookie(&token, "mutation { logout }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["logout"], true);
    assert!(app.active_session(&token).await.is_null());
}

fn get_url(app: &TestApp, params: &[(&str, &str)]) -> Url {
    Url::parse_with_params(&app.url("/graphql"), params).unwrap()
}

async fn get(app: &TestApp, params: &[(&str, &str)], cookie: Option<&str>) -> Gql {
    let mut req = app.client.get(get_url(app, params));
    if let Some(token) = cookie {
        req = req.header("cookie", format!("session={token}"));
    }
    TestApp::send(req).await
}

async fn get_runs_queries_but_never_mutations(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (token, id) = app.anonymous_session().await;
    for q in [
        "mutation{logout}",
        "mutation { logout }",
        "query A { activeChannel { code } } mutation B { logout }",
    ] {
        let params: Vec<(&str, &str)> = if q.contains("mutation B") {
            vec![("query", q), ("operationName", "B")]
        } else {
            vec![("query", q)]
        };
        let r = get(&app, &params, Some(&token)).await;
        assert_eq!(r.status, 405, "{q}: {}", r.body);
        refused(&r, "BAD_USER_INPUT", q);
        still_works(&app, &token, &id).await;
    }
    // Several operations and no name: not run as a mutation either.
    let r = get(
        &app,
        &[("query", "query A { __typename } mutation B { logout }")],
        Some(&token),
    )
    .await;
    assert_ne!(r.status, 500);
    assert!(r.error_code().is_some(), "{}", r.body);
    still_works(&app, &token, &id).await;

    // A query over GET works, with the cookie's session.
    let r = get(
        &app,
        &[("query", "{activeChannel{code} activeSession{id}}")],
        Some(&token),
    )
    .await
    .ok();
    assert_eq!(r.status, 200);
    assert_eq!(r.data()["activeChannel"]["code"], "default");
    assert_eq!(r.data()["activeSession"]["id"], id);
    // With variables.
    let q = "query($x: Boolean!) { activeChannel { id code @include(if: $x) } }";
    let r = get(&app, &[("query", q), ("variables", r#"{"x": true}"#)], None)
        .await
        .ok();
    assert_eq!(r.data()["activeChannel"]["code"], "default");
    let r = get(
        &app,
        &[("query", q), ("variables", r#"{"x": false}"#)],
        None,
    )
    .await
    .ok();
    assert!(
        r.data()["activeChannel"].get("code").is_none(),
        "{}",
        r.body
    );
    // Bad variables over GET.
    let r = get(&app, &[("query", q), ("variables", "{not json")], None).await;
    refused(&r, "BAD_USER_INPUT", "GET with malformed variables");
    let r = get(
        &app,
        &[("query", q), ("variables", r#"{"x": "yes"}"#)],
        None,
    )
    .await;
    refused(&r, "BAD_USER_INPUT", "GET with a mistyped variable");
    // GET without a query and without Accept: text/html.
    let r = get(&app, &[], None).await;
    refused(&r, "BAD_USER_INPUT", "GET without a query");
}

async fn oversized_bodies_are_refused(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (token, id) = app.anonymous_session().await;
    let body = json!({
        "query": "mutation { logout }",
        "variables": { "pad": "x".repeat(300 * 1024) },
    })
    .to_string();
    let r = raw_post(&app, Some("application/json"), body, Some(&token)).await;
    assert_eq!(r.status, 413, "{}", r.body);
    refused(&r, "BAD_USER_INPUT", "a body over 256 KiB");
    still_works(&app, &token, &id).await;
    // Just under the limit is fine.
    let body = json!({
        "query": "{ activeSession { id } }",
        "variables": { "pad": "x".repeat(200 * 1024) },
    })
    .to_string();
    let r = raw_post(&app, Some("application/json"), body, Some(&token))
        .await
        .ok();
    assert_eq!(r.data()["activeSession"]["id"], id);
}

async fn graphql_errors_are_bad_user_input(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    for (what, q, vars) in [
        ("syntax error", "{ activeSession { id }", json!({})),
        ("unknown field", "{ nope }", json!({})),
        ("unknown argument", "{ activeChannel(x: 1) { id } }", json!({})),
        (
            "wrong variable type",
            "mutation($r: Boolean) { login(username: \"a\", password: \"b\", rememberMe: $r) { __typename } }",
            json!({ "r": "yes" }),
        ),
        (
            "missing variable",
            "mutation($u: String!) { login(username: $u, password: \"b\") { __typename } }",
            json!({}),
        ),
        ("unknown operation", "query A { __typename }", json!({})),
        ("empty document", "", json!({})),
    ] {
        let req = if what == "unknown operation" {
            app.client
                .post(app.url("/graphql"))
                .header("content-type", "application/json")
                .body(json!({ "query": q, "operationName": "B" }).to_string())
        } else {
            app.post(q, vars)
        };
        let r = TestApp::send(req).await;
        refused(&r, "BAD_USER_INPUT", what);
        assert!(r.session_token().is_none(), "{what}: no session created");
    }
}

async fn deep_and_complex_queries_are_refused(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    // 25 levels of nested introspection.
    let mut deep = String::from("name");
    for _ in 0..20 {
        deep = format!("ofType {{ {deep} }}");
    }
    let deep = format!("{{ __schema {{ types {{ fields {{ type {{ {deep} }} }} }} }} }}");
    let r = app.gql(&deep, json!({})).await;
    assert_ne!(r.status, 500);
    assert!(
        r.error_code().is_some(),
        "a deep query is refused: {}",
        r.body
    );
    assert!(r.data().is_null() || r.data().get("__schema").is_none_or(Value::is_null));

    // 2,000 aliased fields.
    let fields: String = (0..2000)
        .map(|i| format!("a{i}: activeChannel {{ id code }} "))
        .collect();
    let r = app.gql(&format!("{{ {fields} }}"), json!({})).await;
    assert_ne!(r.status, 500);
    assert!(
        r.error_code().is_some(),
        "a complex query is refused: {}",
        r.body
    );
    assert!(r.data().is_null() || r.data().get("a0").is_none_or(Value::is_null));

    // The same with a mutation: nothing runs.
    let fields: String = (0..2000)
        .map(|i| format!("a{i}: createAnonymousSession {{ id }} "))
        .collect();
    let r = app
        .gql(&format!("mutation {{ {fields} }}"), json!({}))
        .await;
    assert_ne!(r.status, 500);
    assert!(r.error_code().is_some(), "{}", r.body);
    assert!(r.session_token().is_none(), "nothing ran");
    let admin = app.admin_token().await;
    let r = app.gql_as(&admin, STATS, json!({})).await.ok();
    assert_eq!(r.data()["sessionStats"]["anonymous"], 0);
    // GraphiQL's ordinary introspection still works.
    app.gql(
        "{ __schema { queryType { name } types { name fields { name type { name kind ofType { name kind ofType { name kind } } } } } } }",
        json!({}),
    )
    .await
    .ok();
}

async fn malformed_tokens_mean_no_session(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let long = "a".repeat(10 * 1024);
    let bad_chars = format!("{}!", "A".repeat(42));
    let padded = format!("{}=", "A".repeat(43));
    let unknown = "A".repeat(43); // the right shape, but no such session
    let bad = [
        "abc",
        "",
        bad_chars.as_str(),
        padded.as_str(),
        "A".repeat(44).as_str(),
        "A".repeat(42).as_str(),
        long.as_str(),
        "../../etc/passwd",
        "' OR 1=1 --",
        unknown.as_str(),
    ]
    .map(str::to_string);
    let q = "{ activeSession { id } me { id } }";
    for token in &bad {
        let r = TestApp::send(
            app.post(q, json!({}))
                .header("authorization", format!("Bearer {token}")),
        )
        .await;
        assert_eq!(r.status, 200, "bearer {:.40}: {}", token, r.body);
        let r = r.ok();
        assert!(r.data()["activeSession"].is_null());
        assert!(r.data()["me"].is_null());
        if token.is_empty() {
            continue;
        }
        let r = app.gql_cookie(token, q, json!({})).await;
        assert_eq!(r.status, 200, "cookie {:.40}: {}", token, r.body);
        let clears = r.cookie("session");
        let r = r.ok();
        assert!(r.data()["activeSession"].is_null());
        assert!(
            clears.as_deref().is_some_and(|c| c.contains("Max-Age=0")),
            "a dead cookie is cleared: {clears:?}"
        );
    }
    // Odd Authorization headers.
    for value in ["Bearer", "Basic dXNlcjpwYXNz", "Bearer a b c", "bearer"] {
        let r = TestApp::send(app.post(q, json!({})).header("authorization", value)).await;
        assert_eq!(r.status, 200, "{value}: {}", r.body);
        assert!(r.ok().data()["activeSession"].is_null());
    }
    // Bytes outside ASCII in the headers.
    let r = TestApp::send(
        app.post(q, json!({}))
            .header(
                "authorization",
                HeaderValue::from_bytes(b"Bearer caf\xe9").unwrap(),
            )
            .header(
                "cookie",
                HeaderValue::from_bytes(b"session=caf\xe9").unwrap(),
            ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.ok().data()["activeSession"].is_null());
    // A mutation with a malformed token is served as having no session.
    let r = TestApp::send(
        app.post("mutation { logout }", json!({}))
            .header("authorization", format!("Bearer {long}")),
    )
    .await
    .ok();
    assert_eq!(r.data()["logout"], false);
}

async fn unknown_channel_token_is_not_found(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (token, id) = app.anonymous_session().await;
    let long = "x".repeat(10 * 1024);
    for ch in ["no-such-channel", "", long.as_str(), "default-channel"] {
        let r = TestApp::send(
            app.post("{ activeChannel { code } }", json!({}))
                .bearer_auth(&token)
                .header("channel-token", ch),
        )
        .await;
        refused(&r, "NOT_FOUND", &format!("channel-token {ch:.20}"));
    }
    let r = TestApp::send(app.post("{ activeChannel { code } }", json!({})).header(
        "channel-token",
        HeaderValue::from_bytes(b"caf\xe9").unwrap(),
    ))
    .await;
    refused(&r, "NOT_FOUND", "non-ASCII channel-token");
    // A mutation with an unknown channel does not run.
    let r = TestApp::send(
        app.post("mutation { logout }", json!({}))
            .bearer_auth(&token)
            .header("channel-token", "no-such-channel"),
    )
    .await;
    refused(&r, "NOT_FOUND", "mutation with an unknown channel-token");
    still_works(&app, &token, &id).await;
}

async fn invalid_ids_and_pagination_arguments(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let (guest, guest_id) = app.anonymous_session().await;
    let before = app.gql_as(&admin, STATS, json!({})).await.ok().body;
    let queries = [
        "query($id: ID!) { session(id: $id) { id } }",
        "query($id: ID!) { user(id: $id) { id } }",
        "mutation($id: ID!) { revokeSession(id: $id) }",
        "mutation($id: ID!) { revokeMySession(id: $id) }",
        "mutation($id: ID!) { revokeSessionsByUser(userId: $id) }",
        "mutation($id: ID!) { deleteUser(id: $id) }",
    ];
    for id in [
        "abc",
        "-1",
        "0",
        "99999999999999999999999",
        "",
        " 1",
        "1.5",
        "0x10",
    ] {
        for q in queries {
            let r = app.gql_as(&admin, q, json!({ "id": id })).await;
            refused(&r, "BAD_USER_INPUT", &format!("{q} with id {id:?}"));
        }
    }
    // Invalid IDs in filters and inputs too.
    let r = app
        .gql_as(
            &admin,
            "{ sessions(filter: { userId: \"abc\" }) { totalCount } }",
            json!({}),
        )
        .await;
    refused(&r, "BAD_USER_INPUT", "filter userId");
    let r = app
        .gql_as(
            &admin,
            "mutation { createUser(input: { identifier: \"x\", password: \"y\", roleIds: [\"-1\"] }) { id } }",
            json!({}),
        )
        .await;
    refused(&r, "BAD_USER_INPUT", "createUser roleIds");

    // Pagination arguments.
    for q in [
        "query($first: Int, $after: String) { sessions(first: $first, after: $after) { totalCount } }",
        "query($first: Int, $after: String) { users(first: $first, after: $after) { totalCount } }",
    ] {
        for first in [-1, 101, 1000, i32::MAX as i64] {
            let r = app.gql_as(&admin, q, json!({ "first": first })).await;
            refused(&r, "BAD_USER_INPUT", &format!("{q} first {first}"));
        }
        let r = app
            .gql_as(&admin, q, json!({ "first": 1u64 << 40 }))
            .await;
        refused(&r, "BAD_USER_INPUT", "first beyond Int");
        for after in ["garbage!", "Zm9v", "", "YzphYmM", "%%%"] {
            let r = app.gql_as(&admin, q, json!({ "after": after })).await;
            refused(&r, "BAD_USER_INPUT", &format!("{q} after {after:?}"));
        }
        app.gql_as(&admin, q, json!({ "first": 100 })).await.ok();
    }

    // Nothing changed.
    let after = app.gql_as(&admin, STATS, json!({})).await.ok().body;
    assert_eq!(before, after);
    still_works(&app, &guest, &guest_id).await;
    let r = app
        .gql_as(&admin, "{ users { totalCount } }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["users"]["totalCount"], 1);
}

async fn overlong_credentials_are_refused(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let before = app.gql_as(&admin, STATS, json!({})).await.ok().body;
    let q =
        "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { __typename } }";
    let long_id = "u".repeat(256);
    let long_pw = "p".repeat(1025);
    let multibyte_id = "é".repeat(128); // 256 bytes, 128 characters
    for (what, u, p) in [
        ("identifier over 255 bytes", long_id.as_str(), "pw"),
        (
            "multibyte identifier over 255 bytes",
            multibyte_id.as_str(),
            "pw",
        ),
        ("password over 1024 bytes", "superadmin", long_pw.as_str()),
        ("huge identifier", &"u".repeat(100_000), "pw"),
    ] {
        let r = app.gql(q, json!({ "u": u, "p": p })).await;
        refused(&r, "BAD_USER_INPUT", what);
        assert!(
            r.data().is_null() || r.data()["login"].is_null(),
            "{what}: an error, not a union member: {}",
            r.body
        );
        assert!(r.session_token().is_none(), "{what}");
    }
    // At the limits: ordinary outcomes.
    let r = app
        .gql(q, json!({ "u": "u".repeat(255), "p": "p".repeat(1024) }))
        .await
        .ok();
    assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
    // createUser refuses them too.
    let r = app
        .gql_as(
            &admin,
            "mutation($i: CreateUserInput!) { createUser(input: $i) { id } }",
            json!({ "i": { "identifier": long_id, "password": "pw" } }),
        )
        .await;
    refused(&r, "BAD_USER_INPUT", "createUser with a long identifier");
    let r = app
        .gql_as(
            &admin,
            "mutation($i: CreateUserInput!) { createUser(input: $i) { id } }",
            json!({ "i": { "identifier": "bob", "password": long_pw } }),
        )
        .await;
    refused(&r, "BAD_USER_INPUT", "createUser with a long password");

    let after = app.gql_as(&admin, STATS, json!({})).await.ok().body;
    assert_eq!(before, after, "no session created");
    let r = app
        .gql_as(&admin, "{ users { totalCount } }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["users"]["totalCount"], 1);
    // The superadmin is not locked out by the refused attempts.
    app.login("superadmin", "superadmin").await;
}

async fn huge_user_agent_is_truncated(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let agent: String = (0..10_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let r = TestApp::send(
        app.post(
            "mutation { createAnonymousSession { id userAgent } }",
            json!({}),
        )
        .header("user-agent", &agent),
    )
    .await
    .ok();
    let token = r.session_token().unwrap();
    let stored = str_of(&r.data()["createAnonymousSession"]["userAgent"]);
    assert!(
        !stored.is_empty() && stored.len() <= 512,
        "{}",
        stored.len()
    );
    assert!(agent.starts_with(&stored));
    let s = app
        .gql_as(&token, "{ activeSession { userAgent } }", json!({}))
        .await
        .ok();
    assert_eq!(s.data()["activeSession"]["userAgent"], stored);

    // Login with it too, and read it back from the database.
    let r = TestApp::send(
        app.post(
            "mutation { login(username: \"superadmin\", password: \"superadmin\") { __typename } }",
            json!({}),
        )
        .header("user-agent", &agent),
    )
    .await
    .ok();
    let admin = r.session_token().unwrap();
    let r = app
        .gql_as(
            &admin,
            "{ mySessions { userAgent } sessions { nodes { userAgent } } }",
            json!({}),
        )
        .await
        .ok();
    let mine = str_of(&r.data()["mySessions"][0]["userAgent"]);
    assert!(
        mine.len() <= 512 && agent.starts_with(&mine),
        "{}",
        mine.len()
    );
    for n in r.data()["sessions"]["nodes"].as_array().unwrap() {
        let ua = str_of(&n["userAgent"]);
        assert!(ua.len() <= 512 && agent.starts_with(&ua), "{}", ua.len());
    }
}

/// Unknown channel tokens are looked up together: a flood of requests, each with a new made-up
/// `channel-token`, runs far fewer statements than requests, and each still gets `NOT_FOUND`.
async fn made_up_channel_tokens_at_once_share_statements(v: Variant) {
    // A server whose background work leaves the statement counter alone.
    let Some(app) = crate::cache_reads::spawn(v).await else {
        return;
    };
    const REQUESTS: usize = 240;
    let run: u32 = rand::random();
    let before = app.metric("session_server_db_statements_total").await;
    let answers = futures_util::future::join_all((0..REQUESTS).map(|i| {
        TestApp::send(
            app.post("{ activeChannel { code } }", json!({}))
                .header("channel-token", format!("made-up-{run}-{i}")),
        )
    }))
    .await;
    for (i, r) in answers.iter().enumerate() {
        refused(r, "NOT_FOUND", &format!("made-up channel token {i}"));
    }
    let n = app.metric("session_server_db_statements_total").await - before;
    println!("{REQUESTS} made-up channel tokens at once ran {n} statements");
    assert!(
        n <= REQUESTS as u64 * 3 / 4,
        "{REQUESTS} made-up channel tokens at once ran {n} statements"
    );
}

/// An unknown channel token is not remembered as unknown: a channel created with it a moment
/// later, on another instance, is found by the next request, and an instance started later
/// knows it from the start. Tokens match exactly (not ignoring case or trailing spaces, as
/// MariaDB's default collation would), and control characters are refused.
async fn a_channel_is_found_by_its_exact_token_right_after_a_miss(v: Variant) {
    // A server whose background work leaves the statement counter alone.
    let Some(app) = crate::cache_reads::spawn(v).await else {
        return;
    };
    let sibling = app.sibling().await;
    let admin = app.admin_token().await;
    let ask = |api: &crate::helpers::Api, token: &str| {
        api.post("{ activeChannel { code } }", json!({}))
            .header("channel-token", token)
    };
    let r = TestApp::send(ask(&sibling, "Shop-B")).await;
    refused(&r, "NOT_FOUND", "a token before its channel exists");
    let r = app
        .gql_as(
            &admin,
            "mutation($i: CreateChannelInput!) { createChannel(input: $i) { code token } }",
            json!({ "i": { "code": "shop-b", "token": "Shop-B" } }),
        )
        .await
        .ok();
    assert_eq!(r.data()["createChannel"]["token"], "Shop-B");
    for api in [&*sibling, &app.api] {
        let r = TestApp::send(ask(api, "Shop-B")).await.ok();
        assert_eq!(r.data()["activeChannel"]["code"], "shop-b");
        for other in ["shop-b", "SHOP-B"] {
            let r = TestApp::send(ask(api, other)).await;
            refused(&r, "NOT_FOUND", &format!("channel token {other:?}"));
        }
    }
    // An instance started now knows every channel already: the token costs it no statement.
    let fresh = app.sibling().await;
    let before = fresh.metric("session_server_db_statements_total").await;
    let r = TestApp::send(ask(&fresh, "Shop-B")).await.ok();
    assert_eq!(r.data()["activeChannel"]["code"], "shop-b");
    let n = fresh.metric("session_server_db_statements_total").await - before;
    assert_eq!(n, 0, "a channel known at start-up was looked up");
    // Through `setActiveChannel` a token reaches the server untrimmed: MariaDB's collation
    // would match "Shop-B " to "Shop-B". A NUL byte, which PostgreSQL refuses in text, is
    // answered without a lookup, so it cannot fail the lookups it would share a statement with.
    let (anonymous, _) = app.anonymous_session().await;
    for other in ["Shop-B ", "shop-b", "Shop-B\u{0}", "\u{0}"] {
        let r = app
            .gql_as(
                &anonymous,
                "mutation($t: String!) { setActiveChannel(token: $t) { id } }",
                json!({ "t": other }),
            )
            .await;
        refused(&r, "NOT_FOUND", &format!("setActiveChannel({other:?})"));
    }
    // Nor can a channel be created with one.
    let r = app
        .gql_as(
            &admin,
            "mutation($i: CreateChannelInput!) { createChannel(input: $i) { code } }",
            json!({ "i": { "code": "shop-c", "token": "Shop\u{0}C" } }),
        )
        .await;
    refused(&r, "BAD_USER_INPUT", "a channel token with a NUL byte");
}

/// Channel codes and tokens and role codes are compared byte for byte on every backend: two that
/// differ only in case are two channels (or roles), each found by its own token, as on SQLite
/// and PostgreSQL. (MariaDB's default collation refused the second as a duplicate before the
/// `exact_codes` migration.) An exact duplicate is still refused.
async fn codes_and_tokens_that_differ_in_case_are_distinct(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let create_channel = |code: &'static str, token: &'static str| {
        app.gql_as(
            &admin,
            "mutation($i: CreateChannelInput!) { createChannel(input: $i) { id code token } }",
            json!({ "i": { "code": code, "token": token } }),
        )
    };
    let lower = create_channel("shop-e", "tok-e").await.ok();
    let upper = create_channel("Shop-E", "TOK-E").await.ok();
    assert_ne!(
        lower.data()["createChannel"]["id"],
        upper.data()["createChannel"]["id"]
    );
    for (token, code) in [("tok-e", "shop-e"), ("TOK-E", "Shop-E")] {
        let r = TestApp::send(
            app.api
                .post("{ activeChannel { code } }", json!({}))
                .header("channel-token", token),
        )
        .await
        .ok();
        assert_eq!(r.data()["activeChannel"]["code"], code, "token {token}");
    }
    let r = create_channel("shop-e", "tok-e2").await;
    refused(&r, "BAD_USER_INPUT", "a second channel shop-e");
    let r = create_channel("shop-e2", "TOK-E").await;
    refused(&r, "BAD_USER_INPUT", "a second channel token TOK-E");

    let channel = str_of(&lower.data()["createChannel"]["id"]);
    let create_role = |code: &'static str| {
        app.gql_as(
            &admin,
            "mutation($i: CreateRoleInput!) { createRole(input: $i) { id code } }",
            json!({ "i": { "code": code, "permissions": ["READ_SESSION"], "channelIds": [channel] } }),
        )
    };
    let clerk = create_role("clerk").await.ok();
    let upper_clerk = create_role("Clerk").await.ok();
    assert_eq!(upper_clerk.data()["createRole"]["code"], "Clerk");
    assert_ne!(
        clerk.data()["createRole"]["id"],
        upper_clerk.data()["createRole"]["id"]
    );
    refused(
        &create_role("clerk").await,
        "BAD_USER_INPUT",
        "a second role clerk",
    );
}

/// A NUL (which PostgreSQL refuses in text outright) or another control character in an
/// identifier, or a NUL in a role description, is `BAD_USER_INPUT` on every database, never an
/// internal error, and writes nothing.
async fn control_characters_in_identifiers_and_descriptions_are_refused(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let login =
        "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { __typename } }";
    let create_user = "mutation($i: CreateUserInput!) { createUser(input: $i) { id } }";
    let update_user = "mutation($i: UpdateUserInput!) { updateUser(input: $i) { id } }";
    let create_role = "mutation($i: CreateRoleInput!) { createRole(input: $i) { id } }";
    let update_role = "mutation($i: UpdateRoleInput!) { updateRole(input: $i) { id } }";
    let bob = app.create_user(&admin, "bob", "password-one", &[]).await;
    let default = app.default_channel_id(&admin).await;
    let role = app.create_role(&admin, "clerk", &["READ_SESSION"]).await;
    for bad in [
        "a\u{0}b",
        "\u{0}",
        "tab\tinside",
        "line\nbreak",
        "bell\u{7}",
    ] {
        let r = app.gql(login, json!({ "u": bad, "p": "pw" })).await;
        refused(&r, "BAD_USER_INPUT", &format!("login as {bad:?}"));
        let r = app
            .gql_as(
                &admin,
                create_user,
                json!({ "i": { "identifier": bad, "password": "password-one" } }),
            )
            .await;
        refused(&r, "BAD_USER_INPUT", &format!("createUser {bad:?}"));
        let r = app
            .gql_as(
                &admin,
                update_user,
                json!({ "i": { "id": bob, "identifier": bad } }),
            )
            .await;
        refused(&r, "BAD_USER_INPUT", &format!("rename to {bad:?}"));
    }
    for bad in ["a\u{0}b".to_string(), "d".repeat(4097)] {
        let r = app
            .gql_as(
                &admin,
                create_role,
                json!({ "i": { "code": "nul-role", "description": bad,
                "permissions": ["READ_SESSION"], "channelIds": [default] } }),
            )
            .await;
        refused(&r, "BAD_USER_INPUT", "createRole with a bad description");
        let r = app
            .gql_as(
                &admin,
                update_role,
                json!({ "i": { "id": role, "description": bad } }),
            )
            .await;
        refused(&r, "BAD_USER_INPUT", "updateRole with a bad description");
    }
    // Line breaks and tabs are fine in a description.
    app.gql_as(
        &admin,
        update_role,
        json!({ "i": { "id": role, "description": "line one\n\tline two" } }),
    )
    .await
    .ok();
    let r = app
        .gql_as(
            &admin,
            "{ users(first: 100) { totalCount nodes { identifier } } roles { code } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(r.data()["users"]["totalCount"], 2, "{}", r.body);
    assert!(!r.body.to_string().contains("nul-role"), "{}", r.body);
    app.login("bob", "password-one").await;
}
