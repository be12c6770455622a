//! Any host answers: in a cluster, a request about a sprite another host owns is
//! forwarded to that host as it came (HTTP with streaming bodies both ways, WebSocket
//! and other upgrades), a create goes to the host placement picks, and a list gathers
//! every host's sprites. The cluster itself (etcd) is behind [`Peers`], which the
//! daemon provides; without it nothing here runs.

use crate::error::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sprite_api::admin::{DrainReport, HostList, HostStatus, MoveReport, MoveRequest};
use std::time::Duration;

/// Marks a request one host forwarded to another: it is answered there, never sent
/// on again (one hop at most, whatever the hosts believe about owners).
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("sprite-forwarded-by");

/// A host of the cluster, as requests reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: String,
    /// Its API (`http://host:port`).
    pub api: String,
    /// Its URL proxy (`http://host:port`).
    pub proxy: String,
}

/// The other hosts of a cluster, as the API needs them.
pub trait Peers: Send + Sync + std::fmt::Debug {
    /// This host's id.
    fn host_id(&self) -> &str;
    /// The host that owns sprite `org/name`, when it is another host.
    fn owner(&self, org: &str, name: &str) -> Option<Peer>;
    /// The host that owns the sprite a URL names (`name` in any organization), when it
    /// is another host.
    fn owner_by_name(&self, name: &str) -> Option<Peer>;
    /// Where a new sprite goes: None for this host. `wanted` is a host the client asked
    /// for; an unknown or draining one is an error saying so.
    fn place(&self, wanted: Option<&str>) -> Result<Option<Peer>, String>;
    /// The organization of a token published by any host.
    fn grant_of_token(&self, token: &str) -> Option<sprite_api::admin::TokenGrant>;
    /// Makes a token (by its hash) valid on every host with `grant`; None withdraws it.
    fn publish_token<'a>(
        &'a self,
        hash: &'a str,
        grant: Option<&'a sprite_api::admin::TokenGrant>,
    ) -> BoxFuture<'a, Result<(), ApiError>>;
    /// Every live host but this one.
    fn others(&self) -> Vec<Peer>;
    /// Where a sprite that is not on this host is. `sure`: ask the directory itself,
    /// not this host's picture of it (which may trail a move by a moment). A sprite
    /// the directory gives to this host that is not here yet (just taken over or
    /// moved here) is brought here first.
    fn locate<'a>(&'a self, org: &'a str, name: &'a str, sure: bool) -> BoxFuture<'a, Location>;
    /// Moves a sprite of this host to another (`to`, or one placement picks).
    fn move_sprite<'a>(
        &'a self,
        org: &'a str,
        name: &'a str,
        to: Option<&'a str>,
    ) -> BoxFuture<'a, Result<MoveReport, ApiError>>;
    /// Takes no new sprites and moves every sprite of this host away.
    fn drain(&self) -> BoxFuture<'_, Result<DrainReport, ApiError>>;
    /// The live hosts with their load.
    fn hosts(&self) -> Vec<HostStatus>;
}

/// Where a sprite is, as [`Peers::locate`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// On this host, or nowhere (then this host answers 404).
    Here,
    /// On another live host.
    At(Peer),
    /// Its host is gone and no live host has taken it over yet.
    Lost { host: String },
    /// It is being handed from one host to another right now.
    Moving,
}

/// Most hosts a request passes through (each one's picture of the cluster may trail a
/// move; the last one asks the directory itself).
const MAX_HOPS: usize = 3;

/// The client that carries forwarded requests: kept-alive connections to each peer,
/// no delay on small writes, a bounded connect.
#[derive(Debug, Clone)]
pub struct PeerClient {
    client: hyper_util::client::legacy::Client<HttpConnector, Body>,
}

impl Default for PeerClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .build(connector);
        PeerClient { client }
    }
}

/// Headers of one connection, never passed on (an upgrade keeps `connection` and
/// `upgrade`, which the hop needs).
const HOP_BY_HOP: [&str; 6] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
];

fn strip_hop_headers(headers: &mut axum::http::HeaderMap, upgrade: bool) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if !upgrade {
        headers.remove(axum::http::header::CONNECTION);
        headers.remove(axum::http::header::UPGRADE);
        headers.remove(axum::http::header::TRANSFER_ENCODING);
    }
}

impl PeerClient {
    /// Sends `request` to `base` (a peer's `http://host:port`) as it is, marked as
    /// forwarded by `hops` (the hosts it passed, comma-separated), and answers with the
    /// peer's response as it streams in. An upgrade is joined end to end.
    pub async fn forward(
        &self,
        base: &str,
        hops: &str,
        mut request: Request,
    ) -> Result<Response<hyper::body::Incoming>, String> {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let uri: Uri = format!("{}{path}", base.trim_end_matches('/'))
            .parse()
            .map_err(|e| format!("peer address {base}: {e}"))?;
        let upgrade = request.headers().contains_key(axum::http::header::UPGRADE);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        *request.uri_mut() = uri;
        *request.version_mut() = axum::http::Version::HTTP_11;
        strip_hop_headers(request.headers_mut(), upgrade);
        if let Ok(value) = HeaderValue::from_str(hops) {
            request.headers_mut().insert(FORWARDED_BY, value);
        }
        let mut response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("{base} did not answer: {}", sprite_api::error_chain(&e)))?;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let server_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(crate::proxy::forward::join_upgrades(
                    client_upgrade,
                    server_upgrade,
                ));
            }
        } else {
            strip_hop_headers(response.headers_mut(), false);
        }
        Ok(response)
    }
}

fn unreachable_peer(peer: &Peer, error: &str) -> Response {
    ApiError::new(
        sprite_api::ErrorKind::Unavailable,
        format!(
            "the sprite's host {} could not be reached ({error}); retry, or wait for its sprites to move to a live host",
            peer.id
        ),
    )
    .into_response()
}

/// Forwards to `peer`'s API and renders its answer (or a 503 saying which host failed).
async fn to_peer(state: &AppState, hops: &str, peer: &Peer, request: Request) -> Response {
    match state.peer_client.forward(&peer.api, hops, request).await {
        Ok(response) => response.map(Body::new),
        Err(error) => unreachable_peer(peer, &error),
    }
}

/// How long a list waits for another host's page.
const LIST_PATIENCE: Duration = Duration::from_secs(5);

/// The largest create body read to place it (creates are small JSON documents).
const SMALL_BODY_LIMIT: usize = 256 * 1024;

/// The largest page of a list another host may answer.
const LIST_BODY_LIMIT: usize = 16 << 20;

/// The outermost layer of the API in a cluster: requests about another host's sprite
/// go there; creates go where placement says. Everything else, and anything a peer
/// forwarded, is answered here.
pub(crate) async fn route(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(peers) = state.peers.clone() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    let creates = request.method() == axum::http::Method::POST
        && matches!(path, "/v1/sprites" | "/v1/sprites/" | "/v1/templates");
    if !creates && !path.starts_with("/v1/sprites") {
        return next.run(request).await;
    }
    let rest = path.strip_prefix("/v1/sprites").unwrap_or_default();
    let rest = rest.to_string();
    // Hosts this request passed through already (a handful: beyond MAX_HOPS it is
    // answered here anyway).
    let hops: Vec<String> = request
        .headers()
        .get(FORWARDED_BY)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .take(MAX_HOPS + 1)
                .map(|h| h.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    // Unknown tokens are refused here, by the auth layer (before any body is read).
    let Some(org) = crate::auth::grant_of_request(&state, request.headers()).map(|g| g.org) else {
        return next.run(request).await;
    };
    if creates {
        if hops.is_empty() {
            return place(&state, peers.as_ref(), &org, request, next).await;
        }
        return next.run(request).await;
    }
    if rest.is_empty() || rest == "/" {
        return next.run(request).await;
    }
    let Some(name) = rest.strip_prefix('/').and_then(|r| r.split('/').next()) else {
        return next.run(request).await;
    };
    let key = sprite_core::ids::SpriteKey::new(org.as_str(), name);
    if state.manager.check_exists(&key).is_ok() {
        return next.run(request).await;
    }
    match peers.locate(&org, name, !hops.is_empty()).await {
        Location::At(peer) if hops.len() < MAX_HOPS && !hops.contains(&peer.id) => {
            let mut chain = hops;
            chain.push(peers.host_id().to_string());
            to_peer(&state, &chain.join(","), &peer, request).await
        }
        Location::Lost { host } => ApiError::new(
            sprite_api::ErrorKind::Unavailable,
            format!(
                "sprite {name} was on host {host}, which is gone; another host takes it over within seconds: retry"
            ),
        )
        .into_response(),
        Location::Moving => ApiError::new(
            sprite_api::ErrorKind::Unavailable,
            format!("sprite {name} is moving to another host right now: retry in a moment"),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

fn not_a_cluster() -> ApiError {
    ApiError::invalid(
        "this daemon is not part of a cluster (start it with --cluster etcd://HOST:PORT)",
    )
}

/// `POST /v1/sprites/{name}/move` (ours): reaches the sprite's owner (the route layer
/// forwards it), which hands it over.
pub(crate) async fn move_sprite(
    State(state): State<AppState>,
    crate::auth::SpritePath(key): crate::auth::SpritePath,
    body: axum::body::Bytes,
) -> Result<axum::Json<MoveReport>, ApiError> {
    let peers = state.peers.clone().ok_or_else(not_a_cluster)?;
    let request: MoveRequest = if body.is_empty() {
        MoveRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid(format!(
                "the move request is not valid JSON ({e}); send {{\"to\": \"HOST\"}} or nothing"
            ))
        })?
    };
    state.manager.check_exists(&key)?;
    let report = peers
        .move_sprite(&key.org, &key.name, request.to.as_deref())
        .await?;
    Ok(axum::Json(report))
}

/// `GET /v1/admin/hosts` (ours).
pub(crate) async fn hosts(State(state): State<AppState>) -> Result<axum::Json<HostList>, ApiError> {
    let peers = state.peers.clone().ok_or_else(not_a_cluster)?;
    Ok(axum::Json(HostList {
        hosts: peers.hosts(),
    }))
}

/// `POST /v1/admin/hosts/{id}/drain` (ours): on that host (forwarded there).
pub(crate) async fn drain(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    request: Request,
) -> Response {
    let Some(peers) = state.peers.clone() else {
        return not_a_cluster().into_response();
    };
    if id == peers.host_id() {
        return match peers.drain().await {
            Ok(report) => axum::Json(report).into_response(),
            Err(error) => error.into_response(),
        };
    }
    if request.headers().contains_key(FORWARDED_BY) {
        return ApiError::invalid(format!("host {id} is not this host")).into_response();
    }
    match peers.others().into_iter().find(|peer| peer.id == id) {
        Some(peer) => to_peer(&state, peers.host_id(), &peer, request).await,
        None => ApiError::new(
            sprite_api::ErrorKind::NotFound,
            format!("no live host {id} in the cluster (sprite admin hosts lists them)"),
        )
        .into_response(),
    }
}

/// A small JSON request body, read whole (to route it by what it names) and parsed; a
/// body that does not parse routes as empty and is the handler's to refuse.
async fn read_small_json(
    request: Request,
    what: &str,
) -> Result<
    (
        axum::http::request::Parts,
        axum::body::Bytes,
        serde_json::Value,
    ),
    Response,
> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, SMALL_BODY_LIMIT)
        .await
        .map_err(|_| {
            ApiError::invalid(format!(
                "the {what} request is larger than {SMALL_BODY_LIMIT} bytes (or broke off)"
            ))
            .into_response()
        })?;
    let parsed = serde_json::from_slice(&bytes).unwrap_or_default();
    Ok((parts, bytes, parsed))
}

/// A create: on the host of the sprite a fork comes from, else on the host the client
/// named (`host`), else on the host placement picks. A template is made on the host
/// of the sprite it copies.
async fn place(
    state: &AppState,
    peers: &dyn Peers,
    org: &str,
    request: Request,
    next: Next,
) -> Response {
    let template = request.uri().path() == "/v1/templates";
    let what = if template { "template" } else { "create" };
    let (parts, bytes, parsed) = match read_small_json(request, what).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    let source = parsed.pointer("/from/sprite").and_then(|v| v.as_str());
    let target = match source {
        Some(source) => peers.owner(org, source),
        None if template => None,
        None => match peers.place(parsed.get("host").and_then(|v| v.as_str())) {
            Ok(target) => target,
            Err(reason) => return ApiError::invalid(reason).into_response(),
        },
    };
    let request = Request::from_parts(parts, Body::from(bytes));
    match target {
        Some(peer) => to_peer(state, peers.host_id(), &peer, request).await,
        None => next.run(request).await,
    }
}

/// The rest of a list from the other hosts: each answers its own sprites after the
/// same token (`query` as the client sent it); a host that does not answer is left
/// out and logged.
pub(crate) async fn list_elsewhere(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    query: &str,
) -> Vec<sprite_api::sprite::SpriteList> {
    let Some(peers) = state.peers.clone() else {
        return Vec::new();
    };
    if headers.contains_key(FORWARDED_BY) {
        return Vec::new();
    }
    let asks = peers.others().into_iter().map(|peer| {
        let peers = peers.clone();
        let client = state.peer_client.clone();
        let mut request = Request::new(Body::empty());
        *request.uri_mut() = format!("/v1/sprites?{query}").parse().unwrap_or_default();
        if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
            request
                .headers_mut()
                .insert(axum::http::header::AUTHORIZATION, auth.clone());
        }
        async move {
            let answer = async {
                // A host that accepts connections but does not answer (paused, or
                // overloaded) is left out after a while, not waited for.
                let response = tokio::time::timeout(
                    LIST_PATIENCE,
                    client.forward(&peer.api, peers.host_id(), request),
                )
                .await
                .map_err(|_| "no answer".to_string())??;
                if !response.status().is_success() {
                    return Err(format!("answered {}", response.status()));
                }
                let body = axum::body::to_bytes(Body::new(response.into_body()), LIST_BODY_LIMIT);
                let bytes = tokio::time::timeout(LIST_PATIENCE, body)
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                serde_json::from_slice::<sprite_api::sprite::SpriteList>(&bytes)
                    .map_err(|e| e.to_string())
            }
            .await;
            answer
                .inspect_err(|error| tracing::warn!(host = %peer.id, "list: {error}"))
                .ok()
        }
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}
