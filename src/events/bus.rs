//! The live fan-out of committed events: a bounded broadcast channel per process, and, with
//! Redis configured, the other instances' events too.
//!
//! An event published here goes to this process's subscribers at once, and to the Redis
//! channel `<prefix>events` tagged with this instance's random id; every instance's listener
//! hands on what other instances published and skips its own, so a subscriber anywhere sees
//! each event exactly once. Redis delivery is best effort: while Redis is down the other
//! instances miss events (the audit log in the database keeps them all).

use super::Event;
use crate::cache::pubsub::{Delivery, PubSub};
use crate::metrics::Metrics;
use std::sync::{Arc, Weak};
use tokio::sync::{broadcast, mpsc, oneshot};

/// How many events a subscriber may fall behind before it is dropped, unless
/// `EVENT_SUBSCRIBER_BACKLOG` says otherwise.
pub const DEFAULT_SUBSCRIBER_BACKLOG: usize = 1024;

/// The Redis channel (under the key prefix) the instances share events on.
const CHANNEL: &str = "events";
/// Events waiting to be published to Redis; beyond this they are dropped for the other
/// instances (logged), never queued without bound.
const RELAY_QUEUE: usize = 4096;

/// The live fan-out of committed events to this process's subscribers. Cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

struct Inner {
    sender: broadcast::Sender<Arc<Event>>,
    /// Events for the other instances, published to Redis by a task of their own (off the
    /// request path); `None` without Redis.
    relay: Option<mpsc::Sender<Arc<Event>>>,
    metrics: Option<Arc<Metrics>>,
    /// Dropped with the bus: stops the Redis listener.
    _stop: oneshot::Sender<()>,
}

impl Default for EventBus {
    /// This process only, with the default backlog and no metrics.
    fn default() -> Self {
        EventBus::start(DEFAULT_SUBSCRIBER_BACKLOG, None, None)
    }
}

impl EventBus {
    /// A bus whose subscribers may fall `backlog` events behind; with `redis`, shared with the
    /// other instances (starts the publisher and listener tasks, which stop with the bus).
    pub fn start(backlog: usize, metrics: Option<Arc<Metrics>>, redis: Option<PubSub>) -> Self {
        let (sender, _) = broadcast::channel(backlog.max(1));
        let (stop_tx, stop_rx) = oneshot::channel();
        let relay = redis.as_ref().map(|_| mpsc::channel(RELAY_QUEUE));
        let (relay_tx, relay_rx) = match relay {
            Some((tx, rx)) => (Some(tx), Some(rx)),
            None => (None, None),
        };
        let inner = Arc::new(Inner {
            sender,
            relay: relay_tx,
            metrics,
            _stop: stop_tx,
        });
        if let (Some(pubsub), Some(relay_rx)) = (redis, relay_rx) {
            let instance = crate::token::random_string(12);
            let incoming = pubsub.subscribe(CHANNEL, RELAY_QUEUE);
            tokio::spawn(publish_loop(pubsub, instance.clone(), relay_rx));
            tokio::spawn(listen_loop(
                Arc::downgrade(&inner),
                instance,
                incoming,
                stop_rx,
            ));
        }
        EventBus { inner }
    }

    /// Hands committed events to every current subscriber here (none listening is fine) and,
    /// with Redis, to the other instances.
    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        if let Some(m) = &self.inner.metrics {
            m.events_fanned_out("local", events.len() as u64);
        }
        let mut not_relayed = 0usize;
        for e in events {
            let e = Arc::new(e);
            if let Some(relay) = &self.inner.relay {
                if relay.try_send(e.clone()).is_err() {
                    not_relayed += 1;
                }
            }
            let _ = self.inner.sender.send(e);
        }
        if not_relayed > 0 {
            // One line per burst (a clean-up publishes thousands at once), not one per event.
            tracing::warn!(
                events = not_relayed,
                "the Redis event relay is full or stopped; other instances miss these events"
            );
        }
    }

    /// A new subscriber; it sees events published from now on. A subscriber that falls more
    /// than the backlog behind gets `RecvError::Lagged` and is to be dropped.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.sender.subscribe()
    }

    /// The metrics this bus reports to, if any (the live streams count their subscribers).
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.inner.metrics.as_ref()
    }
}

/// One Redis message: `<instance>|<event as JSON>`.
fn encode(instance: &str, event: &Event) -> Option<String> {
    serde_json::to_string(event)
        .ok()
        .map(|json| format!("{instance}|{json}"))
}

/// The event of a message another instance published; `None` for this instance's own and for
/// anything unreadable.
fn decode(instance: &str, payload: &str) -> Option<Event> {
    let (from, json) = payload.split_once('|')?;
    if from == instance {
        return None;
    }
    serde_json::from_str(json).ok()
}

async fn publish_loop(pubsub: PubSub, instance: String, mut events: mpsc::Receiver<Arc<Event>>) {
    // Ends once the bus (the only sender) is dropped and the queue is drained.
    while let Some(e) = events.recv().await {
        let Some(payload) = encode(&instance, &e) else {
            continue;
        };
        if let Err(err) = pubsub.publish(CHANNEL, &payload).await {
            tracing::warn!(event = e.id, error = %err, "cannot publish a session event to Redis");
        }
    }
}

async fn listen_loop(
    bus: Weak<Inner>,
    instance: String,
    mut incoming: mpsc::Receiver<Delivery>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let delivery = tokio::select! {
            d = incoming.recv() => d,
            _ = &mut stop => return,
        };
        let Some(delivery) = delivery else { return };
        let Delivery::Message(payload) = delivery else {
            continue;
        };
        let Some(event) = decode(&instance, &payload) else {
            continue;
        };
        let Some(inner) = bus.upgrade() else { return };
        if let Some(m) = &inner.metrics {
            m.events_fanned_out("remote", 1);
        }
        let _ = inner.sender.send(Arc::new(event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventType;

    fn event(id: i64) -> Event {
        Event {
            id,
            kind: EventType::LoginSucceeded,
            at: 1,
            session_id: Some(2),
            user_id: Some(3),
            actor_user_id: None,
            identifier: Some("a|b".into()),
            ip_address: None,
            user_agent: None,
            channel_id: Some(1),
            reason: None,
        }
    }

    #[test]
    fn messages_round_trip_and_own_messages_are_skipped() {
        let payload = encode("me", &event(7)).unwrap();
        assert_eq!(decode("other", &payload), Some(event(7)));
        assert_eq!(decode("me", &payload), None);
        assert_eq!(decode("other", "garbage"), None);
        assert_eq!(decode("other", "x|{not json"), None);
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_lags() {
        let bus = EventBus::start(4, None, None);
        let mut rx = bus.subscribe();
        bus.publish((1..=6).map(event).collect());
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(2))
        ));
    }
}
