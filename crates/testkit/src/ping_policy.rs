//! grpc-go's server keepalive enforcement, which apid runs with its defaults (no policy set):
//! `MinTime` 5 minutes, `PermitWithoutStream` false, at most 2 ping strikes. A client PING that arrives
//! less than `MinTime` after the previous one is a strike, unless the server has written HEADERS or DATA
//! since (which resets the count); the third strike ends the connection. grpc-go sends GOAWAY
//! ENHANCE_YOUR_CALM "too_many_pings" and closes; here the connection is dropped, which the client's
//! stream sees the same way: it fails.
//!
//! The policy sits between TLS and the HTTP/2 server and reads frame headers in both directions.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tonic::transport::server::Connected;

/// grpc-go's default `keepalive.EnforcementPolicy.MinTime`.
pub const MIN_PING_INTERVAL: Duration = Duration::from_secs(300);
/// grpc-go's `maxPingStrikes`.
const MAX_PING_STRIKES: u32 = 2;

const PREFACE_LEN: usize = 24;
const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_PING: u8 = 0x6;
const FLAG_ACK: u8 = 0x1;

/// A connection under the policy.
pub struct PingPolicy<S> {
    inner: S,
    from_client: FrameScanner,
    from_server: FrameScanner,
    last_ping: Option<Instant>,
    strikes: u32,
    /// The server wrote HEADERS or DATA since the last ping.
    reset: bool,
    closed: bool,
}

impl<S> PingPolicy<S> {
    pub fn new(inner: S) -> Self {
        PingPolicy {
            inner,
            from_client: FrameScanner { skip: PREFACE_LEN, ..Default::default() },
            from_server: FrameScanner::default(),
            last_ping: None,
            strikes: 0,
            reset: false,
            closed: false,
        }
    }

    fn on_client_ping(&mut self) {
        let now = Instant::now();
        let previous = self.last_ping.replace(now);
        if std::mem::take(&mut self.reset) {
            self.strikes = 0;
            return;
        }
        if previous.is_some_and(|at| now.duration_since(at) < MIN_PING_INTERVAL) {
            self.strikes += 1;
        }
        if self.strikes > MAX_PING_STRIKES {
            tracing::warn!("client pinged too often (grpc-go's too_many_pings); closing the connection");
            self.closed = true;
        }
    }
}

fn too_many_pings() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "too_many_pings")
}

impl<S: AsyncRead + Unpin> AsyncRead for PingPolicy<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.closed {
            return Poll::Ready(Err(too_many_pings()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let mut pings = 0;
            self.from_client.feed(&buf.filled()[before..], |kind, flags| {
                if kind == FRAME_PING && flags & FLAG_ACK == 0 {
                    pings += 1;
                }
            });
            for _ in 0..pings {
                self.on_client_ping();
            }
            if self.closed {
                return Poll::Ready(Err(too_many_pings()));
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PingPolicy<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(too_many_pings()));
        }
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = result {
            let mut reset = false;
            self.from_server.feed(&buf[..written], |kind, _| reset |= kind == FRAME_DATA || kind == FRAME_HEADERS);
            self.reset |= reset;
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The TLS connection's information (peer certificates included) passes through unchanged.
impl<S: Connected> Connected for PingPolicy<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Finds HTTP/2 frame headers (9 bytes: length, type, flags, stream) in a byte stream seen in pieces.
#[derive(Default)]
struct FrameScanner {
    /// Bytes to pass over: the connection preface, then each frame's payload.
    skip: usize,
    header: [u8; 9],
    header_len: usize,
}

impl FrameScanner {
    fn feed(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(u8, u8)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 9 {
                let h = self.header;
                self.skip = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                self.header_len = 0;
                on_frame(h[3], h[4]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        [&len[1..], &[kind, flags, 0, 0, 0, 0], payload].concat()
    }

    #[test]
    fn frames_are_found_whatever_the_pieces() {
        let stream =
            [frame(0x4, 0, &[0; 6]), frame(FRAME_PING, 0, &[0; 8]), frame(FRAME_PING, FLAG_ACK, &[0; 8])].concat();
        for piece in [1, 5, 9, 100] {
            let mut scanner = FrameScanner::default();
            let mut seen = Vec::new();
            for chunk in stream.chunks(piece) {
                scanner.feed(chunk, |kind, flags| seen.push((kind, flags)));
            }
            assert_eq!(seen, vec![(0x4, 0), (FRAME_PING, 0), (FRAME_PING, FLAG_ACK)], "pieces of {piece}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn third_early_ping_without_data_closes() {
        let mut policy = PingPolicy::new(());
        policy.on_client_ping();
        policy.reset = true;
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(30)).await;
            assert!(!policy.closed);
            policy.on_client_ping();
        }
        // First ping after data resets; then 30 s pings strike at 60, 90 and 120 s.
        assert_eq!(policy.strikes, 2);
        tokio::time::advance(Duration::from_secs(30)).await;
        policy.on_client_ping();
        assert!(policy.closed);
        // Pings five minutes apart never strike.
        let mut patient = PingPolicy::new(());
        for _ in 0..5 {
            patient.on_client_ping();
            tokio::time::advance(MIN_PING_INTERVAL).await;
        }
        assert_eq!(patient.strikes, 0);
    }
}
