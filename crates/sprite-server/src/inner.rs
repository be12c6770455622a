//! The API a sprite reaches from inside, at `/.sprite/api.sock` (API.md): its own
//! services (`/v1/services...`), checkpoints (`/v1/checkpoint`, `/v1/checkpoints...`) and
//! Tasks (`/v1/tasks...`). No token: reaching the socket is the credential, and every
//! request is about the sprite whose socket it came in on.

use crate::auth::Org;
use crate::error::parse_json;
use crate::{ApiError, AppState};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use tower::ServiceExt;

#[derive(Debug, Clone)]
struct SpriteId(String);

/// Keeps one listener per sprite on `<state>/run/api.sock` (bound into the sprite at
/// `/.sprite/run`), for as long as the daemon runs: new sprites get theirs when they
/// are created, destroyed ones lose it. Each change is one event about one sprite; every
/// sprite is looked at only at the start, when events were lost, and once a minute.
pub async fn serve_sprite_sockets(state: AppState) {
    let mut serving: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let Some(mut changes) = state.manager.take_sprite_changes() else {
        tracing::warn!("in-sprite API: sprite changes already taken; not serving sockets");
        return;
    };
    loop {
        reconcile(&state, &mut serving);
        let deadline = tokio::time::Instant::now() + RECONCILE_EVERY;
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Some(id) => serve_one(&state, &mut serving, &id),
                    None => return,
                },
                () = state.manager.lost_changes() => break,
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
}

/// How often every sprite's listener is checked, whatever the events said.
const RECONCILE_EVERY: Duration = Duration::from_secs(60);

/// Starts or stops the listener of sprite `id` as it exists or not.
fn serve_one(
    state: &AppState,
    serving: &mut HashMap<String, tokio::task::JoinHandle<()>>,
    id: &str,
) {
    match state.manager.sprite_run_dir(id) {
        Ok(Some(dir)) => {
            if serving.get(id).is_some_and(|task| !task.is_finished()) {
                return;
            }
            start_serving(state, serving, id, &dir);
        }
        Ok(None) => {
            if let Some(task) = serving.remove(id) {
                task.abort();
            }
        }
        Err(error) => {
            tracing::warn!(sprite = %id, "in-sprite API: {}", sprite_api::error_chain(&error))
        }
    }
}

/// Serves every sprite's socket and stops those of sprites that are gone.
fn reconcile(state: &AppState, serving: &mut HashMap<String, tokio::task::JoinHandle<()>>) {
    let dirs = match state.manager.sprite_run_dirs() {
        Ok(dirs) => dirs,
        Err(error) => {
            tracing::warn!("in-sprite API: {}", sprite_api::error_chain(&error));
            return;
        }
    };
    let ids: HashSet<&String> = dirs.iter().map(|(id, _)| id).collect();
    serving.retain(|id, task| {
        let keep = ids.contains(id) && !task.is_finished();
        if !keep {
            task.abort();
        }
        keep
    });
    for (id, dir) in &dirs {
        if !serving.contains_key(id) {
            start_serving(state, serving, id, dir);
        }
    }
}

fn start_serving(
    state: &AppState,
    serving: &mut HashMap<String, tokio::task::JoinHandle<()>>,
    id: &str,
    dir: &std::path::Path,
) {
    match listen(dir) {
        Ok(listener) => {
            let router = sprite_router(state.clone(), id.to_string());
            let task = tokio::spawn(serve_socket(listener, router));
            serving.insert(id.to_string(), task);
        }
        Err(error) => {
            tracing::warn!(sprite = %id, dir = %dir.display(), "cannot serve api.sock: {error}")
        }
    }
}

/// Serves one sprite's `api.sock`: at most [`crate::serve::SPRITE_SOCKET_LIMITS`]
/// connections at once, each sending its headers in time; a sprite that opens more is
/// refused, and the daemon, the API and other sprites never notice.
async fn serve_socket(listener: tokio::net::UnixListener, router: Router) {
    let gate = crate::serve::Gate::new(crate::serve::SPRITE_SOCKET_LIMITS);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!("in-sprite API accept: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match gate.admit(()) {
            Some(admission) => {
                crate::serve::serve_connection(stream, router.clone(), admission, None)
            }
            None => {
                tokio::spawn(crate::serve::refuse(
                    stream,
                    "too many open connections to this sprite's api.sock; close some and retry",
                ));
            }
        }
    }
}

fn listen(dir: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("api.sock");
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    // The sprite's users (ids mapped away from the host's) must be able to connect.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// The in-sprite API of one sprite.
pub fn sprite_router(state: AppState, sprite_id: String) -> Router {
    let api = crate::api_routes().with_state(state.clone());
    Router::new()
        .route("/v1/tasks", get(list_tasks).post(add_task))
        .route("/v1/tasks/{task}", put(renew_task).delete(delete_task))
        .fallback(
            move |State(state): State<AppState>,
                  Extension(SpriteId(id)): Extension<SpriteId>,
                  request: Request| {
                let api = api.clone();
                async move { forward(state, api, &id, request).await }
            },
        )
        .layer(Extension(SpriteId(sprite_id)))
        .with_state(state)
}

/// Services and checkpoints: the same routes as the outer API, for this sprite only.
async fn forward(state: AppState, api: Router, sprite_id: &str, mut request: Request) -> Response {
    let key = match state.manager.sprite_by_id(sprite_id) {
        Ok(found) => found,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let path = request.uri().path().to_string();
    // The sprite reads its own record (name, URL...) but never changes or destroys it.
    let info = path == "/v1/sprite" && request.method() == axum::http::Method::GET;
    let allowed = info
        || path == "/v1/services"
        || path.starts_with("/v1/services/")
        || path == "/v1/checkpoint"
        || path == "/v1/checkpoints"
        || path.starts_with("/v1/checkpoints/");
    if !allowed {
        return ApiError::new(
            sprite_api::ErrorKind::NotFound,
            "no such route here: the in-sprite API serves GET /v1/sprite, /v1/services, /v1/checkpoint(s) and /v1/tasks",
        )
        .into_response();
    }
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let rewritten = if info {
        format!("/v1/sprites/{}{query}", key.name)
    } else {
        format!("/v1/sprites/{}{}{query}", key.name, &path["/v1".len()..])
    };
    match rewritten.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => return ApiError::invalid("bad path").into_response(),
    }
    request.extensions_mut().insert(Org(key.org));
    request.extensions_mut().insert(sprite_core::Caller::Sprite);
    match api.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// `expire` of a task body: seconds, or a duration like `10m`.
fn expire_of(value: &serde_json::Value) -> Result<Duration, ApiError> {
    let seconds = match value {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(text) => {
            sprite_api::exec::parse_duration_secs(text).map(|s| s as f64)
        }
        _ => None,
    };
    let seconds = seconds.ok_or_else(|| {
        ApiError::invalid(format!(
            "expire = {value} is not a number of seconds or a duration such as 10m"
        ))
    })?;
    let most = sprite_core::tasks::MAX_TASK.as_secs_f64();
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= most) {
        return Err(ApiError::invalid(format!(
            "expire = {value} is out of range; use more than 0 and at most {most} seconds (1h)"
        )));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[derive(Debug, serde::Deserialize)]
struct NewTask {
    name: String,
    expire: serde_json::Value,
}

#[derive(Debug, serde::Deserialize)]
struct Renewal {
    expire: serde_json::Value,
}

async fn list_tasks(
    State(state): State<AppState>,
    Extension(SpriteId(id)): Extension<SpriteId>,
) -> Response {
    Json(state.manager.tasks().list(&id)).into_response()
}

async fn add_task(
    State(state): State<AppState>,
    Extension(SpriteId(id)): Extension<SpriteId>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let task: NewTask = parse_json(&body)?;
    let expire = expire_of(&task.expire)?;
    let info = state.manager.tasks().add(&id, &task.name, expire)?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn renew_task(
    State(state): State<AppState>,
    Extension(SpriteId(id)): Extension<SpriteId>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let renewal: Renewal = parse_json(&body)?;
    let expire = expire_of(&renewal.expire)?;
    Ok(Json(state.manager.tasks().renew(&id, &name, expire)?).into_response())
}

async fn delete_task(
    State(state): State<AppState>,
    Extension(SpriteId(id)): Extension<SpriteId>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.manager.tasks().delete(&id, &name)?;
    Ok((StatusCode::NO_CONTENT, Body::empty()).into_response())
}
