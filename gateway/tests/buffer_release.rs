//! An idle WebSocket agent costs the gateway no more after one large message than before it:
//! the buffers that message grew are given back. Heap bytes are counted by this binary's own
//! allocator, so the test has a process of its own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ampora_gateway::GatewayConfig;
use ampora_shared::bus::{Bus, InProcessBus};
use ampora_shared::codec;
use ampora_shared::pb::bus::ControlPlaneHeartbeat;
use ampora_shared::pb::opamp::{AgentConfigFile, AgentConfigMap, AgentToServer, EffectiveConfig};
use futures::StreamExt;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_util::sync::CancellationToken;

/// Heap bytes in use by the whole process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const AGENTS: usize = 100;
const LARGE_CONFIG: usize = 64 << 10;

fn agent_message(agent: usize, effective_config: usize) -> Vec<u8> {
    let mut uid = vec![0u8; 16];
    uid[..8].copy_from_slice(&(agent as u64 + 1).to_be_bytes());
    let files = HashMap::from([(
        String::new(),
        AgentConfigFile {
            body: vec![b'x'; effective_config].into(),
            content_type: "text/yaml".to_owned(),
        },
    )]);
    let message = AgentToServer {
        instance_uid: uid.into(),
        sequence_num: 1,
        effective_config: Some(EffectiveConfig {
            config_map: Some(AgentConfigMap { config_map: files }),
        }),
        ..Default::default()
    };
    // One binary frame, masked as agents must.
    let payload = codec::ws_frame_from_encoded(&message.encode_to_vec());
    let mut frame = Frame::message(payload, OpCode::Data(Data::Binary), true);
    frame.header_mut().mask = Some([3, 1, 4, 1]);
    let mut bytes = Vec::new();
    frame.format(&mut bytes).unwrap();
    bytes
}

/// A WebSocket opened by hand, so that this side keeps no buffers of its own.
async fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(
            b"GET /v1/opamp HTTP/1.1\r\nHost: gateway\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(socket.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    socket
}

/// Heap bytes in use once they stop falling (or after a few seconds).
async fn settled_heap() -> isize {
    let mut last = isize::MAX;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let live = LIVE.load(Ordering::Relaxed);
        if live >= last {
            return live;
        }
        last = live;
    }
    last
}

#[tokio::test]
async fn an_idle_agent_costs_no_more_after_a_large_message() {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::default());
    let config = GatewayConfig {
        // This side never answers pings.
        ws_idle_timeout: Duration::from_secs(300),
        ..GatewayConfig::default()
    };
    let mut inbound = bus
        .subscribe(&config.subjects.agent_inbound_all())
        .await
        .unwrap();
    let heartbeats = {
        let bus = bus.clone();
        let subject = config.subjects.control_plane_heartbeat();
        tokio::spawn(async move {
            let beat = ControlPlaneHeartbeat {
                replica_id: "stand-in".to_owned(),
            };
            loop {
                let _ = bus.publish(&subject, beat.encode_to_vec().into()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let gateway = tokio::spawn(ampora_gateway::run(
        listener,
        config,
        bus,
        shutdown.clone().cancelled_owned(),
    ));
    let mut relayed = async |count: usize| {
        for _ in 0..count {
            let envelope = tokio::time::timeout(Duration::from_secs(10), inbound.next())
                .await
                .expect("every message relayed in time");
            drop(envelope);
        }
    };

    let mut agents = Vec::new();
    for agent in 0..AGENTS {
        let mut socket = connect(addr).await;
        socket.write_all(&agent_message(agent, 100)).await.unwrap();
        agents.push(socket);
    }
    relayed(AGENTS).await;
    let before = settled_heap().await;

    for (agent, socket) in agents.iter_mut().enumerate() {
        socket
            .write_all(&agent_message(agent, LARGE_CONFIG))
            .await
            .unwrap();
    }
    relayed(AGENTS).await;
    let growth = (settled_heap().await - before) / AGENTS as isize;
    assert!(
        growth < 2048,
        "each idle agent still holds {growth} bytes more after a {LARGE_CONFIG}-byte message"
    );

    shutdown.cancel();
    heartbeats.abort();
    drop(agents);
    gateway.await.unwrap().unwrap();
}
