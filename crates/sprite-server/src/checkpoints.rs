//! Checkpoint routes. Create and restore answer NDJSON progress (`application/x-ndjson`):
//! `info` lines, then `complete` or `error`.

use crate::auth::SpritePath;
use crate::error::parse_json;
use crate::{ApiError, AppState};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sprite_api::sprite::{ProgressEvent, ProgressKind};
use sprite_core::Caller;

/// Who asks: the API unless the in-sprite API marked the request as the sprite's own.
fn caller(marked: Option<Extension<Caller>>) -> Caller {
    marked.map_or(Caller::Api, |Extension(caller)| caller)
}

fn event(kind: ProgressKind, data: Option<String>, error: Option<String>) -> Bytes {
    let event = ProgressEvent {
        kind,
        data,
        error,
        // RFC 3339 (ISO 8601), as the SDKs parse event times.
        time: Some(sprite_core::time::now()),
    };
    crate::ndjson_line(&event)
}

/// Streams `info` lines while `work` runs, then its outcome.
fn ndjson<F>(first: String, work: F) -> Response
where
    F: std::future::Future<Output = Result<String, ApiError>> + Send + 'static,
{
    let (sender, response) = crate::ndjson_channel(4);
    tokio::spawn(async move {
        let _ = sender
            .send(Ok(event(ProgressKind::Info, Some(first), None)))
            .await;
        let last = match work.await {
            Ok(done) => event(ProgressKind::Complete, Some(done), None),
            Err(error) => event(ProgressKind::Error, None, Some(error.message)),
        };
        let _ = sender.send(Ok(last)).await;
    });
    response
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct CreateBody {
    #[serde(default)]
    comment: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    marked: Option<Extension<Caller>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = caller(marked);
    let request: CreateBody = if body.is_empty() {
        CreateBody::default()
    } else {
        parse_json(&body)?
    };
    // 404, 400 and 429 before the stream starts (cheap: no storage is asked).
    state
        .manager
        .admit_checkpoint(&key, request.comment.as_deref(), caller)?;
    let manager = state.manager.clone();
    Ok(ndjson(
        format!("creating a checkpoint of {key}"),
        async move {
            let checkpoint = manager
                .checkpoint(&key, request.comment.as_deref(), caller)
                .await?;
            Ok(format!("Checkpoint {} created", checkpoint.id))
        },
    ))
}

#[derive(Debug, serde::Deserialize)]
pub struct ListQuery {
    #[serde(default, rename = "includeAuto")]
    include_auto: Option<String>,
    /// Any value: rows carry `history`, and the `Current` row comes first.
    #[serde(default)]
    history: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let include_auto = matches!(query.include_auto.as_deref(), Some("true" | "1"));
    let with_history = query.history.is_some_and(|h| !h.is_empty() && h != "false");
    let (rows, current) = state.manager.checkpoint_lineage(&key).await?;
    let mut list: Vec<_> = with_history.then_some(current).into_iter().collect();
    list.extend(
        rows.into_iter()
            .filter(|c| include_auto || !c.is_auto)
            .rev(),
    );
    if !with_history {
        for row in &mut list {
            row.history = None;
        }
    }
    Ok(Json(list).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(state.manager.checkpoint_info(&key, &id).await?).into_response())
}

pub async fn restore(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    marked: Option<Extension<Caller>>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let caller = caller(marked);
    state
        .manager
        .admit_checkpoint_change(&key, &id, caller)
        .await?;
    let manager = state.manager.clone();
    Ok(ndjson(
        format!("restoring {key} to {id}; its sessions end"),
        async move {
            manager.restore(&key, &id, caller).await?;
            Ok(format!("Checkpoint {id} restored"))
        },
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    marked: Option<Extension<Caller>>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    state
        .manager
        .delete_checkpoint(&key, &id, caller(marked))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
