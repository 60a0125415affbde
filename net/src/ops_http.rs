//! A small HTTP/1.1 server for a node's operations endpoints (`/metrics`, `/healthz`,
//! `/readyz`, ...), and the two halves of HTTP every role shares: reading a request head
//! ([`read_head`], [`read_request`]) and writing a whole [`Response`] ([`send`]). The
//! edge's WebSocket listener and `firetower dashboard` read their requests and answer
//! their plain routes with the same two.
//!
//! ```text
//!  listener ─accept (at most max_connections at once)─► connection task
//!     read_head (≤ max_head bytes, ≤ MAX_HEADERS lines, within timeout) ─► 431 / 400 / 408
//!     not GET ─► 405 (allow: GET)
//!     handler(path, query) ─► Some(response) ─► written; None ─► 404
//!     connection: close
//! ```
//!
//! One request per connection: probes and scrapers open one per request or cope with the
//! close, and nothing is kept per client between requests. The handler is a plain
//! function of the request: it reads what the node already holds (counters, a snapshot
//! under a lock held briefly) and never waits, so a slow endpoint cannot hold connections.
//! Everything a client can make the server hold is bounded: the head's bytes and lines,
//! the connections at once (more wait in the kernel's accept queue), and the time a
//! connection lives.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::error::{GetError, HeadError};
use crate::tasks::Tasks;

/// The largest request head read: a request line and a browser's or a scraper's headers
/// fit many times over; a head that does not end within it is answered 431.
pub const MAX_HEAD: usize = 8 << 10;

/// The most header lines parsed (a WebSocket upgrade with cookies and a token has about a
/// dozen); more are answered 431.
pub const MAX_HEADERS: usize = 32;

/// The content type of the metrics text ([prometheus-client] writes OpenMetrics text, which
/// Prometheus reads and which is a superset of its 0.0.4 text format).
///
/// [prometheus-client]: https://docs.rs/prometheus-client
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bounds of an operations server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsLimits {
    /// The largest request head, in bytes ([`MAX_HEAD`]).
    pub max_head: usize,
    /// Connections served at once; the next ones wait in the accept queue. Operators'
    /// probes and scrapers need a handful.
    pub max_connections: usize,
    /// How long a connection may take to send its head, and then to take the response: a
    /// client that trickles its request or stops reading frees its place after this.
    pub timeout: Duration,
}

impl Default for OpsLimits {
    fn default() -> Self {
        OpsLimits {
            max_head: MAX_HEAD,
            max_connections: 64,
            timeout: Duration::from_secs(5),
        }
    }
}

/// What the handler is asked: a GET's path and its query (without the `?`; empty when
/// there is none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub path: &'a str,
    pub query: &'a str,
}

impl<'a> Request<'a> {
    /// The value of the query parameter `name` (as sent: not percent-decoded).
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

/// A whole response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: Cow<'static, str>,
    /// Headers besides content type and length, cache control and connection.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `body` of `content_type`.
    pub fn new(
        status: u16,
        content_type: impl Into<Cow<'static, str>>,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        Response {
            status,
            content_type: content_type.into(),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Plain text.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    /// JSON.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response::new(status, "application/json", body)
    }

    /// Metrics text ([`OPENMETRICS_CONTENT_TYPE`]).
    pub fn metrics(body: impl Into<Vec<u8>>) -> Self {
        Response::new(200, OPENMETRICS_CONTENT_TYPE, body)
    }

    /// `/readyz`: 200 `ready`, or 503 with the reason.
    pub fn readiness(ready: Result<(), String>) -> Self {
        match ready {
            Ok(()) => Response::text(200, "ready"),
            Err(reason) => Response::text(503, format!("not ready: {reason}")),
        }
    }

    /// With one more header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The head, for a body of `length` bytes; without a length the body runs until the
    /// connection closes (an event stream's does).
    pub fn head(&self, length: Option<usize>) -> String {
        let status = self.status;
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut head = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: {}\r\n",
            self.content_type
        );
        if let Some(length) = length {
            head.push_str(&format!("content-length: {length}\r\n"));
        }
        head.push_str("cache-control: no-store\r\nconnection: close\r\n");
        for (name, value) in &self.headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head
    }

    /// The whole response: its head and its body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.head(Some(self.body.len())).into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// Reads and parses a request head of at most `max_head` bytes (and [`MAX_HEADERS`]
/// lines); returns the request and the bytes read after the head (a WebSocket client's
/// first frames may follow its upgrade request in the same packet).
pub async fn read_head<IO: AsyncRead + Unpin>(
    io: &mut IO,
    max_head: usize,
) -> Result<(http::Request<()>, Vec<u8>), HeadError> {
    let too_large = HeadError::TooLarge {
        max: max_head,
        headers: MAX_HEADERS,
    };
    let mut buf = Vec::with_capacity(1024.min(max_head));
    let mut chunk = [0u8; 1024];
    loop {
        // Never more than the bound: a head that has not ended by then is refused.
        let room = max_head.saturating_sub(buf.len()).min(chunk.len());
        if room == 0 {
            return Err(too_large);
        }
        let n = io
            .read(&mut chunk[..room])
            .await
            .map_err(|e| HeadError::Read(e.to_string()))?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let mut builder = http::Request::builder()
                    .method(parsed.method.unwrap_or("GET"))
                    .uri(parsed.path.unwrap_or("/"))
                    .version(http::Version::HTTP_11);
                for h in parsed.headers.iter() {
                    builder = builder.header(h.name, h.value);
                }
                let request = builder
                    .body(())
                    .map_err(|e| HeadError::Malformed(e.to_string()))?;
                return Ok((request, buf[len..].to_vec()));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(too_large),
            Err(e) => return Err(HeadError::Malformed(e.to_string())),
        }
    }
}

/// Writes a whole response (`connection: close`) in one write, then shuts the write side.
pub async fn send<IO: AsyncWrite + Unpin>(io: &mut IO, response: &Response) -> std::io::Result<()> {
    // One write: the client may read the head and the body in one go.
    io.write_all(&response.to_bytes()).await?;
    io.flush().await?;
    io.shutdown().await
}

/// [`read_head`] within `timeout`, or what refuses the head: the response to send (431,
/// 400 or 408), or `None` when the client is gone and nothing is worth sending.
pub async fn read_request<IO: AsyncRead + Unpin>(
    io: &mut IO,
    max_head: usize,
    timeout: Duration,
) -> Result<(http::Request<()>, Vec<u8>), Option<Response>> {
    match tokio::time::timeout(timeout, read_head(io, max_head)).await {
        Ok(Ok(read)) => Ok(read),
        Ok(Err(HeadError::Closed | HeadError::Read(_))) => Err(None),
        Ok(Err(e)) => Err(Some(Response::text(e.status(), e.to_string()))),
        Err(_) => Err(Some(Response::text(408, "request head timed out"))),
    }
}

/// What answers a request head: 405 for anything but GET, the handler's response, or 404
/// when it has none for the path.
pub fn answer<H>(handler: &H, request: &http::Request<()>) -> Response
where
    H: Fn(&Request<'_>) -> Option<Response>,
{
    if request.method() != http::Method::GET {
        return Response::text(405, "only GET is served").with_header("allow", "GET");
    }
    let asked = Request {
        path: request.uri().path(),
        query: request.uri().query().unwrap_or(""),
    };
    handler(&asked).unwrap_or_else(|| Response::text(404, "not found"))
}

/// Serves `handler` on `listener` with the default [`OpsLimits`] until `shutdown`
/// completes; returns once every connection it accepted has ended.
pub async fn serve<H>(listener: TcpListener, handler: H, shutdown: impl Future<Output = ()> + Send)
where
    H: Fn(&Request<'_>) -> Option<Response> + Send + Sync + 'static,
{
    serve_with(listener, OpsLimits::default(), handler, shutdown).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with<H>(
    listener: TcpListener,
    limits: OpsLimits,
    handler: H,
    shutdown: impl Future<Output = ()> + Send,
) where
    H: Fn(&Request<'_>) -> Option<Response> + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let seats = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tasks = Tasks::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A seat first: beyond the bound, connections wait in the accept queue.
        let seat = tokio::select! {
            seat = seats.clone().acquire_owned() => match seat {
                Ok(seat) => seat,
                Err(_) => break, // never closed
            },
            _ = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let limits = limits.clone();
                tasks.spawn(async move {
                    serve_conn(stream, &*handler, &limits).await;
                    drop(seat);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "operations listener: accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = &mut shutdown => break,
                }
            }
        }
    }
    drop(listener);
    // Each connection ends within its timeouts; past them it is stopped where it is.
    tasks
        .shutdown(tokio::time::Instant::now() + 2 * limits.timeout)
        .await;
}

/// One connection: its request, its response, then close.
async fn serve_conn<IO, H>(mut io: IO, handler: &H, limits: &OpsLimits)
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Fn(&Request<'_>) -> Option<Response>,
{
    let response = match read_request(&mut io, limits.max_head, limits.timeout).await {
        Ok((request, _)) => answer(handler, &request),
        Err(Some(refusal)) => refusal,
        Err(None) => return,
    };
    let _ = tokio::time::timeout(limits.timeout, send(&mut io, &response)).await;
}

/// The largest response head [`get`] takes before the body.
const MAX_RESPONSE_HEAD: usize = 16 << 10;

/// GETs `path` from `addr` (HOST:PORT, plain HTTP), as a scraper would: the response, whose
/// body may be at most `max_body` bytes, all within `timeout`. Of the response's headers
/// only the content type is kept (empty when there is none).
pub async fn get(
    addr: &str,
    path: &str,
    timeout: Duration,
    max_body: usize,
) -> Result<Response, GetError> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| GetError::Connect(e.to_string()))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: */*\r\nuser-agent: firetower-dashboard\r\nconnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| GetError::Write(e.to_string()))?;
        let mut buf = Vec::with_capacity(16 << 10);
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| GetError::Read(e.to_string()))?;
            buf.extend_from_slice(&chunk[..n]);
            if let Some(response) = parse_response(&buf, n == 0, max_body)? {
                return Ok(response);
            }
            if n == 0 {
                return Err(GetError::Closed("the response"));
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| GetError::Timeout {
            ms: timeout.as_millis(),
        })?
}

/// Parses a response out of `buf`: `Ok(None)` while it is incomplete (`eof`: nothing more
/// will come). Takes a `content-length` body, a chunked one, or one that runs to the end.
pub fn parse_response(
    buf: &[u8],
    eof: bool,
    max_body: usize,
) -> Result<Option<Response>, GetError> {
    // Whatever the framing: a chunk-size line that never ends, or chunks of a byte each,
    // must not grow the buffer without bound while the deadline runs.
    if buf.len() > MAX_RESPONSE_HEAD.saturating_add(max_body.saturating_mul(2)) {
        return Err(GetError::BodyTooLarge { max: max_body });
    }
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_RESPONSE_HEAD {
            Err(GetError::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| GetError::Malformed("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .and_then(|l| l.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or(GetError::Malformed("bad status line"))?;
    let (mut length, mut chunked, mut content_type) = (None, false, String::new());
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value.parse::<usize>();
            length = Some(n.map_err(|_| GetError::Malformed("bad content-length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = value.to_string();
        }
    }
    let response = |body: &[u8]| Response::new(status, content_type.clone(), body);
    let body = &buf[head_end + 4..];
    let too_large = GetError::BodyTooLarge { max: max_body };
    if chunked {
        return match dechunk(body, max_body)? {
            Some(body) => Ok(Some(response(&body))),
            None if eof => Err(GetError::Closed("a chunked body")),
            None => Ok(None),
        };
    }
    match length {
        Some(n) if n > max_body => Err(too_large),
        Some(n) if body.len() >= n => Ok(Some(response(&body[..n]))),
        Some(_) if eof => Err(GetError::Closed("the body")),
        Some(_) => Ok(None),
        None if body.len() > max_body => Err(too_large),
        None if eof => Ok(Some(response(body))),
        None => Ok(None),
    }
}

/// The body of a chunked transfer, once the last chunk is in.
fn dechunk(mut body: &[u8], max_body: usize) -> Result<Option<Vec<u8>>, GetError> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = find(body, b"\r\n") else {
            return Ok(None);
        };
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .map(|l| l.split(';').next().unwrap_or("").trim())
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .ok_or(GetError::Malformed("bad chunk size"))?;
        if size == 0 {
            return Ok(Some(out));
        }
        if out.len().saturating_add(size) > max_body {
            return Err(GetError::BodyTooLarge { max: max_body });
        }
        let data = &body[line_end + 2..];
        if data.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[..size]);
        body = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn handler(request: &Request<'_>) -> Option<Response> {
        match request.path {
            "/healthz" => Some(Response::text(200, "ok")),
            "/echo" => Some(Response::text(
                200,
                request.param("say").unwrap_or("nothing").to_string(),
            )),
            _ => None,
        }
    }

    /// The status line and body of a raw response.
    fn parse(response: &[u8]) -> (String, String, String) {
        let text = String::from_utf8_lossy(response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.lines().next().unwrap_or("").to_string();
        (status, head.to_string(), body.to_string())
    }

    /// Runs one connection over an in-memory pipe: writes `request`, returns the response.
    async fn exchange(request: &[u8], limits: OpsLimits) -> Vec<u8> {
        let (mut client, server) = duplex(64 << 10);
        let serving = tokio::spawn(async move { serve_conn(server, &handler, &limits).await });
        client.write_all(request).await.unwrap();
        let mut response = Vec::new();
        client.read_to_end(&mut response).await.unwrap();
        serving.await.unwrap();
        response
    }

    #[tokio::test]
    async fn known_paths_answer_unknown_ones_are_404_and_other_methods_405() {
        let ok = exchange(
            b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
            OpsLimits::default(),
        )
        .await;
        let (status, head, body) = parse(&ok);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(head.contains("content-length: 2"));
        assert!(head.contains("connection: close"));
        assert_eq!(body, "ok");

        let query = exchange(
            b"GET /echo?x=1&say=hi HTTP/1.1\r\n\r\n",
            OpsLimits::default(),
        )
        .await;
        assert_eq!(parse(&query).2, "hi");

        let missing = exchange(b"GET /nope HTTP/1.1\r\n\r\n", OpsLimits::default()).await;
        assert_eq!(parse(&missing).0, "HTTP/1.1 404 Not Found");

        let post = exchange(
            b"POST /healthz HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            OpsLimits::default(),
        )
        .await;
        let (status, head, _) = parse(&post);
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert!(head.contains("allow: GET"));
    }

    #[tokio::test]
    async fn an_oversize_head_is_431_and_garbage_is_400() {
        let limits = OpsLimits {
            max_head: 256,
            ..OpsLimits::default()
        };
        let mut big = b"GET /healthz HTTP/1.1\r\n".to_vec();
        while big.len() < 1024 {
            big.extend_from_slice(b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        big.extend_from_slice(b"\r\n");
        let (status, _, body) = parse(&exchange(&big, limits.clone()).await);
        assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
        assert!(body.contains("256 bytes"), "{body}");

        // Within the bytes, over the lines.
        let mut many = b"GET /healthz HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let (status, ..) = parse(&exchange(&many, OpsLimits::default()).await);
        assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");

        let (status, ..) = parse(&exchange(b"\x00\x01 nonsense\r\n\r\n", limits).await);
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_never_ends_is_408_after_the_timeout() {
        let limits = OpsLimits {
            timeout: Duration::from_secs(5),
            ..OpsLimits::default()
        };
        let (mut client, server) = duplex(4096);
        let serving = tokio::spawn(async move { serve_conn(server, &handler, &limits).await });
        client
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        // The paused clock jumps to the timeout once every task waits.
        let mut response = Vec::new();
        client.read_to_end(&mut response).await.unwrap();
        serving.await.unwrap();
        assert_eq!(parse(&response).0, "HTTP/1.1 408 Request Timeout");
    }

    #[tokio::test]
    async fn read_head_keeps_the_bytes_after_the_head() {
        let (mut client, mut server) = duplex(4096);
        client
            .write_all(b"GET /ws?token=t HTTP/1.1\r\nHost: a\r\n\r\n\x81\x05hello")
            .await
            .unwrap();
        let (request, leftover) = read_head(&mut server, MAX_HEAD).await.unwrap();
        assert_eq!(request.uri().path(), "/ws");
        assert_eq!(request.uri().query(), Some("token=t"));
        assert_eq!(request.headers()["host"], "a");
        assert_eq!(leftover, b"\x81\x05hello");
        drop(client);
        assert_eq!(
            read_head(&mut server, MAX_HEAD).await.unwrap_err(),
            HeadError::Closed
        );
    }

    #[test]
    fn responses_by_length_chunks_and_close() {
        let body = |r: Result<Option<Response>, GetError>| r.map(|r| r.map(|r| (r.status, r.body)));
        let by_length =
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello";
        assert_eq!(
            parse_response(by_length, false, 100),
            Ok(Some(Response::new(200, "text/plain", "hello")))
        );
        assert_eq!(body(parse_response(&by_length[..30], false, 100)), Ok(None));
        assert_eq!(
            body(parse_response(by_length, false, 4)),
            Err(GetError::BodyTooLarge { max: 4 })
        );

        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            body(parse_response(chunked, false, 100)),
            Ok(Some((200, b"abcde".to_vec())))
        );
        assert_eq!(body(parse_response(&chunked[..55], false, 100)), Ok(None));
        assert!(parse_response(chunked, false, 4).is_err());
        // A chunk-size line that never ends is cut off, not buffered for ever.
        let mut endless = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        endless.extend(std::iter::repeat_n(b'f', 300));
        assert_eq!(body(parse_response(&endless, false, 100)), Ok(None));
        endless.extend(std::iter::repeat_n(b'f', MAX_RESPONSE_HEAD));
        assert_eq!(
            body(parse_response(&endless, false, 100)),
            Err(GetError::BodyTooLarge { max: 100 })
        );

        let to_close = b"HTTP/1.0 404 Not Found\r\n\r\nnope";
        assert_eq!(body(parse_response(to_close, false, 100)), Ok(None));
        assert_eq!(
            body(parse_response(to_close, true, 100)),
            Ok(Some((404, b"nope".to_vec())))
        );
        assert_eq!(
            body(parse_response(b"SSH-2.0-x\r\n\r\n", true, 100)),
            Err(GetError::Malformed("bad status line"))
        );
    }

    #[tokio::test]
    async fn a_real_get_over_a_socket_and_a_clean_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, handler, async move {
            let _ = stopped.await;
        }));
        let addr = addr.to_string();
        let get = |path| get(&addr, path, Duration::from_secs(5), 1 << 10);
        assert_eq!(get("/healthz").await, Ok(Response::text(200, "ok")));
        assert_eq!(get("/nope").await.map(|r| r.status), Ok(404));
        stop.send(()).unwrap();
        server.await.unwrap();
        // The listener is closed once `serve` has returned.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn connections_beyond_the_bound_wait_for_a_seat() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = OpsLimits {
            max_connections: 1,
            ..OpsLimits::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(listener, limits, handler, async move {
            let _ = stopped.await;
        }));
        // The first holds the only seat with an unfinished head.
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        first.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        second
            .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        // Not answered while the first holds the seat (nothing to read, the connection
        // still open)...
        let mut byte = [0u8; 1];
        assert_eq!(
            second.try_read(&mut byte).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock)
        );
        // ...and answered once it is done.
        first.write_all(b"\r\n").await.unwrap();
        let mut response = Vec::new();
        first.read_to_end(&mut response).await.unwrap();
        assert_eq!(parse(&response).0, "HTTP/1.1 200 OK");
        let mut response = Vec::new();
        second.read_to_end(&mut response).await.unwrap();
        assert_eq!(parse(&response).0, "HTTP/1.1 200 OK");
        stop.send(()).unwrap();
        server.await.unwrap();
    }
}
