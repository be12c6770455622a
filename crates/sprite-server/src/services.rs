//! Service routes (API.md, Services). Put, start, stop, restart and logs answer NDJSON
//! (`application/x-ndjson`) as the SDKs parse it: `started` (or `stopping`, `exit`,
//! `stopped`), the run's `stdout`/`stderr` for `duration`, `exit` if it ended, then
//! `complete` with the service's `log_files`. Timestamps are milliseconds since the
//! epoch.

use crate::auth::Org;
use crate::error::parse_json;
use crate::{ApiError, AppState};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sprite_api::exec::{parse_duration, Signal};
use sprite_api::services::{
    service_log_path, ServiceEvent, ServiceInfo, ServiceSignal, ServiceSpec, ServiceStatus,
};
use sprite_core::SpriteManager;
use sprite_sandbox::client::SessionEvent;
use std::sync::Arc;
use std::time::Duration;

/// Longest `duration` a stream may follow a service.
const MAX_FOLLOW: Duration = Duration::from_secs(300);
/// How long a PUT follows the new run when `duration` is not given (as hosted).
const PUT_FOLLOW: Duration = Duration::from_secs(5);
/// How long a stop waits between SIGTERM and SIGKILL when `timeout` is not given.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest stop `timeout`.
const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(300);

fn event(kind: &str, data: Option<String>, exit_code: Option<i32>) -> ServiceEvent {
    ServiceEvent {
        kind: kind.to_string(),
        data,
        exit_code,
        timestamp: chrono::Utc::now().timestamp_millis(),
        log_files: None,
    }
}

fn encode(event: &ServiceEvent) -> Bytes {
    let mut text = serde_json::to_string(event).unwrap_or_default();
    text.push('\n');
    Bytes::from(text)
}

fn line(kind: &str, data: Option<String>, exit_code: Option<i32>) -> Bytes {
    encode(&event(kind, data, exit_code))
}

/// The last line of every stream: `complete`, with where the service logs.
fn complete_line(service: &str) -> Bytes {
    let mut complete = event("complete", None, None);
    complete.log_files = Some([("combined".to_string(), service_log_path(service))].into());
    encode(&complete)
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

type Lines = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

/// The client stopped reading.
struct Gone;

/// Streams a run's output (`stdout`/`stderr` lines) for up to `follow`, then its
/// `exit` line if it ended; `Ok(true)` when it ended. `replay` starts with its recent
/// output.
async fn follow_run(
    manager: &SpriteManager,
    (org, name): (&str, &str),
    session: &str,
    follow: Duration,
    replay: bool,
    lines: &Lines,
) -> Result<bool, Gone> {
    let attachment = match manager.attach_from(org, name, session, replay).await {
        Ok(attachment) => attachment,
        // The run is already gone: nothing more to follow.
        Err(sprite_core::CoreError::NotFound(_)) => return Ok(true),
        Err(error) => {
            let text = sprite_api::error_chain(&error);
            lines
                .send(Ok(line("error", Some(text), None)))
                .await
                .map_err(|_| Gone)?;
            return Ok(false);
        }
    };
    follow_attachment(attachment, follow, lines).await
}

/// Streams an attached run's output for up to `follow`, then its `exit` line if it
/// ended; `Ok(true)` when it ended.
async fn follow_attachment(
    attachment: sprite_sandbox::client::Attachment,
    follow: Duration,
    lines: &Lines,
) -> Result<bool, Gone> {
    // The writer stays open while following: closing it detaches.
    let (mut reader, _writer) = (attachment.reader, attachment.writer);
    let deadline = tokio::time::Instant::now() + follow;
    loop {
        let next = tokio::time::timeout_at(deadline, reader.next()).await;
        let bytes = match next {
            Err(_elapsed) => return Ok(false),
            Ok(Ok(Some(SessionEvent::Stdout(data)))) => {
                line("stdout", Some(String::from_utf8_lossy(&data).into()), None)
            }
            Ok(Ok(Some(SessionEvent::Stderr(data)))) => {
                line("stderr", Some(String::from_utf8_lossy(&data).into()), None)
            }
            Ok(Ok(Some(SessionEvent::Exit(code)))) => {
                let exit = line("exit", None, Some(code));
                lines.send(Ok(exit)).await.map_err(|_| Gone)?;
                return Ok(true);
            }
            Ok(Ok(None)) | Ok(Err(_)) => return Ok(true),
        };
        lines.send(Ok(bytes)).await.map_err(|_| Gone)?;
    }
}

/// `started` when the service runs, its output for `follow`.
async fn announce_start(
    manager: &SpriteManager,
    at: (&str, &str),
    service: &ServiceInfo,
    follow: Duration,
    lines: &Lines,
) -> Result<(), Gone> {
    if let Some(pid) = service.state.pid {
        let text = format!("{} started with pid {pid}", service.name);
        let started = line("started", Some(text), None);
        lines.send(Ok(started)).await.map_err(|_| Gone)?;
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
    at: (&str, &str),
    service: &ServiceInfo,
    wait: Duration,
    lines: &Lines,
) -> Result<(), Gone> {
    let running = service.state.status == ServiceStatus::Stopping;
    let session = service.state.session_id.as_deref().filter(|_| running);
    let Some(session) = session else {
        let stopped = line(
            "stopped",
            Some(format!("{} is stopped", service.name)),
            None,
        );
        return lines.send(Ok(stopped)).await.map_err(|_| Gone);
    };
    let stopping = line("stopping", Some(format!("stopping {}", service.name)), None);
    lines.send(Ok(stopping)).await.map_err(|_| Gone)?;
    if follow_run(manager, at, session, wait, false, lines).await? {
        let stopped = line("stopped", Some(format!("{} stopped", service.name)), None);
        lines.send(Ok(stopped)).await.map_err(|_| Gone)?;
    } else {
        let text = format!("{} has not exited after {wait:?}", service.name);
        lines
            .send(Ok(line("error", Some(text), None)))
            .await
            .map_err(|_| Gone)?;
    }
    Ok(())
}

/// Runs `body` in a task that writes NDJSON lines, then `complete`; answers with the
/// stream.
fn ndjson<F, Fut>(
    manager: Arc<SpriteManager>,
    org: String,
    name: String,
    service: String,
    body: F,
) -> Response
where
    F: FnOnce(Arc<SpriteManager>, String, String, Lines) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Gone>> + Send,
{
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        if body(manager, org, name, sender.clone()).await.is_ok() {
            let _ = sender.send(Ok(complete_line(&service))).await;
        }
    });
    crate::ndjson_response(receiver)
}

/// How long after the SIGKILL deadline a stop stream still waits for the exit.
const EXIT_SLACK: Duration = Duration::from_secs(5);

pub async fn list(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.manager.services(&org, &name).await?).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path((name, service)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(state.manager.service(&org, &name, &service).await?).into_response())
}

pub async fn put(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path((name, service)): Path<(String, String)>,
    query: FollowQueryResult,
    body: Bytes,
) -> Result<Response, ApiError> {
    let query = query_of(query)?;
    let follow = duration_param(
        "duration",
        query.duration.as_deref(),
        PUT_FOLLOW,
        MAX_FOLLOW,
    )?;
    let spec: ServiceSpec = parse_json(&body)?;
    let info = state
        .manager
        .put_service(&org, &name, &service, spec)
        .await?;
    Ok(ndjson(
        state.manager.clone(),
        org,
        name,
        service,
        move |m, org, name, lines| async move {
            announce_start(&m, (&org, &name), &info, follow, &lines).await
        },
    ))
}

pub async fn start(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path((name, service)): Path<(String, String)>,
    query: FollowQueryResult,
) -> Result<Response, ApiError> {
    let query = query_of(query)?;
    let follow = duration_param(
        "duration",
        query.duration.as_deref(),
        Duration::ZERO,
        MAX_FOLLOW,
    )?;
    let info = state.manager.start_service(&org, &name, &service).await?;
    Ok(ndjson(
        state.manager.clone(),
        org,
        name,
        service,
        move |m, org, name, lines| async move {
            announce_start(&m, (&org, &name), &info, follow, &lines).await
        },
    ))
}

/// `POST .../services/{svc}/stop[?timeout=10s]`: SIGTERM, SIGKILL after `timeout`;
/// streams `stopping`, the run's last output, `exit`, `stopped`, `complete`.
pub async fn stop(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path((name, service)): Path<(String, String)>,
    query: FollowQueryResult,
) -> Result<Response, ApiError> {
    let query = query_of(query)?;
    let grace = duration_param(
        "timeout",
        query.timeout.as_deref(),
        STOP_TIMEOUT,
        MAX_STOP_TIMEOUT,
    )?;
    let info = state
        .manager
        .stop_service(&org, &name, &service, Some(grace))
        .await?;
    Ok(ndjson(
        state.manager.clone(),
        org,
        name,
        service,
        move |m, org, name, lines| async move {
            announce_stop(&m, (&org, &name), &info, grace + EXIT_SLACK, &lines).await
        },
    ))
}

/// `POST .../services/{svc}/restart[?duration=&timeout=]`: a stop (waiting for the run
/// to exit), then a start; one stream for both.
pub async fn restart(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path((name, service)): Path<(String, String)>,
    query: FollowQueryResult,
) -> Result<Response, ApiError> {
    let query = query_of(query)?;
    let follow = duration_param(
        "duration",
        query.duration.as_deref(),
        Duration::ZERO,
        MAX_FOLLOW,
    )?;
    let grace = duration_param(
        "timeout",
        query.timeout.as_deref(),
        STOP_TIMEOUT,
        MAX_STOP_TIMEOUT,
    )?;
    let stopped = state
        .manager
        .stop_service(&org, &name, &service, Some(grace))
        .await?;
    let svc = service.clone();
    Ok(ndjson(
        state.manager.clone(),
        org,
        name,
        service,
        move |m, org, name, lines| async move {
            announce_stop(&m, (&org, &name), &stopped, grace + EXIT_SLACK, &lines).await?;
            match m.start_service(&org, &name, &svc).await {
                Ok(info) => announce_start(&m, (&org, &name), &info, follow, &lines).await,
                Err(error) => {
                    let text = sprite_api::error_chain(&error);
                    lines
                        .send(Ok(line("error", Some(text), None)))
                        .await
                        .map_err(|_| Gone)
                }
            }
        },
    ))
}

pub async fn signal(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path(name): Path<String>,
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
        .signal_service(&org, &name, &request.name, signal.number())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path((name, service)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    state.manager.delete_service(&org, &name, &service).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET .../services/{svc}/logs[?lines=100&duration=]`: NDJSON, the last `lines` of
/// the service's log as `stdout` lines, then (with `duration`) its live output, then
/// `complete`.
pub async fn logs(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path((name, service)): Path<(String, String)>,
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
    let follow = duration_param(
        "duration",
        query.duration.as_deref(),
        Duration::ZERO,
        MAX_FOLLOW,
    )?;
    // Attach before reading the log so no output falls between the two.
    let info = state.manager.service(&org, &name, &service).await?;
    let live = match info
        .state
        .session_id
        .as_deref()
        .filter(|_| !follow.is_zero())
    {
        Some(session) => state
            .manager
            .attach_from(&org, &name, session, false)
            .await
            .ok(),
        None => None,
    };
    let text = state
        .manager
        .service_logs(&org, &name, &service, count)
        .await?;
    Ok(ndjson(
        state.manager.clone(),
        org,
        name,
        service,
        move |_, _, _, lines| async move {
            for text in text.split_inclusive('\n') {
                lines
                    .send(Ok(line("stdout", Some(text.to_string()), None)))
                    .await
                    .map_err(|_| Gone)?;
            }
            if let Some(attachment) = live {
                follow_attachment(attachment, follow, &lines).await?;
            }
            Ok(())
        },
    ))
}
