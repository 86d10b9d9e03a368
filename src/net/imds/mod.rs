//! The instance metadata service (IMDS) at 169.254.169.254, answered inside the guest's network
//! the way Firecracker's MMDS is: the virtio-net device hands the frames that
//! [`MetadataEndpoint::accepts`] to [`MetadataEndpoint::receive`] instead of the backend, and
//! mixes the frames of [`MetadataEndpoint::transmit`] into what the guest receives. Nothing
//! listens on the host.
//!
//! - [`config`]: what is served ([`MetadataConfig`], built by the instance layer).
//! - [`frame`]: Ethernet and ARP; [`device`]: the packet queue under smoltcp;
//!   [`endpoint`]: IPv4/TCP (smoltcp) and the connections.
//! - [`http`]: request heads and responses; [`service`]: IMDSv1/v2 policy;
//!   [`token`]: session tokens; [`tree`]: the paths EC2 serves.
//!
//! Served, as EC2 (see docs/metadata.md): `/`, versions `1.0`, `2009-04-04`, `2016-09-02`,
//! `2018-09-24`, `2021-03-23` and `latest`, each with `meta-data/`, `user-data` (when the
//! instance has some) and `dynamic/instance-identity/document`; `PUT /latest/api/token`.

pub mod config;
pub mod device;
pub mod endpoint;
pub mod frame;
pub mod http;
pub mod service;
pub mod token;
pub mod tree;

#[cfg(test)]
mod service_tests;

pub use config::{BlockDevice, HttpTokens, MetadataConfig, PublicKey};
pub use endpoint::{MetadataEndpoint, Stats};
