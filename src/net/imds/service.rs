//! Answering one parsed request: IMDSv1/IMDSv2 policy, the token endpoint, the tree. Pure.

use super::config::{HttpTokens, MetadataConfig, MAX_TOKEN_TTL_SECS, MIN_TOKEN_TTL_SECS};
use super::http::{Request, Response, Status};
use super::token::TokenKey;
use super::tree::{self, Guest};
use std::time::Duration;

/// Where IMDSv2 tokens are issued (`PUT`).
pub const TOKEN_PATH: &str = "/latest/api/token";
/// The header asking for a token's lifetime, and the one the answer carries it in.
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// The header carrying a token.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// A token request carrying this header is refused (403): it came through a proxy (EC2 User
/// Guide, "IMDSv2": "PUT requests that include X-Forwarded-For are rejected").
pub const FORWARDED_HEADER: &str = "x-forwarded-for";

/// An answer, and the IP TTL to send it with (token responses only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub response: Response,
    pub hop_limit: Option<u8>,
}

impl From<Response> for Reply {
    fn from(response: Response) -> Reply {
        Reply {
            response,
            hop_limit: None,
        }
    }
}

/// Answer `req` at `now` (since the endpoint's epoch).
pub fn handle(
    config: &MetadataConfig,
    key: &TokenKey,
    req: &Request,
    now: Duration,
    guest: Guest,
) -> Reply {
    let head_only = req.method == "HEAD";
    if !matches!(req.method.as_str(), "GET" | "HEAD" | "PUT") {
        return Response::error(Status::MethodNotAllowed).into();
    }
    if req.path == TOKEN_PATH {
        if req.method != "PUT" {
            return Response::error(Status::MethodNotAllowed).into();
        }
        return issue_token(config, key, req, now);
    }
    if req.method == "PUT" {
        return Response::error(Status::MethodNotAllowed).into();
    }
    match req.header_count(TOKEN_HEADER) {
        0 if config.http_tokens == HttpTokens::Required => {
            return Response::error(Status::Unauthorized).into()
        }
        0 => {}
        1 => {
            if !req.header(TOKEN_HEADER).is_some_and(|t| key.check(t, now)) {
                return Response::error(Status::Unauthorized).into();
            }
        }
        _ => return Response::error(Status::BadRequest).into(),
    }
    let root = tree::build(config, guest);
    let mut response = match root.lookup(&req.path) {
        Some(node) => Response::text(Status::Ok, node.body()),
        None => Response::error(Status::NotFound),
    };
    response.head_only = head_only;
    response.into()
}

fn issue_token(config: &MetadataConfig, key: &TokenKey, req: &Request, now: Duration) -> Reply {
    if req.header_count(FORWARDED_HEADER) > 0 {
        return Response::error(Status::Forbidden).into();
    }
    let ttl = match (req.header_count(TTL_HEADER), req.header(TTL_HEADER)) {
        (1, Some(v)) => v.parse::<u32>().ok(),
        _ => None,
    };
    let Some(ttl) = ttl.filter(|t| (MIN_TOKEN_TTL_SECS..=MAX_TOKEN_TTL_SECS).contains(t)) else {
        return Response::error(Status::BadRequest).into();
    };
    let token = key.issue(now, Duration::from_secs(u64::from(ttl)));
    let mut response = Response::text(Status::Ok, token);
    response
        .headers
        .push(("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", ttl.to_string()));
    Reply {
        response,
        hop_limit: Some(config.hop_limit),
    }
}
