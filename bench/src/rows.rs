//! The default run as data: [`ROWS`] (what each row sends, to which server, and how each
//! answer is checked) and [`TARGETS`] (which ratio of which two rows must reach which bound),
//! and [`run`], the one runner that starts the servers the wanted rows need, measures the rows
//! in alternating rounds and prints the tables.
//!
//! To add a row: one [`RowDef`] in [`ROWS`] (and, if it compares, one [`TargetDef`]); a new
//! kind of request is one [`Send`] variant and its arm in [`requests`]; a new server
//! configuration is one [`Server`] variant and its arm in [`start`].

use crate::load::{self, CheckFn, Exact, Expect, Kind, ReqSpec, Stop, Workload};
use crate::report::{self, Cmp, Figure, Measurement, RowReport, Status, Target};
use crate::server::{self, Proc, ServerConfig};
use crate::{prepare_server, quiesce, seed, sqlite_url, Args, Cleanup, Settings};
use anyhow::{anyhow, bail, Context, Result};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, COOKIE};
use hyper::Method;
use std::sync::Arc;
use std::time::Duration;

/// A server process the rows run against. Each is started once, and only when a wanted row
/// needs it; rows naming the same server share it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Server {
    /// SQLite, `SESSION_CACHE=memory` (the floor's server: must start).
    Memory,
    /// SQLite, `SESSION_CACHE=redis` (own random key prefix).
    Redis,
    /// SQLite, `SESSION_CACHE=tiered` (own random key prefix).
    Tiered,
    /// SQLite, cache effectively off (`SESSION_CACHE_TTL=1ms`).
    DbSqlite,
    /// A fresh PostgreSQL database, cache effectively off (`SESSION_CACHE_TTL=1ms`).
    DbPostgres,
    /// SQLite, memory cache, an order created for every anonymous session (for the mix).
    Mixed,
    /// `bench/src/bin/peer.rs`: axum + tower-sessions + a private Redis.
    Peer,
    /// `bench/src/bin/bare.rs`: bare async-graphql + axum.
    Bare,
}

/// What a request kind sends; one request per seeded token (or the single request named).
#[derive(Clone, Copy, Debug)]
pub enum Send {
    /// `{ __typename }` without a token.
    Typename,
    /// `{ activeSession { id expiresAt } }` with each anonymous session's bearer token.
    AnonymousSession,
    /// `{ activeSession { id kind user { id identifier } } }` with each authenticated
    /// session's bearer token.
    SessionWithUser,
    /// `{ me { identifier channels { channelCode permissions } } }` with each authenticated
    /// session's bearer token.
    Me,
    /// `{ sessions(first: 50) { nodes { id user { identifier } } } }` as the superadmin,
    /// logged in through the `login` mutation.
    AdminList,
    /// `{ activeSession { id expiresAt } }` with 1,000 malformed bearer tokens.
    GarbageTokens,
    /// `setActiveOrder` and `unsetActiveOrder` with each anonymous session and its order.
    ToggleOrder,
    /// The superadmin's `login` mutation.
    Login,
    /// The peer's `GET /read` with each seeded session cookie.
    PeerRead,
    /// `updateSessionData(set: { bench: "…" }) { id data dataVersion }` with each anonymous
    /// session's bearer token, each session setting its own value.
    UpdateData,
    /// `{ activeSession { data } }` with each data session's bearer token (anonymous sessions
    /// whose ~1 KiB of data was set through `updateSessionData` when the server was prepared).
    SessionData,
    /// `GET /auth` (the gateway check, no GraphQL) with each authenticated session's bearer
    /// token, in the default channel.
    Gateway,
    /// The same with a `channel-token` header (`bench-a` or `bench-b`, alternating by user).
    GatewayChannel,
    /// `{ sessionJwt { token expiresAt } }` with each authenticated session's bearer token.
    SessionJwt,
}

/// How each answer of a request kind is checked (a wrong answer counts as an error).
#[derive(Clone, Copy, Debug)]
pub enum Check {
    /// Status 200 only (the peer answers 401 when it does not find the session).
    Status,
    /// Status 200 and the body contains this text.
    Contains(&'static str),
    /// Status 200 and exactly the answer the seed predicts for that request (`Send` variants
    /// whose answer is known: `Typename`, `SessionWithUser`, `Me`, `ToggleOrder`).
    Exact,
    /// Status 200 and 50 distinct seeded sessions, each with its own user's identifier.
    AdminList,
    /// `Send::UpdateData`: status 200, the session's own id, exactly the data it set, and a
    /// `dataVersion` above the seeded 0 that no earlier answer for that session carried (every
    /// update increments it, so a lost or stale update answers a version twice).
    DataVersion,
    /// `Send::Gateway*`: status 200 and exactly the identity headers the seed predicts
    /// (`x-session-id`, `x-session-kind`, `x-user-id`, `x-user-identifier`, `x-channel-code`,
    /// `x-permissions`).
    Headers,
    /// `Send::SessionJwt`: a JWT whose claims name the seeded session (`sid`), its user
    /// (`sub`), `kind`, channel and permissions, unexpired; its `kid` is in the server's JWKS,
    /// and every [`JWT_VERIFY_EVERY`]-th answer's Ed25519 signature is verified with it.
    Jwt,
}

/// One request kind of a row: its name in the report, its share of the row's requests, what it
/// sends and how its answers are checked.
pub struct KindDef {
    pub name: &'static str,
    pub weight: u32,
    pub send: Send,
    pub check: Check,
}

/// One row of the table.
pub struct RowDef {
    /// For `--only` and the targets.
    pub id: &'static str,
    pub label: &'static str,
    pub server: Server,
    /// One kind, or several for a mix.
    pub kinds: &'static [KindDef],
}

const fn single(send: Send, check: Check) -> KindDef {
    KindDef {
        name: "all",
        weight: 1,
        send,
        check,
    }
}

const SESSION_FOUND: Check = Check::Contains(r#""activeSession":{"#);

/// The gateway rows' requests: half without a channel, half with a `channel-token`.
const GATEWAY: &[KindDef] = &[
    KindDef {
        name: "bearer",
        weight: 1,
        send: Send::Gateway,
        check: Check::Headers,
    },
    KindDef {
        name: "bearer + channel-token",
        weight: 1,
        send: Send::GatewayChannel,
        check: Check::Headers,
    },
];

/// One `sessionJwt` answer in this many has its signature verified; every answer's claims are
/// checked. Verifying all would cost the load generator, which shares the CPU with the server,
/// about as much as the server spends signing.
pub const JWT_VERIFY_EVERY: u64 = 16;

/// Every row, in measuring order (each round walks this list; rows compared by a target sit
/// close together so that they see the same machine).
pub const ROWS: &[RowDef] = &[
    RowDef {
        id: "floor",
        label: "GraphQL floor `{ __typename }` (memory server)",
        server: Server::Memory,
        kinds: &[single(Send::Typename, Check::Exact)],
    },
    RowDef {
        id: "bare-floor",
        label: "bare async-graphql 7 + axum 0.8 `{ __typename }`",
        server: Server::Bare,
        kinds: &[single(Send::Typename, Check::Exact)],
    },
    RowDef {
        id: "auth-memory",
        label: "gateway check `GET /auth` (half with a channel-token), SESSION_CACHE=memory",
        server: Server::Memory,
        kinds: GATEWAY,
    },
    RowDef {
        id: "memory",
        label: "activeSession, SESSION_CACHE=memory",
        server: Server::Memory,
        kinds: &[single(Send::AnonymousSession, SESSION_FOUND)],
    },
    RowDef {
        id: "user-memory",
        label: "activeSession with user, SESSION_CACHE=memory",
        server: Server::Memory,
        kinds: &[single(Send::SessionWithUser, Check::Exact)],
    },
    RowDef {
        id: "me",
        label: "`me` with channels, SESSION_CACHE=memory",
        server: Server::Memory,
        kinds: &[single(Send::Me, Check::Exact)],
    },
    RowDef {
        id: "data-1k",
        label: "`activeSession { data }` with 1 KiB of data (memory)",
        server: Server::Memory,
        kinds: &[single(Send::SessionData, Check::Exact)],
    },
    RowDef {
        id: "update-data",
        label: "`updateSessionData(set: …)`, anonymous sessions (memory)",
        server: Server::Memory,
        kinds: &[single(Send::UpdateData, Check::DataVersion)],
    },
    RowDef {
        id: "jwt",
        label: "`sessionJwt { token expiresAt }`, authenticated sessions (memory)",
        server: Server::Memory,
        kinds: &[single(Send::SessionJwt, Check::Jwt)],
    },
    RowDef {
        id: "admin-list",
        label: "superadmin `sessions(first: 50)` with users (memory)",
        server: Server::Memory,
        kinds: &[single(Send::AdminList, Check::AdminList)],
    },
    RowDef {
        id: "redis",
        label: "activeSession, SESSION_CACHE=redis",
        server: Server::Redis,
        kinds: &[single(Send::AnonymousSession, SESSION_FOUND)],
    },
    RowDef {
        id: "user-redis",
        label: "activeSession with user, SESSION_CACHE=redis",
        server: Server::Redis,
        kinds: &[single(Send::SessionWithUser, Check::Exact)],
    },
    RowDef {
        id: "tiered",
        label: "activeSession, SESSION_CACHE=tiered",
        server: Server::Tiered,
        kinds: &[single(Send::AnonymousSession, SESSION_FOUND)],
    },
    RowDef {
        id: "user-tiered",
        label: "activeSession with user, SESSION_CACHE=tiered",
        server: Server::Tiered,
        kinds: &[single(Send::SessionWithUser, Check::Exact)],
    },
    RowDef {
        id: "auth-tiered",
        label: "gateway check `GET /auth` (half with a channel-token), SESSION_CACHE=tiered",
        server: Server::Tiered,
        kinds: GATEWAY,
    },
    RowDef {
        id: "db-sqlite",
        label: "activeSession, cache off (TTL 1ms), SQLite",
        server: Server::DbSqlite,
        kinds: &[single(Send::AnonymousSession, SESSION_FOUND)],
    },
    RowDef {
        id: "db-postgres",
        label: "activeSession, cache off (TTL 1ms), PostgreSQL",
        server: Server::DbPostgres,
        kinds: &[single(Send::AnonymousSession, SESSION_FOUND)],
    },
    RowDef {
        id: "db-postgres-user",
        label: "activeSession with user, cache off (TTL 1ms), PostgreSQL",
        server: Server::DbPostgres,
        kinds: &[single(Send::SessionWithUser, Check::Exact)],
    },
    RowDef {
        id: "mixed",
        label: "mix 90% read / 8% set+unsetActiveOrder / 2% login (memory)",
        server: Server::Mixed,
        kinds: &[
            KindDef {
                name: "read",
                weight: 90,
                send: Send::AnonymousSession,
                check: SESSION_FOUND,
            },
            KindDef {
                name: "set/unsetActiveOrder",
                weight: 8,
                send: Send::ToggleOrder,
                check: Check::Exact,
            },
            KindDef {
                name: "login",
                weight: 2,
                send: Send::Login,
                check: Check::Contains("AuthenticationSuccess"),
            },
        ],
    },
    RowDef {
        id: "garbage",
        label: "activeSession, garbage bearer tokens (memory server)",
        server: Server::Memory,
        kinds: &[single(
            Send::GarbageTokens,
            Check::Contains(r#""activeSession":null"#),
        )],
    },
    RowDef {
        id: "peer",
        label: "peer: axum + tower-sessions + Redis store, cookie read",
        server: Server::Peer,
        kinds: &[single(Send::PeerRead, Check::Status)],
    },
];

/// One target: `figures.0(numerator) / figures.1(denominator)`, median of per-round ratios
/// (see [`report::ratio`]).
pub struct TargetDef {
    pub name: &'static str,
    pub num: &'static str,
    pub den: &'static str,
    pub figures: (Figure, Figure),
    pub cmp: Cmp,
    pub bound: f64,
}

const fn at_least(name: &'static str, num: &'static str, den: &'static str, b: f64) -> TargetDef {
    TargetDef {
        name,
        num,
        den,
        figures: (Figure::Rps, Figure::Rps),
        cmp: Cmp::AtLeast,
        bound: b,
    }
}

/// Every target (issues 4, 8 and 12; issue 10's rows have no bound, their ratios to the floor
/// are in the table). Missed targets never change the exit status.
pub const TARGETS: &[TargetDef] = &[
    at_least("memory: req/s ÷ floor", "memory", "floor", 0.95),
    TargetDef {
        name: "memory: p99 ÷ floor p99",
        num: "memory",
        den: "floor",
        figures: (Figure::P99, Figure::P99),
        cmp: Cmp::AtMost,
        bound: 1.10,
    },
    at_least("tiered: req/s ÷ floor", "tiered", "floor", 0.95),
    at_least("redis: req/s ÷ floor", "redis", "floor", 0.80),
    at_least(
        "database only, PostgreSQL: req/s ÷ floor",
        "db-postgres",
        "floor",
        0.30,
    ),
    TargetDef {
        name: "mixed: p99 of cached reads ÷ memory row p99",
        num: "mixed",
        den: "memory",
        // The reads' p99 in the mix ÷ the memory row's p99.
        figures: (Figure::KindP99("read"), Figure::P99),
        cmp: Cmp::AtMost,
        bound: 2.0,
    },
    at_least("garbage tokens: req/s ÷ floor", "garbage", "floor", 1.0),
    at_least(
        "garbage tokens: req/s ÷ memory (cheaper than a cached lookup)",
        "garbage",
        "memory",
        1.0,
    ),
    at_least("memory: req/s ÷ peer", "memory", "peer", 1.0),
    at_least("tiered: req/s ÷ peer", "tiered", "peer", 1.0),
    at_least(
        "session with user, memory: req/s ÷ floor",
        "user-memory",
        "floor",
        0.95,
    ),
    at_least(
        "session with user, tiered: req/s ÷ floor",
        "user-tiered",
        "floor",
        0.90,
    ),
    at_least(
        "session with user, redis: req/s ÷ floor",
        "user-redis",
        "floor",
        0.70,
    ),
    at_least("me: req/s ÷ floor", "me", "floor", 0.95),
    at_least(
        "session with user, memory: req/s ÷ peer",
        "user-memory",
        "peer",
        1.0,
    ),
    at_least(
        "session with user, database only, PostgreSQL: req/s ÷ floor",
        "db-postgres-user",
        "floor",
        0.30,
    ),
    at_least(
        "own floor ÷ bare async-graphql floor",
        "floor",
        "bare-floor",
        1.0,
    ),
    at_least(
        "gateway check, memory: req/s ÷ floor",
        "auth-memory",
        "floor",
        1.5,
    ),
    at_least(
        "gateway check, memory: req/s ÷ peer",
        "auth-memory",
        "peer",
        1.3,
    ),
    at_least(
        "gateway check, tiered: req/s ÷ peer",
        "auth-tiered",
        "peer",
        1.0,
    ),
];

/// Row ids, for `--help` and error messages.
pub fn row_ids() -> String {
    ROWS.iter().map(|r| r.id).collect::<Vec<_>>().join(",")
}

/// A started server and what it was prepared with.
struct Ready {
    proc: Proc,
    seeded: seed::Seeded,
    /// `Server::Mixed`: each anonymous session's order id, in token order.
    orders: Vec<String>,
    /// `Server::Peer`: the seeded session cookies.
    cookies: Vec<String>,
    /// Sessions with ~1 KiB of data, when a wanted row on this server reads them.
    data: Vec<seed::DataSession>,
}

impl Ready {
    fn bare(proc: Proc) -> Ready {
        Ready {
            proc,
            seeded: seed::Seeded::default(),
            orders: Vec::new(),
            cookies: Vec::new(),
            data: Vec::new(),
        }
    }
}

/// What the run needs to reach the services.
struct Env<'a> {
    args: &'a Args,
    s: &'a Settings,
    redis_ok: Result<(), String>,
    pg_ok: Result<(), String>,
    suffix: String,
    keep_alive: Vec<server::PrivateRedis>,
}

impl Env<'_> {
    /// A missing service: skipped, or failed with `--require-all`.
    fn unavailable(&self, note: String) -> Status {
        if self.args.require_all {
            Status::Failed(note)
        } else {
            Status::Skipped(note)
        }
    }
}

/// Seeded users per session-server: as many as anonymous sessions, and enough for the listing.
fn users(s: &Settings) -> usize {
    s.sessions.max(seed::ADMIN_LIST_NODES)
}

/// Starts (and seeds) one server; `with_data` also seeds the sessions with data that
/// `Send::SessionData` reads.
async fn start(
    id: Server,
    with_data: bool,
    env: &mut Env<'_>,
    cleanup: &mut Cleanup,
) -> Result<Ready, Status> {
    let s = env.s;
    let failed = |e: anyhow::Error| Status::Failed(format!("{e:#}"));
    let sqlite = |name: &str, cache, ttl| ServerConfig {
        name: name.into(),
        database_url: sqlite_url(&s.scratch, name),
        cache,
        redis: None,
        cache_ttl: ttl,
        cache_capacity: None,
        extra_env: Vec::new(),
    };
    let cfg = match id {
        Server::Memory => sqlite("memory", "memory", None),
        Server::DbSqlite => sqlite("db-sqlite", "memory", Some("1ms")),
        // The mix measures reads while logins hash passwords; the login throttle (attempts
        // reserved per identifier and address while a login runs) and the hashing queue's
        // 2 s timeout would turn a closed loop of concurrent superadmin logins into
        // TooManyAttempts / RATE_LIMITED answers, so they are opened wide here.
        Server::Mixed => ServerConfig {
            extra_env: vec![
                ("LOGIN_MAX_ATTEMPTS", "1000000"),
                ("LOGIN_MAX_ATTEMPTS_PER_ADDRESS", "1000000"),
                ("PASSWORD_QUEUE_TIMEOUT", "120s"),
            ],
            ..sqlite("mixed", "memory", None)
        },
        Server::Redis | Server::Tiered => {
            if let Err(note) = &env.redis_ok {
                return Err(env.unavailable(note.clone()));
            }
            let (name, cache) = if id == Server::Redis {
                ("redis", "redis")
            } else {
                ("tiered", "tiered")
            };
            let prefix = format!("bench-{}-{name}:", env.suffix);
            cleanup
                .redis_prefixes
                .push((env.args.redis_url.clone(), prefix.clone()));
            ServerConfig {
                redis: Some((env.args.redis_url.clone(), prefix)),
                ..sqlite(name, cache, None)
            }
        }
        Server::DbPostgres => {
            if let Err(note) = &env.pg_ok {
                return Err(env.unavailable(note.clone()));
            }
            let name = format!("bench_{}_db", env.suffix);
            let url = seed::create_pg_database(&env.args.postgres_url, &name)
                .await
                .map_err(failed)?;
            cleanup
                .pg_databases
                .push((env.args.postgres_url.clone(), name));
            ServerConfig {
                name: "db-postgres".into(),
                database_url: url,
                cache: "memory",
                redis: None,
                cache_ttl: Some("1ms"),
                cache_capacity: None,
                extra_env: Vec::new(),
            }
        }
        Server::Bare => {
            let p = server::start_bare(&s.bare_bin, &s.scratch)
                .await
                .map_err(failed)?;
            eprintln!("  bare ready on {}", p.addr);
            return Ok(Ready::bare(p));
        }
        Server::Peer => return start_peer(env).await,
    };
    let (proc, seeded) = prepare_server(s, &cfg, s.sessions, users(s))
        .await
        .map_err(failed)?;
    let mut ready = Ready {
        proc,
        seeded,
        orders: Vec::new(),
        cookies: Vec::new(),
        data: Vec::new(),
    };
    if with_data {
        let t0 = std::time::Instant::now();
        ready.data = seed::seed_session_data(&cfg.database_url, ready.proc.addr, s.sessions, 8)
            .await
            .context("seeding sessions with data")
            .map_err(failed)?;
        // They are anonymous sessions of this server: the admin listing may show them.
        for d in &ready.data {
            ready.seeded.session_users.insert(d.session_id, None);
        }
        eprintln!(
            "  {} sessions with {} bytes of data each ({:.1} s)",
            ready.data.len(),
            seed::SESSION_DATA_BYTES,
            t0.elapsed().as_secs_f64()
        );
    }
    if id == Server::Mixed {
        let addr = ready.proc.addr;
        let tokens = &ready.seeded.anonymous;
        ready.orders = async {
            let orders = seed::create_orders(addr, tokens, 8)
                .await
                .context("seeding orders with createOrder")?;
            // createOrder changed each session: read them all again so the reads start warm.
            seed::warm(addr, tokens, 8).await?;
            anyhow::Ok(orders)
        }
        .await
        .map_err(failed)?;
    }
    Ok(ready)
}

async fn start_peer(env: &mut Env<'_>) -> Result<Ready, Status> {
    let s = env.s;
    let url = match &env.args.peer_redis_url {
        Some(u) => match seed::redis_ping(u).await {
            Ok(()) => u.clone(),
            Err(e) => return Err(env.unavailable(format!("peer Redis unavailable ({e:#})"))),
        },
        None => match server::start_private_redis(&s.scratch).await {
            Ok(r) => {
                let url = r.url.clone();
                env.keep_alive.push(r);
                url
            }
            Err(e) => return Err(env.unavailable(format!("{e:#}"))),
        },
    };
    let r = async {
        let p = server::start_peer(&s.peer_bin, &url, &s.scratch).await?;
        let cookies = seed::seed_peer(p.addr, s.sessions).await?;
        eprintln!("  peer ready on {} ({} sessions)", p.addr, cookies.len());
        anyhow::Ok(Ready {
            cookies,
            ..Ready::bare(p)
        })
    }
    .await;
    r.map_err(|e| Status::Failed(format!("{e:#}")))
}

/// One request before its check: body, bearer token, and the answer when it is known, or the
/// check prepared for it (for checks that need the request's own state).
struct Req {
    body: String,
    bearer: Option<String>,
    answer: Option<serde_json::Value>,
    prepared: Option<Expect>,
}

impl Req {
    fn new(body: impl Into<String>, bearer: Option<&str>) -> Req {
        Req {
            body: body.into(),
            bearer: bearer.map(str::to_string),
            answer: None,
            prepared: None,
        }
    }

    fn answer(mut self, v: serde_json::Value) -> Req {
        self.answer = Some(v);
        self
    }

    fn prepared(mut self, e: Expect) -> Req {
        self.prepared = Some(e);
        self
    }
}

type Listing = Arc<std::collections::HashMap<i64, Option<String>>>;

/// The check of one request.
fn expect(
    k: &KindDef,
    answer: Option<serde_json::Value>,
    prepared: Option<Expect>,
    listing: Option<&Listing>,
) -> Result<Expect> {
    Ok(match k.check {
        Check::Status => Expect::Ok,
        Check::Contains(s) => Expect::Contains(s),
        Check::Exact => Expect::Exact(Exact::new(answer.ok_or_else(|| {
            anyhow!("kind {}: {:?} has no known answer to check", k.name, k.send)
        })?)),
        Check::AdminList => {
            let known = listing
                .ok_or_else(|| anyhow!("kind {}: only Send::AdminList is a listing", k.name))?
                .clone();
            Expect::Check(CheckFn(Arc::new(move |body| {
                seed::check_admin_list(body, &known)
            })))
        }
        Check::DataVersion | Check::Headers | Check::Jwt => prepared.ok_or_else(|| {
            anyhow!(
                "kind {}: {:?} prepares no {:?} check",
                k.name,
                k.send,
                k.check
            )
        })?,
    })
}

/// The identity headers `/auth` must answer for a seeded user's session in `channel_code`.
fn gateway_headers(
    u: &seed::UserSession,
    channel_code: &str,
) -> Result<Arc<[(HeaderName, HeaderValue)]>> {
    let perms = u
        .user
        .channels
        .iter()
        .find(|(code, _)| code == channel_code)
        .map(|(_, p)| p.join(","))
        .unwrap_or_default();
    let h = |name: &'static str, value: &str| -> Result<(HeaderName, HeaderValue)> {
        Ok((HeaderName::from_static(name), HeaderValue::from_str(value)?))
    };
    Ok(Arc::from(vec![
        h("x-session-id", &u.session_id.to_string())?,
        h("x-session-kind", "authenticated")?,
        h("x-user-id", &u.user.id.to_string())?,
        h("x-user-identifier", &u.user.identifier)?,
        h("x-channel-code", channel_code)?,
        h("x-permissions", &perms)?,
    ]))
}

/// Checks the `updateSessionData` answers of one session: its id, exactly the data it set, and
/// a `dataVersion` above the seeded 0 that no earlier answer carried (a bit set of the versions
/// seen; concurrent updates of one session may answer out of order, but never twice the same).
struct DataVersionCheck {
    session_id: String,
    data: serde_json::Value,
    seen: std::sync::Mutex<Vec<u64>>,
}

/// Highest `dataVersion` the check accepts (its bit set stays under 1 MiB per session).
const MAX_DATA_VERSION: u64 = 1 << 23;

impl DataVersionCheck {
    fn check(&self, body: &[u8]) -> Result<(), String> {
        let text = || load::truncate(&String::from_utf8_lossy(body), 300);
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("not JSON ({e}): {}", text()))?;
        let s = &v["data"]["updateSessionData"];
        if s["id"].as_str() != Some(self.session_id.as_str())
            || !load::same_json(&s["data"], &self.data)
        {
            return Err(format!(
                "expected session {} with data {}, got {}",
                self.session_id,
                self.data,
                text()
            ));
        }
        let version = s["dataVersion"]
            .as_u64()
            .filter(|v| (1..MAX_DATA_VERSION).contains(v))
            .ok_or_else(|| format!("dataVersion out of range: {}", text()))?;
        let (word, bit) = ((version / 64) as usize, version % 64);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() <= word {
            seen.resize(word + 1, 0);
        }
        if seen[word] & (1 << bit) != 0 {
            return Err(format!(
                "session {}: dataVersion {version} answered twice (an update was not counted)",
                self.session_id
            ));
        }
        seen[word] |= 1 << bit;
        Ok(())
    }
}

/// Checks `sessionJwt` answers against the keys the server published at start.
struct JwtCheck {
    keys: std::collections::HashMap<String, jsonwebtoken::DecodingKey>,
    validation: jsonwebtoken::Validation,
    answered: std::sync::atomic::AtomicU64,
}

/// `JWT_ISSUER`'s default (the harness does not set it).
const JWT_ISSUER: &str = "session-server";
/// `SESSION_JWT_TTL`'s default in seconds (the harness does not set it).
const JWT_TTL_SECS: i64 = 300;

impl JwtCheck {
    fn new(set: &jsonwebtoken::jwk::JwkSet) -> Result<JwtCheck> {
        let mut keys = std::collections::HashMap::new();
        for jwk in &set.keys {
            let kid = jwk
                .common
                .key_id
                .clone()
                .ok_or_else(|| anyhow!("a JWKS key has no kid"))?;
            keys.insert(kid, jsonwebtoken::DecodingKey::from_jwk(jwk)?);
        }
        if keys.is_empty() {
            bail!("the server's JWKS holds no key");
        }
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        validation.set_issuer(&[JWT_ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        Ok(JwtCheck {
            keys,
            validation,
            answered: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The answer of a seeded user's session `sid` (user `sub`, no permissions in the default
    /// channel).
    fn check(&self, body: &[u8], sid: &str, sub: &str) -> Result<(), String> {
        let text = || load::truncate(&String::from_utf8_lossy(body), 300);
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("not JSON ({e}): {}", text()))?;
        let jwt = &v["data"]["sessionJwt"];
        let (Some(token), Some(expires_at)) = (jwt["token"].as_str(), jwt["expiresAt"].as_str())
        else {
            return Err(format!("no sessionJwt token and expiresAt: {}", text()));
        };
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT ({e}): {token}"))?;
        if header.alg != jsonwebtoken::Algorithm::EdDSA {
            return Err(format!("alg {:?}, expected EdDSA", header.alg));
        }
        let kid = header.kid.as_deref().ok_or("the JWT header has no kid")?;
        let key = self
            .keys
            .get(kid)
            .ok_or_else(|| format!("kid {kid} is not in the server's JWKS"))?;
        let n = self
            .answered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let claims: serde_json::Value = if n.is_multiple_of(JWT_VERIFY_EVERY) {
            jsonwebtoken::decode(token, key, &self.validation)
                .map_err(|e| format!("the JWT does not verify ({e}): {token}"))?
                .claims
        } else {
            jsonwebtoken::dangerous::insecure_decode_claims(token)
                .map_err(|e| format!("undecodable JWT payload ({e}): {token}"))?
        };
        check_claims(&claims, sid, sub, expires_at)
    }
}

/// The claims of a seeded user's session JWT, and `expiresAt` equal to `exp`.
fn check_claims(
    c: &serde_json::Value,
    sid: &str,
    sub: &str,
    expires_at: &str,
) -> Result<(), String> {
    for (name, want) in [
        ("sid", sid),
        ("sub", sub),
        ("kind", "authenticated"),
        ("iss", JWT_ISSUER),
        ("ch", seed::DEFAULT_CHANNEL),
    ] {
        if c[name].as_str() != Some(want) {
            return Err(format!("claim {name}: expected {want:?} in {c}"));
        }
    }
    if c["perms"] != serde_json::json!([]) {
        return Err(format!("claim perms: expected [] in {c}"));
    }
    if c["jti"].as_str().is_none_or(str::is_empty) {
        return Err(format!("claim jti missing in {c}"));
    }
    let (Some(iat), Some(exp)) = (c["iat"].as_i64(), c["exp"].as_i64()) else {
        return Err(format!("claims iat and exp missing in {c}"));
    };
    let now = seed::now_ms() / 1000;
    if !(1..=JWT_TTL_SECS).contains(&(exp - iat)) || exp < now || iat > now + 5 {
        return Err(format!(
            "iat {iat} / exp {exp} do not fit now ({now}) in {c}"
        ));
    }
    let expires = humantime::parse_rfc3339_weak(expires_at)
        .map_err(|e| format!("expiresAt {expires_at:?}: {e}"))?
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| format!("expiresAt {expires_at:?}: {e}"))?
        .as_secs() as i64;
    if expires != exp {
        return Err(format!("expiresAt {expires_at} is not exp {exp}"));
    }
    Ok(())
}

pub const SESSION_JWT: &str = r#"{"query":"{ sessionJwt { token expiresAt } }"}"#;

/// The prepared requests of one kind on a ready server, each with its check; the first is sent
/// once and must pass before anything is measured.
async fn requests(k: &KindDef, ready: &Ready) -> Result<Vec<ReqSpec>> {
    let seeded = &ready.seeded;
    let mut listing: Option<Listing> = None;
    let reqs: Vec<Req> = match k.send {
        Send::Typename => vec![Req::new(r#"{"query":"{ __typename }"}"#, None)
            .answer(serde_json::json!({ "data": { "__typename": "Query" } }))],
        Send::AnonymousSession => seeded
            .anonymous
            .iter()
            .map(|t| Req::new(seed::ACTIVE_SESSION, Some(t)))
            .collect(),
        Send::GarbageTokens => seed::garbage_tokens(1000)
            .iter()
            .map(|t| Req::new(seed::ACTIVE_SESSION, Some(t)))
            .collect(),
        Send::SessionWithUser => seeded
            .users
            .iter()
            .map(|u| Req::new(seed::SESSION_WITH_USER, Some(&u.token)).answer(u.session_answer()))
            .collect(),
        Send::Me => seeded
            .users
            .iter()
            .map(|u| Req::new(seed::ME, Some(&u.token)).answer(u.me_answer()))
            .collect(),
        Send::AdminList => {
            // A real login through GraphQL; its session is listed too.
            let addr = ready.proc.addr;
            let token = seed::login_superadmin(addr).await?;
            let mut known = seeded.session_users.clone();
            known.insert(
                seed::session_id(addr, &token).await?,
                Some("superadmin".into()),
            );
            listing = Some(Arc::new(known));
            vec![Req::new(seed::ADMIN_LIST, Some(&token))]
        }
        Send::Login => vec![Req::new(seed::login_body(), None)],
        Send::ToggleOrder => {
            let mut out = Vec::new();
            for ((t, sid), order) in seeded
                .anonymous
                .iter()
                .zip(&seeded.anonymous_ids)
                .zip(&ready.orders)
            {
                let set = serde_json::json!({
                    "query": "mutation($id: ID!) { setActiveOrder(orderId: $id) { id } }",
                    "variables": { "id": order },
                });
                let sid = sid.to_string();
                out.push(
                    Req::new(set.to_string(), Some(t))
                        .answer(serde_json::json!({ "data": { "setActiveOrder": { "id": sid } } })),
                );
                out.push(
                    Req::new(
                        r#"{"query":"mutation { unsetActiveOrder { id } }"}"#,
                        Some(t),
                    )
                    .answer(serde_json::json!({ "data": { "unsetActiveOrder": { "id": sid } } })),
                );
            }
            out
        }
        Send::UpdateData => seeded
            .anonymous
            .iter()
            .zip(&seeded.anonymous_ids)
            .map(|(t, sid)| {
                // Each session writes its own value, so an answer with another's is caught.
                let value = format!("{sid}-{}", crate::random_suffix());
                let query = format!(
                    r#"mutation {{ updateSessionData(set: {{ bench: "{value}" }}) {{ id data dataVersion }} }}"#
                );
                let check = Arc::new(DataVersionCheck {
                    session_id: sid.to_string(),
                    data: serde_json::json!({ "bench": value }),
                    seen: std::sync::Mutex::new(Vec::new()),
                });
                let body = serde_json::json!({ "query": query }).to_string();
                Req::new(body, Some(t)).prepared(Expect::Check(CheckFn(Arc::new(move |b| {
                    check.check(b)
                }))))
            })
            .collect(),
        Send::SessionData => ready
            .data
            .iter()
            .map(|d| Req::new(seed::SESSION_DATA, Some(&d.token)).answer(d.answer()))
            .collect(),
        Send::SessionJwt => {
            let check = Arc::new(
                JwtCheck::new(&seed::jwks(ready.proc.addr).await?)
                    .context("reading the server's JWKS")?,
            );
            seeded
                .users
                .iter()
                .map(|u| {
                    let (check, sid, sub) =
                        (check.clone(), u.session_id.to_string(), u.user.id.to_string());
                    Req::new(SESSION_JWT, Some(&u.token)).prepared(Expect::Check(CheckFn(
                        Arc::new(move |b| check.check(b, &sid, &sub)),
                    )))
                })
                .collect()
        }
        Send::Gateway | Send::GatewayChannel => {
            return first_checked(k, ready, gateway_requests(k, seeded)?).await;
        }
        Send::PeerRead => {
            let reqs = ready
                .cookies
                .iter()
                .map(|c| {
                    Ok(ReqSpec {
                        method: Method::GET,
                        path: "/read",
                        headers: vec![(COOKIE, HeaderValue::from_str(c)?)],
                        body: bytes::Bytes::new(),
                        expect: expect(k, None, None, None)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            return first_checked(k, ready, reqs).await;
        }
    };
    let mut out = Vec::with_capacity(reqs.len());
    for r in reqs {
        let e = expect(k, r.answer, r.prepared, listing.as_ref())?;
        out.push(ReqSpec::graphql(r.body, r.bearer.as_deref(), e));
    }
    first_checked(k, ready, out).await
}

/// `GET /auth` with each seeded user's bearer token, in the default channel or (for
/// `Send::GatewayChannel`) with a seeded channel's `channel-token`.
fn gateway_requests(k: &KindDef, seeded: &seed::Seeded) -> Result<Vec<ReqSpec>> {
    let with_channel = matches!(k.send, Send::GatewayChannel);
    if with_channel && seeded.channels.is_empty() {
        bail!("kind {}: the server was seeded without channels", k.name);
    }
    let mut out = Vec::with_capacity(seeded.users.len());
    for (i, u) in seeded.users.iter().enumerate() {
        let mut headers = vec![(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", u.token))?,
        )];
        let code = if with_channel {
            let c = &seeded.channels[i % seeded.channels.len()];
            headers.push((
                HeaderName::from_static("channel-token"),
                HeaderValue::from_str(&c.token)?,
            ));
            c.code.as_str()
        } else {
            seed::DEFAULT_CHANNEL
        };
        let e = Expect::Headers(gateway_headers(u, code)?);
        out.push(ReqSpec {
            method: Method::GET,
            path: "/auth",
            headers,
            body: bytes::Bytes::new(),
            expect: expect(k, None, Some(e), None)?,
        });
    }
    Ok(out)
}

/// Returns `reqs` once the first has been sent and passed its check: fails before measuring
/// when the server was seeded with nothing to send, or its very first answer is wrong.
async fn first_checked(k: &KindDef, ready: &Ready, reqs: Vec<ReqSpec>) -> Result<Vec<ReqSpec>> {
    let Some(r) = reqs.first() else {
        bail!(
            "kind {}: the server was seeded with nothing to send",
            k.name
        );
    };
    let mut conn = load::Conn::connect(ready.proc.addr).await?;
    let (status, headers, body) = conn
        .send(r.method.clone(), r.path, &r.headers, r.body.clone())
        .await?;
    load::check(r, status, &headers, &body).map_err(|e| anyhow!("{}: {e}", k.name))?;
    Ok(reqs)
}

/// Builds a row's workload on its ready server.
async fn workload(row: &RowDef, ready: &Ready) -> Result<Workload> {
    let mut kinds = Vec::with_capacity(row.kinds.len());
    for k in row.kinds {
        kinds.push(Kind {
            name: k.name,
            weight: k.weight,
            reqs: requests(k, ready)
                .await
                .with_context(|| format!("preparing row {}", row.id))?,
        });
    }
    Ok(Workload { kinds })
}

/// A row ready to measure: the index of its server and its workload.
type Plan = Result<(usize, Arc<Workload>), Status>;

/// The run's settings in words, for the start line and the report.
fn settings_note(s: &Settings) -> String {
    format!(
        "{} round(s), {} connections, {:?} measured + {:?} warm-up per row per round, {} sessions per server, {}",
        s.rounds,
        s.connections,
        s.duration,
        s.warmup,
        s.sessions,
        crate::server::threads_note(),
    )
}

/// The default run: every wanted row (`--only`; the floor always), in alternating rounds.
pub async fn run(args: &Args, s: &Settings, cleanup: &mut Cleanup) -> Result<i32> {
    for o in &args.only {
        if !ROWS.iter().any(|r| r.id == o) {
            bail!("--only: no row {o:?} (rows: {})", row_ids());
        }
    }
    let rows: Vec<&RowDef> = ROWS
        .iter()
        .filter(|r| args.only.is_empty() || r.id == "floor" || args.only.iter().any(|o| o == r.id))
        .collect();
    eprintln!(
        "session-server benchmark: {}, server {}",
        settings_note(s),
        s.server_bin.display()
    );
    let load_before = crate::loadavg();
    let mut env = Env {
        args,
        s,
        redis_ok: crate::service("Redis", seed::redis_ping(&args.redis_url)).await,
        pg_ok: crate::service("PostgreSQL", seed::postgres_ping(&args.postgres_url)).await,
        suffix: crate::random_suffix(),
        keep_alive: Vec::new(),
    };
    let uses = |server: Server| rows.iter().any(|r| r.server == server);
    let moved = crate::services::move_to_load_cpu(
        (env.redis_ok.is_ok() && (uses(Server::Redis) || uses(Server::Tiered)))
            .then_some(args.redis_url.as_str()),
        (env.pg_ok.is_ok() && uses(Server::DbPostgres)).then_some(args.postgres_url.as_str()),
    )
    .await;
    if let Some(note) = &moved {
        eprintln!("{note}");
    }

    eprintln!("preparing servers…");
    let mut servers: Vec<(Server, Result<Ready, Status>)> = Vec::new();
    for row in &rows {
        if servers.iter().any(|(id, _)| *id == row.server) {
            continue;
        }
        let with_data = rows.iter().any(|r| {
            r.server == row.server && r.kinds.iter().any(|k| matches!(k.send, Send::SessionData))
        });
        let ready = start(row.server, with_data, &mut env, cleanup).await;
        if row.server == Server::Memory {
            if let Err(Status::Failed(e) | Status::Skipped(e)) = &ready {
                bail!("the memory-cache server (needed for the floor) did not start: {e}");
            }
        }
        servers.push((row.server, ready));
    }
    let mut plans: Vec<Plan> = Vec::with_capacity(rows.len());
    for row in &rows {
        let i = servers
            .iter()
            .position(|(id, _)| *id == row.server)
            .expect("every row's server was started above");
        plans.push(match &servers[i].1 {
            Err(Status::Skipped(n)) => Err(Status::Skipped(n.clone())),
            Err(Status::Failed(n)) => Err(Status::Failed(n.clone())),
            Err(Status::Measured) => Err(Status::Failed("internal: no server".into())),
            Ok(ready) => match workload(row, ready).await {
                Ok(w) => Ok((i, Arc::new(w))),
                Err(e) => Err(Status::Failed(format!("{e:#}"))),
            },
        });
    }

    // Measure: rounds alternate over the rows.
    let mut reports: Vec<RowReport> = rows
        .iter()
        .zip(&plans)
        .map(|(row, plan)| RowReport {
            id: row.id,
            label: row.label.to_string(),
            status: match plan {
                Ok(_) => Status::Measured,
                Err(Status::Skipped(n)) => Status::Skipped(n.clone()),
                Err(Status::Failed(n)) => Status::Failed(n.clone()),
                Err(Status::Measured) => Status::Failed("internal: no plan".into()),
            },
            rounds: Vec::new(),
        })
        .collect();
    // The floor's server and workload, measured again just before every other row (unless
    // `--unpaired`): see `report::ratio`.
    let floor_plan = rows
        .iter()
        .zip(&plans)
        .find(|(row, _)| row.id == "floor")
        .and_then(|(_, plan)| plan.as_ref().ok())
        .and_then(|(idx, w)| Some((servers[*idx].1.as_ref().ok()?, w.clone())));
    let paired = !args.unpaired;
    for round in 1..=s.rounds {
        eprintln!("round {round}/{}", s.rounds);
        for ((row, plan), rep) in rows.iter().zip(&plans).zip(reports.iter_mut()) {
            let Ok((idx, workload)) = plan else {
                continue;
            };
            if !matches!(rep.status, Status::Measured) {
                continue;
            }
            let Ok(ready) = &servers[*idx].1 else {
                continue;
            };
            let proc = &ready.proc;
            // Let the previous row's leftovers (a login's hashing, activity writes) drain.
            quiesce(proc.pid()).await;
            let measured = match (&floor_plan, paired && row.id != "floor") {
                (Some((floor, floor_work)), true) => {
                    quiesce(floor.proc.pid()).await;
                    interleaved(s, slices(row), (floor, floor_work), (ready, workload))
                        .await
                        .map(|(floor, r)| (Some(floor), r))
                }
                _ => crate::measure(s, proc, workload.clone())
                    .await
                    .map(|r| (None, r)),
            };
            let (floor_beside, r) = match measured {
                Ok(measured) => measured,
                Err(e) => {
                    rep.status = Status::Failed(format!("{e:#}"));
                    continue;
                }
            };
            let mut m = Measurement::from_load(&r, proc.peak_rss_kib());
            let floor_beside = floor_beside.map(|f| Measurement::from_load(&f, None));
            let floor_note = match &floor_beside {
                Some(f) => format!("  (floor beside it: {:.0} req/s)", f.rps),
                None => String::new(),
            };
            eprintln!(
                "  {:<16} {:>9.0} req/s  p50 {:>6} µs  p99 {:>6} µs  errors {}{floor_note}",
                rep.id, m.rps, m.p50_us, m.p99_us, m.errors
            );
            if let Some(e) = &m.first_error {
                eprintln!("    first error: {e}");
            }
            // The floor row, when paired, is its own floor: its ratios to itself are 1.
            m.paired_floor = match floor_beside {
                Some(f) => Some(Box::new(f)),
                None if paired && row.id == "floor" => Some(Box::new(m.clone())),
                None => None,
            };
            rep.rounds.push(m);
        }
    }
    for (_, ready) in servers.iter_mut() {
        if let Ok(r) = ready {
            r.proc.stop();
        }
    }
    drop(std::mem::take(&mut env.keep_alive));

    let floor = reports.iter().find(|r| r.id == "floor");
    println!();
    println!(
        "Settings: {}{}; {}.",
        settings_note(s),
        moved.map(|m| format!(" ({m})")).unwrap_or_default(),
        if paired {
            format!("each row is measured in {SLICES} slices (1 with logins) taking turns with as many slices of the floor, and its ratios are to that floor (the table's floor row is the floor's own measurement)")
        } else {
            "ratios are to the floor measured once per round (--unpaired)".to_string()
        }
    );
    println!("{}", crate::machine_line(&load_before));
    println!();
    println!("{}", report::table(&reports, floor));
    println!("{}", report::targets_table(&targets(&reports)));

    let errored: Vec<&RowReport> = reports
        .iter()
        .filter(|r| matches!(r.status, Status::Failed(_)) || r.errors() > 0)
        .collect();
    for r in &errored {
        match &r.status {
            Status::Failed(m) => eprintln!("row {} failed: {m}", r.id),
            _ => eprintln!(
                "row {} had {} failed requests; first: {}",
                r.id,
                r.errors(),
                r.rounds
                    .iter()
                    .find_map(|m| m.first_error.clone())
                    .unwrap_or_default()
            ),
        }
    }
    Ok(if errored.is_empty() { 0 } else { 1 })
}

/// Slices a paired measurement is cut into: the floor and the row take turns, in the order
/// floor, row, row, floor, floor, row, … so that a drift of the machine during the pair weighs
/// on both alike.
const SLICES: u32 = 4;

/// [`SLICES`], or one slice (the floor, then the row) for a row with logins: a login hashes
/// its password for longer than a slice under load, and would never finish inside one.
fn slices(row: &RowDef) -> u32 {
    if row.kinds.iter().any(|k| matches!(k.send, Send::Login)) {
        1
    } else {
        SLICES
    }
}
/// Warm-up of every slice after a server's first (its connections are new; the server is warm).
const SLICE_WARMUP: Duration = Duration::from_millis(200);

/// The row measured for `s.duration` in `slices` slices, taking turns with as long a
/// measurement of the floor: (the floor's result, the row's).
async fn interleaved(
    s: &Settings,
    slices: u32,
    (floor, floor_work): (&Ready, &Arc<Workload>),
    (row, row_work): (&Ready, &Arc<Workload>),
) -> Result<(load::LoadResult, load::LoadResult)> {
    let slice = s.duration / slices.max(1);
    let mut floor_total: Option<load::LoadResult> = None;
    let mut row_total: Option<load::LoadResult> = None;
    for i in 0..slices.max(1) {
        for floor_turn in if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        } {
            let (ready, work, total) = if floor_turn {
                (floor, floor_work, &mut floor_total)
            } else {
                (row, row_work, &mut row_total)
            };
            let warmup = if total.is_none() {
                s.warmup
            } else {
                SLICE_WARMUP.min(s.warmup)
            };
            let pid = ready.proc.pid();
            let r = load::run(
                ready.proc.addr,
                work.clone(),
                s.connections,
                warmup,
                Stop::After(slice),
                Some(pid),
            )
            .await
            .with_context(|| {
                if floor_turn {
                    "the floor beside it"
                } else {
                    "the row"
                }
            })?;
            match total {
                Some(t) => t.absorb(r),
                None => *total = Some(r),
            }
        }
    }
    match (floor_total, row_total) {
        (Some(floor), Some(row)) => Ok((floor, row)),
        _ => Err(anyhow!("no slice was measured")),
    }
}

/// Evaluates [`TARGETS`] on the measured rows (`n/a` when a row is missing).
fn targets(reports: &[RowReport]) -> Vec<Target> {
    let get = |id: &str| reports.iter().find(|r| r.id == id);
    TARGETS
        .iter()
        .map(|t| {
            let value = match (get(t.num), get(t.den)) {
                (Some(a), Some(b)) => report::ratio(a, b, t.figures.0, t.figures.1),
                _ => None,
            };
            Target {
                name: t.name.into(),
                value,
                cmp: t.cmp,
                threshold: t.bound,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::json;

    fn update_check() -> DataVersionCheck {
        DataVersionCheck {
            session_id: "7".into(),
            data: json!({ "bench": "7-abc" }),
            seen: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn update_answer(id: &str, value: &str, version: u64) -> Vec<u8> {
        json!({ "data": { "updateSessionData": {
            "id": id, "data": { "bench": value }, "dataVersion": version,
        }}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn update_answers_pass_once_per_version_in_any_order() {
        let c = update_check();
        for v in [2, 1, 3, 200] {
            assert_eq!(c.check(&update_answer("7", "7-abc", v)), Ok(()));
        }
    }

    #[test]
    fn a_repeated_version_or_another_sessions_answer_fails_the_update_check() {
        let c = update_check();
        assert_eq!(c.check(&update_answer("7", "7-abc", 5)), Ok(()));
        assert!(c.check(&update_answer("7", "7-abc", 5)).is_err());
        assert!(c.check(&update_answer("7", "7-abc", 0)).is_err());
        assert!(c.check(&update_answer("8", "7-abc", 6)).is_err());
        assert!(c.check(&update_answer("7", "8-abc", 7)).is_err());
        assert!(c
            .check(br#"{"data":null,"errors":[{"message":"CONFLICT"}]}"#)
            .is_err());
    }

    /// RFC 8037's Ed25519 example key (appendix A.1), as PKCS#8 DER for signing.
    const D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn sign(claims: &serde_json::Value, kid: &str) -> String {
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend(URL_SAFE_NO_PAD.decode(D).unwrap());
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_ed_der(&der),
        )
        .unwrap()
    }

    fn jwt_check() -> JwtCheck {
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(json!({ "keys": [{
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "k1", "x": X,
        }]}))
        .unwrap();
        JwtCheck::new(&set).unwrap()
    }

    fn claims(sid: &str) -> serde_json::Value {
        let now = seed::now_ms() / 1000;
        json!({ "iss": JWT_ISSUER, "sub": "3", "sid": sid, "kind": "authenticated",
            "ch": "default", "perms": [], "iat": now, "exp": now + 300, "jti": "j" })
    }

    fn jwt_answer(token: &str, exp: i64) -> Vec<u8> {
        let at = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp as u64),
        );
        json!({ "data": { "sessionJwt": { "token": token, "expiresAt": at.to_string() } } })
            .to_string()
            .into_bytes()
    }

    #[test]
    fn a_signed_jwt_of_the_session_passes() {
        let c = claims("7");
        let token = sign(&c, "k1");
        let check = jwt_check();
        let exp = c["exp"].as_i64().unwrap();
        // The first answer is verified, the next decoded only: both pass.
        assert_eq!(check.check(&jwt_answer(&token, exp), "7", "3"), Ok(()));
        assert_eq!(check.check(&jwt_answer(&token, exp), "7", "3"), Ok(()));
    }

    #[test]
    fn wrong_jwts_fail() {
        let c = claims("7");
        let exp = c["exp"].as_i64().unwrap();
        // Another session's token.
        let other = sign(&claims("8"), "k1");
        assert!(jwt_check()
            .check(&jwt_answer(&other, exp), "7", "3")
            .is_err());
        // A key the JWKS does not hold.
        let unknown = sign(&c, "k2");
        assert!(jwt_check()
            .check(&jwt_answer(&unknown, exp), "7", "3")
            .is_err());
        // A payload swapped under the signature fails verification.
        let token = sign(&c, "k1");
        let forged_payload =
            URL_SAFE_NO_PAD.encode(claims("7").to_string().replace("\"3\"", "\"4\""));
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert!(jwt_check()
            .check(&jwt_answer(&forged, exp), "7", "4")
            .is_err());
        // expiresAt that is not exp, and no token at all.
        assert!(jwt_check()
            .check(&jwt_answer(&token, exp + 60), "7", "3")
            .is_err());
        assert!(jwt_check()
            .check(br#"{"data":{"sessionJwt":null}}"#, "7", "3")
            .is_err());
    }

    #[test]
    fn the_gateway_check_wants_every_identity_header_exactly() {
        let u = seed::UserSession {
            token: "t".into(),
            session_id: 12,
            user: Arc::new(seed::SeedUser {
                id: 5,
                identifier: "bench-user-000005".into(),
                channels: vec![("bench-b".into(), vec!["READ_SESSION", "WRITE_ORDER"])],
            }),
        };
        let spec = |code: &str| ReqSpec {
            method: Method::GET,
            path: "/auth",
            headers: Vec::new(),
            body: bytes::Bytes::new(),
            expect: Expect::Headers(gateway_headers(&u, code).unwrap()),
        };
        let mut h = hyper::HeaderMap::new();
        for (k, v) in [
            ("x-session-id", "12"),
            ("x-session-kind", "authenticated"),
            ("x-user-id", "5"),
            ("x-user-identifier", "bench-user-000005"),
            ("x-channel-code", "bench-b"),
            ("x-permissions", "READ_SESSION,WRITE_ORDER"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let ok = hyper::StatusCode::OK;
        assert_eq!(load::check(&spec("bench-b"), ok, &h, b""), Ok(()));
        // The same headers are wrong for the default channel (no permissions there).
        assert!(load::check(&spec("default"), ok, &h, b"").is_err());
        let mut other = h.clone();
        other.insert("x-user-id", HeaderValue::from_static("6"));
        assert!(load::check(&spec("bench-b"), ok, &other, b"").is_err());
        let mut missing = h.clone();
        missing.remove("x-permissions");
        assert!(load::check(&spec("bench-b"), ok, &missing, b"").is_err());
        assert!(load::check(&spec("bench-b"), hyper::StatusCode::UNAUTHORIZED, &h, b"").is_err());
    }
}
