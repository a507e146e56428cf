//! Process and network helpers for the scale-out tests: the built `session-server` binary run
//! as a child process on a free port (configured by environment variables), a fresh PostgreSQL
//! database shared by several of them, private `redis-server` processes (single or cluster
//! nodes) that can be killed and restarted, and a TCP proxy that can cut a server off from its
//! database. Every process started here is killed when its guard is dropped, panics included.

#![allow(dead_code)]

use crate::helpers::{services_required, with_database, Api, ADMIN, ADMIN_PASSWORD};
use sea_orm::{ConnectionTrait, Database};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Skips (with a notice) or, under `REQUIRE_SERVICES=1`, fails.
pub fn skip(why: &str) {
    assert!(!services_required(), "REQUIRE_SERVICES=1 but {why}");
    eprintln!("skipped: {why}");
}

/// Whether an executable is on the `PATH`.
pub fn have(binary: &str) -> bool {
    Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `true` when `redis-server` is available; otherwise skips (or fails under REQUIRE_SERVICES).
pub fn redis_available() -> bool {
    if have("redis-server") {
        true
    } else {
        skip("redis-server is not installed");
        false
    }
}

fn random_suffix() -> String {
    session_server::token::random_string(9)
        .to_lowercase()
        .replace(['-', '_'], "x")
}

/// A fresh PostgreSQL database made from `TEST_POSTGRES_URL`, dropped with the guard.
pub struct PgDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgDatabase {
    /// `None` (after a notice) when `TEST_POSTGRES_URL` is not set.
    pub async fn create() -> Option<PgDatabase> {
        let Some(admin_url) = std::env::var("TEST_POSTGRES_URL")
            .ok()
            .filter(|v| !v.is_empty())
        else {
            skip("TEST_POSTGRES_URL is not set");
            return None;
        };
        let name = format!("ss_scale_{}", random_suffix());
        let admin = Database::connect(&admin_url)
            .await
            .expect("connect to the test database server");
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        Some(PgDatabase {
            url: with_database(&admin_url, &name),
            admin_url,
            name,
        })
    }

    /// `host:port` of the PostgreSQL server.
    pub fn server_addr(&self) -> String {
        let rest = self
            .url
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or(&self.url);
        let rest = rest.split(['/', '?']).next().unwrap_or(rest);
        let hostport = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
        if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:5432")
        }
    }

    /// The database URL with its `host:port` replaced (to go through a proxy).
    pub fn url_via(&self, addr: &str) -> String {
        self.url.replacen(&self.server_addr(), addr, 1)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        drop_database(self.admin_url.clone(), sql);
    }
}

/// A fresh PostgreSQL database and a private Redis, or `None` (the skip already printed) when
/// either is missing.
pub async fn pg_and_redis() -> Option<(PgDatabase, RedisProc)> {
    let db = PgDatabase::create().await?;
    let redis = RedisProc::start(false).await?;
    Some((db, redis))
}

/// Runs `sql` (a `DROP DATABASE`) on the server of `admin_url`, best effort. Test databases are
/// dropped from `Drop`, which runs inside the test's runtime: this uses a thread with its own.
pub fn drop_database(admin_url: String, sql: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let db = Database::connect(&admin_url).await.ok()?;
            db.execute_unprepared(&sql).await.ok()
        })
    })
    .join();
}

/// A private `redis-server` on a loopback port; killed on drop. With `persistent`, every write
/// goes to an append-only file, so a restart comes back with the data it had when killed (as a
/// production Redis with AOF would).
pub struct RedisProc {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    persistent: bool,
}

impl RedisProc {
    /// `None` (after a notice) when `redis-server` is missing.
    pub async fn start(persistent: bool) -> Option<RedisProc> {
        if !redis_available() {
            return None;
        }
        let mut r = RedisProc {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            persistent,
        };
        r.restart().await;
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and waits until it answers PING.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let port = self.port.to_string();
        let dir = self.dir.path().display().to_string();
        let mut args = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir,
            "--save",
            "",
        ];
        if self.persistent {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            args.extend(["--appendonly", "no"]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let url = self.url();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = async {
                let client = redis::Client::open(url.as_str()).ok()?;
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .ok()
            };
            if tokio::time::timeout(Duration::from_millis(500), ok)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills it (SIGKILL): connections drop at once, nothing is flushed beyond what is on disk.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A connection for inspecting keys.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url().as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis-server")
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `session-server` child process on its own port, with GraphQL helpers like [`TestApp`]'s.
pub struct ServerProc {
    /// The GraphQL client of this server (methods reachable through `Deref`).
    pub api: Api,
    pub port: u16,
    child: Mutex<Option<Child>>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Settings every spawned server gets (before the caller's).
fn base_env(port: u16) -> Vec<(String, String)> {
    [
        ("BIND", format!("127.0.0.1:{port}")),
        ("COOKIE_SECURE", "false".into()),
        ("RUST_LOG", "warn".into()),
        ("DATABASE_MAX_CONNECTIONS", "4".into()),
        ("SUPERADMIN_IDENTIFIER", ADMIN.into()),
        ("SUPERADMIN_PASSWORD", ADMIN_PASSWORD.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

impl ServerProc {
    /// Starts the binary with `env` and waits until `/health` answers 200.
    pub async fn spawn(env: &[(&str, &str)]) -> ServerProc {
        let p = Self::spawn_unchecked(env);
        p.wait_healthy(Duration::from_secs(30)).await;
        p
    }

    /// Starts the binary without waiting for it.
    pub fn spawn_unchecked(env: &[(&str, &str)]) -> ServerProc {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_session-server"));
        cmd.env_clear();
        if let Ok(path) = std::env::var("PATH") {
            cmd.env("PATH", path);
        }
        for (k, v) in base_env(port) {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start session-server");
        ServerProc {
            api: Api::new(port, Duration::from_secs(20)),
            port,
            child: Mutex::new(Some(child)),
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().as_ref().expect("running").id()
    }

    /// What the server wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/health` answers 200; panics with the server's log otherwise.
    pub async fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(c) = self.try_wait() {
                panic!(
                    "session-server exited ({c}) before it was healthy:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = self
                .client
                .get(self.url("/health"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "session-server on {} not healthy within {limit:?}:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The exit status, once the process has exited.
    pub fn try_wait(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.child.lock().unwrap();
        let status = guard.as_mut()?.try_wait().expect("try_wait")?;
        *guard = None;
        Some(status)
    }

    /// Sends SIGTERM (`kill -TERM <pid>`).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit; `None` if it is still running after `limit`.
    pub async fn wait_exit(&self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl std::ops::Deref for ServerProc {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let child = self.child.lock().map(|mut c| c.take());
        if let Ok(Some(mut c)) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of one Prometheus sample (`name{labels}`), 0 when absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(sample)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

/// A TCP proxy on a loopback port that can drop every connection and refuse new ones (an
/// outage of whatever is behind it), then accept again.
pub struct TcpProxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: String) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let acceptor = {
            let (open, conns) = (open.clone(), conns.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if !open.load(Ordering::SeqCst) {
                        drop(inbound); // refused: closed at once
                        continue;
                    }
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                    });
                    let mut list = conns.lock().unwrap();
                    list.retain(|h| !h.is_finished());
                    list.push(task.abort_handle());
                }
            })
        };
        TcpProxy {
            addr,
            open,
            conns,
            acceptor,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}
