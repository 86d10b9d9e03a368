//! amivm: boot machine images locally on KVM, the way EC2 boots an AMI.
//!
//! - [`cli`]: the `amivm` command line (the only place that uses `anyhow`).
//! - [`vmm`]: the KVM virtual machine monitor: boot path, vCPUs, devices.
//! - [`net`]: guest networks: the frame-backend trait, passt and tap backends, MACs.
//! - [`volume`]: the block-backend trait and copy-on-write volumes, the meeting
//!   point of the device model and the image store.
//! - [`store`]: the image store: images, snapshots, blobs, accounts.
//! - [`instance`]: instances launched from images, instance types.
//! - [`files`]: opening the files a user names, refusing FIFOs and devices before open(2).
//! - [`text`]: characters user text may not contain, and escaping for terminals.
//! - [`net`]: guest networking: the instance metadata service.
//! - [`api`]: `amivm serve`, the EC2 Query API over the store and instances.

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod api;
pub mod cli;
pub mod files;
pub mod instance;
pub mod net;
pub mod store;
pub mod sync;
pub mod text;
pub mod vmm;
pub mod volume;
