//! The HTTP/1.1 server: hyper 1 on a small tokio runtime.
//!
//! Why hyper: it is the maintained, widely deployed Rust HTTP implementation, and every limit
//! this server needs is enforceable with it: the number of headers (`max_headers`, answered
//! with 431), the size of the request head (`max_buf_size`), a deadline for reading each
//! request head, idle keep-alive connections included (`header_read_timeout`). The rest is
//! here: a cap on open connections (more are answered 503 and closed), a cap on a body's size
//! (413, checked against `Content-Length` before anything is read), a deadline for reading a
//! body (408), and a budget of buffered body bytes across all requests (503 when spent), so
//! memory stays bounded whatever clients send. Store and instance work is blocking, so it runs
//! on tokio's bounded blocking pool.

use super::dispatch::{self, error_response, HttpRequest, HttpResponse};
use super::errors::{self, ApiError};
use super::{Api, ServeError};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The server's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections; more are answered 503 and closed.
    pub max_connections: usize,
    /// Headers in one request; more are answered 431.
    pub max_headers: usize,
    /// Bytes of a request head (hyper's read buffer; its minimum is 8192).
    pub max_head_bytes: usize,
    /// Bytes of one request body.
    pub max_body: usize,
    /// Bytes of request bodies buffered at once, all requests together.
    pub body_budget: usize,
    /// Deadline for a request head, from the first byte awaited (idle keep-alive included).
    pub header_timeout: Duration,
    /// Deadline for a request body.
    pub body_timeout: Duration,
    /// Threads running store and instance work at once.
    pub worker_threads: usize,
}

/// Defaults sized for one machine serving its own tools.
pub const DEFAULT_LIMITS: Limits = Limits {
    max_connections: 1024,
    // EC2 clients send about ten headers; 100 is hyper's default.
    max_headers: 100,
    max_head_bytes: 64 * 1024,
    // The largest EC2 Query request is a few hundred KiB (RunInstances' UserData is at most
    // 16 KiB before base64, EC2 User Guide "Instance user data").
    max_body: 1024 * 1024,
    body_budget: 64 * 1024 * 1024,
    header_timeout: Duration::from_secs(10),
    body_timeout: Duration::from_secs(10),
    worker_threads: 32,
};

/// The answer to a connection over [`Limits::max_connections`].
const BUSY_RESPONSE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
/// How long writing that answer may take.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed accept (e.g. EMFILE), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Threads polling connections: the work itself runs on the blocking pool.
const IO_THREADS: usize = 2;

/// Listen on `addr` and serve until SIGINT or SIGTERM. `ready` is called with the bound
/// address once the server accepts connections.
pub fn serve(
    api: Api,
    addr: SocketAddr,
    limits: Limits,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    if limits.max_head_bytes < 8192 {
        return Err(ServeError::Config(
            "max_head_bytes must be at least 8192".into(),
        ));
    }
    raise_fd_limit(limits.max_connections);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(IO_THREADS)
        .max_blocking_threads(limits.worker_threads)
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ServeError::Listen { addr, source })?;
        ready(bound);
        let mut api = api;
        api.endpoint = bound.to_string();
        let shared = Arc::new(Shared {
            api,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            body_budget: Arc::new(Semaphore::new(limits.body_budget / 1024)),
            limits,
        });
        tokio::select! {
            () = accept_loop(listener, shared) => {}
            () = shutdown_signal() => log::info!("shutting down (instances keep running)"),
        }
        Ok(())
    })
}

/// Descriptors the server needs besides its connections (store files, instance processes'
/// pipes, the runtime).
const SPARE_FDS: u64 = 256;

/// Raise the soft RLIMIT_NOFILE so `max_connections` sockets fit (many systems start at 1024),
/// with the run locks the instance index keeps open, up to the hard limit.
fn raise_fd_limit(max_connections: usize) {
    let want = max_connections as u64 + SPARE_FDS + crate::instance::index::MAX_OPEN_PROBES as u64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit struct we pass, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur >= want {
        return;
    }
    lim.rlim_cur = want.min(lim.rlim_max);
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        log::warn!(
            "cannot raise the open-file limit to {want}: {}",
            std::io::Error::last_os_error()
        );
    }
}

struct Shared {
    api: Api,
    limits: Limits,
    connections: Arc<Semaphore>,
    /// KiB of body that may be held in memory (until the request is answered).
    body_budget: Arc<Semaphore>,
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (mut stream, _peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(BUSY_WRITE_TIMEOUT, stream.write_all(BUSY_RESPONSE)).await;
            });
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc_shared = shared.clone();
            let svc = service_fn(move |req| {
                let s = svc_shared.clone();
                async move { Ok::<_, Infallible>(answer(s, req).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(shared.limits.header_timeout)
                .max_headers(shared.limits.max_headers)
                .max_buf_size(shared.limits.max_head_bytes)
                .keep_alive(true);
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                log::debug!("connection: {e}");
            }
            drop(permit);
        });
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn to_hyper(r: HttpResponse, request_id: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(r.body)));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(r.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/xml;charset=UTF-8"),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    resp
}

/// Read the body within the limits, then dispatch on the blocking pool.
async fn answer(s: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let request_id = super::request_id();
    let fail = |e: ApiError| to_hyper(error_response(&e, &request_id), &request_id);
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max = s.limits.max_body;
    if declared.is_some_and(|n| n > max as u64) {
        return fail(ApiError::new(
            errors::REQUEST_ENTITY_TOO_LARGE,
            format!("The request body is larger than {max} bytes"),
        ));
    }
    // Reserve the body's size (all of max_body when it is not declared) from the budget.
    let reserve = declared.map_or(max, |n| n as usize).div_ceil(1024).max(1);
    let Ok(budget) = s
        .body_budget
        .clone()
        .try_acquire_many_owned(u32::try_from(reserve).unwrap_or(u32::MAX))
    else {
        return fail(ApiError::new(
            errors::SERVICE_UNAVAILABLE,
            "The server is busy reading other requests; retry",
        ));
    };
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(s.limits.body_timeout, Limited::new(body, max).collect())
        .await
    {
        Err(_) => {
            return fail(ApiError::new(
                errors::REQUEST_TIMEOUT,
                "The request body was not received in time",
            ))
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return fail(ApiError::new(
                errors::REQUEST_ENTITY_TOO_LARGE,
                format!("The request body is larger than {max} bytes"),
            ))
        }
        Ok(Err(e)) => {
            return fail(ApiError::new(
                errors::MALFORMED_QUERY_STRING,
                format!("cannot read the request body: {e}"),
            ))
        }
        Ok(Ok(b)) => b.to_bytes(),
    };
    let http = HttpRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts
            .headers
            .iter()
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_string(), v.to_string()))
            })
            .collect(),
        body: body.to_vec(),
    };
    let rid = request_id.clone();
    let started = std::time::Instant::now();
    let resp =
        tokio::task::spawn_blocking(move || dispatch::handle(&s.api, &http, now_unix(), &rid))
            .await
            .unwrap_or_else(|e| {
                error_response(
                    &ApiError::new(errors::INTERNAL_ERROR, format!("the handler failed: {e}")),
                    &request_id,
                )
            });
    drop(budget);
    log::info!(
        "{} {} {:.1} ms",
        request_id,
        resp.status,
        started.elapsed().as_secs_f64() * 1000.0
    );
    to_hyper(resp, &request_id)
}
