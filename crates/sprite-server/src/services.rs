//! Service routes (API.md, Services). Put, start, stop, restart and logs answer NDJSON
//! (`application/x-ndjson`) as the SDKs parse it: `started` (or `stopping`, `exit`,
//! `stopped`), the run's `stdout`/`stderr` for `duration`, `exit` if it ended, then
//! `complete` with the service's `log_files`. Timestamps are milliseconds since the
//! epoch.

use crate::auth::SpritePath;
use crate::error::parse_json;
use crate::NdjsonLines;
use crate::{ApiError, AppState};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sprite_api::exec::{parse_duration, Signal};
use sprite_api::services::{
    service_log_path, ServiceEvent, ServiceEventKind, ServiceInfo, ServiceSignal, ServiceSpec,
    ServiceStatus,
};
use sprite_core::ids::SpriteKey;
use sprite_core::SpriteManager;
use sprite_sandbox::client::SessionEvent;
use std::time::Duration;

/// Longest `duration` a stream may follow a service.
const MAX_FOLLOW: Duration = Duration::from_secs(300);
/// How long a PUT follows the new run when `duration` is not given (as hosted).
const PUT_FOLLOW: Duration = Duration::from_secs(5);
/// How long a stop waits between SIGTERM and SIGKILL when `timeout` is not given.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest stop `timeout`.
const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(300);

fn event(kind: ServiceEventKind, data: Option<String>, exit_code: Option<i32>) -> ServiceEvent {
    ServiceEvent {
        kind,
        data,
        exit_code,
        timestamp: chrono::Utc::now().timestamp_millis(),
        log_files: None,
    }
}

/// The client stopped reading.
struct Gone;

/// Sends one event line; `Gone` when the client left.
async fn send(
    lines: &NdjsonLines,
    kind: ServiceEventKind,
    data: Option<String>,
    exit_code: Option<i32>,
) -> Result<(), Gone> {
    let line = crate::ndjson_line(&event(kind, data, exit_code));
    lines.send(Ok(line)).await.map_err(|_| Gone)
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct FollowQuery {
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    lines: Option<String>,
}

impl FollowQuery {
    /// How long to follow the run (`?duration=`), `default` when absent.
    fn follow(&self, default: Duration) -> Result<Duration, ApiError> {
        duration_param("duration", self.duration.as_deref(), default, MAX_FOLLOW)
    }

    /// Between SIGTERM and SIGKILL on a stop (`?timeout=`).
    fn grace(&self) -> Result<Duration, ApiError> {
        duration_param(
            "timeout",
            self.timeout.as_deref(),
            STOP_TIMEOUT,
            MAX_STOP_TIMEOUT,
        )
    }
}

type FollowQueryResult = Result<Query<FollowQuery>, axum::extract::rejection::QueryRejection>;

fn query_of(query: FollowQueryResult) -> Result<FollowQuery, ApiError> {
    query
        .map(|Query(query)| query)
        .map_err(|e| ApiError::invalid(e.body_text()))
}

/// A duration parameter: `default` when absent, zero when empty, at most `max`.
fn duration_param(
    what: &str,
    value: Option<&str>,
    default: Duration,
    max: Duration,
) -> Result<Duration, ApiError> {
    match value {
        None => Ok(default),
        Some("") => Ok(Duration::ZERO),
        Some(text) => parse_duration(text).map(|d| d.min(max)).ok_or_else(|| {
            ApiError::invalid(format!(
                "{what} {text:?} is not a duration such as 5s, 500ms or 1m30s"
            ))
        }),
    }
}

/// Streams a run's output (`stdout`/`stderr` lines) for up to `follow`, then its
/// `exit` line if it ended; `Ok(true)` when it ended. `replay` starts with its recent
/// output.
async fn follow_run(
    manager: &SpriteManager,
    key: &SpriteKey,
    session: &str,
    follow: Duration,
    replay: bool,
    lines: &NdjsonLines,
) -> Result<bool, Gone> {
    match manager.attach_from(key, session, replay).await {
        Ok(attachment) => follow_attachment(attachment, follow, lines).await,
        // The run is already gone: nothing more to follow.
        Err(
            sprite_core::CoreError::SessionNotFound(_) | sprite_core::CoreError::SessionGone(_),
        ) => Ok(true),
        Err(error) => {
            let text = sprite_api::error_chain(&error);
            send(lines, ServiceEventKind::Error, Some(text), None).await?;
            Ok(false)
        }
    }
}

/// Streams an attached run's output for up to `follow`, then its `exit` line if it
/// ended; `Ok(true)` when it ended.
async fn follow_attachment(
    attachment: sprite_sandbox::client::Attachment,
    follow: Duration,
    lines: &NdjsonLines,
) -> Result<bool, Gone> {
    // The writer stays open while following: closing it detaches.
    let (mut reader, _writer) = (attachment.reader, attachment.writer);
    let deadline = tokio::time::Instant::now() + follow;
    loop {
        let (kind, data) = match tokio::time::timeout_at(deadline, reader.next()).await {
            Err(_elapsed) => return Ok(false),
            Ok(Ok(Some(SessionEvent::Stdout(data)))) => (ServiceEventKind::Stdout, data),
            Ok(Ok(Some(SessionEvent::Stderr(data)))) => (ServiceEventKind::Stderr, data),
            Ok(Ok(Some(SessionEvent::Exit(code)))) => {
                send(lines, ServiceEventKind::Exit, None, Some(code)).await?;
                return Ok(true);
            }
            Ok(Ok(None)) | Ok(Err(_)) => return Ok(true),
        };
        let text = String::from_utf8_lossy(&data).into_owned();
        send(lines, kind, Some(text), None).await?;
    }
}

/// `started` when the service runs, its output for `follow`.
async fn announce_start(
    manager: &SpriteManager,
    at: &SpriteKey,
    service: &ServiceInfo,
    follow: Duration,
    lines: &NdjsonLines,
) -> Result<(), Gone> {
    if let Some(pid) = service.state.pid {
        let text = format!("{} started with pid {pid}", service.name);
        send(lines, ServiceEventKind::Started, Some(text), None).await?;
    }
    if let Some(session) = service.state.session_id.as_deref() {
        if !follow.is_zero() {
            follow_run(manager, at, session, follow, true, lines).await?;
        }
    }
    Ok(())
}

/// `stopping`, the run's last output and `exit` (waiting up to `wait`), `stopped`.
async fn announce_stop(
    manager: &SpriteManager,
    at: &SpriteKey,
    service: &ServiceInfo,
    wait: Duration,
    lines: &NdjsonLines,
) -> Result<(), Gone> {
    let name = &service.name;
    let running = service.state.status == ServiceStatus::Stopping;
    let session = service.state.session_id.as_deref().filter(|_| running);
    let Some(session) = session else {
        return send(
            lines,
            ServiceEventKind::Stopped,
            Some(format!("{name} is stopped")),
            None,
        )
        .await;
    };
    send(
        lines,
        ServiceEventKind::Stopping,
        Some(format!("stopping {name}")),
        None,
    )
    .await?;
    if follow_run(manager, at, session, wait, false, lines).await? {
        send(
            lines,
            ServiceEventKind::Stopped,
            Some(format!("{name} stopped")),
            None,
        )
        .await
    } else {
        let text = format!("{name} has not exited after {wait:?}");
        send(lines, ServiceEventKind::Error, Some(text), None).await
    }
}

/// Answers with an NDJSON stream: `work` writes its lines in a task of its own, then
/// the `complete` line (with where the service logs) ends it.
fn ndjson<F, Fut>(service: String, work: F) -> Response
where
    F: FnOnce(NdjsonLines) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Gone>> + Send,
{
    let (lines, response) = crate::ndjson_channel(16);
    tokio::spawn(async move {
        if work(lines.clone()).await.is_ok() {
            let mut complete = event(ServiceEventKind::Complete, None, None);
            let logs = [("combined".to_string(), service_log_path(&service))];
            complete.log_files = Some(logs.into());
            let _ = lines.send(Ok(crate::ndjson_line(&complete))).await;
        }
    });
    response
}

/// How long after the SIGKILL deadline a stop stream still waits for the exit.
const EXIT_SLACK: Duration = Duration::from_secs(5);

pub async fn list(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
) -> Result<Response, ApiError> {
    Ok(Json(state.manager.services(&key).await?.list().await?).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    Path((_, service)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(state.manager.services(&key).await?.get(&service).await?).into_response())
}

pub async fn put(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    Path((_, service)): Path<(String, String)>,
    query: FollowQueryResult,
    body: Bytes,
) -> Result<Response, ApiError> {
    let follow = query_of(query)?.follow(PUT_FOLLOW)?;
    let spec: ServiceSpec = parse_json(&body)?;
    let manager = state.manager.clone();
    let info = manager.services(&key).await?.put(&service, spec).await?;
    Ok(ndjson(service, move |lines| async move {
        announce_start(&manager, &key, &info, follow, &lines).await
    }))
}

pub async fn start(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    Path((_, service)): Path<(String, String)>,
    query: FollowQueryResult,
) -> Result<Response, ApiError> {
    let follow = query_of(query)?.follow(Duration::ZERO)?;
    let manager = state.manager.clone();
    let info = manager.services(&key).await?.start(&service).await?;
    Ok(ndjson(service, move |lines| async move {
        announce_start(&manager, &key, &info, follow, &lines).await
    }))
}

/// `POST .../services/{svc}/stop[?timeout=10s]`: SIGTERM, SIGKILL after `timeout`;
/// streams `stopping`, the run's last output, `exit`, `stopped`, `complete`.
pub async fn stop(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    Path((_, service)): Path<(String, String)>,
    query: FollowQueryResult,
) -> Result<Response, ApiError> {
    let grace = query_of(query)?.grace()?;
    let manager = state.manager.clone();
    let info = manager
        .services(&key)
        .await?
        .stop(&service, Some(grace))
        .await?;
    Ok(ndjson(service, move |lines| async move {
        announce_stop(&manager, &key, &info, grace + EXIT_SLACK, &lines).await
    }))
}

/// `POST .../services/{svc}/restart[?duration=&timeout=]`: a stop (waiting for the run
/// to exit), then a start; one stream for both.
pub async fn restart(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    Path((_, service)): Path<(String, String)>,
    query: FollowQueryResult,
) -> Result<Response, ApiError> {
    let query = query_of(query)?;
    let (follow, grace) = (query.follow(Duration::ZERO)?, query.grace()?);
    let manager = state.manager.clone();
    let stopped = manager
        .services(&key)
        .await?
        .stop(&service, Some(grace))
        .await?;
    let svc = service.clone();
    Ok(ndjson(service, move |lines| async move {
        let at = &key;
        announce_stop(&manager, at, &stopped, grace + EXIT_SLACK, &lines).await?;
        let started = match manager.services(&key).await {
            Ok(services) => services.start(&svc).await,
            Err(error) => Err(error),
        };
        match started {
            Ok(info) => announce_start(&manager, at, &info, follow, &lines).await,
            Err(error) => {
                let text = sprite_api::error_chain(&error);
                send(&lines, ServiceEventKind::Error, Some(text), None).await
            }
        }
    }))
}

pub async fn signal(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ServiceSignal = parse_json(&body)?;
    let signal = Signal::parse(&request.signal).ok_or_else(|| {
        ApiError::invalid(format!(
            "signal {:?} is not one of HUP, INT, QUIT, KILL, USR1, USR2, TERM",
            request.signal
        ))
    })?;
    state
        .manager
        .services(&key)
        .await?
        .signal(&request.name, signal.number())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    Path((_, service)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    state.manager.services(&key).await?.delete(&service).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET .../services/{svc}/logs[?lines=100&duration=]`: NDJSON, the last `lines` of
/// the service's log as `stdout` lines, then (with `duration`) its live output, then
/// `complete`.
pub async fn logs(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    Path((_, service)): Path<(String, String)>,
    query: FollowQueryResult,
) -> Result<Response, ApiError> {
    let query = query_of(query)?;
    let count = match query.lines.as_deref() {
        None | Some("") => 100,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!("lines = {text:?} is not a number from 1 to 100000"))
            })?,
    };
    let follow = query.follow(Duration::ZERO)?;
    // Attach before reading the log so no output falls between the two.
    let services = state.manager.services(&key).await?;
    let info = services.get(&service).await?;
    let live = match info.state.session_id.as_deref() {
        Some(session) if !follow.is_zero() => {
            state.manager.attach_from(&key, session, false).await.ok()
        }
        _ => None,
    };
    let text = services.logs(&service, count).await?;
    drop(services);
    Ok(ndjson(service, move |lines| async move {
        for line in text.split_inclusive('\n') {
            send(
                &lines,
                ServiceEventKind::Stdout,
                Some(line.to_string()),
                None,
            )
            .await?;
        }
        if let Some(attachment) = live {
            follow_attachment(attachment, follow, &lines).await?;
        }
        Ok(())
    }))
}
