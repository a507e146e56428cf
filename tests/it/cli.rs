//! The binary: start-up refuses bad lifetimes with a clear message, `export-schema` prints the
//! committed schema, `migrate` applies the migrations.

use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_session-server"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/cli.db?mode=rwc", dir.path().display()),
        )
        .env("BIND", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

fn refused(env: &[(&str, &str)], expect: &str) {
    let out = run(&[], env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with {env:?}");
    assert!(
        stderr.contains(expect),
        "stderr for {env:?} lacks {expect:?}: {stderr}"
    );
}

#[test]
fn start_up_refuses_bad_lifetimes() {
    refused(
        &[("SESSION_IDLE_TIMEOUT", "0s")],
        "SESSION_IDLE_TIMEOUT must be greater than zero",
    );
    refused(
        &[("SESSION_ABSOLUTE_TIMEOUT", "0s")],
        "SESSION_ABSOLUTE_TIMEOUT must be greater than zero",
    );
    refused(&[("SESSION_IDLE_TIMEOUT", "-5m")], "positive duration");
    refused(
        &[
            ("SESSION_IDLE_TIMEOUT", "31d"),
            ("SESSION_ABSOLUTE_TIMEOUT", "30d"),
        ],
        // In the units the settings are written in (humantime would say "1month 13h 26m 24s").
        "SESSION_IDLE_TIMEOUT (31d) must not be longer than SESSION_ABSOLUTE_TIMEOUT (30d)",
    );
    refused(&[("SESSION_CACHE", "redis")], "needs REDIS_URL");
}

#[test]
fn export_schema_prints_the_committed_schema() {
    let out = run(&["export-schema"], &[]);
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed);
}

#[test]
fn migrate_applies_the_migrations() {
    let out = run(&["migrate"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
}

/// No default password in production: bound to a non-loopback address with the superadmin's
/// password still `superadmin`, the server refuses to start and says how to fix it.
#[test]
fn start_up_refuses_the_default_password_on_a_public_address() {
    refused(
        &[("BIND", "0.0.0.0:0")],
        "still has the default password and BIND (0.0.0.0:0) is not a loopback address",
    );
    refused(
        &[
            ("BIND", "0.0.0.0:0"),
            ("SUPERADMIN_PASSWORD_FILE", "/nonexistent/secret"),
        ],
        "cannot read SUPERADMIN_PASSWORD_FILE /nonexistent/secret",
    );
}

/// ALLOW_DEFAULT_PASSWORD=true starts anyway; a password from SUPERADMIN_PASSWORD_FILE (a
/// container secret) needs no override, and is the one that logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_password_override_and_password_file() {
    use crate::helpers::{TestApp, Variant};
    let app = TestApp::spawn_with(Variant::SqliteMemory, |c| {
        c.bind = "0.0.0.0:0".parse().unwrap();
        c.allow_default_password = true;
    })
    .await
    .expect("sqlite always runs");
    app.admin_token().await;

    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("superadmin-password");
    std::fs::write(&secret, "a-long-container-secret\n").unwrap();
    let app = TestApp::spawn_with(Variant::SqliteMemory, |c| {
        c.bind = "0.0.0.0:0".parse().unwrap();
        c.superadmin_password_file = Some(secret.clone());
    })
    .await
    .expect("sqlite always runs");
    app.login("superadmin", "a-long-container-secret").await;
    let r = app.try_login("superadmin", "superadmin").await;
    assert_eq!(
        r.data()["login"]["__typename"],
        "InvalidCredentialsError",
        "{}",
        r.body
    );
}
