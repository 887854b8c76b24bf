//! The `meridian` command: CLI parsing, logging, runtime and exit codes
//! (0 ok, 1 runtime failure, 2 bad config).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use meridian::config::Config;
use meridian::{app, rlimit, snapshot};

/// Meridian: a global traffic manager (authoritative DNS answering with the nearest healthy
/// endpoint).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the server.
    Serve {
        /// The config file.
        #[arg(long, env = "MERIDIAN_CONFIG")]
        config: PathBuf,
    },
    /// Validates the config, zone files and GeoIP database; prints every problem (exit 2).
    Check {
        /// The config file.
        #[arg(long, env = "MERIDIAN_CONFIG")]
        config: PathBuf,
    },
    /// Shows how a query from a client would be answered, and why.
    Explain {
        /// The config file.
        #[arg(long, env = "MERIDIAN_CONFIG")]
        config: PathBuf,
        /// The client's address (or the ECS subnet address).
        #[arg(long)]
        client: IpAddr,
        /// The name asked for.
        name: String,
        /// The type asked for: A or AAAA.
        #[arg(default_value = "A")]
        qtype: String,
    },
    /// Talks to running instances (one, or the whole fleet): status, drain, undrain, reload,
    /// explain. Exit 1 when any instance failed.
    Ctl(meridian::ctl::CtlArgs),
    /// GeoIP sample data.
    Geodata {
        #[command(subcommand)]
        command: GeodataCommand,
    },
}

#[derive(Debug, Subcommand)]
enum GeodataCommand {
    /// Builds a MaxMind-format database from a CSV of network,latitude,longitude,country,continent.
    Build {
        /// The CSV file.
        #[arg(long)]
        csv: PathBuf,
        /// The database to write.
        #[arg(long)]
        out: PathBuf,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// UDP sockets per listen address, as `serve` binds them.
fn udp_workers(config: &Config) -> usize {
    config
        .server
        .udp_workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Raises the soft open-file limit to what `config` needs (up to the hard limit) and logs both;
/// warns when the hard limit is too low for `tcp_max_connections` (issue 9).
fn raise_file_limit(config: &Config) {
    let needed = rlimit::needed(config, udp_workers(config));
    match rlimit::raise(needed) {
        Ok((before, after)) => {
            tracing::info!(
                soft = after.soft,
                hard = after.hard,
                previous_soft = before.soft,
                needed,
                "open file limit"
            );
            if let Some(w) = rlimit::shortfall(config, needed, after) {
                tracing::warn!("{w}");
            }
        }
        Err(e) => tracing::warn!(error = %e, needed, "cannot read or raise the open file limit"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match snapshot::check(&config) {
            Ok(s) => {
                for w in s.config.warnings() {
                    eprintln!("warning: {w}");
                }
                // The limit of this process: the service's may differ (systemd LimitNOFILE=).
                let needed = rlimit::needed(&s.config, udp_workers(&s.config));
                if let Ok(limit) = rlimit::current()
                    && let Some(w) = rlimit::shortfall(&s.config, needed, limit)
                {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: ok ({} zones, {} services, {} regions, {} checks)",
                    config.display(),
                    s.config.zones.len(),
                    s.config.services.len(),
                    s.config.regions.len(),
                    s.config.checks.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{} problem(s) found", errors.0.len());
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => {
            init_logging();
            let snapshot = match snapshot::load(&config) {
                Ok(s) => s,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            };
            raise_file_limit(&snapshot.config);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(app::serve(config, snapshot)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.downcast_ref::<app::StartError>().is_some() => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Explain {
            config,
            client,
            name,
            qtype,
        } => match snapshot::explain(&config, client, &name, &qtype) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(snapshot::ExplainError::Config(errors)) => {
                eprintln!("{errors}");
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Command::Ctl(args) => ExitCode::from(meridian::ctl::run(args)),
        Command::Geodata {
            command: GeodataCommand::Build { csv, out },
        } => match meridian::geo::build_database(&csv, &out) {
            Ok(report) => {
                println!(
                    "{}: {} networks ({} IPv4, {} IPv6), {} bytes",
                    out.display(),
                    report.networks,
                    report.ipv4_networks,
                    report.ipv6_networks,
                    report.bytes
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
