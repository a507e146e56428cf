//! Structured logs: with `LOG_FORMAT=json` every line is one JSON object; every request gets an
//! id (the client's sane `x-request-id`, else a fresh one) that comes back in the response and
//! is in every line about the request, and one access line per request names the operation,
//! status, duration and session id, never the token.

use crate::procs::ServerProc;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id_of_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/logs.db?mode=rwc", dir.path().display());
    let s = ServerProc::spawn(&[
        ("DATABASE_URL", &db_url),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "info"),
    ])
    .await;

    // A request that fails (no session for an admin listing), with the client's id.
    let r = crate::helpers::Api::send(
        s.post("{ sessions(first: 1) { totalCount } }", json!({}))
            .header("x-request-id", "checkout-7f3a"),
    )
    .await;
    assert_eq!(r.error_code(), Some("UNAUTHENTICATED"), "{}", r.body);
    assert_eq!(r.header("x-request-id").as_deref(), Some("checkout-7f3a"));

    // A forged id (a quote and spaces could break a log line) is replaced by a fresh one.
    let r = crate::helpers::Api::send(
        s.post("{ __typename }", json!({}))
            .header("x-request-id", "x\" injected: 1"),
    )
    .await;
    let fresh = r.header("x-request-id").expect("a generated request id");
    assert!(!fresh.is_empty() && !fresh.contains('"'), "{fresh}");

    // A logged-in request: its access line names the session, never the token.
    let token = s.admin_token().await;
    let session_id = s.active_session(&token).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The lines are written as the responses go out; give the writer a moment.
    let mut lines: Vec<Value> = Vec::new();
    for _ in 0..50 {
        let log = s.log();
        lines = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if lines.iter().filter(|l| l["target"] == "access").count() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let access = |id: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["target"] == "access" && l["span"]["request_id"] == id)
            .collect()
    };
    let failed = access("checkout-7f3a");
    assert_eq!(
        failed.len(),
        1,
        "one access line for the failed request: {lines:#?}"
    );
    let f = &failed[0]["fields"];
    assert_eq!(f["operation"], "query.sessions", "{f}");
    assert_eq!(f["errors"], "UNAUTHENTICATED", "{f}");
    assert_eq!(f["status"], 200, "{f}");
    assert_eq!(f["method"], "POST", "{f}");
    assert!(f["duration_ms"].as_f64().is_some(), "{f}");
    assert_eq!(
        access(&fresh).len(),
        1,
        "the generated id is the one logged"
    );

    let with_session: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["target"] == "access"
                && l["fields"]["session_id"].as_i64().map(|n| n.to_string())
                    == Some(session_id.clone())
        })
        .collect();
    assert!(
        !with_session.is_empty(),
        "no access line names session {session_id}"
    );
    let all = s.log();
    assert!(!all.contains(&token), "a session token was logged");
}
