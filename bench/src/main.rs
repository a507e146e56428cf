//! Benchmark harness for session-server (issue 4).
//!
//! Starts every server configuration itself (fresh database seeded with the sessions it needs,
//! cache warmed), drives each one over real HTTP with many keep-alive connections (see
//! `load.rs`), and prints one Markdown table: requests per second, p50 and p99 latency, server
//! CPU per request (`/proc/<pid>/stat` deltas over the measured window) and peak RSS (VmHWM),
//! followed by every ratio next to its target with PASS/FAIL. Rows run in alternating rounds
//! and each figure is the median over rounds; each ratio is taken within one round.
//!
//! Modes: default (full run), `--smoke` (every row for ~1 s, 2 connections, one round, against
//! the debug server; exits non-zero only if a row errored), `--scale` (1,000,000 sessions in
//! PostgreSQL, clean-up under load, RSS with 100,000 cached sessions; see `scale.rs`).

mod load;
mod report;
mod scale;
mod seed;
mod server;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use hyper::header::{HeaderValue, COOKIE};
use hyper::Method;
use load::{Expect, Kind, ReqSpec, Stop, Workload};
use report::{ratio, rps, Cmp, Measurement, RowReport, Status, Target};
use server::{Proc, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(name = "bench", about = "Benchmark harness for session-server")]
pub struct Args {
    /// Every row for ~1 s with 2 connections and one round, against the debug server binary;
    /// exits non-zero if any row errored (missed targets do not count).
    #[arg(long)]
    smoke: bool,
    /// The at-scale checks instead of the default rows (slow: millions of rows).
    #[arg(long)]
    scale: bool,
    /// Alternating rounds (figures are medians over them).
    #[arg(long)]
    rounds: Option<usize>,
    /// Keep-alive connections per row.
    #[arg(long)]
    connections: Option<usize>,
    /// Measured time per row per round.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Warm-up per row per round (not recorded).
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    /// Seeded sessions per server (the load spreads over them).
    #[arg(long)]
    sessions: Option<usize>,
    /// Server binary (default: target/release/session-server, target/debug/… with --smoke).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Peer binary (default: `peer` next to this binary).
    #[arg(long)]
    peer_bin: Option<PathBuf>,
    /// Redis for the `redis` and `tiered` rows (a random key prefix `bench-…:` is used and
    /// deleted at the end).
    #[arg(
        long,
        env = "BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// PostgreSQL server; a fresh database is created next to this one and dropped at the end.
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://root@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// Redis for the peer's session store (default: a private `redis-server` the benchmark
    /// starts, because tower-sessions-redis-store writes unprefixed keys).
    #[arg(long, env = "BENCH_PEER_REDIS_URL")]
    peer_redis_url: Option<String>,
    /// Treat a missing PostgreSQL/Redis/redis-server as an error instead of skipping the row.
    #[arg(long)]
    require_all: bool,
    /// Only these rows (comma-separated ids: floor,memory,redis,tiered,db-sqlite,db-postgres,
    /// mixed,garbage,peer). The floor is always included.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// Resolved run settings.
pub struct Settings {
    pub rounds: usize,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub sessions: usize,
    pub server_bin: PathBuf,
    pub peer_bin: PathBuf,
    pub scratch: PathBuf,
}

impl Settings {
    fn from_args(a: &Args) -> Result<Settings> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let exe_dir = exe
            .parent()
            .ok_or_else(|| anyhow!("bench binary has no directory"))?
            .to_path_buf();
        let target_dir = exe_dir.parent().unwrap_or(&exe_dir).to_path_buf();
        let profile = if a.smoke { "debug" } else { "release" };
        let server_bin = a
            .server_bin
            .clone()
            .unwrap_or_else(|| target_dir.join(profile).join("session-server"));
        let peer_bin = a.peer_bin.clone().unwrap_or_else(|| exe_dir.join("peer"));
        let scratch = std::env::temp_dir().join(format!(
            "session-server-bench-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&scratch)?;
        let (rounds, conns, dur, warm, sessions) = if a.smoke {
            (
                1,
                2,
                Duration::from_secs(1),
                Duration::from_millis(300),
                100,
            )
        } else {
            (3, 64, Duration::from_secs(5), Duration::from_secs(1), 1000)
        };
        Ok(Settings {
            rounds: a.rounds.unwrap_or(rounds).max(1),
            connections: a.connections.unwrap_or(conns).max(1),
            duration: a.duration.unwrap_or(dur),
            warmup: a.warmup.unwrap_or(warm),
            sessions: a.sessions.unwrap_or(sessions).max(1),
            server_bin,
            peer_bin,
            scratch,
        })
    }
}

/// Things to undo at the end, whatever happened.
#[derive(Default)]
pub struct Cleanup {
    pub pg_databases: Vec<(String, String)>,
    pub redis_prefixes: Vec<(String, String)>,
}

impl Cleanup {
    pub async fn run(&mut self) {
        for (base, name) in self.pg_databases.drain(..) {
            if let Err(e) = seed::drop_pg_database(&base, &name).await {
                eprintln!("warning: could not drop database {name}: {e:#}");
            }
        }
        for (url, prefix) in self.redis_prefixes.drain(..) {
            match seed::redis_delete_prefix(&url, &prefix).await {
                Ok(n) => eprintln!("deleted {n} Redis keys under {prefix}"),
                Err(e) => eprintln!("warning: could not delete Redis keys under {prefix}: {e:#}"),
            }
        }
    }
}

pub fn random_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Migrates a fresh database, seeds `sessions` sessions, starts the server and warms its cache
/// with every token. Returns the server and the tokens.
pub async fn prepare_server(
    s: &Settings,
    cfg: &ServerConfig,
    sessions: usize,
) -> Result<(Proc, Vec<String>)> {
    let t0 = Instant::now();
    server::migrate(
        &s.server_bin,
        &cfg.database_url,
        &s.scratch.join(format!("{}-migrate.log", cfg.name)),
    )?;
    let tokens = seed::gen_tokens(sessions);
    seed::insert_sessions(&cfg.database_url, &tokens, false).await?;
    let proc = server::start_server(&s.server_bin, cfg, &s.scratch).await?;
    let tokens: Vec<String> = tokens.into_iter().map(|t| t.token).collect();
    seed::warm(proc.addr, &tokens, 8)
        .await
        .with_context(|| format!("warming {}", cfg.name))?;
    eprintln!(
        "  {} ready on {} ({} sessions, {:.1} s)",
        cfg.name,
        proc.addr,
        sessions,
        t0.elapsed().as_secs_f64()
    );
    Ok((proc, tokens))
}

pub fn sqlite_url(scratch: &Path, name: &str) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        scratch.join(format!("{name}.db")).display()
    )
}

fn read_workload(tokens: &[String]) -> Workload {
    Workload::single(
        "read",
        tokens
            .iter()
            .map(|t| {
                ReqSpec::graphql(
                    seed::ACTIVE_SESSION,
                    Some(t),
                    Expect::Contains(r#""activeSession":{"#),
                )
            })
            .collect(),
    )
}

struct RowPlan {
    id: &'static str,
    label: String,
    /// Index into the server list, and the workload.
    ready: Result<(usize, Arc<Workload>), Status>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let code = match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

async fn run(args: Args) -> Result<i32> {
    let s = Settings::from_args(&args)?;
    if !s.server_bin.exists() {
        bail!(
            "server binary {} not found: build it with `cargo build {}--bin session-server` or pass --server-bin",
            s.server_bin.display(),
            if args.smoke { "" } else { "--release " }
        );
    }
    let mut cleanup = Cleanup::default();
    let result = if args.scale {
        scale::run(&args, &s, &mut cleanup).await
    } else {
        run_rows(&args, &s, &mut cleanup).await
    };
    cleanup.run().await;
    match &result {
        Ok(0) => {
            let _ = std::fs::remove_dir_all(&s.scratch);
        }
        _ => eprintln!("logs kept in {}", s.scratch.display()),
    }
    result
}

/// Availability of an optional service: `Ok(())`, or the note to print when skipping.
async fn service(
    what: &str,
    check: impl std::future::Future<Output = Result<()>>,
) -> Result<(), String> {
    check
        .await
        .map_err(|e| format!("{what} unavailable ({e:#})"))
}

async fn run_rows(args: &Args, s: &Settings, cleanup: &mut Cleanup) -> Result<i32> {
    let wanted =
        |id: &str| args.only.is_empty() || id == "floor" || args.only.iter().any(|o| o == id);
    let unavailable = |note: String| {
        if args.require_all {
            Status::Failed(note)
        } else {
            Status::Skipped(note)
        }
    };
    eprintln!(
        "session-server benchmark: {} round(s), {} connections, {:?} per row (+{:?} warm-up), {} sessions, server {}",
        s.rounds,
        s.connections,
        s.duration,
        s.warmup,
        s.sessions,
        s.server_bin.display()
    );
    let load_before = loadavg();
    let redis_ok = service("Redis", seed::redis_ping(&args.redis_url)).await;
    let pg_ok = service("PostgreSQL", seed::postgres_ping(&args.postgres_url)).await;

    let mut servers: Vec<Proc> = Vec::new();
    let mut plans: Vec<RowPlan> = Vec::new();
    let mut keep_alive: Vec<server::PrivateRedis> = Vec::new();
    let suffix = random_suffix();

    eprintln!("preparing servers…");
    // Rows 1, 2 and 6 share the memory-cache server.
    let mem_cfg = ServerConfig {
        name: "memory".into(),
        database_url: sqlite_url(&s.scratch, "memory"),
        cache: "memory",
        redis: None,
        cache_ttl: None,
        cache_capacity: None,
    };
    let mem = prepare_server(s, &mem_cfg, s.sessions)
        .await
        .context("the memory-cache server (needed for the floor) did not start")?;
    servers.push(mem.0);
    let mem_idx = servers.len() - 1;
    plans.push(RowPlan {
        id: "floor",
        label: "GraphQL floor `{ __typename }` (memory server)".into(),
        ready: Ok((
            mem_idx,
            Arc::new(Workload::single(
                "floor",
                vec![ReqSpec::graphql(
                    r#"{"query":"{ __typename }"}"#,
                    None,
                    Expect::Contains(r#""__typename":"Query""#),
                )],
            )),
        )),
    });
    if wanted("memory") {
        plans.push(RowPlan {
            id: "memory",
            label: "activeSession, SESSION_CACHE=memory".into(),
            ready: Ok((mem_idx, Arc::new(read_workload(&mem.1)))),
        });
    }

    for (id, cache) in [("redis", "redis"), ("tiered", "tiered")] {
        if !wanted(id) {
            continue;
        }
        let label = format!("activeSession, SESSION_CACHE={cache}");
        let ready = match &redis_ok {
            Err(note) => Err(unavailable(note.clone())),
            Ok(()) => {
                let prefix = format!("bench-{suffix}-{id}:");
                cleanup
                    .redis_prefixes
                    .push((args.redis_url.clone(), prefix.clone()));
                let cfg = ServerConfig {
                    name: id.into(),
                    database_url: sqlite_url(&s.scratch, id),
                    cache,
                    redis: Some((args.redis_url.clone(), prefix)),
                    cache_ttl: None,
                    cache_capacity: None,
                };
                match prepare_server(s, &cfg, s.sessions).await {
                    Ok((p, tokens)) => {
                        servers.push(p);
                        Ok((servers.len() - 1, Arc::new(read_workload(&tokens))))
                    }
                    Err(e) => Err(Status::Failed(format!("{e:#}"))),
                }
            }
        };
        plans.push(RowPlan { id, label, ready });
    }

    for (id, pg) in [("db-sqlite", false), ("db-postgres", true)] {
        if !wanted(id) {
            continue;
        }
        let label = format!(
            "activeSession, cache off (TTL 1ms), {}",
            if pg { "PostgreSQL" } else { "SQLite" }
        );
        let db_url = if pg {
            match &pg_ok {
                Err(note) => Err(unavailable(note.clone())),
                Ok(()) => {
                    let name = format!("bench_{suffix}_db");
                    match seed::create_pg_database(&args.postgres_url, &name).await {
                        Ok(url) => {
                            cleanup.pg_databases.push((args.postgres_url.clone(), name));
                            Ok(url)
                        }
                        Err(e) => Err(Status::Failed(format!("{e:#}"))),
                    }
                }
            }
        } else {
            Ok(sqlite_url(&s.scratch, id))
        };
        let ready = match db_url {
            Err(st) => Err(st),
            Ok(url) => {
                let cfg = ServerConfig {
                    name: id.into(),
                    database_url: url,
                    cache: "memory",
                    redis: None,
                    cache_ttl: Some("1ms"),
                    cache_capacity: None,
                };
                match prepare_server(s, &cfg, s.sessions).await {
                    Ok((p, tokens)) => {
                        servers.push(p);
                        Ok((servers.len() - 1, Arc::new(read_workload(&tokens))))
                    }
                    Err(e) => Err(Status::Failed(format!("{e:#}"))),
                }
            }
        };
        plans.push(RowPlan { id, label, ready });
    }

    if wanted("mixed") {
        let cfg = ServerConfig {
            name: "mixed".into(),
            database_url: sqlite_url(&s.scratch, "mixed"),
            cache: "memory",
            redis: None,
            cache_ttl: None,
            cache_capacity: None,
        };
        let ready = async {
            let (p, tokens) = prepare_server(s, &cfg, s.sessions).await?;
            let orders = seed::create_orders(p.addr, &tokens, 8)
                .await
                .context("seeding orders with createOrder")?;
            // createOrder changed each session: read them all again so the reads start warm.
            seed::warm(p.addr, &tokens, 8).await?;
            let mut writes = Vec::with_capacity(tokens.len() * 2);
            for (t, order) in tokens.iter().zip(&orders) {
                let set = serde_json::json!({
                    "query": "mutation($id: ID!) { setActiveOrder(orderId: $id) { id } }",
                    "variables": { "id": order },
                });
                writes.push(ReqSpec::graphql(
                    set.to_string(),
                    Some(t),
                    Expect::Contains(r#""setActiveOrder":{"#),
                ));
                writes.push(ReqSpec::graphql(
                    r#"{"query":"mutation { unsetActiveOrder { id } }"}"#,
                    Some(t),
                    Expect::Contains(r#""unsetActiveOrder":{"#),
                ));
            }
            let mut reads = read_workload(&tokens);
            let reads = reads.kinds.remove(0).reqs;
            let workload = Workload {
                kinds: vec![
                    Kind {
                        name: "read",
                        weight: 90,
                        reqs: reads,
                    },
                    Kind {
                        name: "set/unsetActiveOrder",
                        weight: 8,
                        reqs: writes,
                    },
                    Kind {
                        name: "login",
                        weight: 2,
                        reqs: vec![ReqSpec::graphql(
                            seed::login_body(),
                            None,
                            Expect::Contains("AuthenticationSuccess"),
                        )],
                    },
                ],
            };
            anyhow::Ok((p, workload))
        }
        .await;
        let ready = match ready {
            Ok((p, w)) => {
                servers.push(p);
                Ok((servers.len() - 1, Arc::new(w)))
            }
            Err(e) => Err(Status::Failed(format!("{e:#}"))),
        };
        plans.push(RowPlan {
            id: "mixed",
            label: "mix 90% read / 8% set+unsetActiveOrder / 2% login (memory)".into(),
            ready,
        });
    }

    if wanted("garbage") {
        let reqs = seed::garbage_tokens(1000)
            .iter()
            .map(|t| {
                ReqSpec::graphql(
                    seed::ACTIVE_SESSION,
                    Some(t),
                    Expect::Contains(r#""activeSession":null"#),
                )
            })
            .collect();
        plans.push(RowPlan {
            id: "garbage",
            label: "activeSession, garbage bearer tokens (memory server)".into(),
            ready: Ok((mem_idx, Arc::new(Workload::single("garbage", reqs)))),
        });
    }

    if wanted("peer") {
        let label = "peer: axum + tower-sessions + Redis store, cookie read".to_string();
        let redis_url: Result<String, Status> = match &args.peer_redis_url {
            Some(u) => match seed::redis_ping(u).await {
                Ok(()) => Ok(u.clone()),
                Err(e) => Err(unavailable(format!("peer Redis unavailable ({e:#})"))),
            },
            None => match server::start_private_redis(&s.scratch).await {
                Ok(r) => {
                    let url = r.url.clone();
                    keep_alive.push(r);
                    Ok(url)
                }
                Err(e) => Err(unavailable(format!("{e:#}"))),
            },
        };
        let ready = match redis_url {
            Err(st) => Err(st),
            Ok(url) => {
                let r = async {
                    let p = server::start_peer(&s.peer_bin, &url, &s.scratch).await?;
                    let cookies = seed::seed_peer(p.addr, s.sessions).await?;
                    let reqs = cookies
                        .iter()
                        .map(|c| {
                            Ok(ReqSpec {
                                method: Method::GET,
                                path: "/read",
                                headers: vec![(COOKIE, HeaderValue::from_str(c)?)],
                                body: bytes::Bytes::new(),
                                expect: Expect::Ok,
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    eprintln!("  peer ready on {} ({} sessions)", p.addr, cookies.len());
                    anyhow::Ok((p, Workload::single("peer", reqs)))
                }
                .await;
                match r {
                    Ok((p, w)) => {
                        servers.push(p);
                        Ok((servers.len() - 1, Arc::new(w)))
                    }
                    Err(e) => Err(Status::Failed(format!("{e:#}"))),
                }
            }
        };
        plans.push(RowPlan {
            id: "peer",
            label,
            ready,
        });
    }

    // Measure: rounds alternate over the rows.
    let mut reports: Vec<RowReport> = plans
        .iter()
        .map(|p| RowReport {
            id: p.id,
            label: p.label.clone(),
            status: match &p.ready {
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
            let Ok((idx, workload)) = &plan.ready else {
                continue;
            };
            if !matches!(rep.status, Status::Measured) {
                continue;
            }
            let proc = &servers[*idx];
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
                        "  {:<12} {:>9.0} req/s  p50 {:>6} µs  p99 {:>6} µs  errors {}",
                        plan.id, m.rps, m.p50_us, m.p99_us, m.errors
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
    for p in servers.iter_mut() {
        p.stop();
    }
    drop(keep_alive);

    let by_id = |id: &str| reports.iter().find(|r| r.id == id);
    let floor = by_id("floor");
    println!();
    println!(
        "Settings: {} round(s), {} connections, {:?} measured + {:?} warm-up per row per round, {} sessions per server.",
        s.rounds, s.connections, s.duration, s.warmup, s.sessions
    );
    println!("{}", machine_line(&load_before));
    println!();
    println!("{}", report::table(&reports, floor));
    let targets = build_targets(&reports);
    println!("{}", report::targets_table(&targets));

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

/// Waits (at most 5 s) until a process uses under 5 % of a core over 100 ms.
async fn quiesce(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    tokio::time::sleep(Duration::from_millis(100)).await;
    while Instant::now() < deadline {
        let a = load::process_cpu(pid);
        tokio::time::sleep(Duration::from_millis(100)).await;
        match (a, load::process_cpu(pid)) {
            (Some(a), Some(b)) if b.saturating_sub(a) > Duration::from_millis(5) => continue,
            _ => return,
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// One line describing the machine and the load around the run.
fn machine_line(load_before: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "Machine: {cores} cores ({cpu}), {mem_gib} RAM; load average (1/5/15 min) {load_before} before, {} after.",
        loadavg()
    )
}

fn build_targets(reports: &[RowReport]) -> Vec<Target> {
    let get = |id: &str| reports.iter().find(|r| r.id == id);
    let r_rps = |a: &str, b: &str| match (get(a), get(b)) {
        (Some(x), Some(y)) => ratio(x, y, rps, rps),
        _ => None,
    };
    vec![
        Target {
            name: "memory: req/s ÷ floor".into(),
            value: r_rps("memory", "floor"),
            cmp: Cmp::AtLeast,
            threshold: 0.95,
        },
        Target {
            name: "memory: p99 ÷ floor p99".into(),
            value: match (get("memory"), get("floor")) {
                (Some(x), Some(y)) => ratio(x, y, report::p99, report::p99),
                _ => None,
            },
            cmp: Cmp::AtMost,
            threshold: 1.10,
        },
        Target {
            name: "tiered: req/s ÷ floor".into(),
            value: r_rps("tiered", "floor"),
            cmp: Cmp::AtLeast,
            threshold: 0.95,
        },
        Target {
            name: "redis: req/s ÷ floor".into(),
            value: r_rps("redis", "floor"),
            cmp: Cmp::AtLeast,
            threshold: 0.80,
        },
        Target {
            name: "database only, PostgreSQL: req/s ÷ floor".into(),
            value: r_rps("db-postgres", "floor"),
            cmp: Cmp::AtLeast,
            threshold: 0.30,
        },
        Target {
            name: "mixed: p99 of cached reads ÷ memory row p99".into(),
            value: match (get("mixed"), get("memory")) {
                (Some(x), Some(y)) => {
                    ratio(x, y, |m| m.kind("read").map(|k| k.p99_us), report::p99)
                }
                _ => None,
            },
            cmp: Cmp::AtMost,
            threshold: 2.0,
        },
        Target {
            name: "garbage tokens: req/s ÷ floor".into(),
            value: r_rps("garbage", "floor"),
            cmp: Cmp::AtLeast,
            threshold: 1.0,
        },
        Target {
            name: "garbage tokens: req/s ÷ memory (cheaper than a cached lookup)".into(),
            value: r_rps("garbage", "memory"),
            cmp: Cmp::AtLeast,
            threshold: 1.0,
        },
        Target {
            name: "memory: req/s ÷ peer".into(),
            value: r_rps("memory", "peer"),
            cmp: Cmp::AtLeast,
            threshold: 1.0,
        },
        Target {
            name: "tiered: req/s ÷ peer".into(),
            value: r_rps("tiered", "peer"),
            cmp: Cmp::AtLeast,
            threshold: 1.0,
        },
    ]
}
