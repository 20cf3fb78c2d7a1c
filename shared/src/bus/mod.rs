//! The message bus between gateways and control-planes.
//!
//! Shaped on NATS core: subjects with `*` / `>` wildcards, and subscriptions of which every one
//! gets a copy of each matching message. The in-process implementation serves `ampora serve`;
//! the NATS one serves production.

mod in_process;
mod nats;
mod pattern;

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

pub use in_process::InProcessBus;
pub use nats::{NatsBus, NatsOptions};

#[derive(Debug, Clone)]
pub struct BusMessage {
    pub subject: String,
    pub payload: Bytes,
}

/// A live subscription; dropping it unsubscribes.
pub type Subscription = Pin<Box<dyn Stream<Item = BusMessage> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid subject {0:?}")]
    InvalidSubject(String),
    #[error("message of {size} bytes exceeds the bus limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = BusError> = std::result::Result<T, E>;

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes to every subscriber whose subject matches. May wait when a subscriber's
    /// bounded queue is full (never grows without bound).
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<()>;

    async fn subscribe(&self, subject: &str) -> Result<Subscription>;
}
