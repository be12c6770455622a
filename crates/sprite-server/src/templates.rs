//! `/v1/templates` (ours): named copies of a sprite's checkpoint that new sprites start
//! from (`template` on create), per organization.

use crate::auth::Org;
use crate::error::parse_json;
use crate::{ApiError, AppState};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sprite_api::sprite::{CreateTemplateRequest, TemplateInfo, TemplateList};

pub async fn create(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: CreateTemplateRequest = parse_json(&body)?;
    let info = state.manager.create_template(&org, request).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

pub async fn list(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
) -> Result<Json<TemplateList>, ApiError> {
    Ok(Json(TemplateList {
        templates: state.manager.templates(&org).await?,
    }))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path(name): Path<String>,
) -> Result<Json<TemplateInfo>, ApiError> {
    Ok(Json(state.manager.template(&org, &name).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.manager.delete_template(&org, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
