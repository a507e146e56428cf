//! `--scale`: the at-scale checks, kept out of the default run because they insert millions of
//! rows.
//!
//! 1. Database-only reads (cache TTL 1ms) on PostgreSQL with 1,000,000 sessions versus 10,000
//!    sessions, alternating rounds; the load spreads over 10,000 tokens in both (target:
//!    ≥ 0.80 of the 10,000-session throughput).
//! 2. `cleanUpExpiredSessions` (as superadmin) deleting 1,000,000 already-expired sessions while
//!    cached reads run; p99 of those reads during the clean-up ÷ p99 just before (≤ 2).
//! 3. Peak RSS of a memory-cache server with 100,000 sessions, all warmed into the cache
//!    (≤ 150 MB).
//!
//! `--sessions`/`--rounds`/`--duration`/`--connections` apply; the big sizes can be lowered with
//! `BENCH_SCALE_SESSIONS` (default 1000000) and `BENCH_SCALE_CACHED` (default 100000) for a
//! quick check of the harness itself.

use crate::load::{self, Conn, Stop};
use crate::report::{median, Measurement};
use crate::server::{self, ServerConfig};
use crate::{
    prepare_server, random_suffix, read_workload, seed, sqlite_url, Args, Cleanup, Settings,
};
use anyhow::{anyhow, Context, Result};
use rand::seq::IndexedRandom;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

pub async fn run(args: &Args, s: &Settings, cleanup: &mut Cleanup) -> Result<i32> {
    let big = env_usize("BENCH_SCALE_SESSIONS", 1_000_000)?;
    let small = 10_000.min(big);
    let cached = env_usize("BENCH_SCALE_CACHED", 100_000)?;
    let suffix = random_suffix();
    let mut lines: Vec<String> = Vec::new();
    let mut failed = false;

    seed::postgres_ping(&args.postgres_url)
        .await
        .context("--scale needs PostgreSQL (BENCH_POSTGRES_URL)")?;

    // 1. Database-only reads, small vs big table.
    eprintln!("scale 1: database-only reads with {small} vs {big} sessions in PostgreSQL");
    let mut servers = Vec::new();
    for (label, n) in [("small", small), ("big", big)] {
        let name = format!("bench_{suffix}_{label}");
        let url = seed::create_pg_database(&args.postgres_url, &name).await?;
        cleanup.pg_databases.push((args.postgres_url.clone(), name));
        let cfg = ServerConfig {
            name: format!("scale-db-{label}"),
            database_url: url.clone(),
            cache: "memory",
            redis: None,
            cache_ttl: Some("1ms"),
            cache_capacity: None,
            extra_env: Vec::new(),
        };
        server::migrate(
            &s.server_bin,
            &url,
            &s.scratch.join(format!("{}-migrate.log", cfg.name)),
        )?;
        let t0 = Instant::now();
        let tokens = seed::gen_tokens(n);
        seed::insert_sessions(&url, &tokens, false).await?;
        eprintln!(
            "  seeded {n} sessions in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        let proc = server::start_server(&s.server_bin, &cfg, &s.scratch).await?;
        let mut rng = rand::rng();
        let sample: Vec<String> = tokens
            .choose_multiple(&mut rng, 10_000.min(n))
            .map(|t| t.token.clone())
            .collect();
        drop(tokens);
        seed::warm(proc.addr, &sample[..100.min(sample.len())], 4).await?;
        servers.push((proc, Arc::new(read_workload(&sample))));
    }
    let mut per_round: Vec<(Measurement, Measurement)> = Vec::new();
    for round in 1..=s.rounds {
        let mut ms = Vec::new();
        for (proc, w) in &servers {
            let r = crate::measure(s, proc, w.clone()).await?;
            let m = Measurement::from_load(&r, proc.peak_rss_kib());
            eprintln!(
                "  round {round} {}: {:.0} req/s p50 {} µs p99 {} µs errors {}",
                proc.name, m.rps, m.p50_us, m.p99_us, m.errors
            );
            failed |= m.errors > 0;
            ms.push(m);
        }
        let big_m = ms.pop().expect("two rows");
        let small_m = ms.pop().expect("two rows");
        per_round.push((small_m, big_m));
    }
    drop(servers);
    let med =
        |f: &dyn Fn(&(Measurement, Measurement)) -> f64| median(per_round.iter().map(f).collect());
    let ratio = med(&|(a, b)| b.rps / a.rps).unwrap_or(f64::NAN);
    lines.push("| check | figure | target | verdict |".into());
    lines.push("|---|---:|---:|---|".into());
    lines.push(format!(
        "| PostgreSQL, cache off, {small} sessions | {:.0} req/s, p99 {:.0} µs | | |",
        med(&|(a, _)| a.rps).unwrap_or(f64::NAN),
        med(&|(a, _)| a.p99_us).unwrap_or(f64::NAN)
    ));
    lines.push(format!(
        "| PostgreSQL, cache off, {big} sessions | {:.0} req/s, p99 {:.0} µs | | |",
        med(&|(_, b)| b.rps).unwrap_or(f64::NAN),
        med(&|(_, b)| b.p99_us).unwrap_or(f64::NAN)
    ));
    lines.push(format!(
        "| req/s with {big} ÷ with {small} | {ratio:.3} | ≥ 0.80 | {} |",
        verdict(ratio >= 0.80)
    ));

    // 2. Clean-up of expired sessions under cached reads.
    eprintln!("scale 2: cleanUpExpiredSessions of {big} expired sessions under cached reads");
    let name = format!("bench_{suffix}_cleanup");
    let url = seed::create_pg_database(&args.postgres_url, &name).await?;
    cleanup.pg_databases.push((args.postgres_url.clone(), name));
    let cfg = ServerConfig {
        name: "scale-cleanup".into(),
        database_url: url.clone(),
        cache: "memory",
        redis: None,
        cache_ttl: None,
        cache_capacity: None,
        // One request deletes the whole backlog: on a slow machine that outlasts the default
        // 30 s request timeout, which would answer 503 and stop it part-way.
        extra_env: vec![("REQUEST_TIMEOUT", "30m")],
    };
    let (proc, seeded) = prepare_server(s, &cfg, s.sessions, 0).await?;
    let tokens = seeded.anonymous;
    let t0 = Instant::now();
    seed::insert_sessions(&url, &seed::gen_tokens(big), true).await?;
    eprintln!(
        "  inserted {big} expired sessions in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let admin = seed::login_superadmin(proc.addr).await?;
    let w = Arc::new(read_workload(&tokens));
    let before = crate::measure(s, &proc, w.clone()).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let addr = proc.addr;
    let warmup = s.warmup;
    let cleaner = tokio::spawn(async move {
        // Start the clean-up once the load is in its measured window.
        tokio::time::sleep(warmup).await;
        let t0 = Instant::now();
        let res = async {
            let mut conn = Conn::connect(addr).await?;
            let (_, body) = tokio::time::timeout(
                Duration::from_secs(1800),
                conn.graphql(
                    r#"{"query":"mutation { cleanUpExpiredSessions }"}"#,
                    Some(&admin),
                ),
            )
            .await
            .map_err(|_| anyhow!("cleanUpExpiredSessions took over 30 minutes"))??;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            v["data"]["cleanUpExpiredSessions"]
                .as_i64()
                .ok_or_else(|| anyhow!("cleanUpExpiredSessions failed: {body}"))
        }
        .await;
        let _ = tx.send(());
        res.map(|n| (n, t0.elapsed()))
    });
    let during = load::run(
        proc.addr,
        w.clone(),
        s.connections,
        s.warmup,
        Stop::When(rx),
        Some(proc.pid()),
    )
    .await?;
    let (deleted, took) = cleaner.await??;
    let (b, d) = (before.merged(), during.merged());
    failed |= before.errors() + during.errors() > 0;
    let r = d.p99_us() as f64 / b.p99_us().max(1) as f64;
    lines.push(format!(
        "| cached reads before clean-up | {:.0} req/s, p99 {} µs | | |",
        before.rps(),
        b.p99_us()
    ));
    lines.push(format!(
        "| cached reads during clean-up ({deleted} rows deleted in {:.1} s) | {:.0} req/s, p99 {} µs | | |",
        took.as_secs_f64(),
        during.rps(),
        d.p99_us()
    ));
    lines.push(format!(
        "| p99 during ÷ p99 before | {r:.3} | ≤ 2.00 | {} |",
        verdict(r <= 2.0)
    ));
    drop(proc);

    // 3. RSS with many cached sessions.
    eprintln!("scale 3: peak RSS with {cached} sessions in the memory cache");
    let cfg = ServerConfig {
        name: "scale-rss".into(),
        database_url: sqlite_url(&s.scratch, "scale-rss"),
        cache: "memory",
        redis: None,
        cache_ttl: None,
        cache_capacity: Some(cached.max(100_000) + 1_000),
        extra_env: Vec::new(),
    };
    server::migrate(
        &s.server_bin,
        &cfg.database_url,
        &s.scratch.join("scale-rss-migrate.log"),
    )?;
    let tokens = seed::gen_tokens(cached);
    seed::insert_sessions(&cfg.database_url, &tokens, false).await?;
    let proc = server::start_server(&s.server_bin, &cfg, &s.scratch).await?;
    let idle = proc.peak_rss_kib().unwrap_or(0);
    let tokens: Vec<String> = tokens.into_iter().map(|t| t.token).collect();
    let t0 = Instant::now();
    seed::warm(proc.addr, &tokens, 32).await?;
    let peak = proc.peak_rss_kib().unwrap_or(0);
    let mb = peak as f64 / 1024.0;
    lines.push(format!(
        "| peak RSS, {cached} sessions cached (idle: {:.1} MB; warmed in {:.1} s) | {mb:.1} MB | ≤ 150 MB | {} |",
        idle as f64 / 1024.0,
        t0.elapsed().as_secs_f64(),
        verdict(mb <= 150.0)
    ));
    drop(proc);

    println!();
    for l in &lines {
        println!("{l}");
    }
    Ok(if failed { 1 } else { 0 })
}
