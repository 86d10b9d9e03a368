//! Instance commands: `run`, `ps`, `stop`, `start`, `terminate`, `logs`, `create-image` and
//! `instance-types`, plus the hidden `__run-instance` that `--detach` starts in the background.

mod render;
mod run;
mod ssh;

use super::output::{open_store as open, print_json, print_out};
use super::{exit, GlobalOpts, OutputFormat};
use crate::instance::dir::InstanceDir;
use crate::instance::{self, lifecycle, record, types, ShutdownBehavior};
use crate::store::{AccountId, Store};
use clap::{Args, Subcommand};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Subcommand)]
// Parsed once per process: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum InstanceCmd {
    /// Launch an instance of an image (AMI) and run it, by default in the foreground with the
    /// console attached.
    Run(RunArgs),
    /// List instances (all but terminated ones, unless --all).
    Ps {
        /// Include terminated instances.
        #[arg(long, short = 'a')]
        all: bool,
    },
    /// Stop an instance: Ctrl-Alt-Del to the guest, then stop the VM after a grace period of
    /// 10 s (sooner if the guest shuts down).
    Stop {
        /// Instance id or name.
        instance: String,
        /// Skip the grace period: stop the VM at once (volumes still flushed).
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Start a stopped instance again, with the same volumes (in the background, unless
    /// --attach).
    #[command(after_help = exit::EXIT_CODE_HELP)]
    Start(StartArgs),
    /// Terminate an instance: stop it, delete its volumes marked DeleteOnTermination.
    Terminate {
        /// Instance id or name.
        instance: String,
        /// Stop the VM at once, without giving the guest time to shut down.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Print an instance's console log.
    Logs {
        /// Instance id or name.
        instance: String,
        /// Keep printing new output while the instance runs.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Create an image (AMI) from an instance's volumes: incremental snapshots over the ones it
    /// was launched from (only chunks it wrote are stored).
    CreateImage(CreateImageArgs),
    /// Log in to a running instance with the system ssh: through the host port published to its
    /// port 22, with its key pair's private key, as its image's user. Exits with ssh's status
    /// (125 if amivm cannot tell where to connect).
    Ssh(ssh::SshArgs),
    /// List the instance types amivm knows (vCPUs and memory).
    InstanceTypes {
        /// Only this family (t3, m5, c5, ...).
        #[arg(long)]
        family: Option<String>,
    },
    /// Internal: run a pending instance whose run lock is inherited (used by --detach).
    #[command(name = "__run-instance", hide = true)]
    RunInstance(RunInstanceArgs),
}

#[derive(Debug, Args)]
#[command(after_help = exit::EXIT_CODE_HELP)]
pub struct RunArgs {
    /// Image id or unique name.
    pub ami: String,
    /// Instance type: its vCPUs and memory (see `amivm instance-types`).
    #[arg(long, short = 't', default_value = types::DEFAULT_TYPE, value_name = "TYPE")]
    pub instance_type: String,
    /// A name for the instance (usable instead of its id; not shaped like an id, `i-` and hex
    /// digits).
    #[arg(long)]
    pub name: Option<String>,
    /// Add to the image's kernel command line.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub append: Option<String>,
    /// User data served by the metadata service at /latest/user-data (at most 16 KiB, as EC2).
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    /// The metadata service: http-tokens=optional|required[,http-put-response-hop-limit=N].
    #[arg(long, value_name = "OPTIONS")]
    pub metadata_options: Option<String>,
    /// The instance's network: user (rootless, through passt; the default), none, or tap:NAME
    /// (needs CAP_NET_ADMIN). Kept for `start`; see docs/network.md.
    #[arg(long, value_name = "MODE", default_value = "user")]
    pub network: crate::net::NetworkSpec,
    /// Forward a host port to the guest (--network user): [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]
    /// (repeatable; kept for `start`).
    #[arg(long, value_name = "SPEC")]
    pub publish: Vec<crate::net::Publish>,
    /// Stop the instance and exit 124 after this many seconds (at most 3153600000, 100 years).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Succeed (exit 0, VM stopped) as soon as the console output matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub expect: Option<String>,
    /// Delete the instance and its volumes when it stops.
    #[arg(long)]
    pub rm: bool,
    /// What a shutdown from inside the guest does.
    #[arg(long, value_enum, default_value_t = ShutdownBehavior::Stop)]
    pub shutdown_behavior: ShutdownBehavior,
    /// Write this run's console to this file (appended) instead of the instance's own log;
    /// `amivm logs` and later `start`s use the instance's log.
    #[arg(long, value_name = "FILE")]
    pub serial_log: Option<PathBuf>,
    /// Run in the background (console to the instance's log) and print the instance id.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Launch with this key pair of the account's (see `amivm key-pair`): the instance keeps
    /// its name and public key.
    #[arg(long, value_name = "NAME")]
    pub key_name: Option<String>,
    #[command(flatten)]
    pub jail: crate::cli::jail::JailArgs,
    /// Boot an image of this region without downloading it: chunks are fetched (and kept
    /// locally) when the guest first reads them; `start` fetches from it again.
    #[arg(long, value_name = "R")]
    pub region: Option<String>,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Instance id or name.
    pub instance: String,
    /// Run in the foreground with the console attached; exit codes as for `run`.
    #[arg(long)]
    pub attach: bool,
    /// Stop the instance after this many seconds (at most 3153600000, 100 years).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Stop the instance (successfully) once the console matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub expect: Option<String>,
    #[command(flatten)]
    pub jail: crate::cli::jail::JailArgs,
}

#[derive(Debug, Args)]
pub struct CreateImageArgs {
    /// Instance id or name.
    pub instance: String,
    /// Name of the new image.
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Image a running instance as it is (what the guest has flushed), without stopping it.
    #[arg(long)]
    pub no_reboot: bool,
}

#[derive(Debug, Args)]
pub struct RunInstanceArgs {
    pub instance: String,
    /// The inherited descriptor holding the instance's run lock.
    #[arg(long)]
    pub lock_fd: i32,
    #[arg(long)]
    pub timeout: Option<f64>,
    #[arg(long)]
    pub expect: Option<String>,
    /// The instance's first boot (a VM that cannot be built terminates it).
    #[arg(long)]
    pub first_launch: bool,
    /// The console goes to this file (the launch's `--serial-log`).
    #[arg(long)]
    pub serial_log: Option<PathBuf>,
    #[command(flatten)]
    pub jail: crate::cli::jail::JailArgs,
}

/// Run an instance command; returns the process exit code.
pub fn run(cmd: InstanceCmd, g: &GlobalOpts) -> anyhow::Result<i32> {
    let json = g.output == OutputFormat::Json;
    match cmd {
        InstanceCmd::Run(args) => run::run(args, g),
        InstanceCmd::Start(args) => run::start(args, g),
        InstanceCmd::RunInstance(args) => run::run_instance(args, g),
        InstanceCmd::Ssh(args) => ssh::run(args, g),
        InstanceCmd::InstanceTypes { family } => {
            let all = types::all();
            let shown: Vec<_> = all
                .iter()
                .filter(|t| family.as_deref().is_none_or(|f| t.family == f))
                .cloned()
                .collect();
            if let Some(f) = &family {
                if shown.is_empty() {
                    let mut fams: Vec<&str> = all.iter().map(|t| t.family.as_str()).collect();
                    fams.dedup();
                    anyhow::bail!("no instance family '{f}'; families: {}", fams.join(", "));
                }
            }
            if json {
                print_json(&shown)?;
            } else {
                print_out(&render::types_table(&shown))?;
            }
            Ok(exit::GUEST_STOPPED)
        }
        InstanceCmd::Ps { all } => {
            let (store, caller) = open(g)?;
            let list: Vec<_> = record::list(&store, &caller)?
                .into_iter()
                .filter(|i| all || i.state != instance::InstanceState::Terminated)
                .collect();
            if json {
                print_json(
                    &list
                        .iter()
                        .map(|i| render::json(i, &store))
                        .collect::<Vec<_>>(),
                )?;
            } else {
                print_out(&render::ps_table(&list))?;
            }
            Ok(0)
        }
        InstanceCmd::Stop { instance, force } => {
            let (store, caller) = open(g)?;
            let i = lifecycle::stop(&store, &caller, &instance, force)?;
            report_state(&i, &store, json)
        }
        InstanceCmd::Terminate { instance, force } => {
            let (store, caller) = open(g)?;
            let i = lifecycle::terminate(&store, &caller, &instance, force)?;
            report_state(&i, &store, json)
        }
        InstanceCmd::Logs { instance, follow } => {
            let (store, caller) = open(g)?;
            logs(&store, &caller, &instance, follow)
        }
        InstanceCmd::CreateImage(args) => {
            let (store, caller) = open(g)?;
            let inst = record::resolve(&store, &caller, &args.instance)?;
            let (_, report) = instance::create_image::create_image(
                &store,
                &caller,
                &inst,
                &args.name,
                &args.description,
                args.no_reboot,
                &crate::store::NoProgress,
            )?;
            if json {
                print_json(&report)?;
            } else {
                println!("{}", report.image_id);
                if let (Some(r), n) = (&inst.region, report.chunks_fetched) {
                    eprintln!("amivm: {n} chunk(s) of its volumes fetched from region {r} first");
                }
                eprintln!(
                    "amivm: created {} from {}: {} chunk(s) written by the instance hashed, {} new ({} bytes) stored; snapshots {}",
                    report.image_id,
                    inst.instance_id,
                    report.chunks_hashed,
                    report.new_chunks,
                    report.new_bytes,
                    report.snapshot_ids.join(", ")
                );
            }
            Ok(0)
        }
    }
}

fn report_state(i: &instance::Instance, store: &Store, json: bool) -> anyhow::Result<i32> {
    if json {
        print_json(&render::json(i, store))?;
    } else {
        println!("{}  {}", i.instance_id, i.state);
    }
    Ok(0)
}

/// How often `logs --follow` looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

fn open_console_log(dir: &InstanceDir) -> anyhow::Result<Option<std::fs::File>> {
    Ok(crate::instance::launch::open_console_log(dir)?)
}

fn logs(store: &Store, caller: &AccountId, id: &str, follow: bool) -> anyhow::Result<i32> {
    let inst = record::resolve(store, caller, id)?;
    let dir = inst.dir(store)?;
    let mut file = open_console_log(&dir)?;
    if let Some(p) = &inst.serial_log {
        eprintln!(
            "amivm: the console of {}'s first run went to {} (--serial-log); later runs' follow",
            inst.instance_id,
            p.display()
        );
    }
    let mut out = std::io::stdout().lock();
    let mut pos = 0u64;
    let mut buf = Vec::new();
    loop {
        if file.is_none() {
            file = open_console_log(&dir)?;
        }
        if let Some(f) = file.as_mut() {
            f.seek(std::io::SeekFrom::Start(pos))?;
            buf.clear();
            f.read_to_end(&mut buf)?;
            pos += buf.len() as u64;
            out.write_all(&buf)?;
            out.flush()?;
        }
        if !follow {
            return Ok(0);
        }
        let active = record::load(store, caller, &inst.instance_id)
            .map(|i| i.state.is_active())
            .unwrap_or(false);
        if !active && buf.is_empty() {
            return Ok(0);
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}
