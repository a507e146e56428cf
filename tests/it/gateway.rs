//! The gateway check `/auth`: identity headers, 401 / 403, `?kind`, `?require`, `?jwt`, any
//! method and path; the session slides and a revocation holds on the very next check, on every
//! backend and across instances; and a real nginx with `auth_request` in front of an upstream.

use crate::all_caches;
use crate::helpers::{str_of, Api, TestApp, Variant};
use crate::jwt::{jwks, kid_of, verify, SESSION_JWT};
use crate::procs::{free_port, have, pg_and_redis, skip};
use crate::scale::{own_prefix, start_instances};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The answer of one `/auth` call.
pub struct Check {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Check {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// `method path` on the server with the bearer `token` and extra headers.
pub async fn check_with(
    api: &Api,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Check {
    let mut req = api.client.request(method, api.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("/auth answers");
    Check {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap_or_default(),
    }
}

pub async fn check(api: &Api, path: &str, token: Option<&str>) -> Check {
    check_with(api, Method::GET, path, token, &[]).await
}

fn assert_unauthorized(c: &Check, what: &str) {
    assert_eq!(c.status, 401, "{what}: {}", c.body);
    assert_eq!(
        c.header("www-authenticate").as_deref(),
        Some("Bearer"),
        "{what}"
    );
    assert!(c.header("x-session-id").is_none(), "{what}");
}

/// A `reader` role (READ_SESSION in the default channel) and alice holding it, logged in:
/// `(role id, alice's id, her token)`.
async fn reader_alice(app: &TestApp, admin: &str) -> (String, String, String) {
    let role = app.create_role(admin, "reader", &["READ_SESSION"]).await;
    let alice = app
        .create_user(admin, "alice@example.com", "alice-password", &[&role])
        .await;
    let t = app.login("alice@example.com", "alice-password").await.token;
    (role, alice, t)
}

async fn auth_answers_with_the_identity_headers(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    // No token, a malformed one, an unknown one: 401.
    assert_unauthorized(&check(&app, "/auth", None).await, "no token");
    assert_unauthorized(&check(&app, "/auth", Some("garbage")).await, "malformed");
    let unknown = session_server::token::generate().token;
    assert_unauthorized(&check(&app, "/auth", Some(&unknown)).await, "unknown");

    // Anonymous: 200 with the session headers, no user headers; refused by kind=authenticated.
    let (anon, anon_id) = app.anonymous_session().await;
    let c = check(&app, "/auth", Some(&anon)).await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert!(c.body.is_empty());
    assert_eq!(c.header("x-session-id"), Some(anon_id.clone()));
    assert_eq!(c.header("x-session-kind").as_deref(), Some("anonymous"));
    assert_eq!(c.header("x-channel-code").as_deref(), Some("default"));
    for h in ["x-user-id", "x-user-identifier", "x-permissions"] {
        assert!(c.header(h).is_none(), "{h} on an anonymous check");
    }
    // The session JWT comes with every check (anonymous too: no `sub`), unless `?jwt=0`.
    let jwt = c
        .header("x-session-jwt")
        .expect("x-session-jwt on an anonymous check");
    let (set, _) = jwks(&app).await;
    let claims = verify(&set, &jwt, None).expect("the anonymous JWT verifies");
    assert_eq!(claims["kind"], "anonymous");
    assert_eq!(claims["sid"], anon_id.as_str());
    assert!(claims.get("sub").is_none(), "{claims}");
    assert!(check(&app, "/auth?jwt=0", Some(&anon))
        .await
        .header("x-session-jwt")
        .is_none());
    // `/auth/` (Envoy's check of the site root) is a path below `/auth` like any other.
    let c = check(&app, "/auth/", Some(&anon)).await;
    assert_eq!(c.status, 200, "/auth/: {}", c.body);
    assert_eq!(c.header("x-session-id"), Some(anon_id.clone()));
    assert_unauthorized(
        &check(&app, "/auth?kind=authenticated", Some(&anon)).await,
        "anonymous with kind=authenticated",
    );

    // Authenticated, READ_SESSION in the default channel only.
    let admin = app.admin_token().await;
    let (_, alice, t) = reader_alice(&app, &admin).await;
    let sid = str_of(&app.active_session(&t).await["id"]);
    let c = check(&app, "/auth?kind=authenticated", Some(&t)).await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.header("x-session-id"), Some(sid.clone()));
    assert_eq!(c.header("x-session-kind").as_deref(), Some("authenticated"));
    assert_eq!(c.header("x-user-id"), Some(alice.clone()));
    assert_eq!(
        c.header("x-user-identifier").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(c.header("x-permissions").as_deref(), Some("READ_SESSION"));
    assert_eq!(c.header("x-channel-code").as_deref(), Some("default"));
    assert_eq!(c.header("cache-control").as_deref(), Some("no-store"));

    // ?require: held → 200; one missing → 403.
    assert_eq!(
        check(&app, "/auth?require=READ_SESSION", Some(&t))
            .await
            .status,
        200
    );
    let c = check(&app, "/auth?require=READ_SESSION,WRITE_USER", Some(&t)).await;
    assert_eq!(c.status, 403, "{}", c.body);
    assert_eq!(
        check(&app, "/auth?require=READ_SESSION", Some(&anon))
            .await
            .status,
        403
    );
    // The superadmin passes every requirement.
    assert_eq!(
        check(
            &app,
            "/auth?require=WRITE_USER,REVOKE_SESSION",
            Some(&admin)
        )
        .await
        .status,
        200
    );

    // Any method, any path below /auth, the cookie too.
    for method in [
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
    ] {
        let c = check_with(&app, method.clone(), "/auth/cart/items?id=3", Some(&t), &[]).await;
        assert_eq!(c.status, 200, "{method}");
        assert_eq!(c.header("x-user-id"), Some(alice.clone()), "{method}");
    }
    let cookie = format!("session={t}");
    let c = check_with(&app, Method::GET, "/auth", None, &[("cookie", &cookie)]).await;
    assert_eq!(c.header("x-user-id"), Some(alice.clone()));

    // The channel-token header: another channel where alice holds nothing.
    let (_, other_token) = app.create_channel(&admin, "eu").await;
    let ch = [("channel-token", other_token.as_str())];
    let c = check_with(&app, Method::GET, "/auth", Some(&t), &ch).await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.header("x-channel-code").as_deref(), Some("eu"));
    assert_eq!(c.header("x-permissions").as_deref(), Some(""));
    let c = check_with(
        &app,
        Method::GET,
        "/auth?require=READ_SESSION",
        Some(&t),
        &ch,
    )
    .await;
    assert_eq!(c.status, 403);
    // An unknown channel-token and a bad query are the caller's mistakes, named.
    let c = check_with(
        &app,
        Method::GET,
        "/auth",
        Some(&t),
        &[("channel-token", "nope")],
    )
    .await;
    assert_eq!(c.status, 400, "{}", c.body);
    let c = check(&app, "/auth?require=READ_EVERYTHING", Some(&t)).await;
    assert_eq!(c.status, 400);
    assert!(c.body.contains("READ_EVERYTHING"), "{}", c.body);
    assert_eq!(check(&app, "/auth?kind=admin", Some(&t)).await.status, 400);

    // The session JWT, verifiable with the published keys; the next checks hand out the same
    // one while it says the same and has most of its lifetime left (`?jwt=1` as before).
    let c = check(&app, "/auth", Some(&t)).await;
    let jwt = c.header("x-session-jwt").expect("x-session-jwt");
    for path in ["/auth", "/auth?jwt=1", "/auth/cart/items"] {
        let again = check(&app, path, Some(&t)).await.header("x-session-jwt");
        assert_eq!(again.as_deref(), Some(jwt.as_str()), "{path}");
    }
    let (set, _) = jwks(&app).await;
    let claims = verify(&set, &jwt, None).expect("the gateway's JWT verifies");
    assert_eq!(claims["sid"], sid.as_str());
    assert_eq!(claims["sub"], alice.as_str());
    assert_eq!(claims["perms"], json!(["READ_SESSION"]));
    assert!(check(&app, "/auth?jwt=1", None)
        .await
        .header("x-session-jwt")
        .is_none());
}

/// `/auth` moves the session's activity forward: checks alone keep it alive past the idle
/// timeout.
async fn auth_slides_the_session(v: Variant) {
    let Some(app) = TestApp::spawn_with(v, |c| {
        c.session_idle_timeout = Duration::from_secs(3);
        c.session_absolute_timeout = Duration::from_secs(3600);
        c.session_activity_write_interval = Duration::from_millis(500);
    })
    .await
    else {
        return;
    };
    let (anon, _) = app.anonymous_session().await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let c = check(&app, "/auth", Some(&anon)).await;
        assert_eq!(c.status, 200, "after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(!app.active_session(&anon).await.is_null());
    // Unused, it expires.
    tokio::time::sleep(Duration::from_millis(3300)).await;
    assert_unauthorized(&check(&app, "/auth", Some(&anon)).await, "idle");
}

/// A logout or a revocation holds on the very next check, warmed cache or not.
async fn auth_refuses_a_revoked_session_at_once(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    app.create_user(&admin, "bob", "bob-password", &[]).await;
    let t = app.login("bob", "bob-password").await.token;
    assert_eq!(check(&app, "/auth", Some(&t)).await.status, 200);
    let id = app.active_session(&t).await["id"].clone();
    let r = app
        .gql_as(
            &admin,
            "mutation($id: ID!) { revokeSession(id: $id) }",
            json!({ "id": id }),
        )
        .await
        .ok();
    assert_eq!(r.data()["revokeSession"], true);
    assert_unauthorized(&check(&app, "/auth", Some(&t)).await, "revoked");

    let t = app.login("bob", "bob-password").await.token;
    assert_eq!(check(&app, "/auth", Some(&t)).await.status, 200);
    app.gql_as(&t, "mutation { logout }", json!({})).await.ok();
    assert_unauthorized(&check(&app, "/auth", Some(&t)).await, "logged out");
}

/// `/auth` is for gateways, not browsers: a CORS preflight is checked like any request (no
/// token: 401, without CORS headers), and an OPTIONS with a live token passes.
#[tokio::test]
async fn auth_checks_preflights_like_any_request() {
    let Some(app) = TestApp::spawn_with(Variant::SqliteMemory, |c| {
        c.cors_allowed_origins = vec!["https://shop.example".into()];
    })
    .await
    else {
        return;
    };
    let preflight = [
        ("origin", "https://shop.example"),
        ("access-control-request-method", "GET"),
    ];
    let c = check_with(&app, Method::OPTIONS, "/auth", None, &preflight).await;
    assert_unauthorized(&c, "a preflight without a token");
    assert!(
        c.header("access-control-allow-origin").is_none(),
        "{:?}",
        c.headers
    );
    let (t, _) = app.anonymous_session().await;
    let c = check_with(&app, Method::OPTIONS, "/auth/x", Some(&t), &preflight).await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert!(c.header("x-session-id").is_some());
    // `/graphql` still answers the preflight for an allowed origin.
    let r = app
        .client
        .request(Method::OPTIONS, app.url("/graphql"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string())
            .as_deref(),
        Some("https://shop.example")
    );
}

all_caches!(
    auth_answers_with_the_identity_headers,
    auth_slides_the_session,
    auth_refuses_a_revoked_session_at_once,
    auth_headers_follow_user_and_role_changes
);

/// The identity headers are rendered once per cached user, and follow a change on the next
/// check: a new identifier, new permissions of the user's role.
async fn auth_headers_follow_user_and_role_changes(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let (role, alice, t) = reader_alice(&app, &admin).await;
    for _ in 0..2 {
        let c = check(&app, "/auth", Some(&t)).await;
        assert_eq!(
            c.header("x-user-identifier").as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(c.header("x-permissions").as_deref(), Some("READ_SESSION"));
    }
    app.gql_as(
        &admin,
        "mutation($i: UpdateUserInput!) { updateUser(input: $i) { id } }",
        json!({ "i": { "id": alice, "identifier": "alice@shop.example" } }),
    )
    .await
    .ok();
    app.gql_as(
        &admin,
        "mutation($i: UpdateRoleInput!) { updateRole(input: $i) { id } }",
        json!({ "i": { "id": role, "permissions": ["READ_SESSION", "READ_USER"] } }),
    )
    .await
    .ok();
    let before = check(&app, "/auth", Some(&t)).await;
    let c = check(&app, "/auth", Some(&t)).await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(
        c.header("x-user-identifier").as_deref(),
        Some("alice@shop.example")
    );
    // The JWT handed out says the new permissions too (not the one issued before the change).
    let (set, _) = jwks(&app).await;
    let jwt = c.header("x-session-jwt").expect("x-session-jwt");
    let claims = verify(&set, &jwt, None).expect("verifies");
    assert_eq!(
        claims["perms"],
        json!(["READ_SESSION", "READ_USER"]),
        "{claims}"
    );
    assert_eq!(before.header("x-session-jwt"), c.header("x-session-jwt"));
    assert_eq!(
        c.header("x-permissions").as_deref(),
        Some("READ_SESSION,READ_USER")
    );
}

/// Two instances on one PostgreSQL and Redis (`tiered` cache): a revocation through A is
/// refused by `/auth` on B on its next request; B publishes the key A signs with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_jwks_agree_across_instances() {
    let Some((db, redis)) = pg_and_redis().await else {
        return;
    };
    let prefix = own_prefix();
    let url = redis.url();
    let servers = start_instances(
        2,
        &db,
        &[
            ("REDIS_URL", &url),
            ("SESSION_CACHE", "tiered"),
            ("REDIS_KEY_PREFIX", &prefix),
        ],
    )
    .await;
    let [a, b] = [&servers[0], &servers[1]];
    let admin = a.admin_token().await;
    a.create_user(&admin, "alice", "alice-password", &[]).await;
    let t = a.login("alice", "alice-password").await.token;
    // Warm both.
    for s in [a, b] {
        let c = check(s, "/auth", Some(&t)).await;
        assert_eq!(c.status, 200, "{}", c.body);
    }
    // Tokens signed on A verify with B's JWKS, and the other way round.
    for (signer, publisher) in [(a, b), (b, a)] {
        let r = signer.gql_as(&t, SESSION_JWT, json!({})).await.ok();
        let jwt = str_of(&r.data()["sessionJwt"]["token"]);
        let (set, _) = jwks(publisher).await;
        assert!(
            set.find(&kid_of(&jwt)).is_some(),
            "kid not published by the other instance"
        );
        verify(&set, &jwt, None).expect("verifies with the other instance's JWKS");
    }
    let id = a.active_session(&t).await["id"].clone();
    let r = a
        .gql_as(
            &admin,
            "mutation($id: ID!) { revokeSession(id: $id) }",
            json!({ "id": id }),
        )
        .await
        .ok();
    assert_eq!(r.data()["revokeSession"], true);
    assert_unauthorized(
        &check(b, "/auth", Some(&t)).await,
        "revoked on A, checked on B",
    );
    assert_unauthorized(
        &check(a, "/auth", Some(&t)).await,
        "revoked on A, checked on A",
    );
}

/// An nginx child process with its configuration, pid and logs in a temp dir; killed on drop.
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const NGINX: &str = "/usr/sbin/nginx";

impl Nginx {
    /// Starts nginx with `auth_request` to the server on `auth_port` in front of the upstream
    /// on `upstream_port`: `/admin/` requires READ_SESSION, everything else a session.
    async fn start(auth_port: u16, upstream_port: u16) -> Nginx {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            r#"worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
{site}
    }}
}}
"#,
            site = crate::gateway::nginx_site(auth_port, upstream_port)
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}): {}", nginx.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                nginx.error_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        nginx
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// The nginx `server` block of the README (with ports filled in): the configuration under test.
pub fn nginx_site(auth_port: u16, upstream_port: u16) -> String {
    format!(
        r#"        location = /_session_auth {{
            internal;
            proxy_pass http://127.0.0.1:{auth_port}/auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
        }}
        location = /_session_auth_admin {{
            internal;
            proxy_pass http://127.0.0.1:{auth_port}/auth?require=READ_SESSION;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}
        location /admin/ {{
            auth_request /_session_auth_admin;
            auth_request_set $session_user_id $upstream_http_x_user_id;
            auth_request_set $session_permissions $upstream_http_x_permissions;
            proxy_set_header x-user-id $session_user_id;
            proxy_set_header x-permissions $session_permissions;
            proxy_pass http://127.0.0.1:{upstream_port};
        }}
        location / {{
            auth_request /_session_auth;
            auth_request_set $session_user_id $upstream_http_x_user_id;
            auth_request_set $session_permissions $upstream_http_x_permissions;
            proxy_set_header x-user-id $session_user_id;
            proxy_set_header x-permissions $session_permissions;
            proxy_pass http://127.0.0.1:{upstream_port};
        }}"#
    )
}

/// A tiny upstream that records the path and headers of every request it gets.
async fn start_upstream() -> (u16, Arc<Mutex<Vec<(String, axum::http::HeaderMap)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let record = record.clone();
        async move {
            record
                .lock()
                .unwrap()
                .push((req.uri().path().to_string(), req.headers().clone()));
            "upstream"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, seen)
}

/// A real nginx with `auth_request /auth`: no token → 401 and the upstream never called; a
/// valid token → the upstream gets `x-user-id` and `x-permissions`; revoked → 401 on the next
/// request; a missing `?require=` permission → 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_in_front_of_an_upstream() {
    if !std::path::Path::new(NGINX).exists() && !have("nginx") {
        skip("nginx is not installed (apt-get install nginx)");
        return;
    }
    let Some(app) = TestApp::spawn(Variant::SqliteMemory).await else {
        return;
    };
    let (upstream_port, seen) = start_upstream().await;
    let nginx = Nginx::start(app.port, upstream_port).await;
    let front = Api::new(nginx.port, Duration::from_secs(10));
    let get = |path: &str, token: Option<&str>| {
        let mut req = front.client.get(front.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };

    // No token: 401 from nginx; the upstream never saw the request.
    let r = get("/cart", None).await.unwrap();
    assert_eq!(r.status(), 401, "{}", nginx.error_log());
    assert!(seen.lock().unwrap().is_empty());

    let admin = app.admin_token().await;
    let role = app.create_role(&admin, "reader", &["READ_SESSION"]).await;
    let alice = app
        .create_user(&admin, "alice", "alice-password", &[&role])
        .await;
    let bob = app.create_user(&admin, "bob", "bob-password", &[]).await;
    let t = app.login("alice", "alice-password").await.token;

    // Valid: the upstream gets the identity copied by auth_request_set.
    for path in ["/cart", "/admin/sessions"] {
        let r = get(path, Some(&t)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}: {}", nginx.error_log());
        assert_eq!(r.text().await.unwrap(), "upstream");
        let (got, headers) = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(got, path);
        assert_eq!(headers["x-user-id"], alice.as_str());
        assert_eq!(headers["x-permissions"], "READ_SESSION");
    }

    // ?require=READ_SESSION that bob lacks: 403, upstream not called.
    let bob_token = app.login("bob", "bob-password").await.token;
    let before = seen.lock().unwrap().len();
    let r = get("/admin/sessions", Some(&bob_token)).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(seen.lock().unwrap().len(), before);
    let r = get("/cart", Some(&bob_token)).await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, headers) = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(headers["x-user-id"], bob.as_str());

    // Revoked: 401 on the very next request.
    app.gql_as(&t, "mutation { logout }", json!({})).await.ok();
    let before = seen.lock().unwrap().len();
    let r = get("/cart", Some(&t)).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(seen.lock().unwrap().len(), before);
}
