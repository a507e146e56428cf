//! Process management: starts the session server (after `migrate`), the peer, the bare
//! async-graphql server and a private `redis-server`, waits until they answer, and stops them
//! (SIGTERM, then SIGKILL) when dropped.
//!
//! Every child gets a clean environment (only `PATH` plus what the benchmark sets), its own
//! loopback port and a log file in the run's scratch directory.

use crate::load::{peak_rss_kib, Conn};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process listening on `addr`.
pub struct Proc {
    pub name: String,
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn peak_rss_kib(&self) -> Option<u64> {
        peak_rss_kib(self.pid())
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free loopback port (bound and released; good enough on a machine we do not race with).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(l.local_addr()?.port())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `TOKIO_WORKER_THREADS` of every process started here, when the run sets it (unset: each
/// runtime's default, one thread per core).
static WORKER_THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Sets the worker threads of every server process started from now on.
pub fn set_worker_threads(n: usize) {
    let _ = WORKER_THREADS.set(n);
}

/// How many worker threads the servers run, in words, for the report.
pub fn threads_note() -> String {
    let threads = match WORKER_THREADS.get() {
        Some(n) => format!("{n} worker thread(s) per server (TOKIO_WORKER_THREADS)"),
        None => "one worker thread per core per server".to_string(),
    };
    match pin_note() {
        Some(pin) => format!("{threads}, {pin}"),
        None => threads,
    }
}

/// When pinned (see [`pin`]): the CPU of the server processes, and the harness's.
static PINNED: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();

/// The CPU mask of task `tid` (0: the calling thread).
pub(crate) fn get_mask(tid: libc::pid_t) -> Option<libc::cpu_set_t> {
    // SAFETY: `set` is a plain bit set on the stack that sched_getaffinity fills.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

/// Sets the CPU mask of task `tid` (0: the calling thread, and what it starts later). Allocates
/// nothing, so it may run between fork and exec.
pub(crate) fn set_mask(tid: libc::pid_t, set: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: sched_setaffinity only reads `set`, a fully initialised bit set.
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The mask of `cpu` alone.
pub(crate) fn one_cpu(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: CPU_ZERO initialises the bit set, CPU_SET writes an index below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut set);
        set
    }
}

/// The CPUs of `set`, in order.
pub(crate) fn cpus_of(set: &libc::cpu_set_t) -> Vec<usize> {
    // SAFETY: CPU_ISSET only reads the initialised set, at indices below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, set) })
        .collect()
}

/// The CPUs this process may run on, in order (its affinity mask; in a container these need
/// not be 0 and 1).
fn allowed_cpus() -> Vec<usize> {
    get_mask(0).map(|set| cpus_of(&set)).unwrap_or_default()
}

/// Keeps the calling thread (and every thread or process it starts later) on `cpu` alone.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    set_mask(0, &one_cpu(cpu))
}

/// Puts the calling thread (the harness, before it starts any other thread) on the second CPU
/// it may use, and every server process started from now on on the first. `Err` (nothing
/// changed) when fewer than two CPUs are allowed or the system refuses.
pub fn pin() -> Result<()> {
    let cpus = allowed_cpus();
    let (&server, &load) = match cpus.as_slice() {
        [a, b, ..] => (a, b),
        _ => bail!("fewer than 2 CPUs allowed ({cpus:?})"),
    };
    pin_to(load).with_context(|| format!("keeping the harness on CPU {load}"))?;
    let _ = PINNED.set((server, load));
    Ok(())
}

/// Whether [`pin`] succeeded.
pub fn pinned() -> bool {
    PINNED.get().is_some()
}

/// When pinned: the load generator's CPU, where the services the rows use run too (see
/// [`crate::services`]).
pub fn load_cpu() -> Option<usize> {
    PINNED.get().map(|&(_, load)| load)
}

/// Where the servers run, in words, for the report.
pub fn pin_note() -> Option<String> {
    let (server, load) = PINNED.get()?;
    Some(format!(
        "servers pinned to CPU {server}, load generator to CPU {load}"
    ))
}

fn base_command(bin: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(bin);
    if let Some(&(cpu, _)) = PINNED.get() {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: between fork and exec the child only makes the sched_setaffinity system
        // call (through `pin_to`, which allocates nothing).
        unsafe {
            cmd.pre_exec(move || pin_to(cpu));
        }
    }
    cmd.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    if let Some(n) = WORKER_THREADS.get() {
        cmd.env("TOKIO_WORKER_THREADS", n.to_string());
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `session-server migrate` against `database_url` (creates the schema before seeding).
pub fn migrate(bin: &Path, database_url: &str, log: &Path) -> Result<()> {
    let out = std::fs::File::create(log)?;
    let status = base_command(bin, &[("DATABASE_URL".into(), database_url.into())])
        .env("RUST_LOG", "warn")
        .arg("migrate")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .with_context(|| format!("running {} migrate", bin.display()))?;
    if !status.success() {
        bail!(
            "`{} migrate` failed ({status}):\n{}",
            bin.display(),
            tail(log, 20)
        );
    }
    Ok(())
}

/// How to start one process and know it is ready.
pub struct Launch<'a> {
    pub name: &'a str,
    pub bin: &'a Path,
    pub args: &'a [&'a str],
    pub env: &'a [(String, String)],
    pub addr: SocketAddr,
    pub health_path: &'a str,
    pub log: PathBuf,
    pub timeout: Duration,
}

/// Starts a process that listens on `addr` and waits until `health_path` answers 200.
pub async fn spawn(l: Launch<'_>) -> Result<Proc> {
    let Launch {
        name,
        bin,
        args,
        env,
        addr,
        health_path,
        log,
        timeout,
    } = l;
    if !bin.exists() {
        bail!("{} does not exist (build it first)", bin.display());
    }
    let out = std::fs::File::create(&log)?;
    let child = base_command(bin, env)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut proc = Proc {
        name: name.to_string(),
        addr,
        log,
        child,
    };
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = proc.exited() {
            bail!(
                "{name} exited during start-up ({status}); last log lines:\n{}",
                tail(&proc.log, 20)
            );
        }
        if health(addr, health_path).await {
            return Ok(proc);
        }
        if Instant::now() > deadline {
            bail!(
                "{name} did not answer {health_path} within {timeout:?}; last log lines:\n{}",
                tail(&proc.log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn health(addr: SocketAddr, path: &str) -> bool {
    let Ok(Ok(mut conn)) = tokio::time::timeout(Duration::from_secs(1), Conn::connect(addr)).await
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            conn.send(Method::GET, path, &[], Bytes::new())
        )
        .await,
        Ok(Ok((StatusCode::OK, _, _)))
    )
}

/// Configuration of one session-server instance.
pub struct ServerConfig {
    pub name: String,
    pub database_url: String,
    /// `memory`, `redis` or `tiered`.
    pub cache: &'static str,
    pub redis: Option<(String, String)>,
    pub cache_ttl: Option<&'static str>,
    pub cache_capacity: Option<usize>,
    /// More environment for this server only.
    pub extra_env: Vec<(&'static str, &'static str)>,
}

pub const SUPERADMIN_PASSWORD: &str = "bench-superadmin-password";

/// Starts `session-server serve` with `cfg` (the database must already be migrated).
pub async fn start_server(bin: &Path, cfg: &ServerConfig, scratch: &Path) -> Result<Proc> {
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut env: Vec<(String, String)> = vec![
        ("BIND".into(), addr.to_string()),
        ("DATABASE_URL".into(), cfg.database_url.clone()),
        ("SESSION_CACHE".into(), cfg.cache.into()),
        ("SUPERADMIN_PASSWORD".into(), SUPERADMIN_PASSWORD.into()),
        ("COOKIE_SECURE".into(), "false".into()),
        ("RUST_LOG".into(), "warn".into()),
        // No background clean-up during a measurement.
        ("CLEANUP_INTERVAL".into(), "24h".into()),
    ];
    if let Some((url, prefix)) = &cfg.redis {
        env.push(("REDIS_URL".into(), url.clone()));
        env.push(("REDIS_KEY_PREFIX".into(), prefix.clone()));
    }
    if let Some(ttl) = cfg.cache_ttl {
        env.push(("SESSION_CACHE_TTL".into(), ttl.into()));
    }
    if let Some(cap) = cfg.cache_capacity {
        env.push(("SESSION_CACHE_CAPACITY".into(), cap.to_string()));
    }
    for (k, v) in &cfg.extra_env {
        env.push((k.to_string(), v.to_string()));
    }
    let log = scratch.join(format!("{}.log", cfg.name));
    spawn(Launch {
        name: &cfg.name,
        bin,
        args: &["serve"],
        env: &env,
        addr,
        health_path: "/health",
        log,
        timeout: Duration::from_secs(120),
    })
    .await
}

/// Starts the tower-sessions peer against `redis_url`.
pub async fn start_peer(bin: &Path, redis_url: &str, scratch: &Path) -> Result<Proc> {
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let env = vec![
        ("PEER_BIND".into(), addr.to_string()),
        ("PEER_REDIS_URL".into(), redis_url.to_string()),
    ];
    spawn(Launch {
        name: "peer",
        bin,
        args: &[],
        env: &env,
        addr,
        health_path: "/health",
        log: scratch.join("peer.log"),
        timeout: Duration::from_secs(30),
    })
    .await
}

/// Starts the bare async-graphql + axum server (`bench/src/bin/bare.rs`).
pub async fn start_bare(bin: &Path, scratch: &Path) -> Result<Proc> {
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let env = vec![("BARE_BIND".into(), addr.to_string())];
    spawn(Launch {
        name: "bare",
        bin,
        args: &[],
        env: &env,
        addr,
        health_path: "/health",
        log: scratch.join("bare.log"),
        timeout: Duration::from_secs(30),
    })
    .await
}

/// A private `redis-server` (no persistence) for the peer, whose store cannot prefix its keys
/// and so must not write into a shared Redis.
pub struct PrivateRedis {
    pub url: String,
    child: Child,
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn start_private_redis(scratch: &Path) -> Result<PrivateRedis> {
    let port = free_port()?;
    let log = std::fs::File::create(scratch.join("peer-redis.log"))?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(scratch)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting redis-server (is it installed? set BENCH_PEER_REDIS_URL otherwise)")?;
    let r = PrivateRedis {
        url: format!("redis://127.0.0.1:{port}"),
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if crate::seed::redis_ping(&r.url).await.is_ok() {
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!("the private redis-server on port {port} did not answer within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
