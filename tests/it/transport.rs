//! Transport rules: JSON bodies only, body size limit, malformed input, mutations over GET,
//! GraphiQL, health and metrics, token extraction and cookies, query limits.

use crate::helpers::{TestApp, Variant};
use crate::sqlite_only;
use serde_json::json;

sqlite_only!(health_and_metrics_answer, graphiql_is_served_to_browsers);

async fn health_and_metrics_answer(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({ "status": "ok" })
    );
    app.gql("{ __typename }", json!({})).await.ok();
    let token = app.admin_token().await;
    app.active_session(&token).await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "session_server_graphql_requests_total{operation=\"query.__typename\"} 1",
        "session_server_graphql_request_duration_seconds_count{operation=\"query.__typename\"} 1",
        "session_server_logins_total{outcome=\"success\"} 1",
        "session_server_sessions_total{event=\"created\"} 1",
        "session_server_cache_lookups_total{tier=\"memory\",result=\"hit\"} 1",
    ] {
        assert!(text.contains(expected), "metrics lack {expected}:\n{text}");
    }
    // Prometheus text 0.0.4 by default: a counter family is named as its samples, no `# EOF`.
    assert!(
        text.contains("# TYPE session_server_graphql_requests_total counter\n"),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "{text}");
    // OpenMetrics to a scraper that asks for it.
    let r = app
        .client
        .get(app.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    let kind = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let open = r.text().await.unwrap();
    assert!(
        open.contains("# TYPE session_server_graphql_requests counter\n"),
        "{open}"
    );
    assert!(open.trim_end().ends_with("# EOF"), "{open}");
}

async fn graphiql_is_served_to_browsers(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let r = app
        .client
        .get(app.url("/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().to_lowercase().contains("graphiql"));
}

crate::variants!(anonymous_session_round_trip);

async fn anonymous_session_round_trip(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let r = app
        .gql(
            "mutation { createAnonymousSession { id kind current } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(r.data()["createAnonymousSession"]["kind"], "ANONYMOUS");
    let token = r.session_token().expect("session-token header");
    assert_eq!(token.len(), 43);
    let cookie = r.cookie("session").expect("session cookie");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Secure"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert!(!cookie.contains("Max-Age"), "{cookie}");
    let by_bearer = app.active_session(&token).await;
    assert_eq!(by_bearer["id"], r.data()["createAnonymousSession"]["id"]);
    assert_eq!(by_bearer["current"], true);
    let by_cookie = app
        .gql_cookie(&token, "{ activeSession { id } }", json!({}))
        .await
        .ok();
    assert_eq!(by_cookie.data()["activeSession"]["id"], by_bearer["id"]);
}

sqlite_only!(unknown_users_cost_as_much_as_wrong_passwords);

/// Login must not tell an unknown identifier from a wrong password by its timing: both run
/// one argon2id verification. Without the dummy hash an unknown user would answer in well
/// under a tenth of the time; the bound is loose so a noisy machine cannot fail it.
async fn unknown_users_cost_as_much_as_wrong_passwords(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| c.login_max_attempts = 1000).await else {
        return;
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (mut unknown, mut wrong) = (vec![], vec![]);
    for i in 0..5 {
        let t = std::time::Instant::now();
        let r = app.try_login(&format!("nobody-{i}"), "whatever").await;
        unknown.push(t.elapsed().as_secs_f64());
        assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
        let t = std::time::Instant::now();
        let r = app
            .try_login(crate::helpers::ADMIN, "not-the-password")
            .await;
        wrong.push(t.elapsed().as_secs_f64());
        assert_eq!(r.data()["login"]["__typename"], "InvalidCredentialsError");
    }
    let (unknown, wrong) = (median(unknown), median(wrong));
    assert!(
        unknown > wrong / 3.0,
        "unknown user answered in {unknown:.4} s, wrong password in {wrong:.4} s"
    );
}

/// CORS applies to browser requests (with `Origin`): an allowed origin gets its
/// `Access-Control-Allow-*` headers and credentials, another origin gets none, and a request
/// without `Origin` (a gateway, a server-side client) gets none either, but every answer says
/// it varies by origin so no cache hands one origin's answer to another.
#[tokio::test]
async fn cors_headers_only_for_browser_requests_and_vary_always() {
    let Some(app) = TestApp::spawn_with(Variant::SqliteMemory, |c| {
        c.cors_allowed_origins = vec!["https://shop.example".into()];
    })
    .await
    else {
        return;
    };
    let post = |origin: Option<&'static str>| {
        let mut r = app
            .client
            .post(app.url("/graphql"))
            .header("content-type", "application/json")
            .body(r#"{"query":"{ __typename }"}"#);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let allowed = post(Some("https://shop.example")).await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some("https://shop.example")
    );
    assert_eq!(
        header(&allowed, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    let exposed = header(&allowed, "access-control-expose-headers").unwrap_or_default();
    assert!(exposed.contains("session-token"), "{exposed}");
    let other = post(Some("https://evil.example")).await.unwrap();
    assert_eq!(header(&other, "access-control-allow-origin"), None);
    let plain = post(None).await.unwrap();
    assert_eq!(plain.status(), 200);
    assert_eq!(header(&plain, "access-control-allow-origin"), None);
    for r in [&allowed, &other, &plain] {
        let vary = header(r, "vary").unwrap_or_default().to_ascii_lowercase();
        assert!(vary.contains("origin"), "{vary:?}");
    }
}
