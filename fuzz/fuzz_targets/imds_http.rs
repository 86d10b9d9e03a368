//! Fuzz the metadata service's HTTP side: the input is the bytes a client sends on one
//! connection. The head parser must never panic nor accept more than its limits, and every
//! parsed request gets an answer under both token policies. The input is also tried as a
//! token.

#![no_main]

mod imds_config;

use amivm::net::imds::http::{parse, Parse, MAX_HEADERS, MAX_HEAD_BYTES};
use amivm::net::imds::service::handle;
use amivm::net::imds::token::TokenKey;
use amivm::net::imds::tree::Guest;
use amivm::net::imds::HttpTokens;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let key = TokenKey::from_bytes([3; 32]);
    if let Ok(t) = std::str::from_utf8(data) {
        assert!(!key.check(t, Duration::ZERO), "a token no one issued was accepted");
    }
    match parse(data) {
        Parse::Incomplete => assert!(data.len() < MAX_HEAD_BYTES),
        Parse::Bad(_) => {}
        Parse::Done(req) => {
            assert!(req.headers.len() <= MAX_HEADERS);
            for tokens in [HttpTokens::Optional, HttpTokens::Required] {
                let c = imds_config::config(tokens);
                let reply = handle(&c, &key, &req, Duration::from_secs(1), Guest::default());
                let bytes = reply.response.to_bytes();
                assert!(bytes.starts_with(b"HTTP/1.1 "));
            }
        }
    }
});
