//! Service routes (API.md, Services). Put, start and stop answer NDJSON
//! (`application/x-ndjson`): `started`, the run's `stdout`/`stderr` for `duration`,
//! `exit` if it ended, then `complete`.

use crate::auth::Org;
use crate::error::parse_json;
use crate::{ApiError, AppState};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sprite_api::exec::{parse_duration_secs, Signal};
use sprite_api::services::{ServiceEvent, ServiceInfo, ServiceSignal, ServiceSpec};
use sprite_core::SpriteManager;
use sprite_sandbox::client::SessionEvent;
use std::sync::Arc;
use std::time::Duration;

/// Longest `duration` a stream may follow a service.
const MAX_FOLLOW: Duration = Duration::from_secs(300);
/// How long a stop waits for the run to exit before completing the stream.
const STOP_WAIT: Duration = Duration::from_secs(10);

fn line(kind: &str, data: Option<String>, exit_code: Option<i32>) -> Bytes {
    let event = ServiceEvent {
        kind: kind.to_string(),
        data,
        exit_code,
        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    };
    let mut text = serde_json::to_string(&event).unwrap_or_default();
    text.push('\n');
    Bytes::from(text)
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct FollowQuery {
    #[serde(default)]
    duration: Option<String>,
}

type FollowQueryResult = Result<Query<FollowQuery>, axum::extract::rejection::QueryRejection>;

/// How long a stream follows the run, from `?duration=` (none: not at all).
fn follow_for(query: FollowQueryResult) -> Result<Duration, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    match query.duration.as_deref() {
        None | Some("") => Ok(Duration::ZERO),
        Some(text) => parse_duration_secs(text)
            .map(|secs| Duration::from_secs(secs).min(MAX_FOLLOW))
            .ok_or_else(|| {
                ApiError::invalid(format!("duration {text:?} is not a duration such as 5s"))
            }),
    }
}

/// Streams `started` (when `announce` and it runs), then the service run's output for
/// `follow` (or until it exits), then `complete`.
fn ndjson(
    manager: Arc<SpriteManager>,
    org: String,
    name: String,
    announce: bool,
    service: ServiceInfo,
    follow: Duration,
) -> Response {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        if let Some(pid) = service.state.pid.filter(|_| announce) {
            let text = format!("{} started with pid {pid}", service.name);
            let _ = sender.send(Ok(line("started", Some(text), None))).await;
        }
        if let Some(session) = service.state.session_id.filter(|_| !follow.is_zero()) {
            match manager.attach(&org, &name, &session).await {
                Ok(attachment) => {
                    // The writer stays open while following: closing it detaches.
                    let (mut reader, _writer) = (attachment.reader, attachment.writer);
                    let deadline = tokio::time::Instant::now() + follow;
                    loop {
                        let next = tokio::time::timeout_at(deadline, reader.next()).await;
                        let event = match next {
                            Err(_elapsed) => break,
                            Ok(Ok(Some(SessionEvent::Stdout(data)))) => {
                                line("stdout", Some(String::from_utf8_lossy(&data).into()), None)
                            }
                            Ok(Ok(Some(SessionEvent::Stderr(data)))) => {
                                line("stderr", Some(String::from_utf8_lossy(&data).into()), None)
                            }
                            Ok(Ok(Some(SessionEvent::Exit(code)))) => {
                                let _ = sender.send(Ok(line("exit", None, Some(code)))).await;
                                break;
                            }
                            Ok(Ok(None)) | Ok(Err(_)) => break,
                        };
                        if sender.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(error) => {
                    let _ = sender
                        .send(Ok(line(
                            "error",
                            Some(sprite_api::error_chain(&error)),
                            None,
                        )))
                        .await;
                }
            }
        }
        let _ = sender.send(Ok(line("complete", None, None))).await;
    });
    crate::ndjson_response(receiver)
}

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
    let follow = follow_for(query)?;
    let spec: ServiceSpec = parse_json(&body)?;
    let info = state
        .manager
        .put_service(&org, &name, &service, spec)
        .await?;
    Ok(ndjson(state.manager.clone(), org, name, true, info, follow))
}

pub async fn start(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path((name, service)): Path<(String, String)>,
    query: FollowQueryResult,
) -> Result<Response, ApiError> {
    let follow = follow_for(query)?;
    let info = state.manager.start_service(&org, &name, &service).await?;
    Ok(ndjson(state.manager.clone(), org, name, true, info, follow))
}

pub async fn stop(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path((name, service)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let info = state.manager.stop_service(&org, &name, &service).await?;
    // Follows the run until it exits (its `exit` line), or for STOP_WAIT at most.
    Ok(ndjson(
        state.manager.clone(),
        org,
        name,
        false,
        info,
        STOP_WAIT,
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

#[derive(Debug, Default, serde::Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    lines: Option<String>,
}

pub async fn logs(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path((name, service)): Path<(String, String)>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let lines = match query.lines.as_deref() {
        None | Some("") => 100,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!("lines = {text:?} is not a number from 1 to 100000"))
            })?,
    };
    let text = state
        .manager
        .service_logs(&org, &name, &service, lines)
        .await?;
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}
