//! Closed-loop HTTP/1.1 load generator on tokio + hyper 1 client connections.
//!
//! `N` keep-alive connections each send requests back to back (the next one as soon as the
//! previous response body is read). Every request is drawn from a weighted set of request
//! kinds; latencies go into one `hdrhistogram` per kind (microseconds), so a mixed workload
//! reports each kind separately. Each response is checked (status 200 and an expected
//! substring of the body, the exact answer, a custom check of the body, or exact response
//! headers): a benchmark of wrong answers is worthless.
//!
//! Timeline of one run: connect all connections, warm up (nothing recorded), measure (the
//! server's CPU time is sampled from `/proc/<pid>/stat` at both ends of the window), stop.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// What a response must look like to count as a success.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Status 200 only.
    Ok,
    /// Status 200 and the body contains this text.
    Contains(&'static str),
    /// Status 200 and exactly this JSON answer (see [`Exact`]).
    Exact(Arc<Exact>),
    /// Status 200 and the body passes this check.
    Check(CheckFn),
    /// Status 200 and each of these response headers has exactly this value (for `/auth`,
    /// which answers with headers and an empty body).
    Headers(Arc<[(HeaderName, HeaderValue)]>),
}

/// An exact JSON answer. A body is parsed and compared as JSON, ignoring object key order and
/// list order, so only a different answer fails. The first body that matches is remembered, and
/// later bodies with the same bytes pass with one comparison (the server's output is
/// deterministic, so after the warm-up this is every request and the check costs the load
/// generator almost nothing).
#[derive(Debug)]
pub struct Exact {
    value: serde_json::Value,
    confirmed: std::sync::OnceLock<Bytes>,
}

impl Exact {
    pub fn new(value: serde_json::Value) -> Arc<Exact> {
        Arc::new(Exact {
            value,
            confirmed: std::sync::OnceLock::new(),
        })
    }

    fn check(&self, body: &[u8]) -> Result<(), String> {
        if self.confirmed.get().is_some_and(|b| b.as_ref() == body) {
            return Ok(());
        }
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) if same_json(&v, &self.value) => {
                let _ = self.confirmed.set(Bytes::copy_from_slice(body));
                Ok(())
            }
            _ => Err(format!(
                "expected {} but got {}",
                truncate(&self.value.to_string(), 200),
                truncate(&String::from_utf8_lossy(body), 200)
            )),
        }
    }
}

/// A check of a response body: `Err` says what is wrong.
pub type BodyCheck = dyn Fn(&[u8]) -> Result<(), String> + Send + Sync;

/// A custom answer check on the body (for answers that cannot be predicted byte for byte).
#[derive(Clone)]
pub struct CheckFn(pub Arc<BodyCheck>);

impl std::fmt::Debug for CheckFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckFn")
    }
}

/// JSON equality ignoring the order of list items (object keys are unordered already).
pub fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    fn normal(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Array(items) => {
                let mut items: Vec<serde_json::Value> = items.iter().map(normal).collect();
                items.sort_by_cached_key(|i| i.to_string());
                serde_json::Value::Array(items)
            }
            serde_json::Value::Object(m) => {
                serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), normal(v))).collect())
            }
            other => other.clone(),
        }
    }
    a == b || normal(a) == normal(b)
}

/// One prepared request.
#[derive(Clone, Debug)]
pub struct ReqSpec {
    pub method: Method,
    pub path: &'static str,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub expect: Expect,
}

impl ReqSpec {
    /// `POST /graphql` with a JSON body and, optionally, a bearer token.
    pub fn graphql(body: impl Into<String>, bearer: Option<&str>, expect: Expect) -> Self {
        let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        if let Some(token) = bearer {
            headers.push((
                hyper::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid")),
            ));
        }
        ReqSpec {
            method: Method::POST,
            path: "/graphql",
            headers,
            body: Bytes::from(body.into()),
            expect,
        }
    }
}

/// A request kind: its name in the report, its share of the requests, and the prepared
/// requests it picks from uniformly at random.
pub struct Kind {
    pub name: &'static str,
    pub weight: u32,
    pub reqs: Vec<ReqSpec>,
}

pub struct Workload {
    pub kinds: Vec<Kind>,
}

impl Workload {
    pub fn single(name: &'static str, reqs: Vec<ReqSpec>) -> Self {
        Workload {
            kinds: vec![Kind {
                name,
                weight: 1,
                reqs,
            }],
        }
    }

    fn pick(&self, rng: &mut SmallRng, total: u32) -> (usize, &ReqSpec) {
        let mut r = rng.random_range(0..total);
        for (i, k) in self.kinds.iter().enumerate() {
            if r < k.weight {
                let req = &k.reqs[rng.random_range(0..k.reqs.len())];
                return (i, req);
            }
            r -= k.weight;
        }
        let last = self.kinds.len() - 1;
        (last, &self.kinds[last].reqs[0])
    }
}

/// Results of one kind over the measured window.
pub struct KindStats {
    pub name: &'static str,
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl KindStats {
    fn new(name: &'static str) -> Self {
        KindStats {
            name,
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, msg: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(msg);
        }
    }

    fn merge(&mut self, other: KindStats) {
        self.hist.add(&other.hist).expect("same histogram bounds");
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn p50_us(&self) -> u64 {
        self.hist.value_at_quantile(0.50)
    }

    pub fn p99_us(&self) -> u64 {
        self.hist.value_at_quantile(0.99)
    }
}

/// Results of one run.
pub struct LoadResult {
    pub window: Duration,
    pub kinds: Vec<KindStats>,
    /// Server CPU time (user + system) over the measured window, when a pid was given.
    pub server_cpu: Option<Duration>,
}

impl LoadResult {
    pub fn total(&self) -> u64 {
        self.kinds.iter().map(|k| k.count()).sum()
    }
    pub fn errors(&self) -> u64 {
        self.kinds.iter().map(|k| k.errors).sum()
    }
    pub fn first_error(&self) -> Option<String> {
        self.kinds
            .iter()
            .find_map(|k| k.first_error.clone().map(|e| format!("{}: {e}", k.name)))
    }
    pub fn rps(&self) -> f64 {
        self.total() as f64 / self.window.as_secs_f64()
    }
    pub fn kind_rps(&self, k: &KindStats) -> f64 {
        k.count() as f64 / self.window.as_secs_f64()
    }
    /// All kinds merged.
    pub fn merged(&self) -> KindStats {
        let mut all = KindStats::new("all");
        for k in &self.kinds {
            all.hist.add(&k.hist).expect("same histogram bounds");
            all.errors += k.errors;
        }
        all
    }
    /// Adds `other`, a later run of the same workload, to this one: the two windows count as
    /// one (requests, time and server CPU time summed, latencies merged).
    pub fn absorb(&mut self, other: LoadResult) {
        self.window += other.window;
        self.server_cpu = match (self.server_cpu, other.server_cpu) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        for (mine, theirs) in self.kinds.iter_mut().zip(other.kinds) {
            mine.merge(theirs);
        }
    }

    pub fn cpu_us_per_req(&self) -> Option<f64> {
        let n = self.total();
        self.server_cpu
            .filter(|_| n > 0)
            .map(|c| c.as_secs_f64() * 1e6 / n as f64)
    }
}

/// When the measured window ends.
pub enum Stop {
    After(Duration),
    /// When the receiver fires (or its sender is dropped).
    When(tokio::sync::oneshot::Receiver<()>),
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const DONE: u8 = 2;

/// One HTTP/1.1 keep-alive connection.
pub struct Conn {
    addr: SocketAddr,
    host: HeaderValue,
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {addr}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            addr,
            host: HeaderValue::from_str(&addr.to_string())?,
            sender,
        })
    }

    async fn reconnect(&mut self) -> Result<()> {
        *self = Conn::connect(self.addr).await?;
        Ok(())
    }

    /// Sends one request and reads the whole response.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes)> {
        self.sender.ready().await.context("connection closed")?;
        let mut req = Request::builder().method(method).uri(path);
        {
            let h = req.headers_mut().expect("valid builder");
            h.insert(HOST, self.host.clone());
            for (k, v) in headers {
                h.insert(k.clone(), v.clone());
            }
        }
        let req = req.body(Full::new(body))?;
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    /// `POST /graphql` and the body as text; errors on a status other than 200.
    pub async fn graphql(
        &mut self,
        body: &str,
        bearer: Option<&str>,
    ) -> Result<(hyper::HeaderMap, String)> {
        let spec = ReqSpec::graphql(body.to_string(), bearer, Expect::Ok);
        let (status, headers, body) = self
            .send(spec.method, spec.path, &spec.headers, spec.body)
            .await?;
        let text = String::from_utf8_lossy(&body).into_owned();
        if status != StatusCode::OK {
            bail!("HTTP {status}: {}", truncate(&text, 300));
        }
        Ok((headers, text))
    }
}

pub fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        let mut end = n;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether a response passes its request's check (`Err` says why not).
pub fn check(
    spec: &ReqSpec,
    status: StatusCode,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    if status != StatusCode::OK {
        return Err(format!(
            "HTTP {status}: {}",
            truncate(&String::from_utf8_lossy(body), 200)
        ));
    }
    match &spec.expect {
        Expect::Ok => Ok(()),
        Expect::Contains(s) if contains(body, s.as_bytes()) => Ok(()),
        Expect::Contains(s) => Err(format!(
            "expected {s:?} in {}",
            truncate(&String::from_utf8_lossy(body), 200)
        )),
        Expect::Exact(e) => e.check(body),
        Expect::Check(f) => (f.0)(body),
        Expect::Headers(want) => {
            for (name, value) in want.iter() {
                match headers.get(name) {
                    Some(v) if v == value => {}
                    got => {
                        return Err(truncate(
                            &format!(
                                "header {name}: expected {value:?}, got {got:?} (all: {headers:?})"
                            ),
                            400,
                        ))
                    }
                }
            }
            Ok(())
        }
    }
}

/// Fields `ns` (counted from 1, as in proc(5); 3 or more: those after the parenthesised name,
/// which may hold spaces) of `/proc/<pid>/stat`, read once.
pub fn stat_fields<T: std::str::FromStr>(
    pid: impl std::fmt::Display,
    ns: &[usize],
) -> Option<Vec<T>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    ns.iter()
        .map(|&n| fields.get(n.checked_sub(3)?)?.parse().ok())
        .collect()
}

/// Reads utime + stime of a process.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    // Fields 14 and 15 of stat(5).
    let [utime, stime]: [u64; 2] = stat_fields(pid, &[14, 15])?.try_into().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Duration::from_secs_f64((utime + stime) as f64 / tck))
}

/// Peak resident set size (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs a closed loop of `conns` connections against `addr`.
pub async fn run(
    addr: SocketAddr,
    workload: Arc<Workload>,
    conns: usize,
    warmup: Duration,
    stop: Stop,
    server_pid: Option<u32>,
) -> Result<LoadResult> {
    if workload.kinds.iter().any(|k| k.reqs.is_empty()) {
        bail!("a request kind has no prepared requests");
    }
    let total_weight: u32 = workload.kinds.iter().map(|k| k.weight).sum();
    if total_weight == 0 {
        bail!("all request kinds have weight 0");
    }
    let mut connections = Vec::with_capacity(conns);
    for _ in 0..conns {
        connections.push(Conn::connect(addr).await?);
    }
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let mut tasks = Vec::with_capacity(conns);
    for mut conn in connections {
        let phase = phase.clone();
        let workload = workload.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::from_rng(&mut rand::rng());
            let mut stats: Vec<KindStats> = workload
                .kinds
                .iter()
                .map(|k| KindStats::new(k.name))
                .collect();
            let mut reconnects = 0u32;
            loop {
                let p = phase.load(Ordering::Relaxed);
                if p == DONE {
                    break;
                }
                let (kind, spec) = workload.pick(&mut rng, total_weight);
                let t0 = Instant::now();
                let res = conn
                    .send(
                        spec.method.clone(),
                        spec.path,
                        &spec.headers,
                        spec.body.clone(),
                    )
                    .await;
                let elapsed = t0.elapsed();
                let measuring = p == MEASURE && phase.load(Ordering::Relaxed) == MEASURE;
                match res {
                    Ok((status, headers, body)) => match check(spec, status, &headers, &body) {
                        Ok(()) => {
                            if measuring {
                                let us = (elapsed.as_micros() as u64).max(1);
                                stats[kind].hist.saturating_record(us);
                            }
                        }
                        Err(e) => stats[kind].error(e),
                    },
                    Err(e) => {
                        stats[kind].error(format!("request failed: {e:#}"));
                        reconnects += 1;
                        if reconnects > 20 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        if conn.reconnect().await.is_err() {
                            continue;
                        }
                    }
                }
            }
            stats
        }));
    }

    tokio::time::sleep(warmup).await;
    let cpu0 = server_pid.and_then(process_cpu);
    let t0 = Instant::now();
    phase.store(MEASURE, Ordering::Relaxed);
    match stop {
        Stop::After(d) => tokio::time::sleep(d).await,
        Stop::When(rx) => {
            let _ = rx.await;
        }
    }
    phase.store(DONE, Ordering::Relaxed);
    let window = t0.elapsed();
    let cpu1 = server_pid.and_then(process_cpu);

    let mut kinds: Vec<KindStats> = workload
        .kinds
        .iter()
        .map(|k| KindStats::new(k.name))
        .collect();
    for t in tasks {
        let stats = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .map_err(|_| anyhow!("a connection did not finish within 60 s of the end"))??;
        for (acc, s) in kinds.iter_mut().zip(stats) {
            acc.merge(s);
        }
    }
    let server_cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Ok(LoadResult {
        window,
        kinds,
        server_cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exact(v: serde_json::Value) -> ReqSpec {
        ReqSpec::graphql("{}", None, Expect::Exact(Exact::new(v)))
    }

    #[test]
    fn an_exact_answer_passes_in_any_key_or_list_order() {
        let spec = exact(json!({"data": {"me": {"identifier": "a", "channels": [
            {"channelCode": "x", "permissions": ["READ_SESSION", "READ_ORDER"]},
            {"channelCode": "y", "permissions": ["READ_USER"]},
        ]}}}));
        let same = br#"{"data":{"me":{"channels":[{"channelCode":"x","permissions":["READ_SESSION","READ_ORDER"]},{"channelCode":"y","permissions":["READ_USER"]}],"identifier":"a"}}}"#;
        assert_eq!(
            check(&spec, StatusCode::OK, &hyper::HeaderMap::new(), same),
            Ok(())
        );
        let reordered = br#"{"data":{"me":{"identifier":"a","channels":[{"permissions":["READ_USER"],"channelCode":"y"},{"channelCode":"x","permissions":["READ_ORDER","READ_SESSION"]}]}}}"#;
        assert_eq!(
            check(&spec, StatusCode::OK, &hyper::HeaderMap::new(), reordered),
            Ok(())
        );
    }

    #[test]
    fn a_different_answer_fails_the_exact_check() {
        let spec = exact(
            json!({"data": {"activeSession": {"id": "7", "kind": "AUTHENTICATED",
            "user": {"id": "3", "identifier": "bench-user-000003"}}}}),
        );
        for wrong in [
            &br#"{"data":{"activeSession":{"id":"7","kind":"AUTHENTICATED","user":{"id":"3","identifier":"bench-user-000004"}}}}"#[..],
            br#"{"data":{"activeSession":{"id":"7","kind":"ANONYMOUS","user":null}}}"#,
            br#"{"data":{"activeSession":null}}"#,
            br#"{"data":null,"errors":[{"message":"boom"}]}"#,
            b"not json",
        ] {
            assert!(check(&spec, StatusCode::OK, &hyper::HeaderMap::new(), wrong).is_err());
        }
        let right = br#"{"data":{"activeSession":{"id":"7","kind":"AUTHENTICATED","user":{"id":"3","identifier":"bench-user-000003"}}}}"#;
        assert_eq!(
            check(&spec, StatusCode::OK, &hyper::HeaderMap::new(), right),
            Ok(())
        );
        assert!(check(
            &spec,
            StatusCode::INTERNAL_SERVER_ERROR,
            &hyper::HeaderMap::new(),
            right
        )
        .is_err());
        // Remembering the right bytes lets no wrong answer through afterwards.
        assert_eq!(
            check(&spec, StatusCode::OK, &hyper::HeaderMap::new(), right),
            Ok(())
        );
        assert!(check(
            &spec,
            StatusCode::OK,
            &hyper::HeaderMap::new(),
            br#"{"data":{"activeSession":null}}"#
        )
        .is_err());
    }
}
