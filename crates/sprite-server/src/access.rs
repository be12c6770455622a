//! Tokens and organizations (admin scope only): `POST|GET
//! /v1/organizations/{org}/tokens` (the first is the SDKs' `create_token`), `DELETE
//! /v1/organizations/{org}/tokens/{id}`, `GET /v1/admin/tokens`, and
//! `GET /v1/admin/organizations[/{org}]` / `PUT /v1/admin/organizations/{org}` for
//! limits. In a cluster a token change reaches every host before it is answered.

use crate::{ApiError, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sprite_api::admin::{
    CreateTokenRequest, OrgLimits, OrgList, SetOrgLimits, TokenList, TokenScope,
};

/// The largest token or limits request body.
const MAX_BODY: usize = 16 << 10;

fn check_org(org: &str) -> Result<(), ApiError> {
    sprite_api::admin::validate_org_name(org).map_err(ApiError::invalid)
}

/// A token or limits body (absent: the defaults).
async fn json_body<T: serde::de::DeserializeOwned + Default>(
    body: axum::body::Body,
    what: &str,
    hint: &str,
) -> Result<T, ApiError> {
    Ok(crate::read_json_body(body, MAX_BODY, what, hint)
        .await?
        .unwrap_or_default())
}

/// `POST /v1/organizations/{org}/tokens`: mints a token (201 with `token`, shown once).
pub async fn create(
    State(state): State<AppState>,
    Path(org): Path<String>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    check_org(&org)?;
    let request: CreateTokenRequest = json_body(
        body,
        "token",
        "send {\"description\": \"...\", \"scope\": \"organization\" or \"admin\"}",
    )
    .await?;
    let scope = request.scope.unwrap_or(TokenScope::Organization);
    let (created, hash) = state.manager.access().create(
        &org,
        scope,
        request.description.as_deref().unwrap_or_default(),
    )?;
    if let Some(peers) = &state.peers {
        let grant = sprite_api::admin::TokenGrant {
            org: org.clone(),
            scope,
        };
        if let Err(error) = peers.publish_token(&hash, Some(&grant)).await {
            // Not valid anywhere, rather than valid on this host alone.
            let _ = state.manager.access().revoke(Some(&org), &created.info.id);
            return Err(error);
        }
    }
    tracing::info!(org = %org, id = %created.info.id, scope = scope.as_str(), "token created");
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `GET /v1/organizations/{org}/tokens`.
pub async fn list(
    State(state): State<AppState>,
    Path(org): Path<String>,
) -> Result<Json<TokenList>, ApiError> {
    check_org(&org)?;
    Ok(Json(TokenList {
        tokens: state.manager.access().list(Some(&org)),
    }))
}

/// `GET /v1/admin/tokens`: every organization's.
pub async fn list_all(State(state): State<AppState>) -> Json<TokenList> {
    Json(TokenList {
        tokens: state.manager.access().list(None),
    })
}

/// `DELETE /v1/organizations/{org}/tokens/{id}` (the id, or the token itself): 204.
/// The token is refused on every host from then on.
pub async fn revoke(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_org(&org)?;
    let access = state.manager.access();
    let Some((_, hash)) = access.find(Some(&org), &id) else {
        return Err(sprite_core::CoreError::TokenNotFound(id).into());
    };
    if let Some(peers) = &state.peers {
        // Withdrawn from the cluster first: a failure here leaves it valid everywhere
        // (and the revoke can be retried), never valid on other hosts alone.
        peers.publish_token(&hash, None).await?;
    }
    let (info, _) = access.revoke(Some(&org), &id)?;
    tracing::info!(org = %org, id = %info.id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/admin/organizations`.
pub async fn organizations(State(state): State<AppState>) -> Result<Json<OrgList>, ApiError> {
    Ok(Json(OrgList {
        organizations: state.manager.access().organizations()?,
    }))
}

/// `GET /v1/admin/organizations/{org}`.
pub async fn organization(
    State(state): State<AppState>,
    Path(org): Path<String>,
) -> Result<Json<OrgLimits>, ApiError> {
    check_org(&org)?;
    Ok(Json(state.manager.access().limits(&org)))
}

/// `PUT /v1/admin/organizations/{org}`: `{"running_limit", "warm_limit"}` (absent
/// fields stay) or `{"reset": true}`.
pub async fn set_limits(
    State(state): State<AppState>,
    Path(org): Path<String>,
    body: axum::body::Body,
) -> Result<Json<OrgLimits>, ApiError> {
    check_org(&org)?;
    let change: SetOrgLimits = json_body(
        body,
        "limits",
        "send {\"running_limit\": N, \"warm_limit\": N} or {\"reset\": true}",
    )
    .await?;
    if change == SetOrgLimits::default() {
        return Err(ApiError::invalid(
            "nothing to change: send running_limit, warm_limit or reset",
        ));
    }
    Ok(Json(state.manager.access().set_limits(&org, &change)?))
}
