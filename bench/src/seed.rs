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

pub(crate) async fn connect_with_timeout(url: &str) -> Result<sea_orm::DatabaseConnection> {
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

pub(crate) async fn redis_conn(url: &str) -> Result<redis::aio::MultiplexedConnection> {
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

/// Permission names in the order the server lists them (`Permission::ALL` in
/// `src/permission.rs`); the exact-answer check sorts lists anyway when the bytes differ.
const PERMISSION_ORDER: [&str; 9] = [
    "SUPER_ADMIN",
    "READ_SESSION",
    "REVOKE_SESSION",
    "READ_USER",
    "WRITE_USER",
    "READ_CHANNEL",
    "WRITE_CHANNEL",
    "READ_ORDER",
    "WRITE_ORDER",
];

/// The code of the channel the server creates at first start, a request's channel without a
/// `channel-token` or active channel.
pub const DEFAULT_CHANNEL: &str = "default";

/// The seeded channels and roles: `BENCH_READER` in both channels, `BENCH_WRITER` in the second.
const SEED_CHANNELS: [&str; 2] = ["bench-a", "bench-b"];
const SEED_ROLES: [(&str, &str, &[usize]); 2] = [
    ("BENCH_READER", "READ_SESSION,READ_ORDER", &[0, 1]),
    ("BENCH_WRITER", "WRITE_ORDER,READ_USER", &[1]),
];

/// A seeded user and what the server must answer about them.
pub struct SeedUser {
    pub id: i64,
    pub identifier: String,
    /// `(channel code, permission names)` in channel-id order, permissions in server order.
    pub channels: Vec<(String, Vec<&'static str>)>,
}

/// An authenticated session inserted for a seeded user.
pub struct UserSession {
    pub token: String,
    pub session_id: i64,
    pub user: std::sync::Arc<SeedUser>,
}

/// A seeded channel and the `channel-token` that selects it.
pub struct SeedChannel {
    pub code: String,
    pub token: String,
}

/// Everything a server was seeded with.
#[derive(Default)]
pub struct Seeded {
    /// Anonymous session tokens.
    pub anonymous: Vec<String>,
    /// Their session ids, in the same order.
    pub anonymous_ids: Vec<i64>,
    /// Authenticated sessions, one per seeded user.
    pub users: Vec<UserSession>,
    /// Every seeded session's id and its user's identifier (`None` for anonymous ones).
    pub session_users: std::collections::HashMap<i64, Option<String>>,
    /// The seeded channels (`bench-a`, `bench-b`) with their tokens; empty without users.
    pub channels: Vec<SeedChannel>,
}

/// Inserts `sessions` anonymous sessions and `users` users, each with one authenticated session.
/// Every third user has no role, the next one `BENCH_READER`, the next both roles, so `me`
/// answers zero, two or two channels with merged permissions.
pub async fn seed_server(database_url: &str, sessions: usize, users: usize) -> Result<Seeded> {
    let anon = gen_tokens(sessions);
    insert_sessions(database_url, &anon, false).await?;
    let db = Database::connect(database_url)
        .await
        .with_context(|| format!("connecting to {}", redact(database_url)))?;
    let r = seed_users(&db, users).await;
    let mut session_users = std::collections::HashMap::new();
    let hash_ids = query_pairs(&db, "SELECT id, token_hash FROM session").await;
    // Statistics as a running PostgreSQL has them (autovacuum analyzes a table soon after a
    // bulk load); without them the first rows measured would get plans the later ones do not.
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        db.execute_unprepared("ANALYZE")
            .await
            .context("ANALYZE after seeding")?;
    }
    db.close().await.ok();
    let (users, channels) = r?;
    let by_hash: std::collections::HashMap<String, i64> =
        hash_ids?.into_iter().map(|(id, hash)| (hash, id)).collect();
    let mut anonymous = Vec::with_capacity(anon.len());
    let mut anonymous_ids = Vec::with_capacity(anon.len());
    for t in anon {
        let id = *by_hash
            .get(&t.hash_hex)
            .ok_or_else(|| anyhow!("a seeded anonymous session is missing"))?;
        session_users.insert(id, None);
        anonymous.push(t.token);
        anonymous_ids.push(id);
    }
    for u in &users {
        session_users.insert(u.session_id, Some(u.user.identifier.clone()));
    }
    Ok(Seeded {
        anonymous,
        anonymous_ids,
        users,
        session_users,
        channels,
    })
}

async fn query_pairs(db: &sea_orm::DatabaseConnection, sql: &str) -> Result<Vec<(i64, String)>> {
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql.to_string(),
        ))
        .await
        .with_context(|| format!("seed query {sql}"))?;
    rows.iter()
        .map(|r| {
            let id: i64 = r.try_get_by_index(0)?;
            let s: String = r.try_get_by_index(1)?;
            Ok((id, s))
        })
        .collect()
}

fn sql_list(items: impl IntoIterator<Item = String>) -> String {
    items.into_iter().collect::<Vec<_>>().join(",")
}

async fn seed_users(
    db: &sea_orm::DatabaseConnection,
    n: usize,
) -> Result<(Vec<UserSession>, Vec<SeedChannel>)> {
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let now = now_ms();
    let run = format!("{:08x}", rand::random::<u32>());
    db.execute_unprepared(&format!(
        "INSERT INTO channel (code, token, created_at) VALUES {}",
        sql_list(
            SEED_CHANNELS
                .iter()
                .map(|c| format!("('{c}','{c}-{run}',{now})"))
        )
    ))
    .await
    .context("inserting seed channels")?;
    db.execute_unprepared(&format!(
        "INSERT INTO role (code, description, permissions, created_at) VALUES {}",
        sql_list(
            SEED_ROLES
                .iter()
                .map(|(code, perms, _)| format!("('{code}','benchmark role','{perms}',{now})"))
        )
    ))
    .await
    .context("inserting seed roles")?;
    let codes = |list: &[&str]| sql_list(list.iter().map(|c| format!("'{c}'")));
    let channel_ids: std::collections::HashMap<String, i64> = query_pairs(
        db,
        &format!(
            "SELECT id, code FROM channel WHERE code IN ({})",
            codes(&SEED_CHANNELS)
        ),
    )
    .await?
    .into_iter()
    .map(|(id, c)| (c, id))
    .collect();
    let role_codes: Vec<&str> = SEED_ROLES.iter().map(|r| r.0).collect();
    let role_ids: std::collections::HashMap<String, i64> = query_pairs(
        db,
        &format!(
            "SELECT id, code FROM role WHERE code IN ({})",
            codes(&role_codes)
        ),
    )
    .await?
    .into_iter()
    .map(|(id, c)| (c, id))
    .collect();
    let channel_id = |i: usize| {
        channel_ids
            .get(SEED_CHANNELS[i])
            .copied()
            .ok_or_else(|| anyhow!("seed channel {} missing", SEED_CHANNELS[i]))
    };
    let role_id = |code: &str| {
        role_ids
            .get(code)
            .copied()
            .ok_or_else(|| anyhow!("seed role {code} missing"))
    };
    let mut links = Vec::new();
    for (code, _, channels) in SEED_ROLES {
        for &c in channels {
            links.push(format!("({},{})", role_id(code)?, channel_id(c)?));
        }
    }
    db.execute_unprepared(&format!(
        "INSERT INTO role_channel (role_id, channel_id) VALUES {}",
        sql_list(links)
    ))
    .await
    .context("inserting seed role_channel rows")?;

    // Users (every NOT NULL column of `user`; the hash is not a valid PHC string, so these
    // users can never log in, and never need to).
    let identifiers: Vec<String> = (0..n).map(|i| format!("bench-user-{i:06}")).collect();
    for chunk in identifiers.chunks(2000) {
        db.execute_unprepared(&format!(
            "INSERT INTO \"user\" (identifier, password_hash, verified, created_at) VALUES {}",
            sql_list(chunk.iter().enumerate().map(|(i, ident)| format!(
                "('{ident}','!bench-seed: no password',{},{now})",
                i % 2 == 0
            )))
        ))
        .await
        .context("inserting seed users")?;
    }
    let user_ids: std::collections::HashMap<String, i64> = query_pairs(
        db,
        "SELECT id, identifier FROM \"user\" WHERE identifier LIKE 'bench-user-%'",
    )
    .await?
    .into_iter()
    .map(|(id, ident)| (ident, id))
    .collect();

    // Roles: user i gets none (i % 3 == 0), BENCH_READER (1) or both (2).
    let mut users = Vec::with_capacity(n);
    let mut grants = Vec::new();
    for (i, ident) in identifiers.iter().enumerate() {
        let id = *user_ids
            .get(ident)
            .ok_or_else(|| anyhow!("seed user {ident} missing"))?;
        let held: &[(&str, &str, &[usize])] = &SEED_ROLES[..i % 3];
        let mut per_channel: Vec<Vec<&'static str>> = vec![Vec::new(); SEED_CHANNELS.len()];
        for (code, perms, channels) in held {
            grants.push(format!("({id},{})", role_id(code)?));
            for &c in *channels {
                per_channel[c].extend(perms.split(','));
            }
        }
        // Channels in id order (inserted in this order), permissions in the server's order.
        let mut channels: Vec<(i64, String, Vec<&'static str>)> = Vec::new();
        for (c, perms) in per_channel.into_iter().enumerate() {
            if perms.is_empty() {
                continue;
            }
            let ordered = PERMISSION_ORDER
                .iter()
                .copied()
                .filter(|p| perms.contains(p))
                .collect();
            channels.push((channel_id(c)?, SEED_CHANNELS[c].to_string(), ordered));
        }
        channels.sort_by_key(|c| c.0);
        users.push(std::sync::Arc::new(SeedUser {
            id,
            identifier: ident.clone(),
            channels: channels.into_iter().map(|(_, c, p)| (c, p)).collect(),
        }));
    }
    for chunk in grants.chunks(2000) {
        db.execute_unprepared(&format!(
            "INSERT INTO user_role (user_id, role_id) VALUES {}",
            sql_list(chunk.iter().cloned())
        ))
        .await
        .context("inserting seed user_role rows")?;
    }

    // One authenticated session per user, as `login` would leave it (minus the refresh token).
    let tokens = gen_tokens(n);
    let expires = now + 30 * DAY_MS;
    for (chunk_t, chunk_u) in tokens.chunks(2000).zip(users.chunks(2000)) {
        db.execute_unprepared(&format!(
            "INSERT INTO session (kind, token_hash, token_issued_at, user_id, \
             authentication_strategy, invalidated, remember_me, created_at, last_active_at, \
             absolute_expires_at) VALUES {}",
            sql_list(chunk_t.iter().zip(chunk_u).map(|(t, u)| format!(
                "('authenticated','{}',{now},{},'native',false,false,{now},{now},{expires})",
                t.hash_hex, u.id
            )))
        ))
        .await
        .context("inserting seed authenticated sessions")?;
    }
    let by_hash: std::collections::HashMap<String, i64> = query_pairs(
        db,
        "SELECT id, token_hash FROM session WHERE kind = 'authenticated'",
    )
    .await?
    .into_iter()
    .map(|(id, h)| (h, id))
    .collect();
    let sessions = tokens
        .into_iter()
        .zip(users)
        .map(|(t, user)| {
            let session_id = *by_hash
                .get(&t.hash_hex)
                .ok_or_else(|| anyhow!("a seeded authenticated session is missing"))?;
            Ok(UserSession {
                token: t.token,
                session_id,
                user,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let channels = SEED_CHANNELS
        .iter()
        .map(|c| SeedChannel {
            code: c.to_string(),
            token: format!("{c}-{run}"),
        })
        .collect();
    Ok((sessions, channels))
}

pub const SESSION_WITH_USER: &str =
    r#"{"query":"{ activeSession { id kind user { id identifier } } }"}"#;
pub const ME: &str = r#"{"query":"{ me { identifier channels { channelCode permissions } } }"}"#;
pub const ADMIN_LIST: &str =
    r#"{"query":"{ sessions(first: 50) { nodes { id user { identifier } } } }"}"#;
/// How many nodes the admin listing must answer.
pub const ADMIN_LIST_NODES: usize = 50;

impl UserSession {
    /// The exact answer to [`SESSION_WITH_USER`] with this session's token.
    pub fn session_answer(&self) -> serde_json::Value {
        serde_json::json!({ "data": { "activeSession": {
            "id": self.session_id.to_string(),
            "kind": "AUTHENTICATED",
            "user": { "id": self.user.id.to_string(), "identifier": self.user.identifier },
        }}})
    }

    /// The exact answer to [`ME`] with this session's token.
    pub fn me_answer(&self) -> serde_json::Value {
        let channels: Vec<serde_json::Value> = self
            .user
            .channels
            .iter()
            .map(|(code, perms)| serde_json::json!({ "channelCode": code, "permissions": perms }))
            .collect();
        serde_json::json!({ "data": { "me": {
            "identifier": self.user.identifier,
            "channels": channels,
        }}})
    }
}

/// Checks an admin listing answer: exactly `ADMIN_LIST_NODES` distinct sessions, each one the
/// seed knows, each with its own user's identifier (or no user for an anonymous session).
pub fn check_admin_list(
    body: &[u8],
    sessions: &std::collections::HashMap<i64, Option<String>>,
) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON ({e})"))?;
    if v.get("errors").is_some() {
        return Err(format!("errors: {}", v["errors"]));
    }
    let nodes = v["data"]["sessions"]["nodes"]
        .as_array()
        .ok_or("no data.sessions.nodes list")?;
    if nodes.len() != ADMIN_LIST_NODES {
        return Err(format!(
            "{} nodes instead of {ADMIN_LIST_NODES}",
            nodes.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for n in nodes {
        let id: i64 = n["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad node id {}", n["id"]))?;
        if !seen.insert(id) {
            return Err(format!("session {id} listed twice"));
        }
        let expected = sessions
            .get(&id)
            .ok_or_else(|| format!("session {id} was never seeded"))?;
        let got = match &n["user"] {
            serde_json::Value::Null => None,
            u => Some(
                u["identifier"]
                    .as_str()
                    .ok_or_else(|| format!("session {id}: user without identifier"))?,
            ),
        };
        if got != expected.as_deref() {
            return Err(format!(
                "session {id}: user {got:?}, the seed says {expected:?}"
            ));
        }
    }
    Ok(())
}

/// Requests `query` once per `(token, answer)` over `conc` connections and checks each answer
/// exactly: warms the cache for the user rows and proves the seed is what the server sees.
pub async fn warm_exact(
    addr: SocketAddr,
    query: &'static str,
    cases: Vec<(String, serde_json::Value)>,
    conc: usize,
) -> Result<()> {
    let chunk = cases.len().div_ceil(conc.max(1)).max(1);
    let mut tasks = Vec::new();
    let mut cases = cases.into_iter().peekable();
    while cases.peek().is_some() {
        let part: Vec<(String, serde_json::Value)> = cases.by_ref().take(chunk).collect();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            for (t, answer) in &part {
                let (_, body) = conn.graphql(query, Some(t)).await?;
                let v: serde_json::Value = serde_json::from_str(&body)
                    .with_context(|| format!("not JSON: {}", truncate(&body, 300)))?;
                if !crate::load::same_json(&v, answer) {
                    bail!(
                        "wrong answer for a seeded session: {} (expected {answer})",
                        truncate(&body, 300)
                    );
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

/// `{ activeSession { id } }` with `token`: the session's id.
pub async fn session_id(addr: SocketAddr, token: &str) -> Result<i64> {
    let mut conn = Conn::connect(addr).await?;
    let (_, body) = conn
        .graphql(r#"{"query":"{ activeSession { id } }"}"#, Some(token))
        .await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    v["data"]["activeSession"]["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no session for the token: {}", truncate(&body, 300)))
}

/// The query of the `data-1k` row.
pub const SESSION_DATA: &str = r#"{"query":"{ activeSession { data } }"}"#;

/// Serialized size of each `data-1k` session's data.
pub const SESSION_DATA_BYTES: usize = 1024;

/// An anonymous session whose data was set through `updateSessionData` at seed time.
pub struct DataSession {
    pub token: String,
    pub session_id: i64,
    pub data: serde_json::Value,
}

impl DataSession {
    /// The exact answer to [`SESSION_DATA`] with this session's token.
    pub fn answer(&self) -> serde_json::Value {
        serde_json::json!({ "data": { "activeSession": { "data": self.data } } })
    }
}

fn random_word(rng: &mut impl Rng, len: usize) -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char)
        .collect()
}

/// A storefront's session data, different for every call, that serializes to exactly
/// [`SESSION_DATA_BYTES`]: strings, numbers, booleans, nested objects and lists, padded with a
/// flash message.
pub fn session_data(rng: &mut impl Rng) -> serde_json::Value {
    let items: Vec<serde_json::Value> = (0..6)
        .map(|_| {
            serde_json::json!({
                "sku": random_word(rng, 10),
                "qty": rng.random_range(1..10),
                "gift": rng.random_bool(0.2),
            })
        })
        .collect();
    let recent: Vec<String> = (0..6).map(|_| random_word(rng, 12)).collect();
    let mut data = serde_json::json!({
        "locale": "de-DE",
        "currency": "EUR",
        "cart": { "items": items, "coupon": random_word(rng, 8) },
        "consent": { "analytics": true, "marketing": rng.random_bool(0.5) },
        "checkoutStep": "shipping",
        "recentlyViewed": recent,
        "flash": "",
    });
    let len = data.to_string().len();
    debug_assert!(len < SESSION_DATA_BYTES, "session data base is {len} bytes");
    data["flash"] =
        serde_json::Value::String(random_word(rng, SESSION_DATA_BYTES.saturating_sub(len)));
    data
}

/// Inserts `n` anonymous sessions, sets [`session_data`] on each through the
/// `updateSessionData` mutation (checking the echoed data and `dataVersion` 1), then reads each
/// once with [`SESSION_DATA`], checking the answer exactly (which also warms the cache).
pub async fn seed_session_data(
    database_url: &str,
    addr: SocketAddr,
    n: usize,
    conc: usize,
) -> Result<Vec<DataSession>> {
    let tokens = gen_tokens(n);
    insert_sessions(database_url, &tokens, false).await?;
    let mut rng = rand::rng();
    let cases: Vec<(String, serde_json::Value)> = tokens
        .into_iter()
        .map(|t| (t.token, session_data(&mut rng)))
        .collect();
    let chunk = cases.len().div_ceil(conc.max(1)).max(1);
    let mut tasks = Vec::new();
    for part in cases.chunks(chunk) {
        let part = part.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let mut out = Vec::with_capacity(part.len());
            for (token, data) in part {
                let body = serde_json::json!({
                    "query": "mutation($set: JSON!) { updateSessionData(set: $set) { id data dataVersion } }",
                    "variables": { "set": data },
                })
                .to_string();
                let (_, answer) = conn.graphql(&body, Some(&token)).await?;
                let v: serde_json::Value = serde_json::from_str(&answer)?;
                let s = &v["data"]["updateSessionData"];
                let session_id = s["id"].as_str().and_then(|id| id.parse().ok());
                let (Some(session_id), true) = (
                    session_id,
                    s["dataVersion"] == 1 && crate::load::same_json(&s["data"], &data),
                ) else {
                    bail!("updateSessionData answered {}", truncate(&answer, 300));
                };
                out.push(DataSession {
                    token,
                    session_id,
                    data,
                });
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    let cases = all.iter().map(|d| (d.token.clone(), d.answer())).collect();
    warm_exact(addr, SESSION_DATA, cases, conc)
        .await
        .context("reading the seeded session data back")?;
    Ok(all)
}

/// `GET /.well-known/jwks.json`: the keys that verify the server's session JWTs.
pub async fn jwks(addr: SocketAddr) -> Result<jsonwebtoken::jwk::JwkSet> {
    let mut conn = Conn::connect(addr).await?;
    let (status, _, body) = conn
        .send(
            hyper::Method::GET,
            "/.well-known/jwks.json",
            &[],
            bytes::Bytes::new(),
        )
        .await?;
    if status != hyper::StatusCode::OK {
        bail!(
            "/.well-known/jwks.json answered {status}: {}",
            truncate(&String::from_utf8_lossy(&body), 300)
        );
    }
    serde_json::from_slice(&body).context("parsing /.well-known/jwks.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn seeded_session_data_is_one_kib_and_differs_per_session() {
        let mut rng = rand::rng();
        let a = session_data(&mut rng);
        let b = session_data(&mut rng);
        assert_eq!(a.to_string().len(), SESSION_DATA_BYTES);
        assert_eq!(b.to_string().len(), SESSION_DATA_BYTES);
        assert_ne!(a, b);
    }

    fn listing(nodes: &[(i64, Option<&str>)]) -> Vec<u8> {
        let nodes: Vec<serde_json::Value> = nodes
            .iter()
            .map(|(id, user)| {
                serde_json::json!({
                    "id": id.to_string(),
                    "user": user.map(|u| serde_json::json!({ "identifier": u })),
                })
            })
            .collect();
        serde_json::json!({ "data": { "sessions": { "nodes": nodes } } })
            .to_string()
            .into_bytes()
    }

    fn known() -> HashMap<i64, Option<String>> {
        (1..=60)
            .map(|i| (i, (i % 2 == 0).then(|| format!("bench-user-{i:06}"))))
            .collect()
    }

    fn right() -> Vec<(i64, Option<String>)> {
        (1..=50)
            .map(|i| (i, (i % 2 == 0).then(|| format!("bench-user-{i:06}"))))
            .collect()
    }

    fn body(nodes: &[(i64, Option<String>)]) -> Vec<u8> {
        let n: Vec<(i64, Option<&str>)> = nodes.iter().map(|(i, u)| (*i, u.as_deref())).collect();
        listing(&n)
    }

    #[test]
    fn the_admin_listing_check_accepts_fifty_seeded_sessions_with_their_users() {
        assert_eq!(check_admin_list(&body(&right()), &known()), Ok(()));
    }

    #[test]
    fn the_admin_listing_check_refuses_wrong_listings() {
        let k = known();
        let mut short = right();
        short.pop();
        assert!(check_admin_list(&body(&short), &k).is_err());
        let mut wrong_user = right();
        wrong_user[1].1 = Some("bench-user-000099".into());
        assert!(check_admin_list(&body(&wrong_user), &k).is_err());
        let mut lost_user = right();
        lost_user[1].1 = None;
        assert!(check_admin_list(&body(&lost_user), &k).is_err());
        let mut twice = right();
        twice[1] = twice[0].clone();
        assert!(check_admin_list(&body(&twice), &k).is_err());
        let mut unknown = right();
        unknown[0].0 = 1000;
        assert!(check_admin_list(&body(&unknown), &k).is_err());
        assert!(check_admin_list(br#"{"errors":[{"message":"forbidden"}]}"#, &k).is_err());
    }

    #[test]
    fn predicted_answers_name_the_session_and_its_user() {
        let u = UserSession {
            token: "t".into(),
            session_id: 12,
            user: std::sync::Arc::new(SeedUser {
                id: 5,
                identifier: "bench-user-000005".into(),
                channels: vec![("bench-b".into(), vec!["READ_SESSION", "WRITE_ORDER"])],
            }),
        };
        let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(
            u.session_answer(),
            json(
                r#"{"data":{"activeSession":{"id":"12","kind":"AUTHENTICATED","user":{"id":"5","identifier":"bench-user-000005"}}}}"#
            )
        );
        assert_eq!(
            u.me_answer(),
            json(
                r#"{"data":{"me":{"identifier":"bench-user-000005","channels":[{"channelCode":"bench-b","permissions":["READ_SESSION","WRITE_ORDER"]}]}}}"#
            )
        );
    }
}
