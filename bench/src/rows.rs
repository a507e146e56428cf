//! The default run as data: [`ROWS`] (what each row sends, to which server, and how each
//! answer is checked) and [`TARGETS`] (which ratio of which two rows must reach which bound),
//! and [`run`], the one runner that starts the servers the wanted rows need, measures the rows
//! in alternating rounds and prints the tables.
//!
//! To add a row: one [`RowDef`] in [`ROWS`] (and, if it compares, one [`TargetDef`]); a new
//! kind of request is one [`Send`] variant and its arm in [`requests`]; a new server
//! configuration is one [`Server`] variant and its arm in [`start`].

use crate::load::{self, CheckFn, Exact, Expect, Kind, ReqSpec, Stop, Workload};
use crate::report::{self, Cmp, Measurement, RowReport, Status, Target};
use crate::server::{self, Proc, ServerConfig};
use crate::{prepare_server, quiesce, seed, sqlite_url, Args, Cleanup, Settings};
use anyhow::{anyhow, bail, Context, Result};
use hyper::header::{HeaderValue, COOKIE};
use hyper::Method;
use std::sync::Arc;

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

/// Which figure of two rows a target divides.
#[derive(Clone, Copy, Debug)]
pub enum Metric {
    /// req/s ÷ req/s.
    Rps,
    /// p99 ÷ p99.
    P99,
    /// p99 of one request kind of the numerator row ÷ the denominator row's p99.
    KindP99(&'static str),
}

/// One target: `metric(numerator) / metric(denominator)`, median of per-round ratios.
pub struct TargetDef {
    pub name: &'static str,
    pub num: &'static str,
    pub den: &'static str,
    pub metric: Metric,
    pub cmp: Cmp,
    pub bound: f64,
}

const fn at_least(name: &'static str, num: &'static str, den: &'static str, b: f64) -> TargetDef {
    TargetDef {
        name,
        num,
        den,
        metric: Metric::Rps,
        cmp: Cmp::AtLeast,
        bound: b,
    }
}

/// Every target (issues 4 and 8). Missed targets never change the exit status.
pub const TARGETS: &[TargetDef] = &[
    at_least("memory: req/s ÷ floor", "memory", "floor", 0.95),
    TargetDef {
        name: "memory: p99 ÷ floor p99",
        num: "memory",
        den: "floor",
        metric: Metric::P99,
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
        metric: Metric::KindP99("read"),
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
}

impl Ready {
    fn bare(proc: Proc) -> Ready {
        Ready {
            proc,
            seeded: seed::Seeded::default(),
            orders: Vec::new(),
            cookies: Vec::new(),
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

/// Starts (and seeds) one server.
async fn start(id: Server, env: &mut Env<'_>, cleanup: &mut Cleanup) -> Result<Ready, Status> {
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
    };
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

/// One request before its check: body, bearer token, and the answer when it is known.
struct Req {
    body: String,
    bearer: Option<String>,
    answer: Option<serde_json::Value>,
}

impl Req {
    fn new(body: impl Into<String>, bearer: Option<&str>) -> Req {
        Req {
            body: body.into(),
            bearer: bearer.map(str::to_string),
            answer: None,
        }
    }

    fn answer(mut self, v: serde_json::Value) -> Req {
        self.answer = Some(v);
        self
    }
}

type Listing = Arc<std::collections::HashMap<i64, Option<String>>>;

/// The check of one request.
fn expect(
    k: &KindDef,
    answer: Option<serde_json::Value>,
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
    })
}

/// The prepared requests of one kind on a ready server, each with its check.
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
        Send::PeerRead => {
            return ready
                .cookies
                .iter()
                .map(|c| {
                    Ok(ReqSpec {
                        method: Method::GET,
                        path: "/read",
                        headers: vec![(COOKIE, HeaderValue::from_str(c)?)],
                        body: bytes::Bytes::new(),
                        expect: expect(k, None, None)?,
                    })
                })
                .collect();
        }
    };
    if reqs.is_empty() {
        bail!(
            "kind {}: the server was seeded with nothing to send",
            k.name
        );
    }
    let mut out = Vec::with_capacity(reqs.len());
    for r in reqs {
        let e = expect(k, r.answer, listing.as_ref())?;
        out.push(ReqSpec::graphql(r.body, r.bearer.as_deref(), e));
    }
    if listing.is_some() {
        // Fail before measuring if the very first listing is wrong.
        let mut conn = load::Conn::connect(ready.proc.addr).await?;
        let r = &out[0];
        let (status, _, body) = conn
            .send(r.method.clone(), r.path, &r.headers, r.body.clone())
            .await?;
        load::check(r, status, &body).map_err(|e| anyhow!("{}: {e}", k.name))?;
    }
    Ok(out)
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
        "session-server benchmark: {} round(s), {} connections, {:?} per row (+{:?} warm-up), {} sessions, server {}",
        s.rounds,
        s.connections,
        s.duration,
        s.warmup,
        s.sessions,
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

    eprintln!("preparing servers…");
    let mut servers: Vec<(Server, Result<Ready, Status>)> = Vec::new();
    for row in &rows {
        if servers.iter().any(|(id, _)| *id == row.server) {
            continue;
        }
        let ready = start(row.server, &mut env, cleanup).await;
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
    for round in 1..=s.rounds {
        eprintln!("round {round}/{}", s.rounds);
        for (plan, rep) in plans.iter().zip(reports.iter_mut()) {
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
            let r = load::run(
                proc.addr,
                workload.clone(),
                s.connections,
                s.warmup,
                Stop::After(s.duration),
                Some(proc.pid()),
            )
            .await;
            match r {
                Ok(r) => {
                    let m = Measurement::from_load(&r, proc.peak_rss_kib());
                    eprintln!(
                        "  {:<16} {:>9.0} req/s  p50 {:>6} µs  p99 {:>6} µs  errors {}",
                        rep.id, m.rps, m.p50_us, m.p99_us, m.errors
                    );
                    if let Some(e) = &m.first_error {
                        eprintln!("    first error: {e}");
                    }
                    rep.rounds.push(m);
                }
                Err(e) => rep.status = Status::Failed(format!("{e:#}")),
            }
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
        "Settings: {} round(s), {} connections, {:?} measured + {:?} warm-up per row per round, {} sessions per server.",
        s.rounds, s.connections, s.duration, s.warmup, s.sessions
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

/// Evaluates [`TARGETS`] on the measured rows (`n/a` when a row is missing).
fn targets(reports: &[RowReport]) -> Vec<Target> {
    let get = |id: &str| reports.iter().find(|r| r.id == id);
    TARGETS
        .iter()
        .map(|t| {
            let value = match (get(t.num), get(t.den)) {
                (Some(a), Some(b)) => match t.metric {
                    Metric::Rps => report::ratio(a, b, report::rps, report::rps),
                    Metric::P99 => report::ratio(a, b, report::p99, report::p99),
                    Metric::KindP99(kind) => {
                        report::ratio(a, b, |m| m.kind(kind).map(|k| k.p99_us), report::p99)
                    }
                },
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
