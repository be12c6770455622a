//! `/v1/sprites` routes.

use crate::auth::{Org, SpritePath};
use crate::error::parse_json;
use crate::{ApiError, AppState};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sprite_api::sprite::{CreateSpriteRequest, UpdateSpriteRequest};
use sprite_api::ErrorBody;
use sprite_core::ids::SpriteKey;
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
            let existing = state
                .manager
                .get(&SpriteKey::new(org, name.clone()))
                .await?;
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
    axum::extract::RawQuery(raw_query): axum::extract::RawQuery,
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
    let elsewhere =
        crate::peers::list_elsewhere(&state, &headers, raw_query.as_deref().unwrap_or("")).await;
    let mut list = state
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
    if !elsewhere.is_empty() {
        merge_lists(&mut list, elsewhere, max_results);
    }
    Ok(Json(list).into_response())
}

/// One page of a cluster's list from every host's page after the same token: the
/// first `max_results` names of all of them, with a token after the last one when any
/// host has more. The organization's counts add up.
fn merge_lists(
    list: &mut sprite_api::sprite::SpriteList,
    others: Vec<sprite_api::sprite::SpriteList>,
    max_results: Option<u32>,
) {
    let limit = max_results.unwrap_or(sprite_api::sprite::LIST_MAX_RESULTS) as usize;
    let mut more = list.has_more;
    for other in others {
        more |= other.has_more;
        list.sprites.extend(other.sprites);
        if let (Some(counts), Some(theirs)) = (list.counts.as_mut(), other.counts.as_ref()) {
            counts.add(theirs);
        }
    }
    list.sprites.sort_by(|a, b| a.name.cmp(&b.name));
    if list.sprites.len() > limit {
        list.sprites.truncate(limit);
        more = true;
    }
    list.has_more = more;
    list.next_continuation_token = more
        .then(|| list.sprites.last().map(|s| s.name.clone()))
        .flatten();
    list.org.clone_from(&list.counts);
}

pub async fn get(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
) -> Result<Response, ApiError> {
    Ok(Json(state.manager.get(&key).await?).into_response())
}

pub async fn update(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: UpdateSpriteRequest = parse_json(&body)?;
    Ok(Json(state.manager.update(&key, request).await?).into_response())
}

pub async fn destroy(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
) -> Result<Response, ApiError> {
    state.manager.destroy(&key).await?;
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
    SpritePath(key): SpritePath,
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
    Ok(Json(state.manager.sleep(&key, cold).await?).into_response())
}

/// `POST /v1/sprites/{name}/wake` (ours).
pub async fn wake(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
) -> Result<Response, ApiError> {
    Ok(Json(state.manager.wake(&key).await?).into_response())
}

/// How often the watch looks for changes, and how often it says it is alive.
const WATCH_TICK: std::time::Duration = std::time::Duration::from_secs(1);
const WATCH_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(30);

/// `GET /v1/sprites` with `Accept: application/x-ndjson`: a line per sprite (name,
/// status, times, and the organization's counts as `org`), then a line whenever one
/// changes status, appears or goes (`destroyed`), and a `{"type":"heartbeat"}` line
/// after 30 s without one. Looks once a second; ends when the client leaves.
fn watch(state: AppState, org: String, prefix: String) -> Result<Response, ApiError> {
    type Known = std::collections::BTreeMap<
        sprite_core::ids::SpriteId,
        (sprite_core::db::SpriteRecord, String),
    >;
    let first = state.manager.statuses(&org, &prefix)?;
    let (lines, response) = crate::ndjson_channel(16);
    tokio::spawn(async move {
        let manager = &state.manager;
        let event = |record: &sprite_core::db::SpriteRecord,
                     status: &str,
                     counts: &sprite_api::sprite::OrgCounts| {
            serde_json::json!({
                "name": record.name,
                "status": status,
                "last_running_at": record.last_running_at,
                "last_warming_at": manager.last_warming_at(&record.id),
                "timestamp": sprite_core::time::now(),
                "org": counts,
            })
        };
        let mut known = Known::new();
        let mut heartbeat = tokio::time::Instant::now();
        let mut first = Some(first);
        loop {
            let now = match first.take() {
                Some(first) => first,
                None => {
                    tokio::select! {
                        () = tokio::time::sleep(WATCH_TICK) => {}
                        () = lines.closed() => return,
                    }
                    match manager.statuses(&org, &prefix) {
                        Ok(now) => now,
                        Err(_) => continue,
                    }
                }
            };
            // What changed since the last look (everything, the first time).
            let mut changes = Vec::new();
            let mut seen = std::collections::BTreeSet::new();
            for (record, status) in now {
                seen.insert(record.id.clone());
                let status = status.as_str().to_string();
                if known.get(&record.id).is_none_or(|(_, old)| *old != status) {
                    changes.push((record.clone(), status.clone()));
                    known.insert(record.id.clone(), (record, status));
                }
            }
            known.retain(|id, (record, _)| {
                let stays = seen.contains(id);
                if !stays {
                    changes.push((record.clone(), "destroyed".into()));
                }
                stays
            });
            // One count of the organization a look, for every line it sends.
            let quiet = tokio::time::Instant::now() >= heartbeat + WATCH_HEARTBEAT;
            if !changes.is_empty() || quiet {
                let counts = manager.org_counts(&org).unwrap_or_default();
                let mut out: Vec<serde_json::Value> = changes
                    .iter()
                    .map(|(record, status)| event(record, status, &counts))
                    .collect();
                if out.is_empty() {
                    out.push(serde_json::json!({
                        "type": "heartbeat",
                        "timestamp": sprite_core::time::now(),
                        "org": counts,
                    }));
                }
                for line in out {
                    if lines.send(Ok(crate::ndjson_line(&line))).await.is_err() {
                        return;
                    }
                }
                heartbeat = tokio::time::Instant::now();
            }
        }
    });
    Ok(response)
}

/// `POST /v1/sprites/{name}/restart`: stop and start again (services come back).
pub async fn restart(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
) -> Result<Response, ApiError> {
    let info = state.manager.restart(&key).await?;
    Ok(Json(serde_json::json!({
        "sprite_name": info.name,
        "machine_id": info.id,
        "status": info.status,
        "message": format!("sprite {key} restarted"),
    }))
    .into_response())
}

/// `GET /v1/sprites/{name}/check`: the sprite's health (a sleeping sprite is not woken).
pub async fn check(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
) -> Result<Response, ApiError> {
    Ok(Json(state.manager.check(&key).await?).into_response())
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

/// `POST /v1/sprites/{name}/upgrade`: moves the sprite onto the newest version of its
/// image (a checkpoint first; restoring it undoes the upgrade). The SDKs read only the
/// status (200 or 204); the body says what happened.
pub async fn upgrade(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
) -> Result<axum::Json<sprite_api::sprite::UpgradeReport>, ApiError> {
    Ok(axum::Json(state.manager.upgrade(&key).await?))
}
