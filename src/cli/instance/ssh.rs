//! `amivm ssh I [-- SSH ARGS]`: log in to a running instance with the system `ssh`, through the
//! host port forwarded to its port 22, with its key pair's private key and its image's user.

use super::super::output::open_store;
use super::super::GlobalOpts;
use crate::instance::ssh::{self, SshRequest, KNOWN_HOSTS};
use crate::instance::{record, InstanceError};
use clap::Args;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// The program run: OpenSSH's client (Debian package openssh-client), found on PATH.
const SSH_PROGRAM: &str = "ssh";

#[derive(Debug, Args)]
pub struct SshArgs {
    /// Instance id or name.
    pub instance: String,
    /// The user to log in as. Default: the image's DefaultUser (`image show`), e.g. admin for
    /// Debian; else ssh's own default.
    #[arg(long, short = 'l', value_name = "USER")]
    pub user: Option<String>,
    /// The private key to use. Default: the one recorded for the instance's key pair
    /// (`key-pair create --key-file`, `key-pair import`); else ssh's own defaults.
    #[arg(short = 'i', long = "identity", value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// After `--`: more ssh options, then the command to run on the instance.
    #[arg(last = true, value_name = "SSH ARGS")]
    pub args: Vec<OsString>,
}

/// Replace this process with `ssh` (whose exit status becomes amivm's); returns only when
/// amivm cannot tell where to connect, or ssh could not be started.
pub fn run(a: SshArgs, g: &GlobalOpts) -> anyhow::Result<i32> {
    let (store, caller) = open_store(g)?;
    let inst = record::resolve(&store, &caller, &a.instance)?;
    let key_pair_file = match &inst.key_name {
        Some(name) if a.identity.is_none() => store
            .key_pair(&caller, name)
            .ok()
            .and_then(|k| k.private_key_file),
        _ => None,
    };
    let known_hosts = inst.dir(&store)?.file_path(KNOWN_HOSTS)?;
    let req = SshRequest {
        user: a.user,
        identity: a.identity,
        key_pair_file,
        args: a.args,
    };
    let args = ssh::ssh_args(&inst, &req, &known_hosts)?;
    let err = std::process::Command::new(SSH_PROGRAM).args(&args).exec();
    Err(InstanceError::Io {
        what: format!("cannot run {SSH_PROGRAM} (Debian package openssh-client)"),
        source: err,
    }
    .into())
}
