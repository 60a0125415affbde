//! The little HTTP the dashboard speaks besides what it shares with every node
//! (`firetower_net::ops_http`: reading a browser's request head, writing an answer, a
//! bounded GET to a member's plain-HTTP endpoints): the headers of its answers, and query
//! values.

use firetower_net::ops_http::Response;

/// `response` with the headers every answer of the dashboard carries: the page loads only
/// what this process serves (no inline script, no other origin), and is never framed.
pub fn secured(response: Response) -> Response {
    response
        .with_header("x-content-type-options", "nosniff")
        .with_header("x-frame-options", "DENY")
        .with_header(
            "content-security-policy",
            "default-src 'self'; style-src 'self'; img-src 'self' data:",
        )
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
    fn encodes_query_values() {
        assert_eq!(percent_encode("chat/lobby#2 x"), "chat%2Flobby%232%20x");
    }
}
