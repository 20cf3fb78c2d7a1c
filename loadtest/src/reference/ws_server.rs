//! A bare TLS WebSocket server that answers every OpAMP message with an empty `ServerToAgent`.
//! It exists so the gateway's memory per idle connection (RSS / connections) has a floor to be
//! read against: the same TLS settings and WebSocket buffer sizes, and nothing else per
//! connection but the task that reads it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ampora_shared::codec;
use ampora_shared::pb::opamp::ServerToAgent;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::{listen_tls, next_connection, spawn_progress, ServerArgs};

/// The gateway's default largest OpAMP message; also bounds one frame.
const MAX_MESSAGE_SIZE: usize = 4 << 20;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// WebSocket read buffer per connection, bytes (the gateway's default is 4 KiB).
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
    /// Bytes gathered before a write reaches the socket (the gateway's default is 4 KiB).
    #[arg(long, default_value_t = 4096)]
    write_buffer: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (listener, acceptor) = listen_tls(&args.server).await?;
    let config = WebSocketConfig::default()
        .read_buffer_size(args.read_buffer)
        .write_buffer_size(args.write_buffer)
        // Backpressure only: a reply is tiny, so this limit is never reached by an honest peer.
        .max_write_buffer_size(args.write_buffer + MAX_MESSAGE_SIZE)
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE));
    let open = Arc::new(AtomicU64::new(0));
    let _progress = spawn_progress(Duration::from_secs(5), {
        let open = open.clone();
        move || format!("open connections: {}", open.load(Ordering::Relaxed))
    });
    loop {
        let stream = next_connection(&listener).await;
        tokio::spawn(serve(stream, acceptor.clone(), config, open.clone()));
    }
}

/// One connection, start to end; its failures only end it.
async fn serve(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    config: WebSocketConfig,
    open: Arc<AtomicU64>,
) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let Ok(mut socket) = tokio_tungstenite::accept_async_with_config(tls, Some(config)).await
    else {
        return;
    };
    open.fetch_add(1, Ordering::Relaxed);
    // Reading also answers pings and the peer's close.
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Binary(frame) = message {
            if let Some(reply) = reply_to(&frame) {
                if socket.send(Message::Binary(reply.into())).await.is_err() {
                    break;
                }
            }
        }
    }
    open.fetch_sub(1, Ordering::Relaxed);
}

/// The reply to one WebSocket binary message: header 0 and a `ServerToAgent` for the sender's
/// instance, or `None` when the message is not an `AgentToServer`.
fn reply_to(frame: &[u8]) -> Option<Vec<u8>> {
    let payload = codec::ws_payload(frame).ok()?;
    let message = codec::decode_agent_to_server(payload).ok()?;
    Some(codec::encode_ws_server_message(&ServerToAgent {
        instance_uid: message.instance_uid,
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use ampora_shared::pb::opamp::AgentToServer;
    use bytes::Bytes;
    use prost::Message as _;

    use super::*;

    #[test]
    fn reply_carries_the_sender_instance_uid() {
        let mut frame = vec![0u8];
        AgentToServer {
            instance_uid: Bytes::from_static(&[9; 16]),
            sequence_num: 4,
            ..Default::default()
        }
        .encode(&mut frame)
        .unwrap();
        let reply = reply_to(&frame).unwrap();
        assert_eq!(reply[0], 0);
        let decoded = ServerToAgent::decode(&reply[1..]).unwrap();
        assert_eq!(decoded.instance_uid, Bytes::from_static(&[9; 16]));
    }

    #[test]
    fn undecodable_messages_get_no_reply() {
        assert_eq!(reply_to(&[]), None);
        assert_eq!(reply_to(&[1, 0x0a, 0x00]), None);
        assert_eq!(reply_to(&[0, 0xff, 0xff, 0xff]), None);
    }
}
