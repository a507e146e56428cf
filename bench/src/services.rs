//! The Redis and PostgreSQL the rows use, when they run on this machine, are kept on the load
//! generator's CPU for the run, and put back at the end.
//!
//! When pinned (see [`crate::server::pin`]), every server runs on one CPU and the load
//! generator on the other. A service left free to run anywhere takes part of the server's CPU in
//! the rows that use it and none in the floor's, so the Redis and cache-off PostgreSQL rows
//! measured the server and its backing service sharing one core against a floor with the core to
//! itself. The peer's private `redis-server`, started by the pinned harness, already ran on the
//! load generator's CPU; this gives our rows' services the same place.
//!
//! Only processes of this machine are moved: a Redis or PostgreSQL reached on a loopback address
//! whose process id (Redis `INFO server`, PostgreSQL's backend's parent) names a process here
//! with the expected name. For PostgreSQL the postmaster and its children are moved; backends
//! it starts later inherit its mask. Every moved task gets its old mask back when the run ends,
//! also on Ctrl-C.

use crate::server::{cpus_of, get_mask, one_cpu, set_mask};
use anyhow::{anyhow, bail, Context, Result};
use sea_orm::{ConnectionTrait, Statement};
use std::sync::Mutex;

/// A task (thread or process id) and its mask before the run.
type Saved = (libc::pid_t, libc::cpu_set_t);

/// Tasks moved so far, the postmasters whose later children get the postmaster's old mask, and
/// the CPU they were moved to.
struct Moved {
    tasks: Vec<Saved>,
    postmasters: Vec<Saved>,
    cpu: Option<usize>,
}

static MOVED: Mutex<Moved> = Mutex::new(Moved {
    tasks: Vec::new(),
    postmasters: Vec::new(),
    cpu: None,
});

fn moved() -> std::sync::MutexGuard<'static, Moved> {
    MOVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn comm(pid: libc::pid_t) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

/// The threads of process `pid`.
fn threads(pid: libc::pid_t) -> Vec<libc::pid_t> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn parent(pid: libc::pid_t) -> Option<libc::pid_t> {
    crate::load::stat_fields(pid, &[4])?.pop()
}

/// Every process whose parent is `pid`.
fn children(pid: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&p| parent(p) == Some(pid))
        .collect()
}

/// Moves every thread of the processes `pids` to `cpu`, remembering their masks; how many were
/// moved. Threads that ended meanwhile are skipped; on any other failure the threads moved by
/// this call get their masks back before the error is returned.
fn move_tasks(pids: &[libc::pid_t], cpu: usize) -> Result<usize> {
    let target = one_cpu(cpu);
    let mut done: Vec<Saved> = Vec::new();
    for &pid in pids {
        for tid in threads(pid) {
            let Some(old) = get_mask(tid) else { continue };
            match set_mask(tid, &target) {
                Ok(()) => done.push((tid, old)),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    for (tid, old) in done {
                        let _ = set_mask(tid, &old);
                    }
                    return Err(e).with_context(|| format!("moving task {tid} to CPU {cpu}"));
                }
            }
        }
    }
    let n = done.len();
    let mut m = moved();
    m.tasks.extend(done);
    m.cpu = Some(cpu);
    Ok(n)
}

fn loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Moves the Redis at `url` to `cpu`; its process id in words.
async fn move_redis(url: &str, cpu: usize) -> Result<String> {
    let client = redis::Client::open(url)?;
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, _) if loopback(host) => {}
        redis::ConnectionAddr::Unix(_) => {}
        other => bail!("not on a loopback address ({other})"),
    }
    let mut con = crate::seed::redis_conn(url).await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut con)
        .await?;
    let pid: libc::pid_t = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("INFO server has no process_id"))?;
    match comm(pid) {
        Some(c) if c.starts_with("redis-server") => {}
        _ => bail!("its process {pid} is not a redis-server of this machine"),
    }
    if move_tasks(&[pid], cpu)? == 0 {
        bail!("none of its threads could be moved");
    }
    Ok(format!("Redis (pid {pid})"))
}

/// Moves the PostgreSQL at `url` (its postmaster and every child) to `cpu`.
async fn move_postgres(url: &str, cpu: usize) -> Result<String> {
    let db = crate::seed::connect_with_timeout(url).await?;
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT pg_backend_pid() AS pid, COALESCE(host(inet_server_addr()), '127.0.0.1') AS host",
        ))
        .await?
        .ok_or_else(|| anyhow!("no answer to pg_backend_pid()"))?;
    let backend: i32 = row.try_get("", "pid")?;
    let host: String = row.try_get("", "host")?;
    if !loopback(&host) {
        bail!("not on a loopback address ({host})");
    }
    // Read while the connection is open: its backend ends with it.
    let postgres = |p: libc::pid_t| comm(p).as_deref() == Some("postgres");
    let postmaster = parent(backend).filter(|&p| postgres(p) && postgres(backend));
    db.close().await.ok();
    let postmaster = postmaster.ok_or_else(|| {
        anyhow!("its backend {backend} is not a postgres process of this machine")
    })?;
    let old = get_mask(postmaster).ok_or_else(|| anyhow!("reading the mask of {postmaster}"))?;
    let mut pids = vec![postmaster];
    pids.extend(children(postmaster));
    if move_tasks(&pids, cpu)? == 0 {
        bail!("none of its processes could be moved");
    }
    moved().postmasters.push((postmaster, old));
    Ok(format!("PostgreSQL (postmaster pid {postmaster})"))
}

/// Moves the Redis and PostgreSQL of the run to the load generator's CPU when the run is pinned
/// and they are processes of this machine; returns the note for the report (`None`: nothing
/// moved). A service that cannot be moved is left where it is, with a warning.
pub async fn move_to_load_cpu(
    redis_url: Option<&str>,
    postgres_url: Option<&str>,
) -> Option<String> {
    let cpu = crate::server::load_cpu()?;
    let mut done = Vec::new();
    if let Some(url) = redis_url {
        match move_redis(url, cpu).await {
            Ok(what) => done.push(what),
            Err(e) => eprintln!("bench: Redis left where it runs: {e:#}"),
        }
    }
    if let Some(url) = postgres_url {
        match move_postgres(url, cpu).await {
            Ok(what) => done.push(what),
            Err(e) => eprintln!("bench: PostgreSQL left where it runs: {e:#}"),
        }
    }
    (!done.is_empty()).then(|| format!("{} on CPU {cpu} for the run", done.join(" and ")))
}

/// Gives every moved task its old mask back (once; later calls do nothing) and says how many
/// there were. Children a postmaster started during the run get the postmaster's old mask.
pub fn restore() -> usize {
    let mut m = moved();
    let n = m.tasks.len();
    let Some(cpu) = m.cpu.take() else {
        return n;
    };
    // Only a task still on the CPU it was moved to is given its mask back: a task that ended is
    // gone, and one whose id was reused meanwhile is another's, most likely with another mask.
    let target = one_cpu(cpu);
    let give_back = |tid: libc::pid_t, old: &libc::cpu_set_t| {
        if get_mask(tid).is_some_and(|now| cpus_of(&now) == cpus_of(&target)) {
            let _ = set_mask(tid, old);
        }
    };
    for (postmaster, old) in std::mem::take(&mut m.postmasters) {
        for child in children(postmaster) {
            for tid in threads(child) {
                give_back(tid, &old);
            }
        }
    }
    for (tid, old) in std::mem::take(&mut m.tasks) {
        give_back(tid, &old);
    }
    n
}

/// Restores the services when the run is interrupted (Ctrl-C or SIGTERM), then exits with the
/// shell's status for that signal.
pub fn restore_on_interrupt() {
    tokio::spawn(async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        let status = tokio::select! {
            _ = tokio::signal::ctrl_c() => 128 + libc::SIGINT,
            _ = term.recv() => 128 + libc::SIGTERM,
        };
        if restore() > 0 {
            eprintln!("bench: interrupted; services given back their CPUs");
        }
        std::process::exit(status);
    });
}

/// Calls [`restore`] when dropped: at the end of the run, also when it panics.
pub struct RestoreOnDrop;

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"] {
            assert!(loopback(h), "{h}");
        }
        for h in ["10.0.0.5", "db.example.com", "", "0.0.0.0"] {
            assert!(!loopback(h), "{h}");
        }
    }

    #[test]
    fn a_moved_process_gets_its_mask_back() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        let before = cpus_of(&get_mask(pid).unwrap());
        let cpu = before[0];
        assert_eq!(move_tasks(&[pid], cpu).unwrap(), 1);
        let during = cpus_of(&get_mask(pid).unwrap());
        restore();
        let after = cpus_of(&get_mask(pid).unwrap());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(during, vec![cpu]);
        assert_eq!(after, before);
        assert!(moved().tasks.is_empty());
    }
}
