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
mod rows;
mod scale;
mod seed;
mod server;
mod services;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use load::{Expect, ReqSpec, Workload};
use server::{Proc, ServerConfig};
use std::path::{Path, PathBuf};
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
    /// Bare async-graphql server binary (default: `bare` next to this binary).
    #[arg(long)]
    bare_bin: Option<PathBuf>,
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
    /// Only these rows (comma-separated ids: floor, bare-floor, auth-memory, memory,
    /// user-memory, me, data-1k, update-data, jwt, admin-list, redis, user-redis, tiered,
    /// user-tiered, auth-tiered, db-sqlite, db-postgres, db-postgres-user, mixed, garbage, peer).
    /// The floor is always included.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Worker threads of every server process the harness starts (session-server, bare and
    /// peer alike), passed to each as `TOKIO_WORKER_THREADS`. Default (or `0`): each runtime's
    /// own default, one thread per core. One thread per server on 2 cores was tried (run U in
    /// BENCHMARKS.md): no better overall.
    #[arg(long, env = "BENCH_SERVER_THREADS")]
    server_threads: Option<usize>,
    /// Let servers and the load generator share every core, as before run W. By default, when
    /// the harness may run on at least 2 CPUs, every server process it starts runs on the first
    /// of them only (with one runtime thread unless `--server-threads` says otherwise), and the
    /// harness itself, the load generator, on the second only with one runtime thread. The
    /// report shows each row's server CPU per request, so a row that did not keep its server's
    /// core busy is visible.
    #[arg(long, env = "BENCH_NO_PIN")]
    no_pin: bool,
    /// Measure the floor once per round only (the old way). By default each row is measured in
    /// slices taking turns with slices of the floor, and its ratios are to that floor, so a
    /// slow spell of the machine weighs on both alike.
    #[arg(long)]
    unpaired: bool,
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
    pub bare_bin: PathBuf,
    pub scratch: PathBuf,
    /// `TOKIO_WORKER_THREADS` of every server process (`None`: the runtime's default).
    pub server_threads: Option<usize>,
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
        let bare_bin = a.bare_bin.clone().unwrap_or_else(|| exe_dir.join("bare"));
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
            (3, 64, Duration::from_secs(4), Duration::from_secs(1), 1000)
        };
        Ok(Settings {
            rounds: a.rounds.unwrap_or(rounds).max(1),
            connections: a.connections.unwrap_or(conns).max(1),
            duration: a.duration.unwrap_or(dur),
            warmup: a.warmup.unwrap_or(warm),
            sessions: a.sessions.unwrap_or(sessions).max(1),
            server_bin,
            peer_bin,
            bare_bin,
            scratch,
            server_threads: a.server_threads.filter(|&n| n > 0),
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

/// Migrates a fresh database, seeds `sessions` anonymous sessions and `users` users with one
/// authenticated session each (see [`seed::seed_server`]), starts the server and warms its
/// cache with every token, checking each user's answer exactly.
pub async fn prepare_server(
    s: &Settings,
    cfg: &ServerConfig,
    sessions: usize,
    users: usize,
) -> Result<(Proc, seed::Seeded)> {
    let t0 = Instant::now();
    server::migrate(
        &s.server_bin,
        &cfg.database_url,
        &s.scratch.join(format!("{}-migrate.log", cfg.name)),
    )?;
    let seeded = seed::seed_server(&cfg.database_url, sessions, users)
        .await
        .with_context(|| format!("seeding {}", cfg.name))?;
    let proc = server::start_server(&s.server_bin, cfg, &s.scratch).await?;
    seed::warm(proc.addr, &seeded.anonymous, 8)
        .await
        .with_context(|| format!("warming {}", cfg.name))?;
    let cases = seeded
        .users
        .iter()
        .map(|u| (u.token.clone(), u.session_answer()))
        .collect();
    seed::warm_exact(proc.addr, seed::SESSION_WITH_USER, cases, 8)
        .await
        .with_context(|| format!("warming {} (sessions with users)", cfg.name))?;
    eprintln!(
        "  {} ready on {} ({} anonymous sessions, {} users, {:.1} s)",
        cfg.name,
        proc.addr,
        sessions,
        users,
        t0.elapsed().as_secs_f64()
    );
    Ok((proc, seeded))
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

fn main() {
    let args = Args::parse();
    let code = match start(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

/// Builds the harness's runtime (pinned, unless `--no-pin`, before any thread exists, so every
/// thread inherits it) and runs. Where pinning is not possible the run goes on unpinned, and
/// says so.
fn start(args: Args) -> Result<i32> {
    if !args.no_pin {
        if let Err(e) = server::pin() {
            eprintln!("bench: not pinning ({e:#}): servers and load share the CPUs");
        }
    }
    let mut runtime = if server::pinned() {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(1);
        b
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<i32> {
    let s = Settings::from_args(&args)?;
    if let Some(n) = s.server_threads.or(server::pinned().then_some(1)) {
        server::set_worker_threads(n);
    }
    if !s.server_bin.exists() {
        bail!(
            "server binary {} not found: build it with `cargo build {}--bin session-server` or pass --server-bin",
            s.server_bin.display(),
            if args.smoke { "" } else { "--release " }
        );
    }
    services::restore_on_interrupt();
    let _restore = services::RestoreOnDrop;
    let mut cleanup = Cleanup::default();
    let result = if args.scale {
        scale::run(&args, &s, &mut cleanup).await
    } else {
        rows::run(&args, &s, &mut cleanup).await
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

/// One measurement of `workload` on `proc` with the run's connections, warm-up and duration.
pub async fn measure(
    s: &Settings,
    proc: &Proc,
    workload: std::sync::Arc<Workload>,
) -> Result<load::LoadResult> {
    load::run(
        proc.addr,
        workload,
        s.connections,
        s.warmup,
        load::Stop::After(s.duration),
        Some(proc.pid()),
    )
    .await
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
    // The machine's, not this process's (pinning keeps the harness on one of them).
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| c.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    format!(
        "Machine: {cores} cores ({cpu}), {mem_gib} RAM; load average (1/5/15 min) {load_before} before, {} after.",
        loadavg()
    )
}
