//! The image store: images (AMIs), snapshots, blobs, accounts and launch permissions.
