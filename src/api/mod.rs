//! `amivm serve`: the EC2 Query API (version 2016-11-15) over the image store and instances,
//! so the AWS CLI, boto3 and other EC2 tools drive local AMIs and instances.
//!
//! This module is protocol only; every action calls the same store and instance functions the
//! CLI calls:
//!
//! - [`server`]: HTTP/1.1 (hyper on tokio) with bounded connections, header count and size,
//!   body size, and read timeouts; blocking store work runs on a bounded thread pool.
//! - [`form`]: strict `application/x-www-form-urlencoded` parsing; [`params`]: typed access to
//!   the flattened `X.N` parameters, filters and paging.
//! - [`sigv4`]: AWS Signature Version 4 verification against the store's access keys, in the
//!   `Authorization` header or, presigned, in the query string ([`presign`]).
//! - [`xml`]: response and error documents with the element names of botocore's `ec2` model.
//! - [`dispatch`]: authentication, action lookup, parameter checks, DryRun, then one of the
//!   handlers in [`images`], [`snapshots`], [`instances`] (XML in [`instance_xml`]),
//!   [`key_pairs`] and [`meta`].
//! - [`errors`]: EC2 error codes and HTTP statuses.

pub mod dispatch;
pub mod errors;
pub mod form;
pub mod images;
pub mod instance_select;
pub mod instance_xml;
pub mod instances;
pub mod key_pairs;
pub mod meta;
pub mod params;
pub mod presign;
pub mod server;
pub mod sigv4;
pub mod snapshots;
pub mod supervisor;
pub mod xml;

use crate::store::Store;
use std::net::SocketAddr;
use std::path::PathBuf;
use thiserror::Error;

/// The region a server answers for unless told otherwise.
pub const DEFAULT_REGION: &str = "us-east-1";
/// The service name SigV4 scopes carry for EC2.
pub const SERVICE: &str = "ec2";
/// The API version botocore's `ec2` model describes and the responses' namespace names.
pub const API_VERSION: &str = "2016-11-15";

/// Errors that stop the server itself (a request's failure is an EC2 error document instead).
#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the server runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// What every request handler shares.
#[derive(Debug)]
pub struct Api {
    pub store: Store,
    /// The region this server is (SigV4 scopes must name it).
    pub region: String,
    /// The address it listens on (DescribeRegions' endpoint).
    pub endpoint: String,
    /// The amivm executable that runs instances in the background.
    pub exe: PathBuf,
    /// `--log-level` for those background processes.
    pub log_level: String,
    /// The background processes this server started.
    pub supervisor: supervisor::Supervisor,
    /// The network RunInstances gives instances (`serve --network`).
    pub network: crate::net::NetworkSpec,
    /// The instance records in memory (DescribeInstances, DescribeTags).
    pub instances: crate::instance::index::InstanceIndex,
}

impl Api {
    /// The availability zone every instance of this server is in.
    pub fn zone(&self) -> String {
        format!("{}a", self.region)
    }
}

/// A random request id in the form EC2 uses (a version 4 UUID, RFC 9562).
pub fn request_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    // Version 4 and the RFC variant bits.
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        (b[8] & 0x3) | 0x8,
        &h[17..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_look_like_uuids() {
        let id = super::request_id();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(id.matches('-').count(), 4);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
    }
}
