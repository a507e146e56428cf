//! Redis Cluster: a three-master cluster on loopback ports, started once per test binary (each
//! node under a watchdog that kills it when the binary exits) and used by the
//! `Variant::SqliteRedisCluster` of every cross-backend test; plus cluster-specific checks
//! (keys spread over the masters, `clearSessionCache` reaches every node, tiered invalidation
//! across three instances over a cluster).

use crate::helpers::{TestApp, Variant};
use crate::procs::{have, skip, PgDatabase};
use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub ports: Vec<u16>,
    /// `redis-cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`
    pub url: String,
    /// The watchdog shells (each ends its node once this binary has exited).
    _watchdogs: Vec<std::process::Child>,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();

/// The process-wide cluster, started on first use; `None` (after a notice, or a failure under
/// `REQUIRE_SERVICES=1`) when `redis-server` or `redis-cli` is missing.
pub fn shared_cluster() -> Option<&'static Cluster> {
    let cluster = CLUSTER.get_or_init(|| {
        if !have("redis-server") || !have("redis-cli") {
            return None;
        }
        Some(start_cluster())
    });
    if cluster.is_none() {
        skip("redis-server or redis-cli is not installed (Redis Cluster variant)");
    }
    cluster.as_ref()
}

/// A free port whose cluster bus port (+10000) is free too.
fn cluster_port(taken: &[u16]) -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p > 55_000 || taken.contains(&p) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn start_cluster() -> Cluster {
    let parent = std::process::id();
    let dir = std::env::temp_dir().join(format!(
        "ss-cluster-{parent}-{}",
        session_server::token::random_string(6).replace(['-', '_'], "x")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.display().to_string();
    let mut ports = vec![];
    let mut watchdogs = vec![];
    for _ in 0..3 {
        let p = cluster_port(&ports);
        ports.push(p);
        // The watchdog kills the node (and removes the files) once this test binary is gone.
        let script = format!(
            "redis-server --cluster-enabled yes --cluster-config-file {dir}/nodes-{p}.conf \
             --port {p} --bind 127.0.0.1 --dir {dir} --save '' --appendonly no \
             >/dev/null 2>&1 & r=$!; \
             while kill -0 {parent} 2>/dev/null; do sleep 1; done; \
             kill $r; wait $r; rm -rf {dir}"
        );
        let watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a cluster node");
        watchdogs.push(watchdog);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for &p in &ports {
        while cli(p, &["ping"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "cluster node {p} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&nodes)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli --cluster create");
    assert!(
        out.status.success(),
        "cluster create failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    for &p in &ports {
        while !cli(p, &["cluster", "info"]).contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "cluster not ok on node {p}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Cluster {
        url: format!("redis-cluster://{}", nodes.join(",")),
        ports,
        _watchdogs: watchdogs,
    }
}

/// How many keys under `prefix` each master holds.
async fn keys_per_node(cluster: &Cluster, prefix: &str) -> Vec<usize> {
    let mut out = vec![];
    for p in &cluster.ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{p}")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let (mut cursor, mut n) = (0u64, 0usize);
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .unwrap();
            // Session keys only: a clear keeps the throttle windows (`{th:…}`) and the users'
            // invalidation marks (`…:inv`) on purpose.
            n += keys
                .iter()
                .filter(|k| !k.contains("{th:") && !k.ends_with(":inv"))
                .count();
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        out.push(n);
    }
    out
}

/// Sessions land on several masters; `clearSessionCache` empties the namespace on all of them,
/// and the sessions then come from the database again (and are re-cached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_masters_and_clear_reaches_every_node() {
    let Some(app) = TestApp::spawn(Variant::SqliteRedisCluster).await else {
        return;
    };
    let cluster = shared_cluster().unwrap();
    let admin = app.admin_token().await;
    let mut anonymous = vec![];
    for _ in 0..12 {
        let r = app
            .gql("mutation { createAnonymousSession { id } }", json!({}))
            .await
            .ok();
        anonymous.push(r.session_token().unwrap());
    }
    for t in &anonymous {
        assert_eq!(app.active_session(t).await["kind"], "ANONYMOUS");
    }
    let counts = keys_per_node(cluster, &app.redis_prefix).await;
    assert!(
        counts.iter().filter(|&&n| n > 0).count() >= 2,
        "keys on one master only: {counts:?}"
    );
    let r = app
        .gql_as(&admin, "mutation { clearSessionCache }", json!({}))
        .await
        .ok();
    assert_eq!(r.data()["clearSessionCache"], true);
    let counts = keys_per_node(cluster, &app.redis_prefix).await;
    assert_eq!(counts, vec![0, 0, 0], "keys left after clearSessionCache");
    for t in anonymous.iter().chain([&admin]) {
        assert!(!app.active_session(t).await.is_null());
    }
    assert!(
        keys_per_node(cluster, &app.redis_prefix)
            .await
            .iter()
            .sum::<usize>()
            > 0
    );
}

/// Three server processes with the tiered cache over the cluster (invalidations published on
/// one node reach subscribers on any node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_invalidations_across_instances_on_a_cluster() {
    let Some(cluster) = shared_cluster() else {
        return;
    };
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    // A short pause after each change: see `scale::invalidations_hold_on_every_instance_tiered`.
    let settle = Duration::from_millis(300);
    crate::scale::invalidations_hold_on_every_instance(&db, &cluster.url, "tiered", settle).await;
}

/// Three server processes with the `redis` cache over the cluster: every change holds on the
/// other instances' very next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_invalidations_across_instances_on_a_cluster() {
    let Some(cluster) = shared_cluster() else {
        return;
    };
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    crate::scale::invalidations_hold_on_every_instance(&db, &cluster.url, "redis", Duration::ZERO)
        .await;
}
