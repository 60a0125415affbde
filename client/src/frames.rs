//! The frames a client sends (docs/protocol.md §5.2, §5.8, §5.11), built in one place.
//!
//! `firetower_proto::client` parses these on the edge and is the reference; this module is
//! their only encoder on the Rust client side: [`crate::SubscriberCore`], the simulator's
//! clients and the load generator build their frames here, and the tests below parse every
//! one back with the edge's parser.

use std::fmt::Write as _;

use firetower_proto::client::StreamPos;

/// Appends `s` as a JSON string (quoted and escaped).
fn push_json_string(out: &mut String, s: &str) {
    // Serializing a &str cannot fail.
    if let Ok(quoted) = serde_json::to_string(s) {
        out.push_str(&quoted);
    }
}

/// `{"type":"subscribe","topic":"a,b","data":"","since":{"a":{"epoch":E,"seq":S}}}`: every
/// topic, and `since` for those with a position (left out when none has one, which is the
/// original protocol's frame).
pub fn subscribe(topics: &[(&str, Option<StreamPos>)]) -> String {
    let mut out =
        String::with_capacity(64 + topics.iter().map(|(t, _)| 48 + t.len()).sum::<usize>());
    out.push_str(r#"{"type":"subscribe","topic":"#);
    let names: Vec<&str> = topics.iter().map(|(t, _)| *t).collect();
    push_json_string(&mut out, &names.join(","));
    out.push_str(r#","data":"""#);
    let mut since = topics
        .iter()
        .filter_map(|(t, p)| p.map(|p| (*t, p)))
        .peekable();
    if since.peek().is_some() {
        out.push_str(r#","since":{"#);
        for (i, (topic, p)) in since.enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(&mut out, topic);
            let _ = write!(out, r#":{{"epoch":{},"seq":{}}}"#, p.epoch, p.seq);
        }
        out.push('}');
    }
    out.push('}');
    out
}

/// `{"type":"unSubscribe","topic":"a,b"}`.
pub fn unsubscribe(topics: &[&str]) -> String {
    let mut out = String::with_capacity(40 + topics.iter().map(|t| t.len() + 1).sum::<usize>());
    out.push_str(r#"{"type":"unSubscribe","topic":"#);
    push_json_string(&mut out, &topics.join(","));
    out.push('}');
    out
}

/// `{"type":"publish","topic":"t","data":<data>}`, with `"id":N` when the client numbers its
/// publishes (the edge then answers each with `published` or an error carrying the number).
/// `data` must be one JSON value; it is copied verbatim.
pub fn publish(topic: &str, data: &str, id: Option<u64>) -> String {
    let mut out = String::with_capacity(48 + topic.len() + data.len());
    out.push_str(r#"{"type":"publish","topic":"#);
    push_json_string(&mut out, topic);
    out.push_str(r#","data":"#);
    out.push_str(data);
    if let Some(id) = id {
        let _ = write!(out, r#","id":{id}"#);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use firetower_proto::client::{parse_client_frame, ClientFrame};

    use super::*;

    #[test]
    fn the_edge_parses_every_frame_built_here() {
        let pos = StreamPos { epoch: 3, seq: 9 };
        let frame = subscribe(&[("a", Some(pos)), ("b\"q", None)]);
        assert_eq!(
            parse_client_frame(&frame, 256),
            Ok(ClientFrame::Subscribe {
                topics: vec![Cow::Borrowed("a"), Cow::Borrowed("b\"q")],
                since: vec![("a".to_string(), pos)],
            })
        );
        // Without positions: the original protocol's frame, byte for byte.
        assert_eq!(
            subscribe(&[("a", None), ("b", None)]),
            r#"{"type":"subscribe","topic":"a,b","data":""}"#
        );
        assert_eq!(
            parse_client_frame(&unsubscribe(&["a", "b"]), 256),
            Ok(ClientFrame::Unsubscribe {
                topics: vec![Cow::Borrowed("a"), Cow::Borrowed("b")],
            })
        );
        assert_eq!(
            parse_client_frame(&publish("t", r#"{"x":[1,2]}"#, None), 256),
            Ok(ClientFrame::Publish {
                topic: Cow::Borrowed("t"),
                data: r#"{"x":[1,2]}"#,
                id: None,
            })
        );
        assert_eq!(
            parse_client_frame(&publish("t", "7", Some(12)), 256),
            Ok(ClientFrame::Publish {
                topic: Cow::Borrowed("t"),
                data: "7",
                id: Some(12),
            })
        );
    }
}
