//! Topic names and hot sub-topics.
//!
//! A client topic is 1–[`MAX_TOPIC_LEN`] bytes of UTF-8 with no control characters, no `,`
//! (it separates topics in the client protocol's `"topic":"a,b"`) and no `#` (reserved: a hot
//! topic `T` is split into sub-topics `T#0 … T#(n-1)`, see [`sub_topic`]).

use crate::error::TopicError;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The longest topic name, in bytes. Long enough for structured names
/// (`tenant/room/1234…`), short enough that per-topic state stays small.
pub const MAX_TOPIC_LEN: usize = 256;

/// The separator between a hot topic and its shard number.
pub const SHARD_SEPARATOR: char = '#';

/// The fewest and most shards a hot topic can be split into.
pub const MIN_SHARDS: u32 = 2;
/// See [`MIN_SHARDS`]. 256 shards spread one topic over 256 distributors, which is more
/// than any deployment we plan for; the bound keeps fan-out per publish bounded.
pub const MAX_SHARDS: u32 = 256;

/// Checks a topic name that came from a client or a publisher.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong {
            len: topic.len(),
            max: MAX_TOPIC_LEN,
        });
    }
    for (at, c) in topic.char_indices() {
        if c.is_control() {
            return Err(TopicError::ControlCharacter { at });
        }
        if c == ',' {
            return Err(TopicError::Comma { at });
        }
        if c == SHARD_SEPARATOR {
            return Err(TopicError::Reserved { at });
        }
    }
    Ok(())
}

/// Checks a topic name given as bytes (for example from a protobuf `bytes` or a raw frame).
pub fn validate_topic_bytes(topic: &[u8]) -> Result<&str, TopicError> {
    let topic = std::str::from_utf8(topic).map_err(|_| TopicError::NotUtf8)?;
    validate_topic(topic)?;
    Ok(topic)
}

/// The name of shard `k` of the hot topic `topic`: `topic#k`.
pub fn sub_topic(topic: &str, k: u32) -> String {
    format!("{topic}{SHARD_SEPARATOR}{k}")
}

/// Splits `topic#k` into `(topic, k)`; `None` for a plain topic. `k` must be written the
/// way [`sub_topic`] writes it (decimal, no sign, no leading zero), so each sub-topic has
/// exactly one name.
pub fn parse_sub_topic(name: &str) -> Option<(&str, u32)> {
    let (topic, k) = name.rsplit_once(SHARD_SEPARATOR)?;
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) || (k.len() > 1 && k.starts_with('0'))
    {
        return None;
    }
    let k = k.parse().ok()?;
    Some((topic, k))
}

/// The client topic a route name belongs to: `T` for `T#k`, else the name itself.
pub fn base_topic(name: &str) -> &str {
    parse_sub_topic(name).map_or(name, |(topic, _)| topic)
}

/// Checks a name that travels between distributors and edges: a valid topic, or a
/// sub-topic `T#k` of a valid topic with `k` below [`MAX_SHARDS`].
pub fn validate_route_topic(name: &str) -> Result<(), TopicError> {
    match parse_sub_topic(name) {
        Some((topic, k)) if k < MAX_SHARDS => validate_topic(topic),
        _ => validate_topic(name),
    }
}

/// The one shard of a hot topic that edge `edge_id` subscribes to. Hashing the edge (not the
/// user, as the original Firetower did) keeps each message arriving once per edge while the
/// edges spread evenly over the shards' owners.
pub fn edge_shard(edge_id: u64, topic: &str, shards: u32) -> u32 {
    assert!(shards > 0, "a hot topic has at least one shard");
    (xxh3_64_with_seed(topic.as_bytes(), edge_id) % u64::from(shards)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_topics() {
        for t in [
            "a",
            "chat",
            "room/42",
            "火塔",
            "x y z",
            &"t".repeat(MAX_TOPIC_LEN),
        ] {
            assert_eq!(validate_topic(t), Ok(()), "{t:?}");
        }
    }

    #[test]
    fn rejects_bad_topics_naming_the_rule() {
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert_eq!(
            validate_topic(&"t".repeat(MAX_TOPIC_LEN + 1)),
            Err(TopicError::TooLong { len: 257, max: 256 })
        );
        assert_eq!(
            validate_topic("a\nb"),
            Err(TopicError::ControlCharacter { at: 1 })
        );
        assert_eq!(validate_topic("a,b"), Err(TopicError::Comma { at: 1 }));
        assert_eq!(validate_topic("ab#1"), Err(TopicError::Reserved { at: 2 }));
        assert_eq!(
            validate_topic_bytes(&[0xff, 0x00]),
            Err(TopicError::NotUtf8)
        );
    }

    #[test]
    fn sub_topics_round_trip() {
        assert_eq!(sub_topic("chat", 7), "chat#7");
        assert_eq!(parse_sub_topic("chat#7"), Some(("chat", 7)));
        assert_eq!(parse_sub_topic("chat"), None);
        assert_eq!(parse_sub_topic("chat#x"), None);
        assert_eq!(parse_sub_topic("chat#07"), None);
        assert_eq!(parse_sub_topic("chat#+7"), None);
        assert_eq!(parse_sub_topic("chat#"), None);
        assert_eq!(parse_sub_topic("chat#0"), Some(("chat", 0)));
        assert_eq!(base_topic("chat#3"), "chat");
        assert_eq!(base_topic("chat"), "chat");
        assert_eq!(validate_route_topic("chat#255"), Ok(()));
        assert!(validate_route_topic("chat#256").is_err());
        assert!(validate_route_topic("a,b#1").is_err());
    }

    proptest! {
        #[test]
        fn edge_shard_is_in_range(edge in any::<u64>(), topic in "[a-z]{1,20}", shards in 1u32..=MAX_SHARDS) {
            prop_assert!(edge_shard(edge, &topic, shards) < shards);
        }

        #[test]
        fn valid_topics_make_valid_sub_topic_names(topic in "[a-zA-Z0-9/_.-]{1,64}", k in 0u32..256) {
            prop_assert_eq!(validate_topic(&topic), Ok(()));
            let name = sub_topic(&topic, k);
            prop_assert_eq!(parse_sub_topic(&name), Some((topic.as_str(), k)));
        }
    }
}
