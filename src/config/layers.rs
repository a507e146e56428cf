//! Layering the configuration: defaults < config file (`--config FILE`, TOML) < environment <
//! flags, and printing the result (`serve --print-config`) with secrets masked.
//!
//! The settings are the arguments of `serve` that have an environment variable; nothing here
//! lists them, so a setting added to [`Config`] is a file key and printed without more code.
//! A file value becomes the argument's default before clap parses, which gives the precedence
//! for free: clap prefers a flag, then the environment, then the default.

use super::{Cli, Command, Config, ConfigError};
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, CommandFactory, FromArgMatches};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Written instead of a secret.
const MASK: &str = "****";

/// Why the command line, the config file or the resulting configuration was refused.
#[derive(thiserror::Error, Debug)]
pub enum LoadError {
    /// A usage error, `--help` or `--version`: clap prints it.
    #[error(transparent)]
    Usage(#[from] clap::Error),
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid TOML: {source}")]
    Syntax {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("the config file {path} has an unknown key `{key}`{}", suggestion(.did_you_mean))]
    UnknownKey {
        path: PathBuf,
        key: String,
        did_you_mean: Option<String>,
    },
    #[error("the config file {path}: `{key}` (the setting {env}): {message}")]
    BadValue {
        path: PathBuf,
        key: String,
        env: String,
        message: String,
    },
    #[error("invalid configuration: {error}{hint}")]
    Invalid {
        #[source]
        error: ConfigError,
        /// Where the settings the error names were set, when a file set them.
        hint: String,
    },
}

fn suggestion(did_you_mean: &Option<String>) -> String {
    match did_you_mean {
        Some(key) => format!(" (did you mean `{key}`?)"),
        None => ": file keys are the setting names in lower case, such as `session_idle_timeout`"
            .to_string(),
    }
}

/// The parsed command line with the configuration its command runs with.
pub struct Invocation {
    pub command: Command,
    /// The layered configuration, validated: `serve`'s own (flags included), or for the other
    /// commands defaults < file < environment.
    pub config: Config,
    /// Each setting's value and where it came from, for `--print-config`.
    pub effective: Effective,
}

/// Where a setting's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Environment,
    Flag,
}

impl Source {
    fn describe(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "config file",
            Source::Environment => "environment",
            Source::Flag => "flag",
        }
    }
}

/// One setting of the effective configuration, as text (the form the file and the environment
/// take).
#[derive(Debug)]
struct Setting {
    /// The argument id (the field of [`Config`]).
    id: String,
    key: String,
    env: String,
    /// None: unset. Several values for a list setting.
    values: Option<Vec<String>>,
    list: bool,
    secret: bool,
    source: Source,
}

/// The effective configuration, every setting with where its value came from.
#[derive(Debug)]
pub struct Effective {
    settings: Vec<Setting>,
}

/// A setting's file key: its environment variable in lower case (`RUST_LOG` is `rust_log`).
fn file_key(env: &str) -> String {
    env.to_ascii_lowercase()
}

/// A whole value is secret when clap hides it from `--help` (`hide_env_values`), or by name.
/// Secret settings must set `hide_env_values = true`; the name rule is a safety net.
fn is_secret(arg: &Arg, key: &str) -> bool {
    arg.is_hide_env_values_set() || key.ends_with("_secret")
}

/// The settings: `serve`'s arguments that have an environment variable.
fn settings(serve: &clap::Command) -> impl Iterator<Item = (&Arg, String)> {
    serve.get_arguments().filter_map(|arg| {
        let env = arg.get_env()?.to_str()?.to_string();
        Some((arg, env))
    })
}

fn serve_command(cmd: &clap::Command) -> &clap::Command {
    cmd.find_subcommand("serve")
        .expect("the command line defines `serve`")
}

/// Parses the process's command line (see [`load_from`]).
pub fn load() -> Result<Invocation, LoadError> {
    load_from(std::env::args_os())
}

/// Parses a command line (the program name first): reads `--config` when given, layers the
/// configuration, and validates it. No subcommand means `serve`.
pub fn load_from<I, T>(args: I) -> Result<Invocation, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = Cli::command();
    // First pass: only to learn the file and the subcommand.
    let first = cmd.clone().try_get_matches_from(&args)?;
    if first.subcommand_name().is_none() {
        args.push("serve".into());
    }
    let path = first.get_one::<PathBuf>("config").cloned();
    let mut from_file = Vec::new();
    if let Some(path) = &path {
        let values = read_file(path, serve_command(&cmd))?;
        cmd = cmd.mut_subcommand("serve", |mut serve| {
            for (id, value) in values {
                serve = serve.mut_arg(&id, |arg| match value {
                    FileValue::One(v) => arg.default_value(v),
                    FileValue::Many(vs) => arg.default_values(vs),
                });
                from_file.push(id);
            }
            serve
        });
    }
    let matches = cmd.clone().try_get_matches_from(&args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let command = cli
        .command
        .expect("`serve` was added when no subcommand was given");
    let serve_matches = match (&command, matches.subcommand()) {
        (Command::Serve(_), Some((_, m))) => m.clone(),
        // The other commands run with the configuration `serve` would have without flags.
        _ => cmd
            .clone()
            .try_get_matches_from(["session-server", "serve"])?
            .subcommand()
            .map(|(_, m)| m.clone())
            .expect("`serve` was given"),
    };
    let config = match &command {
        Command::Serve(serve) => serve.config.clone(),
        _ => super::Serve::from_arg_matches(&serve_matches)?.config,
    };
    let order: Vec<String> = settings(serve_command(&Cli::command()))
        .map(|(arg, _)| arg.get_id().to_string())
        .collect();
    let mut effective = Effective::new(serve_command(&cmd), &serve_matches, &from_file);
    // `mut_arg` moves an argument to the end: print in the order of the definitions.
    effective
        .settings
        .sort_by_key(|s| order.iter().position(|id| *id == s.id));
    // The schema export needs no configuration; every other command runs with it.
    let needs_config = !matches!(command, Command::ExportSchema { .. });
    if let Err(error) = config
        .validate()
        .or_else(|e| if needs_config { Err(e) } else { Ok(()) })
    {
        let hint = effective.hint(&error.to_string(), path.as_deref());
        return Err(LoadError::Invalid { error, hint });
    }
    Ok(Invocation {
        command,
        config,
        effective,
    })
}

/// A file value in the form clap parses.
enum FileValue {
    One(String),
    Many(Vec<String>),
}

/// Reads the file and checks every key and value against the settings, so a mistake names the
/// file and the key; returns the values by argument id.
fn read_file(path: &Path, serve: &clap::Command) -> Result<Vec<(String, FileValue)>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|e| LoadError::Syntax {
        path: path.to_path_buf(),
        source: Box::new(e),
    })?;
    let known: BTreeMap<String, (&Arg, String)> = settings(serve)
        .map(|(arg, env)| (file_key(&env), (arg, env)))
        .collect();
    let mut values = Vec::new();
    for (key, value) in table {
        let Some((arg, env)) = known.get(&key) else {
            return Err(LoadError::UnknownKey {
                path: path.to_path_buf(),
                did_you_mean: closest(&key, known.keys()),
                key,
            });
        };
        let bad = |message: String| LoadError::BadValue {
            path: path.to_path_buf(),
            key: key.clone(),
            env: env.clone(),
            message,
        };
        let value = match (value, arg.get_value_delimiter()) {
            (toml::Value::Array(items), delimiter) => {
                let items = items
                    .into_iter()
                    .map(scalar)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                match delimiter {
                    // An empty list is the empty value, as `CORS_ALLOWED_ORIGINS=` would be.
                    Some(_) if items.is_empty() => FileValue::One(String::new()),
                    Some(_) => FileValue::Many(items),
                    // A single-valued setting that takes a comma-separated list (TOKEN_METHOD).
                    None => FileValue::One(items.join(",")),
                }
            }
            (value, _) => FileValue::One(scalar(value).map_err(bad)?),
        };
        check_value(arg, &value).map_err(bad)?;
        values.push((arg.get_id().to_string(), value));
    }
    Ok(values)
}

/// A TOML scalar as the text an environment variable would hold.
fn scalar(value: toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "expected a string, an integer or a boolean (durations are strings such as \"15m\"), \
             found {}",
            other.type_str()
        )),
    }
}

/// Runs the setting's own parser on the value, as clap does for the environment variable.
fn check_value(arg: &Arg, value: &FileValue) -> Result<(), String> {
    let long = arg.get_long().unwrap_or("value");
    let lone = arg
        .clone()
        .env(None::<&'static str>)
        .default_value(None::<&'static str>)
        .required(false);
    let probe = clap::Command::new("file").arg(lone);
    let mut argv = vec!["file".to_string()];
    match value {
        FileValue::One(v) => argv.push(format!("--{long}={v}")),
        FileValue::Many(vs) => argv.extend(vs.iter().map(|v| format!("--{long}={v}"))),
    }
    match probe.try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(e) => Err(match std::error::Error::source(&e) {
            Some(cause) => cause.to_string(),
            // clap's own message (an enum's possible values on its second line), without
            // the usage that follows the blank line.
            None => e
                .render()
                .to_string()
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(|line| line.trim().trim_start_matches("error: "))
                .collect::<Vec<_>>()
                .join(" "),
        }),
    }
}

/// The known key nearest to a mistyped one, when it is near enough to be what was meant.
fn closest<'a>(key: &str, known: impl Iterator<Item = &'a String>) -> Option<String> {
    let lower = key.to_ascii_lowercase().replace('-', "_");
    known
        .map(|k| (strsim::jaro_winkler(&lower, k), k))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.clone())
}

impl Effective {
    fn new(serve: &clap::Command, matches: &ArgMatches, from_file: &[String]) -> Effective {
        let settings = settings(serve)
            .map(|(arg, env)| {
                let id = arg.get_id().as_str();
                let key = file_key(&env);
                let values = matches.get_raw(id).map(|raw| {
                    raw.map(|v| v.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                });
                let source = match matches.value_source(id) {
                    Some(ValueSource::CommandLine) => Source::Flag,
                    Some(ValueSource::EnvVariable) => Source::Environment,
                    _ if from_file.iter().any(|f| f == id) => Source::File,
                    _ => Source::Default,
                };
                Setting {
                    id: id.to_string(),
                    secret: is_secret(arg, &key),
                    list: arg.get_value_delimiter().is_some(),
                    key,
                    env,
                    values,
                    source,
                }
            })
            .collect();
        Effective { settings }
    }

    /// Where the settings named in a validation message were set, when not by the environment
    /// or a flag (whose names the message already uses).
    fn hint(&self, message: &str, path: Option<&Path>) -> String {
        let Some(path) = path else {
            return String::new();
        };
        let named: Vec<&str> = self
            .settings
            .iter()
            .filter(|s| s.source == Source::File && names(message, &s.env))
            .map(|s| s.key.as_str())
            .collect();
        if named.is_empty() {
            return String::new();
        }
        format!(" (set by `{}` in {})", named.join("`, `"), path.display())
    }

    /// The configuration as TOML that can be fed back with `--config`, each line with where
    /// its value came from. A secret setting is a comment (feeding back a mask would set it);
    /// the password inside a URL is masked.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# session-server: the effective configuration (defaults < config file < environment \
             < flags).\n# Secrets are masked; a secret setting is commented out so that this \
             file can be fed back with --config.\n",
        );
        for s in &self.settings {
            let from = s.source.describe();
            let Some(values) = &s.values else {
                let _ = writeln!(out, "# {} is unset ({from})", s.key);
                continue;
            };
            if s.secret {
                let _ = writeln!(out, "# {} = \"{MASK}\" ({from}, masked)", s.key);
                continue;
            }
            let value = if s.list {
                let items: Vec<String> = values
                    .iter()
                    .filter(|v| !v.is_empty())
                    .map(|v| toml_string(&mask_url_password(v)))
                    .collect();
                format!("[{}]", items.join(", "))
            } else {
                let joined = values.join(",");
                toml_scalar(&mask_url_password(&joined))
            };
            let _ = writeln!(out, "{} = {value} # {from}", s.key);
        }
        out
    }
}

/// Whether `message` names the environment variable `env` as a whole word.
fn names(message: &str, env: &str) -> bool {
    message.match_indices(env).any(|(at, _)| {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let before = message[..at].chars().next_back();
        let after = message[at + env.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// An integer or a boolean unquoted when it reads back to the same text, else a string.
fn toml_scalar(s: &str) -> String {
    if s == "true" || s == "false" {
        return s.to_string();
    }
    match s.parse::<i64>() {
        Ok(n) if n.to_string() == s => s.to_string(),
        _ => toml_string(s),
    }
}

/// `scheme://user:password@host/…` with the password masked; anything else unchanged.
pub fn mask_url_password(value: &str) -> String {
    let Some(scheme_end) = value.find("://") else {
        return value.to_string();
    };
    let rest_at = scheme_end + 3;
    let rest = &value[rest_at..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let Some(at) = authority.rfind('@') else {
        return value.to_string();
    };
    let Some(colon) = authority[..at].find(':') else {
        return value.to_string();
    };
    format!(
        "{}{MASK}{}",
        &value[..rest_at + colon + 1],
        &value[rest_at + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            mask_url_password("postgres://app:s3cr:et@db:5432/app?sslmode=require"),
            "postgres://app:****@db:5432/app?sslmode=require"
        );
        assert_eq!(
            mask_url_password("redis://:pw@127.0.0.1:6379/0"),
            "redis://:****@127.0.0.1:6379/0"
        );
        assert_eq!(
            mask_url_password("redis://user@host/0"),
            "redis://user@host/0"
        );
        assert_eq!(
            mask_url_password("sqlite://session-server.db?mode=rwc"),
            "sqlite://session-server.db?mode=rwc"
        );
        assert_eq!(
            mask_url_password("sqlite:///tmp/a@b:c/x.db"),
            "sqlite:///tmp/a@b:c/x.db"
        );
        assert_eq!(mask_url_password("plain"), "plain");
    }

    #[test]
    fn near_keys_are_suggested() {
        let known = ["session_idle_timeout".to_string(), "bind".to_string()];
        assert_eq!(
            closest("session_idle_timout", known.iter()).as_deref(),
            Some("session_idle_timeout")
        );
        assert_eq!(
            closest("SESSION_IDLE_TIMEOUT", known.iter()).as_deref(),
            Some("session_idle_timeout")
        );
        assert_eq!(closest("colour", known.iter()), None);
    }

    #[test]
    fn names_match_whole_words() {
        assert!(names("SESSION_CACHE=redis needs REDIS_URL", "REDIS_URL"));
        assert!(!names("SESSION_CACHE_TTL must be", "SESSION_CACHE"));
    }

    #[test]
    fn values_print_as_toml_that_reads_back() {
        assert_eq!(toml_scalar("100"), "100");
        assert_eq!(toml_scalar("007"), "\"007\"");
        assert_eq!(toml_scalar("true"), "true");
        assert_eq!(toml_scalar("7d"), "\"7d\"");
        for tricky in ["a\"b", "back\\slash", "it's", "new\nline", "#hash"] {
            let table: toml::Table = format!("x = {}", toml_scalar(tricky)).parse().unwrap();
            assert_eq!(table["x"].as_str(), Some(tricky));
        }
    }
}
