//! The admin command line: `users …`, `sessions …` and `cleanup`, run by the same binary
//! directly on `DATABASE_URL` (migrated first, as `serve` does). Like a resolver it parses,
//! calls one service function and prints the result; with `REDIS_URL` set the services
//! invalidate through Redis as a running instance does, so instances with `SESSION_CACHE=redis`
//! or `tiered` see the change on their next request.
//!
//! Exit codes: 0 done; 1 refused (bad usage, unknown user or role, a rule of the service);
//! 2 the database or Redis cannot be reached (worth retrying).

use crate::clock::rfc3339;
use crate::config::Config;
use crate::domain::SessionKind;
use crate::error::{AppError, DisplayChain};
use crate::service::directory::{NewUser, UserChanges};
use crate::service::session_admin::{Revocation, SessionFilter};
use crate::startup::Operator;
use clap::{Args, Subcommand, ValueEnum};
use entity::{session, user};
use serde_json::json;
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

/// Rows per statement when a listing is read page by page.
const PAGE: u64 = 200;

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Create a user. The password is read from standard input when it is not a terminal
    /// (one line, or everything up to the end), else prompted for without echo.
    Create {
        identifier: String,
        /// A role to give, by code (repeat for several).
        #[arg(long = "role", value_name = "CODE")]
        roles: Vec<String>,
        /// Create the user unverified.
        #[arg(long)]
        unverified: bool,
    },
    /// Set a user's password (read like `create`'s) and end all their sessions.
    SetPassword { identifier: String },
    /// List the users.
    List {
        /// One JSON array for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Delete a user and their sessions (never the superadmin).
    Delete { identifier: String },
}

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// List the live sessions, newest first.
    List {
        /// Only this user's sessions: an identifier, or a user id.
        #[arg(long, value_name = "ID|IDENTIFIER")]
        user: Option<String>,
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        /// One JSON array for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Revoke sessions: one, every session of a user, or all.
    Revoke(RevokeTarget),
    /// Count the sessions: live anonymous and authenticated, expired, invalidated.
    Stats {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct RevokeTarget {
    /// The session with this id.
    #[arg(long)]
    id: Option<i64>,
    /// Every session of this user: an identifier, or a user id.
    #[arg(long, value_name = "ID|IDENTIFIER")]
    user: Option<String>,
    /// Every session.
    #[arg(long)]
    all: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Kind {
    Anonymous,
    Authenticated,
}

/// An admin command, from the command line.
#[derive(Debug)]
pub enum AdminCommand {
    Users(UsersCommand),
    Sessions(SessionsCommand),
    Cleanup { json: bool },
}

impl AdminCommand {
    /// Whether the command changes what instances may have cached.
    fn changes_sessions(&self) -> bool {
        matches!(
            self,
            AdminCommand::Users(
                UsersCommand::Create { .. }
                    | UsersCommand::SetPassword { .. }
                    | UsersCommand::Delete { .. }
            ) | AdminCommand::Sessions(SessionsCommand::Revoke(_))
        )
    }
}

/// Why a command failed, and its exit code.
enum Failure {
    /// Exit 1: the command was refused; the message says why.
    Refused(String),
    /// Exit 2: the database or Redis cannot be reached.
    Unreachable(String),
}

impl From<AppError> for Failure {
    fn from(e: AppError) -> Failure {
        match &e {
            AppError::Client(_, message) => Failure::Refused(message.clone()),
            AppError::Unavailable(_) => Failure::Unreachable(e.chain()),
            AppError::Internal(_) => Failure::Refused(e.chain()),
        }
    }
}

type Outcome = Result<(), Failure>;

/// Runs one admin command and says how it went.
pub async fn run(command: AdminCommand, config: Config) -> ExitCode {
    let settle = command.changes_sessions();
    let operator = match Operator::build(config, settle).await {
        Ok(operator) => operator,
        Err(e) => {
            eprintln!("session-server: {}", DisplayChain(&e));
            return ExitCode::from(if e.is_unreachable() { 2 } else { 1 });
        }
    };
    let result = match command {
        AdminCommand::Users(c) => users(&operator, c).await,
        AdminCommand::Sessions(c) => sessions(&operator, c).await,
        AdminCommand::Cleanup { json } => cleanup(&operator, json).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(message)) => {
            eprintln!("session-server: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Unreachable(message)) => {
            eprintln!("session-server: {message}");
            ExitCode::from(2)
        }
    }
}

async fn users(op: &Operator, command: UsersCommand) -> Outcome {
    let directory = &op.services.directory;
    match command {
        UsersCommand::Create {
            identifier,
            roles,
            unverified,
        } => {
            let role_ids = role_ids(op, &roles).await?;
            let password = read_password(true)?;
            let created = directory
                .create_user(
                    &op.caller,
                    NewUser {
                        identifier,
                        password,
                        verified: !unverified,
                        role_ids,
                    },
                    &op.origin,
                )
                .await?;
            println!("created user {} ({})", created.identifier, created.id);
        }
        UsersCommand::SetPassword { identifier } => {
            let found = user_named(op, &identifier).await?;
            let password = read_password(true)?;
            directory
                .update_user(
                    &op.caller,
                    UserChanges {
                        id: found.id,
                        identifier: None,
                        verified: None,
                        password: Some(password),
                    },
                    &op.origin,
                )
                .await?;
            println!(
                "password of {} ({}) changed; their sessions were ended",
                found.identifier, found.id
            );
        }
        UsersCommand::List { json } => {
            let mut out = Listing::new(json, "id\tidentifier\tverified\tcreated\tlast login");
            let mut after = None;
            loop {
                let page = directory.list_users(&op.caller, PAGE, after, false).await?;
                for u in &page.items {
                    out.row(user_json(u), || {
                        format!(
                            "{}\t{}\t{}\t{}\t{}",
                            u.id,
                            u.identifier,
                            u.verified,
                            rfc3339(u.created_at),
                            u.last_login_at.map(rfc3339).unwrap_or_else(|| "-".into())
                        )
                    });
                }
                after = page.items.last().map(|u| u.id);
                if !page.has_next || after.is_none() {
                    break;
                }
            }
            out.finish();
        }
        UsersCommand::Delete { identifier } => {
            let found = user_named(op, &identifier).await?;
            if !directory
                .delete_user(&op.caller, found.id, &op.origin)
                .await?
            {
                return Err(Failure::Refused(format!("no user {identifier}")));
            }
            println!("deleted user {} ({})", found.identifier, found.id);
        }
    }
    Ok(())
}

async fn sessions(op: &Operator, command: SessionsCommand) -> Outcome {
    let admin = &op.services.admin;
    match command {
        SessionsCommand::List { user, kind, json } => {
            let user_id = match &user {
                Some(u) => Some(user_by_id_or_identifier(op, u).await?.id),
                None => None,
            };
            let filter = SessionFilter {
                user_id,
                kind: kind.map(|k| match k {
                    Kind::Anonymous => SessionKind::Anonymous,
                    Kind::Authenticated => SessionKind::Authenticated,
                }),
                ..SessionFilter::default()
            };
            let lifetimes = *op.services.sessions.lifetimes();
            let mut out = Listing::new(
                json,
                "id\tkind\tuser\tchannel\taddress\tcreated\tlast active\texpires\tuser agent",
            );
            let mut after = None;
            loop {
                let page = admin
                    .list_sessions(&op.caller, &filter, PAGE, after, false)
                    .await?;
                for s in &page.items {
                    let expires = lifetimes.expires_at(s.last_active_at, s.absolute_expires_at);
                    out.row(session_json(s, expires), || {
                        format!(
                            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                            s.id,
                            s.kind,
                            s.user_id.map_or("-".into(), |id| id.to_string()),
                            s.active_channel_id.map_or("-".into(), |id| id.to_string()),
                            s.ip_address.as_deref().unwrap_or("-"),
                            rfc3339(s.created_at),
                            rfc3339(s.last_active_at),
                            rfc3339(expires),
                            s.user_agent.as_deref().unwrap_or("-")
                        )
                    });
                }
                after = page.items.last().map(|s| s.id);
                if !page.has_next || after.is_none() {
                    break;
                }
            }
            out.finish();
        }
        SessionsCommand::Revoke(target) => {
            let what = match (target.id, &target.user, target.all) {
                (Some(id), _, _) => Revocation::Session(id),
                (_, Some(u), _) => Revocation::User(user_by_id_or_identifier(op, u).await?.id),
                _ => Revocation::All,
            };
            let revoked = admin.revoke_as(&op.caller, what, &op.origin).await?;
            if let (Revocation::Session(id), 0) = (what, revoked) {
                return Err(Failure::Refused(format!("no live session {id}")));
            }
            println!("revoked {revoked} live session(s)");
        }
        SessionsCommand::Stats { json } => {
            let (anonymous, authenticated, expired, invalidated) =
                admin.session_stats(&op.caller).await?;
            if json {
                println!(
                    "{}",
                    json!({
                        "anonymous": anonymous,
                        "authenticated": authenticated,
                        "expired": expired,
                        "invalidated": invalidated,
                    })
                );
            } else {
                println!("anonymous\t{anonymous}");
                println!("authenticated\t{authenticated}");
                println!("expired\t{expired}");
                println!("invalidated\t{invalidated}");
            }
        }
    }
    Ok(())
}

async fn cleanup(op: &Operator, json: bool) -> Outcome {
    let deleted = op.services.clean_up().await?;
    if json {
        println!("{}", json!({ "deleted": deleted }));
    } else {
        println!("deleted {deleted} expired or invalidated session(s)");
    }
    Ok(())
}

/// A user by identifier (normalized as logins are).
async fn user_named(op: &Operator, identifier: &str) -> Result<user::Model, Failure> {
    op.services
        .directory
        .user_by_identifier(identifier)
        .await?
        .ok_or_else(|| Failure::Refused(format!("no user {identifier}")))
}

/// A user by identifier, or else by id when the text is a number.
async fn user_by_id_or_identifier(op: &Operator, text: &str) -> Result<user::Model, Failure> {
    if let Some(found) = op.services.directory.user_by_identifier(text).await? {
        return Ok(found);
    }
    if let Ok(id) = text.trim().parse::<i64>() {
        if let Some(found) = op.services.directory.user_by_id(id).await? {
            return Ok(found);
        }
    }
    Err(Failure::Refused(format!("no user {text}")))
}

/// The ids of roles given by code; an unknown code is refused with the known ones.
async fn role_ids(op: &Operator, codes: &[String]) -> Result<Vec<i64>, Failure> {
    if codes.is_empty() {
        return Ok(Vec::new());
    }
    let roles = op.services.directory.list_roles(&op.caller).await?;
    codes
        .iter()
        .map(|code| {
            roles
                .iter()
                .find(|r| r.code == code.trim())
                .map(|r| r.id)
                .ok_or_else(|| {
                    let known: Vec<&str> = roles.iter().map(|r| r.code.as_str()).collect();
                    Failure::Refused(format!("no role {code} (roles: {})", known.join(", ")))
                })
        })
        .collect()
}

/// Longest password read from standard input (argon2 takes any length; this only bounds what
/// a stray pipe can make us hold).
const MAX_PASSWORD_BYTES: u64 = 4096;

/// The new password: from standard input when it is not a terminal (the first line; a
/// trailing newline is not part of it), else prompted for twice without echo. Never from an
/// argument, where other users could read it in the process list.
fn read_password(confirm: bool) -> Result<String, Failure> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let first = rpassword::prompt_password("New password: ")
            .map_err(|e| Failure::Refused(format!("cannot read the password: {e}")))?;
        if confirm {
            let again = rpassword::prompt_password("Repeat it: ")
                .map_err(|e| Failure::Refused(format!("cannot read the password: {e}")))?;
            if again != first {
                return Err(Failure::Refused("the passwords differ".into()));
            }
        }
        return Ok(first);
    }
    let mut raw = Vec::new();
    stdin
        .lock()
        .take(MAX_PASSWORD_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| {
            Failure::Refused(format!("cannot read the password from standard input: {e}"))
        })?;
    if raw.len() as u64 > MAX_PASSWORD_BYTES {
        return Err(Failure::Refused(format!(
            "the password on standard input is longer than {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    let text = String::from_utf8(raw)
        .map_err(|_| Failure::Refused("the password on standard input is not UTF-8".into()))?;
    let line = text.split('\n').next().unwrap_or("");
    let password = line.strip_suffix('\r').unwrap_or(line);
    if password.is_empty() {
        return Err(Failure::Refused(
            "no password on standard input (pipe it in, or run on a terminal to be prompted)"
                .into(),
        ));
    }
    Ok(password.to_string())
}

fn user_json(u: &user::Model) -> serde_json::Value {
    json!({
        "id": u.id,
        "identifier": u.identifier,
        "verified": u.verified,
        "createdAt": rfc3339(u.created_at),
        "lastLoginAt": u.last_login_at.map(rfc3339),
    })
}

fn session_json(s: &session::Model, expires_at: i64) -> serde_json::Value {
    json!({
        "id": s.id,
        "kind": s.kind,
        "userId": s.user_id,
        "activeChannelId": s.active_channel_id,
        "activeOrderId": s.active_order_id,
        "ipAddress": s.ip_address,
        "userAgent": s.user_agent,
        "createdAt": rfc3339(s.created_at),
        "lastActiveAt": rfc3339(s.last_active_at),
        "expiresAt": rfc3339(expires_at),
    })
}

/// A listing printed as it is read: tab-separated lines under a header, or one JSON array.
struct Listing {
    json: bool,
    rows: u64,
    out: std::io::StdoutLock<'static>,
}

impl Listing {
    fn new(json: bool, header: &str) -> Listing {
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) only ends the output early.
        let _ = if json {
            write!(out, "[")
        } else {
            writeln!(out, "{header}")
        };
        Listing { json, rows: 0, out }
    }

    fn row(&mut self, value: serde_json::Value, text: impl FnOnce() -> String) {
        let _ = if self.json {
            let sep = if self.rows == 0 { "\n" } else { ",\n" };
            write!(self.out, "{sep}{value}")
        } else {
            writeln!(self.out, "{}", text())
        };
        self.rows += 1;
    }

    fn finish(mut self) {
        if self.json {
            let _ = writeln!(self.out, "\n]");
        }
        let _ = self.out.flush();
    }
}
