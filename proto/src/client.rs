//! The Firetower client protocol: JSON text frames on a WebSocket.
//!
//! Compatible with the original Firetower clients:
//! `{"type":"subscribe","topic":"a,b","data":""}`, `{"type":"unSubscribe","topic":"a,b"}` and
//! `{"type":"publish","topic":"t","data":<any JSON>}`, plus the legacy text frame `heartbeat`.
//! The server answers with deliveries (`"type":"publish"` with `epoch` and `seq`), acks
//! (`subscribed` / `unSubscribed` with a topic array) and error frames with a stable `code`.
//! docs/protocol.md is the reference; this module is its only implementation.
//!
//! Parsing borrows from the frame text wherever JSON escaping allows; every server frame is
//! encoded once into [`Bytes`] so a delivery can be shared by all its recipients.

use std::borrow::Cow;
use std::fmt::Write as _;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::topic::validate_topic;

/// The legacy heartbeat text frame, sent by old clients and (optionally) by the server.
pub const LEGACY_HEARTBEAT: &str = "heartbeat";

/// A position in a topic's stream: the `(epoch, seq)` of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamPos {
    pub epoch: u64,
    pub seq: u64,
}

/// A parsed client frame. Topics are validated and deduplicated, in the order given.
#[derive(Debug, PartialEq)]
pub enum ClientFrame<'a> {
    Subscribe {
        topics: Vec<Cow<'a, str>>,
        /// The positions the client last saw, for the topics it wants to recover (each
        /// one of `topics`); empty in the original protocol.
        since: Vec<(String, StreamPos)>,
    },
    Unsubscribe {
        topics: Vec<Cow<'a, str>>,
    },
    /// `data` is the raw JSON text of the value, passed on byte for byte. `id`: the
    /// client's number for it (optional): the edge answers it with a `published` frame
    /// carrying the position, or an error frame carrying the id.
    Publish {
        topic: Cow<'a, str>,
        data: &'a str,
        id: Option<u64>,
    },
    /// The legacy `heartbeat` text frame: no answer, it only proves liveness.
    Heartbeat,
}

/// The stable error codes of error frames. Clients switch on these, so they never change
/// meaning; new ones may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame is not JSON, or a field has the wrong JSON type, or a field is missing.
    BadJson,
    /// `type` is not one of subscribe, unSubscribe, publish.
    UnknownType,
    /// A topic is empty, too long or has a forbidden character.
    BadTopic,
    /// The subscribe would exceed the per-connection topic limit.
    TooManyTopics,
    /// A frame or published value exceeds the size limit.
    TooLarge,
    /// A hook refused the subscribe or publish.
    Denied,
    /// The topic's owner cannot be reached right now; retry later.
    Unavailable,
    /// Binary frames are not part of the protocol.
    BinaryUnsupported,
    /// Too many frames too fast.
    RateLimited,
    /// The cluster could not take the publish in time (its queues toward the subscribers
    /// stayed full); retry later, slower.
    Overloaded,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadTopic => "bad_topic",
            ErrorCode::TooManyTopics => "too_many_topics",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Denied => "denied",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::BinaryUnsupported => "binary_unsupported",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
        }
    }

    /// The code named `name` (as [`ErrorCode::as_str`] writes it), e.g. from a relay
    /// `ClientPublishDone`.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        const ALL: [ErrorCode; 10] = [
            ErrorCode::BadJson,
            ErrorCode::UnknownType,
            ErrorCode::BadTopic,
            ErrorCode::TooManyTopics,
            ErrorCode::TooLarge,
            ErrorCode::Denied,
            ErrorCode::Unavailable,
            ErrorCode::BinaryUnsupported,
            ErrorCode::RateLimited,
            ErrorCode::Overloaded,
        ];
        ALL.into_iter().find(|code| code.as_str() == name)
    }
}

/// An error to report to the client in an error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub code: ErrorCode,
    pub message: String,
    /// The topic the error is about, when there is one.
    pub topic: Option<String>,
    /// The client's number of the publish the error answers, when it gave one.
    pub id: Option<u64>,
}

impl ClientError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ClientError {
            code,
            message: message.into(),
            topic: None,
            id: None,
        }
    }

    /// Answers the client's publish `id` (none: leaves the error as it is).
    pub fn with_id(mut self, id: Option<u64>) -> Self {
        if id.is_some() {
            self.id = id;
        }
        self
    }

    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    since: Option<std::collections::BTreeMap<String, StreamPos>>,
    #[serde(default)]
    id: Option<u64>,
}

/// Parses one client text frame. `max_topics_per_frame` bounds how many topics one
/// subscribe or unsubscribe may name.
pub fn parse_client_frame(
    text: &str,
    max_topics_per_frame: usize,
) -> Result<ClientFrame<'_>, ClientError> {
    if text.trim() == LEGACY_HEARTBEAT {
        return Ok(ClientFrame::Heartbeat);
    }
    let raw: RawFrame<'_> = serde_json::from_str(text)
        .map_err(|e| ClientError::new(ErrorCode::BadJson, format!("malformed frame: {e}")))?;
    let kind = raw
        .kind
        .ok_or_else(|| ClientError::new(ErrorCode::BadJson, "missing field \"type\""))?;
    let topic = raw
        .topic
        .ok_or_else(|| ClientError::new(ErrorCode::BadJson, "missing field \"topic\""))?;
    match kind.as_ref() {
        "subscribe" => {
            let topics = split_topics(topic, max_topics_per_frame)?;
            let since: Vec<(String, StreamPos)> =
                raw.since.unwrap_or_default().into_iter().collect();
            if let Some((stray, _)) = since.iter().find(|(t, _)| !topics.iter().any(|s| s == t)) {
                return Err(ClientError::new(
                    ErrorCode::BadJson,
                    format!("\"since\" names {stray:?}, which \"topic\" does not"),
                )
                .with_topic(stray.as_str()));
            }
            Ok(ClientFrame::Subscribe { topics, since })
        }
        "unSubscribe" => Ok(ClientFrame::Unsubscribe {
            topics: split_topics(topic, max_topics_per_frame)?,
        }),
        "publish" => {
            validate_topic(&topic).map_err(|e| {
                ClientError::new(ErrorCode::BadTopic, e.to_string()).with_topic(topic.as_ref())
            })?;
            // A missing "data" (or JSON null) publishes null.
            let data = raw.data.map(RawValue::get).unwrap_or("null");
            Ok(ClientFrame::Publish {
                topic,
                data,
                id: raw.id,
            })
        }
        other => Err(ClientError::new(
            ErrorCode::UnknownType,
            format!("unknown type {other:?}; expected subscribe, unSubscribe or publish"),
        )),
    }
}

/// Splits `"a,b"` into validated, deduplicated topics.
fn split_topics(list: Cow<'_, str>, max: usize) -> Result<Vec<Cow<'_, str>>, ClientError> {
    let parts: Vec<Cow<'_, str>> = match list {
        Cow::Borrowed(s) => s.split(',').map(Cow::Borrowed).collect(),
        Cow::Owned(s) => s.split(',').map(|p| Cow::Owned(p.to_string())).collect(),
    };
    let mut topics: Vec<Cow<'_, str>> = Vec::with_capacity(parts.len().min(max));
    for t in parts {
        validate_topic(&t).map_err(|e| {
            ClientError::new(ErrorCode::BadTopic, e.to_string()).with_topic(t.as_ref())
        })?;
        if topics.contains(&t) {
            continue;
        }
        if topics.len() == max {
            return Err(ClientError::new(
                ErrorCode::TooManyTopics,
                format!("one frame may name at most {max} topics"),
            ));
        }
        topics.push(t);
    }
    Ok(topics)
}

/// The deepest nesting of arrays and objects accepted in published data. Every client and
/// the parsers on the way recurse once per level; a deep value is a cheap way to make each
/// of them work hard (serde_json's own limit is 128).
pub const MAX_JSON_DEPTH: usize = 64;

/// The deepest nesting of arrays and objects in `text` (strings skipped), stopping as soon
/// as it passes `limit`.
fn json_depth_over(text: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Checks that published data is exactly one JSON value, so a delivery that embeds it
/// verbatim stays valid JSON, nested at most [`MAX_JSON_DEPTH`] deep.
pub fn validate_json_data(data: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(data).map_err(|_| "data is not UTF-8".to_string())?;
    if json_depth_over(data, MAX_JSON_DEPTH) {
        return Err(format!(
            "data nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"
        ));
    }
    serde_json::from_str::<&RawValue>(text)
        .map(|_| ())
        .map_err(|e| format!("data is not one JSON value: {e}"))
}

fn push_json_string(out: &mut String, s: &str) {
    // Serializing a &str to a String cannot fail.
    if let Ok(quoted) = serde_json::to_string(s) {
        out.push_str(&quoted);
    }
}

/// Encodes a delivery. `data` must be one JSON value (see [`validate_json_data`]); it is
/// copied verbatim.
pub fn encode_delivery(topic: &str, data: &str, epoch: u64, seq: u64) -> Bytes {
    let mut out = String::with_capacity(64 + topic.len() + data.len());
    out.push_str(r#"{"type":"publish","topic":"#);
    push_json_string(&mut out, topic);
    out.push_str(r#","data":"#);
    out.push_str(data);
    let _ = write!(out, r#","epoch":{epoch},"seq":{seq}}}"#);
    Bytes::from(out)
}

/// Which ack to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    Subscribed,
    Unsubscribed,
}

/// Encodes `{"type":"subscribed"|"unSubscribed","topic":[…]}`.
pub fn encode_ack<S: AsRef<str>>(kind: AckKind, topics: &[S]) -> Bytes {
    let mut out =
        String::with_capacity(40 + topics.iter().map(|t| t.as_ref().len() + 3).sum::<usize>());
    out.push_str(match kind {
        AckKind::Subscribed => r#"{"type":"subscribed","topic":["#,
        AckKind::Unsubscribed => r#"{"type":"unSubscribed","topic":["#,
    });
    for (i, t) in topics.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, t.as_ref());
    }
    out.push_str("]}");
    Bytes::from(out)
}

/// How a subscribe with a position went for one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// The missed deliveries follow the ack (none missed counts as recovered).
    pub recovered: bool,
    /// When not recovered: the topic's position now, if known.
    pub position: Option<StreamPos>,
}

/// Encodes the ack of a subscribe with a position:
/// `{"type":"subscribed","topic":["a"],"recovered":{"a":true}}`, and when not recovered,
/// `"position":{"a":{"epoch":E,"seq":S}}` too (if known).
pub fn encode_recovery_ack(topic: &str, recovery: Recovery) -> Bytes {
    let mut out = String::with_capacity(96 + 3 * topic.len());
    out.push_str(r#"{"type":"subscribed","topic":["#);
    push_json_string(&mut out, topic);
    out.push_str(r#"],"recovered":{"#);
    push_json_string(&mut out, topic);
    let _ = write!(out, ":{}}}", recovery.recovered);
    if let (false, Some(p)) = (recovery.recovered, recovery.position) {
        out.push_str(r#","position":{"#);
        push_json_string(&mut out, topic);
        let _ = write!(out, r#":{{"epoch":{},"seq":{}}}}}"#, p.epoch, p.seq);
    }
    out.push('}');
    Bytes::from(out)
}

/// The recovery fields of a `subscribed` frame: per topic, whether it was recovered, and
/// the positions given for those that were not.
pub type RecoveryFields = (
    std::collections::BTreeMap<String, bool>,
    std::collections::BTreeMap<String, StreamPos>,
);

/// Reads the recovery fields of a `subscribed` frame (the client side).
pub fn parse_recovery(text: &str) -> Result<RecoveryFields, String> {
    #[derive(Deserialize)]
    struct Ack {
        #[serde(default)]
        recovered: std::collections::BTreeMap<String, bool>,
        #[serde(default)]
        position: std::collections::BTreeMap<String, StreamPos>,
    }
    let ack: Ack = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok((ack.recovered, ack.position))
}

/// Encodes `{"type":"error","code":…,"message":…,"topic":…|null}`.
pub fn encode_error(error: &ClientError) -> Bytes {
    let mut out = String::with_capacity(64 + error.message.len());
    out.push_str(r#"{"type":"error","code":""#);
    out.push_str(error.code.as_str());
    out.push_str(r#"","message":"#);
    push_json_string(&mut out, &error.message);
    out.push_str(r#","topic":"#);
    match &error.topic {
        Some(t) => push_json_string(&mut out, t),
        None => out.push_str("null"),
    }
    if let Some(id) = error.id {
        out.push_str(&format!(r#","id":{id}"#));
    }
    out.push('}');
    Bytes::from(out)
}

/// Encodes the answer to a client's numbered publish:
/// `{"type":"published","id":N,"topic":…,"epoch":E,"seq":S}`.
pub fn encode_published(id: u64, topic: &str, epoch: u64, seq: u64) -> Bytes {
    let mut out = String::with_capacity(64 + topic.len());
    out.push_str(&format!(r#"{{"type":"published","id":{id},"topic":"#));
    push_json_string(&mut out, topic);
    out.push_str(&format!(r#","epoch":{epoch},"seq":{seq}}}"#));
    Bytes::from(out)
}

/// A parsed server frame: what a client (tests, the load generator) sees.
#[derive(Debug, PartialEq)]
pub enum ServerFrame<'a> {
    Publish {
        topic: Cow<'a, str>,
        data: &'a str,
        epoch: u64,
        seq: u64,
    },
    Subscribed(Vec<String>),
    Unsubscribed(Vec<String>),
    /// The answer to a numbered client publish.
    Published {
        id: u64,
        topic: String,
        epoch: u64,
        seq: u64,
    },
    Error {
        code: String,
        message: String,
        topic: Option<String>,
        /// The number of the client publish it answers, if it answers one.
        id: Option<u64>,
    },
    Heartbeat,
}

#[derive(Deserialize)]
struct RawServerFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    topic: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    id: Option<u64>,
}

/// Parses a server frame (the client side of the protocol).
pub fn parse_server_frame(text: &str) -> Result<ServerFrame<'_>, String> {
    if text == LEGACY_HEARTBEAT {
        return Ok(ServerFrame::Heartbeat);
    }
    let raw: RawServerFrame<'_> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match raw.kind.as_ref() {
        "publish" => {
            let topic: Cow<'_, str> = match raw.topic {
                Some(t) => serde_json::from_str(t.get()).map_err(|e| e.to_string())?,
                None => return Err("publish without topic".into()),
            };
            Ok(ServerFrame::Publish {
                topic,
                data: raw.data.map(RawValue::get).unwrap_or("null"),
                epoch: raw.epoch,
                seq: raw.seq,
            })
        }
        "subscribed" | "unSubscribed" => {
            let topics: Vec<String> = match raw.topic {
                Some(t) => serde_json::from_str(t.get()).map_err(|e| e.to_string())?,
                None => Vec::new(),
            };
            Ok(if raw.kind == "subscribed" {
                ServerFrame::Subscribed(topics)
            } else {
                ServerFrame::Unsubscribed(topics)
            })
        }
        "published" => Ok(ServerFrame::Published {
            id: raw.id.unwrap_or_default(),
            topic: t_str(raw.topic)?.unwrap_or_default(),
            epoch: raw.epoch,
            seq: raw.seq,
        }),
        "error" => Ok(ServerFrame::Error {
            code: raw.code.unwrap_or_default(),
            message: raw.message.unwrap_or_default(),
            topic: t_str(raw.topic)?,
            id: raw.id,
        }),
        other => Err(format!("unknown server frame type {other:?}")),
    }
}

fn t_str(t: Option<&RawValue>) -> Result<Option<String>, String> {
    match t {
        None => Ok(None),
        Some(t) => serde_json::from_str::<Option<String>>(t.get()).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_nested_deeper_than_the_limit_is_refused_with_the_reason() {
        let ok = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH),
            "]".repeat(MAX_JSON_DEPTH)
        );
        assert_eq!(validate_json_data(ok.as_bytes()), Ok(()));
        let over = MAX_JSON_DEPTH + 1;
        let deep = format!("{}1{}", "[".repeat(over), "]".repeat(over));
        let e = validate_json_data(deep.as_bytes()).unwrap_err();
        assert!(e.contains("deeper than 64"), "{e}");
        // Brackets inside strings do not count, escaped quotes included.
        let s = format!(r#"{{"a":"{}\"{}"}}"#, "[".repeat(200), "{".repeat(200));
        assert_eq!(validate_json_data(s.as_bytes()), Ok(()));
        // A megabyte of brackets stops at the limit.
        let huge = "[".repeat(1 << 20);
        assert!(validate_json_data(huge.as_bytes()).is_err());
    }

    #[test]
    fn every_error_code_reads_back_from_its_name() {
        for name in [
            "bad_json",
            "unknown_type",
            "bad_topic",
            "too_many_topics",
            "too_large",
            "denied",
            "unavailable",
            "binary_unsupported",
            "rate_limited",
            "overloaded",
        ] {
            let code = ErrorCode::from_name(name).map(ErrorCode::as_str);
            assert_eq!(code, Some(name));
        }
        assert_eq!(ErrorCode::from_name("nope"), None);
    }

    #[test]
    fn parses_the_original_client_frames() {
        let f = parse_client_frame(r#"{"type":"subscribe","topic":"a,b,a","data":""}"#, 8).unwrap();
        assert_eq!(
            f,
            ClientFrame::Subscribe {
                since: vec![],
                topics: vec!["a".into(), "b".into()]
            }
        );
        let f = parse_client_frame(r#"{"type":"unSubscribe","topic":"a"}"#, 8).unwrap();
        assert_eq!(
            f,
            ClientFrame::Unsubscribe {
                topics: vec!["a".into()]
            }
        );
        let f =
            parse_client_frame(r#"{"type":"publish","topic":"t","data":{"x":[1, 2]}}"#, 8).unwrap();
        assert_eq!(
            f,
            ClientFrame::Publish {
                topic: "t".into(),
                data: r#"{"x":[1, 2]}"#,
                id: None,
            }
        );
        let f = parse_client_frame(r#"{"type":"publish","topic":"t"}"#, 8).unwrap();
        assert_eq!(
            f,
            ClientFrame::Publish {
                topic: "t".into(),
                data: "null",
                id: None,
            }
        );
        // A numbered publish: answered with `published`, or an error carrying the id.
        let f = parse_client_frame(r#"{"type":"publish","topic":"t","data":1,"id":7}"#, 8).unwrap();
        assert_eq!(
            f,
            ClientFrame::Publish {
                topic: "t".into(),
                data: "1",
                id: Some(7),
            }
        );
        let answer = encode_published(7, "t\"x", 3, 9);
        assert_eq!(
            parse_server_frame(std::str::from_utf8(&answer).unwrap()).unwrap(),
            ServerFrame::Published {
                id: 7,
                topic: "t\"x".into(),
                epoch: 3,
                seq: 9
            }
        );
        let error = encode_error(
            &ClientError::new(ErrorCode::Overloaded, "full")
                .with_topic("t")
                .with_id(Some(7)),
        );
        let text = std::str::from_utf8(&error).unwrap();
        assert!(text.ends_with(r#","topic":"t","id":7}"#), "{text}");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(
            parse_client_frame("heartbeat", 8).unwrap(),
            ClientFrame::Heartbeat
        );
        // Escaped topics are unescaped (and then owned).
        let f = parse_client_frame(r#"{"type":"subscribe","topic":"\u0061,b"}"#, 8).unwrap();
        assert_eq!(
            f,
            ClientFrame::Subscribe {
                since: vec![],
                topics: vec!["a".into(), "b".into()]
            }
        );
    }

    #[test]
    fn rejects_bad_frames_with_codes() {
        let code = |t: &str| parse_client_frame(t, 2).unwrap_err().code;
        assert_eq!(code("{not json"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"topic":"a"}"#), ErrorCode::BadJson);
        assert_eq!(code(r#"{"type":"subscribe"}"#), ErrorCode::BadJson);
        assert_eq!(
            code(r#"{"type":"subscribe","topic":7}"#),
            ErrorCode::BadJson
        );
        assert_eq!(
            code(r#"{"type":"jump","topic":"a"}"#),
            ErrorCode::UnknownType
        );
        assert_eq!(
            code(r#"{"type":"subscribe","topic":""}"#),
            ErrorCode::BadTopic
        );
        assert_eq!(
            code(r#"{"type":"subscribe","topic":"a,,b"}"#),
            ErrorCode::BadTopic
        );
        assert_eq!(
            code(r#"{"type":"subscribe","topic":"a#1"}"#),
            ErrorCode::BadTopic
        );
        let long = format!(
            r#"{{"type":"publish","topic":"{}","data":1}}"#,
            "x".repeat(300)
        );
        let err = parse_client_frame(&long, 2).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadTopic);
        assert!(err.message.contains("300 bytes"), "{}", err.message);
        assert_eq!(
            code(r#"{"type":"subscribe","topic":"a,b,c"}"#),
            ErrorCode::TooManyTopics
        );
    }

    #[test]
    fn server_frames_round_trip() {
        let d = encode_delivery("t\"q", r#"{"a":1}"#, 3, 9);
        let text = std::str::from_utf8(&d).unwrap();
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["topic"], "t\"q");
        assert_eq!(v["data"]["a"], 1);
        assert_eq!(
            parse_server_frame(text).unwrap(),
            ServerFrame::Publish {
                topic: "t\"q".into(),
                data: r#"{"a":1}"#,
                epoch: 3,
                seq: 9
            }
        );
        let a = encode_ack(AckKind::Unsubscribed, &["a", "b"]);
        assert_eq!(&a[..], br#"{"type":"unSubscribed","topic":["a","b"]}"#);
        assert_eq!(
            parse_server_frame(std::str::from_utf8(&a).unwrap()).unwrap(),
            ServerFrame::Unsubscribed(vec!["a".into(), "b".into()])
        );
        let e = encode_error(&ClientError::new(ErrorCode::Denied, "no").with_topic("x"));
        assert_eq!(
            &e[..],
            br#"{"type":"error","code":"denied","message":"no","topic":"x"}"#
        );
        let e = encode_error(&ClientError::new(ErrorCode::BadJson, "m"));
        assert!(matches!(
            parse_server_frame(std::str::from_utf8(&e).unwrap()).unwrap(),
            ServerFrame::Error {
                topic: None,
                id: None,
                ..
            }
        ));
        // An error answering a numbered publish carries its number back.
        let e = encode_error(
            &ClientError::new(ErrorCode::Denied, "no")
                .with_topic("x")
                .with_id(Some(0)),
        );
        assert!(matches!(
            parse_server_frame(std::str::from_utf8(&e).unwrap()).unwrap(),
            ServerFrame::Error { id: Some(0), .. }
        ));
    }

    #[test]
    fn json_data_must_be_one_value() {
        assert!(validate_json_data(br#"{"a":1}"#).is_ok());
        assert!(validate_json_data(b"\"text\"").is_ok());
        assert!(validate_json_data(b"plain text").is_err());
        assert!(validate_json_data(b"1 2").is_err());
        assert!(validate_json_data(b"").is_err());
        assert!(validate_json_data(&[0xff]).is_err());
    }
    #[test]
    fn a_subscribe_may_carry_positions_for_its_topics() {
        let f = parse_client_frame(
            r#"{"type":"subscribe","topic":"a,b","since":{"a":{"epoch":3,"seq":17}}}"#,
            8,
        )
        .unwrap();
        assert_eq!(
            f,
            ClientFrame::Subscribe {
                topics: vec!["a".into(), "b".into()],
                since: vec![("a".into(), StreamPos { epoch: 3, seq: 17 })],
            }
        );
        // A position for a topic not subscribed, or a malformed one, is a precise error.
        let e = parse_client_frame(
            r#"{"type":"subscribe","topic":"a","since":{"b":{"epoch":1,"seq":1}}}"#,
            8,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.topic.as_deref()),
            (ErrorCode::BadJson, Some("b"))
        );
        for bad in [
            r#"{"type":"subscribe","topic":"a","since":{"a":{"epoch":1}}}"#,
            r#"{"type":"subscribe","topic":"a","since":{"a":{"epoch":-1,"seq":0}}}"#,
            r#"{"type":"subscribe","topic":"a","since":["a"]}"#,
        ] {
            assert_eq!(
                parse_client_frame(bad, 8).unwrap_err().code,
                ErrorCode::BadJson,
                "{bad}"
            );
        }
    }

    #[test]
    fn recovery_acks_say_per_topic_whether_it_worked_and_read_back() {
        let ok = encode_recovery_ack(
            "a",
            Recovery {
                recovered: true,
                position: None,
            },
        );
        assert_eq!(
            &ok[..],
            br#"{"type":"subscribed","topic":["a"],"recovered":{"a":true}}"#
        );
        let failed = encode_recovery_ack(
            "a\"b",
            Recovery {
                recovered: false,
                position: Some(StreamPos { epoch: 9, seq: 4 }),
            },
        );
        let text = std::str::from_utf8(&failed).unwrap();
        assert_eq!(
            parse_server_frame(text).unwrap(),
            ServerFrame::Subscribed(vec!["a\"b".into()])
        );
        let (recovered, position) = parse_recovery(text).unwrap();
        assert_eq!(recovered.get("a\"b"), Some(&false));
        assert_eq!(position.get("a\"b"), Some(&StreamPos { epoch: 9, seq: 4 }));
    }
}
