//! The bus inside one process, for `ampora serve` and tests: same semantics as NATS core, except
//! that a full subscriber queue makes the publisher wait instead of dropping the message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;

use super::pattern::{matches, validate_pattern, validate_subject};
use super::{Bus, BusError, BusMessage, Result, Subscription};

/// Default per-subscription queue length.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;
/// Default largest payload: the most NATS advises configuring as `max_payload` (its own
/// default is 1 MiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 8 << 20;

#[derive(Clone)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

struct Inner {
    subscribers: RwLock<Vec<Subscriber>>,
    next_id: AtomicU64,
    queue_capacity: usize,
    max_payload: usize,
}

struct Subscriber {
    id: u64,
    pattern: String,
    sender: mpsc::Sender<BusMessage>,
}

impl InProcessBus {
    pub fn new(queue_capacity: usize, max_payload: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                subscribers: RwLock::new(Vec::new()),
                next_id: AtomicU64::new(1),
                queue_capacity: queue_capacity.max(1),
                max_payload,
            }),
        }
    }

    /// A bus with the default largest payload.
    pub fn with_queue_capacity(queue_capacity: usize) -> Self {
        Self::new(queue_capacity, DEFAULT_MAX_PAYLOAD)
    }

    fn add(&self, pattern: &str) -> Result<Subscription> {
        validate_pattern(pattern)?;
        let (sender, receiver) = mpsc::channel(self.inner.queue_capacity);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner
            .subscribers
            .write()
            .expect("bus lock poisoned")
            .push(Subscriber {
                id,
                pattern: pattern.to_owned(),
                sender,
            });
        Ok(Box::pin(InProcessSubscription {
            receiver,
            id,
            bus: Arc::downgrade(&self.inner),
        }))
    }

    /// The senders of the subscriptions a message on `subject` goes to.
    fn targets(&self, subject: &str) -> Vec<mpsc::Sender<BusMessage>> {
        let subscribers = self.inner.subscribers.read().expect("bus lock poisoned");
        subscribers
            .iter()
            .filter(|s| matches(&s.pattern, subject))
            .map(|s| s.sender.clone())
            .collect()
    }

    /// Resolves once every subscription has taken every message published before the call
    /// (its queue is empty), so a shutdown can stop the consumers without losing what was
    /// already published.
    pub async fn flushed(&self) {
        let senders: Vec<mpsc::Sender<BusMessage>> = self
            .inner
            .subscribers
            .read()
            .expect("bus lock poisoned")
            .iter()
            .map(|s| s.sender.clone())
            .collect();
        for sender in senders {
            // All of a queue's slots are free again only once its receiver has taken every
            // message; a dropped subscription's error means there is nothing left to take.
            let _ = sender.reserve_many(sender.max_capacity()).await;
        }
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::with_queue_capacity(DEFAULT_QUEUE_CAPACITY)
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<()> {
        validate_subject(subject)?;
        if payload.len() > self.inner.max_payload {
            return Err(BusError::TooLarge {
                size: payload.len(),
                limit: self.inner.max_payload,
            });
        }
        for target in self.targets(subject) {
            let message = BusMessage {
                subject: subject.to_owned(),
                payload: payload.clone(),
            };
            // A closed receiver is a subscription being dropped; its guard removes it.
            let _ = target.send(message).await;
        }
        Ok(())
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription> {
        self.add(subject)
    }
}

struct InProcessSubscription {
    receiver: mpsc::Receiver<BusMessage>,
    id: u64,
    bus: std::sync::Weak<Inner>,
}

impl Stream for InProcessSubscription {
    type Item = BusMessage;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<BusMessage>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for InProcessSubscription {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            if let Ok(mut subscribers) = bus.subscribers.write() {
                subscribers.retain(|s| s.id != self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{FutureExt, StreamExt};
    use std::time::Duration;

    async fn next(sub: &mut Subscription) -> Option<BusMessage> {
        tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn plain_subscribers_all_receive() {
        let bus = InProcessBus::default();
        let mut a = bus.subscribe("x.*").await.unwrap();
        let mut b = bus.subscribe("x.>").await.unwrap();
        bus.publish("x.y", Bytes::from_static(b"hi")).await.unwrap();
        assert_eq!(next(&mut a).await.unwrap().payload, "hi");
        assert_eq!(next(&mut b).await.unwrap().subject, "x.y");
    }

    #[tokio::test]
    async fn dropped_subscription_unsubscribes() {
        let bus = InProcessBus::default();
        let sub = bus.subscribe("d").await.unwrap();
        drop(sub);
        assert!(bus.inner.subscribers.read().unwrap().is_empty());
        bus.publish("d", Bytes::new()).await.unwrap();
    }

    #[tokio::test]
    async fn bounded_queue_and_payload() {
        let bus = InProcessBus::new(1, 4);
        let mut sub = bus.subscribe("b").await.unwrap();
        assert!(matches!(
            bus.publish("b", Bytes::from_static(b"12345")).await,
            Err(BusError::TooLarge { size: 5, limit: 4 })
        ));
        bus.publish("b", Bytes::from_static(b"1")).await.unwrap();
        // The queue holds one message: the second publish waits until it is drained.
        let mut second = Box::pin(bus.publish("b", Bytes::from_static(b"2")));
        assert!((&mut second).now_or_never().is_none());
        assert_eq!(next(&mut sub).await.unwrap().payload, "1");
        second.await.unwrap();
        assert_eq!(next(&mut sub).await.unwrap().payload, "2");
    }

    #[tokio::test]
    async fn flushed_waits_until_every_subscription_has_taken_its_messages() {
        let bus = InProcessBus::new(8, 4);
        let mut taker = bus.subscribe("f.*").await.unwrap();
        let _idle = bus.subscribe("other").await.unwrap();
        for payload in [&b"1"[..], b"2"] {
            bus.publish("f.x", Bytes::from_static(payload))
                .await
                .unwrap();
        }
        let mut flushed = Box::pin(bus.flushed());
        assert!((&mut flushed).now_or_never().is_none());
        assert_eq!(next(&mut taker).await.unwrap().payload, "1");
        assert!((&mut flushed).now_or_never().is_none());
        assert_eq!(next(&mut taker).await.unwrap().payload, "2");
        flushed.await;
    }

    #[tokio::test]
    async fn rejects_bad_subjects() {
        let bus = InProcessBus::default();
        assert!(bus.publish("a.*", Bytes::new()).await.is_err());
        assert!(bus.subscribe("a.>.b").await.is_err());
    }
}
