//! Fuzz the metadata endpoint's frame path: the input is a sequence of guest frames, each
//! `[mode, len_hi, len_lo, bytes...]`. Mode 0 sends the bytes as they are; mode 1 wraps them
//! as the payload of an IPv4 packet from the guest to 169.254.169.254 with a correct header
//! checksum, and mode 2 also makes them a TCP segment with a correct checksum, so the fuzzer
//! reaches the TCP state machine and the HTTP side quickly. After each frame simulated time
//! moves on and every frame the endpoint sends is taken. Nothing may panic, frames stay
//! within the buffer, and the endpoint's queues stay bounded.

#![no_main]

mod imds_config;

use amivm::net::imds::frame::internet_checksum;
use amivm::net::imds::token::TokenKey;
use amivm::net::imds::{HttpTokens, MetadataEndpoint};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
const SERVICE_IP: [u8; 4] = [169, 254, 169, 254];
/// The most frames the endpoint may have waiting after one guest frame.
const MAX_OUT_PER_STEP: usize = 256;

fn ipv4(payload: &[u8], protocol: u8) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[8, 0]);
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[8] = 64;
    h[9] = protocol;
    h[12..16].copy_from_slice(&GUEST_IP);
    h[16..20].copy_from_slice(&SERVICE_IP);
    let sum = internet_checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(payload);
    f
}

fn tcp(segment: &[u8]) -> Vec<u8> {
    let mut seg = segment.to_vec();
    if seg.len() < 20 {
        seg.resize(20, 0);
    }
    seg[2..4].copy_from_slice(&80u16.to_be_bytes());
    if seg[12] >> 4 < 5 {
        seg[12] = 0x50 | (seg[12] & 0x0f);
    }
    seg[16..18].copy_from_slice(&[0, 0]);
    let mut pseudo = Vec::with_capacity(12 + seg.len());
    pseudo.extend_from_slice(&GUEST_IP);
    pseudo.extend_from_slice(&SERVICE_IP);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&seg);
    let sum = internet_checksum(&pseudo);
    seg[16..18].copy_from_slice(&sum.to_be_bytes());
    ipv4(&seg, 6)
}

fuzz_target!(|data: &[u8]| {
    let epoch = Instant::now();
    let mut ep = MetadataEndpoint::with_key(
        imds_config::config(HttpTokens::Optional),
        None,
        TokenKey::from_bytes([3; 32]),
        epoch,
    );
    let mut now = epoch;
    let mut rest = data;
    let mut out = [0u8; 1514];
    while rest.len() >= 3 {
        let mode = rest[0] % 3;
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let bytes = &rest[3..3 + len];
        rest = &rest[3 + len..];
        let frame = match mode {
            0 => bytes.to_vec(),
            1 => ipv4(bytes, bytes.first().copied().unwrap_or(6)),
            _ => tcp(bytes),
        };
        ep.receive(now, &frame);
        let mut n = 0;
        while let Some(len) = ep.transmit(now, &mut out) {
            assert!(len <= out.len());
            n += 1;
            assert!(n <= MAX_OUT_PER_STEP, "the endpoint keeps producing frames");
        }
        now += Duration::from_millis(u64::from(mode) * 400 + 1);
        if let Some(wait) = ep.poll_at(now) {
            assert!(wait <= Duration::from_secs(3600));
        }
    }
    now += Duration::from_secs(60);
    while ep.transmit(now, &mut out).is_some() {}
});
