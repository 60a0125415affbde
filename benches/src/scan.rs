//! Reads the fields the load generator needs straight out of a delivery frame's bytes.
//!
//! The generator's payload is `{"ts":<ns>,"n":<n>,"p":"…"}` and its topics are
//! `bench-<k>`, so a delivery looks like
//! `{"type":"publish","topic":"bench-3","data":{"ts":…,"n":…,"p":"…"},"epoch":…,"seq":…}`.
//! Scanning for the few keys is far cheaper than a JSON parse and allocates nothing.

/// The fields of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub topic: u32,
    pub ts_ns: u64,
    pub n: u64,
}

fn number_after(frame: &[u8], key: &[u8]) -> Option<(u64, usize)> {
    let at = find(frame, key)? + key.len();
    let mut value = 0u64;
    let mut end = at;
    while let Some(d) = frame.get(end).filter(|b| b.is_ascii_digit()) {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        end += 1;
    }
    (end > at).then_some((value, end))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The digits at the start of `b`, and the rest.
fn leading_number(b: &[u8]) -> Option<(u64, &[u8])> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let value = b[..digits]
        .iter()
        .fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
    Some((value, &b[digits..]))
}

/// Parses a delivery frame of the generator's own messages; `None` for anything else.
pub fn scan_delivery(frame: &[u8]) -> Option<Delivery> {
    if !frame.starts_with(br#"{"type":"publish""#) {
        return None;
    }
    // Fast path: the fields in the order the edge writes them.
    let fast = (|| {
        let rest = frame.strip_prefix(br#"{"type":"publish","topic":"bench-"#)?;
        let (topic, rest) = leading_number(rest)?;
        let rest = rest.strip_prefix(br#"","data":{"ts":"#)?;
        let (ts_ns, rest) = leading_number(rest)?;
        let rest = rest.strip_prefix(br#","n":"#)?;
        let (n, _) = leading_number(rest)?;
        Some(Delivery {
            topic: u32::try_from(topic).ok()?,
            ts_ns,
            n,
        })
    })();
    if fast.is_some() {
        return fast;
    }
    let (topic, _) = number_after(frame, br#""topic":"bench-"#)?;
    let (ts_ns, _) = number_after(frame, br#""ts":"#)?;
    let (n, _) = number_after(frame, br#""n":"#)?;
    Some(Delivery {
        topic: u32::try_from(topic).ok()?,
        ts_ns,
        n,
    })
}

/// The generator's payload of `size` bytes (at least the fields themselves).
pub fn payload(ts_ns: u64, n: u64, size: usize) -> String {
    let mut s = format!(r#"{{"ts":{ts_ns},"n":{n},"p":""#);
    let pad = size.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_what_the_edge_encodes() {
        let data = payload(123456789, 42, 128);
        assert_eq!(data.len(), 128);
        let frame = firetower_proto::client::encode_delivery("bench-7", &data, 3, 99);
        assert_eq!(
            scan_delivery(&frame),
            Some(Delivery {
                topic: 7,
                ts_ns: 123456789,
                n: 42
            })
        );
        assert_eq!(
            scan_delivery(br#"{"type":"subscribed","topic":["bench-1"]}"#),
            None
        );
    }
}
