//! An agent's WebSocket that gives its grown buffers back once the connection is at rest.
//!
//! tungstenite sizes its read buffer to the largest frame received and its write buffer to
//! the largest frame sent, and keeps both for the life of the connection. A collector reports
//! its effective config (often kilobytes) once, then heartbeats in a few dozen bytes for days:
//! kept, that one frame would cost every idle agent its size again. So after a message larger
//! than the configured read buffer passes either way, the socket waits until nothing is
//! buffered — no frame half-read, no fragmented message open, everything written — and then
//! starts over with a fresh tungstenite stream on the same connection, with small buffers.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures::{FutureExt, Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Error, Message};

use super::boundaries::FrameBoundaries;

pub struct AgentSocket<S> {
    /// `None` only while being replaced within `poll_next`.
    inner: Option<WebSocketStream<Tracked<S>>>,
    /// A message larger than the configured read buffer passed: tungstenite's buffers grew.
    release_wanted: bool,
    /// A close frame went either way: the closing handshake owns the connection now.
    closing: bool,
}

impl<S> AgentSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// A server-side WebSocket over `io`, an upgraded connection whose handshake is done.
    pub fn new(io: S, config: WebSocketConfig) -> Self {
        Self {
            inner: Some(server_stream(
                Tracked {
                    io,
                    boundaries: FrameBoundaries::default(),
                },
                config,
            )),
            release_wanted: false,
            closing: false,
        }
    }

    fn inner(&mut self) -> &mut WebSocketStream<Tracked<S>> {
        self.inner
            .as_mut()
            .expect("the stream is only taken out within a replacement")
    }

    fn note(&mut self, message: &Message) {
        if message.len() > self.inner().get_config().read_buffer_size {
            self.release_wanted = true;
        }
        if matches!(message, Message::Close(_)) {
            self.closing = true;
        }
    }

    /// Swaps in a fresh stream if one is due and nothing would be lost. Called when the
    /// current one found no whole frame to return, so its read buffer holds exactly the bytes
    /// past the last frame boundary — none, when the boundaries say so.
    fn release_if_at_rest(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.release_wanted || self.closing || !self.inner().get_ref().boundaries.at_rest() {
            return false;
        }
        // Queued pong replies and unsent bytes must reach the socket first.
        if !matches!(Pin::new(self.inner()).poll_flush(cx), Poll::Ready(Ok(()))) {
            return false;
        }
        let old = self.inner.take().expect("present outside a replacement");
        let config = *old.get_config();
        self.inner = Some(server_stream(old.into_inner(), config));
        self.release_wanted = false;
        metrics::counter!("ampora_gateway_websocket_buffer_releases_total").increment(1);
        true
    }
}

fn server_stream<S>(io: Tracked<S>, config: WebSocketConfig) -> WebSocketStream<Tracked<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Without a handshake to perform, the future completes on its first poll.
    WebSocketStream::from_raw_socket(io, Role::Server, Some(config))
        .now_or_never()
        .expect("a stream without a handshake is ready at once")
}

impl<S> Stream for AgentSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match Pin::new(this.inner()).poll_next(cx) {
                Poll::Ready(Some(Ok(message))) => {
                    this.note(&message);
                    return Poll::Ready(Some(Ok(message)));
                }
                // The fresh stream is polled once more so that it, too, will wake this task.
                Poll::Pending if this.release_if_at_rest(cx) => continue,
                other => return other,
            }
        }
    }
}

impl<S> Sink<Message> for AgentSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(self.get_mut().inner()).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Error> {
        let this = self.get_mut();
        this.note(&message);
        Pin::new(this.inner()).start_send(message)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(self.get_mut().inner()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        this.closing = true;
        Pin::new(this.inner()).poll_close(cx)
    }
}

/// The connection under tungstenite, following frame boundaries in what it reads.
struct Tracked<S> {
    io: S,
    boundaries: FrameBoundaries,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.boundaries.advance(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::websocket::boundaries::tests::{binary, continuation, ping};
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const BIG: usize = 64 << 10;

    fn server(io: DuplexStream) -> AgentSocket<DuplexStream> {
        AgentSocket::new(io, WebSocketConfig::default().read_buffer_size(256))
    }

    /// A server socket and the agent's end of the connection, written to as raw bytes.
    fn with_raw_agent() -> (AgentSocket<DuplexStream>, DuplexStream) {
        let (server_io, agent) = tokio::io::duplex(1 << 20);
        (server(server_io), agent)
    }

    async fn next_binary(server: &mut AgentSocket<DuplexStream>) -> usize {
        match server.next().await {
            Some(Ok(Message::Binary(data))) => {
                assert!(data.iter().all(|&byte| byte == 7), "payload intact");
                data.len()
            }
            other => panic!("expected a binary message, got {other:?}"),
        }
    }

    /// A server socket that has just read a big message, so a release is due once at rest.
    async fn after_a_big_message() -> (AgentSocket<DuplexStream>, DuplexStream) {
        let (mut server, mut agent) = with_raw_agent();
        agent.write_all(&binary(true, BIG)).await.unwrap();
        assert_eq!(next_binary(&mut server).await, BIG);
        assert!(server.release_wanted);
        (server, agent)
    }

    /// Polls once more, as the session does after each message, with nothing left to read.
    fn go_idle(server: &mut AgentSocket<DuplexStream>) {
        assert!(server.next().now_or_never().is_none(), "nothing to read");
    }

    #[tokio::test]
    async fn a_big_message_is_released_once_read_and_the_connection_goes_on() {
        let (mut server, mut agent) = with_raw_agent();
        // A big message and a small one in the same write: the small one must survive.
        let mut bytes = binary(true, BIG);
        bytes.extend(binary(true, 10));
        agent.write_all(&bytes).await.unwrap();
        assert_eq!(next_binary(&mut server).await, BIG);
        assert!(server.release_wanted);
        assert_eq!(next_binary(&mut server).await, 10);
        go_idle(&mut server);
        assert!(!server.release_wanted, "released at rest");

        agent.write_all(&binary(true, 20)).await.unwrap();
        assert_eq!(next_binary(&mut server).await, 20);
    }

    #[tokio::test]
    async fn nothing_is_released_inside_a_frame_or_a_fragmented_message() {
        let (mut server, mut agent) = after_a_big_message().await;

        // Half a frame.
        let frame = binary(true, 3000);
        agent.write_all(&frame[..1000]).await.unwrap();
        go_idle(&mut server);
        assert!(server.release_wanted, "kept while a frame is half-read");
        agent.write_all(&frame[1000..]).await.unwrap();
        assert_eq!(next_binary(&mut server).await, 3000);

        // A message in fragments, with a ping between them.
        agent.write_all(&binary(false, 4000)).await.unwrap();
        go_idle(&mut server);
        agent.write_all(&ping()).await.unwrap();
        assert!(matches!(server.next().await, Some(Ok(Message::Ping(_)))));
        go_idle(&mut server);
        assert!(server.release_wanted, "kept while a message is open");
        agent.write_all(&continuation(true, 4000)).await.unwrap();
        assert_eq!(next_binary(&mut server).await, 8000);
        go_idle(&mut server);
        assert!(!server.release_wanted);

        // The pong to that ping was written before the release.
        let mut pong = [0u8; 4];
        agent.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0x8a, 2, 1, 2]);
    }

    #[tokio::test]
    async fn a_big_message_sent_is_released_too() {
        let (server_io, agent_io) = tokio::io::duplex(1 << 20);
        let mut server = server(server_io);
        let mut agent = WebSocketStream::from_raw_socket(agent_io, Role::Client, None)
            .now_or_never()
            .unwrap();
        let binary = |len: usize| Message::Binary(vec![7u8; len].into());
        server.send(binary(BIG)).await.unwrap();
        assert!(server.release_wanted);
        go_idle(&mut server);
        assert!(!server.release_wanted);
        server.send(binary(5)).await.unwrap();

        for expected in [BIG, 5] {
            match agent.next().await {
                Some(Ok(Message::Binary(data))) => assert_eq!(data.len(), expected),
                other => panic!("expected a binary message, got {other:?}"),
            }
        }
        agent.send(binary(6)).await.unwrap();
        assert_eq!(next_binary(&mut server).await, 6);
    }

    #[tokio::test]
    async fn a_closing_connection_is_left_alone() {
        let (mut server, _agent) = after_a_big_message().await;
        server.send(Message::Close(None)).await.unwrap();
        go_idle(&mut server);
        assert!(
            server.release_wanted,
            "the closing handshake keeps its stream"
        );
    }
}
