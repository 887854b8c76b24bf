//! The `meridian` command: CLI parsing, logging, runtime and exit codes
//! (0 ok, 1 runtime failure, 2 bad config).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use meridian::config::Config;
use meridian::{app, rlimit, snapshot};

/// mimalloc instead of glibc's malloc: a snapshot of a large config is built while the old one
/// lives, and glibc's heaps stayed fragmented after it was freed (10,000 services and 100,000
/// records: 708 MiB after ten reloads, `malloc_trim` included); mimalloc frees whole pages
/// back to the system (issue 18, bench/README.md "Size").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The environment variables every subcommand reads, for `--help`.
macro_rules! env_help {
    () => {
        "Environment:
  MERIDIAN_CONFIG      the config file, instead of --config
  MERIDIAN_LOG         log filter: info (default), debug, warn, meridian=debug, ...
  MERIDIAN_LOG_FORMAT  text (default) or json, instead of --log-format"
    };
}

/// Signals, for `--help`.
macro_rules! signals_help {
    () => {
        "Signals (serve):
  SIGHUP           reload the config, zone files and GeoIP database (as POST /reload and the
                   file watcher do); a broken config is refused and the old one keeps serving
  SIGTERM, SIGINT  stop: DNS first, then health probes, then the admin port
The other subcommands stop at once on SIGINT or SIGTERM; they change nothing.

Exit status: 0 ok, 1 runtime failure, 2 bad config."
    };
}

/// Meridian: a global traffic manager (authoritative DNS answering with the nearest healthy
/// endpoint).
#[derive(Debug, Parser)]
#[command(version, about, after_help = concat!(
    "Examples:
  meridian check --config zones/meridian.toml
  meridian serve --config zones/meridian.toml
  dig @127.0.0.1 -p 5353 +norec api.example.net +subnet=198.51.100.0/24

",
    env_help!(),
    "

",
    signals_help!()
))]
struct Cli {
    /// Log lines as text (default) or as one JSON object per line, for log shippers.
    #[arg(long, global = true, env = "MERIDIAN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// `2026-12-01T15:00:00.123Z  INFO listening dns/udp 127.0.0.1:5353`.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message`, then the event's own fields.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the server.
    #[command(after_help = concat!(
        "Example:
  meridian serve --config zones/meridian.toml
  MERIDIAN_LOG_FORMAT=json meridian serve --config /etc/meridian/meridian.toml

",
        env_help!(),
        "

",
        signals_help!()
    ))]
    Serve {
        /// The config file.
        #[arg(long, env = "MERIDIAN_CONFIG")]
        config: PathBuf,
    },
    /// Validates the config, zone files and GeoIP database; prints every problem (exit 2).
    #[command(after_help = concat!(
        "Example:
  meridian check --config zones/meridian.toml   # zones/meridian.toml: ok (1 zones, ...)

",
        env_help!(),
        "

",
        signals_help!()
    ))]
    Check {
        /// The config file.
        #[arg(long, env = "MERIDIAN_CONFIG")]
        config: PathBuf,
    },
    /// Shows how a query from a client would be answered, and why.
    #[command(after_help = concat!(
        "Example:
  meridian explain --config zones/meridian.toml --client 198.51.100.7 api.example.net A

",
        env_help!(),
        "

",
        signals_help!()
    ))]
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
    #[command(after_help = concat!(
        "Example:
  meridian geodata build --csv geodata/sample.csv --out geodata/sample.mmdb

",
        env_help!(),
        "

",
        signals_help!()
    ))]
    Geodata {
        #[command(subcommand)]
        command: GeodataCommand,
    },
    /// DNSSEC keys: make one, or print the DS of a configured one.
    Dnssec {
        #[command(subcommand)]
        command: DnssecCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DnssecCommand {
    /// Writes a new signing key (PKCS#8 PEM) and prints its DNSKEY and DS (SHA-256).
    Keygen {
        /// The zone the key signs (`example.net.`).
        #[arg(long)]
        zone: String,
        /// The algorithm: ecdsap256sha256 (13) or ed25519 (15).
        #[arg(long, default_value = "ecdsap256sha256")]
        algorithm: String,
        /// The key file to write (never overwritten); default `K<zone>+<alg>.pem`.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Prints the DNSKEY and DS records of the keys configured for each signed zone (or of
    /// one key file with --key and --zone).
    Ds {
        /// The config file.
        #[arg(long, env = "MERIDIAN_CONFIG")]
        config: Option<PathBuf>,
        /// A key file, instead of the config's keys.
        #[arg(long, requires = "zone")]
        key: Option<PathBuf>,
        /// The zone of --key.
        #[arg(long)]
        zone: Option<String>,
    },
}

fn dnssec(command: DnssecCommand) -> ExitCode {
    use meridian::dnssec;
    match command {
        DnssecCommand::Keygen {
            zone,
            algorithm,
            out,
        } => {
            let Some(alg) = dnssec::Algorithm::from_name(&algorithm) else {
                eprintln!("error: unknown algorithm {algorithm:?}: use ecdsap256sha256 or ed25519");
                return ExitCode::from(2);
            };
            let out = out.unwrap_or_else(|| {
                let name = zone.trim_end_matches('.');
                PathBuf::from(format!("K{name}+{:03}.pem", alg.number()))
            });
            match dnssec::keygen(&zone, alg, &out) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        DnssecCommand::Ds { config, key, zone } => {
            let pairs: Vec<(String, PathBuf)> = match (key, zone, config) {
                (Some(key), Some(zone), _) => vec![(zone, key)],
                (None, zone, Some(config)) => {
                    // The whole check: the keys load as `serve` would load them.
                    let cfg = match snapshot::check(&config) {
                        Ok(s) => s.config.clone(),
                        Err(errors) => {
                            eprintln!("{errors}");
                            return ExitCode::from(2);
                        }
                    };
                    cfg.zones
                        .iter()
                        .filter(|z| {
                            zone.as_ref().is_none_or(|n| {
                                n.trim_end_matches('.')
                                    .eq_ignore_ascii_case(z.origin.trim_end_matches('.'))
                            })
                        })
                        .filter_map(|z| z.dnssec.as_ref().map(|d| (z, d)))
                        .flat_map(|(z, d)| d.keys.iter().map(|k| (z.origin.clone(), k.clone())))
                        .collect()
                }
                _ => {
                    eprintln!("error: give --config (or --key with --zone)");
                    return ExitCode::from(2);
                }
            };
            if pairs.is_empty() {
                eprintln!("error: no signed zone in the config");
                return ExitCode::from(2);
            }
            for (zone, key) in pairs {
                match dnssec::describe(&zone, &key) {
                    Ok(text) => print!("; {}\n{text}", key.display()),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            ExitCode::SUCCESS
        }
    }
}

#[derive(Debug, Subcommand)]
enum GeodataCommand {
    /// Builds a MaxMind-format database from a CSV of network,latitude,longitude,country,continent.
    #[command(after_help = concat!(
        "Example:
  meridian geodata build --csv geodata/sample.csv --out geodata/sample.mmdb

",
        env_help!(),
        "

",
        signals_help!()
    ))]
    Build {
        /// The CSV file.
        #[arg(long)]
        csv: PathBuf,
        /// The database to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Starts logging to standard error. JSON lines carry stable field names (a contract, in
/// docs/DESIGN.md): `timestamp` (RFC 3339, UTC), `level` (`INFO`, `WARN`, ...), `message`,
/// then the event's own fields by name (`address`, `error`, ...).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
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
            let format = cli.log_format;
            init_logging(format);
            // Once logging runs, fatal errors are log lines too (JSON for a shipper).
            let fatal = |text: &str| match format {
                LogFormat::Text => eprintln!("{text}"),
                LogFormat::Json => {
                    for line in text.lines() {
                        tracing::error!(error = line, "cannot serve");
                    }
                }
            };
            let snapshot = match snapshot::load(&config) {
                Ok(s) => s,
                Err(errors) => {
                    fatal(&errors.to_string());
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
                    fatal(&format!("error: cannot start the runtime: {e}"));
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(app::serve(config, snapshot)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.downcast_ref::<app::StartError>().is_some() => {
                    fatal(&format!("error: {e:#}"));
                    ExitCode::from(2)
                }
                Err(e) => {
                    fatal(&format!("error: {e:#}"));
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
        Command::Dnssec { command } => dnssec(command),
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
