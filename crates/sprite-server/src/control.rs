//! `WS /v1/sprites/{name}/control`: the connection the official SDKs try first
//! (sprites-py `control_mode=True`, the JS control pool, Go on every `Sprite()`).
//!
//! One socket runs one operation at a time and is reused for the next; SDKs open more
//! sockets for concurrency. The wire, as the SDKs speak it (docs/sdk-compat.md):
//!
//! - exec: the client sends the text frame `control:{"type":"op.start","op":"exec",
//!   "args":{...}}` (args as exec query values: `cmd`, `env`, `dir`, `tty`, `rows`,
//!   `cols`, `stdin`, or `id` to attach). Then the frames of plain exec: binary
//!   `[stream id, payload]` without a TTY (stdin `[0]`+data, EOF `[4]`; the Go SDK
//!   writes raw stdin), raw bytes with one, JSON `resize`/`signal`. The server sends
//!   `session_info`, the output, the exit (`[3, code]`, or the text `exit` with a
//!   TTY), then `control:{"type":"op.complete","op":"exec","args":{"exitCode":N}}`.
//! - Go's fs operations: un-prefixed `{"type":"op.start","op":"fs.list","args":
//!   "<query>"}`, answered by the JSON of the matching `fs/*` route (fs.read adds a
//!   binary message with the data; fs.write reads one), then `{"type":"op.complete"}`.
//! - Go's TCP proxy: `{"type":"start","operation":"proxy","params":{host,port}}`,
//!   answered `{"status":"connected",...}`, then raw bytes as binary messages.
//! - `{"type":"release"}` ends whatever runs (a process is left as a disconnect
//!   leaves it); an `op.start` while an exec runs does the same first.
//!
//! An operation keeps the sprite awake like plain exec does; an idle socket does not.

use crate::auth::{Org, SpritePath};
use crate::exec::{exit_message, lost_close, session_message, spawn_failure, AbortOnDrop, Sent};
use crate::{ApiError, AppState, PING_INTERVAL};
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use sprite_api::exec::{ClientMessage, ExecParams, Frame, Signal};
use sprite_core::activity::Reason;
use sprite_core::ids::SpriteKey;
use sprite_core::manager::RunAs;
use sprite_core::CoreError;
use sprite_sandbox::client::{Attachment, SessionWriter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tower::ServiceExt;

/// The text prefix of exec envelopes.
const PREFIX: &str = "control:";
/// Largest message a client may send (Go's fs.write sends a whole file in one).
const MAX_MESSAGE: usize = 8 * 1024 * 1024;
/// How long an idle socket may stay silent (clients ping; pooled sockets wait for
/// their next operation).
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a socket running an operation may stay silent.
const BUSY_TIMEOUT: Duration = crate::IDLE_READ_TIMEOUT;
/// Largest file Go's fs.read may ask for over the socket (larger: `GET fs/read`).
const MAX_READ: usize = 8 * 1024 * 1024;
/// How long a proxy connect waits for a sleeping sprite and its port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn control(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    headers: HeaderMap,
    upgrade: crate::exec::WsUpgrade,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|_| {
        ApiError::invalid(
            "the control connection needs a WebSocket upgrade (GET with Upgrade: websocket)",
        )
    })?;
    state.manager.check_exists(&key)?;
    // The Go SDK writes stdin without the stream-id byte.
    let raw_stdin = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|agent| agent.starts_with("sprites-go"));
    Ok(upgrade
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let conn = Conn {
                state,
                key,
                raw_stdin,
            };
            conn.serve(socket).await;
        }))
}

struct Conn {
    state: AppState,
    key: SpriteKey,
    raw_stdin: bool,
}

type Out = mpsc::Sender<Message>;

/// What a socket is running.
enum Active {
    Exec(ExecOp),
    Proxy(ProxyOp),
}

struct ExecOp {
    id: u64,
    input: mpsc::Sender<Input>,
    tty: bool,
    stdin: bool,
    /// Set once the exit went out: the next `op.start` is a new operation.
    finished: Arc<AtomicBool>,
    _output: AbortOnDrop,
    _input: AbortOnDrop,
}

struct ProxyOp {
    id: u64,
    tcp: tokio::net::tcp::OwnedWriteHalf,
    _downstream: AbortOnDrop,
    _awake: sprite_core::proxy::ConnectionLease,
}

enum Input {
    Stdin(Vec<u8>),
    Eof,
    Resize(u16, u16),
    Signal(i32),
}

/// What a text frame asks for.
enum Request {
    Exec(serde_json::Value),
    Fs(String, serde_json::Value),
    Proxy(serde_json::Value),
    Release,
    Resize(u16, u16),
    Signal(i32),
    Ignore,
}

fn parse_text(text: &str) -> Request {
    let (prefixed, json) = match text.strip_prefix(PREFIX) {
        Some(json) => (true, json),
        None => (false, text),
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return Request::Ignore;
    };
    let args = value
        .get("args")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    match (value["type"].as_str(), value["op"].as_str()) {
        (Some("op.start"), Some("exec")) => Request::Exec(args),
        (Some("op.start"), Some(op)) if op.starts_with("fs.") && !prefixed => {
            Request::Fs(op.to_string(), args)
        }
        (Some("start"), _) if value["operation"] == "proxy" => {
            Request::Proxy(value.get("params").cloned().unwrap_or_default())
        }
        (Some("release"), _) => Request::Release,
        _ => match serde_json::from_value::<ClientMessage>(value) {
            Ok(ClientMessage::Resize { cols, rows }) if cols > 0 && rows > 0 => {
                Request::Resize(cols, rows)
            }
            Ok(ClientMessage::Signal { signal }) => match Signal::parse(&signal) {
                Some(signal) => Request::Signal(signal.number()),
                None => Request::Ignore,
            },
            _ => Request::Ignore,
        },
    }
}

/// Operation arguments as query pairs: an object of strings or string arrays (what
/// the SDKs send; numbers and booleans are taken as written), or a query string.
fn arg_pairs(args: &serde_json::Value) -> Result<Vec<(String, String)>, String> {
    let scalar = |value: &serde_json::Value| match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match args {
        serde_json::Value::Null => Ok(Vec::new()),
        serde_json::Value::String(query) => Ok(form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()),
        serde_json::Value::Object(map) => {
            let mut pairs = Vec::new();
            for (key, value) in map {
                match value {
                    serde_json::Value::Array(items) => {
                        for item in items {
                            let item = scalar(item).ok_or_else(|| {
                                format!("args.{key} holds a value that is not a string")
                            })?;
                            pairs.push((key.clone(), item));
                        }
                    }
                    serde_json::Value::Null => {}
                    other => pairs.push((
                        key.clone(),
                        scalar(other)
                            .ok_or_else(|| format!("args.{key} is not a string or a list"))?,
                    )),
                }
            }
            Ok(pairs)
        }
        _ => Err("args must be an object of strings (exec query values)".into()),
    }
}

fn envelope(kind: &str, op: &str, args: serde_json::Value) -> Message {
    let body = serde_json::json!({ "type": kind, "op": op, "args": args });
    Message::Text(format!("{PREFIX}{body}").into())
}

fn complete(code: i32) -> Message {
    envelope(
        "op.complete",
        "exec",
        serde_json::json!({ "exitCode": code }),
    )
}

impl Conn {
    async fn serve(self, socket: WebSocket) {
        let (mut sink, mut stream) = socket.split();
        // One writer owns the sink: operations queue their frames to it.
        let (out, mut queued) = mpsc::channel::<Message>(64);
        let _writer = AbortOnDrop(tokio::spawn(async move {
            let start = tokio::time::Instant::now() + PING_INTERVAL;
            let mut ping = tokio::time::interval_at(start, PING_INTERVAL);
            loop {
                let message = tokio::select! {
                    message = queued.recv() => match message {
                        Some(message) => message,
                        None => break,
                    },
                    _ = ping.tick() => Message::Ping(Vec::new().into()),
                };
                let close = matches!(message, Message::Close(_));
                if sink.send(message).await.is_err() || close {
                    break;
                }
            }
            let _ = sink.close().await;
        }));
        // Operations report their end here by id; one that was let go meanwhile (a
        // release, a new op.start) is not the active one and its end is ignored.
        let (done_tx, mut done_rx) = mpsc::channel::<u64>(4);
        let mut next_id = 0u64;
        let mut active: Option<Active> = None;
        loop {
            let timeout = if active.is_some() {
                BUSY_TIMEOUT
            } else {
                IDLE_TIMEOUT
            };
            let message = tokio::select! {
                message = tokio::time::timeout(timeout, stream.next()) => message,
                Some(id) = done_rx.recv() => {
                    match &active {
                        Some(Active::Exec(op)) if op.id == id => active = None,
                        Some(Active::Proxy(op)) if op.id == id => {
                            active = None;
                            // The target's end is the only end the Go SDK understands.
                            let close = CloseFrame {
                                code: 1000,
                                reason: "the target closed the connection".into(),
                            };
                            let _ = out.send(Message::Close(Some(close))).await;
                        }
                        _ => {}
                    }
                    continue;
                }
            };
            let message = match message {
                Ok(Some(Ok(message))) => message,
                Ok(_) => return,
                Err(_) => {
                    tracing::info!(sprite = %self.key, "control socket silent for {timeout:?}; closing");
                    return;
                }
            };
            if let Some(Active::Exec(op)) = &active {
                if op.finished.load(Ordering::Acquire) {
                    active = None;
                }
            }
            match message {
                Message::Text(text) => match parse_text(&text) {
                    Request::Exec(args) => {
                        drop(active.take()); // a running exec is let go first
                        next_id += 1;
                        active = self.start_exec(&args, &out, &done_tx, next_id).await;
                    }
                    Request::Fs(op, args) => {
                        active = None;
                        if !self.fs_op(&op, &args, &out, &mut stream).await {
                            return;
                        }
                    }
                    Request::Proxy(params) => {
                        drop(active.take());
                        next_id += 1;
                        active = self.start_proxy(&params, &out, &done_tx, next_id).await;
                    }
                    Request::Release => active = None,
                    Request::Resize(cols, rows) => {
                        exec_input(&active, Input::Resize(cols, rows)).await
                    }
                    Request::Signal(signal) => exec_input(&active, Input::Signal(signal)).await,
                    Request::Ignore => {}
                },
                Message::Binary(data) => match &mut active {
                    Some(Active::Exec(op)) => {
                        if let Some(input) = self.exec_binary(op, data.to_vec()) {
                            let _ = op.input.send(input).await;
                        }
                    }
                    Some(Active::Proxy(op)) => {
                        let written = if data.is_empty() {
                            op.tcp.shutdown().await
                        } else {
                            op.tcp.write_all(&data).await
                        };
                        if written.is_err() {
                            active = None;
                        }
                    }
                    None => {}
                },
                Message::Close(_) => return,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    }

    /// What a binary frame means to a running exec.
    fn exec_binary(&self, op: &ExecOp, data: Vec<u8>) -> Option<Input> {
        if op.tty {
            return Some(Input::Stdin(data));
        }
        match data.first() {
            // The JS SDK sends resize and signal as binary JSON; `{` is no stream id.
            Some(b'{') if !self.raw_stdin => match serde_json::from_slice(&data) {
                Ok(ClientMessage::Resize { cols, rows }) if cols > 0 && rows > 0 => {
                    Some(Input::Resize(cols, rows))
                }
                Ok(ClientMessage::Signal { signal }) => {
                    Signal::parse(&signal).map(|s| Input::Signal(s.number()))
                }
                _ => None,
            },
            _ if !op.stdin => None,
            Some(4) if data.len() == 1 => Some(Input::Eof),
            _ if self.raw_stdin => Some(Input::Stdin(data)),
            Some(_) => match Frame::decode(&data) {
                Ok(Frame::Stdin(payload)) => Some(Input::Stdin(payload)),
                Ok(Frame::StdinEof) => Some(Input::Eof),
                _ => None,
            },
            None => None,
        }
    }

    /// Starts an exec (or Go's attach); a command that cannot start is answered as
    /// plain exec answers it (stderr, exit 126/127) and completes at once.
    async fn start_exec(
        &self,
        args: &serde_json::Value,
        out: &Out,
        done: &mpsc::Sender<u64>,
        id: u64,
    ) -> Option<Active> {
        let fail = |message: String| async move {
            let error = serde_json::json!({ "error": message });
            let _ = out.send(envelope("op.error", "exec", error)).await;
        };
        let pairs = match arg_pairs(args) {
            Ok(pairs) => pairs,
            Err(message) => {
                fail(message).await;
                return None;
            }
        };
        let attach = pairs
            .iter()
            .find(|(k, v)| k == "id" && !v.is_empty())
            .map(|(_, v)| v.clone());
        let raw_len: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        let params = match ExecParams::from_query(&pairs, raw_len) {
            Ok(params) => params,
            Err(error) => {
                fail(error.to_string()).await;
                return None;
            }
        };
        let run_as = RunAs(
            pairs
                .iter()
                .rev()
                .find(|(k, v)| k == "user" && !v.is_empty())
                .map(|(_, v)| v.clone()),
        );
        let key = &self.key;
        let awake = match self.state.manager.keep_awake(key, Reason::Session) {
            Ok(awake) => awake,
            Err(error) => {
                fail(sprite_api::error_chain(&error)).await;
                return None;
            }
        };
        let started = match &attach {
            Some(session) => self.state.manager.attach(key, session).await,
            None => self.state.manager.spawn(key, &params, &run_as).await,
        };
        let attachment = match started {
            Ok(attachment) => attachment,
            Err(CoreError::SpawnFailed(message)) => {
                let (code, [output, exit]) = spawn_failure(&message, params.tty);
                for message in [output, exit, complete(code)] {
                    let _ = out.send(message).await;
                }
                return None;
            }
            Err(error) => {
                fail(sprite_api::error_chain(&error)).await;
                return None;
            }
        };
        let info = crate::exec::session_info(&attachment, attach.is_none());
        let Attachment {
            tty,
            reader,
            writer,
            ..
        } = attachment;
        let finished = Arc::new(AtomicBool::new(false));
        let (input, inputs) = mpsc::channel(16);
        let output = {
            let out = out.clone();
            let finished = finished.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let _awake = awake;
                let _ = out.send(Message::Text(info.to_json().into())).await;
                forward_output(reader, tty, &out, &finished).await;
                let _ = done.send(id).await;
            })
        };
        Some(Active::Exec(ExecOp {
            id,
            input,
            tty,
            stdin: params.stdin || tty || attach.is_some(),
            finished,
            _output: AbortOnDrop(output),
            _input: AbortOnDrop(tokio::spawn(forward_input(writer, inputs))),
        }))
    }

    /// Go's TCP proxy over the socket.
    async fn start_proxy(
        &self,
        params: &serde_json::Value,
        out: &Out,
        done: &mpsc::Sender<u64>,
        id: u64,
    ) -> Option<Active> {
        let refuse = |error: String| async move {
            let body = serde_json::json!({ "status": "error", "error": error }).to_string();
            let _ = out.send(Message::Text(body.into())).await;
        };
        let host = params["host"].as_str().unwrap_or("localhost").to_string();
        let Some(port) = params["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
            refuse("params.port must be a TCP port number".into()).await;
            return None;
        };
        let ip = match crate::tcp::target_ip(&host) {
            Ok(ip) => ip,
            Err(message) => {
                refuse(message).await;
                return None;
            }
        };
        let connected = self
            .state
            .manager
            .connect_tcp(&self.key, ip, port, CONNECT_TIMEOUT)
            .await;
        let (stream, awake) = match connected {
            Ok(connected) => connected,
            Err(error) => {
                refuse(sprite_api::error_chain(&error)).await;
                return None;
            }
        };
        let body = serde_json::json!({ "status": "connected", "target": format!("{host}:{port}") });
        let _ = out.send(Message::Text(body.to_string().into())).await;
        let (mut tcp_in, tcp_out) = stream.into_split();
        let (out, done) = (out.clone(), done.clone());
        let downstream = tokio::spawn(async move {
            let mut buffer = vec![0u8; crate::tcp::FRAME_BYTES];
            while let Some(frame) = crate::tcp::next_frame(&mut tcp_in, &mut buffer).await {
                if out.send(frame).await.is_err() {
                    return;
                }
            }
            let _ = done.send(id).await;
        });
        Some(Active::Proxy(ProxyOp {
            id,
            tcp: tcp_out,
            _downstream: AbortOnDrop(downstream),
            _awake: awake,
        }))
    }

    /// One of Go's fs operations, answered by the matching `fs/*` route. `false` when
    /// the socket ended while it waited for fs.write's data.
    async fn fs_op(
        &self,
        op: &str,
        args: &serde_json::Value,
        out: &Out,
        stream: &mut futures_util::stream::SplitStream<WebSocket>,
    ) -> bool {
        let done = Message::Text(
            serde_json::json!({ "type": "op.complete" })
                .to_string()
                .into(),
        );
        let error = |message: String, code: &str| {
            let body = serde_json::json!({ "error": message, "code": code });
            Message::Text(body.to_string().into())
        };
        let pairs = match arg_pairs(args) {
            Ok(pairs) => pairs,
            Err(message) => {
                let _ = out.send(error(message, "EINVAL")).await;
                return true;
            }
        };
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&pairs)
            .finish();
        let get = |key: &str| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let flag = |key: &str| get(key) == Some("true");
        let base = format!("/v1/sprites/{}/fs", self.key.name);
        // Each op as its HTTP route: method, path and query, JSON body.
        let (method, uri, body) = match op {
            "fs.read" => ("GET", format!("{base}/read?{query}"), Body::empty()),
            "fs.list" => ("GET", format!("{base}/list?{query}"), Body::empty()),
            "fs.delete" => ("DELETE", format!("{base}/delete?{query}"), Body::empty()),
            "fs.write" => {
                // The file's contents come next, as one binary message.
                let data = loop {
                    match stream.next().await {
                        Some(Ok(Message::Binary(data))) => break data,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Text(_))) => {
                            let _ = out
                                .send(error(
                                    "fs.write expects the file's contents as a binary message"
                                        .into(),
                                    "EINVAL",
                                ))
                                .await;
                            return true;
                        }
                        _ => return false,
                    }
                };
                ("PUT", format!("{base}/write?{query}"), Body::from(data))
            }
            "fs.rename" => {
                let body = serde_json::json!({
                    "source": get("source"), "dest": get("dest"), "workingDir": get("workingDir"),
                });
                (
                    "POST",
                    format!("{base}/rename"),
                    Body::from(body.to_string()),
                )
            }
            "fs.copy" => {
                let body = serde_json::json!({
                    "source": get("source"), "dest": get("dest"), "workingDir": get("workingDir"),
                    "recursive": flag("recursive"), "preserveAttrs": flag("preserveAttrs"),
                });
                ("POST", format!("{base}/copy"), Body::from(body.to_string()))
            }
            "fs.chmod" => {
                let body = serde_json::json!({
                    "path": get("path"), "workingDir": get("workingDir"), "mode": get("mode"),
                    "recursive": flag("recursive"),
                });
                (
                    "POST",
                    format!("{base}/chmod"),
                    Body::from(body.to_string()),
                )
            }
            "fs.chown" => {
                let body = serde_json::json!({
                    "path": get("path"), "workingDir": get("workingDir"),
                    "uid": get("uid"), "gid": get("gid"), "recursive": flag("recursive"),
                });
                (
                    "POST",
                    format!("{base}/chown"),
                    Body::from(body.to_string()),
                )
            }
            other => {
                let message = format!("{other} is not an operation of this server; use fs.read, fs.write, fs.list, fs.delete, fs.rename, fs.copy, fs.chmod or fs.chown");
                let _ = out.send(error(message, "ENOTSUP")).await;
                return true;
            }
        };
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .extension(Org(self.key.org.clone()))
            .body(body);
        let response = match request {
            // Through the API's own fs routes (built here: fs ops over this socket are
            // rare, and most control sockets never make one).
            Ok(request) => {
                let routes = crate::api_routes().with_state(self.state.clone());
                routes.oneshot(request).await
            }
            Err(e) => {
                let _ = out
                    .send(error(
                        format!("the arguments do not make a request: {e}"),
                        "EINVAL",
                    ))
                    .await;
                return true;
            }
        };
        let Ok(response) = response;
        let status = response.status();
        let bytes = match http_body_util::BodyExt::collect(http_body_util::Limited::new(
            response.into_body(),
            MAX_READ,
        ))
        .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                let message =
                    format!("the file is larger than {MAX_READ} bytes; read it with GET fs/read");
                let _ = out.send(error(message, "EFBIG")).await;
                return true;
            }
        };
        if !status.is_success() {
            // Our error body already is {error, message, code, path}.
            let _ = out
                .send(Message::Text(
                    String::from_utf8_lossy(&bytes).into_owned().into(),
                ))
                .await;
            return true;
        }
        if op == "fs.read" {
            let info = serde_json::json!({ "path": get("path"), "size": bytes.len() });
            let _ = out.send(Message::Text(info.to_string().into())).await;
            let _ = out.send(Message::Binary(bytes)).await;
        } else {
            let _ = out
                .send(Message::Text(
                    String::from_utf8_lossy(&bytes).into_owned().into(),
                ))
                .await;
        }
        let _ = out.send(done).await;
        true
    }
}

async fn exec_input(active: &Option<Active>, input: Input) {
    if let Some(Active::Exec(op)) = active {
        let _ = op.input.send(input).await;
    }
}

/// Applies a running exec's input, in order, without holding up its output.
async fn forward_input(mut writer: SessionWriter, mut inputs: mpsc::Receiver<Input>) {
    while let Some(input) = inputs.recv().await {
        let result = match input {
            Input::Stdin(data) => writer.stdin(data).await,
            Input::Eof => writer.stdin_eof().await,
            Input::Resize(cols, rows) => writer.resize(cols, rows).await,
            Input::Signal(signal) => writer.signal(signal).await,
        };
        if result.is_err() {
            // sprite-init closed its side (the process exited): drop further input,
            // but keep the writer until the operation ends (closing it detaches).
            while inputs.recv().await.is_some() {}
            return;
        }
    }
}

/// Sends a running exec's output, then its exit and `op.complete`.
async fn forward_output(
    mut reader: sprite_sandbox::client::SessionReader,
    tty: bool,
    out: &Out,
    finished: &AtomicBool,
) {
    loop {
        let message = match session_message(reader.next().await, tty) {
            Sent::Output(message) => message,
            Sent::Exit(code) => {
                // Marked before op.complete goes out: the client's next op.start is new.
                finished.store(true, Ordering::Release);
                let _ = out.send(exit_message(code, tty)).await;
                let _ = out.send(complete(code)).await;
                return;
            }
            Sent::Lost => {
                finished.store(true, Ordering::Release);
                let error = serde_json::json!({ "error": lost_close().reason.as_str() });
                let _ = out.send(envelope("op.error", "exec", error)).await;
                let _ = out.send(Message::Close(Some(lost_close()))).await;
                return;
            }
        };
        if out.send(message).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_as_query_pairs() {
        let args =
            serde_json::json!({"cmd": ["echo", "hi"], "tty": "true", "rows": 24, "dir": null});
        let mut pairs = arg_pairs(&args).unwrap_or_default();
        pairs.sort();
        let expected: Vec<(String, String)> = [
            ("cmd", "echo"),
            ("cmd", "hi"),
            ("rows", "24"),
            ("tty", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(pairs, expected);
        let query = serde_json::json!("path=%2Fetc&workingDir=%2F");
        assert_eq!(arg_pairs(&query).unwrap_or_default().len(), 2);
        assert!(arg_pairs(&serde_json::json!([1])).is_err());
        assert!(arg_pairs(&serde_json::json!({"cmd": [{"x": 1}]})).is_err());
    }

    #[test]
    fn text_frames() {
        assert!(matches!(
            parse_text(r#"control:{"type":"op.start","op":"exec","args":{"cmd":["true"]}}"#),
            Request::Exec(_)
        ));
        // Go's map encoding sorts the keys.
        assert!(matches!(
            parse_text(r#"{"args":"path=%2F","op":"fs.list","type":"op.start"}"#),
            Request::Fs(op, _) if op == "fs.list"
        ));
        assert!(matches!(
            parse_text(r#"control:{"type":"op.start","op":"fs.list"}"#),
            Request::Ignore
        ));
        assert!(matches!(
            parse_text(r#"{"type":"start","operation":"proxy","params":{"port":80}}"#),
            Request::Proxy(_)
        ));
        assert!(matches!(
            parse_text("{\"type\":\"release\"}\n"),
            Request::Release
        ));
        assert!(matches!(
            parse_text(r#"{"type":"resize","cols":100,"rows":30}"#),
            Request::Resize(100, 30)
        ));
        assert!(matches!(
            parse_text(r#"{"type":"signal","signal":"INT"}"#),
            Request::Signal(2)
        ));
        assert!(matches!(parse_text("control:not json"), Request::Ignore));
        assert!(matches!(
            parse_text(r#"{"type":"keepalive"}"#),
            Request::Ignore
        ));
    }
}
