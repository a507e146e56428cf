//! The config file (`--config FILE`, TOML) and `serve --print-config`, through the real binary:
//! precedence defaults < file < environment < flags, unknown keys, bad values naming the file
//! and the key, secrets masked, and a printed configuration that reads back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Run {
        Run {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, toml: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// The binary with a clean environment (only PATH and `env`).
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_session-server"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(self.dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("the binary runs")
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The line of `key` in a `--print-config` output.
fn line<'a>(printed: &'a str, key: &str) -> &'a str {
    printed
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")) || l.starts_with(&format!("# {key} ")))
        .unwrap_or_else(|| panic!("no line for {key} in:\n{printed}"))
}

fn print_config(run: &Run, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut argv = vec!["serve", "--print-config"];
    argv.extend_from_slice(args);
    let out = run.run(&argv, env);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn precedence_is_defaults_then_file_then_environment_then_flags() {
    let run = Run::new();
    let file = run.file(
        "server.toml",
        r#"
        session_idle_timeout = "2h"
        session_absolute_timeout = "3d"
        jwt_issuer = "from-file"
        login_max_attempts = 7
        cookie_secure = false
        token_method = ["bearer"]
        cors_allowed_origins = ["https://shop.example", "https://admin.example"]
        rust_log = "warn"
        "#,
    );
    let printed = print_config(
        &run,
        &["--config", p(&file), "--jwt-issuer", "from-flag"],
        &[
            ("SESSION_ABSOLUTE_TIMEOUT", "4d"),
            ("JWT_ISSUER", "from-env"),
        ],
    );
    // Only in the file: the file wins over the default.
    assert_eq!(
        line(&printed, "session_idle_timeout"),
        r#"session_idle_timeout = "2h" # config file"#
    );
    assert_eq!(
        line(&printed, "login_max_attempts"),
        "login_max_attempts = 7 # config file"
    );
    assert_eq!(
        line(&printed, "cookie_secure"),
        "cookie_secure = false # config file"
    );
    assert_eq!(
        line(&printed, "token_method"),
        r#"token_method = "bearer" # config file"#
    );
    assert_eq!(
        line(&printed, "cors_allowed_origins"),
        r#"cors_allowed_origins = ["https://shop.example", "https://admin.example"] # config file"#
    );
    assert_eq!(
        line(&printed, "rust_log"),
        r#"rust_log = "warn" # config file"#
    );
    // File and environment: the environment wins.
    assert_eq!(
        line(&printed, "session_absolute_timeout"),
        r#"session_absolute_timeout = "4d" # environment"#
    );
    // File, environment and flag: the flag wins.
    assert_eq!(
        line(&printed, "jwt_issuer"),
        r#"jwt_issuer = "from-flag" # flag"#
    );
    // Nowhere: the default.
    assert_eq!(
        line(&printed, "login_window"),
        r#"login_window = "15m" # default"#
    );
    assert_eq!(
        line(&printed, "session_token_ttl"),
        "# session_token_ttl is unset (default)"
    );

    // `--config` works before the subcommand and without one (plain `session-server` serves).
    let out = run.run(&["--config", p(&file), "serve", "--print-config"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(r#"jwt_issuer = "from-file" # config file"#));
}

/// The file reaches the configuration the commands run with, not only the printout: a file
/// value the server refuses stops `serve`, naming the file's key, and `migrate` uses the file's
/// database.
#[test]
fn the_file_configures_the_commands() {
    let run = Run::new();
    let file = run.file(
        "server.toml",
        r#"session_idle_timeout = "0s"
bind = "127.0.0.1:0"
"#,
    );
    let out = run.run(&["--config", p(&file)], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("SESSION_IDLE_TIMEOUT must be greater than zero")
            && err.contains(&format!("set by `session_idle_timeout` in {}", p(&file))),
        "{err}"
    );
    // The environment corrects the file.
    let out = run.run(
        &["--config", p(&file), "serve", "--print-config"],
        &[("SESSION_IDLE_TIMEOUT", "1h")],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let db = run.dir.path().join("from-file.db");
    let file = run.file(
        "migrate.toml",
        &format!("database_url = \"sqlite://{}?mode=rwc\"\n", p(&db)),
    );
    let out = run.run(&["migrate", "--config", p(&file)], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(db.exists(), "migrate did not use the file's database_url");
}

#[test]
fn unknown_keys_are_refused_with_the_closest_key() {
    let run = Run::new();
    let file = run.file("typo.toml", "session_idle_timout = \"2h\"\n");
    let out = run.run(&["--config", p(&file), "serve", "--print-config"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "the config file {} has an unknown key `session_idle_timout` (did you mean \
             `session_idle_timeout`?)",
            p(&file)
        )),
        "{err}"
    );
    assert!(stdout(&out).is_empty());

    // The environment variable's own spelling is not a file key: the lower-case one is named.
    let file = run.file("upper.toml", "SESSION_CACHE = \"memory\"\n");
    let err = stderr(&run.run(&["--config", p(&file)], &[]));
    assert!(err.contains("did you mean `session_cache`?"), "{err}");

    let file = run.file("far.toml", "colour = \"blue\"\n");
    let err = stderr(&run.run(&["--config", p(&file)], &[]));
    assert!(
        err.contains("unknown key `colour`: file keys are the setting names in lower case"),
        "{err}"
    );

    // A table is not a setting either.
    let file = run.file("table.toml", "[server]\nbind = \"127.0.0.1:0\"\n");
    let err = stderr(&run.run(&["--config", p(&file)], &[]));
    assert!(err.contains("unknown key `server`"), "{err}");
}

#[test]
fn bad_values_in_the_file_name_the_file_and_the_key() {
    let run = Run::new();
    let cases = [
        (
            "session_idle_timeout = \"2 fortnights\"",
            "`session_idle_timeout` (the setting SESSION_IDLE_TIMEOUT): invalid duration '2 fortnights'",
        ),
        (
            "session_idle_timeout = 30",
            "`session_idle_timeout` (the setting SESSION_IDLE_TIMEOUT): invalid duration '30'",
        ),
        (
            "session_idle_timeout = 1.5",
            "`session_idle_timeout` (the setting SESSION_IDLE_TIMEOUT): expected a string, an integer or a boolean",
        ),
        (
            "login_max_attempts = \"many\"",
            "`login_max_attempts` (the setting LOGIN_MAX_ATTEMPTS): invalid digit",
        ),
        (
            "session_cache = \"disk\"",
            "`session_cache` (the setting SESSION_CACHE): invalid value 'disk'",
        ),
        (
            "trust_proxy = \"maybe\"",
            "`trust_proxy` (the setting TRUST_PROXY): invalid TRUST_PROXY 'maybe'",
        ),
        (
            "token_method = [\"cookie\", \"smoke\"]",
            "`token_method` (the setting TOKEN_METHOD): unknown token method 'smoke'",
        ),
        ("bind = \"nowhere\"", "`bind` (the setting BIND)"),
    ];
    for (toml, expect) in cases {
        let file = run.file("bad.toml", &format!("{toml}\n"));
        let out = run.run(&["--config", p(&file), "serve", "--print-config"], &[]);
        assert_eq!(out.status.code(), Some(1), "{toml}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("the config file {}: {expect}", p(&file))),
            "{toml}: {err}"
        );
    }
    // The enum's possible values are listed.
    let file = run.file("enum.toml", "session_cache = \"disk\"\n");
    let err = stderr(&run.run(&["--config", p(&file)], &[]));
    assert!(err.contains("memory, redis, tiered"), "{err}");

    // Valid values that break a rule between settings: the message names the file's keys.
    let file = run.file(
        "rule.toml",
        "session_idle_timeout = \"2d\"\nsession_absolute_timeout = \"1d\"\n",
    );
    let err = stderr(&run.run(&["--config", p(&file)], &[]));
    assert!(
        err.contains("must not be longer than SESSION_ABSOLUTE_TIMEOUT")
            && err.contains("`session_idle_timeout`, `session_absolute_timeout`"),
        "{err}"
    );

    let file = run.file("syntax.toml", "session_cache = \n");
    let err = stderr(&run.run(&["--config", p(&file)], &[]));
    assert!(err.contains("is not valid TOML"), "{err}");
    let err = stderr(&run.run(&["--config", "/nonexistent/server.toml"], &[]));
    assert!(
        err.contains("cannot read the config file /nonexistent/server.toml"),
        "{err}"
    );
}

#[test]
fn print_config_masks_secrets() {
    let run = Run::new();
    let file = run.file(
        "secrets.toml",
        r#"
        database_url = "postgres://app:db-Secret-1@db.internal:5432/sessions"
        superadmin_password = "file-Secret-2"
        "#,
    );
    let printed = print_config(
        &run,
        &["--config", p(&file)],
        &[
            ("REDIS_URL", "redis://:redis-Secret-3@cache.internal:6379/0"),
            ("SESSION_CACHE", "redis"),
        ],
    );
    for secret in ["db-Secret-1", "file-Secret-2", "redis-Secret-3"] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
    assert_eq!(
        line(&printed, "database_url"),
        r#"database_url = "postgres://app:****@db.internal:5432/sessions" # config file"#
    );
    assert_eq!(
        line(&printed, "redis_url"),
        r#"redis_url = "redis://:****@cache.internal:6379/0" # environment"#
    );
    assert_eq!(
        line(&printed, "superadmin_password"),
        r#"# superadmin_password = "****" (config file, masked)"#
    );
    // A flag is masked too.
    let printed = print_config(&run, &["--superadmin-password", "flag-Secret-4"], &[]);
    assert!(!printed.contains("flag-Secret-4"), "{printed}");
}

/// What `--print-config` prints is a config file that gives the same configuration.
#[test]
fn the_printed_configuration_reads_back() {
    let run = Run::new();
    let printed = print_config(
        &run,
        &[
            "--session-idle-timeout",
            "90m",
            "--cors-allowed-origins",
            "https://a.example",
        ],
        &[
            ("LOGIN_MAX_ATTEMPTS", "9"),
            ("TRUST_PROXY", "2"),
            ("JWT_ISSUER", "007"),
            ("SESSION_TOKEN_TTL", "1h"),
        ],
    );
    let file = run.file("printed.toml", &printed);
    let again = print_config(&run, &["--config", p(&file)], &[]);
    let values = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" # ").next().unwrap().to_string())
            .collect()
    };
    assert_eq!(values(&printed), values(&again));
    assert!(
        again.contains(r#"jwt_issuer = "007" # config file"#),
        "{again}"
    );
    assert!(again.contains("trust_proxy = 2 # config file"), "{again}");
    assert!(
        again.contains(r#"session_idle_timeout = "90m" # config file"#),
        "{again}"
    );
}
