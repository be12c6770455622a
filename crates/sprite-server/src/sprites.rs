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
                    code: None,
                    path: None,
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
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
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
