//! SigV4 query-string authentication ("presigned URLs", AWS General Reference, "Authenticating
//! requests: using query parameters"): the signature and its parameters travel in the query
//! string instead of the `Authorization` header, as botocore's `generate_presigned_url` makes
//! them: `X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`, `X-Amz-Expires`,
//! `X-Amz-SignedHeaders` and `X-Amz-Signature`.
//!
//! The canonical request is the header form's, with the query string minus `X-Amz-Signature`;
//! the payload hash is the body's (botocore hashes the empty body of a presigned GET; it sends
//! `UNSIGNED-PAYLOAD` only for S3). A URL is valid from its `X-Amz-Date` (less the allowed
//! clock skew) for `X-Amz-Expires` seconds, at most [`MAX_EXPIRES_SECS`]. Pure, like
//! [`super::sigv4`].

use super::form::percent_decode;
use super::sigv4::{
    canonical_request, parse_amz_date, signing_key, string_to_sign, Expect, Request, SigError,
    ALGORITHM, MAX_CLOCK_SKEW_SECS, SCOPE_TERMINATOR,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The longest validity of a presigned URL: seven days, "604800 seconds" (AWS General
/// Reference, SigV4 query parameters: `X-Amz-Expires`).
pub const MAX_EXPIRES_SECS: i64 = 604_800;
/// The query parameter that marks a presigned request.
pub const ALGORITHM_PARAM: &str = "X-Amz-Algorithm";
/// The prefix of every query-authentication parameter (not the action's own parameters).
pub const PARAM_PREFIX: &str = "X-Amz-";
const SIGNATURE_PARAM: &str = "X-Amz-Signature";

/// Whether the request carries its signature in the query string.
pub fn is_presigned(query: &str) -> bool {
    query
        .split('&')
        .any(|p| p.split('=').next() == Some(ALGORITHM_PARAM))
}

/// Verify a presigned request; returns the access key id, as [`super::sigv4::verify`].
pub fn verify_presigned(
    req: &Request,
    expect: &Expect,
    secret_of: impl FnOnce(&str) -> Option<String>,
) -> Result<String, SigError> {
    let bad = |w: String| SigError::Malformed(w);
    // The query's parameters, decoded; the ones signed are every one but the signature.
    let mut auth = std::collections::BTreeMap::new();
    let mut unsigned_query = Vec::new();
    for raw in req.query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = raw.split_once('=').unwrap_or((raw, ""));
        let dec = |s: &str| {
            percent_decode(s.as_bytes(), false).map_err(|e| bad(format!("query string: {e}")))
        };
        let (k, v) = (dec(k)?, dec(v)?);
        if k.starts_with(PARAM_PREFIX) && auth.insert(k.clone(), v).is_some() {
            return Err(bad(format!("{k} is given more than once")));
        }
        if k != SIGNATURE_PARAM {
            unsigned_query.push(raw);
        }
    }
    let get = |name: &str| {
        auth.get(name)
            .map(String::as_str)
            .ok_or_else(|| bad(format!("the presigned request has no {name}")))
    };
    if get(ALGORITHM_PARAM)? != ALGORITHM {
        return Err(bad(format!("{ALGORITHM_PARAM} is not {ALGORITHM}")));
    }
    let cred = get("X-Amz-Credential")?;
    let amz_date = get("X-Amz-Date")?;
    let expires = get("X-Amz-Expires")?;
    let signed = get("X-Amz-SignedHeaders")?;
    let signature = match hex::decode(get(SIGNATURE_PARAM)?) {
        Ok(s) if s.len() == 32 => s,
        _ => return Err(bad("X-Amz-Signature is not 64 hex digits".into())),
    };
    let parts: Vec<&str> = cred.split('/').collect();
    let [key, date, region, service, term] = parts[..] else {
        return Err(bad(
            "X-Amz-Credential is not KEY/DATE/REGION/SERVICE/aws4_request".into(),
        ));
    };
    if term != SCOPE_TERMINATOR || key.is_empty() {
        return Err(SigError::Scope(format!(
            "malformed credential scope '{cred}'"
        )));
    }
    let t = parse_amz_date(amz_date)
        .ok_or_else(|| bad(format!("X-Amz-Date '{amz_date}' is not YYYYMMDDTHHMMSSZ")))?;
    let expires: i64 = match expires.parse() {
        Ok(e) if (1..=MAX_EXPIRES_SECS).contains(&e) => e,
        _ => {
            return Err(bad(format!(
                "X-Amz-Expires must be 1 to {MAX_EXPIRES_SECS} seconds, not '{expires}'"
            )))
        }
    };
    let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
    let sorted = signed_headers.windows(2).all(|w| w[0] < w[1]);
    if !sorted || !signed_headers.iter().any(|h| h == "host") {
        return Err(bad(
            "X-Amz-SignedHeaders must be sorted and include host".into()
        ));
    }
    if date != &amz_date[..8] {
        return Err(SigError::Scope(format!(
            "the scope's date {date} is not the request's ({})",
            &amz_date[..8]
        )));
    }
    if region != expect.region || service != expect.service {
        return Err(SigError::Scope(format!(
            "credential should be scoped to {}/{}, not {region}/{service}",
            expect.region, expect.service
        )));
    }
    // Valid from its date (a clock a little ahead is allowed) until its expiry.
    if expect.now < t - MAX_CLOCK_SKEW_SECS || expect.now > t.saturating_add(expires) {
        return Err(SigError::Expired(amz_date.to_string()));
    }
    let secret = secret_of(key).ok_or(SigError::UnknownKey)?;
    let query = unsigned_query.join("&");
    let creq = canonical_request(
        &Request {
            query: &query,
            ..req.clone()
        },
        &signed_headers,
    )?;
    let scope = format!("{date}/{region}/{service}/{SCOPE_TERMINATOR}");
    let sts = string_to_sign(amz_date, &scope, &creq);
    let k = signing_key(&secret, date, region, service);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&k).unwrap_or_else(|_| unreachable!());
    mac.update(sts.as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| SigError::Mismatch)?;
    Ok(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::sigv4::sign;
    use super::*;

    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";
    const NOW: i64 = 1_440_938_160; // 2015-08-30T12:36:00Z

    /// A presigned GET of DescribeRegions, signed here the way a client does.
    fn presigned(expires: &str, date: &str, secret: &str) -> String {
        let base = format!(
            "Action=DescribeRegions&Version=2016-11-15&X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential={AKID}%2F{}%2Fus-east-1%2Fec2%2Faws4_request&X-Amz-Date={date}\
             &X-Amz-Expires={expires}&X-Amz-SignedHeaders=host",
            &date[..8]
        );
        let headers = vec![("Host".to_string(), "example.com".to_string())];
        let req = Request {
            method: "GET",
            path: "/",
            query: &base,
            headers: &headers,
            body: b"",
        };
        let creq = canonical_request(&req, &["host".to_string()]).unwrap();
        let scope = format!("{}/us-east-1/ec2/aws4_request", &date[..8]);
        let key = signing_key(secret, &date[..8], "us-east-1", "ec2");
        let sig = sign(&key, &string_to_sign(date, &scope, &creq));
        format!("{base}&X-Amz-Signature={sig}")
    }

    fn check(query: &str, now: i64) -> Result<String, SigError> {
        let headers = vec![("Host".to_string(), "example.com".to_string())];
        let req = Request {
            method: "GET",
            path: "/",
            query,
            headers: &headers,
            body: b"",
        };
        let expect = Expect {
            region: "us-east-1",
            service: "ec2",
            now,
        };
        verify_presigned(&req, &expect, |k| (k == AKID).then(|| SECRET.to_string()))
    }

    #[test]
    fn a_presigned_request_is_valid_until_it_expires() {
        let q = presigned("300", DATE, SECRET);
        assert!(is_presigned(&q));
        assert_eq!(check(&q, NOW).unwrap(), AKID);
        assert_eq!(check(&q, NOW + 300).unwrap(), AKID);
        assert!(matches!(check(&q, NOW + 301), Err(SigError::Expired(_))));
        // Not usable long before its date.
        assert!(matches!(
            check(&q, NOW - MAX_CLOCK_SKEW_SECS - 1),
            Err(SigError::Expired(_))
        ));
    }

    #[test]
    fn tampered_or_malformed_presigned_requests_are_refused() {
        let q = presigned("300", DATE, SECRET);
        let other = q.replace("DescribeRegions", "DescribeImages");
        assert_eq!(check(&other, NOW), Err(SigError::Mismatch));
        let longer = q.replace("X-Amz-Expires=300", "X-Amz-Expires=3000");
        assert_eq!(check(&longer, NOW), Err(SigError::Mismatch));
        let wrong = presigned("300", DATE, "not the secret");
        assert_eq!(check(&wrong, NOW), Err(SigError::Mismatch));
        for e in ["0", "604801", "-1", "x"] {
            let q = presigned(e, DATE, SECRET);
            assert!(matches!(check(&q, NOW), Err(SigError::Malformed(_))), "{e}");
        }
        let no_sig = q.split("&X-Amz-Signature").next().unwrap().to_string();
        assert!(matches!(check(&no_sig, NOW), Err(SigError::Malformed(_))));
        let twice = format!("{q}&X-Amz-Expires=300");
        assert!(matches!(check(&twice, NOW), Err(SigError::Malformed(_))));
        assert!(!is_presigned("Action=DescribeRegions&Version=2016-11-15"));
    }
}
