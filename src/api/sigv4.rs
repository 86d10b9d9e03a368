//! AWS Signature Version 4 verification (the `Authorization` header form), as the AWS General
//! Reference's "Signature Version 4 signing process" describes it:
//!
//! 1. the canonical request: method, canonical URI, canonical query string, canonical headers,
//!    signed headers and the hex sha256 of the payload, one per line;
//! 2. the string to sign: `AWS4-HMAC-SHA256`, the request date, the credential scope
//!    (`DATE/REGION/SERVICE/aws4_request`) and the hex sha256 of the canonical request;
//! 3. the signing key: HMAC-SHA256 chained over `"AWS4" + secret`, date, region, service and
//!    `aws4_request`; the signature is the hex HMAC of the string to sign under it.
//!
//! The server recomputes the signature from what it received and compares it in constant time
//! ([`hmac::Mac::verify_slice`]). It also checks what the signature alone cannot: that the scope
//! names this server's region and the `ec2` service, that the scope's date is the request's,
//! and that the request's time is within [`MAX_CLOCK_SKEW_SECS`] of the server's clock.
//! Everything here is pure: no I/O, the clock and the key lookup are passed in.

use super::form::{percent_decode, uri_encode};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// The only algorithm SigV4 defines.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The last element of every SigV4 credential scope.
pub const SCOPE_TERMINATOR: &str = "aws4_request";
/// The header carrying the request time, `YYYYMMDD'T'HHMMSS'Z'`.
pub const DATE_HEADER: &str = "x-amz-date";
/// How far the request's time may be from the server's, either way: EC2 refuses a request
/// "more than 15 minutes after the date stamp on the request ... or more than 15 minutes in the
/// future" (EC2 API Reference, "Error codes": `RequestExpired`).
pub const MAX_CLOCK_SKEW_SECS: i64 = 15 * 60;

/// Why a request's signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SigError {
    /// No `Authorization` header.
    #[error("the request is not signed (no Authorization header)")]
    Missing,
    /// The header or a signed part of the request cannot be read.
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// The access key id is not known.
    #[error("the access key id is not known")]
    UnknownKey,
    /// The credential scope is not for this server's region and service, or its date.
    #[error("credential scope: {0}")]
    Scope(String),
    /// The request's time is too far from the server's.
    #[error("request time {0} is more than 15 minutes from the server's clock")]
    Expired(String),
    /// The signature does not match the request.
    #[error("the signature does not match the request")]
    Mismatch,
}

/// The parts of a received request the signature covers.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as received (percent-encoded).
    pub path: &'a str,
    /// The query string as received, without `?`.
    pub query: &'a str,
    /// Headers as received: names in any case, in order, repeated names allowed.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// The `Authorization` header's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: Vec<u8>,
}

/// Parse `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b, Signature=HEX`.
pub fn parse_authorization(h: &str) -> Result<Authorization, SigError> {
    let bad = |w: &str| SigError::Malformed(w.to_string());
    let rest = h
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| bad("the algorithm is not AWS4-HMAC-SHA256"))?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| bad("a component has no '='"))?;
        let slot = match k {
            "Credential" => &mut cred,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut sig,
            _ => return Err(bad("unknown component")),
        };
        if slot.replace(v).is_some() {
            return Err(bad("a component is repeated"));
        }
    }
    let (cred, signed, sig) = match (cred, signed, sig) {
        (Some(c), Some(h), Some(s)) => (c, h, s),
        _ => {
            return Err(bad(
                "Credential, SignedHeaders and Signature are all required",
            ))
        }
    };
    let parts: Vec<&str> = cred.split('/').collect();
    let [key, date, region, service, term] = parts[..] else {
        return Err(bad(
            "Credential is not KEY/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    if term != SCOPE_TERMINATOR {
        return Err(SigError::Scope(format!(
            "the scope must end in {SCOPE_TERMINATOR}, not '{term}'"
        )));
    }
    if key.is_empty() {
        return Err(bad("empty access key id"));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
    let sorted = signed_headers.windows(2).all(|w| w[0] < w[1]);
    let lower = signed_headers
        .iter()
        .all(|h| !h.is_empty() && !h.bytes().any(|b| b.is_ascii_uppercase()));
    if !sorted || !lower {
        return Err(bad("SignedHeaders must be lowercase, sorted and distinct"));
    }
    let signature = match hex::decode(sig) {
        Ok(s) if s.len() == 32 => s,
        _ => return Err(bad("Signature is not 64 hex digits")),
    };
    Ok(Authorization {
        access_key_id: key.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature,
    })
}

/// The canonical URI: the path with `.`/`..` segments resolved, URI-encoded (what botocore
/// signs for every service but S3).
pub fn canonical_uri(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    for s in path.split('/') {
        match s {
            "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut p = segs.join("/");
    if !p.starts_with('/') {
        p.insert(0, '/');
    }
    if path.ends_with("/.") || path.ends_with("/..") {
        p.push('/');
    }
    uri_encode(&p, true)
}

/// The canonical query string: every `name=value` decoded and re-encoded with `UriEncode`,
/// sorted by name, then value.
pub fn canonical_query(query: &str) -> Result<String, SigError> {
    let mut pairs = Vec::new();
    for p in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let dec = |s: &str| {
            percent_decode(s.as_bytes(), false)
                .map_err(|e| SigError::Malformed(format!("query string: {e}")))
        };
        pairs.push((uri_encode(&dec(k)?, false), uri_encode(&dec(v)?, false)));
    }
    pairs.sort();
    Ok(pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&"))
}

/// A header value as SigV4 canonicalises it: trimmed, runs of spaces made one.
fn canonical_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The canonical request for `req` over `signed_headers` (lowercase, sorted).
pub fn canonical_request(req: &Request, signed_headers: &[String]) -> Result<String, SigError> {
    let mut s = String::new();
    s.push_str(req.method);
    s.push('\n');
    s.push_str(&canonical_uri(req.path));
    s.push('\n');
    s.push_str(&canonical_query(req.query)?);
    s.push('\n');
    for name in signed_headers {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| canonical_value(v))
            .collect();
        if values.is_empty() {
            return Err(SigError::Malformed(format!(
                "signed header '{name}' is not in the request"
            )));
        }
        s.push_str(name);
        s.push(':');
        s.push_str(&values.join(","));
        s.push('\n');
    }
    s.push('\n');
    s.push_str(&signed_headers.join(";"));
    s.push('\n');
    s.push_str(&hex::encode(Sha256::digest(req.body)));
    Ok(s)
}

/// The string to sign.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length (RFC 2104), so `new_from_slice` cannot fail here.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// The signing key for a secret and a scope.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, SCOPE_TERMINATOR.as_bytes())
}

/// The hex signature of a string to sign (what a client computes; the server compares with
/// [`verify`]).
pub fn sign(key: &[u8], string_to_sign: &str) -> String {
    hex::encode(hmac(key, string_to_sign.as_bytes()))
}

/// Seconds since the Unix epoch of an `x-amz-date` value (`20150830T123600Z`).
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    if s.len() != 16 {
        return None;
    }
    time::PrimitiveDateTime::parse(s, &fmt)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

/// What the server expects of every request.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    pub region: &'a str,
    pub service: &'a str,
    /// The server's clock, seconds since the Unix epoch.
    pub now: i64,
}

/// Verify `req`'s signature. `secret_of` looks up an access key id's secret. Returns the
/// verified access key id.
pub fn verify(
    req: &Request,
    expect: &Expect,
    secret_of: impl FnOnce(&str) -> Option<String>,
) -> Result<String, SigError> {
    let header = |name: &str| {
        let mut it = req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        match (it.next(), it.next()) {
            (Some((_, v)), None) => Ok(Some(v.as_str())),
            (None, _) => Ok(None),
            _ => Err(SigError::Malformed(format!("more than one {name} header"))),
        }
    };
    let auth = parse_authorization(header("authorization")?.ok_or(SigError::Missing)?)?;
    let amz_date =
        header(DATE_HEADER)?.ok_or_else(|| SigError::Malformed("no X-Amz-Date header".into()))?;
    let t = parse_amz_date(amz_date).ok_or_else(|| {
        SigError::Malformed(format!("X-Amz-Date '{amz_date}' is not YYYYMMDDTHHMMSSZ"))
    })?;
    if !auth.signed_headers.iter().any(|h| h == "host")
        || !auth.signed_headers.iter().any(|h| h == DATE_HEADER)
    {
        return Err(SigError::Malformed(
            "SignedHeaders must include host and x-amz-date".into(),
        ));
    }
    if auth.date != amz_date[..8] {
        return Err(SigError::Scope(format!(
            "the scope's date {} is not the request's ({})",
            auth.date,
            &amz_date[..8]
        )));
    }
    if auth.region != expect.region {
        return Err(SigError::Scope(format!(
            "credential should be scoped to a valid region, not '{}' (this server is {})",
            auth.region, expect.region
        )));
    }
    if auth.service != expect.service {
        return Err(SigError::Scope(format!(
            "credential should be scoped to the correct service: '{}', not '{}'",
            expect.service, auth.service
        )));
    }
    if (expect.now - t).abs() > MAX_CLOCK_SKEW_SECS {
        return Err(SigError::Expired(amz_date.to_string()));
    }
    let secret = secret_of(&auth.access_key_id).ok_or(SigError::UnknownKey)?;
    let creq = canonical_request(req, &auth.signed_headers)?;
    let scope = format!(
        "{}/{}/{}/{SCOPE_TERMINATOR}",
        auth.date, auth.region, auth.service
    );
    let sts = string_to_sign(amz_date, &scope, &creq);
    let key = signing_key(&secret, &auth.date, &auth.region, &auth.service);
    let mut mac = <HmacSha256 as Mac>::new_from_slice(&key).unwrap_or_else(|_| unreachable!());
    mac.update(sts.as_bytes());
    mac.verify_slice(&auth.signature)
        .map_err(|_| SigError::Mismatch)?;
    Ok(auth.access_key_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example credentials and time of AWS's SigV4 documentation and test suite.
    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";
    const NOW: i64 = 1_440_938_160; // 2015-08-30T12:36:00Z

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check(
        method: &str,
        query: &str,
        headers: &[(String, String)],
        body: &[u8],
        region: &str,
        service: &str,
    ) -> Result<String, SigError> {
        let req = Request {
            method,
            path: "/",
            query,
            headers,
            body,
        };
        let e = Expect {
            region,
            service,
            now: NOW,
        };
        verify(&req, &e, |k| (k == AKID).then(|| SECRET.to_string()))
    }

    /// aws-sig-v4-test-suite `get-vanilla`: canonical request, string to sign and signature.
    #[test]
    fn get_vanilla_known_answer() {
        let headers = h(&[("Host", "example.amazonaws.com"), ("X-Amz-Date", DATE)]);
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            body: b"",
        };
        let signed = vec!["host".to_string(), "x-amz-date".to_string()];
        let creq = canonical_request(&req, &signed).unwrap();
        assert_eq!(
            creq,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let sts = string_to_sign(DATE, "20150830/us-east-1/service/aws4_request", &creq);
        assert_eq!(
            sts,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n\
             bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
        let key = signing_key(SECRET, "20150830", "us-east-1", "service");
        assert_eq!(
            sign(&key, &sts),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// The IAM `ListUsers` example of the AWS General Reference (signing key and signature).
    #[test]
    fn iam_example_known_answer() {
        let key = signing_key(SECRET, "20150830", "us-east-1", "iam");
        assert_eq!(
            hex::encode(&key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
        let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
                    SignedHeaders=content-type;host;x-amz-date, \
                    Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";
        let headers = h(&[
            ("Host", "iam.amazonaws.com"),
            (
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
            ("X-Amz-Date", DATE),
            ("Authorization", auth),
        ]);
        let q = "Action=ListUsers&Version=2010-05-08";
        assert_eq!(
            check("GET", q, &headers, b"", "us-east-1", "iam").as_deref(),
            Ok(AKID)
        );
        // The same request with its parameters in another order is the same canonical request.
        let q2 = "Version=2010-05-08&Action=ListUsers";
        assert!(check("GET", q2, &headers, b"", "us-east-1", "iam").is_ok());
    }

    /// aws-sig-v4-test-suite `post-x-www-form-urlencoded`: a signed form body.
    fn form_post(sig: &str, body: &[u8]) -> Result<String, SigError> {
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature={sig}"
        );
        let headers = h(&[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", DATE),
            ("Authorization", &auth),
        ]);
        check("POST", "", &headers, body, "us-east-1", "service")
    }

    const FORM_SIG: &str = "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a";

    #[test]
    fn form_post_known_answer_and_tampering() {
        assert_eq!(form_post(FORM_SIG, b"Param1=value1").as_deref(), Ok(AKID));
        assert_eq!(
            form_post(FORM_SIG, b"Param1=value2"),
            Err(SigError::Mismatch)
        );
        let mut bad = FORM_SIG.to_string();
        bad.replace_range(0..1, "e");
        assert_eq!(form_post(&bad, b"Param1=value1"), Err(SigError::Mismatch));
    }

    #[test]
    fn scope_time_and_key_are_checked() {
        let auth = |scope: &str| {
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{scope}, SignedHeaders=host;x-amz-date, \
                 Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            )
        };
        let req = |a: &str, date: &str| {
            h(&[
                ("Host", "example.amazonaws.com"),
                ("X-Amz-Date", date),
                ("Authorization", a),
            ])
        };
        let ok = req(&auth("20150830/us-east-1/service/aws4_request"), DATE);
        assert!(check("GET", "", &ok, b"", "us-east-1", "service").is_ok());
        assert!(matches!(
            check("GET", "", &ok, b"", "eu-west-1", "service"),
            Err(SigError::Scope(_))
        ));
        assert!(matches!(
            check("GET", "", &ok, b"", "us-east-1", "ec2"),
            Err(SigError::Scope(_))
        ));
        let other_day = req(&auth("20150831/us-east-1/service/aws4_request"), DATE);
        assert!(matches!(
            check("GET", "", &other_day, b"", "us-east-1", "service"),
            Err(SigError::Scope(_))
        ));
        let stale = req(
            &auth("20150830/us-east-1/service/aws4_request"),
            "20150830T121500Z",
        );
        assert!(matches!(
            check("GET", "", &stale, b"", "us-east-1", "service"),
            Err(SigError::Expired(_))
        ));
        let unknown = req(
            &auth("20150830/us-east-1/service/aws4_request").replace("AKIDEXAMPLE", "AKIDOTHER"),
            DATE,
        );
        assert_eq!(
            check("GET", "", &unknown, b"", "us-east-1", "service"),
            Err(SigError::UnknownKey)
        );
        let none = h(&[("Host", "example.amazonaws.com"), ("X-Amz-Date", DATE)]);
        assert_eq!(
            check("GET", "", &none, b"", "us-east-1", "service"),
            Err(SigError::Missing)
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        for a in [
            "",
            "AWS4-HMAC-SHA1 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/b/c/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=host",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=x;host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=zz",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/x, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request,,",
        ] {
            assert!(parse_authorization(a).is_err(), "{a}");
        }
        assert_eq!(parse_amz_date(DATE), Some(NOW));
        assert_eq!(parse_amz_date("2015-08-30T12:36:00Z"), None);
        assert_eq!(parse_amz_date("20151330T123600Z"), None);
    }

    #[test]
    fn canonical_uri_and_query() {
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/a/./b/../c"), "/a/c");
        assert_eq!(canonical_uri("/a b"), "/a%20b");
        assert_eq!(canonical_query("b=2&a=1&a=0").unwrap(), "a=0&a=1&b=2");
        assert_eq!(canonical_query("k=a%20b*").unwrap(), "k=a%20b%2A");
        assert!(canonical_query("k=%zz").is_err());
    }
}
