//! Throttles and limits: sliding-window counters that reserve an attempt atomically before the
//! work they guard (failed logins per identifier and per client address, wrong current passwords
//! per user, new anonymous sessions per address). The shared half of each counter lives in
//! Redis, reached through [`crate::cache::RedisWindows`].

use crate::cache::{RedisCache, RedisWindows};
use crate::clock::{ms, now_ms};
use crate::error::{AppError, AppResult};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Longest a login waits for the logins of the same identifier already being checked here.
const LOGIN_TURN_WAIT: Duration = Duration::from_secs(5);
/// Most logins of one identifier waiting for their turn at once; more go ahead without one.
const LOGIN_TURN_WAITERS: usize = 8;

/// Window of the anonymous-session limit (`ANONYMOUS_SESSIONS_PER_ADDRESS` is per minute).
const ANONYMOUS_WINDOW: Duration = Duration::from_secs(60);

/// A counter key (before hashing) and the most events it admits per window.
pub struct Counter {
    key: String,
    max: u32,
}

/// One attempt's reservations, one per counter it was checked against. Dropping it keeps the
/// attempt counted; [`Throttle::release`] gives it back.
#[must_use = "a reservation is either kept (the attempt counts) or released"]
pub struct Reservation {
    taken: Vec<Taken>,
}

/// A reservation on one counter: its entry in this process, and in Redis when it was made there.
struct Taken {
    key: String,
    local_id: u64,
    redis_member: Option<String>,
}

/// One event in a counter of this process.
#[derive(Clone, Copy)]
struct Entry {
    at: i64,
    id: u64,
}

/// Counters over a sliding window.
///
/// Each instance counts its own events, checked and updated under the counter's lock. With
/// Redis configured, an event admitted here must also be admitted there, where a counter is a
/// sorted set shared by every instance and a reservation is one script on that one key: trim the
/// window, count, add only when under the limit. While Redis does not answer, this instance's
/// counts alone decide.
struct SlidingWindow {
    /// Counter key -> recent events, oldest first.
    local: moka::sync::Cache<String, Arc<Mutex<Vec<Entry>>>>,
    /// The counters shared with the other instances, when Redis is configured.
    redis: Option<Arc<RedisWindows>>,
    window_ms: i64,
    /// Tells this process's reservations apart, so one can be given back.
    next_id: AtomicU64,
}

impl SlidingWindow {
    fn new(window: Duration, redis: Option<Arc<RedisWindows>>) -> Self {
        SlidingWindow {
            local: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_idle(window)
                .build(),
            redis,
            window_ms: ms(window),
            next_id: AtomicU64::new(1),
        }
    }

    /// Reserves one event on every counter, or none: a refusal gives back what was taken and
    /// answers the seconds until the refusing counter admits again.
    /// `Err` is the index of the counter that refused and the seconds to wait.
    async fn reserve(&self, counters: &[Counter], now: i64) -> Result<Vec<Taken>, (usize, i64)> {
        let mut taken = Vec::with_capacity(counters.len());
        for (i, counter) in counters.iter().enumerate() {
            match self.reserve_one(counter, now).await {
                Ok(t) => taken.push(t),
                Err(free_at) => {
                    self.release(taken).await;
                    let secs = ((free_at - now) as f64 / 1000.0).ceil() as i64;
                    return Err((i, secs.max(1)));
                }
            }
        }
        Ok(taken)
    }

    /// Reserves one event on a counter, or answers when (ms) the counter admits again.
    async fn reserve_one(&self, counter: &Counter, now: i64) -> Result<Taken, i64> {
        let local_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // This instance's own count decides first: it holds every attempt made here, so one
        // instance never admits more than `max` even while Redis answers some calls and not
        // others (a timed-out script may still have run).
        self.local_reserve(counter, now, local_id)?;
        let mut taken = Taken {
            key: counter.key.clone(),
            local_id,
            redis_member: None,
        };
        let Some(redis) = &self.redis else {
            return Ok(taken);
        };
        let member = format!("{now}:{}", crate::token::random_string(12));
        let reserved = redis
            .reserve(&counter.key, &member, now, self.window_ms, counter.max)
            .await;
        match reserved {
            Ok(Ok(())) => taken.redis_member = Some(member),
            Ok(Err(first)) => {
                self.local_release(&taken);
                return Err(first + self.window_ms);
            }
            Err(e) => {
                tracing::warn!(error = %e, "throttle: Redis unavailable, using this instance's counters")
            }
        }
        Ok(taken)
    }

    /// Adds an event to this process's counter if it is under the limit, else answers when it
    /// admits again (ms).
    fn local_reserve(&self, counter: &Counter, now: i64, id: u64) -> Result<(), i64> {
        let max = counter.max as usize;
        let events = self.local.get_with(counter.key.clone(), Arc::default);
        let mut events = events.lock().unwrap_or_else(PoisonError::into_inner);
        events.retain(|e| now - e.at < self.window_ms);
        if events.len() >= max {
            // Free again when the event that keeps the count at `max` ages out.
            return Err(events[events.len() - max].at + self.window_ms);
        }
        events.push(Entry { at: now, id });
        Ok(())
    }

    fn local_release(&self, taken: &Taken) {
        if let Some(events) = self.local.get(&taken.key) {
            events
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|e| e.id != taken.local_id);
        }
    }

    async fn release(&self, taken: Vec<Taken>) {
        for t in taken {
            self.local_release(&t);
            if let (Some(redis), Some(member)) = (&self.redis, &t.redis_member) {
                if let Err(e) = redis.release(&t.key, member).await {
                    tracing::warn!(error = %e, "throttle: could not give an attempt back in Redis");
                }
            }
        }
    }

    async fn clear(&self, key: &str) {
        self.local.invalidate(key);
        if let Some(redis) = &self.redis {
            if let Err(e) = redis.clear(key).await {
                tracing::warn!(error = %e, "throttle: could not clear a counter in Redis");
            }
        }
    }
}

/// Which login limit refused an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThrottledBy {
    /// `LOGIN_MAX_ATTEMPTS` failed logins on the identifier.
    Identifier,
    /// `LOGIN_MAX_ATTEMPTS_PER_ADDRESS` failed logins from the client address.
    Address,
}

impl ThrottledBy {
    /// The reason of the `LOGIN_THROTTLED` event.
    pub fn as_str(self) -> &'static str {
        match self {
            ThrottledBy::Identifier => "identifier",
            ThrottledBy::Address => "address",
        }
    }
}

/// A refused login attempt.
#[derive(Clone, Copy, Debug)]
pub struct Throttled {
    pub by: ThrottledBy,
    pub retry_after_seconds: i64,
}

/// The throttles of the server.
pub struct Throttle {
    /// Failed logins and wrong current passwords, over `LOGIN_WINDOW`.
    attempts: SlidingWindow,
    /// New anonymous sessions, over a minute.
    anonymous: SlidingWindow,
    max_per_identifier: u32,
    max_per_address: u32,
    anonymous_per_address: u32,
    /// One login of an identifier at a time in this process, from its reservation until it
    /// is settled (see [`Throttle::login_turn`]).
    login_turns: moka::sync::Cache<String, Arc<LoginTurn>>,
}

/// The turn of one identifier's logins, and how many wait for it.
#[derive(Default)]
struct LoginTurn {
    lock: Arc<tokio::sync::Mutex<()>>,
    waiting: AtomicUsize,
}

impl Throttle {
    pub fn new(config: &crate::config::Config, redis: Option<Arc<RedisCache>>) -> Throttle {
        let redis = redis.map(|r| Arc::new(RedisWindows::new(r)));
        Throttle {
            attempts: SlidingWindow::new(config.login_window, redis.clone()),
            anonymous: SlidingWindow::new(ANONYMOUS_WINDOW, redis),
            max_per_identifier: config.login_max_attempts,
            max_per_address: config.login_max_attempts_per_address,
            anonymous_per_address: config.anonymous_sessions_per_address,
            login_turns: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(LOGIN_TURN_WAIT * 4)
                .build(),
        }
    }

    /// Waits until no other login of this identifier is between its reservation and its
    /// outcome in this process (at most [`LOGIN_TURN_WAIT`], and only behind fewer than
    /// [`LOGIN_TURN_WAITERS`] others; else it goes ahead without a turn). Held until the attempt is settled, so an attempt still being checked never
    /// counts against the next: six correct logins sent at once all succeed, where they used
    /// to refuse each other as failures not yet known to be successes. Guesses gain nothing:
    /// each is still reserved before it is checked, and refused ones return at once.
    pub async fn login_turn(&self, identifier: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let turn = self
            .login_turns
            .get_with(identifier.to_string(), Default::default);
        if let Ok(mine) = turn.lock.clone().try_lock_owned() {
            return Some(mine);
        }
        // A flood of attempts (refused ones too) must not hold everyone else up: past a few
        // waiters, an attempt goes ahead without a turn, as if there were none.
        if turn.waiting.fetch_add(1, Ordering::AcqRel) >= LOGIN_TURN_WAITERS {
            turn.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let mine = tokio::time::timeout(LOGIN_TURN_WAIT, turn.lock.clone().lock_owned()).await;
        turn.waiting.fetch_sub(1, Ordering::AcqRel);
        mine.ok()
    }

    fn identifier_key(identifier: &str) -> String {
        format!("id:{identifier}")
    }

    /// The part of a client address that per-address limits count: an IPv4 address (also one
    /// written as IPv4-mapped IPv6), or the /64 network of an IPv6 address, which one client
    /// usually holds whole (counting single IPv6 addresses would let it take a fresh one for
    /// every attempt). Anything else counts as written.
    fn address_key(address: &str) -> String {
        use std::net::IpAddr;
        match address.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => v4.to_string(),
            Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => {
                    let s = v6.segments();
                    format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
                }
            },
            Err(_) => address.to_string(),
        }
    }

    /// Reserves a login attempt for a normalized identifier and the client address, before the
    /// password is verified. `Err` says which limit refused and how long to wait.
    pub async fn reserve_login(
        &self,
        identifier: &str,
        address: Option<&str>,
    ) -> Result<Reservation, Throttled> {
        let mut counters = vec![Counter {
            key: Self::identifier_key(identifier),
            max: self.max_per_identifier,
        }];
        if let Some(addr) = address {
            counters.push(Counter {
                key: format!("ip:{}", Self::address_key(addr)),
                max: self.max_per_address,
            });
        }
        match self.attempts.reserve(&counters, now_ms()).await {
            Ok(taken) => Ok(Reservation { taken }),
            Err((i, secs)) => Err(Throttled {
                // The identifier's counter comes first.
                by: if i == 0 {
                    ThrottledBy::Identifier
                } else {
                    ThrottledBy::Address
                },
                retry_after_seconds: secs,
            }),
        }
    }

    /// Reserves a `changePassword` attempt of a user (`LOGIN_MAX_ATTEMPTS` per `LOGIN_WINDOW`).
    pub async fn reserve_password_change(&self, user_id: i64) -> AppResult<Reservation> {
        let counter = Counter {
            key: format!("pw:{user_id}"),
            max: self.max_per_identifier,
        };
        match self.attempts.reserve(&[counter], now_ms()).await {
            Ok(taken) => Ok(Reservation { taken }),
            Err((_, secs)) => Err(AppError::rate_limited(format!(
                "too many wrong passwords; try again in {secs} s"
            ))),
        }
    }

    /// Gives an attempt back: it was not a failure (right password, or never evaluated).
    pub async fn release(&self, reservation: Reservation) {
        self.attempts.release(reservation.taken).await;
    }

    /// Forgets an identifier's failed logins (after a successful login).
    pub async fn clear_identifier(&self, identifier: &str) {
        self.attempts.clear(&Self::identifier_key(identifier)).await;
    }

    /// Counts a new anonymous session of `address`, or refuses it with `RATE_LIMITED`.
    pub async fn admit_anonymous(&self, address: Option<&str>) -> AppResult<()> {
        let (Some(addr), max @ 1..) = (address, self.anonymous_per_address) else {
            return Ok(());
        };
        let counter = Counter {
            key: format!("anon:{}", Self::address_key(addr)),
            max,
        };
        match self.anonymous.reserve(&[counter], now_ms()).await {
            Ok(_counted) => Ok(()),
            Err((_, secs)) => Err(AppError::rate_limited(format!(
                "too many new sessions from this address; try again in {secs} s"
            ))),
        }
    }
}
