//! The `Subscriber` task against a scripted edge on a real socket: what it sends, and what
//! it tells the application, for the answers a cluster does not give on demand (a subscribe
//! its owner did not confirm in time). Each step waits for the next frame or event, with a
//! deadline; nothing sleeps.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use firetower_client::{Event, StreamPos, Subscriber, SubscriberConfig};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const DEADLINE: Duration = Duration::from_secs(10);

/// The next text frame the client sent, as JSON.
async fn frame(ws: &mut WebSocketStream<tokio::net::TcpStream>) -> Result<serde_json::Value> {
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Ok(serde_json::from_str(t.as_str())?),
            Ok(Some(Ok(_))) => {}
            other => bail!("no frame from the client: {other:?}"),
        }
    }
}

async fn event(sub: &mut Subscriber) -> Result<Event> {
    tokio::time::timeout(DEADLINE, sub.next_event())
        .await
        .context("no event")?
        .context("the subscriber stopped")
}

#[tokio::test]
async fn a_subscribe_the_owner_did_not_confirm_is_sent_again_and_an_unsubscribe_goes_out(
) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/ws", listener.local_addr()?);
    let mut sub = Subscriber::start(SubscriberConfig {
        urls: vec![url],
        min_backoff: Duration::from_millis(20),
        ..SubscriberConfig::default()
    })?;
    sub.subscribe("a").await?;
    let (tcp, _) = tokio::time::timeout(DEADLINE, listener.accept()).await??;
    let mut edge = tokio_tungstenite::accept_async(tcp).await?;
    assert!(matches!(event(&mut sub).await?, Event::Connected { .. }));

    let first = frame(&mut edge).await?;
    assert_eq!(first["type"], "subscribe");
    assert_eq!(first["topic"], "a");
    edge.send(Message::text(
        r#"{"type":"error","code":"unavailable","message":"no distributor confirmed these topics within 5000 ms; subscribe again","topic":"a"}"#,
    ))
    .await?;
    assert!(matches!(event(&mut sub).await?, Event::Error { code, .. } if code == "unavailable"));
    // Asked for again, on the same connection.
    let again = frame(&mut edge).await?;
    assert_eq!(again["type"], "subscribe");
    assert_eq!(again["topic"], "a");
    edge.send(Message::text(r#"{"type":"subscribed","topic":["a"]}"#))
        .await?;
    assert_eq!(
        event(&mut sub).await?,
        Event::Subscribed {
            topic: "a".into(),
            recovered: None,
            position: None,
        }
    );
    edge.send(Message::text(
        r#"{"type":"publish","topic":"a","data":{"n":1},"epoch":2,"seq":5}"#,
    ))
    .await?;
    assert_eq!(
        event(&mut sub).await?,
        Event::Message {
            topic: "a".into(),
            data: r#"{"n":1}"#.into(),
            position: StreamPos { epoch: 2, seq: 5 },
        }
    );

    sub.unsubscribe("a").await?;
    let leave = frame(&mut edge).await?;
    assert_eq!(
        leave,
        serde_json::json!({"type": "unSubscribe", "topic": "a"})
    );
    edge.send(Message::text(r#"{"type":"unSubscribed","topic":["a"]}"#))
        .await?;
    assert_eq!(
        event(&mut sub).await?,
        Event::Unsubscribed { topic: "a".into() }
    );
    Ok(())
}

#[tokio::test]
async fn an_edge_that_falls_silent_is_probed_then_left_for_the_next_with_the_position_held(
) -> Result<()> {
    let silent = TcpListener::bind("127.0.0.1:0").await?;
    let next = TcpListener::bind("127.0.0.1:0").await?;
    let mut sub = Subscriber::start(SubscriberConfig {
        urls: vec![
            format!("ws://{}/ws", silent.local_addr()?),
            format!("ws://{}/ws", next.local_addr()?),
        ],
        min_backoff: Duration::from_millis(20),
        heartbeat_interval: Duration::from_millis(300),
        heartbeat_timeout: Duration::from_millis(300),
        ..SubscriberConfig::default()
    })?;
    sub.subscribe("a").await?;
    let (tcp, _) = tokio::time::timeout(DEADLINE, silent.accept()).await??;
    let mut edge = tokio_tungstenite::accept_async(tcp).await?;
    assert!(matches!(event(&mut sub).await?, Event::Connected { .. }));
    assert_eq!(frame(&mut edge).await?["type"], "subscribe");
    edge.send(Message::text(r#"{"type":"subscribed","topic":["a"]}"#))
        .await?;
    assert!(matches!(event(&mut sub).await?, Event::Subscribed { .. }));
    edge.send(Message::text(
        r#"{"type":"publish","topic":"a","data":1,"epoch":3,"seq":9}"#,
    ))
    .await?;
    assert!(matches!(event(&mut sub).await?, Event::Message { .. }));

    // Quiet past the interval: a probe. Its ack is the subscriber's own business.
    let probe = frame(&mut edge).await?;
    assert_eq!(
        probe,
        serde_json::json!({"type": "unSubscribe", "topic": "$firetower/probe"})
    );
    edge.send(Message::text(
        r#"{"type":"unSubscribed","topic":["$firetower/probe"]}"#,
    ))
    .await?;
    // Quiet again, and this time the probe goes unanswered: the connection is given up.
    assert_eq!(frame(&mut edge).await?, probe);
    match event(&mut sub).await? {
        Event::Disconnected { code, reason } => {
            assert_eq!(code, Some(4000));
            assert!(reason.contains("client side"), "{reason}");
        }
        other => bail!("expected the silent edge to be left, got {other:?}"),
    }

    let (tcp, _) = tokio::time::timeout(DEADLINE, next.accept()).await??;
    let mut edge = tokio_tungstenite::accept_async(tcp).await?;
    assert!(matches!(event(&mut sub).await?, Event::Connected { .. }));
    let again = frame(&mut edge).await?;
    assert_eq!(again["type"], "subscribe");
    assert_eq!(again["topic"], "a");
    assert_eq!(
        again["since"]["a"],
        serde_json::json!({"epoch": 3, "seq": 9})
    );
    Ok(())
}

#[tokio::test]
async fn publishes_over_the_websocket_are_answered_by_number_and_a_closed_connection_says_which_were_not(
) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let mut sub = Subscriber::start(SubscriberConfig {
        urls: vec![format!("ws://{}/ws", listener.local_addr()?)],
        min_backoff: Duration::from_millis(20),
        ..SubscriberConfig::default()
    })?;
    let (tcp, _) = tokio::time::timeout(DEADLINE, listener.accept()).await??;
    let mut edge = tokio_tungstenite::accept_async(tcp).await?;
    assert!(matches!(event(&mut sub).await?, Event::Connected { .. }));
    assert!(
        sub.publish("t", "not json").await.is_err(),
        "data is checked"
    );

    let first = sub.publish("t", r#"{"n":1}"#).await?;
    let sent = frame(&mut edge).await?;
    assert_eq!(
        sent,
        serde_json::json!({"type": "publish", "topic": "t", "data": {"n": 1}, "id": first})
    );
    edge.send(Message::text(format!(
        r#"{{"type":"published","id":{first},"topic":"t","epoch":4,"seq":11}}"#
    )))
    .await?;
    assert_eq!(
        event(&mut sub).await?,
        Event::Published {
            id: first,
            topic: "t".into(),
            position: StreamPos { epoch: 4, seq: 11 },
        }
    );

    // Sent, then the connection goes before the answer: its outcome is unknown, and said.
    let second = sub.publish("t", "2").await?;
    assert_eq!(frame(&mut edge).await?["id"], second);
    drop(edge);
    match event(&mut sub).await? {
        Event::Error { code, id, .. } => {
            assert_eq!(code, "disconnected");
            assert_eq!(id, Some(second));
        }
        other => bail!("expected the unanswered publish, got {other:?}"),
    }
    assert!(matches!(event(&mut sub).await?, Event::Disconnected { .. }));
    Ok(())
}
