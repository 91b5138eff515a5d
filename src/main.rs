//! `smsvoice` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use smsvoice::config::{Config, EMBEDDED_DEFAULT};
use smsvoice::file_mode::{self, Input, EMBEDDED_SAMPLES};

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
    },
    /// Print the embedded default configuration.
    DefaultConfig,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::DefaultConfig => {
            print!("{EMBEDDED_DEFAULT}");
            ExitCode::SUCCESS
        }
        Command::Process {
            config,
            inputs,
            out,
        } => {
            let cfg = match &config {
                Some(p) => Config::load(p),
                None => Config::from_toml(EMBEDDED_DEFAULT, "embedded default config"),
            };
            let cfg = match cfg {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("smsvoice: {e}");
                    return ExitCode::from(2);
                }
            };
            let inputs: Vec<Input> = if inputs.is_empty() {
                EMBEDDED_SAMPLES
                    .iter()
                    .map(|(name, bytes)| Input::Embedded(name, bytes))
                    .collect()
            } else {
                inputs.into_iter().map(Input::Path).collect()
            };
            match file_mode::run(&cfg, &inputs, &out) {
                Ok(summary) => {
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
