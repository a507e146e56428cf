//! Entry point: parse the command line, then serve, migrate or export the schema.

use migration::{Migrator, MigratorTrait};
use session_server::cli::AdminCommand;
use session_server::config::{Command, Config, LoadError, LogFormat};
use session_server::error::DisplayChain;
use session_server::startup::{connect_database, Application};
use std::process::ExitCode;

// Requests allocate many small, short-lived objects (GraphQL values, headers, JSON); mimalloc
// serves them markedly faster than the system allocator and returns freed memory sooner.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_tracing(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// An admin command: warnings and errors go to standard error, which keeps standard output
/// for the result (`--json`).
async fn admin(command: AdminCommand, config: Config) -> ExitCode {
    use std::io::IsTerminal as _;
    // The bootstrap's default-password warning is the server's business, not each command's.
    let filter = tracing_subscriber::EnvFilter::new("warn,session_server::startup=error");
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    session_server::cli::run(command, config).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

#[tokio::main]
async fn main() -> ExitCode {
    let invocation = match session_server::config::load() {
        Ok(invocation) => invocation,
        Err(LoadError::Usage(e)) => {
            // Help and version exit 0; a usage error exits 1 (2 means "unreachable").
            let _ = e.print();
            return if e.exit_code() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Err(e) => {
            eprintln!("session-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = invocation.config;
    match invocation.command {
        Command::Serve(serve) if serve.print_config => {
            print!("{}", invocation.effective.to_toml());
            ExitCode::SUCCESS
        }
        Command::Serve(_) => {
            init_tracing(&config.log, config.log_format);
            let app = match Application::build(config).await {
                Ok(app) => app,
                Err(e) => {
                    eprintln!("session-server: {}", DisplayChain(&e));
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = app.run_until_stopped(shutdown_signal()).await {
                eprintln!("session-server: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Command::Migrate { database_url } => {
            init_tracing("info", LogFormat::Text);
            let database_url = database_url.unwrap_or(config.database_url);
            let result = async {
                let db =
                    connect_database(&database_url, 2, std::time::Duration::from_secs(10)).await?;
                Migrator::up(&db, None).await
            }
            .await;
            match result {
                Ok(()) => {
                    println!("migrations applied");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("session-server: migration failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Users { command } => admin(AdminCommand::Users(command), config).await,
        Command::Sessions { command } => admin(AdminCommand::Sessions(command), config).await,
        Command::Cleanup { json } => admin(AdminCommand::Cleanup { json }, config).await,
        Command::ExportSchema { output } => {
            let sdl = session_server::graphql::sdl();
            match output {
                Some(path) => match std::fs::write(&path, sdl) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("session-server: cannot write {}: {e}", path.display());
                        ExitCode::FAILURE
                    }
                },
                None => {
                    print!("{sdl}");
                    ExitCode::SUCCESS
                }
            }
        }
    }
}
