//! Storefront flows: anonymous sessions and their cookies, bearer/cookie token extraction,
//! unknown and malformed tokens, bearer-only mode, channels (`channel-token`, setActiveChannel),
//! orders (createOrder, setActiveOrder, unsetActiveOrder, placeOrder) and connection info.

use crate::helpers::{TestApp, Variant};
use serde_json::{json, Value};
use session_server::config::{TokenMethods, TrustProxy};
use std::time::Duration;

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
    every_write_of_cached_columns_raises_the_revision,
    aliases_cannot_multiply_database_work,
);

// Interleavings forced with row locks (see each test).
crate::server_databases!(
    a_channel_switch_racing_create_order_keeps_both,
    a_data_update_racing_a_channel_switch_keeps_the_channel,
    an_order_activated_while_it_is_placed_is_not_left_active,
    place_order_through_a_session_revoked_meanwhile_places_nothing,
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

/// Runs `query` as `token` on its own task, so the test can go on while it waits for a row.
fn spawn_as(
    app: &TestApp,
    token: &str,
    query: &'static str,
    variables: Value,
) -> tokio::task::JoinHandle<crate::helpers::Gql> {
    let api = crate::helpers::Api::new(app.port, Duration::from_secs(30));
    let token = token.to_string();
    tokio::spawn(async move { api.gql_as(&token, query, variables).await })
}

/// A session's row, read from the database (not through the server's cache).
async fn session_row(db: &sea_orm::DatabaseConnection, id: i64) -> entity::session::Model {
    use sea_orm::EntityTrait;
    entity::session::Entity::find_by_id(id)
        .one(db)
        .await
        .expect("read the session")
        .expect("the session row")
}

/// Holds one session's row until the returned transaction is committed.
async fn hold_session(db: &sea_orm::DatabaseConnection, id: i64) -> sea_orm::DatabaseTransaction {
    use entity::session;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    crate::helpers::hold_rows(
        db,
        session::Entity::find().filter(session::Column::Id.eq(id)),
    )
    .await
}

fn number(v: &Value) -> i64 {
    crate::helpers::str_of(v).parse().expect("a numeric id")
}

/// An anonymous session whose row the test holds, and a second channel (`eu`) to switch to.
struct Held {
    token: String,
    id: i64,
    db: sea_orm::DatabaseConnection,
    hold: sea_orm::DatabaseTransaction,
    eu_id: String,
    eu_token: String,
}

impl Held {
    async fn new(app: &TestApp) -> Held {
        let admin = app.admin_token().await;
        let (eu_id, eu_token) = app.create_channel(&admin, "eu").await;
        let (token, id) = app.anonymous_session().await;
        let id: i64 = id.parse().expect("a numeric id");
        let db = sea_orm::Database::connect(&app.database_url)
            .await
            .expect("connect");
        let hold = hold_session(&db, id).await;
        Held {
            token,
            id,
            db,
            hold,
            eu_id,
            eu_token,
        }
    }
}

const SET_CHANNEL: &str =
    "mutation($t: String!) { setActiveChannel(token: $t) { activeChannel { code } } }";
const ACTIVE_PARTS: &str =
    "{ activeSession { activeChannel { code } activeOrder { id state } data dataVersion } }";

/// `setActiveChannel` and `createOrder` on one session at once both land, in the database and
/// in the cache: neither writes the other's column back from its copy of the session. Both
/// wait for the session's row (held by the test) and go on together.
async fn a_channel_switch_racing_create_order_keeps_both(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let Held {
        token,
        id,
        db,
        hold,
        eu_id,
        eu_token,
    } = Held::new(&app).await;
    let switch = spawn_as(&app, &token, SET_CHANNEL, json!({ "t": eu_token }));
    let create = spawn_as(&app, &token, "mutation { createOrder { id } }", json!({}));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !switch.is_finished() && !create.is_finished(),
        "the writes did not wait for the row"
    );
    hold.commit().await.expect("release the row");
    switch.await.expect("setActiveChannel task").ok();
    let created = create.await.expect("createOrder task").ok();
    let order_id = number(&created.data()["createOrder"]["id"]);

    let row = session_row(&db, id).await;
    assert_eq!(
        row.active_channel_id,
        Some(eu_id.parse().unwrap()),
        "{row:?}"
    );
    assert_eq!(row.active_order_id, Some(order_id), "{row:?}");
    let r = app.gql_as(&token, ACTIVE_PARTS, json!({})).await.ok();
    let s = &r.data()["activeSession"];
    assert_eq!(s["activeChannel"]["code"], "eu", "{}", r.body);
    assert_eq!(number(&s["activeOrder"]["id"]), order_id, "{}", r.body);
}

/// An `updateSessionData` that read the session before a `setActiveChannel` committed, and
/// wrote after it, leaves the new channel in the cache (it used to cache the channel it first
/// read). The test holds the row; the channel switch queues for it first, then the data update.
async fn a_data_update_racing_a_channel_switch_keeps_the_channel(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let Held {
        token,
        db: _db,
        hold,
        eu_token,
        ..
    } = Held::new(&app).await;
    let switch = spawn_as(&app, &token, SET_CHANNEL, json!({ "t": eu_token }));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let update = spawn_as(
        &app,
        &token,
        "mutation { updateSessionData(set: { step: 2 }) { dataVersion } }",
        json!({}),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !switch.is_finished() && !update.is_finished(),
        "the writes did not wait for the row"
    );
    hold.commit().await.expect("release the row");
    switch.await.expect("setActiveChannel task").ok();
    update.await.expect("updateSessionData task").ok();

    let r = app.gql_as(&token, ACTIVE_PARTS, json!({})).await.ok();
    let s = &r.data()["activeSession"];
    assert_eq!(s["activeChannel"]["code"], "eu", "{}", r.body);
    assert_eq!(s["data"], json!({ "step": 2 }), "{}", r.body);
    assert_eq!(s["dataVersion"], 1, "{}", r.body);
}

/// Placing an order while another session of its owner activates it leaves no session with
/// the placed order active. The test holds the second session's row, so the activation has
/// checked (old code) or locked (now) the order when the placing runs.
async fn an_order_activated_while_it_is_placed_is_not_left_active(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "olga", "password-0", &[]).await;
    let one = app.login("olga", "password-0").await.token;
    let two = app.login("olga", "password-0").await.token;
    let r = app
        .gql_as(&one, "mutation { createOrder { id } }", json!({}))
        .await
        .ok();
    let order_id = number(&r.data()["createOrder"]["id"]);
    let two_id = number(&app.active_session(&two).await["id"]);
    let db = sea_orm::Database::connect(&app.database_url)
        .await
        .expect("connect");
    let hold = hold_session(&db, two_id).await;
    let activate = spawn_as(
        &app,
        &two,
        "mutation($o: ID!) { setActiveOrder(orderId: $o) { activeOrder { id } } }",
        json!({ "o": order_id.to_string() }),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !activate.is_finished(),
        "the activation did not wait for the row"
    );
    let place = spawn_as(
        &app,
        &one,
        "mutation { placeOrder { id state } }",
        json!({}),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    hold.commit().await.expect("release the row");
    let activated = activate.await.expect("setActiveOrder task");
    assert_ne!(activated.status, 500, "{}", activated.body);
    let placed = place.await.expect("placeOrder task").ok();
    assert_eq!(
        placed.data()["placeOrder"]["state"],
        "PLACED",
        "{}",
        placed.body
    );

    assert_eq!(session_row(&db, two_id).await.active_order_id, None);
    for token in [&one, &two] {
        let r = app.gql_as(token, ACTIVE_PARTS, json!({})).await.ok();
        assert!(
            r.data()["activeSession"]["activeOrder"].is_null(),
            "a placed order is still active: {}",
            r.body
        );
    }
}

/// A `placeOrder` whose session is revoked while it waits places nothing. The test holds the
/// session's row and revokes it in that transaction.
async fn place_order_through_a_session_revoked_meanwhile_places_nothing(v: Variant) {
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let r = app
        .gql("mutation { createOrder { id } }", json!({}))
        .await
        .ok();
    let token = r.session_token().expect("a session token");
    let order_id = number(&r.data()["createOrder"]["id"]);
    let id = number(&app.active_session(&token).await["id"]);
    let db = sea_orm::Database::connect(&app.database_url)
        .await
        .expect("connect");
    let revoke = hold_session(&db, id).await;
    let place = spawn_as(
        &app,
        &token,
        "mutation { placeOrder { id state } }",
        json!({}),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    entity::session::Entity::update_many()
        .col_expr(entity::session::Column::Invalidated, Expr::value(true))
        .filter(entity::session::Column::Id.eq(id))
        .exec(&revoke)
        .await
        .expect("revoke the session");
    revoke.commit().await.expect("commit the revocation");
    let r = place.await.expect("placeOrder task");
    assert_eq!(r.error_code(), Some("UNAUTHENTICATED"), "{}", r.body);
    let order = entity::order::Entity::find_by_id(order_id)
        .one(&db)
        .await
        .expect("read the order")
        .expect("the order");
    assert_eq!(order.state, "ACTIVE", "a revoked session placed the order");
}

/// Every write of what the cache holds of a session raises its row's revision (the caches
/// compare it, so no instance goes back to an older row): the channel, the order (created,
/// unset, set, placed), the data, and the end of the session.
async fn every_write_of_cached_columns_raises_the_revision(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let (_, eu_token) = app.create_channel(&admin, "eu").await;
    let (token, id) = app.anonymous_session().await;
    let id: i64 = id.parse().expect("a numeric id");
    let db = sea_orm::Database::connect(&app.database_url)
        .await
        .expect("connect");
    let mut revision = session_row(&db, id).await.revision;
    let mut order = Value::Null;
    let writes: [(&str, &str); 7] = [
        ("setActiveChannel", SET_CHANNEL),
        ("createOrder", "mutation { createOrder { id } }"),
        (
            "updateSessionData",
            "mutation { updateSessionData(set: { step: 1 }) { dataVersion } }",
        ),
        ("unsetActiveOrder", "mutation { unsetActiveOrder { id } }"),
        (
            "setActiveOrder",
            "mutation($o: ID!) { setActiveOrder(orderId: $o) { id } }",
        ),
        ("placeOrder", "mutation { placeOrder { id } }"),
        ("logout", "mutation { logout }"),
    ];
    for (name, mutation) in writes {
        let variables = match name {
            "setActiveChannel" => json!({ "t": eu_token }),
            "setActiveOrder" => json!({ "o": order }),
            _ => json!({}),
        };
        let r = app.gql_as(&token, mutation, variables).await.ok();
        if name == "createOrder" {
            order = r.data()["createOrder"]["id"].clone();
        }
        let now = session_row(&db, id).await.revision;
        assert!(now > revision, "{name}: revision {revision} -> {now}");
        revision = now;
    }
}

/// Root fields that go to the database cost 20 of the document's complexity limit of 1000:
/// 60 aliased `createOrder`s (or `activeOrder`s) are refused before any runs, and nothing is
/// created; a handful is fine.
async fn aliases_cannot_multiply_database_work(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let (token, _) = app.anonymous_session().await;
    let many = |field: &str, n: usize| -> String {
        (0..n).map(|i| format!("a{i}: {field} {{ id }} ")).collect()
    };
    let r = app
        .gql_as(
            &token,
            &format!("mutation {{ {}}}", many("createOrder", 60)),
            json!({}),
        )
        .await;
    assert_ne!(r.status, 500, "{}", r.body);
    assert!(r.data().is_null(), "{}", r.body);
    let message = r.body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("too complex"), "{}", r.body);
    let r = app
        .gql_as(&token, "{ activeOrder { id } }", json!({}))
        .await
        .ok();
    assert!(
        r.data()["activeOrder"].is_null(),
        "an order was created: {}",
        r.body
    );
    let r = app
        .gql_as(
            &token,
            &format!("{{ {}}}", many("activeOrder", 60)),
            json!({}),
        )
        .await;
    assert!(r.data().is_null(), "{}", r.body);
    // A few are fine.
    let r = app
        .gql_as(
            &token,
            &format!("mutation {{ {}}}", many("createOrder", 3)),
            json!({}),
        )
        .await
        .ok();
    assert!(r.data()["a2"]["id"].is_string(), "{}", r.body);
}
