//! Graceful shutdown of the real binary: on SIGTERM it stops accepting, finishes a request that
//! is still arriving, writes pending session activity, and exits 0 within 10 s.

use crate::procs::ServerProc;
use sea_orm::{ColumnTrait, Database, EntityTrait, QueryFilter};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Activity seen just before SIGTERM (more than one write interval after the last write, so
/// it is pending) is in the database after the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_pending_activity() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/s.db?mode=rwc", dir.path().display());
    let s = ServerProc::spawn(&[
        ("DATABASE_URL", &db_url),
        ("SESSION_ACTIVITY_WRITE_INTERVAL", "2s"),
    ])
    .await;
    let token = s.admin_token().await;
    let id: i64 = s.active_session(&token).await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let touched = now_ms();
    assert_eq!(
        s.active_session(&token).await["user"]["identifier"],
        "superadmin"
    );
    s.terminate();
    let started = Instant::now();
    let status = s
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", s.log()));
    assert!(status.success(), "exit status {status:?}:\n{}", s.log());
    eprintln!("exited {:?} after SIGTERM", started.elapsed());

    let db = Database::connect(&db_url).await.unwrap();
    let row = entity::session::Entity::find()
        .filter(entity::session::Column::Id.eq(id))
        .one(&db)
        .await
        .unwrap()
        .expect("the session row");
    assert!(
        row.last_active_at >= touched,
        "last_active_at {} is older than the request made at {touched} before SIGTERM",
        row.last_active_at
    );
}

/// A request whose body is still arriving when SIGTERM comes is answered; new connections are
/// refused; the process then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/s.db?mode=rwc", dir.path().display());
    let s = ServerProc::spawn(&[("DATABASE_URL", &db_url)]).await;
    let token = s.admin_token().await;
    let body = json!({ "query": "{ activeSession { user { identifier } } }" }).to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    conn.write_all(
        format!(
            "POST /graphql HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             authorization: Bearer {token}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{head}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    conn.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    s.terminate();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.try_wait().is_none(), "exited with a request in flight");
    // No longer accepting.
    let refused = tokio::time::timeout(
        Duration::from_secs(2),
        s.client.get(s.url("/health")).send(),
    )
    .await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a new connection was served after SIGTERM"
    );

    conn.write_all(tail.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut response))
        .await
        .expect("the in-flight request is answered")
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("\"identifier\":\"superadmin\""),
        "{response}"
    );

    let status = s
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", s.log()));
    assert!(status.success(), "exit status {status:?}:\n{}", s.log());
}
