//! Trust rules for revocation, refresh tokens and client addresses: a revocation holds against
//! requests of the session that were in flight when it happened; every refresh token a session
//! ever had is recognised when reused; and `X-Forwarded-For` is read from the right, so the
//! client cannot choose the address it is stored and throttled under.

use crate::helpers::{str_of, Gql, TestApp, Variant};
use futures_util::future::join_all;
use sea_orm::{ColumnTrait, Database, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::json;
use session_server::config::TrustProxy;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

crate::all_caches!(
    requests_sent_after_a_revocation_have_no_session,
    reuse_of_an_old_refresh_token_revokes_the_session,
    each_superseded_refresh_token_has_its_own_grace,
    client_address_is_the_one_the_proxy_appended,
    address_throttle_holds_when_the_client_rotates_its_entry,
);

// ---------------------------------------------------------------------------------------------
// A revocation cannot be undone by a request in flight.

const SET_CHANNEL: &str = "mutation($t: String!) { setActiveChannel(token: $t) { id } }";
const CREATE_ORDER: &str = "mutation { createOrder { id } }";
const UNSET_ORDER: &str = "mutation { unsetActiveOrder { id } }";

/// One request of the client loop: what it was, when it was sent, and the answer.
struct Sent {
    op: &'static str,
    at: Instant,
    response: Gql,
}

/// Whether a response was served with the session of `token`, asserting that it is one of the
/// two outcomes allowed to a request racing a revocation: served with it, or without a session.
fn served_with_session(s: &Sent, token: &str) -> bool {
    let r = &s.response;
    assert_eq!(r.status, 200, "{} answered {}: {}", s.op, r.status, r.body);
    match (s.op, r.error_code()) {
        (_, Some("UNAUTHENTICATED")) => false,
        (_, Some(code)) => panic!("{} failed with {code}: {}", s.op, r.body),
        // Without a session, createOrder starts a new anonymous one and hands out its token.
        (CREATE_ORDER, None) => match r.session_token() {
            Some(new) => {
                assert_ne!(new, token);
                false
            }
            None => true,
        },
        (_, None) => true,
    }
}

/// Several requests of one session in flight while an admin revokes it, 50 times over, each time
/// at a random moment: every request sent after `revokeSession` returned is served without the
/// session. On the memory cache, a request that updated the row just before the revocation used
/// to write its entry back just after it, and the revoked token worked for minutes.
async fn requests_sent_after_a_revocation_have_no_session(v: Variant) {
    // After each revocation createOrder starts new anonymous sessions in a tight loop: far more
    // than the per-address limit allows from one test client.
    let Some(app) = TestApp::spawn_with(v, |c| c.anonymous_sessions_per_address = 0).await else {
        return;
    };
    let admin = app.admin_token().await;
    let (_, channel) = app.create_channel(&admin, "eu").await;
    let (mut late, mut raced) = (0, 0);
    for rep in 0..50 {
        let (token, id) = app.anonymous_session().await;
        let stop = AtomicBool::new(false);
        let revoked_at: Mutex<Option<Instant>> = Mutex::new(None);
        let log: Mutex<Vec<Sent>> = Mutex::default();
        let client = |worker: usize| {
            let (app, token, channel, stop, log) = (&app, &token, &channel, &stop, &log);
            async move {
                let ops = [SET_CHANNEL, CREATE_ORDER, UNSET_ORDER];
                let mut i = worker;
                while !stop.load(Ordering::Acquire) {
                    let op = ops[i % ops.len()];
                    i += 1;
                    let vars = if op == SET_CHANNEL {
                        json!({ "t": channel })
                    } else {
                        json!({})
                    };
                    let at = Instant::now();
                    let response = app.gql_as(token, op, vars).await;
                    log.lock().unwrap().push(Sent { op, at, response });
                }
            }
        };
        let admin_side = async {
            tokio::time::sleep(Duration::from_millis(rand::random_range(5..60))).await;
            let r = app
                .gql_as(
                    &admin,
                    "mutation($id: ID!) { revokeSession(id: $id) }",
                    json!({ "id": id }),
                )
                .await
                .ok();
            *revoked_at.lock().unwrap() = Some(Instant::now());
            assert_eq!(r.data()["revokeSession"], true, "{}", r.body);
            // Keep the client going for a while after the revocation.
            tokio::time::sleep(Duration::from_millis(60)).await;
            stop.store(true, Ordering::Release);
        };
        let clients = join_all((0..4).map(client));
        futures_util::future::join(clients, admin_side).await;
        let revoked_at = revoked_at.lock().unwrap().expect("revoked");
        for s in log.lock().unwrap().iter() {
            let with_session = served_with_session(s, &token);
            if s.at > revoked_at {
                late += 1;
                assert!(
                    !with_session,
                    "repetition {rep}: {} sent {:?} after revokeSession returned was served with \
                     the revoked session: {}",
                    s.op,
                    s.at - revoked_at,
                    s.response.body
                );
            } else if !with_session {
                raced += 1;
            }
        }
        // And later, once everything in flight has landed.
        assert!(
            app.active_session(&token).await.is_null(),
            "repetition {rep}: the revoked token works again"
        );
    }
    // The loop really ran on both sides of the revocations.
    assert!(
        late >= 50,
        "only {late} requests were sent after a revocation"
    );
    eprintln!("{v:?}: {late} requests after revocations, {raced} in flight during them refused");
}

// ---------------------------------------------------------------------------------------------
// Reuse detection covers the whole token family.

const REFRESH: &str = "mutation($r: String) { refreshSession(refreshToken: $r) {
    __typename
    ... on InvalidRefreshTokenError { reason }
} }";

/// Refreshes with `refresh_token`: `Ok((token, refresh token))` or `Err(reason)`.
async fn refresh(app: &TestApp, refresh_token: &str) -> Result<(String, String), String> {
    let r = app.gql(REFRESH, json!({ "r": refresh_token })).await.ok();
    match r.data()["refreshSession"]["__typename"].as_str() {
        Some("AuthenticationSuccess") => Ok((
            r.session_token().expect("session-token header"),
            r.refresh_token().expect("refresh-token header"),
        )),
        Some("InvalidRefreshTokenError") => {
            assert!(r.session_token().is_none(), "{}", r.body);
            Err(str_of(&r.data()["refreshSession"]["reason"]))
        }
        _ => panic!("no refresh result: {}", r.body),
    }
}

/// Rows of `session_refresh_token` left for a session.
async fn refresh_rows(app: &TestApp, session_id: &str) -> u64 {
    let db = Database::connect(&app.database_url).await.unwrap();
    let session_id: i64 = session_id.parse().unwrap();
    let n = entity::session_refresh_token::Entity::find()
        .filter(entity::session_refresh_token::Column::SessionId.eq(session_id))
        .count(&db)
        .await
        .unwrap();
    let _ = db.close().await;
    n
}

/// R0 → R1 → R2 (by a thief), then R0 after its grace window: `REUSED`, and the session the
/// thief holds is dead. Before, only the last superseded token was remembered, so R0 was
/// `UNKNOWN` and the thief kept the session.
async fn reuse_of_an_old_refresh_token_revokes_the_session(v: Variant) {
    let Some(app) =
        TestApp::spawn_with(v, |c| c.refresh_reuse_grace = Duration::from_millis(500)).await
    else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "victim", "victim-password-1", &[])
        .await;
    let victim = app.login("victim", "victim-password-1").await;
    let other_device = app.login("victim", "victim-password-1").await;
    let session_id = str_of(&app.active_session(&victim.token).await["id"]);
    let (_, r1) = refresh(&app, &victim.refresh_token).await.unwrap();
    let (t2, r2) = refresh(&app, &r1).await.unwrap();
    assert_eq!(app.active_session(&t2).await["id"], session_id.as_str());
    assert_eq!(refresh_rows(&app, &session_id).await, 2);
    tokio::time::sleep(Duration::from_millis(800)).await;

    assert_eq!(
        refresh(&app, &victim.refresh_token).await,
        Err("REUSED".to_string())
    );
    assert!(
        app.active_session(&t2).await.is_null(),
        "the thief's session token still works"
    );
    assert_eq!(refresh(&app, &r2).await, Err("UNKNOWN".to_string()));
    assert_eq!(refresh(&app, &r1).await, Err("UNKNOWN".to_string()));
    // Only that session: the user's other device lives on.
    assert!(!app.active_session(&other_device.token).await.is_null());

    // The recorded hashes go with the session.
    let r = app
        .gql_as(&admin, "mutation { cleanUpExpiredSessions }", json!({}))
        .await
        .ok();
    assert!(r.data()["cleanUpExpiredSessions"].as_i64().unwrap() >= 1);
    assert_eq!(refresh_rows(&app, &session_id).await, 0);
}

/// The grace window of a superseded token runs from its own rotation: R0 is `SUPERSEDED` and
/// harmless two rotations later while within its window, and `REUSED` after it even while R1,
/// rotated out later, is still within its own.
async fn each_superseded_refresh_token_has_its_own_grace(v: Variant) {
    let grace = Duration::from_secs(3);
    let Some(app) = TestApp::spawn_with(v, |c| c.refresh_reuse_grace = grace).await else {
        return;
    };
    let login = app.login("superadmin", "superadmin").await;
    // The server's rotation time of each token lies between these two instants.
    let r0_sent = Instant::now();
    let (_, r1) = refresh(&app, &login.refresh_token).await.unwrap();
    let r0_done = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r1_sent = Instant::now();
    let (t2, r2) = refresh(&app, &r1).await.unwrap();

    assert_eq!(
        refresh(&app, &login.refresh_token).await,
        Err("SUPERSEDED".to_string())
    );
    assert!(r0_sent.elapsed() < grace, "too slow to test the window");
    assert!(!app.active_session(&t2).await.is_null());

    let past_r0_grace = r0_done + grace + Duration::from_millis(200);
    tokio::time::sleep(past_r0_grace.saturating_duration_since(Instant::now())).await;
    assert_eq!(refresh(&app, &r1).await, Err("SUPERSEDED".to_string()));
    assert!(r1_sent.elapsed() < grace, "too slow to test the window");
    assert!(!app.active_session(&t2).await.is_null());
    assert_eq!(
        refresh(&app, &login.refresh_token).await,
        Err("REUSED".to_string())
    );
    assert!(app.active_session(&t2).await.is_null());
    assert_eq!(refresh(&app, &r2).await, Err("UNKNOWN".to_string()));
}

// ---------------------------------------------------------------------------------------------
// Client addresses cannot be forged.

/// The `ipAddress` stored with a session created with these `X-Forwarded-For` headers.
async fn stored_address(app: &TestApp, forwarded_for: &[&str]) -> String {
    let mut req = app.post("mutation { createAnonymousSession { id } }", json!({}));
    for value in forwarded_for {
        req = req.header("x-forwarded-for", *value);
    }
    let r = TestApp::send(req).await.ok();
    let token = r.session_token().expect("session-token header");
    let r = app
        .gql_as(&token, "{ activeSession { ipAddress } }", json!({}))
        .await
        .ok();
    str_of(&r.data()["activeSession"]["ipAddress"])
}

/// `TRUST_PROXY=true` stores the right-most entry (the one the proxy appended), not the
/// client's claim to its left; `TRUST_PROXY=2` the second from the right, across headers.
async fn client_address_is_the_one_the_proxy_appended(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| c.trust_proxy = TrustProxy::hops(1)).await else {
        return;
    };
    assert_eq!(
        stored_address(&app, &["203.0.113.66, 198.51.100.7"]).await,
        "198.51.100.7"
    );
    assert_eq!(
        stored_address(&app, &["198.51.100.7"]).await,
        "198.51.100.7"
    );
    // Not an address: the peer.
    assert_eq!(
        stored_address(&app, &["203.0.113.66, unknown"]).await,
        "127.0.0.1"
    );
    drop(app);

    let Some(app) = TestApp::spawn_with(v, |c| c.trust_proxy = TrustProxy::hops(2)).await else {
        return;
    };
    assert_eq!(
        stored_address(&app, &["203.0.113.66, 198.51.100.7, 10.0.0.2"]).await,
        "198.51.100.7"
    );
    assert_eq!(
        stored_address(&app, &["203.0.113.66", "198.51.100.7", "10.0.0.2"]).await,
        "198.51.100.7"
    );
    // Fewer entries than proxies: the peer.
    assert_eq!(stored_address(&app, &["10.0.0.2"]).await, "127.0.0.1");
}

/// With the per-address limit low and the per-identifier one high, failed logins under
/// distinct identifiers from one client that writes a new left-most `X-Forwarded-For` entry
/// each time are still counted against its one real address.
async fn address_throttle_holds_when_the_client_rotates_its_entry(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.trust_proxy = TrustProxy::hops(1);
        c.login_max_attempts = 100;
        c.login_max_attempts_per_address = 3;
    })
    .await
    else {
        return;
    };
    let login = |identifier: String, forwarded: String| {
        let req = app
            .post(
                "mutation($u: String!, $p: String!) { login(username: $u, password: $p) {
                    __typename } }",
                json!({ "u": identifier, "p": "wrong-password" }),
            )
            .header("x-forwarded-for", forwarded);
        async move {
            let r = TestApp::send(req).await.ok();
            str_of(&r.data()["login"]["__typename"])
        }
    };
    let mut outcomes = vec![];
    for i in 0..6 {
        let spoofed = format!("203.0.113.{}", 10 + i);
        outcomes.push(login(format!("nobody-{i}"), format!("{spoofed}, 198.51.100.7")).await);
    }
    assert_eq!(
        outcomes,
        [
            "InvalidCredentialsError",
            "InvalidCredentialsError",
            "InvalidCredentialsError",
            "TooManyAttemptsError",
            "TooManyAttemptsError",
            "TooManyAttemptsError"
        ]
    );
    // Another real address is not affected.
    assert_eq!(
        login("nobody-else".into(), "203.0.113.10, 198.51.100.8".into()).await,
        "InvalidCredentialsError"
    );
}
