//! Seeding and service helpers: session tokens inserted straight into the database in batches,
//! fresh PostgreSQL databases, Redis availability and clean-up of the benchmark's own key
//! prefix, and the GraphQL calls that prepare a server (cache warm-up, orders, login).
//!
//! A seeded token is exactly what the server issues: 32 random bytes in unpadded base64url; the
//! row stores the lowercase hex SHA-256 of the 43-character token.

use crate::load::{truncate, Conn};
use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::{Rng, RngCore};
use sea_orm::{ConnectionTrait, Database};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Token {
    pub token: String,
    pub hash_hex: String,
}

pub fn gen_tokens(n: usize) -> Vec<Token> {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| {
            let mut bytes = [0u8; 32];
            rng.fill_bytes(&mut bytes);
            let token = URL_SAFE_NO_PAD.encode(bytes);
            let mut hash_hex = String::with_capacity(64);
            for b in Sha256::digest(token.as_bytes()) {
                hash_hex.push_str(&format!("{b:02x}"));
            }
            Token { token, hash_hex }
        })
        .collect()
}

/// Random bearer "tokens" that are malformed (wrong length or alphabet).
pub fn garbage_tokens(n: usize) -> Vec<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~+/";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| {
            let mut len = rng.random_range(8..=80);
            if len == 43 {
                len = 44;
            }
            (0..len)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect()
        })
        .collect()
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

const DAY_MS: i64 = 86_400_000;

/// Inserts one anonymous session per token. `expired` sessions were created 31 days ago and
/// reached their absolute expiry a day ago.
pub async fn insert_sessions(database_url: &str, tokens: &[Token], expired: bool) -> Result<()> {
    let db = Database::connect(database_url)
        .await
        .with_context(|| format!("connecting to {}", redact(database_url)))?;
    let now = now_ms();
    let (created, expires) = if expired {
        (now - 31 * DAY_MS, now - DAY_MS)
    } else {
        (now, now + 30 * DAY_MS)
    };
    for chunk in tokens.chunks(2000) {
        let mut sql = String::with_capacity(chunk.len() * 160 + 200);
        sql.push_str(
            "INSERT INTO session (kind, token_hash, token_issued_at, invalidated, remember_me, \
             created_at, last_active_at, absolute_expires_at) VALUES ",
        );
        for (i, t) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('anonymous','{}',{created},false,false,{created},{created},{expires})",
                t.hash_hex
            ));
        }
        db.execute_unprepared(&sql)
            .await
            .context("inserting seed sessions")?;
    }
    db.close().await.ok();
    Ok(())
}

/// Hides a password in a connection URL.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// `base` with its database name replaced by `db`.
pub fn with_database(base: &str, db: &str) -> Result<String> {
    let scheme_end = base
        .find("://")
        .ok_or_else(|| anyhow!("not a URL: {}", redact(base)))?
        + 3;
    let (head, query) = match base.find('?') {
        Some(q) => (&base[..q], &base[q..]),
        None => (base, ""),
    };
    let host_end = head[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(head.len());
    Ok(format!("{}/{db}{query}", &head[..host_end]))
}

async fn connect_with_timeout(url: &str) -> Result<sea_orm::DatabaseConnection> {
    tokio::time::timeout(Duration::from_secs(5), Database::connect(url))
        .await
        .map_err(|_| anyhow!("timed out connecting to {}", redact(url)))?
        .with_context(|| format!("connecting to {}", redact(url)))
}

pub async fn postgres_ping(url: &str) -> Result<()> {
    let db = connect_with_timeout(url).await?;
    db.execute_unprepared("SELECT 1").await?;
    db.close().await.ok();
    Ok(())
}

/// Creates a fresh database next to `base`'s and returns its URL.
pub async fn create_pg_database(base: &str, name: &str) -> Result<String> {
    let db = connect_with_timeout(base).await?;
    db.execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .with_context(|| format!("CREATE DATABASE {name}"))?;
    db.close().await.ok();
    with_database(base, name)
}

pub async fn drop_pg_database(base: &str, name: &str) -> Result<()> {
    let db = connect_with_timeout(base).await?;
    db.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .with_context(|| format!("DROP DATABASE {name}"))?;
    db.close().await.ok();
    Ok(())
}

async fn redis_conn(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).with_context(|| format!("bad Redis URL {url}"))?;
    tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| anyhow!("timed out connecting to Redis at {url}"))?
    .with_context(|| format!("connecting to Redis at {url}"))
}

pub async fn redis_ping(url: &str) -> Result<()> {
    let mut con = redis_conn(url).await?;
    let pong: String = redis::cmd("PING").query_async(&mut con).await?;
    if pong != "PONG" {
        bail!("unexpected PING reply {pong:?}");
    }
    Ok(())
}

/// Deletes every key under `prefix` (the benchmark's own random prefix, never anything else).
pub async fn redis_delete_prefix(url: &str, prefix: &str) -> Result<u64> {
    if prefix.len() < 8 || !prefix.starts_with("bench-") {
        bail!("refusing to delete keys under {prefix:?}: not a benchmark prefix");
    }
    let mut con = redis_conn(url).await?;
    let mut cursor: u64 = 0;
    let mut deleted = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut con).await?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

pub const ACTIVE_SESSION: &str = r#"{"query":"{ activeSession { id expiresAt } }"}"#;

/// Requests `activeSession` once per token over `conc` connections, checking each is found:
/// fills the cache and proves the seed works.
pub async fn warm(addr: SocketAddr, tokens: &[String], conc: usize) -> Result<()> {
    let chunk = tokens.len().div_ceil(conc.max(1)).max(1);
    let mut tasks = Vec::new();
    for part in tokens.chunks(chunk) {
        let part: Vec<String> = part.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            for t in &part {
                let (_, body) = conn.graphql(ACTIVE_SESSION, Some(t)).await?;
                if !body.contains(r#""activeSession":{"#) {
                    bail!("a seeded session was not found: {}", truncate(&body, 300));
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// `createOrder` once per token; returns the order ids in token order.
pub async fn create_orders(
    addr: SocketAddr,
    tokens: &[String],
    conc: usize,
) -> Result<Vec<String>> {
    let chunk = tokens.len().div_ceil(conc.max(1)).max(1);
    let mut tasks = Vec::new();
    for part in tokens.chunks(chunk) {
        let part: Vec<String> = part.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let mut ids = Vec::with_capacity(part.len());
            for t in &part {
                let (_, body) = conn
                    .graphql(r#"{"query":"mutation { createOrder { id } }"}"#, Some(t))
                    .await?;
                let v: serde_json::Value = serde_json::from_str(&body)?;
                let id = v["data"]["createOrder"]["id"]
                    .as_str()
                    .ok_or_else(|| anyhow!("createOrder failed: {}", truncate(&body, 300)))?;
                ids.push(id.to_string());
            }
            anyhow::Ok(ids)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

pub fn login_body() -> String {
    serde_json::json!({
        "query": "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { __typename } }",
        "variables": { "u": "superadmin", "p": crate::server::SUPERADMIN_PASSWORD },
    })
    .to_string()
}

/// Logs in as the superadmin and returns the session token.
pub async fn login_superadmin(addr: SocketAddr) -> Result<String> {
    let mut conn = Conn::connect(addr).await?;
    let (headers, body) = conn.graphql(&login_body(), None).await?;
    if !body.contains("AuthenticationSuccess") {
        bail!("superadmin login failed: {}", truncate(&body, 300));
    }
    headers
        .get("session-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("login answered without a session-token header"))
}

/// Seeds `n` sessions on the peer (`POST /seed`) and returns their `Cookie` header values.
pub async fn seed_peer(addr: SocketAddr, n: usize) -> Result<Vec<String>> {
    let mut conn = Conn::connect(addr).await?;
    let mut cookies = Vec::with_capacity(n);
    for i in 0..n {
        let (status, headers, body) = conn
            .send(
                hyper::Method::POST,
                &format!("/seed?value={i}"),
                &[],
                bytes::Bytes::new(),
            )
            .await?;
        if status != hyper::StatusCode::OK {
            bail!(
                "peer /seed answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let cookie = headers
            .get(hyper::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .ok_or_else(|| anyhow!("peer /seed set no cookie"))?;
        cookies.push(cookie.to_string());
    }
    Ok(cookies)
}
