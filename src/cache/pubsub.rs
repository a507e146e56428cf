//! A small publish/subscribe facility over Redis pub/sub, for what other instances must hear
//! at once (the live session events). Channels are named under `REDIS_KEY_PREFIX`; a
//! subscription reconnects with backoff when Redis drops, and says so, so its user knows what
//! it may have missed.

use super::{CacheError, RedisCache};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Longest wait for a PUBLISH. Event publishing runs off the request path, so this may be far
/// longer than `REDIS_TIMEOUT` (a cache read's limit).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for connecting and subscribing.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a subscription hands its user.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Subscribed (first time or again after a break): anything published while the
    /// subscription was down was not heard.
    Subscribed,
    /// A message's payload.
    Message(String),
}

/// Publishes and subscribes on channels `<prefix><name>` of the configured Redis (a single
/// server or a cluster: a cluster forwards every PUBLISH to all its nodes, so subscribing on
/// any one node hears everything).
#[derive(Clone)]
pub struct PubSub {
    redis: Arc<RedisCache>,
}

impl PubSub {
    pub fn new(redis: Arc<RedisCache>) -> PubSub {
        PubSub { redis }
    }

    /// The full channel name of `name`.
    pub fn channel(&self, name: &str) -> String {
        format!("{}{}", self.redis.prefix(), name)
    }

    /// Publishes `payload` on channel `name`; returns how many subscribers got it.
    pub async fn publish(&self, name: &str, payload: &str) -> Result<i64, CacheError> {
        let mut conn = self.redis.conn();
        let channel = self.channel(name);
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&channel).arg(payload);
        let sent = cmd.query_async::<i64>(&mut conn);
        match tokio::time::timeout(PUBLISH_TIMEOUT, sent).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(CacheError::Timeout(PUBLISH_TIMEOUT)),
        }
    }

    /// Subscribes to channel `name` until the returned receiver is dropped. A background task
    /// keeps the subscription up, reconnecting with exponential backoff (up to 5 s); each time
    /// it has (re)subscribed it delivers [`Delivery::Subscribed`]. Messages are dropped, with a
    /// warning, while the receiver is more than `capacity` behind.
    pub fn subscribe(&self, name: &str, capacity: usize) -> mpsc::Receiver<Delivery> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let node = self.redis.target().any_node().to_string();
        tokio::spawn(subscription_loop(node, self.channel(name), tx));
        rx
    }
}

/// A pub/sub connection to `node`, subscribed to `channel`.
pub(super) async fn open_subscription(
    node: &str,
    channel: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let client = redis::Client::open(node)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

async fn subscription_loop(node: String, channel: String, tx: mpsc::Sender<Delivery>) {
    let mut backoff = BACKOFF_FIRST;
    let mut lagging = false;
    loop {
        if tx.is_closed() {
            return;
        }
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, open_subscription(&node, &channel)).await {
            Ok(Ok(pubsub)) => {
                if tx.send(Delivery::Subscribed).await.is_err() {
                    return;
                }
                backoff = BACKOFF_FIRST;
                let mut messages = pubsub.into_on_message();
                loop {
                    let next = tokio::select! {
                        next = messages.next() => next,
                        // Nobody listens any more: stop (and close the connection).
                        () = tx.closed() => return,
                    };
                    let Some(msg) = next else { break };
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    match tx.try_send(Delivery::Message(payload)) {
                        Ok(()) => lagging = false,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            if !lagging {
                                tracing::warn!(
                                    channel = %channel,
                                    "a Redis subscriber is falling behind; dropping messages"
                                );
                            }
                            lagging = true;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                tracing::warn!(channel = %channel, "Redis subscription lost; reconnecting");
            }
            Ok(Err(e)) => {
                tracing::warn!(channel = %channel, error = %e, "cannot subscribe to Redis")
            }
            Err(_) => tracing::warn!(channel = %channel, "subscribing to Redis timed out"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = tx.closed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
