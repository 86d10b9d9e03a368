//! The metadata service configuration the imds fuzz targets serve.

use amivm::net::imds::{BlockDevice, HttpTokens, MetadataConfig, PublicKey};

pub fn config(tokens: HttpTokens) -> MetadataConfig {
    MetadataConfig {
        instance_id: "i-0123456789abcdef0".into(),
        ami_id: "ami-0fedcba9876543210".into(),
        instance_type: "t3.micro".into(),
        hostname: "i-0123456789abcdef0".into(),
        local_ipv4: None,
        mac: None,
        region: "us-east-1".into(),
        availability_zone: "us-east-1a".into(),
        account_id: "123456789012".into(),
        public_keys: vec![PublicKey {
            name: "k".into(),
            openssh: "ssh-ed25519 AAAA k".into(),
        }],
        block_devices: vec![BlockDevice {
            name: "root".into(),
            device: "/dev/vda".into(),
        }],
        user_data: Some(vec![b'u'; 16 * 1024]),
        http_tokens: tokens,
        hop_limit: 1,
        launch_time: "2026-12-01T06:00:00Z".into(),
    }
}
