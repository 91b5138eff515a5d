//! `smsvoice` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use smsvoice::config::{Config, TEMPLATE};

/// mimalloc for every Rust allocation: the core allocates a few small
/// strings per event and frees them when its outputs are written, and the
/// system allocator's share of the core's time was 15% (BENCHMARKS.md).
/// librdkafka's own allocations stay with the C library's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use smsvoice::file_mode::{self, ArchiveTarget, Input, EMBEDDED_SAMPLES};

/// Opt-out lists, exact monthly spend, spend alarms and enriched events for
/// AWS End User Messaging SMS, MMS and voice events.
#[derive(Parser)]
#[command(name = "smsvoice", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Process JSON files (any envelope, JSON lines or concatenated) and write
    /// the outputs into a directory. Without --input, processes the sample
    /// payloads bundled in the binary.
    Process {
        /// TOML configuration; the embedded default when absent.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Input file or directory (its files, sorted by name); repeatable, read in order.
        #[arg(long = "input")]
        inputs: Vec<PathBuf>,
        /// Output directory (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Parquet archive location: a directory or s3://bucket/prefix
        /// (default: `[archive] uri`, else OUT/archive).
        #[arg(long, value_name = "URI")]
        archive: Option<String>,
        /// Do not write the Parquet archive.
        #[arg(long, conflicts_with = "archive")]
        no_archive: bool,
    },
    /// Run against Kafka (the `[kafka]` section of the configuration) until
    /// SIGTERM/SIGINT: consume the input topics, publish the enriched,
    /// opt-out, spend, alarm, reply and dead-letter topics, archive to
    /// `[archive] uri` when set.
    ///
    /// Security (SASL_SSL, SSL) is set in `[kafka.properties]`
    /// (`security.protocol`, `sasl.mechanism`, `sasl.username`,
    /// `sasl.password`, `ssl.ca.location`). An unreachable broker, timeouts,
    /// throttling and S3 5xx are retried (the failed operation in place,
    /// then the stage, forever); an error retrying cannot fix stops the
    /// process with one `smsvoice run: fatal: ...` line on stderr.
    ///
    /// Exit codes: 0 stopped by SIGTERM/SIGINT; 1 any other error; 2 the
    /// configuration (file or `SMSVOICE_*` environment) could not be loaded
    /// or fails the checks of `check-config`; 3 fatal Kafka error
    /// (authentication, TLS trust, authorization, a producer fenced by
    /// another process with the same instance id, a fatal librdkafka error,
    /// a configuration librdkafka rejects); 4 the archive store refuses this
    /// process (missing or rejected S3 credentials, access denied, no such
    /// bucket); 5 an internal record (spend partial, spend state, opt-out
    /// change) is unreadable or written by a newer smsvoice: it is never
    /// skipped.
    Run {
        /// TOML configuration with a `[kafka]` section. Every key can be
        /// overridden by an environment variable (`SMSVOICE_KAFKA__...`,
        /// see `check-config`).
        #[arg(long)]
        config: PathBuf,
        /// Override `kafka.bootstrap_servers`.
        #[arg(long, value_name = "HOST:PORT,...")]
        bootstrap_servers: Option<String>,
        /// Override `[archive] uri` (a directory or s3://bucket/prefix).
        #[arg(long, value_name = "URI")]
        archive: Option<String>,
    },
    /// One-command demo of the Kafka runtime with nothing installed: starts
    /// an in-process Kafka cluster (librdkafka's mock cluster on 127.0.0.1),
    /// produces a generated stream (SMS/MMS/voice/RCS, multi-event messages
    /// spread over partitions, duplicates, late and corrected receipts,
    /// STOP/START/HELP, malformed records) while the real runtime consumes
    /// it, archives to OUT/archive and prints what happened, compared with
    /// the generator's ground truth. Exit status 0 when every comparison
    /// passed, 1 when one failed (named on stderr) or the run failed, 2 for
    /// an invalid --config.
    Demo {
        /// Messages to generate (about 2.2 records each).
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Generator seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Output directory (the Parquet archive goes to OUT/archive).
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
        /// Run with Kafka transactions (exactly_once = true).
        #[arg(long)]
        exactly_once: bool,
        /// Spend and opt-out rules to run with instead of the embedded
        /// default and the demo's alarms ([kafka] and [archive] are the
        /// demo's own). The ground truth assumes the embedded default's
        /// pricing and opt-out lists: other rules fail those comparisons.
        #[arg(long)]
        config: Option<PathBuf>,
        /// After the report, keep serving the demo's state over HTTP
        /// (`[http] listen` of --config, default 127.0.0.1:9464: health,
        /// readiness, metrics, the opt-out and spend API) until interrupted;
        /// the URLs to try are printed.
        #[arg(long)]
        serve: bool,
    },
    /// Print a configuration template for `smsvoice run`: a `[kafka]`
    /// section whose broker address (`bootstrap_servers = "localhost:9092"`)
    /// is the one thing to fill in, no alarms (commented examples), every
    /// section documented. `run` and `check-config` accept it as it is.
    DefaultConfig,
    /// Load the configuration exactly as `smsvoice run` does (the file, then
    /// the `SMSVOICE_*` environment variables, then the checks `run` makes
    /// before it connects to anything), print the effective configuration
    /// as TOML with secrets masked as "***", and exit 0. On an error, print
    /// one line naming the key (or the variable) on stderr and exit 2.
    ///
    /// Environment: `SMSVOICE_` + the key's path in upper case, segments
    /// joined by `__` (`SMSVOICE_KAFKA__BOOTSTRAP_SERVERS`,
    /// `SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD` for `"sasl.password"`);
    /// `..._FILE=/path` reads the value from a file. README.md, "Environment
    /// variables and secret files".
    CheckConfig {
        /// TOML configuration (`-` reads it from stdin); the embedded
        /// default when absent.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run librdkafka's mock Kafka cluster on 127.0.0.1 for tests and demos
    /// (~5 MB kept per partition; transaction calls are accepted but aborted
    /// records stay visible). Prints `bootstrap=<servers>`, then runs until
    /// SIGTERM/SIGINT or stdin closes.
    MockCluster {
        /// Number of brokers.
        #[arg(long, default_value_t = 1)]
        brokers: i32,
        /// Also write the `bootstrap=<servers>` line to this file.
        #[arg(long)]
        port_file: Option<PathBuf>,
        /// Topic to create, `NAME:PARTITIONS` (or `NAME`: 4 partitions); repeatable.
        #[arg(long = "topic", value_name = "NAME:PARTITIONS")]
        topics: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run`, `process` and `demo` log as the `[log]` of their configuration
    // says once it is loaded (`smsvoice::log::init`); the other commands
    // log warnings and errors as text.
    if !matches!(
        cli.command,
        Command::Run { .. } | Command::Process { .. } | Command::Demo { .. }
    ) {
        smsvoice::log::init_plain();
    }
    match cli.command {
        Command::Run {
            config,
            bootstrap_servers,
            archive,
        } => {
            let mut cfg = match Config::load_with_environment(Some(&config)) {
                Ok(c) => c.config,
                Err(e) => {
                    eprintln!("smsvoice: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(b) = bootstrap_servers {
                match cfg.kafka.as_mut() {
                    Some(k) => k.bootstrap_servers = b,
                    None => {
                        eprintln!("smsvoice: {}: no [kafka] section", config.display());
                        return ExitCode::from(2);
                    }
                }
            }
            if archive.is_some() {
                cfg.archive.uri = archive;
            }
            // What `check-config` checks, before anything connects: exit 2.
            if let Err(e) = cfg.check_for_run() {
                eprintln!("smsvoice: invalid config {}: {e}", config.display());
                return ExitCode::from(2);
            }
            smsvoice::log::init(&cfg.log);
            match smsvoice::runtime::run_until_signal(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                // One line, and the exit code of its class
                // (`smsvoice::runtime::Fatal::exit_code`: 3 Kafka, 4 archive,
                // 5 internal record); 1 is any other error, 2 a
                // configuration file that could not be loaded.
                Err(smsvoice::runtime::RuntimeError::Fatal(f)) => {
                    eprintln!("smsvoice run: fatal: {f}");
                    ExitCode::from(f.exit_code())
                }
                Err(e) => {
                    eprintln!("smsvoice run: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo {
            messages,
            seed,
            out,
            exactly_once,
            config,
            serve,
        } => {
            // The `[log]` of --config (and SMSVOICE_LOG__*), warnings only
            // unless it sets a level: the demo's output is its report.
            match smsvoice::log::LogConfig::for_demo(config.as_deref(), std::env::vars_os()) {
                Ok(log) => smsvoice::log::init(&log),
                Err(e) => {
                    eprintln!("smsvoice demo: {e}");
                    return ExitCode::from(2);
                }
            }
            let opts = smsvoice::demo::DemoOptions {
                messages,
                seed,
                out,
                exactly_once,
                config,
                serve,
            };
            match smsvoice::demo::run_serving(&opts) {
                Ok((report, serving)) => {
                    print!("{}", report.text);
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                    let served = serving.map(|s| s.wait());
                    if !report.failed.is_empty() {
                        eprintln!(
                            "smsvoice demo: differs from the generator's ground truth: {}",
                            report.failed.join(", ")
                        );
                        ExitCode::from(1)
                    } else if let Some(Err(e)) = served {
                        eprintln!("smsvoice demo: serving: {e}");
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e @ smsvoice::demo::DemoError::Config(_)) => {
                    eprintln!("smsvoice demo: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("smsvoice demo: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::DefaultConfig => {
            print!("{TEMPLATE}");
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => check_config(config.as_deref()),
        Command::MockCluster {
            brokers,
            port_file,
            topics,
        } => match smsvoice::kafka::mock::run_mock_cluster_command(
            brokers,
            port_file.as_deref(),
            &topics,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("smsvoice mock-cluster: {e}");
                ExitCode::from(1)
            }
        },
        Command::Process {
            config,
            inputs,
            out,
            archive,
            no_archive,
        } => {
            let cfg = match Config::load_with_environment(config.as_deref()) {
                Ok(c) => c.config,
                Err(e) => {
                    eprintln!("smsvoice: {e}");
                    return ExitCode::from(2);
                }
            };
            smsvoice::log::init(&cfg.log);
            let inputs: Vec<Input> = if inputs.is_empty() {
                EMBEDDED_SAMPLES
                    .iter()
                    .map(|(name, bytes)| Input::Embedded(name, bytes))
                    .collect()
            } else {
                inputs.into_iter().map(Input::Path).collect()
            };
            let target = match (archive, no_archive) {
                (_, true) => ArchiveTarget::Disabled,
                (Some(uri), false) => ArchiveTarget::Uri(uri),
                (None, false) => ArchiveTarget::Default,
            };
            match file_mode::run_with_archive(&cfg, &inputs, &out, &target) {
                Ok(summary) => {
                    let c = &summary.counters;
                    tracing::info!(
                        files = summary.files,
                        records = c.records,
                        events = c.events,
                        inbound = c.inbound,
                        dead_letters = c.dead_letters,
                        out = %out.display(),
                        "processed"
                    );
                    println!("smsvoice process -> {}", out.display());
                    print!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("smsvoice: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// `smsvoice check-config`: exit 0 and the masked effective configuration on
/// stdout, or exit 2 and one line on stderr.
fn check_config(config: Option<&std::path::Path>) -> ExitCode {
    let loaded = match config {
        Some(p) if p.as_os_str() == "-" => {
            let mut text = String::new();
            match std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
                Ok(_) => Config::layered(&text, "stdin", std::env::vars_os()),
                Err(e) => {
                    eprintln!("smsvoice check-config: cannot read config from stdin: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        other => Config::load_with_environment(other),
    };
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("smsvoice check-config: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = loaded.config.check_for_run() {
        eprintln!(
            "smsvoice check-config: invalid config {}: {e}",
            loaded.origin
        );
        return ExitCode::from(2);
    }
    match loaded.masked_toml() {
        Ok(text) => {
            print!("{text}");
            eprintln!("smsvoice check-config: {}: ok", loaded.origin);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smsvoice check-config: {e}");
            ExitCode::from(2)
        }
    }
}
