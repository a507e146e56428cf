//! Storefront flows: anonymous sessions and their cookies, bearer/cookie token extraction,
//! unknown and malformed tokens, bearer-only mode, channels (`channel-token`, setActiveChannel),
//! orders (createOrder, setActiveOrder, unsetActiveOrder, placeOrder) and connection info.

use crate::helpers::{TestApp, Variant};
use serde_json::{json, Value};
use session_server::config::{TokenMethods, TrustProxy};

crate::variants!(
    anonymous_session_token_and_cookie,
    insecure_cookie_has_no_secure_flag,
    bearer_and_cookie_both_work_and_bearer_wins,
    unknown_and_malformed_tokens_have_no_session,
    bearer_only_ignores_cookies,
    channels_default_header_and_set_active,
    create_order_without_session,
    set_active_order_of_another_session_is_refused,
    unset_and_place_order,
    connection_info_is_recorded,
    forwarded_for_only_with_trust_proxy,
);

const SESSION_FIELDS: &str = "{ activeSession { id kind ipAddress userAgent } }";

/// A `Set-Cookie` line that deletes its cookie.
fn is_clearing(cookie: &str) -> bool {
    let lower = cookie.to_ascii_lowercase();
    lower.contains("max-age=0") || lower.contains("1970")
}

async fn anonymous_session_token_and_cookie(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let r = app
        .gql("mutation { createAnonymousSession { id kind } }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["createAnonymousSession"]["kind"], "ANONYMOUS");
    let token = r.session_token().expect("session-token header");
    assert_eq!(token.len(), 43, "{token}");
    assert!(
        token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{token}"
    );
    let cookie = r.cookie("session").expect("session cookie");
    assert!(cookie.starts_with(&format!("session={token}")), "{cookie}");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Secure"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert!(!cookie.contains("Max-Age"), "{cookie}");
    // A second session gets a different token.
    let (other, _) = app.anonymous_session().await;
    assert_ne!(other, token);
}

async fn insecure_cookie_has_no_secure_flag(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| c.cookie_secure = false).await else {
        return;
    };
    let r = app
        .gql("mutation { createAnonymousSession { id } }", json!({}))
        .await
        .ok();
    let cookie = r.cookie("session").expect("session cookie");
    assert!(!cookie.contains("Secure"), "{cookie}");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
}

async fn bearer_and_cookie_both_work_and_bearer_wins(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (token_a, id_a) = app.anonymous_session().await;
    let (token_b, id_b) = app.anonymous_session().await;
    assert_ne!(id_a, id_b);
    let by_bearer = app.active_session(&token_a).await;
    assert_eq!(by_bearer["id"], id_a.as_str());
    assert_eq!(by_bearer["current"], true);
    let by_cookie = app
        .gql_cookie(&token_b, "{ activeSession { id current } }", json!({}))
        .await
        .ok();
    assert_eq!(by_cookie.data()["activeSession"]["id"], id_b.as_str());
    assert_eq!(by_cookie.data()["activeSession"]["current"], true);
    let both = TestApp::send(
        app.post("{ activeSession { id } }", json!({}))
            .bearer_auth(&token_a)
            .header("cookie", format!("session={token_b}")),
    )
    .await
    .ok();
    assert_eq!(both.data()["activeSession"]["id"], id_a.as_str());
}

async fn unknown_and_malformed_tokens_have_no_session(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    // A valid session exists, so a null answer is not just an empty database.
    let (good, _) = app.anonymous_session().await;
    assert!(!app.active_session(&good).await.is_null());
    let unknown = session_server::token::random_string(32);
    assert_eq!(unknown.len(), 43);
    let malformed = [
        "short".to_string(),
        format!("{}!", &unknown[..42]),
        format!("{unknown}x"),
        "a".repeat(500),
    ];
    for token in std::iter::once(&unknown).chain(malformed.iter()) {
        let r = app
            .gql_as(token, "{ activeSession { id } }", json!({}))
            .await
            .ok();
        assert!(r.data()["activeSession"].is_null(), "{token}: {}", r.body);
        let r = app
            .gql_cookie(token, "{ activeSession { id } }", json!({}))
            .await
            .ok();
        assert!(r.data()["activeSession"].is_null(), "{token}: {}", r.body);
        let cleared = r
            .cookie("session")
            .unwrap_or_else(|| panic!("no Set-Cookie clearing `session` for {token}"));
        assert!(is_clearing(&cleared), "{cleared}");
    }
    // A valid cookie is not cleared.
    let r = app
        .gql_cookie(&good, "{ activeSession { id } }", json!({}))
        .await
        .ok();
    assert!(!r.data()["activeSession"].is_null());
    assert!(
        r.cookie("session").is_none_or(|c| !is_clearing(&c)),
        "{:?}",
        r.cookie("session")
    );
}

async fn bearer_only_ignores_cookies(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.token_method = TokenMethods {
            cookie: false,
            bearer: true,
        }
    })
    .await
    else {
        return;
    };
    let r = app
        .gql("mutation { createAnonymousSession { id } }", json!({}))
        .await
        .ok();
    let token = r.session_token().expect("session-token header");
    assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
    assert!(!app.active_session(&token).await.is_null());
    let r = app
        .gql_cookie(&token, "{ activeSession { id } }", json!({}))
        .await
        .ok();
    assert!(r.data()["activeSession"].is_null(), "{}", r.body);
    assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
    // Login sets no cookies either.
    let r = app
        .gql(
            "mutation { login(username: \"superadmin\", password: \"superadmin\") { __typename } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(r.data()["login"]["__typename"], "AuthenticationSuccess");
    assert!(r.session_token().is_some());
    assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
}

async fn channels_default_header_and_set_active(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let r = app
        .gql("{ activeChannel { id code token } }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["activeChannel"]["code"], "default");
    let default_id = r.data()["activeChannel"]["id"].clone();
    let admin = app.admin_token().await;
    let (eu_id, eu_token) = app.create_channel(&admin, "eu").await;
    assert_ne!(Value::from(eu_id.clone()), default_id);

    // The channel-token header selects the channel, with or without a session.
    let r = TestApp::send(
        app.post("{ activeChannel { id code } }", json!({}))
            .header("channel-token", &eu_token),
    )
    .await
    .ok();
    assert_eq!(r.data()["activeChannel"]["code"], "eu");
    assert_eq!(r.data()["activeChannel"]["id"], eu_id.as_str());

    // An unknown channel token is NOT_FOUND.
    let r = TestApp::send(
        app.post("{ activeChannel { id code } }", json!({}))
            .header("channel-token", "no-such-channel-token"),
    )
    .await;
    assert_eq!(r.error_code(), Some("NOT_FOUND"), "{}", r.body);

    // setActiveChannel makes the channel the session's default.
    let (token, _) = app.anonymous_session().await;
    let r = app
        .gql_as(&token, "{ activeChannel { code } }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["activeChannel"]["code"], "default");
    let r = app
        .gql_as(
            &token,
            "mutation($t: String!) { setActiveChannel(token: $t) { id activeChannel { code } } }",
            json!({ "t": eu_token }),
        )
        .await
        .ok();
    assert_eq!(r.data()["setActiveChannel"]["activeChannel"]["code"], "eu");
    let r = app
        .gql_as(
            &token,
            "{ activeChannel { code } activeSession { activeChannel { code } } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(r.data()["activeChannel"]["code"], "eu");
    assert_eq!(r.data()["activeSession"]["activeChannel"]["code"], "eu");
    // Other sessions are unaffected.
    let (other, _) = app.anonymous_session().await;
    let r = app
        .gql_as(&other, "{ activeChannel { code } }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["activeChannel"]["code"], "default");
    // setActiveChannel with an unknown token is NOT_FOUND.
    let r = app
        .gql_as(
            &token,
            "mutation { setActiveChannel(token: \"nope\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(r.error_code(), Some("NOT_FOUND"), "{}", r.body);
}

async fn create_order_without_session(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let r = app
        .gql(
            "mutation { createOrder { id code state user { id } channel { code } } }",
            json!({}),
        )
        .await
        .ok();
    let order = r.data()["createOrder"].clone();
    assert_eq!(order["state"], "ACTIVE");
    assert!(order["user"].is_null());
    assert_eq!(order["channel"]["code"], "default");
    let token = r
        .session_token()
        .expect("createOrder issues a session token");
    assert_eq!(token.len(), 43);
    assert!(r.cookie("session").is_some());
    let r = app
        .gql_as(
            &token,
            "{ activeOrder { id state } activeSession { kind activeOrder { id } } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(r.data()["activeOrder"]["id"], order["id"]);
    assert_eq!(r.data()["activeOrder"]["state"], "ACTIVE");
    assert_eq!(r.data()["activeSession"]["kind"], "ANONYMOUS");
    assert_eq!(r.data()["activeSession"]["activeOrder"]["id"], order["id"]);
    // With an existing session, createOrder uses it (no new token) and replaces the active order.
    let r = app
        .gql_as(&token, "mutation { createOrder { id } }", json!({}))
        .await
        .ok();
    let second = r.data()["createOrder"]["id"].clone();
    assert_ne!(second, order["id"]);
    assert!(r.session_token().is_none(), "{:?}", r.session_token());
    let r = app
        .gql_as(&token, "{ activeOrder { id } }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["activeOrder"]["id"], second);
}

async fn set_active_order_of_another_session_is_refused(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let a = app
        .gql("mutation { createOrder { id } }", json!({}))
        .await
        .ok();
    let (order_a, token_a) = (
        a.data()["createOrder"]["id"].clone(),
        a.session_token().unwrap(),
    );
    let b = app
        .gql("mutation { createOrder { id } }", json!({}))
        .await
        .ok();
    let (order_b, token_b) = (
        b.data()["createOrder"]["id"].clone(),
        b.session_token().unwrap(),
    );
    let r = app
        .gql_as(
            &token_a,
            "mutation($o: ID!) { setActiveOrder(orderId: $o) { id activeOrder { id } } }",
            json!({ "o": order_b }),
        )
        .await;
    assert_eq!(r.error_code(), Some("NOT_FOUND"), "{}", r.body);
    let r = app
        .gql_as(&token_a, "{ activeOrder { id } }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["activeOrder"]["id"], order_a);
    let r = app
        .gql_as(&token_b, "{ activeOrder { id } }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["activeOrder"]["id"], order_b);
    // A nonexistent order is NOT_FOUND too; the own order can be set again.
    let r = app
        .gql_as(
            &token_a,
            "mutation { setActiveOrder(orderId: \"999999\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(r.error_code(), Some("NOT_FOUND"), "{}", r.body);
    app.gql_as(&token_a, "mutation { unsetActiveOrder { id } }", json!({}))
        .await
        .ok();
    let r = app
        .gql_as(
            &token_a,
            "mutation($o: ID!) { setActiveOrder(orderId: $o) { activeOrder { id } } }",
            json!({ "o": order_a }),
        )
        .await
        .ok();
    assert_eq!(r.data()["setActiveOrder"]["activeOrder"]["id"], order_a);
}

async fn unset_and_place_order(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let r = app
        .gql("mutation { createOrder { id } }", json!({}))
        .await
        .ok();
    let token = r.session_token().unwrap();
    let order = r.data()["createOrder"]["id"].clone();
    let r = app
        .gql_as(
            &token,
            "mutation { unsetActiveOrder { id activeOrder { id } } }",
            json!({}),
        )
        .await
        .ok();
    assert!(r.data()["unsetActiveOrder"]["activeOrder"].is_null());
    let r = app
        .gql_as(&token, "{ activeOrder { id } }", json!({}))
        .await
        .ok();
    assert!(r.data()["activeOrder"].is_null(), "{}", r.body);

    // Set it again and place it.
    app.gql_as(
        &token,
        "mutation($o: ID!) { setActiveOrder(orderId: $o) { id } }",
        json!({ "o": order }),
    )
    .await
    .ok();
    let r = app
        .gql_as(&token, "mutation { placeOrder { id state } }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["placeOrder"]["id"], order);
    assert_eq!(r.data()["placeOrder"]["state"], "PLACED");
    let r = app
        .gql_as(
            &token,
            "{ activeOrder { id } activeSession { activeOrder { id } } }",
            json!({}),
        )
        .await
        .ok();
    assert!(r.data()["activeOrder"].is_null(), "{}", r.body);
    assert!(r.data()["activeSession"]["activeOrder"].is_null());
}

async fn connection_info_is_recorded(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let r = TestApp::send(
        app.post("mutation { createAnonymousSession { id } }", json!({}))
            .header("user-agent", "StorefrontTest/1.0 (integration)")
            .header("x-forwarded-for", "203.0.113.9"),
    )
    .await
    .ok();
    let token = r.session_token().unwrap();
    let r = app.gql_as(&token, SESSION_FIELDS, json!({})).await.ok();
    let s = &r.data()["activeSession"];
    assert_eq!(s["ipAddress"], "127.0.0.1", "{s}");
    assert_eq!(s["userAgent"], "StorefrontTest/1.0 (integration)", "{s}");
}

async fn forwarded_for_only_with_trust_proxy(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| c.trust_proxy = TrustProxy::hops(1)).await else {
        return;
    };
    let r = TestApp::send(
        app.post("mutation { createAnonymousSession { id } }", json!({}))
            .header("x-forwarded-for", "203.0.113.9, 10.0.0.1"),
    )
    .await
    .ok();
    let token = r.session_token().unwrap();
    let r = app.gql_as(&token, SESSION_FIELDS, json!({})).await.ok();
    // The entry the (one) trusted proxy appended, not the client's own claim to its left.
    assert_eq!(
        r.data()["activeSession"]["ipAddress"],
        "10.0.0.1",
        "{}",
        r.body
    );
    // Without the header the socket address is used.
    let (token, _) = app.anonymous_session().await;
    let r = app.gql_as(&token, SESSION_FIELDS, json!({})).await.ok();
    assert_eq!(r.data()["activeSession"]["ipAddress"], "127.0.0.1");
}
