//! The `amivm` command line: parse with clap, dispatch, map errors to exit codes.
//!
//! This is the only module that uses `anyhow`; everything below it returns typed errors.

mod account;
mod boot;
mod drive;
pub mod exit;
mod image;
mod instance;
mod output;
mod serve;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Boot machine images locally on KVM, the way EC2 boots an AMI.
#[derive(Debug, Parser)]
#[command(name = "amivm", version, about, after_help = exit::EXIT_CODE_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalOpts {
    /// Image store directory (default: $AMIVM_HOME, else $XDG_DATA_HOME/amivm, else ~/.local/share/amivm).
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Act as this 12-digit account (default: $AMIVM_ACCOUNT, else the store's own account).
    #[arg(long, global = true, value_name = "ID")]
    pub account: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Log level for amivm's own diagnostics on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    pub log_level: String,
}

/// How commands print their results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable tables.
    Text,
    /// JSON, for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a kernel directly (low level: no image store).
    Boot(boot::BootArgs),
    /// Manage images (AMIs).
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Inspect snapshots.
    #[command(subcommand)]
    Snapshot(image::SnapshotCmd),
    /// Remove chunks and blobs nothing references, and leftover temporary files.
    Gc,
    #[command(flatten)]
    Instance(instance::InstanceCmd),
    /// Serve the EC2 API (Query protocol, SigV4) for the AWS CLI, boto3 and EC2 tools.
    Serve(serve::ServeArgs),
    /// Access keys for `amivm serve`.
    #[command(subcommand)]
    Account(account::AccountCmd),
}

/// Parse the command line, run it, and return the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => exit::AMIVM_FAILED,
            };
            let _ = e.print();
            return code;
        }
    };
    init_logging(&cli.global.log_level);
    let result = match cli.command {
        Command::Boot(args) => boot::run(args),
        Command::Image(cmd) => image::run_image(cmd, &cli.global),
        Command::Snapshot(cmd) => image::run_snapshot(cmd, &cli.global),
        Command::Gc => image::run_gc(&cli.global),
        Command::Instance(cmd) => instance::run(cmd, &cli.global),
        Command::Serve(args) => serve::run(args, &cli.global),
        Command::Account(cmd) => account::run(cmd, &cli.global),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("amivm: error: {}", one_line(&e));
            exit::AMIVM_FAILED
        }
    }
}

/// An error and its causes on one line: `outer: inner: root`.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}

fn init_logging(level: &str) {
    let _ = env_logger::Builder::new()
        .parse_filters(level)
        .parse_env("AMIVM_LOG")
        .format_timestamp_millis()
        .try_init();
}
