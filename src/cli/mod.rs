//! The `amivm` command line: parse with clap, dispatch, map errors to exit codes.
//!
//! This is the only module that uses `anyhow`; everything below it returns typed errors.

mod account;
mod boot;
mod drive;
pub mod exit;
mod image;
mod instance;
mod jail;
mod key_pair;
mod output;
mod region;
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
    /// Log level for amivm's own diagnostics on stderr ($AMIVM_LOG, env_logger syntax, refines it).
    #[arg(long, global = true, value_enum, default_value_t = LogLevel::Warn, value_name = "LEVEL")]
    pub log_level: LogLevel,
}

/// `--log-level`: the levels of the `log` crate, and `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The name, as the command line and env_logger spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
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
    /// Remove chunks and blobs nothing references, and leftover temporary files (with
    /// --region: a region's chunks, blobs and snapshot manifests that no image there names
    /// and no instance launched from there pins).
    Gc(region::GcArgs),
    /// Check the image store itself (`store verify`).
    #[command(subcommand)]
    Store(image::StoreCmd),
    #[command(flatten)]
    Instance(instance::InstanceCmd),
    /// Serve the EC2 API (Query protocol, SigV4) for the AWS CLI, boto3 and EC2 tools.
    Serve(serve::ServeArgs),
    /// Access keys for `amivm serve`.
    #[command(subcommand)]
    Account(account::AccountCmd),
    /// SSH key pairs (EC2 key pairs) for `run --key-name`.
    #[command(subcommand)]
    KeyPair(key_pair::KeyPairCmd),
    /// Regions: S3 buckets that hold images (`image push/pull --region`).
    #[command(subcommand)]
    Region(region::RegionCmd),
}

/// Parse the command line, run it, and return the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return 0;
            }
            let args: Vec<String> = std::env::args().skip(1).collect();
            eprintln!("amivm: error: {}", usage_error_line(&e, &args));
            return exit::AMIVM_FAILED;
        }
    };
    init_logging(cli.global.log_level.as_str());
    let result = match cli.command {
        Command::Boot(args) => boot::run(args),
        Command::Image(cmd) => image::run_image(cmd, &cli.global),
        Command::Snapshot(cmd) => image::run_snapshot(cmd, &cli.global),
        Command::Gc(a) if a.region.is_some() => region::run_gc(a, &cli.global),
        Command::Gc(_) => image::run_gc(&cli.global),
        Command::Store(cmd) => image::run_store(cmd, &cli.global),
        Command::Instance(cmd) => instance::run(cmd, &cli.global),
        Command::Serve(args) => serve::run(args, &cli.global),
        Command::Account(cmd) => account::run(cmd, &cli.global),
        Command::KeyPair(cmd) => key_pair::run(cmd, &cli.global),
        Command::Region(cmd) => region::run(cmd, &cli.global),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("amivm: error: {}", one_line(&e));
            exit::AMIVM_FAILED
        }
    }
}

/// A clap usage error on one line: what clap says first, without its `error: ` prefix (an
/// argument list clap puts on the following lines joined in), and the command whose `--help`
/// tells more: `unexpected argument '--foo' found (see amivm boot --help)`.
pub fn usage_error_line(e: &clap::Error, args: &[String]) -> String {
    use clap::error::ErrorKind;
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim_end).skip_while(|l| l.is_empty());
    let what = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        "a command is missing".to_string()
    } else {
        let first = lines.next().unwrap_or("").trim();
        let mut what = first.strip_prefix("error: ").unwrap_or(first).to_string();
        let rest: Vec<&str> = lines.map(str::trim).filter(|l| !l.is_empty()).collect();
        if what.ends_with(':') {
            // "the following required arguments were not provided:" and an indented list.
            let items: Vec<&str> = text
                .lines()
                .skip_while(|l| !l.trim_end().ends_with(':'))
                .skip(1)
                .take_while(|l| l.starts_with(' '))
                .map(str::trim)
                .collect();
            what = format!("{what} {}", items.join(", "));
        }
        for extra in rest {
            if extra.starts_with("[possible values:") {
                what = format!("{what} {extra}");
            } else if let Some(tip) = extra.strip_prefix("tip: ") {
                what = format!("{what}; {tip}");
            }
        }
        what
    };
    format!("{what} (see {} --help)", command_path(args))
}

/// The subcommand path (`amivm image create`) that `args` (without the program name) name,
/// skipping options and their values.
fn command_path(args: &[String]) -> String {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    cmd.build();
    let mut path = vec![cmd.get_name().to_string()];
    let mut words = args.iter();
    while let Some(w) = words.next() {
        if w == "--" {
            break;
        }
        if let Some(opt) = w.strip_prefix("--") {
            let takes_value = !opt.contains('=')
                && cmd
                    .get_arguments()
                    .find(|a| a.get_long() == Some(opt))
                    .is_some_and(|a| a.get_action().takes_values());
            if takes_value {
                words.next();
            }
            continue;
        }
        if let Some(short) = w.strip_prefix('-') {
            let mut chars = short.chars();
            let takes_value = match (chars.next(), chars.next()) {
                (Some(c), None) => cmd
                    .get_arguments()
                    .find(|a| a.get_short() == Some(c))
                    .is_some_and(|a| a.get_action().takes_values()),
                _ => false,
            };
            if takes_value {
                words.next();
            }
            continue;
        }
        match cmd.find_subcommand(w) {
            Some(sub) => {
                path.push(sub.get_name().to_string());
                cmd = sub.clone();
            }
            None => continue,
        }
    }
    path.join(" ")
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
    // Errors quote names, descriptions and manifests from bundles: no raw control characters
    // reach the terminal.
    crate::text::escape_unsafe(&parts.join(": ").replace('\n', " ")).into_owned()
}

fn init_logging(level: &str) {
    let _ = env_logger::Builder::new()
        .parse_filters(level)
        .parse_env("AMIVM_LOG")
        .format_timestamp_millis()
        .try_init();
}
