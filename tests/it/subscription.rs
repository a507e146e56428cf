//! The live subscription `sessionEvents` over WebSocket on `/graphql`, with a real client
//! (tokio-tungstenite) speaking `graphql-transport-ws` (and `graphql-ws`) by hand: events
//! arrive with their fields, filtered by type and by the subscriber's channels; refused
//! connections get the protocol's error (never a hang); a revoked subscriber's stream ends;
//! three instances on one PostgreSQL and one Redis see each other's events exactly once; a
//! subscriber that stops reading is dropped while the others keep receiving.

use crate::helpers::{str_of, Api, TestApp, Variant, ADMIN, ADMIN_PASSWORD};
use crate::procs::{metric, pg_and_redis};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

crate::variants!(an_admin_sees_logins_live_with_their_fields);
crate::sqlite_only!(
    types_filter_what_a_subscription_gets,
    callers_without_read_session_are_refused_with_the_protocols_error,
    a_cookie_counts_only_from_an_allowed_origin,
    a_channel_scoped_admin_sees_only_their_channels,
    the_stream_ends_when_the_subscribers_session_is_revoked,
    a_socket_runs_no_query_or_mutation,
    the_older_graphql_ws_protocol_works_too,
    the_connection_rules_hold,
    a_subscriber_that_stops_reading_is_dropped_while_others_keep_receiving,
    plain_get_and_post_still_refuse_subscriptions,
    one_address_may_hold_only_a_few_connections_waiting_for_init,
);

/// Longest wait for any one message: a hang fails the test instead of blocking it.
const WAIT: Duration = Duration::from_secs(15);

const EVENTS: &str = "subscription($t: [SessionEventType!]) { sessionEvents(types: $t) {
    id type at sessionId userId actorUserId identifier ipAddress userAgent channelCode reason } }";

const TRANSPORT_WS: &str = "graphql-transport-ws";
const LEGACY_WS: &str = "graphql-ws";

/// What the server said next.
#[derive(Debug)]
enum Said {
    Json(Value),
    Closed(Option<(u16, String)>),
}

struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Opens `/graphql` with `protocol` and extra upgrade headers.
    async fn open(port: u16, protocol: &str, headers: &[(&str, &str)]) -> Ws {
        let mut req = format!("ws://127.0.0.1:{port}/graphql")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(protocol).unwrap(),
        );
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (stream, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("the upgrade answers in time")
            .expect("the upgrade succeeds");
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(protocol)
        );
        Ws { stream }
    }

    /// Opens over a socket with a tiny receive buffer (a client that reads slowly, if at all).
    async fn open_small_buffer(port: u16, token: &str) -> Ws {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        let mut req = format!("ws://127.0.0.1:{port}/graphql")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(TRANSPORT_WS),
        );
        let (stream, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
        let mut ws = Ws { stream };
        ws.init(json!({ "authorization": format!("Bearer {token}") }))
            .await;
        ws
    }

    async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    /// The next protocol message or the close, within [`WAIT`].
    async fn next(&mut self) -> Said {
        self.next_within(WAIT)
            .await
            .expect("the server answers in time (no hang)")
    }

    async fn next_within(&mut self, limit: Duration) -> Option<Said> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("JSON message");
                    if matches!(v["type"].as_str(), Some("ping" | "ka")) {
                        continue;
                    }
                    return Some(Said::Json(v));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(Said::Closed(
                        frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    ))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(Said::Closed(None)),
            }
        }
    }

    async fn expect_json(&mut self) -> Value {
        match self.next().await {
            Said::Json(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    async fn init(&mut self, payload: Value) {
        self.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        let ack = self.expect_json().await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
    }

    async fn subscribe(&mut self, id: &str, types: Option<&[&str]>) {
        self.send(json!({ "id": id, "type": "subscribe",
            "payload": { "query": EVENTS, "variables": { "t": types } } }))
            .await;
    }

    /// The next event of subscription `id` (a `next` message), skipping nothing else.
    async fn expect_event(&mut self, id: &str) -> Value {
        let m = self.expect_json().await;
        assert_eq!(m["type"], "next", "{m}");
        assert_eq!(m["id"], id, "{m}");
        assert!(m["payload"]["errors"].is_null(), "{m}");
        m["payload"]["data"]["sessionEvents"].clone()
    }

    /// Nothing arrives for `quiet`.
    async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(said) = self.next_within(quiet).await {
            panic!("expected nothing, got {said:?}");
        }
    }
}

/// Connects as `token` and starts subscription "1" with `types`, waiting until the server has
/// it running (so nothing published after this is missed).
async fn subscriber(app: &TestApp, token: &str, types: Option<&[&str]>) -> Ws {
    let before = subscribers(app).await;
    let mut ws = Ws::open(app.port, TRANSPORT_WS, &[]).await;
    ws.init(json!({ "authorization": format!("Bearer {token}") }))
        .await;
    ws.subscribe("1", types).await;
    wait_subscribers(app, before + 1.0).await;
    ws
}

/// Live subscriptions on an instance, from `/metrics`.
async fn subscribers(api: &Api) -> f64 {
    metric(&api.metrics().await, "session_server_event_subscribers")
}

async fn wait_subscribers(api: &Api, n: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if subscribers(api).await >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscription never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs in with a user agent; returns `(token, session id)`.
async fn login_as(api: &Api, username: &str, password: &str, user_agent: &str) -> (String, String) {
    let r = Api::send(
        api.post(
            "mutation($u: String!, $p: String!) { login(username: $u, password: $p) {
                __typename ... on AuthenticationSuccess { session { id } } } }",
            json!({ "u": username, "p": password }),
        )
        .header("user-agent", user_agent),
    )
    .await
    .ok();
    assert_eq!(
        r.data()["login"]["__typename"],
        "AuthenticationSuccess",
        "{}",
        r.body
    );
    (
        r.session_token().unwrap(),
        str_of(&r.data()["login"]["session"]["id"]),
    )
}

/// A user holding `READ_SESSION` in the default channel: `(user id, token)`.
async fn reader(app: &TestApp, admin: &str, name: &str) -> (String, String) {
    let role = app
        .create_role(admin, &format!("{name}-reader"), &["READ_SESSION"])
        .await;
    let id = app.create_user(admin, name, "password-one", &[&role]).await;
    (id, app.login(name, "password-one").await.token)
}

async fn an_admin_sees_logins_live_with_their_fields(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let alice = app.create_user(&admin, "alice", "password-one", &[]).await;
    let mut ws = subscriber(&app, &admin, None).await;

    let (_, session_id) = login_as(&app, "alice", "password-one", "live-test/1.0").await;
    let e = ws.expect_event("1").await;
    assert_eq!(e["type"], "LOGIN_SUCCEEDED", "{e}");
    assert_eq!(e["userId"], alice.as_str());
    assert_eq!(e["actorUserId"], alice.as_str());
    assert_eq!(e["sessionId"], session_id.as_str());
    assert_eq!(e["identifier"], "alice");
    assert_eq!(e["userAgent"], "live-test/1.0");
    assert_eq!(e["ipAddress"], "127.0.0.1");
    assert_eq!(e["channelCode"], "default");
    assert!(e["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(e["at"].as_str().is_some_and(|at| at.ends_with('Z')), "{e}");
    // Recorded too: the live event is the stored one.
    let listed = app
        .gql_as(
            &admin,
            "{ sessionEvents(filter: { types: [LOGIN_SUCCEEDED] }, first: 1) { nodes { id } } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(listed.data()["sessionEvents"]["nodes"][0]["id"], e["id"]);

    // The subscriber's own later login shows as well, once (no duplicates).
    let (_, again) = login_as(&app, ADMIN, ADMIN_PASSWORD, "live-test/2.0").await;
    let e = ws.expect_event("1").await;
    assert_eq!(e["sessionId"], again.as_str());
    ws.expect_silence(Duration::from_millis(300)).await;
}

async fn types_filter_what_a_subscription_gets(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "alice", "password-one", &[]).await;
    let before = subscribers(&app).await;
    let mut ws = Ws::open(app.port, TRANSPORT_WS, &[]).await;
    ws.init(json!({ "Authorization": format!("Bearer {admin}") }))
        .await;
    ws.subscribe("failed", Some(&["LOGIN_FAILED", "LOGGED_OUT"]))
        .await;
    ws.subscribe("succeeded", Some(&["LOGIN_SUCCEEDED"])).await;
    wait_subscribers(&app, before + 2.0).await;

    login_as(&app, "alice", "password-one", "t").await;
    let e = ws.expect_event("succeeded").await;
    assert_eq!(e["type"], "LOGIN_SUCCEEDED");
    // The other subscription, asking other types, got nothing.
    ws.expect_silence(Duration::from_millis(500)).await;

    // Ending one subscription leaves the other running.
    ws.send(json!({ "id": "succeeded", "type": "complete" }))
        .await;
    let m = ws.expect_json().await;
    assert_eq!(
        (&m["type"], &m["id"]),
        (&json!("complete"), &json!("succeeded"))
    );
    login_as(&app, "alice", "password-one", "t").await;
    ws.expect_silence(Duration::from_millis(500)).await;
}

/// Asserts a `graphql-transport-ws` connection is refused with 4403 at `connection_init`.
async fn refused(port: u16, headers: &[(&str, &str)], payload: Value, code_in_reason: &str) {
    let mut ws = Ws::open(port, TRANSPORT_WS, headers).await;
    ws.send(json!({ "type": "connection_init", "payload": payload }))
        .await;
    match ws.next().await {
        Said::Closed(Some((4403, reason))) => {
            assert!(reason.contains(code_in_reason), "{reason}")
        }
        other => panic!("expected close 4403 ({code_in_reason}), got {other:?}"),
    }
}

async fn callers_without_read_session_are_refused_with_the_protocols_error(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "alice", "password-one", &[]).await;
    let alice = app.login("alice", "password-one").await.token;
    let (anonymous, _) = app.anonymous_session().await;

    // Anonymous: no token at all, an anonymous session, a malformed and an unknown token.
    refused(app.port, &[], json!({}), "UNAUTHENTICATED").await;
    refused(app.port, &[], Value::Null, "UNAUTHENTICATED").await;
    let bearer = |t: &str| json!({ "authorization": format!("Bearer {t}") });
    refused(app.port, &[], bearer(&anonymous), "UNAUTHENTICATED").await;
    refused(app.port, &[], bearer("not-a-token"), "UNAUTHENTICATED").await;
    let unknown = "A".repeat(43);
    refused(app.port, &[], bearer(&unknown), "UNAUTHENTICATED").await;
    refused(
        app.port,
        &[],
        json!({ "authorization": 42 }),
        "BAD_USER_INPUT",
    )
    .await;
    // Logged in without READ_SESSION.
    refused(app.port, &[], bearer(&alice), "FORBIDDEN").await;
    let auth = format!("Bearer {alice}");
    refused(
        app.port,
        &[("authorization", auth.as_str())],
        json!({}),
        "FORBIDDEN",
    )
    .await;
    // The admin, in a channel that does not exist.
    refused(
        app.port,
        &[],
        json!({ "authorization": format!("Bearer {admin}"), "channel-token": "nope" }),
        "NOT_FOUND",
    )
    .await;

    // The older protocol answers a refusal with connection_error, then closes.
    let mut ws = Ws::open(app.port, LEGACY_WS, &[]).await;
    ws.send(json!({ "type": "connection_init", "payload": bearer(&alice) }))
        .await;
    let m = ws.expect_json().await;
    assert_eq!(m["type"], "connection_error", "{m}");
    assert!(
        str_of(&m["payload"]["message"]).contains("FORBIDDEN"),
        "{m}"
    );
    assert!(matches!(ws.next().await, Said::Closed(_)));

    // The upgrade request's own bearer token works when the payload has none.
    let auth = format!("Bearer {admin}");
    let mut ws = Ws::open(app.port, TRANSPORT_WS, &[("authorization", auth.as_str())]).await;
    ws.init(json!({})).await;
}

async fn a_cookie_counts_only_from_an_allowed_origin(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let cookie = format!("session={admin}");
    let host = format!("127.0.0.1:{}", app.port);
    let own = format!("http://{host}");
    // No Origin (not a browser) and this server's own origin: the cookie identifies.
    let mut ws = Ws::open(app.port, TRANSPORT_WS, &[("cookie", cookie.as_str())]).await;
    ws.init(Value::Null).await;
    let mut ws = Ws::open(
        app.port,
        TRANSPORT_WS,
        &[("cookie", cookie.as_str()), ("origin", own.as_str())],
    )
    .await;
    ws.init(json!({})).await;
    // A page of another site cannot ride on the browser's cookie.
    refused(
        app.port,
        &[
            ("cookie", cookie.as_str()),
            ("origin", "http://evil.example"),
        ],
        json!({}),
        "UNAUTHENTICATED",
    )
    .await;
    // With a token of its own in the payload, any page may subscribe.
    let mut ws = Ws::open(app.port, TRANSPORT_WS, &[("origin", "http://evil.example")]).await;
    ws.init(json!({ "authorization": format!("Bearer {admin}") }))
        .await;
}

async fn a_channel_scoped_admin_sees_only_their_channels(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let (eu_id, eu_token) = app.create_channel(&admin, "eu").await;
    let role = app
        .create_role_in(&admin, "eu-reader", &["READ_SESSION"], &[&eu_id])
        .await;
    app.create_user(&admin, "bob", "password-one", &[&role])
        .await;
    app.create_user(&admin, "alice", "password-one", &[]).await;
    app.create_user(&admin, "carol", "password-one", &[]).await;
    let bob = app.login("bob", "password-one").await.token;

    // Bob reads sessions in `eu` only: refused in the default channel.
    refused(
        app.port,
        &[],
        json!({ "authorization": format!("Bearer {bob}") }),
        "FORBIDDEN",
    )
    .await;
    let before = subscribers(&app).await;
    let mut ws = Ws::open(app.port, TRANSPORT_WS, &[]).await;
    ws.init(json!({ "authorization": format!("Bearer {bob}"), "channel-token": eu_token }))
        .await;
    ws.subscribe("1", None).await;
    wait_subscribers(&app, before + 1.0).await;

    // Alice logs in in the default channel: not bob's to see.
    login_as(&app, "alice", "password-one", "t").await;
    // Carol logs in in `eu` (her anonymous session is in `eu`, and so is her request).
    let (anon, _) = app.anonymous_session().await;
    let r = Api::send(
        app.post(
            "mutation($t: String!) { setActiveChannel(token: $t) { id } }",
            json!({ "t": eu_token }),
        )
        .bearer_auth(&anon)
        .header("channel-token", &eu_token),
    )
    .await
    .ok();
    assert!(!r.data()["setActiveChannel"].is_null());
    let r = Api::send(
        app.post(
            "mutation { login(username: \"carol\", password: \"password-one\") { __typename } }",
            json!({}),
        )
        .bearer_auth(&anon)
        .header("channel-token", &eu_token),
    )
    .await
    .ok();
    assert_eq!(r.data()["login"]["__typename"], "AuthenticationSuccess");

    // Bob's first event is carol's login in eu: alice's never came.
    let mut seen = vec![];
    loop {
        let e = ws.expect_event("1").await;
        assert_eq!(
            e["channelCode"], "eu",
            "bob saw another channel's event: {e}"
        );
        seen.push(e.clone());
        if e["type"] == "LOGIN_SUCCEEDED" {
            assert_eq!(e["identifier"], "carol");
            break;
        }
    }
    ws.expect_silence(Duration::from_millis(300)).await;
}

async fn the_stream_ends_when_the_subscribers_session_is_revoked(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let (_, reader_token) = reader(&app, &admin, "rita").await;
    let mut ws = subscriber(&app, &reader_token, Some(&["LOGIN_SUCCEEDED"])).await;
    let session_id = app.active_session(&reader_token).await["id"].clone();
    let r = app
        .gql_as(
            &admin,
            "mutation($id: ID!) { revokeSession(id: $id) }",
            json!({ "id": session_id }),
        )
        .await
        .ok();
    assert_eq!(r.data()["revokeSession"], true);
    // Within a few seconds the stream ends: an UNAUTHENTICATED error, then complete.
    let m = ws.expect_json().await;
    assert_eq!(m["type"], "next", "{m}");
    assert_eq!(
        m["payload"]["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{m}"
    );
    let m = ws.expect_json().await;
    assert_eq!(m["type"], "complete", "{m}");
    assert_eq!(m["id"], "1");
    // And no new subscription starts on the connection: its first answer is the error.
    ws.subscribe("2", None).await;
    let m = ws.expect_json().await;
    assert_eq!(m["id"], "2", "{m}");
    assert_eq!(
        m["payload"]["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{m}"
    );
    assert!(m["payload"]["data"].is_null(), "{m}");
}

/// A socket runs subscriptions only: a query or mutation sent over it would run once with the
/// session as it was at `connection_init`, so a revoked admin could go on acting through an
/// open socket (and a mutation would run over a `GET` upgrade).
async fn a_socket_runs_no_query_or_mutation(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let role = app
        .create_role(&admin, "ops", &["READ_SESSION", "READ_USER", "WRITE_USER"])
        .await;
    let olga_id = app
        .create_user(&admin, "olga", "password-one", &[&role])
        .await;
    let olga = app.login("olga", "password-one").await.token;
    let mut ws = subscriber(&app, &olga, Some(&["LOGIN_SUCCEEDED"])).await;
    let mut legacy = Ws::open(app.port, LEGACY_WS, &[]).await;
    legacy
        .init(json!({ "authorization": format!("Bearer {olga}") }))
        .await;
    // Olga's sessions are revoked: her open sockets must not act for her any more.
    app.gql_as(
        &admin,
        "mutation($id: ID!) { revokeSessionsByUser(userId: $id) }",
        json!({ "id": olga_id }),
    )
    .await
    .ok();
    let create = "mutation { createUser(input: { identifier: \"backdoor\", password: \"password-two\" }) { id } }";
    for (id, query, op) in [
        ("m", create, None),
        ("q", "{ users { totalCount } activeSession { id } }", None),
        (
            "n",
            "subscription S { sessionEvents { id } } query Q { users { totalCount } }",
            Some("Q"),
        ),
    ] {
        ws.send(json!({ "id": id, "type": "subscribe",
            "payload": { "query": query, "operationName": op } }))
            .await;
        let m = next_answer_for(&mut ws, id).await;
        assert_eq!(m["type"], "error", "{m}");
        assert_eq!(
            m["payload"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{m}"
        );
        legacy
            .send(json!({ "id": id, "type": "start", "payload": { "query": query, "operationName": op } }))
            .await;
        let m = next_answer_for(&mut legacy, id).await;
        assert_eq!(m["type"], "error", "{m}");
        assert_eq!(m["payload"]["extensions"]["code"], "BAD_USER_INPUT", "{m}");
        // The same message in a binary frame (async-graphql reads those too).
        let binary = json!({ "id": format!("{id}-bin"), "type": "subscribe",
            "payload": { "query": query, "operationName": op } });
        ws.stream
            .send(Message::Binary(binary.to_string().into_bytes().into()))
            .await
            .expect("send a binary frame");
        let m = next_answer_for(&mut ws, &format!("{id}-bin")).await;
        assert_eq!(m["type"], "error", "binary frame: {m}");
        assert_eq!(
            m["payload"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{m}"
        );
    }
    let r = app
        .gql_as(&admin, "{ users { nodes { identifier } } }", json!({}))
        .await
        .ok();
    let names: Vec<&str> = r.data()["users"]["nodes"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|u| u["identifier"].as_str())
        .collect();
    assert!(!names.contains(&"backdoor"), "{names:?}");
}

/// The next message about operation `id`, skipping the other operations' messages.
async fn next_answer_for(ws: &mut Ws, id: &str) -> Value {
    loop {
        let m = ws.expect_json().await;
        if m["id"] == id {
            return m;
        }
    }
}

/// The periodic re-check observes the subscriber's session without using it: a subscription
/// alone does not keep an idle session alive, and its stream ends when the session idles out.
#[tokio::test]
async fn an_idle_subscribers_session_still_expires() {
    let Some(app) = TestApp::spawn_with(Variant::SqliteMemory, |c| {
        c.session_idle_timeout = Duration::from_secs(4);
    })
    .await
    else {
        return;
    };
    let admin = app.admin_token().await;
    let (_, reader_token) = reader(&app, &admin, "ida").await;
    let mut ws = subscriber(&app, &reader_token, Some(&["LOGIN_SUCCEEDED"])).await;
    // Nothing uses the session now; re-checks every 2 s must not slide it (WAIT is 15 s).
    let m = ws.expect_json().await;
    assert_eq!(m["type"], "next", "{m}");
    assert_eq!(
        m["payload"]["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{m}"
    );
    assert!(app.active_session(&reader_token).await.is_null());
}

async fn the_older_graphql_ws_protocol_works_too(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "alice", "password-one", &[]).await;
    let before = subscribers(&app).await;
    let mut ws = Ws::open(app.port, LEGACY_WS, &[]).await;
    ws.init(json!({ "authorization": format!("Bearer {admin}") }))
        .await;
    ws.send(json!({ "id": "7", "type": "start",
        "payload": { "query": EVENTS, "variables": { "t": ["LOGIN_SUCCEEDED"] } } }))
        .await;
    wait_subscribers(&app, before + 1.0).await;
    login_as(&app, "alice", "password-one", "legacy").await;
    let m = ws.expect_json().await;
    assert_eq!(m["type"], "data", "{m}");
    assert_eq!(m["id"], "7");
    let e = &m["payload"]["data"]["sessionEvents"];
    assert_eq!(e["identifier"], "alice");
    assert_eq!(e["userAgent"], "legacy");
    ws.send(json!({ "id": "7", "type": "stop" })).await;
    let m = ws.expect_json().await;
    assert_eq!(m["type"], "complete", "{m}");
}

async fn the_connection_rules_hold(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let init = json!({ "authorization": format!("Bearer {admin}") });

    // subscribe before connection_init: 4401.
    let mut ws = Ws::open(app.port, TRANSPORT_WS, &[]).await;
    ws.subscribe("1", None).await;
    assert!(
        matches!(ws.next().await, Said::Closed(Some((4401, _)))),
        "subscribe before init"
    );

    // A duplicate id: 4409.
    let mut ws = Ws::open(app.port, TRANSPORT_WS, &[]).await;
    ws.init(init.clone()).await;
    ws.subscribe("dup", None).await;
    ws.subscribe("dup", None).await;
    match ws.next().await {
        Said::Closed(Some((4409, reason))) => assert!(reason.contains("dup")),
        other => panic!("expected 4409, got {other:?}"),
    }

    // At most 16 at once: the 17th gets an error, the others keep running.
    let mut ws = Ws::open(app.port, TRANSPORT_WS, &[]).await;
    ws.init(init.clone()).await;
    for i in 0..16 {
        ws.subscribe(&format!("s{i}"), None).await;
    }
    ws.subscribe("s16", None).await;
    let m = ws.expect_json().await;
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["id"], "s16");
    assert_eq!(m["payload"][0]["extensions"]["code"], "RATE_LIMITED", "{m}");
    // Completing one frees a slot.
    ws.send(json!({ "id": "s0", "type": "complete" })).await;
    let m = ws.expect_json().await;
    assert_eq!((&m["type"], &m["id"]), (&json!("complete"), &json!("s0")));
    ws.subscribe("s17", None).await;
    ws.expect_silence(Duration::from_millis(300)).await;

    // A document that does not validate: an error with a code, as over HTTP.
    let mut ws = Ws::open(app.port, TRANSPORT_WS, &[]).await;
    ws.init(init.clone()).await;
    ws.send(json!({ "id": "bad", "type": "subscribe",
        "payload": { "query": "subscription { sessionEvents { nope } }" } }))
        .await;
    let m = ws.expect_json().await;
    assert_eq!(m["id"], "bad", "{m}");
    assert_eq!(
        m["payload"]["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{m}"
    );
    let m = ws.expect_json().await;
    assert_eq!((&m["type"], &m["id"]), (&json!("complete"), &json!("bad")));
    // The slot of a refused document is free again (it did not count).
    for i in 0..16 {
        ws.subscribe(&format!("ok{i}"), None).await;
    }
    ws.expect_silence(Duration::from_millis(300)).await;

    // A second connection_init: 4429.
    let mut ws = Ws::open(app.port, TRANSPORT_WS, &[]).await;
    ws.init(init.clone()).await;
    ws.send(json!({ "type": "connection_init", "payload": init }))
        .await;
    assert!(matches!(ws.next().await, Said::Closed(Some((4429, _)))));

    // No subprotocol: a plain 400, no socket.
    let r = app
        .client
        .get(app.url("/graphql"))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A message over 256 KiB ends the connection.
    let mut ws = Ws::open(app.port, TRANSPORT_WS, &[]).await;
    ws.init(json!({ "authorization": format!("Bearer {admin}") }))
        .await;
    let huge = "x".repeat(300 * 1024);
    let _ = ws
        .stream
        .send(Message::Text(
            json!({ "id": "h", "type": "subscribe", "payload": { "query": huge } })
                .to_string()
                .into(),
        ))
        .await;
    assert!(matches!(ws.next().await, Said::Closed(_)));

    // No connection_init within 10 s: 4408.
    let mut ws = Ws::open(app.port, TRANSPORT_WS, &[]).await;
    match ws.next().await {
        Said::Closed(Some((code, _))) => assert_eq!(code, 4408),
        other => panic!("expected 4408, got {other:?}"),
    }
    // The server is fine.
    assert_eq!(app.health().await.0, 200);
}

async fn plain_get_and_post_still_refuse_subscriptions(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let r = app
        .gql_as(&admin, "subscription { sessionEvents { id } }", json!({}))
        .await;
    assert!(r.error_code().is_some(), "{}", r.body);
    let r = app
        .client
        .get(app.url("/graphql"))
        .query(&[("query", "subscription { sessionEvents { id } }")])
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

async fn a_subscriber_that_stops_reading_is_dropped_while_others_keep_receiving(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| c.event_subscriber_backlog = 8).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "alice", "password-one", &[]).await;
    let dropped = |text: &str| {
        metric(
            text,
            "session_server_event_subscribers_dropped_total{reason=\"stopped_reading\"}",
        )
    };
    assert_eq!(dropped(&app.metrics().await), 0.0);

    // The slow one: a tiny receive buffer, 16 subscriptions, and it never reads.
    let before = subscribers(&app).await;
    let slow = Ws::open_small_buffer(app.port, &admin).await;
    let mut slow = slow;
    for i in 0..16 {
        slow.subscribe(&format!("s{i}"), None).await;
    }
    wait_subscribers(&app, before + 16.0).await;
    let mut fast = subscriber(&app, &admin, Some(&["LOGIN_SUCCEEDED"])).await;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(Said::Json(m)) = fast.next_within(Duration::from_secs(60)).await {
            if seen_tx.send(m).is_err() {
                return;
            }
        }
    });

    // Large events, until the slow connection has been dropped (at most a minute).
    let agent = "a".repeat(500);
    let mut logins = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        futures_util::future::join_all(
            (0..4).map(|_| login_as(&app, "alice", "password-one", &agent)),
        )
        .await;
        logins += 4;
        if subscribers(&app).await <= before + 1.0 {
            break;
        }
    }
    assert_eq!(
        subscribers(&app).await,
        before + 1.0,
        "the slow subscriber was not dropped after {logins} logins"
    );
    assert_eq!(dropped(&app.metrics().await), 1.0);
    // The fast one got every event, none of them an error.
    for n in 0..logins {
        let m = tokio::time::timeout(WAIT, seen.recv())
            .await
            .unwrap_or_else(|_| panic!("the fast subscriber got only {n} of {logins} events"))
            .expect("the fast subscriber's connection ended");
        assert_eq!(m["type"], "next", "{m}");
        assert!(
            m["payload"]["errors"].is_null(),
            "the fast one was dropped: {m}"
        );
    }
    reader.abort();
    drop(slow);
}

/// Three server processes on one PostgreSQL database and one Redis: a subscriber on each sees
/// the events made on every instance, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_every_instances_events_exactly_once() {
    let Some((db, redis)) = pg_and_redis().await else {
        return;
    };
    let prefix = crate::scale::own_prefix();
    let servers = crate::scale::start_instances(
        3,
        &db,
        &[
            ("REDIS_URL", redis.url().as_str()),
            ("SESSION_CACHE", "redis"),
            ("REDIS_KEY_PREFIX", prefix.as_str()),
        ],
    )
    .await;
    let [a, b, c] = [&servers[0], &servers[1], &servers[2]];
    let admin = a.admin_token().await;
    a.create_user(&admin, "alice", "password-one", &[]).await;

    let mut subs = vec![];
    for s in [a, b, c] {
        let before = subscribers(s).await;
        let mut ws = Ws::open(s.port, TRANSPORT_WS, &[]).await;
        ws.init(json!({ "authorization": format!("Bearer {admin}") }))
            .await;
        ws.subscribe("1", Some(&["LOGIN_SUCCEEDED"])).await;
        wait_subscribers(s, before + 1.0).await;
        subs.push(ws);
    }
    // The listeners subscribe to Redis at start; give the last one a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut made = vec![];
    for (i, s) in [a, b, c, b, c].into_iter().enumerate() {
        let (_, id) = login_as(s, "alice", "password-one", &format!("instance-{i}")).await;
        made.push(id);
    }
    for (n, ws) in subs.iter_mut().enumerate() {
        let mut seen = vec![];
        for _ in 0..made.len() {
            let e = ws.expect_event("1").await;
            seen.push(str_of(&e["sessionId"]));
        }
        ws.expect_silence(Duration::from_millis(500)).await;
        let mut expected = made.clone();
        expected.sort();
        seen.sort();
        assert_eq!(seen, expected, "subscriber on instance {n}");
    }
    for (n, s) in [a, b, c].into_iter().enumerate() {
        let text = s.metrics().await;
        let local = metric(
            &text,
            "session_server_events_fanned_out_total{source=\"local\"}",
        );
        let remote = metric(
            &text,
            "session_server_events_fanned_out_total{source=\"remote\"}",
        );
        // The admin's login on A and alice's five: every instance handed on all of them
        // except its own admin login before the subscription.
        assert!(local + remote >= 5.0, "instance {n}: {local} + {remote}");
    }
}

/// One client address may keep at most `MAX_PENDING_PER_ADDRESS` (16) connections waiting for
/// `connection_init`: the next upgrade is refused with 429 `RATE_LIMITED`, and a place comes
/// back as soon as one of them is answered (accepted or refused) or goes away.
async fn one_address_may_hold_only_a_few_connections_waiting_for_init(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let mut waiting = Vec::new();
    for _ in 0..16 {
        waiting.push(Ws::open(app.port, TRANSPORT_WS, &[]).await);
    }
    let upgrade = || {
        let mut req = format!("ws://127.0.0.1:{}/graphql", app.port)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(TRANSPORT_WS),
        );
        req
    };
    let refused = || async {
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(upgrade()))
            .await
            .expect("the upgrade answers in time")
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 429);
                let body =
                    String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
                assert!(body.contains("RATE_LIMITED"), "{body}");
                true
            }
            Err(e) => panic!("unexpected failure: {e}"),
            Ok(_) => false,
        }
    };
    assert!(refused().await, "a 17th waiting connection is refused");
    // One is accepted: its place is free again.
    waiting[0]
        .init(json!({ "authorization": format!("Bearer {admin}") }))
        .await;
    let mut extra = Ws::open(app.port, TRANSPORT_WS, &[]).await;
    assert!(refused().await, "full again");
    // One refused at init (no token) frees its place too.
    extra
        .send(json!({ "type": "connection_init", "payload": {} }))
        .await;
    assert!(
        matches!(extra.next().await, Said::Closed(Some((4403, _)))),
        "refused without a token"
    );
    let _another = Ws::open(app.port, TRANSPORT_WS, &[]).await;
    // One that just goes away frees its place once the server sees it gone.
    drop(waiting.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if tokio_tungstenite::connect_async(upgrade()).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed connection's place comes back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
