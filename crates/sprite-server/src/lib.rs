//! The daemon's HTTP API: the Sprites v1 routes (wire-compatible with the hosted
//! product, see API.md), bearer auth, and exec over WebSocket and plain HTTP.
//!
//! Handlers are thin: each parses its request into a call on
//! [`sprite_core::SpriteManager`] and renders the answer. The router is a function of
//! its state ([`router`]), so tests drive it without a socket. Must not depend on libc
//! or rusqlite.
#![forbid(unsafe_code)]

mod access;
pub mod admin;
mod auth;
mod checkpoints;
pub mod console;
mod control;
mod error;
mod exec;
mod fs;
pub mod inner;
mod metrics;
pub mod openapi;
pub mod peers;
mod policy;
pub mod proxy;
pub mod serve;
mod services;
mod sprites;
mod tcp;
mod templates;

pub use auth::{require_token, token_from_header as auth_token_from_header, Org, Tokens};
pub use error::ApiError;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sprite_core::SpriteManager;
use std::sync::Arc;

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    pub manager: Arc<SpriteManager>,
    pub tokens: Arc<Tokens>,
    /// The other hosts of a cluster (None: a single host).
    pub peers: Option<Arc<dyn peers::Peers>>,
    /// Carries requests forwarded to other hosts.
    pub peer_client: peers::PeerClient,
    /// Notified when the daemon is asked to stop through the API (`POST
    /// /v1/admin/stop`); the daemon's listener waits on it.
    pub stop: Arc<tokio::sync::Notify>,
    /// A stop is under way (a second one is refused).
    pub(crate) stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The web console's sign-ins.
    pub console: Arc<console::Sessions>,
}

impl AppState {
    /// The state of a single host.
    pub fn new(manager: Arc<SpriteManager>, tokens: Arc<Tokens>) -> AppState {
        AppState {
            manager,
            tokens,
            peers: None,
            peer_client: peers::PeerClient::default(),
            stop: Arc::new(tokio::sync::Notify::new()),
            stopping: Default::default(),
            console: Arc::new(console::Sessions::default()),
        }
    }
}

async fn version_header(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        "sprite-version",
        HeaderValue::from_static(sprite_api::SERVER_VERSION),
    );
    response
}

async fn healthz(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "status": "ok",
        "version": sprite_api::SERVER_VERSION,
        "sprites_running": state.manager.running_count(),
        "pool_ready": state.manager.pool_ready(),
    }))
}

async fn images(State(state): State<AppState>) -> axum::Json<sprite_api::admin::ImageList> {
    axum::Json(sprite_api::admin::ImageList {
        images: state.manager.image_statuses(),
    })
}

#[derive(Debug, serde::Deserialize)]
struct ImportQuery {
    name: Option<String>,
}

/// `POST /v1/images?name=NAME` with a root filesystem tarball as the body (ours).
async fn import_image(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<ImportQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        return pull_image(state, body).await;
    }
    let name = query.name.ok_or_else(|| {
        ApiError::invalid(
            "name is missing: POST /v1/images?name=NAME with a tarball as the body (a root filesystem, docker-archive or OCI layout), or a JSON body {\"ref\": \"IMAGE\"} to pull from a registry",
        )
    })?;
    sprite_core::image::ImageStore::check_name(&name)?;
    let path = state.manager.upload_path();
    let received = async {
        let mut file = tokio::fs::File::create(&path).await?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk.map_err(std::io::Error::other)?)
                .await?;
        }
        file.flush().await
    }
    .await;
    let result = match received {
        Ok(()) => state.manager.import_image(&name, &path).await,
        Err(error) => Err(sprite_core::CoreError::UploadBroken(error)),
    };
    let _ = tokio::fs::remove_file(&path).await;
    Ok(axum::Json(result?).into_response())
}

/// `POST /v1/images/{image}/update` (ours): a new version of the image (built again,
/// or pulled again; an optional JSON body `{"username", "password"}` for a private
/// registry), with NDJSON progress and `complete` naming the newest version last.
async fn update_image(
    State(state): State<AppState>,
    axum::extract::Path(image): axum::extract::Path<String>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    sprite_core::image::ImageStore::check_name(&image)?;
    let credentials: sprite_api::admin::PullRequest = read_json_body(
        body,
        MAX_PULL_BODY,
        "update",
        "send nothing, or {\"username\": ..., \"password\": ...}",
    )
    .await?
    .unwrap_or_default();
    Ok(pull_response(move |progress| async move {
        state
            .manager
            .update_image(&image, &credentials, &*progress)
            .await
    }))
}

/// What hears a pull's progress: lines of its NDJSON answer.
type PullProgress = std::sync::Arc<dyn Fn(sprite_api::admin::PullEvent) + Send + Sync>;

/// An NDJSON answer of `work`'s progress, then `complete` with the name it answers or
/// `error`. The work goes on if the client leaves; a slow or gone client drops
/// progress lines, never the work.
fn pull_response<F, Fut>(work: F) -> Response
where
    F: FnOnce(PullProgress) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<String, sprite_core::CoreError>> + Send + 'static,
{
    let (sender, response) = ndjson_channel(16);
    tokio::spawn(async move {
        let lines = sender.clone();
        let progress: PullProgress = std::sync::Arc::new(move |event| {
            let _ = lines.try_send(Ok(ndjson_line(&event)));
        });
        let last = match work(progress).await {
            Ok(name) => sprite_api::admin::PullEvent::Complete { name },
            Err(error) => sprite_api::admin::PullEvent::Error {
                error: sprite_api::error_chain(&error),
            },
        };
        let _ = sender.send(Ok(ndjson_line(&last))).await;
    });
    response
}

/// A JSON request body of at most `limit` bytes: None when it is empty (or only
/// whitespace), else the value, or a 400 naming `what` and how to send it (`hint`).
pub(crate) async fn read_json_body<T: serde::de::DeserializeOwned>(
    body: axum::body::Body,
    limit: usize,
    what: &str,
    hint: &str,
) -> Result<Option<T>, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::invalid(format!(
            "the {what} request body is larger than {limit} bytes or broken"
        ))
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::invalid(format!("bad {what} request ({e}); {hint}")))
}

/// The largest pull request body.
const MAX_PULL_BODY: usize = 64 << 10;

/// `POST /v1/images` with `{"ref": ...}`: pulls from a registry, answering NDJSON
/// progress ([`sprite_api::admin::PullEvent`]) and `complete` or `error` last. The pull
/// goes on if the client leaves.
async fn pull_image(state: AppState, body: axum::body::Body) -> Result<Response, ApiError> {
    let hint = "send {\"ref\": \"[REGISTRY/]REPOSITORY[:TAG]\", \"name\": optional, \"username\"/\"password\": optional}";
    let request: sprite_api::admin::PullRequest = read_json_body(body, MAX_PULL_BODY, "pull", hint)
        .await?
        .ok_or_else(|| ApiError::invalid(format!("the pull request is empty; {hint}")))?;
    if request.reference.trim().is_empty() {
        return Err(ApiError::invalid(
            "ref is empty: name the image to pull, like docker.io/library/alpine:3.20",
        ));
    }
    if let Some(name) = &request.name {
        sprite_core::image::ImageStore::check_name(name)?;
    }
    Ok(pull_response(move |progress| async move {
        state.manager.pull_image(&request, &*progress).await
    }))
}

#[derive(Debug, serde::Deserialize)]
struct UsageQuery {
    since: Option<String>,
}

/// `GET /v1/sprites/{name}/usage[?since=]`: what it stores now, and its hourly history
/// since `since` (a time in RFC 3339 or a duration back from now like `7d`, `24h`;
/// default 24 hours).
async fn usage(
    State(state): State<AppState>,
    auth::SpritePath(key): auth::SpritePath,
    axum::extract::Query(query): axum::extract::Query<UsageQuery>,
) -> Result<axum::Json<sprite_api::admin::SpriteUsage>, ApiError> {
    let now = chrono::Utc::now();
    let since = match query.since.as_deref().map(str::trim) {
        None | Some("") => now - chrono::Duration::hours(24),
        Some(text) => parse_since(text, now).ok_or_else(|| {
            ApiError::invalid(format!(
                "since {text:?} is neither a time (2026-12-01T00:00:00Z) nor a duration back from now (90m, 24h, 7d)"
            ))
        })?,
    };
    let mut usage = state.manager.usage(&key).await?;
    usage.history = Some(
        state
            .manager
            .usage_history(&key, since.timestamp_millis().max(0) as u64)?,
    );
    Ok(axum::Json(usage))
}

/// A `since`: RFC 3339, or a duration back from `now` (`Nd` for days, or what
/// [`sprite_api::exec::parse_duration`] reads).
fn parse_since(
    text: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(time.with_timezone(&chrono::Utc));
    }
    let back = match text.strip_suffix('d') {
        Some(days) => chrono::Duration::days(
            days.parse::<i64>()
                .ok()
                .filter(|d| (0..=3650).contains(d))?,
        ),
        None => chrono::Duration::from_std(sprite_api::exec::parse_duration(text)?).ok()?,
    };
    now.checked_sub_signed(back)
}

async fn gc(
    State(state): State<AppState>,
) -> Result<axum::Json<sprite_api::admin::GcReport>, ApiError> {
    Ok(axum::Json(state.manager.collect_garbage().await?))
}

/// How often the server pings a WebSocket client, and how long it waits for any frame
/// from the client (clients ping every 15 s, and answer our pings) before it gives up
/// on it.
pub(crate) const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);
pub(crate) const IDLE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(45);

/// The ping timer of a long-lived WebSocket, and when its client was last heard from:
/// a client gone without closing (or one that never answers pings) is let go.
pub(crate) struct Keepalive {
    ping: tokio::time::Interval,
    heard: tokio::time::Instant,
}

impl Keepalive {
    pub(crate) fn new() -> Keepalive {
        let now = tokio::time::Instant::now();
        Keepalive {
            ping: tokio::time::interval_at(now + PING_INTERVAL, PING_INTERVAL),
            heard: now,
        }
    }

    /// Waits until a ping is due; `false` when the client has been silent too long.
    pub(crate) async fn ping_due(&mut self) -> bool {
        self.ping.tick().await;
        self.heard.elapsed() <= IDLE_READ_TIMEOUT
    }

    /// Notes a frame from the client.
    pub(crate) fn heard(&mut self) {
        self.heard = tokio::time::Instant::now();
    }
}

/// The sending side of an NDJSON answer (see [`ndjson_channel`]).
pub(crate) type NdjsonLines = tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>;

/// An `application/x-ndjson` answer, and the sender of its lines (at most `capacity`
/// wait for the client). The answer ends when the sender is dropped.
pub(crate) fn ndjson_channel(capacity: usize) -> (NdjsonLines, Response) {
    let (sender, receiver) = tokio::sync::mpsc::channel(capacity);
    (sender, ndjson_response(receiver))
}

/// A value as one NDJSON line.
pub(crate) fn ndjson_line(value: &impl serde::Serialize) -> bytes::Bytes {
    let mut text = serde_json::to_string(value).unwrap_or_default();
    text.push('\n');
    bytes::Bytes::from(text)
}

/// An `application/x-ndjson` answer whose lines come from `lines` as they are sent.
fn ndjson_response(
    lines: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
) -> Response {
    let stream = futures_util::stream::unfold(lines, |mut lines| async move {
        lines.recv().await.map(|item| (item, lines))
    });
    let mut response = (
        axum::http::StatusCode::OK,
        axum::body::Body::from_stream(stream),
    )
        .into_response();
    response.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// A router that notes each path it routes (so a test can hold the OpenAPI document
/// against every path and method served).
struct Routes {
    router: Router<AppState>,
    paths: Vec<&'static str>,
}

impl Routes {
    fn new() -> Routes {
        Routes {
            router: Router::new(),
            paths: Vec::new(),
        }
    }

    fn route(
        mut self,
        path: &'static str,
        method: axum::routing::MethodRouter<AppState>,
    ) -> Routes {
        self.paths.push(path);
        self.router = self.router.route(path, method);
        self
    }
}

/// The API's routes, without authentication (the in-sprite API reuses them).
fn api_routes() -> Router<AppState> {
    api_table().router
}

fn api_table() -> Routes {
    Routes::new()
        .route("/v1/sprites", post(sprites::create).get(sprites::list))
        .route(
            "/v1/sprites/{name}",
            get(sprites::get)
                .put(sprites::update)
                .delete(sprites::destroy),
        )
        .route(
            "/v1/sprites/{name}/exec",
            get(exec::exec_or_list).post(exec::exec_http),
        )
        .route("/v1/sprites/{name}/exec/{session}", get(exec::attach))
        .route("/v1/sprites/{name}/exec/{session}/kill", post(exec::kill))
        .route("/v1/sprites/{name}/checkpoint", post(checkpoints::create))
        .route("/v1/sprites/{name}/checkpoints", get(checkpoints::list))
        .route(
            "/v1/sprites/{name}/checkpoints/{id}",
            get(checkpoints::get).delete(checkpoints::delete),
        )
        .route(
            "/v1/sprites/{name}/checkpoints/{id}/restore",
            post(checkpoints::restore),
        )
        .route("/v1/sprites/{name}/usage", get(usage))
        .route("/v1/sprites/{name}/services", get(services::list))
        .route("/v1/sprites/{name}/services/signal", post(services::signal))
        .route(
            "/v1/sprites/{name}/services/{service}",
            get(services::get)
                .put(services::put)
                .delete(services::delete),
        )
        .route(
            "/v1/sprites/{name}/services/{service}/start",
            post(services::start),
        )
        .route(
            "/v1/sprites/{name}/services/{service}/stop",
            post(services::stop),
        )
        .route(
            "/v1/sprites/{name}/services/{service}/restart",
            post(services::restart),
        )
        .route(
            "/v1/sprites/{name}/services/{service}/logs",
            get(services::logs),
        )
        .route("/v1/sprites/{name}/proxy", get(tcp::proxy))
        .route("/v1/sprites/{name}/control", get(control::control))
        .route("/v1/sprites/{name}/ports/watch", get(tcp::watch_ports))
        .route(
            "/v1/sprites/{name}/policy/network",
            get(policy::get).post(policy::set).put(policy::set),
        )
        .route(
            "/v1/sprites/{name}/policy/resources",
            get(policy::get_resources)
                .post(policy::set_resources)
                .put(policy::set_resources)
                .delete(policy::reset_resources),
        )
        .route(
            "/v1/sprites/{name}/policy/privileges",
            get(policy::privileges)
                .post(policy::set_privileges)
                .put(policy::set_privileges)
                .delete(policy::privileges),
        )
        .route("/v1/sprites/{name}/fs/read", get(fs::read))
        .route("/v1/sprites/{name}/fs/write", axum::routing::put(fs::write))
        .route("/v1/sprites/{name}/fs/list", get(fs::list))
        .route(
            "/v1/sprites/{name}/fs/delete",
            axum::routing::delete(fs::delete),
        )
        .route("/v1/sprites/{name}/fs/rename", post(fs::rename))
        .route("/v1/sprites/{name}/fs/copy", post(fs::copy))
        .route("/v1/sprites/{name}/fs/chmod", post(fs::chmod))
        .route("/v1/sprites/{name}/fs/chown", post(fs::chown))
        .route("/v1/sprites/{name}/fs/watch", get(fs::watch))
        .route("/v1/sprites/{name}/upgrade", post(sprites::upgrade))
        .route("/v1/sprites/{name}/restart", post(sprites::restart))
        .route("/v1/sprites/{name}/check", get(sprites::check))
        .route("/v1/organization", get(sprites::organization))
        .route("/v1/sprites/{name}/sleep", post(sprites::sleep))
        .route("/v1/sprites/{name}/wake", post(sprites::wake))
        .route(
            "/v1/templates",
            get(templates::list).post(templates::create),
        )
        .route(
            "/v1/templates/{name}",
            get(templates::get).delete(templates::delete),
        )
        .route("/v1/images", get(images))
}

/// Routes that need a token with the admin scope: the host, images and other
/// organizations' tokens and limits.
fn admin_table() -> Routes {
    Routes::new()
        .route("/v1/admin/gc", post(gc))
        .route("/v1/admin/hosts", get(peers::hosts))
        .route("/v1/admin/hosts/{id}/drain", post(peers::drain))
        .route("/v1/sprites/{name}/move", post(peers::move_sprite))
        .route("/v1/images", post(import_image))
        .route("/v1/images/{image}/update", post(update_image))
        .route(
            "/v1/organizations/{org}/tokens",
            get(access::list).post(access::create),
        )
        .route(
            "/v1/organizations/{org}/tokens/{id}",
            axum::routing::delete(access::revoke),
        )
        .route("/v1/admin/tokens", get(access::list_all))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/admin/status", get(admin::status))
        .route("/v1/admin/stop", post(admin::stop))
        .route("/v1/admin/organizations", get(access::organizations))
        .route(
            "/v1/admin/organizations/{org}",
            get(access::organization).put(access::set_limits),
        )
}

/// Routes without a token: health, this document, the web console.
fn public_table() -> Routes {
    Routes::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi::openapi))
        .route("/", get(console::index))
        .route("/console", get(console::index))
        .route("/console/assets/{file}", get(console::assets))
        .route("/console/login", post(console::login))
        .route("/console/logout", post(console::logout))
        .route("/console/session", get(console::session))
}

/// Every path the router serves (each once).
pub fn route_paths() -> Vec<&'static str> {
    let mut paths = public_table().paths;
    paths.extend(api_table().paths);
    paths.extend(admin_table().paths);
    paths.sort_unstable();
    paths.dedup();
    paths
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let api = api_routes()
        .merge(
            admin_table()
                .router
                .route_layer(middleware::from_fn(auth::require_admin)),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    public_table()
        .router
        .merge(api)
        .fallback(|| async { ApiError::new(sprite_api::ErrorKind::NotFound, "no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), peers::route))
        .layer(middleware::from_fn(version_header))
        .with_state(state)
}
