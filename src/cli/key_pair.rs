//! `amivm key-pair ...`: the account's SSH key pairs (EC2 key pairs), for `run --key-name`.

use super::output::{open_store, print_json, print_out, table};
use super::{GlobalOpts, OutputFormat};
use crate::files;
use crate::store::ssh_keys::MAX_PUBLIC_KEY_TEXT;
use crate::store::{KeyPair, KeyPairRef};
use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Owner read/write only: the private key file (what `ssh` insists on).
const PRIVATE_KEY_MODE: u32 = 0o600;

#[derive(Debug, Subcommand)]
pub enum KeyPairCmd {
    /// Create an ed25519 key pair. The private key (OpenSSH format) is written to --key-file
    /// (created, mode 0600; an existing file is refused), else printed once on stdout; only
    /// the public key is kept.
    Create {
        /// The key pair's name (1 to 255 printable ASCII characters, unique in the account).
        name: String,
        /// Write the private key to this new file instead of stdout.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
    },
    /// Import an OpenSSH public key (ed25519, or rsa of 1024 to 4096 bits) as a key pair.
    Import {
        /// The key pair's name.
        name: String,
        /// The public key file (`id_ed25519.pub`: one `ssh-ed25519 AAAA...` line).
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// Where the matching private key is, for `amivm ssh` (default: the public key's path
        /// without `.pub`, when that file exists).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
    },
    /// List the account's key pairs.
    Ls,
    /// Delete a key pair (by name, or key-... id); instances launched with it keep its public key.
    Rm {
        /// Key pair name or id.
        name: String,
    },
}

fn row(k: &KeyPair) -> Vec<String> {
    vec![
        k.key_name.clone(),
        k.key_pair_id.to_string(),
        k.key_type.as_str().to_string(),
        k.key_fingerprint.clone(),
        k.create_time.clone(),
    ]
}

fn to_json(k: &KeyPair) -> serde_json::Value {
    json!({
        "KeyName": k.key_name,
        "KeyPairId": k.key_pair_id.as_str(),
        "KeyType": k.key_type.as_str(),
        "KeyFingerprint": k.key_fingerprint,
        "PublicKey": k.public_key,
        "CreateTime": k.create_time,
        "PrivateKeyFile": k.private_key_file,
    })
}

/// Create `path` for the private key: new, regular, 0600 whatever the umask.
fn create_key_file(path: &Path) -> anyhow::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_KEY_MODE)
        .open(path)
        .with_context(|| format!("--key-file {}: cannot create it", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(PRIVATE_KEY_MODE))
        .with_context(|| format!("--key-file {}", path.display()))?;
    Ok(f)
}

/// Record where the private key of `k` is, for `amivm ssh`; only a hint, so a failure is a
/// warning.
fn remember_key_file(
    store: &crate::store::Store,
    caller: &crate::store::AccountId,
    k: &KeyPair,
    p: &Path,
) {
    let kept = std::fs::canonicalize(p)
        .map_err(anyhow::Error::from)
        .and_then(|abs| Ok(store.set_private_key_file(caller, &k.key_pair_id, &abs)?));
    if let Err(e) = kept {
        eprintln!(
            "amivm: warning: could not record {} as {}'s private key for `amivm ssh`: {e}",
            p.display(),
            k.key_name
        );
    }
}

/// Read a public key file, at most [`MAX_PUBLIC_KEY_TEXT`] bytes (more is refused by the
/// parser, so one byte more is enough to tell).
fn read_public_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let f = files::open(path, "public key", files::REGULAR, files::Mode::Read)?;
    let mut text = Vec::new();
    f.take(MAX_PUBLIC_KEY_TEXT as u64 + 1)
        .read_to_end(&mut text)
        .with_context(|| format!("read {}", path.display()))?;
    Ok(text)
}

pub fn run(cmd: KeyPairCmd, g: &GlobalOpts) -> anyhow::Result<i32> {
    let (store, caller) = open_store(g)?;
    let json = g.output == OutputFormat::Json;
    match cmd {
        KeyPairCmd::Create { name, key_file } => {
            // The file first, so nothing is stored when it cannot be written.
            let file = key_file.as_deref().map(create_key_file).transpose()?;
            let made = match store.create_key_pair(&caller, &name, BTreeMap::new()) {
                Ok(m) => m,
                Err(e) => {
                    if let Some(p) = &key_file {
                        let _ = std::fs::remove_file(p);
                    }
                    return Err(e.into());
                }
            };
            let k = &made.key_pair;
            if let (Some(mut f), Some(p)) = (file, &key_file) {
                let written = f
                    .write_all(made.key.private_openssh.as_bytes())
                    .and_then(|()| f.sync_all());
                if let Err(e) = written {
                    // Without its private key the key pair is useless: undo it.
                    let _ = std::fs::remove_file(p);
                    let _ = store.delete_key_pair(&caller, &KeyPairRef::Id(k.key_pair_id.clone()));
                    return Err(e).with_context(|| format!("write {}", p.display()));
                }
                remember_key_file(&store, &caller, k, p);
                if json {
                    print_json(&to_json(k))?;
                } else {
                    print_out(&format!("{}\t{}\n", k.key_pair_id, k.key_fingerprint))?;
                    eprintln!("amivm: private key written to {} (mode 0600)", p.display());
                }
            } else if json {
                let mut v = to_json(k);
                v["KeyMaterial"] = json!(made.key.private_openssh);
                print_json(&v)?;
            } else {
                print_out(&made.key.private_openssh)?;
                eprintln!(
                    "amivm: key pair {} ({}, {}): the private key above is not shown again",
                    k.key_name, k.key_pair_id, k.key_fingerprint
                );
            }
        }
        KeyPairCmd::Import {
            name,
            public_key,
            key_file,
        } => {
            let text = read_public_key(&public_key)?;
            let k = store.import_key_pair(&caller, &name, &text, BTreeMap::new())?;
            let beside = public_key
                .to_str()
                .and_then(|s| s.strip_suffix(".pub"))
                .map(PathBuf::from)
                .filter(|p| p.is_file());
            if let Some(p) = key_file.or(beside) {
                remember_key_file(&store, &caller, &k, &p);
            }
            if json {
                print_json(&to_json(&k))?;
            } else {
                print_out(&format!("{}\t{}\n", k.key_pair_id, k.key_fingerprint))?;
            }
        }
        KeyPairCmd::Ls => {
            let keys = store.list_key_pairs(&caller)?;
            if json {
                print_json(&keys.iter().map(to_json).collect::<Vec<_>>())?;
            } else {
                let rows: Vec<Vec<String>> = keys.iter().map(row).collect();
                print_out(&table(
                    &["NAME", "ID", "TYPE", "FINGERPRINT", "CREATED"],
                    &rows,
                ))?;
            }
        }
        KeyPairCmd::Rm { name } => {
            let which = match crate::store::KeyPairId::parse(&name) {
                Ok(id) => KeyPairRef::Id(id),
                Err(_) => KeyPairRef::Name(name),
            };
            let k = store.delete_key_pair(&caller, &which)?;
            if json {
                print_json(
                    &json!({ "KeyName": k.key_name, "KeyPairId": k.key_pair_id.as_str(), "Deleted": true }),
                )?;
            } else {
                println!("deleted {} ({})", k.key_name, k.key_pair_id);
            }
        }
    }
    Ok(0)
}
