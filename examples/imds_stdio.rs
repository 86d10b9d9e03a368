//! The metadata service amivm answers on an instance's network card, answered over a process's
//! stdin/stdout instead, for checks with another VMM: `scripts/check-cloud-init-qemu.sh`
//! boots the Debian 12 AMI on QEMU, whose slirp network runs this once per guest connection to
//! 169.254.169.254:80 (`guestfwd=...-cmd:`), so that the real cloud-init reads an amivm
//! instance's metadata: the same tree and the same HTTP and token handling
//! (`amivm::net::imds::service`); only the TCP/IP stack is QEMU's, not amivm's smoltcp one.
//!
//! Usage: [IMDS_STDIO_LOG=FILE] imds_stdio STORE ACCOUNT INSTANCE-ID   (one request from stdin,
//! its answer on stdout; a line per request appended to FILE)
//!
//! Every run uses the same token key and clock (Unix time), so a token one run issued is
//! accepted by the next, as by the one endpoint of a real instance. A check tool only: the key
//! is fixed.

use amivm::net::imds::http::{self, Parse};
use amivm::net::imds::service;
use amivm::net::imds::token::TokenKey;
use amivm::net::imds::tree::Guest;
use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes read per request at most: the service's own head limit, and a little more.
const MAX_REQUEST: usize = 16 * 1024;
/// The token key of every run (see the module comment).
const CHECK_KEY: [u8; 32] = [0x5a; 32];

/// One line to the file `IMDS_STDIO_LOG` names, if any (stderr would reach the guest: QEMU
/// gives the command the connection as stdin, stdout and stderr).
fn log(line: &str) {
    if let Some(path) = std::env::var_os("IMDS_STDIO_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, account, id] = args.as_slice() else {
        anyhow::bail!("usage: imds_stdio STORE ACCOUNT INSTANCE-ID");
    };
    let store = amivm::store::Store::open(std::path::Path::new(store))?;
    let account = amivm::store::AccountId::parse(account)?;
    let inst = amivm::instance::record::load(&store, &account, id)?;
    let config = amivm::instance::metadata::for_instance(&inst)?;
    let key = TokenKey::from_bytes(CHECK_KEY);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    let mut stdin = std::io::stdin().lock();
    let reply = loop {
        let n = stdin.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match http::parse(&buf) {
            Parse::Incomplete if buf.len() < MAX_REQUEST => continue,
            Parse::Incomplete => break http::Response::error(http::Status::HeaderTooLarge),
            Parse::Bad(status) => break http::Response::error(status),
            Parse::Done(req) => {
                let guest = Guest {
                    ipv4: None,
                    mac: None,
                };
                let r = service::handle(&config, &key, &req, now, guest).response;
                log(&format!("{} {} -> {:?}", req.method, req.path, r.status));
                break r;
            }
        }
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&reply.to_bytes())?;
    out.flush()?;
    Ok(())
}
