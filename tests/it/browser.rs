//! The browser pages in a real headless Chromium driven through WebDriver (`chromedriver`,
//! started per test on a free port): GraphiQL runs queries and logs in through the cookie, the
//! operator console revokes a session and shows a refusal; no page makes a failed request,
//! logs a console error or reaches past the server (Chromium resolves no other host, and the
//! page's resource timings are checked too). Screenshots go to `target/browser-artifacts/`.
//! Without `chromium` and `chromedriver` the browser tests skip with a notice, unless
//! `REQUIRE_SERVICES=1`. The HTTP rules of the pages (headers, asset URLs) are checked without
//! a browser.

use crate::helpers::{str_of, TestApp, Variant, ADMIN, ADMIN_PASSWORD};
use crate::procs::{free_port, have, skip};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

crate::sqlite_only!(
    pages_send_a_strict_policy_and_serve_every_asset_themselves,
    graphiql_runs_offline_and_logs_in_through_the_cookie,
    console_revokes_a_session_and_shows_a_refusal,
);

/// How long a page may take to show what a test waits for.
const WAIT: Duration = Duration::from_secs(30);

/// The `src`/`href` URLs a page names.
fn linked_urls(html: &str) -> Vec<String> {
    let mut out = vec![];
    for attr in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            let after = &rest[i + attr.len()..];
            let end = after.find('"').unwrap();
            if !after.starts_with('#') {
                out.push(after[..end].to_string());
            }
            rest = &after[end..];
        }
    }
    out
}

async fn pages_send_a_strict_policy_and_serve_every_asset_themselves(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    for (path, needle) in [("/graphql", "graphiql.min.js"), ("/console", "console.js")] {
        let r = app
            .client
            .get(app.url(path))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "text/html; charset=utf-8", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap().to_string();
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self';"), "{path}: {csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval") && !csp.contains("http")
        );
        let html = r.text().await.unwrap();
        assert!(html.contains(needle), "{path}");
        assert!(!html.contains("<script>"), "{path}: no inline script");
        let urls = linked_urls(&html);
        assert!(urls.len() >= 3, "{path}: {urls:?}");
        for url in urls {
            assert!(url.starts_with("/assets/"), "{path} names {url}");
            let r = app.client.get(app.url(&url)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            let want = match url.rsplit('.').next().unwrap() {
                "js" => "text/javascript; charset=utf-8",
                "css" => "text/css; charset=utf-8",
                "svg" => "image/svg+xml",
                other => panic!("unexpected asset type {other}"),
            };
            assert_eq!(ct, want, "{url}");
            assert_eq!(
                r.headers()["cache-control"],
                "public, max-age=31536000, immutable"
            );
            assert_eq!(r.headers()["x-content-type-options"], "nosniff");
            assert!(!r.bytes().await.unwrap().is_empty());
            // The URL is tied to the content: another hash is not served.
            let name = url.rsplit('/').next().unwrap();
            let stale = format!("/assets/0000000000000000/{name}");
            let r = app.client.get(app.url(&stale)).send().await.unwrap();
            assert_eq!(r.status(), 404, "{stale}");
        }
    }
    let r = app
        .client
        .get(app.url("/assets/x/../../etc/passwd"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

// ---- The browser -------------------------------------------------------------------------

/// A chromedriver process with one headless Chromium session; both end with the guard.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    origin: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Chromium's console log (`goog:loggingPrefs`), read through chromedriver's log endpoint.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": "browser" }).to_string()),
        )
    }
}

fn chromium_binary() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| have(b))
}

impl Browser {
    /// A browser for `app`, or `None` (after a notice) without Chromium and chromedriver.
    async fn start(app: &TestApp) -> Option<Browser> {
        let Some(chromium) = chromium_binary() else {
            skip("chromium is not installed (apt-get install chromium chromium-driver)");
            return None;
        };
        if !have("chromedriver") {
            skip("chromedriver is not installed (apt-get install chromium-driver)");
            return None;
        }
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let binary = which(chromium);
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900", "--no-first-run", "--no-default-browser-check",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-extensions",
                    // No host but the server resolves: a request for anything else fails.
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let caps = match caps {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        let webdriver = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&webdriver)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no WebDriver session from chromedriver: {e}"),
            }
        };
        Some(Browser {
            client,
            driver,
            _profile: profile,
            origin: app.address.clone(),
        })
    }

    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.origin))
            .await
            .unwrap();
    }

    /// Runs `script` (a function body returning a value) in the page.
    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` returns `true`; panics with `what` (and a screenshot) after [`WAIT`].
    async fn wait_for(&self, what: &str, script: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.js(script).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                self.fail(what).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Panics for a wait on `what` that timed out, with a screenshot and the browser's log.
    async fn fail(&self, what: &str) -> ! {
        self.screenshot(&format!("failed-{}", what.replace(' ', "-")))
            .await;
        let logs = self.logs().await;
        panic!("timed out waiting for {what}; browser log: {logs:#?}");
    }

    /// Clicks the element `css` names once it is there (again if the page re-renders it
    /// between finding and clicking).
    async fn click(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let element = self
                .client
                .wait()
                .at_most(WAIT)
                .for_element(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("no {css}: {e}"));
            match element.click().await {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("clicking {css}: {e}"),
            }
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        element.clear().await.unwrap();
        element.send_keys(text).await.unwrap();
    }

    /// Types `keys` (WebDriver key codes included) into the focused element.
    async fn keys(&self, keys: &str) {
        let focused = self.client.active_element().await.unwrap();
        focused.send_keys(keys).await.unwrap();
    }

    /// The console log since the last call.
    async fn logs(&self) -> Vec<Value> {
        match self.client.issue_cmd(BrowserLog).await.unwrap() {
            Value::Array(entries) => entries,
            other => panic!("unexpected log answer {other}"),
        }
    }

    /// Asserts that the page logged no error (failed loads, policy violations and script
    /// errors are all logged as SEVERE), that every resource it loaded came from the server
    /// with a success status, and that the document itself did.
    async fn assert_clean(&self, page: &str) {
        let errors: Vec<Value> = self
            .logs()
            .await
            .into_iter()
            .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
            .collect();
        assert!(errors.is_empty(), "{page}: console errors {errors:#?}");
        let entries = self
            .js("return performance.getEntriesByType('navigation')
                   .concat(performance.getEntriesByType('resource'))
                   .map(e => ({ name: e.name, status: e.responseStatus }));")
            .await;
        let entries = entries.as_array().unwrap();
        assert!(entries.len() > 1, "{page}: {entries:?}");
        for e in entries {
            let url = str_of(&e["name"]);
            assert!(
                url.starts_with(&format!("{}/", self.origin)),
                "{page} reached past the server: {url}"
            );
            let status = e["status"].as_u64().unwrap_or(0);
            assert!(
                (200..400).contains(&status),
                "{page}: {url} answered {status}"
            );
        }
    }

    /// Saves a screenshot as `target/browser-artifacts/NAME.png`.
    async fn screenshot(&self, name: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        if let Ok(png) = self.client.screenshot().await {
            std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
        }
    }
}

/// The full path of a binary on the `PATH` (chromedriver wants a path).
fn which(binary: &str) -> String {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| PathBuf::from(dir).join(binary))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| binary.to_string())
}

// ---- GraphiQL ----------------------------------------------------------------------------

/// Replaces the query editor's text, runs it and waits for a response containing `expect`;
/// returns the response text.
async fn run_in_graphiql(b: &Browser, query: &str, expect: &str) -> String {
    b.js(&format!(
        "document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.setValue({});
         document.querySelector('.graphiql-response .CodeMirror').CodeMirror.setValue('');
         return true;",
        json!(query)
    ))
    .await;
    // GraphiQL takes the new text a moment later; until then a document with several
    // operations (the example) makes the button open a menu of them instead of running.
    let runs = "const b = document.querySelector('.graphiql-execute-button');
         return !!b && !b.hasAttribute('aria-haspopup');";
    b.wait_for("GraphiQL to take the new document", runs).await;
    b.click(".graphiql-execute-button").await;
    // The response text, and whether GraphiQL is running a request (its button then reads
    // "Stop query"). A click that leaves GraphiQL idle with no response for a few seconds (lost
    // on a loaded machine) is repeated; a request that runs or answered is never clicked again
    // (that would stop it, or run a mutation twice).
    let state =
        "const r = document.querySelector('.graphiql-response .CodeMirror').CodeMirror.getValue();
         const b = document.querySelector('.graphiql-execute-button');
         return [r, !!b && (b.getAttribute('aria-label') || '').startsWith('Stop')];";
    let what = format!("a response with {expect}");
    let deadline = Instant::now() + WAIT;
    let mut active_at = Instant::now();
    loop {
        let answer = b.js(state).await;
        let response = str_of(&answer[0]);
        if response.contains(expect) {
            return response;
        }
        if !response.is_empty() || answer[1] == Value::Bool(true) {
            active_at = Instant::now();
        } else if active_at.elapsed() > Duration::from_secs(3) {
            b.wait_for("GraphiQL to take the new document", runs).await;
            b.click(".graphiql-execute-button").await;
            active_at = Instant::now();
        }
        if Instant::now() > deadline {
            b.fail(&what).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn graphiql_runs_offline_and_logs_in_through_the_cookie(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let Some(b) = Browser::start(&app).await else {
        return;
    };
    b.goto("/graphql").await;
    b.wait_for(
        "GraphiQL with the example document",
        "const e = document.querySelector('.graphiql-query-editor .CodeMirror');
         return !!e && e.CodeMirror.getValue().includes('createAnonymousSession')
             && e.CodeMirror.getValue().includes('activeSession');",
    )
    .await;

    let out = run_in_graphiql(&b, "{ activeChannel { code } }", "\"code\": \"default\"").await;
    assert!(out.contains("activeChannel"), "{out}");
    let out = run_in_graphiql(&b, "{ activeSession { kind } }", "activeSession").await;
    assert!(out.contains("\"activeSession\": null"), "{out}");

    // A bearer token typed in the headers editor is sent.
    let (token, id) = app.anonymous_session().await;
    b.click(".graphiql-editor-tools button:nth-child(2)").await;
    b.wait_for(
        "the headers editor",
        "return [...document.querySelectorAll('.graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror')].length === 1;",
    )
    .await;
    b.js(&format!(
        "document.querySelector('.graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror')
           .CodeMirror.setValue({}); return true;",
        json!(json!({ "Authorization": format!("Bearer {token}") }).to_string())
    ))
    .await;
    let out = run_in_graphiql(&b, "{ activeSession { id } }", &id).await;
    assert!(out.contains(&id), "{out}");
    b.js(
        "document.querySelector('.graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror')
            .CodeMirror.setValue(''); return true;",
    )
    .await;

    // A login run in GraphiQL sets the cookie; the next activeSession is authenticated by it.
    let login = format!(
        "mutation {{ login(username: \"{ADMIN}\", password: \"{ADMIN_PASSWORD}\") {{ __typename }} }}"
    );
    run_in_graphiql(&b, &login, "AuthenticationSuccess").await;
    let out = run_in_graphiql(
        &b,
        "query WhoAmI {\n  activeSession { kind user { identifier } }\n  activeChannel { code }\n}",
        "AUTHENTICATED",
    )
    .await;
    assert!(
        out.contains(&format!("\"identifier\": \"{ADMIN}\"")),
        "{out}"
    );

    // A subscription runs over a WebSocket with the same cookie: another client's login
    // streams into the response pane.
    let admin = app.admin_token().await;
    app.create_user(&admin, "alice", "password-one", &[]).await;
    b.js(&format!(
        "document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.setValue({});
         document.querySelector('.graphiql-response .CodeMirror').CodeMirror.setValue('');
         return true;",
        json!("subscription { sessionEvents(types: [LOGIN_SUCCEEDED]) { type identifier } }")
    ))
    .await;
    b.click(".graphiql-execute-button").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while crate::procs::metric(&app.metrics().await, "session_server_event_subscribers") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "GraphiQL's subscription never started: {:?}",
            b.logs().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.login("alice", "password-one").await;
    b.wait_for(
        "the live login event",
        "const r = document.querySelector('.graphiql-response .CodeMirror').CodeMirror.getValue();
         return r.includes('LOGIN_SUCCEEDED') && r.includes('alice');",
    )
    .await;
    b.assert_clean("GraphiQL").await;
    b.screenshot("playground").await;
}

// ---- The console -------------------------------------------------------------------------

async fn console_sign_in(b: &Browser, username: &str, password: &str) {
    b.goto("/console").await;
    b.type_into("#username", username).await;
    b.type_into("#password", password).await;
    b.click("#sign-in button[type=submit]").await;
    b.wait_for(
        "the console after sign-in",
        "return !document.getElementById('app').hidden
             && document.getElementById('who-name').textContent.includes('Signed in');",
    )
    .await;
}

async fn console_revokes_a_session_and_shows_a_refusal(v: Variant) {
    let Some(app) = TestApp::spawn(v).await else {
        return;
    };
    let admin = app.admin_token().await;
    let reader_role = app
        .create_role(&admin, "reader", &["READ_SESSION", "READ_USER"])
        .await;
    app.create_user(
        &admin,
        "reader@example.com",
        "reader-password",
        &[&reader_role],
    )
    .await;
    let victim = app
        .create_user(&admin, "victim@example.com", "victim-password", &[])
        .await;
    let first = app.login("victim@example.com", "victim-password").await;
    let second = app.login("victim@example.com", "victim-password").await;
    let first_id = str_of(&app.active_session(&first.token).await["id"]);
    let second_id = str_of(&app.active_session(&second.token).await["id"]);

    let Some(b) = Browser::start(&app).await else {
        return;
    };
    console_sign_in(&b, ADMIN, ADMIN_PASSWORD).await;
    // The user's sessions, found from the users list.
    b.click(&format!(
        "#users tr[data-user-id='{victim}'] button.user-sessions"
    ))
    .await;
    let row = |id: &str| format!("#sessions tr[data-session-id='{id}']");
    b.wait_for(
        "the victim's sessions",
        &format!(
            "return !!document.querySelector(\"{}\") && !!document.querySelector(\"{}\")
                 && document.getElementById('f-user').value === '{victim}'
                 && document.querySelectorAll('#sessions tbody tr').length === 2;",
            row(&first_id),
            row(&second_id)
        ),
    )
    .await;
    b.assert_clean("the console").await;
    b.screenshot("console").await;

    // Revoke one, with a confirmation, by keyboard: Escape cancels (nothing is revoked), Tab
    // and Enter confirm.
    b.click(&format!("{} button.revoke-session", row(&first_id)))
        .await;
    b.wait_for(
        "the confirmation",
        "return document.getElementById('confirm').open;",
    )
    .await;
    b.keys("\u{e00c}").await; // Escape
    b.wait_for(
        "the cancelled confirmation",
        "return !document.getElementById('confirm').open;",
    )
    .await;
    assert!(!app.active_session(&first.token).await.is_null());
    b.click(&format!("{} button.revoke-session", row(&first_id)))
        .await;
    b.wait_for(
        "the confirmation",
        "return document.getElementById('confirm').open
             && document.activeElement.id === 'confirm-cancel';",
    )
    .await;
    b.keys("\u{e004}").await; // Tab, to the confirm button
    b.keys("\u{e007}").await; // Enter
    b.wait_for(
        "the revocation",
        &format!(
            "return document.getElementById('status').textContent === 'Session {first_id} revoked.'
                 && !document.querySelector(\"{}\");",
            row(&first_id)
        ),
    )
    .await;
    // The revoked token is refused on its next request; the other session lives on.
    assert!(app.active_session(&first.token).await.is_null());
    let r = app
        .gql_as(&first.token, "{ mySessions { id } }", json!({}))
        .await;
    assert_eq!(r.error_code(), Some("UNAUTHENTICATED"), "{}", r.body);
    assert_eq!(
        str_of(&app.active_session(&second.token).await["id"]),
        second_id
    );

    // Readable at 390 px: nothing wider than the window.
    b.client.set_window_size(390, 844).await.unwrap();
    b.wait_for(
        "the narrow layout",
        "return document.documentElement.scrollWidth <= window.innerWidth;",
    )
    .await;
    b.screenshot("console-390").await;
    b.client.set_window_size(1280, 900).await.unwrap();
    b.assert_clean("the console after revoking").await;

    // A reader without REVOKE_SESSION sees the refusal, and nothing is revoked.
    b.click("#sign-out").await;
    b.wait_for(
        "the sign-in form",
        "return !document.getElementById('sign-in-section').hidden;",
    )
    .await;
    console_sign_in(&b, "reader@example.com", "reader-password").await;
    b.wait_for(
        "the permissions note",
        "return document.getElementById('permissions').textContent.includes('revoking needs REVOKE_SESSION');",
    )
    .await;
    b.click(&format!("{} button.revoke-session", row(&second_id)))
        .await;
    b.wait_for(
        "the confirmation",
        "return document.getElementById('confirm').open;",
    )
    .await;
    b.click("#confirm-ok").await;
    b.wait_for(
        "the refusal",
        "const a = document.getElementById('alert');
         return !a.hidden && a.textContent.startsWith('Refused') && a.textContent.includes('FORBIDDEN');",
    )
    .await;
    b.screenshot("console-refused").await;
    assert_eq!(
        str_of(&app.active_session(&second.token).await["id"]),
        second_id
    );
    b.assert_clean("the console of a reader").await;
}
