//! `/v1/sprites` routes.

use crate::auth::Org;
use crate::error::parse_json;
use crate::{ApiError, AppState};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sprite_api::sprite::{CreateSpriteRequest, UpdateSpriteRequest};
use sprite_api::ErrorBody;
use sprite_core::CoreError;

pub async fn create(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: CreateSpriteRequest = parse_json(&body)?;
    let name = request.name.clone();
    match state.manager.create(&org, request).await {
        Ok(info) => Ok((StatusCode::CREATED, Json(info)).into_response()),
        Err(CoreError::SpriteExists(_)) => {
            // A retried create sees the sprite its first attempt made.
            let existing = state.manager.get(&org, &name).await?;
            let mut body = serde_json::to_value(&existing).unwrap_or_default();
            if let Some(map) = body.as_object_mut() {
                let error = ErrorBody {
                    error: "conflict".into(),
                    message: Some(format!("a sprite named {name} already exists")),
                    ..ErrorBody::default()
                };
                map.insert("error".into(), error.error.into());
                map.insert("message".into(), error.message.unwrap_or_default().into());
            }
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
        Err(other) => Err(other.into()),
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    max_results: Option<String>,
    #[serde(default)]
    continuation_token: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    headers: axum::http::HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let wants_stream = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/x-ndjson"));
    if wants_stream {
        return watch(state, org, query.prefix.unwrap_or_default());
    }
    let max_results = match query.max_results.as_deref() {
        None | Some("") => None,
        Some(text) => Some(text.parse::<u32>().map_err(|_| {
            ApiError::invalid(format!(
                "max_results = {text:?} is not a number from 1 to 50"
            ))
        })?),
    };
    // Clients that page with a larger page size get the largest we serve.
    let max_results = max_results.map(|m| m.min(sprite_api::sprite::LIST_MAX_RESULTS));
    let list = state
        .manager
        .list(
            &org,
            query.prefix.as_deref().unwrap_or(""),
            max_results,
            query
                .continuation_token
                .as_deref()
                .filter(|t| !t.is_empty()),
        )
        .await?;
    Ok(Json(list).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.manager.get(&org, &name).await?).into_response())
}

pub async fn update(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: UpdateSpriteRequest = parse_json(&body)?;
    Ok(Json(state.manager.update(&org, &name, request).await?).into_response())
}

pub async fn destroy(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.manager.destroy(&org, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, serde::Deserialize)]
pub struct SleepQuery {
    #[serde(default)]
    cold: Option<String>,
}

/// `POST /v1/sprites/{name}/sleep[?cold=false]` (ours): cold sleep now, or warm with
/// `cold=false`. 409 while a client is using the sprite.
pub async fn sleep(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path(name): Path<String>,
    query: Result<Query<SleepQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let cold = match query.cold.as_deref() {
        None | Some("") | Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "cold = {other:?} is not true or false"
            )))
        }
    };
    Ok(Json(state.manager.sleep(&org, &name, cold).await?).into_response())
}

/// `POST /v1/sprites/{name}/wake` (ours).
pub async fn wake(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.manager.wake(&org, &name).await?).into_response())
}

/// `POST /v1/sprites/{name}/upgrade`: moving a sprite to a newer base image belongs to
/// the images work; until then a clear 501 (never a 404 the SDKs read as "sprite not
/// found").
pub async fn upgrade(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.manager.check_exists(&org, &name)?;
    Err(ApiError::new(
        sprite_api::ErrorKind::NotImplemented,
        format!("upgrade is not served yet: sprite {name} keeps its image; create a new sprite (or fork this one) on the image you want"),
    ))
}

/// How often the watch looks for changes, and how often it says it is alive.
const WATCH_TICK: std::time::Duration = std::time::Duration::from_secs(1);
const WATCH_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(30);

/// `GET /v1/sprites` with `Accept: application/x-ndjson`: a line per sprite (name,
/// status, times, and the organization's counts as `org`), then a line whenever one
/// changes status, appears (`created`... its status) or goes (`destroyed`), and a
/// `{"type":"heartbeat"}` line every 30 s. Ends when the client leaves.
fn watch(state: AppState, org: String, prefix: String) -> Result<Response, ApiError> {
    let first = state.manager.statuses(&org, &prefix)?;
    let (lines, receiver) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let manager = &state.manager;
        let line = |value: serde_json::Value| {
            let mut text = value.to_string();
            text.push('\n');
            Ok(bytes::Bytes::from(text))
        };
        let event = |record: &sprite_core::db::SpriteRecord, status: &str| {
            let org = manager.org_counts(&record.org).unwrap_or_default();
            serde_json::json!({
                "name": record.name,
                "status": status,
                "last_running_at": record.last_running_at,
                "last_warming_at": manager.last_warming(&record.id),
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "org": org,
            })
        };
        let mut known: std::collections::BTreeMap<String, (sprite_core::db::SpriteRecord, String)> =
            std::collections::BTreeMap::new();
        for (record, status) in first {
            if lines
                .send(line(event(&record, status.as_str())))
                .await
                .is_err()
            {
                return;
            }
            known.insert(record.id.clone(), (record, status.as_str().to_string()));
        }
        let mut heartbeat = tokio::time::Instant::now() + WATCH_HEARTBEAT;
        loop {
            tokio::time::sleep(WATCH_TICK).await;
            let Ok(now) = manager.statuses(&org, &prefix) else {
                continue;
            };
            let mut changes = Vec::new();
            let mut seen = std::collections::BTreeSet::new();
            for (record, status) in now {
                seen.insert(record.id.clone());
                let status = status.as_str().to_string();
                let changed = known.get(&record.id).is_none_or(|(_, old)| *old != status);
                if changed {
                    changes.push(event(&record, &status));
                    known.insert(record.id.clone(), (record, status));
                }
            }
            let gone: Vec<String> = known
                .keys()
                .filter(|id| !seen.contains(*id))
                .cloned()
                .collect();
            for id in gone {
                if let Some((record, _)) = known.remove(&id) {
                    changes.push(event(&record, "destroyed"));
                }
            }
            if changes.is_empty() && tokio::time::Instant::now() >= heartbeat {
                let org = manager.org_counts(&org).unwrap_or_default();
                changes.push(serde_json::json!({
                    "type": "heartbeat",
                    "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "org": org,
                }));
            }
            for change in changes {
                heartbeat = tokio::time::Instant::now() + WATCH_HEARTBEAT;
                if lines.send(line(change)).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(crate::ndjson_response(receiver))
}

/// `POST /v1/sprites/{name}/restart`: stop and start again (services come back).
pub async fn restart(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let info = state.manager.restart(&org, &name).await?;
    Ok(Json(serde_json::json!({
        "sprite_name": info.name,
        "machine_id": info.id,
        "status": info.status,
        "message": format!("sprite {name} restarted"),
    }))
    .into_response())
}

/// `GET /v1/sprites/{name}/check`: the sprite's health (a sleeping sprite is not woken).
pub async fn check(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.manager.check(&org, &name).await?).into_response())
}

/// `GET /v1/organization`: the caller's organization, its sprites by status, limits.
pub async fn organization(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
) -> Result<Response, ApiError> {
    let counts = state.manager.org_counts(&org)?;
    Ok(Json(serde_json::json!({
        "name": counts.name,
        "sprites": counts.running + counts.warm + counts.cold,
        "running": counts.running,
        "warm": counts.warm,
        "cold": counts.cold,
        "running_limit": counts.running_limit,
        "warm_limit": counts.warm_limit,
        "max_sprites": state.manager.config().max_sprites,
    }))
    .into_response())
}
