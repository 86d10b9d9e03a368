//! The HTTP/1.x the metadata service speaks: parsing one request head from bytes, and writing
//! one response. Pure code, tested without a network.
//!
//! One request per connection: every response says `Connection: close` and the connection is
//! closed once it is sent (HTTP/1.1, RFC 9112 section 9.6), so a request body is never read.

/// The most bytes a request head (request line and headers) may take. EC2 does not publish
/// its limit; 8 KiB is the common default of HTTP servers (Apache's `LimitRequestFieldSize`,
/// nginx's `large_client_header_buffers`), far more than any metadata client sends.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// The most header fields a request may have (Apache's `LimitRequestFields` is 100).
pub const MAX_HEADERS: usize = 64;

/// A request head, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// Header names in lower case, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The value of header `name` (lower case), the first if repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// How many times header `name` (lower case) appears.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// The head is not complete yet (and still within [`MAX_HEAD_BYTES`]).
    Incomplete,
    Done(Request),
    /// Not a request this service answers: the status to send before closing.
    Bad(Status),
}

/// The statuses the service answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    HeaderTooLarge,
    VersionNotSupported,
}

impl Status {
    /// The code and reason phrase (RFC 9110 section 15; 431 from RFC 6585).
    pub fn code_reason(self) -> (u16, &'static str) {
        match self {
            Status::Ok => (200, "OK"),
            Status::BadRequest => (400, "Bad Request"),
            Status::Unauthorized => (401, "Unauthorized"),
            Status::Forbidden => (403, "Forbidden"),
            Status::NotFound => (404, "Not Found"),
            Status::MethodNotAllowed => (405, "Method Not Allowed"),
            Status::HeaderTooLarge => (431, "Request Header Fields Too Large"),
            Status::VersionNotSupported => (505, "HTTP Version Not Supported"),
        }
    }
}

/// Parse the request head at the start of `buf` (all bytes received on the connection).
pub fn parse(buf: &[u8]) -> Parse {
    let Some(end) = find_head_end(buf) else {
        return if buf.len() >= MAX_HEAD_BYTES {
            Parse::Bad(Status::HeaderTooLarge)
        } else {
            Parse::Incomplete
        };
    };
    if end > MAX_HEAD_BYTES {
        return Parse::Bad(Status::HeaderTooLarge);
    }
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Parse::Bad(Status::BadRequest);
    };
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let Some(line) = lines.next() else {
        return Parse::Bad(Status::BadRequest);
    };
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Parse::Bad(Status::BadRequest);
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Parse::Bad(if version.starts_with("HTTP/") {
            Status::VersionNotSupported
        } else {
            Status::BadRequest
        });
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Parse::Bad(Status::BadRequest);
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Parse::Bad(Status::BadRequest);
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let mut headers = Vec::new();
    for l in lines {
        if headers.len() == MAX_HEADERS {
            return Parse::Bad(Status::HeaderTooLarge);
        }
        let Some((name, value)) = l.split_once(':') else {
            return Parse::Bad(Status::BadRequest);
        };
        // RFC 9112 section 5.1: no whitespace between the field name and the colon; no
        // obsolete line folding.
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Parse::Bad(Status::BadRequest);
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    Parse::Done(Request {
        method: method.to_string(),
        path: path.to_string(),
        headers,
    })
}

/// Where the head ends (after the blank line), within the first [`MAX_HEAD_BYTES`] + 4 bytes.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let window = &buf[..buf.len().min(MAX_HEAD_BYTES + 4)];
    window
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
}

/// RFC 9110 section 5.6.2 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    /// Extra headers (name, value).
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Do not send the body (a HEAD request); Content-Length still counts it.
    pub head_only: bool,
}

impl Response {
    /// A `text/plain` response.
    pub fn text(status: Status, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
            head_only: false,
        }
    }

    /// An error status with its reason phrase as the body.
    pub fn error(status: Status) -> Response {
        let (_, reason) = status.code_reason();
        Response::text(status, reason)
    }

    /// The bytes to send, head and body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (code, reason) = self.status.code_reason();
        let mut out = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\nServer: EC2ws\r\n",
            self.body.len()
        );
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        if self.status == Status::MethodNotAllowed {
            out.push_str("Allow: GET, HEAD, PUT\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(s: &str) -> Request {
        match parse(s.as_bytes()) {
            Parse::Done(r) => r,
            o => panic!("{s:?}: {o:?}"),
        }
    }

    #[test]
    fn parses_a_request_head() {
        let r = done(
            "GET /latest/meta-data/?x=1 HTTP/1.1\r\nHost: 169.254.169.254\r\n\
             X-aws-ec2-metadata-token: abc \r\n\r\nbody",
        );
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/latest/meta-data/");
        assert_eq!(r.header("x-aws-ec2-metadata-token"), Some("abc"));
        assert_eq!(r.header_count("host"), 1);
        assert_eq!(done("PUT / HTTP/1.0\r\n\r\n").headers, vec![]);
    }

    #[test]
    fn incomplete_until_the_blank_line() {
        assert_eq!(parse(b""), Parse::Incomplete);
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n"), Parse::Incomplete);
    }

    #[test]
    fn refuses_malformed_heads() {
        for bad in [
            "GET\r\n\r\n",
            "GET / HTTP/1.1 extra\r\n\r\n",
            "get / HTTP/1.1\r\n\r\n",
            "GET relative HTTP/1.1\r\n\r\n",
            "GET / FTP/1.0\r\n\r\n",
            "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: v\r\n\r\n",
            "GET / HTTP/1.1\r\n: v\r\n\r\n",
            "\r\n\r\n",
        ] {
            assert_eq!(
                parse(bad.as_bytes()),
                Parse::Bad(Status::BadRequest),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse(b"GET / HTTP/2.0\r\n\r\n"),
            Parse::Bad(Status::VersionNotSupported)
        );
        assert_eq!(
            parse(b"GET /\xff HTTP/1.1\r\n\r\n"),
            Parse::Bad(Status::BadRequest)
        );
    }

    #[test]
    fn bounds_the_head() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD_BYTES, b'a');
        assert_eq!(parse(&big), Parse::Bad(Status::HeaderTooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        assert_eq!(
            parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Parse::Bad(Status::HeaderTooLarge)
        );
    }

    #[test]
    fn writes_a_response() {
        let mut r = Response::text(Status::Ok, "i-0123");
        r.headers.push(("X-Test", "1".into()));
        let s = String::from_utf8(r.to_bytes()).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"), "{s}");
        assert!(s.contains("Content-Length: 6\r\n") && s.contains("X-Test: 1\r\n"));
        assert!(s.ends_with("\r\n\r\ni-0123"));
        r.head_only = true;
        assert!(String::from_utf8(r.to_bytes())
            .unwrap()
            .ends_with("\r\n\r\n"));
        let s = String::from_utf8(Response::error(Status::MethodNotAllowed).to_bytes()).unwrap();
        assert!(s.starts_with("HTTP/1.1 405 ") && s.contains("Allow: GET, HEAD, PUT"));
    }
}
