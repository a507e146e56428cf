//! GraphQL subscriptions over WebSocket on `/graphql` (`GET` with `Upgrade: websocket`), in
//! both subprotocols: `graphql-transport-ws` and the older `graphql-ws`
//! (subscriptions-transport-ws), through async-graphql-axum's `GraphQLWebSocket`.
//!
//! The caller is identified at `connection_init`: the payload's `authorization`
//! (`"Bearer <token>"`) and `channel-token`, else the upgrade request's own token and
//! `channel-token` header, read as `/graphql` reads them (`TOKEN_METHOD`); a session cookie
//! counts only from this server's own origin or a `CORS_ALLOWED_ORIGINS` one (no cross-site
//! WebSocket hijacking). Without a live session holding `READ_SESSION` in the channel the
//! connection is refused: `4403` (graphql-transport-ws) or `connection_error` (graphql-ws),
//! then closed. Around the protocol this file enforces what async-graphql leaves open: a wait
//! of at most [`CONNECTION_INIT_TIMEOUT`] for `connection_init` (`4408`), `subscribe` before
//! it (`4401`), duplicate ids (`4409`), at most [`MAX_SUBSCRIPTIONS`] at once per connection,
//! messages of at most [`MAX_BODY_BYTES`], and a client that stops reading or answering pings
//! is dropped. At most [`MAX_PENDING_PER_ADDRESS`] connections of one client address may wait
//! for their `connection_init` at once; the next upgrade is refused with 429 (`RATE_LIMITED`).

use super::request::{self, TokenSource};
use super::transport::MAX_BODY_BYTES;
use super::AppState;
use crate::error::{AppError, ErrorCode};
use crate::graphql::{LazyClientInfo, LiveCredentials, RequestContext, TokenChanges};
use crate::permission::Permission;
use crate::token::TokenHash;
use async_graphql::http::{WebSocketProtocols, ALL_WEBSOCKET_PROTOCOLS};
use async_graphql::parser::types::OperationType;
use async_graphql::Data;
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{FromRequestParts, WebSocketUpgrade};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a new connection may take to send `connection_init`.
pub const CONNECTION_INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Subscriptions one connection may run at once.
pub const MAX_SUBSCRIPTIONS: usize = 16;
/// Connections of one client address that may wait for `connection_init` at once: a client
/// cannot hold thousands of unauthenticated sockets open for the whole init window.
pub const MAX_PENDING_PER_ADDRESS: usize = 16;
/// Longest wait for the client to take one message; a client that stops reading is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// WebSocket pings keep idle connections through proxies and show the client still reads.
const PING_EVERY: Duration = Duration::from_secs(30);
/// A connection that sent nothing (not even a pong) for this long is dropped.
const SILENCE_LIMIT: Duration = Duration::from_secs(90);
/// Messages the protocol produced, waiting for the socket.
const OUT_QUEUE: usize = 32;
/// Answers of this file's own (errors, closes) waiting for the socket; more is a flood.
const CONTROL_QUEUE: usize = 16;

/// Whether a request asks for a WebSocket (`Connection: upgrade`, `Upgrade: websocket`).
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// Connections not yet past `connection_init`, per client address.
#[derive(Default)]
pub struct PendingSockets(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place among its address's pending ones, given back when it is dropped
/// (once `connection_init` has been answered, or the connection ended without one).
pub(super) struct PendingSlot {
    app: AppState,
    ip: IpAddr,
}

impl PendingSockets {
    fn take(app: &AppState, ip: IpAddr) -> Option<PendingSlot> {
        let mut map = app
            .pending_sockets
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_PENDING_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(PendingSlot {
            app: app.clone(),
            ip,
        })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut map = self
            .app
            .pending_sockets
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// What the upgrade request itself presented, used when `connection_init` carries no token.
struct UpgradeCredentials {
    token: Option<request::PresentedToken>,
    channel_token: Option<String>,
}

/// Whether a browser page of `Origin` may use this server's session cookie on a WebSocket:
/// no `Origin` (not a browser), this server's own origin, or one of `CORS_ALLOWED_ORIGINS`.
fn cookie_origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a.trim() == origin) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    host.is_some() && origin_host == host
}

/// `GET /graphql` with an upgrade: checks the subprotocol and switches to WebSocket.
pub(super) async fn upgrade(app: AppState, peer: Option<SocketAddr>, mut parts: Parts) -> Response {
    // The same choice GraphQLProtocol makes: the first subprotocol offered that we speak.
    let offered = parts
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|list| {
            list.split(',')
                .find_map(|p| WebSocketProtocols::from_str(p.trim()).ok())
        });
    let (protocol, protocols) = match (
        GraphQLProtocol::from_request_parts(&mut parts, &()).await,
        offered,
    ) {
        (Ok(p), Some(kind)) => (p, kind),
        _ => {
            return super::transport::error_response(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                "a GraphQL WebSocket needs the subprotocol graphql-transport-ws or graphql-ws \
                 (Sec-WebSocket-Protocol)",
            )
        }
    };
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let headers = &parts.headers;
    let config = app.services.config();
    let token = request::presented_token(headers, config.token_method).filter(|p| {
        p.source != TokenSource::Cookie
            || cookie_origin_allowed(headers, &config.cors_allowed_origins)
    });
    let fallback = UpgradeCredentials {
        token,
        channel_token: request::channel_token(headers).map(str::to_string),
    };
    let client = request::client_info(headers, peer, config.trust_proxy);
    let slot = match client.ip {
        Some(ip) => match PendingSockets::take(&app, ip) {
            Some(slot) => Some(slot),
            None => {
                return super::transport::error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::RateLimited,
                    &format!(
                        "at most {MAX_PENDING_PER_ADDRESS} WebSocket connections of one address \
                         may wait for connection_init at once"
                    ),
                )
            }
        },
        None => None,
    };
    let client = LazyClientInfo::new(move || client.info());
    ws.max_message_size(MAX_BODY_BYTES)
        .max_frame_size(MAX_BODY_BYTES)
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| serve(app, socket, protocol, protocols, fallback, client, slot))
}

/// The connection's bookkeeping, shared by the input guard and the output loop.
#[derive(Default)]
struct Conn {
    init_seen: bool,
    /// Ids of the subscriptions running.
    active: HashSet<String>,
    last_heard: Option<Instant>,
    /// Why `connection_init` was refused, for the close frame.
    refused: Option<String>,
    /// The client sent more rule-breaking messages than the control queue holds.
    flooded: bool,
}

type Shared = Arc<Mutex<Conn>>;

fn lock(c: &Shared) -> std::sync::MutexGuard<'_, Conn> {
    c.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Just the routing part of a protocol message (what the server sends is only routed).
#[derive(serde::Deserialize)]
struct Routing {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
}

/// A client's protocol message, with the payload that says what it would run.
#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    payload: Option<serde_json::Value>,
}

impl Envelope {
    /// Whether a `subscribe`/`start` message would run a query or a mutation. Those run once,
    /// with the session as it was at `connection_init`: a socket must not keep acting for a
    /// session revoked, demoted or expired since (only a live subscription re-checks it), nor
    /// run mutations over a `GET` upgrade. They go to `POST /graphql`.
    fn runs_other_than_subscription(&self) -> bool {
        let Some(payload) = self.payload.as_ref() else {
            return false;
        };
        let Some(query) = payload.get("query").and_then(|q| q.as_str()) else {
            return false; // async-graphql refuses the message itself
        };
        let name = payload.get("operationName").and_then(|n| n.as_str());
        super::transport::operation_type(query, name)
            .is_some_and(|ty| ty != OperationType::Subscription)
    }
}

/// A protocol `error` message for operation `id`, with `code`.
fn error_message(
    protocol: WebSocketProtocols,
    id: &str,
    message: &str,
    code: ErrorCode,
) -> Message {
    let error = serde_json::json!({
        "message": message,
        "extensions": { "code": code.as_str() }
    });
    let payload = match protocol {
        WebSocketProtocols::GraphQLWS => serde_json::json!([error]),
        WebSocketProtocols::SubscriptionsTransportWS => error,
    };
    let answer = serde_json::json!({ "id": id, "type": "error", "payload": payload });
    Message::Text(answer.to_string().into())
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// What the input guard decided about one client message.
enum Verdict {
    Pass,
    /// Swallow it and answer this.
    Answer(Message),
}

/// Checks a client message against the connection's rules before async-graphql sees it.
fn judge(conn: &mut Conn, protocol: WebSocketProtocols, text: &str) -> Verdict {
    let Ok(msg) = serde_json::from_str::<Envelope>(text) else {
        return Verdict::Pass; // async-graphql closes on malformed messages itself
    };
    match msg.kind.as_str() {
        "connection_init" => conn.init_seen = true,
        "subscribe" | "start" => {
            let id = msg.id.clone().unwrap_or_default();
            if !conn.init_seen {
                return Verdict::Answer(close(4401, "Unauthorized"));
            }
            if conn.active.contains(&id) {
                let reason = format!("Subscriber for {} already exists", clip(&id));
                return Verdict::Answer(close(4409, &reason));
            }
            if msg.runs_other_than_subscription() {
                return Verdict::Answer(error_message(
                    protocol,
                    &id,
                    "only subscriptions run over the WebSocket; send queries and mutations \
                     with POST /graphql",
                    ErrorCode::BadUserInput,
                ));
            }
            if conn.active.len() >= MAX_SUBSCRIPTIONS {
                let message = format!(
                    "at most {MAX_SUBSCRIPTIONS} subscriptions may run at once on one connection"
                );
                return Verdict::Answer(error_message(
                    protocol,
                    &id,
                    &message,
                    ErrorCode::RateLimited,
                ));
            }
            conn.active.insert(id);
        }
        "complete" | "stop" => {
            if let Some(id) = msg.id {
                conn.active.remove(&id);
            }
        }
        _ => {}
    }
    Verdict::Pass
}

/// At most 64 characters of a client's id, for a close reason (at most 123 bytes).
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Notes what the server tells the client: a finished subscription frees its slot.
fn observe_outgoing(conn: &Shared, msg: &Message) {
    if let Message::Text(text) = msg {
        if let Ok(env) = serde_json::from_str::<Routing>(text.as_str()) {
            if matches!(env.kind.as_str(), "complete" | "error") {
                if let Some(id) = env.id {
                    lock(conn).active.remove(&id);
                }
            }
        }
    }
}

/// Identifies the caller of a connection at `connection_init`; a refusal is recorded for the
/// close frame and answered with its message.
async fn connection_init(
    app: AppState,
    payload: serde_json::Value,
    fallback: UpgradeCredentials,
    client: LazyClientInfo,
    conn: Shared,
    slot: Option<PendingSlot>,
) -> async_graphql::Result<Data> {
    let outcome = authenticate(&app, &payload, fallback, client).await;
    // Answered: this connection no longer counts as waiting for its init.
    drop(slot);
    match outcome {
        Ok((ctx, creds)) => {
            let mut data = Data::default();
            data.insert(ctx);
            data.insert(creds);
            Ok(data)
        }
        Err(err) => {
            let message = format!("{}: {}", err.code().as_str(), err.client_message());
            err.log();
            lock(&conn).refused = Some(message.clone());
            Err(async_graphql::Error::new(message))
        }
    }
}

/// A string field of the `connection_init` payload, its key matched without regard to case.
fn payload_field<'a>(payload: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    payload
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

async fn authenticate(
    app: &AppState,
    payload: &serde_json::Value,
    fallback: UpgradeCredentials,
    client: LazyClientInfo,
) -> Result<(RequestContext, LiveCredentials), AppError> {
    let svc = &app.services;
    let bearer = svc.config().token_method.bearer;
    let from_payload = match payload_field(payload, "authorization").filter(|_| bearer) {
        Some(value) => {
            let raw = value
                .as_str()
                .and_then(|v| v.trim().split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim())
                .ok_or_else(|| {
                    AppError::bad_input(
                        "connection_init: authorization must be a string \"Bearer <token>\"",
                    )
                })?;
            Some(crate::token::parse(raw))
        }
        None => None,
    };
    let token: Option<TokenHash> = match from_payload {
        Some(hash) => hash,
        None => fallback.token.and_then(|p| p.hash),
    };
    let channel_token = match payload_field(payload, "channel-token") {
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| {
                    AppError::bad_input("connection_init: channel-token must be a string")
                })?
                .to_string(),
        ),
        None => fallback.channel_token,
    };
    let Some(token) = token else {
        return Err(AppError::unauthenticated(
            "a session token is required: {\"authorization\": \"Bearer <token>\"} in the \
             connection_init payload, or the session cookie",
        ));
    };
    let identity = svc
        .sessions
        .identify(Some(&token), channel_token.as_deref())
        .await?;
    let Some(session) = identity.session.clone().filter(|s| s.user.is_some()) else {
        return Err(AppError::unauthenticated(
            "a live session of a logged-in user is required",
        ));
    };
    if !identity.permissions().contains(Permission::ReadSession) {
        return Err(AppError::forbidden(
            "the READ_SESSION permission is required in this channel",
        ));
    }
    let ctx = RequestContext::new(
        Some(session),
        identity.channel,
        client,
        None,
        TokenChanges::default(),
    );
    Ok((
        ctx,
        LiveCredentials {
            token,
            channel_token,
        },
    ))
}

/// Runs one connection: async-graphql speaks the protocol; this loop feeds it the guarded
/// input, writes its output (each write within [`SEND_TIMEOUT`]), and closes on the rules.
async fn serve(
    app: AppState,
    socket: WebSocket,
    protocol: GraphQLProtocol,
    protocols: WebSocketProtocols,
    fallback: UpgradeCredentials,
    client: LazyClientInfo,
    slot: Option<PendingSlot>,
) {
    let conn: Shared = Arc::new(Mutex::new(Conn {
        last_heard: Some(Instant::now()),
        ..Conn::default()
    }));
    let (mut ws_tx, ws_rx) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(OUT_QUEUE);
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Message>(CONTROL_QUEUE);

    let guard_conn = conn.clone();
    let input = ws_rx.filter_map(move |item| {
        let pass = match &item {
            Ok(msg) => {
                let mut c = lock(&guard_conn);
                c.last_heard = Some(Instant::now());
                // async-graphql reads a binary frame as a protocol message too: it passes the
                // same rules (one that is not UTF-8 JSON cannot be a message; it closes).
                let verdict = match msg {
                    Message::Text(text) => judge(&mut c, protocols, text.as_str()),
                    Message::Binary(bytes) => match std::str::from_utf8(bytes) {
                        Ok(text) => judge(&mut c, protocols, text),
                        Err(_) => Verdict::Answer(close(4400, "messages are UTF-8 JSON")),
                    },
                    _ => Verdict::Pass,
                };
                match verdict {
                    Verdict::Pass => true,
                    Verdict::Answer(answer) => {
                        if ctl_tx.try_send(answer).is_err() {
                            c.flooded = true;
                        }
                        false
                    }
                }
            }
            Err(_) => true,
        };
        std::future::ready(pass.then_some(item))
    });
    let sink = futures_util::sink::unfold(out_tx, |tx, msg: Message| async move {
        tx.send(msg).await.map_err(|_| SocketGone)?;
        Ok::<_, SocketGone>(tx)
    });
    let init_conn = conn.clone();
    let init_app = app.clone();
    let graphql = GraphQLWebSocket::new_with_pair(sink, input, app.schema.clone(), protocol)
        .on_connection_init(move |payload| {
            connection_init(init_app, payload, fallback, client, init_conn, slot)
        })
        .serve();
    tokio::pin!(graphql);

    let init_deadline = tokio::time::sleep(CONNECTION_INIT_TIMEOUT);
    tokio::pin!(init_deadline);
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut graphql_done = false;
    let mut closed = false;
    loop {
        let next = tokio::select! {
            biased;
            Some(answer) = ctl_rx.recv() => answer,
            out = out_rx.recv() => match out {
                Some(msg) => {
                    observe_outgoing(&conn, &msg);
                    with_error_codes(refusal_close(&conn, protocols, msg))
                }
                // The protocol ended (the client left, or the connection was refused).
                None => break,
            },
            () = &mut graphql, if !graphql_done => {
                graphql_done = true;
                continue;
            }
            () = &mut init_deadline, if !lock(&conn).init_seen => {
                close(4408, "Connection initialisation timeout")
            }
            _ = ping.tick() => {
                let silent = lock(&conn).last_heard.is_none_or(|t| t.elapsed() > SILENCE_LIMIT);
                if silent {
                    close(1001, "no answer to pings")
                } else {
                    Message::Ping(Default::default())
                }
            }
        };
        let is_close = matches!(next, Message::Close(_));
        match tokio::time::timeout(SEND_TIMEOUT, ws_tx.send(next)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return, // the client is gone
            Err(_) => {
                tracing::info!("dropped a WebSocket client that stopped reading");
                app.services
                    .metrics()
                    .event_subscriber_dropped("stopped_reading");
                return;
            }
        }
        if is_close {
            closed = true;
            break;
        }
        if lock(&conn).flooded {
            let _ = tokio::time::timeout(
                SEND_TIMEOUT,
                ws_tx.send(close(
                    1008,
                    "too many messages breaking the protocol's rules",
                )),
            )
            .await;
            return;
        }
    }
    if !closed {
        // graphql-ws (legacy) answers a refusal with `connection_error` and stops: close with
        // the refusal's code too.
        let refused = lock(&conn).refused.clone();
        let last = match refused {
            Some(reason) => close(4403, &clip_reason(&reason)),
            None => close(1000, ""),
        };
        let _ = tokio::time::timeout(SEND_TIMEOUT, ws_tx.send(last)).await;
    }
}

/// Gives every error the server sends a code, as `/graphql` does: errors raised before
/// resolvers run (syntax, validation, variables) have none of their own and are all about the
/// client's input.
fn with_error_codes(msg: Message) -> Message {
    let Message::Text(text) = &msg else {
        return msg;
    };
    if !text.as_str().contains("error") {
        return msg;
    }
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
        return msg;
    };
    let errors = match v["type"].as_str() {
        Some("error") => v.get_mut("payload"),
        Some("next" | "data") => v.get_mut("payload").and_then(|p| p.get_mut("errors")),
        _ => None,
    };
    let Some(errors) = errors else {
        return msg;
    };
    let list: Vec<&mut serde_json::Value> = match errors {
        serde_json::Value::Array(items) => items.iter_mut().collect(),
        one @ serde_json::Value::Object(_) => vec![one],
        _ => vec![],
    };
    let mut changed = false;
    for e in list {
        let Some(obj) = e.as_object_mut() else {
            continue;
        };
        let ext = obj
            .entry("extensions")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(ext) = ext.as_object_mut() {
            if !ext.contains_key("code") {
                ext.insert("code".into(), ErrorCode::BadUserInput.as_str().into());
                changed = true;
            }
        }
    }
    if changed {
        Message::Text(v.to_string().into())
    } else {
        msg
    }
}

/// async-graphql closes a refused `graphql-transport-ws` connection with 1002; the protocol's
/// code for a refusal is 4403 Forbidden.
fn refusal_close(conn: &Shared, protocol: WebSocketProtocols, msg: Message) -> Message {
    if protocol == WebSocketProtocols::GraphQLWS {
        if let Message::Close(Some(frame)) = &msg {
            if frame.code == 1002 {
                if let Some(reason) = lock(conn).refused.clone() {
                    return close(4403, &clip_reason(&reason));
                }
            }
        }
    }
    msg
}

/// A close reason fits in 123 bytes.
fn clip_reason(reason: &str) -> String {
    let mut out = String::new();
    for ch in reason.chars() {
        if out.len() + ch.len_utf8() > 123 {
            break;
        }
        out.push(ch);
    }
    out
}

/// The socket's writer is gone.
#[derive(Debug)]
struct SocketGone;
