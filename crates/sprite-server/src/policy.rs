//! `GET|POST /v1/sprites/{name}/policy/network` (API.md, Policy): the sprite's egress
//! rules. A change applies at once to a running sprite (cutting connections that become
//! denied) and is kept for its next start otherwise.

use crate::auth::Org;
use crate::error::parse_json;
use crate::{ApiError, AppState};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use sprite_api::policy::NetworkPolicy;

pub async fn get(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path(name): Path<String>,
) -> Result<Json<NetworkPolicy>, ApiError> {
    Ok(Json(state.manager.network_policy(&org, &name)?))
}

pub async fn set(
    State(state): State<AppState>,
    Extension(Org(org)): Extension<Org>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let policy: NetworkPolicy = parse_json(&body)?;
    state
        .manager
        .set_network_policy(&org, &name, policy)
        .await?;
    // 204, no body: the policy clients of sprites-py, @fly/sprites and sprites-go
    // accept nothing else (a GET reads the policy back).
    Ok(StatusCode::NO_CONTENT)
}
