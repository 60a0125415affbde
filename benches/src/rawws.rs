//! A minimal WebSocket client for the generator's subscribers.
//!
//! The generator must cost the shared machine as little as possible, so its subscribers
//! read whole socket buffers (many frames per `read`) and parse the server's unmasked
//! frames in place, with no copy or allocation per frame. It speaks only what a
//! subscriber needs: the upgrade, masked text frames out, text / ping / close in. This is
//! the WebSocket layer only: what the frames say (the subscribe frame, the ack) is the
//! Rust client's `SubscriberCore` (see `subscriber` in main.rs).

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes read per `read` call at most (the buffer grows only for a larger frame).
const READ_BUFFER: usize = 16 << 10;
/// The largest frame accepted from the server.
const MAX_FRAME: usize = 16 << 20;

/// One client connection after the upgrade.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// One frame from the server.
pub enum Incoming<'a> {
    Text(&'a [u8]),
    Other,
}

/// The client token every WebSocket connection of this process presents (`--token`, or the
/// `client token:` line of the `firetower dev` it started); none: anonymous.
pub static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The API key every gRPC call of this process presents (`--api-key-file`, or the
/// `api key file:` of the `firetower dev` it started); none: no key.
pub static API_KEY: std::sync::OnceLock<firetower_net::ApiKey> = std::sync::OnceLock::new();

/// The TLS the gRPC clients of this process speak (`--ca-file`, or the `ca file:` of the
/// `firetower dev` it started); none: plaintext.
pub static CLIENT_TLS: std::sync::OnceLock<firetower_net::ClientTls> = std::sync::OnceLock::new();

/// A connector over [`CLIENT_TLS`].
pub fn connector() -> firetower_net::TcpConnector {
    firetower_net::TcpConnector {
        tls: CLIENT_TLS.get().cloned(),
        ..firetower_net::TcpConnector::default()
    }
}

/// A publisher of the Rust client (`firetower-client`) for the distributor at `addr`,
/// speaking [`CLIENT_TLS`] and presenting [`API_KEY`]: the generator publishes over gRPC
/// only through it.
pub fn publisher(addr: &str) -> Result<firetower_client::Publisher> {
    Ok(firetower_client::Publisher::with_tls(
        addr,
        CLIENT_TLS.get().cloned(),
        API_KEY.get().cloned().unwrap_or_default(),
    )?)
}

/// The WebSocket path, with the token if there is one.
pub fn ws_path() -> String {
    match TOKEN.get() {
        Some(token) => format!("/ws?token={token}"),
        None => "/ws".to_string(),
    }
}

impl RawWs {
    /// Sends the upgrade request for `/ws` on `stream` and reads the 101 response.
    pub async fn connect(mut stream: TcpStream, host: &str) -> Result<Self> {
        let path = ws_path();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = vec![0u8; READ_BUFFER];
        let mut end = 0;
        let head_len = loop {
            let n = stream.read(&mut buf[end..]).await?;
            ensure!(n > 0, "connection closed during the upgrade");
            end += n;
            if let Some(at) = buf[..end].windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            ensure!(end < buf.len(), "upgrade response head too long");
        };
        let head = String::from_utf8_lossy(&buf[..head_len]);
        if !head.starts_with("HTTP/1.1 101") {
            bail!(
                "upgrade refused: {}",
                head.lines().next().unwrap_or_default()
            );
        }
        Ok(RawWs {
            stream,
            buf,
            start: head_len,
            end,
        })
    }

    /// Sends one masked text frame.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.send(0x1, text.as_bytes()).await
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&MASK);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Reads once (unless whole frames are already buffered) and hands every complete
    /// frame to `on_frame`. Answers pings. `Ok(false)` once the server closed.
    pub async fn read_frames(&mut self, mut on_frame: impl FnMut(Incoming<'_>)) -> Result<bool> {
        if self.next_frame_len()?.is_none() {
            // Make room: move the partial frame to the front, grow for a large one.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = self.stream.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Ok(false);
            }
            self.end += n;
        }
        let mut pings = Vec::new();
        let mut open = true;
        while let Some((header, len)) = self.next_frame_len()? {
            let payload = &self.buf[self.start + header..self.start + header + len];
            match self.buf[self.start] & 0x0f {
                0x1 => on_frame(Incoming::Text(payload)),
                0x8 => open = false,
                0x9 => pings.push(payload.to_vec()),
                _ => on_frame(Incoming::Other),
            }
            self.start += header + len;
        }
        for ping in pings {
            self.send(0xA, &ping).await?;
        }
        Ok(open)
    }

    /// The header and payload length of the buffered frame at `start`, if it is complete.
    fn next_frame_len(&self) -> Result<Option<(usize, usize)>> {
        let b = &self.buf[self.start..self.end];
        if b.len() < 2 {
            return Ok(None);
        }
        ensure!(b[1] & 0x80 == 0, "the server sent a masked frame");
        let (header, len) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (4, usize::from(u16::from_be_bytes([b[2], b[3]]))),
            127 if b.len() >= 10 => {
                let len = u64::from_be_bytes(b[2..10].try_into().context("frame length")?);
                (10, usize::try_from(len).unwrap_or(usize::MAX))
            }
            126 | 127 => return Ok(None),
            n => (2, usize::from(n)),
        };
        ensure!(len <= MAX_FRAME, "frame of {len} bytes");
        Ok((b.len() >= header + len).then_some((header, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_many_frames_per_read_and_answers_pings() -> Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await?;
            let mut head = vec![0u8; 1024];
            let _ = s.read(&mut head).await?;
            let mut out = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
            out.extend_from_slice(b"\x81\x02hi\x89\x01p");
            out.extend_from_slice(&[0x81, 126, 1, 44]);
            out.extend_from_slice(&[b'a'; 300]);
            s.write_all(&out).await?;
            // The pong comes back masked.
            let mut pong = [0u8; 7];
            s.read_exact(&mut pong).await?;
            assert_eq!(pong[0], 0x8A);
            assert_eq!(pong[1], 0x81);
            assert_eq!(pong[6] ^ pong[2], b'p');
            s.write_all(b"\x88\x00").await?;
            anyhow::Ok(())
        });
        let mut ws = RawWs::connect(TcpStream::connect(addr).await?, "x").await?;
        let mut texts = Vec::new();
        while ws
            .read_frames(|f| {
                if let Incoming::Text(t) = f {
                    texts.push(t.len());
                }
            })
            .await?
        {}
        assert_eq!(texts, vec![2, 300]);
        server.await??;
        Ok(())
    }
}
