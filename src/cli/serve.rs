//! `amivm serve`: the EC2 Query API on a local port.

use super::output::open_store;
use super::GlobalOpts;
use crate::api::server::{self, DEFAULT_LIMITS};
use crate::api::{supervisor::Supervisor, Api, DEFAULT_REGION};
use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::net::SocketAddr;

/// The default port: the one Eucalyptus' EC2-compatible API listened on.
pub const DEFAULT_PORT: u16 = 8773;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on. Loopback by default; any other address is reachable
    /// from other machines over plain HTTP (requests are signed, not encrypted).
    #[arg(long, value_name = "ADDR:PORT", default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    pub listen: SocketAddr,
    /// The region this server is: clients must sign for it (AWS_DEFAULT_REGION / --region).
    #[arg(long, default_value = DEFAULT_REGION)]
    pub region: String,
    /// The network of the instances RunInstances launches: user (rootless, one passt per
    /// instance; the default) or none. Each gets the metadata service on its card.
    #[arg(long, value_name = "MODE", default_value = "user")]
    pub network: crate::net::NetworkSpec,
}

pub fn run(args: ServeArgs, g: &GlobalOpts) -> anyhow::Result<i32> {
    let valid_region = !args.region.is_empty()
        && args.region.len() <= 64
        && args
            .region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid_region {
        anyhow::bail!(
            "--region '{}': use lowercase letters, digits and '-' (like us-east-1)",
            args.region
        );
    }
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "amivm: warning: listening on {}, reachable from other machines; requests are \
             authenticated (SigV4) but travel unencrypted",
            args.listen
        );
    }
    if let crate::net::NetworkSpec::Tap(_) = args.network {
        anyhow::bail!("--network tap:NAME cannot serve several instances: use user or none");
    }
    // passt missing: one line now, not at every RunInstances.
    crate::net::open::check(&args.network, &[])?;
    let (store, _caller) = open_store(g)?;
    let keys = store.list_access_keys(None)?.len();
    let api = Api {
        store,
        region: args.region.clone(),
        endpoint: args.listen.to_string(),
        exe: std::env::current_exe().context("cannot find the amivm executable")?,
        log_level: g.log_level.as_str().to_string(),
        supervisor: Supervisor::default(),
        network: args.network,
        instances: Default::default(),
    };
    server::serve(api, args.listen, DEFAULT_LIMITS, |addr| {
        // The URL first on stdout (scripts and tests read it when the port was 0).
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "http://{addr}");
        let _ = out.flush();
        eprintln!(
            "amivm: EC2 API on http://{addr} (region {}, {keys} access key(s); \
             `amivm account create-access-key` makes one)",
            args.region
        );
    })?;
    Ok(0)
}
