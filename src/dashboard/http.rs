//! The little HTTP the dashboard speaks: the head of a browser's request, its answers, and
//! a GET to a member's plain-HTTP endpoints (`/metrics`, `/topics`, `/api/topic`).
//!
//! Parsing is pure (tested below); the I/O functions bound every read by size and time.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest request head the dashboard reads (it serves GETs without bodies).
pub const MAX_REQUEST_HEAD: usize = 8 << 10;
/// The largest response head a member may send before its body.
const MAX_RESPONSE_HEAD: usize = 16 << 10;

/// A browser's request: what the dashboard routes on.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
}

/// Parses a request head out of `buf`: `Ok(None)` while it is incomplete.
pub fn parse_request_head(buf: &[u8]) -> Result<Option<Request>, &'static str> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() >= MAX_REQUEST_HEAD {
            Err("request head too large")
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "request head is not UTF-8")?;
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("bad request line");
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err("bad request line");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
    }))
}

/// Reads a request head from `io` within `timeout`.
pub async fn read_request<IO: AsyncRead + Unpin>(
    io: &mut IO,
    timeout: Duration,
) -> Result<Request, &'static str> {
    let read = async {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            let n = io.read(&mut chunk).await.map_err(|_| "read failed")?;
            if n == 0 {
                return Err("connection closed inside the request head");
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(request) = parse_request_head(&buf)? {
                return Ok(request);
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| "request head timed out")?
}

/// Writes a whole answer and closes the connection.
pub async fn respond<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let mut response = response_head(status, content_type, Some(body.len())).into_bytes();
    response.extend_from_slice(body);
    io.write_all(&response).await?;
    io.flush().await?;
    io.shutdown().await
}

/// The head of an answer; without a length the body runs until the connection closes (the
/// event stream).
pub fn response_head(status: u16, content_type: &str, length: Option<usize>) -> String {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let length = length.map_or(String::new(), |n| format!("content-length: {n}\r\n"));
    // The page loads only what this process serves (no inline script, no other origin).
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n{length}cache-control: no-store\r\n\
         x-content-type-options: nosniff\r\nx-frame-options: DENY\r\n\
         content-security-policy: default-src 'self'; style-src 'self'; img-src 'self' data:\r\n\
         connection: close\r\n\r\n"
    )
}

/// GETs `path` from `addr` (HOST:PORT, plain HTTP): the status and the body, which may be
/// at most `max_body` bytes; the whole exchange within `timeout`.
pub async fn get(
    addr: &str,
    path: &str,
    timeout: Duration,
    max_body: usize,
) -> Result<(u16, Vec<u8>), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: */*\r\nuser-agent: firetower-dashboard\r\nconnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::with_capacity(16 << 10);
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            buf.extend_from_slice(&chunk[..n]);
            if let Some(response) = parse_response(&buf, n == 0, max_body)? {
                return Ok(response);
            }
            if n == 0 {
                return Err("connection closed inside the response".to_string());
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
}

/// Parses a response out of `buf`: `Ok(None)` while it is incomplete (`eof`: nothing more
/// will come). Takes a `content-length` body, a chunked one, or one that runs to the end.
pub fn parse_response(
    buf: &[u8],
    eof: bool,
    max_body: usize,
) -> Result<Option<(u16, Vec<u8>)>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_RESPONSE_HEAD {
            Err("response head too large".to_string())
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .and_then(|l| l.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("bad status line")?;
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = &buf[head_end + 4..];
    let too_large = || format!("body exceeds {max_body} bytes");
    if chunked {
        return match dechunk(body, max_body)? {
            Some(body) => Ok(Some((status, body))),
            None if eof => Err("connection closed inside a chunked body".to_string()),
            None => Ok(None),
        };
    }
    match length {
        Some(n) if n > max_body => Err(too_large()),
        Some(n) if body.len() >= n => Ok(Some((status, body[..n].to_vec()))),
        Some(_) if eof => Err("connection closed inside the body".to_string()),
        Some(_) => Ok(None),
        None if body.len() > max_body => Err(too_large()),
        None if eof => Ok(Some((status, body.to_vec()))),
        None => Ok(None),
    }
}

/// The body of a chunked transfer, once the last chunk is in.
fn dechunk(mut body: &[u8], max_body: usize) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = find(body, b"\r\n") else {
            return Ok(None);
        };
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .map(|l| l.split(';').next().unwrap_or("").trim())
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .ok_or("bad chunk size")?;
        if size == 0 {
            return Ok(Some(out));
        }
        if out.len().saturating_add(size) > max_body {
            return Err(format!("body exceeds {max_body} bytes"));
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

/// `text` as a query parameter value: everything but unreserved characters escaped.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        assert_eq!(
            parse_request_head(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Ok(None)
        );
        assert_eq!(
            parse_request_head(b"GET /api/state?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Some(Request {
                method: "GET".into(),
                path: "/api/state".into(),
                query: "x=1".into()
            }))
        );
        assert!(parse_request_head(b"GET nothing HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_request_head(b"GARBAGE\r\n\r\n").is_err());
        assert!(parse_request_head(&vec![b'a'; MAX_REQUEST_HEAD]).is_err());
    }

    #[test]
    fn responses_by_length_chunks_and_close() {
        let by_length = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse_response(by_length, false, 100),
            Ok(Some((200, b"hello".to_vec())))
        );
        assert_eq!(parse_response(&by_length[..30], false, 100), Ok(None));
        assert!(parse_response(by_length, false, 4).is_err());

        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked, false, 100),
            Ok(Some((200, b"abcde".to_vec())))
        );
        assert_eq!(parse_response(&chunked[..55], false, 100), Ok(None));
        assert!(parse_response(chunked, false, 4).is_err());

        let to_close = b"HTTP/1.0 404 Not Found\r\n\r\nnope";
        assert_eq!(parse_response(to_close, false, 100), Ok(None));
        assert_eq!(
            parse_response(to_close, true, 100),
            Ok(Some((404, b"nope".to_vec())))
        );
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n", true, 100).is_err());
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(percent_encode("chat/lobby#2 x"), "chat%2Flobby%232%20x");
    }
}
