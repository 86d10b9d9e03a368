//! `amivm account ...`: the access keys `amivm serve` authenticates requests with.

use super::output::{open_store, print_json, print_out, table};
use super::{GlobalOpts, OutputFormat};
use clap::Subcommand;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Create an access key for the account (--account, else the default): prints the key id
    /// and its secret, which is not shown again.
    CreateAccessKey,
    /// List access keys (without secrets).
    LsAccessKeys {
        /// Every account's keys, not only the caller's.
        #[arg(long)]
        all: bool,
    },
    /// Delete one of the account's access keys.
    DeleteAccessKey {
        /// The access key id (AKIA...).
        access_key_id: String,
    },
}

pub fn run(cmd: AccountCmd, g: &GlobalOpts) -> anyhow::Result<i32> {
    let (store, caller) = open_store(g)?;
    let json = g.output == OutputFormat::Json;
    match cmd {
        AccountCmd::CreateAccessKey => {
            let k = store.create_access_key(&caller)?;
            if json {
                print_json(&json!({ "AccessKey": {
                    "AccessKeyId": k.access_key_id,
                    "SecretAccessKey": k.secret_access_key,
                    "AccountId": k.account_id,
                    "CreateDate": k.create_date,
                }}))?;
            } else {
                print_out(&format!("{}\t{}\n", k.access_key_id, k.secret_access_key))?;
                eprintln!(
                    "amivm: access key for account {} (key id, then secret; the secret is not shown again)",
                    k.account_id
                );
            }
        }
        AccountCmd::LsAccessKeys { all } => {
            let keys = store.list_access_keys(if all { None } else { Some(&caller) })?;
            if json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        json!({
                            "AccessKeyId": k.access_key_id,
                            "AccountId": k.account_id,
                            "CreateDate": k.create_date,
                        })
                    })
                    .collect();
                print_json(&v)?;
            } else {
                let rows: Vec<Vec<String>> = keys
                    .iter()
                    .map(|k| {
                        vec![
                            k.access_key_id.clone(),
                            k.account_id.to_string(),
                            k.create_date.clone(),
                        ]
                    })
                    .collect();
                print_out(&table(&["ACCESS KEY ID", "ACCOUNT", "CREATED"], &rows))?;
            }
        }
        AccountCmd::DeleteAccessKey { access_key_id } => {
            store.delete_access_key(&caller, &access_key_id)?;
            if json {
                print_json(&json!({ "AccessKeyId": access_key_id, "Deleted": true }))?;
            } else {
                println!("deleted {access_key_id}");
            }
        }
    }
    Ok(0)
}
