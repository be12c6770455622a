//! `GET|POST /v1/sprites/{name}/policy/network` (API.md, Policy): the sprite's egress
//! rules. A change applies at once to a running sprite (cutting connections that become
//! denied) and is kept for its next start otherwise.

use crate::auth::SpritePath;
use crate::error::parse_json;
use crate::{ApiError, AppState};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use sprite_api::policy::{NetworkPolicy, PrivilegesPolicy, ResourcesPolicy};

pub async fn get(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
) -> Result<Json<NetworkPolicy>, ApiError> {
    Ok(Json(state.manager.network_policy(&key)?))
}

pub async fn set(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let policy: NetworkPolicy = parse_json(&body)?;
    state.manager.set_network_policy(&key, policy).await?;
    // 204, no body: the policy clients of sprites-py, @fly/sprites and sprites-go
    // accept nothing else (a GET reads the policy back).
    Ok(StatusCode::NO_CONTENT)
}

/// `GET .../policy/resources`: memory, CPU and disk of the sprite.
pub async fn get_resources(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
) -> Result<Json<ResourcesPolicy>, ApiError> {
    Ok(Json(state.manager.resources_policy(&key)?))
}

/// `POST .../policy/resources`: changes the limits it names, live.
pub async fn set_resources(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    body: Bytes,
) -> Result<Json<ResourcesPolicy>, ApiError> {
    let request: ResourcesPolicy = parse_json(&body)?;
    Ok(Json(
        state
            .manager
            .set_resources_policy(&key, Some(request))
            .await?,
    ))
}

/// `DELETE .../policy/resources`: memory and CPU back to the daemon's defaults.
pub async fn reset_resources(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
) -> Result<Json<ResourcesPolicy>, ApiError> {
    Ok(Json(state.manager.set_resources_policy(&key, None).await?))
}

/// `GET .../policy/privileges`: the profile sprites run with (one: standard). A
/// `DELETE` (back to the default) answers the same: it is the default.
pub async fn privileges(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
) -> Result<Json<PrivilegesPolicy>, ApiError> {
    state.manager.check_exists(&key)?;
    Ok(Json(PrivilegesPolicy::standard()))
}

/// `POST .../policy/privileges`: accepts what sprites have, explains anything else.
pub async fn set_privileges(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    body: Bytes,
) -> Result<Json<PrivilegesPolicy>, ApiError> {
    state.manager.check_exists(&key)?;
    let request: PrivilegesPolicy = parse_json(&body)?;
    request.check().map_err(ApiError::invalid)?;
    Ok(Json(PrivilegesPolicy::standard()))
}
