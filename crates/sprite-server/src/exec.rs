//! Exec routes: WebSocket exec and attach with the Sprites framing, plain-HTTP exec,
//! session listing and kill.

use crate::auth::SpritePath;
use crate::{ApiError, AppState};
use crate::{IDLE_READ_TIMEOUT, PING_INTERVAL};
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{SinkExt, StreamExt};
use sprite_api::exec::{
    ClientMessage, ExecParams, Frame, ServerMessage, SessionList, Signal, MAX_CLIENT_FRAME,
};
use sprite_core::activity::{ActivityGuard, Reason};
use sprite_core::ids::SpriteKey;
use sprite_core::manager::RunAs;
use sprite_core::CoreError;
use sprite_sandbox::client::{Attachment, SessionEvent, SessionReader, SessionWriter};

pub(crate) type WsUpgrade =
    Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;

fn query_pairs(raw: &Option<String>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// Exit code used when the command could not be started at all, as a shell would.
fn spawn_failure_code(message: &str) -> i32 {
    if message.contains("permission denied") {
        126
    } else {
        127
    }
}

fn parse_params(raw: &Option<String>) -> Result<(ExecParams, RunAs), ApiError> {
    let pairs = query_pairs(raw);
    let params = ExecParams::from_query(&pairs, raw.as_deref().map_or(0, str::len))
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    // Ours: `user=root` runs as another account of the sprite (the token holder has
    // passwordless sudo in it anyway).
    let user = pairs
        .iter()
        .rev()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.clone())
        .filter(|u| !u.is_empty());
    Ok((params, RunAs(user)))
}

fn with_capabilities(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert("x-sprite-capabilities", HeaderValue::from_static("signal"));
    response
}

/// The `session_info` message of an attachment; `owner` when this connection started
/// the session.
pub(crate) fn session_info(attachment: &Attachment, owner: bool) -> ServerMessage {
    // 0: an older sprite-init that does not say.
    let created = (attachment.created_ms > 0)
        .then(|| sprite_core::time::ms_to_rfc3339(attachment.created_ms));
    ServerMessage::session_info(
        attachment.session_id.clone(),
        attachment.tty,
        attachment.command.clone(),
        created,
        attachment.size,
        owner,
    )
}

/// What a WebSocket bridges to: a live session, or a command that could not start.
enum Bridge {
    /// A session (and whether this connection started it), and the sprite's port
    /// changes to report on it.
    Session(
        Attachment,
        bool,
        Option<sprite_core::ports::PortSubscription>,
    ),
    Failed {
        message: String,
        tty: bool,
    },
}

pub async fn exec_or_list(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    RawQuery(raw): RawQuery,
    upgrade: WsUpgrade,
) -> Result<Response, ApiError> {
    let Ok(upgrade) = upgrade else {
        let sessions = state.manager.sessions(&key).await?;
        return Ok(with_capabilities(
            Json(SessionList { sessions }).into_response(),
        ));
    };
    // `?id=SESSION` is the legacy attach (the Go SDK uses it with servers whose
    // version it cannot parse): the same as `WS .../exec/{id}`.
    let attach_id = query_pairs(&raw)
        .into_iter()
        .find(|(k, v)| k == "id" && !v.is_empty())
        .map(|(_, v)| v);
    if let Some(session) = attach_id {
        return attach_session(&state, &key, &session, upgrade).await;
    }
    let (params, run_as) = parse_params(&raw)?;
    // A connected client keeps the sprite awake, however quiet its command is.
    let awake = state.manager.keep_awake(&key, Reason::Session)?;
    let bridge = match state.manager.spawn(&key, &params, &run_as).await {
        Ok(attachment) => Bridge::Session(attachment, true, state.manager.ports().watch(&key).ok()),
        Err(CoreError::SpawnFailed(message)) => Bridge::Failed {
            message,
            tty: params.tty,
        },
        Err(other) => return Err(other.into()),
    };
    Ok(with_capabilities(upgrade_to(upgrade, bridge, awake)))
}

pub async fn attach(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    Path((_, session)): Path<(String, String)>,
    upgrade: WsUpgrade,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|_| ApiError::invalid("attach needs a WebSocket upgrade"))?;
    attach_session(&state, &key, &session, upgrade).await
}

async fn attach_session(
    state: &AppState,
    key: &SpriteKey,
    session: &str,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let awake = state.manager.keep_awake(key, Reason::Session)?;
    let attachment = state.manager.attach(key, session).await?;
    Ok(with_capabilities(upgrade_to(
        upgrade,
        Bridge::Session(attachment, false, state.manager.ports().watch(key).ok()),
        awake,
    )))
}

/// Answers the upgrade and bridges the socket; `awake` keeps the sprite awake until the
/// socket closes.
fn upgrade_to(upgrade: WebSocketUpgrade, bridge: Bridge, awake: ActivityGuard) -> Response {
    upgrade
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| async move {
            let _awake = awake;
            match bridge {
                Bridge::Session(attachment, owner, ports) => {
                    run_bridge(socket, attachment, owner, ports).await
                }
                Bridge::Failed { message, tty } => fail_bridge(socket, &message, tty).await,
            }
        })
}

/// The exit as an exec socket sends it: the text `exit` with a TTY, `[3, code]`
/// without.
pub(crate) fn exit_message(code: i32, tty: bool) -> Message {
    if tty {
        Message::Text(ServerMessage::exit(code).to_json().into())
    } else {
        Message::Binary(Frame::Exit((code & 0xff) as u8).encode().into())
    }
}

/// The close frame after an exit. The JS SDK reads a TTY command's exit code from the
/// close code alone (1000 is 0, anything else 1), so a TTY command that failed closes
/// with 4000 + its code (private-use range); other clients read the exit frame.
fn exit_close(code: i32, tty: bool) -> CloseFrame {
    if tty && code != 0 {
        CloseFrame {
            code: 4000 + (code & 0xff) as u16,
            reason: format!("exited with code {code}").into(),
        }
    } else {
        CloseFrame {
            code: 1000,
            reason: "exited".into(),
        }
    }
}

/// What a command that could not start answers, as a shell would: its error on
/// stderr (the terminal with a TTY), then the exit (126 or 127). Returns the code.
pub(crate) fn spawn_failure(message: &str, tty: bool) -> (i32, [Message; 2]) {
    let code = spawn_failure_code(message);
    let text = format!("sprite: {message}\r\n").into_bytes();
    let output = if tty {
        Message::Binary(text.into())
    } else {
        Message::Binary(Frame::Stderr(text).encode().into())
    };
    (code, [output, exit_message(code, tty)])
}

/// A session's output as an exec socket sends it (raw with a TTY, framed without), or
/// how it ended.
pub(crate) enum Sent {
    Output(Message),
    Exit(i32),
    /// The session's stream ended without an exit: never reported as success.
    Lost,
}

pub(crate) fn session_message(
    event: Result<Option<SessionEvent>, sprite_sandbox::SandboxError>,
    tty: bool,
) -> Sent {
    match event {
        Ok(Some(SessionEvent::Stdout(data))) if tty => Sent::Output(Message::Binary(data.into())),
        Ok(Some(SessionEvent::Stdout(data))) => {
            Sent::Output(Message::Binary(Frame::Stdout(data).encode().into()))
        }
        Ok(Some(SessionEvent::Stderr(data))) => {
            Sent::Output(Message::Binary(Frame::Stderr(data).encode().into()))
        }
        Ok(Some(SessionEvent::Exit(code))) => Sent::Exit(code),
        other => {
            tracing::warn!("session stream ended without an exit: {other:?}");
            Sent::Lost
        }
    }
}

/// The close frame of a socket whose session was lost before it exited.
pub(crate) fn lost_close() -> CloseFrame {
    CloseFrame {
        code: 1011,
        reason: "sprite went away before the command exited".into(),
    }
}

async fn fail_bridge(mut socket: WebSocket, message: &str, tty: bool) {
    let (code, messages) = spawn_failure(message, tty);
    for message in messages {
        let _ = socket.send(message).await;
    }
    let _ = socket
        .send(Message::Close(Some(exit_close(code, tty))))
        .await;
}

/// Pumps a session to a WebSocket and the WebSocket's input to the session. Ends when
/// the process exits (exit frame, then close) or the client leaves (the process keeps
/// running and can be re-attached).
async fn run_bridge(
    socket: WebSocket,
    attachment: Attachment,
    owner: bool,
    ports: Option<sprite_core::ports::PortSubscription>,
) {
    let info = session_info(&attachment, owner);
    let Attachment {
        tty,
        reader,
        writer,
        ..
    } = attachment;
    let (mut sink, stream) = socket.split();
    if sink
        .send(Message::Text(info.to_json().into()))
        .await
        .is_err()
    {
        return;
    }
    let (finished, finished_rx) = tokio::sync::oneshot::channel();
    let outbound = tokio::spawn(async move {
        forward_output(reader, sink, tty, ports).await;
        let _ = finished.send(());
    });
    forward_input(stream, writer, tty, finished_rx).await;
    // The client left (or the exit was delivered): stop streaming; the process, if
    // still running, stays in its session for a later attach.
    outbound.abort();
}

/// After the exit frame, how long the client may take to close its side. Input is
/// drained meanwhile: closing a socket with unread input makes the kernel reset the
/// connection, which can destroy the exit frame before the client reads it.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

async fn forward_output(
    mut reader: SessionReader,
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    tty: bool,
    mut ports: Option<sprite_core::ports::PortSubscription>,
) {
    // Reading a session is not cancel-safe, so it runs in its own task and the loop
    // below selects on a channel and the ping timer instead.
    let (events, mut received) = tokio::sync::mpsc::channel(16);
    let _pump = AbortOnDrop(tokio::spawn(async move {
        loop {
            let event = reader.next().await;
            let last = !matches!(
                event,
                Ok(Some(SessionEvent::Stdout(_) | SessionEvent::Stderr(_)))
            );
            if events.send(event).await.is_err() || last {
                return;
            }
        }
    }));
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    loop {
        let event = tokio::select! {
            event = received.recv() => event,
            port = next_port_event(&mut ports), if ports.is_some() => {
                match port {
                    Some(port) => {
                        let text = crate::tcp::port_message(&port);
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                    None => ports = None, // the poller ended: no more port events
                }
                continue;
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let event = event.unwrap_or(Ok(None));
        let message = match session_message(event, tty) {
            Sent::Output(message) => message,
            Sent::Exit(code) => {
                let _ = sink.send(exit_message(code, tty)).await;
                let close = exit_close(code, tty);
                let _ = sink.send(Message::Close(Some(close))).await;
                break;
            }
            Sent::Lost => {
                let _ = sink.send(Message::Close(Some(lost_close()))).await;
                break;
            }
        };
        if sink.send(message).await.is_err() {
            break;
        }
    }
}

async fn next_port_event(
    ports: &mut Option<sprite_core::ports::PortSubscription>,
) -> Option<sprite_core::ports::PortEvent> {
    ports.as_mut()?.recv().await
}

/// Aborts a task when dropped, so a client leaving also drops the session reader (and
/// with it the daemon's attachment in sprite-init).
pub(crate) struct AbortOnDrop<T = ()>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn forward_input(
    mut stream: futures_util::stream::SplitStream<WebSocket>,
    mut writer: SessionWriter,
    tty: bool,
    mut finished: tokio::sync::oneshot::Receiver<()>,
) {
    let mut input_open = true;
    loop {
        let message = tokio::select! {
            message = tokio::time::timeout(IDLE_READ_TIMEOUT, stream.next()) => match message {
                Ok(message) => message,
                Err(_) => {
                    tracing::info!("exec client silent for {IDLE_READ_TIMEOUT:?}; detaching");
                    return;
                }
            },
            _ = &mut finished => {
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    while let Some(Ok(message)) = stream.next().await {
                        if matches!(message, Message::Close(_)) {
                            return;
                        }
                    }
                })
                .await;
                return;
            }
        };
        let Some(Ok(message)) = message else { return };
        if !input_open && !matches!(message, Message::Close(_)) {
            continue;
        }
        let result = match message {
            Message::Binary(data) if tty => writer.stdin(data.to_vec()).await,
            Message::Binary(data) => match Frame::decode(&data) {
                Ok(Frame::Stdin(payload)) => writer.stdin(payload).await,
                Ok(Frame::StdinEof) => writer.stdin_eof().await,
                _ => Ok(()),
            },
            Message::Text(text) => match serde_json::from_str::<ClientMessage>(&text) {
                Ok(ClientMessage::Resize { cols, rows }) if cols > 0 && rows > 0 => {
                    writer.resize(cols, rows).await
                }
                Ok(ClientMessage::Signal { signal }) => match Signal::parse(&signal) {
                    Some(signal) => writer.signal(signal.number()).await,
                    None => Ok(()),
                },
                _ => Ok(()),
            },
            Message::Close(_) => return,
            _ => Ok(()),
        };
        // sprite-init closes its side right after the exit; input racing with that
        // (a late stdin EOF) is dropped, and the exit frame still goes out.
        if result.is_err() {
            input_open = false;
        }
    }
}

/// `POST /v1/sprites/{name}/exec`: non-TTY exec over plain HTTP. The request body is
/// stdin; the answer streams stdout/stderr frames and ends with `[3, code]`.
pub async fn exec_http(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    RawQuery(raw): RawQuery,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let gap = frame_gap(&headers);
    let (mut params, run_as) = parse_params(&raw)?;
    params.tty = false;
    params.stdin = true;
    let awake = state.manager.keep_awake(&key, Reason::Session)?;
    let attachment = match state.manager.spawn(&key, &params, &run_as).await {
        Ok(attachment) => attachment,
        Err(CoreError::SpawnFailed(message)) => {
            // One frame per chunk: the JS SDK's HTTP exec reads a frame from each.
            let stderr = Frame::Stderr(format!("sprite: {message}\n").into_bytes()).encode();
            let exit = Frame::Exit(spawn_failure_code(&message) as u8).encode();
            let frames = futures_util::stream::once(async { Ok::<_, std::io::Error>(stderr) })
                .chain(futures_util::stream::once(async move {
                    pace(Some(tokio::time::Instant::now()), gap).await;
                    Ok(exit)
                }));
            return Ok(octet_stream(Body::from_stream(frames)));
        }
        Err(other) => return Err(other.into()),
    };
    let Attachment { reader, writer, .. } = attachment;
    // The writer must live until the output ends: closing it tells sprite-init that the
    // daemon hung up, which detaches the session.
    let writer = std::sync::Arc::new(tokio::sync::Mutex::new(writer));
    let input_writer = writer.clone();
    tokio::spawn(async move {
        let mut writer = input_writer.lock().await;
        let mut input = body.into_data_stream();
        while let Some(Ok(chunk)) = input.next().await {
            if writer.stdin(chunk.to_vec()).await.is_err() {
                return;
            }
        }
        let _ = writer.stdin_eof().await;
    });
    // The sprite stays awake until the answer has streamed out (or the client left).
    let output = futures_util::stream::unfold(
        // The headers count as a frame: the client needs time to start reading.
        Some((reader, writer, awake, Some(tokio::time::Instant::now()))),
        move |state| async move {
            let (mut reader, writer, awake, last) = state?;
            let (frame, more) = match reader.next().await {
                Ok(Some(SessionEvent::Stdout(data))) => (Frame::Stdout(data), true),
                Ok(Some(SessionEvent::Stderr(data))) => (Frame::Stderr(data), true),
                Ok(Some(SessionEvent::Exit(code))) => (Frame::Exit((code & 0xff) as u8), false),
                Ok(None) | Err(_) => {
                    return Some((
                        Err(std::io::Error::other(
                            "sprite went away before the command exited",
                        )),
                        None,
                    ));
                }
            };
            pace(last, gap).await;
            let next = more.then(|| (reader, writer, awake, Some(tokio::time::Instant::now())));
            Some((Ok::<_, std::io::Error>(frame.encode()), next))
        },
    );
    Ok(octet_stream(Body::from_stream(output)))
}

/// The least time between two frames of an HTTP exec answer. The JS SDK reads one
/// frame from each chunk its HTTP client hands it, and Node's client joins chunks
/// that arrive before it reads (seen in tests: `[2,...,1,...,3,0]` in one read), so
/// frames are spaced (the first from the headers).
const FRAME_GAP: std::time::Duration = std::time::Duration::from_millis(3);

/// The gap for Node's HTTP client (`user-agent: node`, what the JS SDK's `fetch`
/// sends): on a busy host its event loop reads late; 3 ms was seen to join a stdout
/// and a stderr frame, and 12 ms a stderr and an exit frame (CI, 2 cores, with other
/// suites running).
const NODE_FRAME_GAP: std::time::Duration = std::time::Duration::from_millis(30);

fn frame_gap(headers: &axum::http::HeaderMap) -> std::time::Duration {
    let node = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|agent| agent.starts_with("node") || agent.starts_with("undici"));
    if node {
        NODE_FRAME_GAP
    } else {
        FRAME_GAP
    }
}

async fn pace(last: Option<tokio::time::Instant>, gap: std::time::Duration) {
    if let Some(last) = last {
        tokio::time::sleep_until(last + gap).await;
    }
}

fn octet_stream(body: Body) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    with_capabilities(response)
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct KillQuery {
    #[serde(default)]
    signal: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
}

/// The JSON body sprites-py sends: `{"signal": "SIGTERM", "timeout": 10}` (seconds).
#[derive(Debug, Default, serde::Deserialize)]
struct KillBody {
    #[serde(default)]
    signal: Option<String>,
    #[serde(default)]
    timeout: Option<serde_json::Value>,
}

/// How long a kill waits for the exit before escalating to SIGKILL, by default.
const KILL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest kill timeout.
const MAX_KILL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// How long after SIGKILL the stream waits to see the exit.
const KILL_SLACK: std::time::Duration = std::time::Duration::from_secs(5);

/// One line of a kill's NDJSON stream, with the fields every SDK reads (JS:
/// `message`, `signal`, `pid`, `exit_code`; Python: `data`, `error`).
fn kill_line(
    kind: &str,
    message: &str,
    signal: Option<Signal>,
    pid: u32,
    exit: Option<i32>,
) -> bytes::Bytes {
    let mut line = serde_json::json!({
        "type": kind,
        "message": message,
        "data": message,
        "pid": pid,
        "timestamp": chrono::Utc::now().timestamp_millis(),
    });
    if let Some(signal) = signal {
        line["signal"] = format!("SIG{}", signal.name()).into();
    }
    if let Some(code) = exit {
        line["exit_code"] = code.into();
    }
    if kind == "error" {
        line["error"] = message.into();
    }
    crate::ndjson_line(&line)
}

/// The exit code of an attached session, read in a task of its own (reading a
/// session is not cancel-safe; the caller times out on the task instead).
fn exit_of(mut reader: SessionReader) -> tokio::task::JoinHandle<Option<i32>> {
    tokio::spawn(async move {
        loop {
            match reader.next().await {
                Ok(Some(SessionEvent::Exit(code))) => return Some(code),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    })
}

/// Reads the kill's signal and timeout from the query (JS, Go) or a JSON body
/// (sprites-py); the query wins.
fn kill_request(query: KillQuery, body: &[u8]) -> Result<(Signal, std::time::Duration), ApiError> {
    let body: KillBody = if body.iter().all(u8::is_ascii_whitespace) {
        KillBody::default()
    } else {
        crate::error::parse_json(body)?
    };
    let signal_text = query
        .signal
        .filter(|s| !s.is_empty())
        .or(body.signal)
        .unwrap_or_else(|| "TERM".into());
    let signal = Signal::parse(&signal_text).ok_or_else(|| {
        ApiError::invalid(format!(
            "signal {signal_text:?} is not one of HUP, INT, QUIT, KILL, USR1, USR2, TERM"
        ))
    })?;
    let timeout_text = match (query.timeout, body.timeout) {
        (Some(text), _) => Some(text),
        (None, Some(serde_json::Value::Number(n))) => Some(n.to_string()),
        (None, Some(serde_json::Value::String(text))) => Some(text),
        (None, Some(serde_json::Value::Null) | None) => None,
        (None, Some(other)) => {
            return Err(ApiError::invalid(format!(
                "timeout {other} is not a number of seconds or a duration such as 5s"
            )))
        }
    };
    let timeout = match timeout_text.as_deref() {
        None => KILL_TIMEOUT,
        Some("") => std::time::Duration::ZERO,
        Some(text) => sprite_api::exec::parse_duration(text)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "timeout {text:?} is not a duration such as 10, 5s or 1m30s"
                ))
            })?
            .min(MAX_KILL_TIMEOUT),
    };
    Ok((signal, timeout))
}

/// `POST .../exec/{id}/kill[?signal=TERM&timeout=10s]` (or the same as a JSON body):
/// signals the session, waits up to `timeout` for it to exit, then sends SIGKILL.
/// Answers NDJSON: `signal`, then `exited`, or `timeout` and `killed`, then
/// `complete` (`error` if something failed); 404 for an unknown session, 410 for one
/// that already exited. A zero timeout only signals.
pub async fn kill(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    Path((_, session)): Path<(String, String)>,
    query: Result<axum::extract::Query<KillQuery>, axum::extract::rejection::QueryRejection>,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let axum::extract::Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let (signal, timeout) = kill_request(query, &body)?;
    // Attached (without replay) before the signal, so the exit cannot be missed.
    let watch = if timeout.is_zero() {
        None
    } else {
        Some(state.manager.attach_from(&key, &session, false).await?)
    };
    state
        .manager
        .kill_session(&key, &session, signal.number())
        .await?;
    let pid = watch.as_ref().map_or(0, |w| w.pid);
    let (lines, response) = crate::ndjson_channel(8);
    let manager = state.manager.clone();
    tokio::spawn(async move {
        let line = |kind: &str, message: String, signal, exit| {
            Ok(kill_line(kind, &message, signal, pid, exit))
        };
        let sent = format!("sent SIG{} to session {session}", signal.name());
        let _ = lines.send(line("signal", sent, Some(signal), None)).await;
        if let Some(watch) = watch {
            let (reader, _writer) = (watch.reader, watch.writer);
            let mut exit = AbortOnDrop(exit_of(reader));
            let outcome = match tokio::time::timeout(timeout, &mut exit.0).await {
                Ok(Ok(Some(code))) => {
                    let text = format!("session {session} exited with code {code}");
                    line("exited", text, None, Some(code))
                }
                Ok(_) => line("exited", format!("session {session} ended"), None, None),
                Err(_) if signal == Signal::Kill => {
                    let text =
                        format!("session {session} has not exited {timeout:?} after SIGKILL");
                    line("error", text, None, None)
                }
                Err(_) => {
                    let text = format!(
                        "session {session} still running after {timeout:?}; sending SIGKILL"
                    );
                    let _ = lines.send(line("timeout", text, None, None)).await;
                    let killed = manager
                        .kill_session(&key, &session, Signal::Kill.number())
                        .await;
                    match killed {
                        Err(error) => line("error", sprite_api::error_chain(&error), None, None),
                        Ok(()) => {
                            match tokio::time::timeout(KILL_SLACK, &mut exit.0).await {
                                Ok(code) => {
                                    let text = format!("session {session} killed");
                                    line("killed", text, Some(Signal::Kill), code.ok().flatten())
                                }
                                Err(_) => {
                                    let text = format!("session {session} has not exited {KILL_SLACK:?} after SIGKILL");
                                    line("error", text, None, None)
                                }
                            }
                        }
                    }
                }
            };
            // A run that outlived the SIGKILL wait is not followed any longer (the
            // reader task ends with `exit`).
            drop(exit);
            let _ = lines.send(outcome).await;
        }
        let _ = lines
            .send(line("complete", "done".into(), None, None))
            .await;
    });
    Ok(response)
}

#[cfg(test)]
mod fuzz_targets {
    use super::*;
    use sprite_api::fuzz::{budget, fuzz};

    /// The query of `GET|POST /v1/sprites/{name}/exec` as a client sends it: parsing
    /// never panics, and parameters that parse give back a query that parses the same.
    #[test]
    fn fuzz_exec_query() {
        let seeds: &[&[u8]] = &[
            b"cmd=ls&cmd=-la&path=ls&stdin=true&tty=false",
            b"cmd=bash&tty=true&cols=80&rows=24&env=A%3D1&dir=%2Ftmp",
            b"cmd=sleep&cmd=10&max_run_after_disconnect=10m&user=root",
            b"cmd=%00&cols=99999999999&rows=-1",
        ];
        let dictionary: &[&[u8]] = &[
            b"&cmd=",
            b"&env=",
            b"&tty=true",
            b"%3D",
            b"%00",
            b"&cols=",
            b"&max_run_after_disconnect=",
        ];
        fuzz("exec query", budget(), seeds, dictionary, |input| {
            let raw = Some(String::from_utf8_lossy(input).into_owned());
            if let Ok((params, _)) = parse_params(&raw) {
                let query = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(params.to_query())
                    .finish();
                if query.len() > sprite_api::exec::MAX_QUERY_LEN {
                    return; // escaping made it longer than any query may be
                }
                let (again, _) = parse_params(&Some(query)).expect("a query we wrote parses");
                assert_eq!(again.argv, params.argv);
                assert_eq!(again.tty, params.tty);
            }
        });
    }
}
