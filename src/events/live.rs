//! One live subscriber's stream of events: only the asked types, only events in channels the
//! subscriber may read, the subscriber's own session checked again every
//! [`RECHECK_EVERY`] while it runs (and ended at once by an event that ends it), and an end (with an error) when it falls behind the bus.

use super::{Event, EventBus, EventType};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::metrics::Metrics;
use crate::service::authz::Scope;
use futures_util::Stream;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};

/// How often a running subscription checks that its session is still live and still holds
/// the permission (from the session cache, so it costs no query on a warm cache).
pub const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// Which events one subscriber sees.
#[derive(Clone, Debug)]
pub struct Audience {
    /// The asked types; `None` for all.
    pub types: Option<Vec<EventType>>,
    /// The channels where the subscriber holds the permission.
    pub scope: Scope,
    /// The channel an event without one belongs to (as for sessions).
    pub default_channel_id: i64,
    /// The subscriber's own session: an event that ends it (revoked, logged out, expired)
    /// ends the stream at once, on whichever instance it happened, without waiting for the
    /// next re-check.
    pub session_id: Option<i64>,
}

impl Audience {
    /// Whether `e` ends the subscriber's own session.
    pub fn ends(&self, e: &Event) -> bool {
        self.session_id.is_some()
            && e.session_id == self.session_id
            && matches!(
                e.kind,
                EventType::SessionRevoked | EventType::LoggedOut | EventType::SessionExpired
            )
    }

    pub fn admits(&self, e: &Event) -> bool {
        if let Some(types) = &self.types {
            if !types.contains(&e.kind) {
                return false;
            }
        }
        match &self.scope {
            Scope::All => true,
            Scope::Channels(ids) => ids.contains(&e.channel_id.unwrap_or(self.default_channel_id)),
        }
    }
}

/// Ends the subscription's count in the metrics however the stream ends.
struct Counted(Option<Arc<Metrics>>);

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.event_subscribers(-1);
        }
    }
}

struct State<F> {
    events: broadcast::Receiver<Arc<Event>>,
    audience: Audience,
    recheck: F,
    tick: tokio::time::Interval,
    counted: Counted,
    done: bool,
}

/// The events of `bus` that `audience` admits, from now on. Every [`RECHECK_EVERY`],
/// `recheck` says who the subscriber is now: their current scope, or an `UNAUTHENTICATED` /
/// `FORBIDDEN` error that ends the stream with that error (other errors, a database outage,
/// are logged and the check is tried again at the next tick). A subscriber more than the bus's
/// backlog behind gets a `RATE_LIMITED` error and the stream ends.
pub fn stream<F, Fut>(
    bus: &EventBus,
    audience: Audience,
    recheck: F,
) -> impl Stream<Item = AppResult<Arc<Event>>> + Send + 'static
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = AppResult<Scope>> + Send,
{
    let metrics = bus.metrics().cloned();
    if let Some(m) = &metrics {
        m.event_subscribers(1);
    }
    let state = State {
        events: bus.subscribe(),
        audience,
        recheck,
        tick: tokio::time::interval_at(tokio::time::Instant::now() + RECHECK_EVERY, RECHECK_EVERY),
        counted: Counted(metrics),
        done: false,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            tokio::select! {
                received = st.events.recv() => match received {
                    Ok(e) => {
                        if st.audience.ends(&e) {
                            st.done = true;
                            if let Some(m) = &st.counted.0 {
                                m.event_subscriber_dropped("session_ended");
                            }
                            let err = AppError::unauthenticated("this session has ended");
                            return Some((Err(err), st));
                        }
                        if st.audience.admits(&e) {
                            return Some((Ok(e), st));
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        st.done = true;
                        if let Some(m) = &st.counted.0 {
                            m.event_subscriber_dropped("lagged");
                        }
                        let err = AppError::rate_limited(format!(
                            "this subscriber fell behind and missed {missed} events: the \
                             subscription ends; subscribe again (and read faster)"
                        ));
                        return Some((Err(err), st));
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = st.tick.tick() => match (st.recheck)().await {
                    Ok(scope) => st.audience.scope = scope,
                    Err(e) if matches!(e.code(), ErrorCode::Unauthenticated | ErrorCode::Forbidden) => {
                        st.done = true;
                        if let Some(m) = &st.counted.0 {
                            m.event_subscriber_dropped(if e.code() == ErrorCode::Forbidden {
                                "forbidden"
                            } else {
                                "session_ended"
                            });
                        }
                        return Some((Err(e), st));
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = %e.chain(),
                            "a live subscription could not check its session; trying again"
                        );
                    }
                },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventType, channel_id: Option<i64>) -> Event {
        Event {
            id: 1,
            kind,
            at: 0,
            session_id: None,
            user_id: None,
            actor_user_id: None,
            identifier: None,
            ip_address: None,
            user_agent: None,
            channel_id,
            reason: None,
        }
    }

    #[test]
    fn the_audience_sees_its_types_in_its_channels() {
        let a = Audience {
            types: Some(vec![EventType::LoginSucceeded]),
            scope: Scope::Channels(vec![1, 5]),
            default_channel_id: 1,
            session_id: None,
        };
        assert!(a.admits(&event(EventType::LoginSucceeded, Some(5))));
        // No channel: the default channel's.
        assert!(a.admits(&event(EventType::LoginSucceeded, None)));
        assert!(!a.admits(&event(EventType::LoginSucceeded, Some(6))));
        assert!(!a.admits(&event(EventType::LoggedOut, Some(5))));
        let other = Audience {
            scope: Scope::Channels(vec![5]),
            types: None,
            ..a
        };
        assert!(!other.admits(&event(EventType::LoginSucceeded, None)));
        assert!(other.admits(&event(EventType::UserCreated, Some(5))));
        let all = Audience {
            scope: Scope::All,
            types: None,
            default_channel_id: 1,
            session_id: None,
        };
        assert!(all.admits(&event(EventType::RoleChanged, Some(99))));
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_an_error_and_the_end() {
        use futures_util::StreamExt;
        let bus = EventBus::start(2, None, None);
        let audience = Audience {
            types: None,
            scope: Scope::All,
            default_channel_id: 1,
            session_id: None,
        };
        let mut s = Box::pin(stream(&bus, audience, || async { Ok(Scope::All) }));
        bus.publish(
            (0..5)
                .map(|_| event(EventType::LoginSucceeded, None))
                .collect(),
        );
        let first = s.next().await.expect("an item");
        assert_eq!(first.err().map(|e| e.code()), Some(ErrorCode::RateLimited));
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn a_failed_recheck_ends_the_stream_and_a_passing_one_narrows_it() {
        use futures_util::StreamExt;
        let bus = EventBus::start(16, None, None);
        let audience = Audience {
            types: None,
            scope: Scope::All,
            default_channel_id: 1,
            session_id: None,
        };
        let checks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = checks.clone();
        let mut s = Box::pin(stream(&bus, audience, move || {
            let n = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                match n {
                    0 => Ok(Scope::Channels(vec![7])),
                    _ => Err(AppError::unauthenticated("ended")),
                }
            }
        }));
        // Polled past the first check: from then on only channel 7 is visible.
        let quiet = tokio::time::timeout(RECHECK_EVERY + Duration::from_millis(200), s.next());
        assert!(quiet.await.is_err(), "nothing was published yet");
        assert_eq!(checks.load(std::sync::atomic::Ordering::SeqCst), 1);
        bus.publish(vec![
            event(EventType::LoginSucceeded, Some(3)),
            event(EventType::LoginFailed, Some(7)),
        ]);
        let e = s.next().await.expect("an item").expect("an event");
        assert_eq!(e.kind, EventType::LoginFailed);
        let end = s.next().await.expect("an item");
        assert_eq!(
            end.err().map(|e| e.code()),
            Some(ErrorCode::Unauthenticated)
        );
        assert!(s.next().await.is_none());
        assert_eq!(checks.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// An event that ends the subscriber's own session ends the stream at once, with
    /// `UNAUTHENTICATED`, though the re-check (every two seconds) still passes; other
    /// sessions' endings and its own other events do not.
    #[tokio::test]
    async fn the_end_of_the_subscribers_session_ends_the_stream_at_once() {
        use futures_util::StreamExt;
        let bus = EventBus::start(16, None, None);
        let audience = Audience {
            types: None,
            scope: Scope::All,
            default_channel_id: 1,
            session_id: Some(42),
        };
        let mut s = Box::pin(stream(&bus, audience, || async { Ok(Scope::All) }));
        let of = |kind, session| Event {
            session_id: Some(session),
            ..event(kind, None)
        };
        bus.publish(vec![
            of(EventType::SessionRevoked, 41),
            of(EventType::SessionRefreshed, 42),
            of(EventType::LoggedOut, 42),
        ]);
        let within = Duration::from_millis(500);
        for want in [41, 42] {
            let e = tokio::time::timeout(within, s.next()).await;
            let e = e.expect("at once").expect("an item").expect("an event");
            assert_eq!(e.session_id, Some(want));
        }
        let end = tokio::time::timeout(within, s.next()).await;
        let end = end
            .expect("at once, not at the next re-check")
            .expect("an item");
        assert_eq!(
            end.err().map(|e| e.code()),
            Some(ErrorCode::Unauthenticated)
        );
        assert!(s.next().await.is_none());
    }
}
