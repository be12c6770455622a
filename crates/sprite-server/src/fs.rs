//! The file-system API, `/v1/sprites/{name}/fs/...` (API.md, "File system"). Paths are
//! cleaned against `workingDir` here and resolved by the kernel inside the sprite's
//! root by `sprite_core::files`; every route wakes a sleeping sprite and keeps it awake
//! while it works. Bodies stream both ways through a bounded channel to a blocking
//! thread, so no file is ever held in memory whole.

use crate::auth::SpritePath;
use crate::error::parse_json;
use crate::{ApiError, AppState};
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{SinkExt, StreamExt};
use sprite_api::fs::{
    clean_path, format_mode, parse_mode, parse_mode_text, ChmodRequest, ChownRequest, CopyRequest,
    DeleteRequest, FsAffected, FsCode, FsDeleted, FsList, FsRenamed, FsWritten, RenameRequest,
    WatchSubscribe,
};
use sprite_api::ErrorKind;
use sprite_core::files::{FsError, SpriteRoot, Watcher};
use sprite_core::ids::SpriteKey;
use sprite_core::CoreError;
use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::sync::Arc;

/// Size of the pieces a file is read and written in.
const CHUNK: usize = 1 << 20;
/// Pieces in flight between the network and the disk thread.
const IN_FLIGHT: usize = 8;
/// Most `fs/watch` sockets open at once on a daemon.
const MAX_WATCHES: usize = 64;
static OPEN_WATCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The query of a file-system route, read leniently (`true`, `1`, `yes`).
struct Params(HashMap<String, String>);

impl Params {
    fn parse(query: Option<String>) -> Params {
        Params(
            form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn flag(&self, key: &str) -> Result<Option<bool>, ApiError> {
        self.get(key).map(|v| parse_flag(key, v)).transpose()
    }

    /// The cleaned absolute path of `path` (default: the working directory).
    fn path(&self) -> Result<String, ApiError> {
        let working_dir = self.get("workingDir");
        let path = self.get("path").or(working_dir).unwrap_or("/");
        clean(working_dir, path)
    }
}

/// Whether the request comes from sprites-py (its User-Agent is `sprites-py/VERSION`,
/// sometimes followed by client signals).
fn from_sprites_py(headers: &HeaderMap) -> bool {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|agent| agent.starts_with("sprites-py/"))
}

fn parse_flag(key: &str, value: &str) -> Result<bool, ApiError> {
    match value.to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        other => Err(ApiError::invalid(format!(
            "{key}={other} is not a boolean: use true or false"
        ))),
    }
}

fn clean(working_dir: Option<&str>, path: &str) -> Result<String, ApiError> {
    clean_path(working_dir, path)
        .map_err(|message| fs_error(FsError::new(FsCode::Invalid, path, message)))
}

fn fs_error(error: FsError) -> ApiError {
    CoreError::Fs(error).into()
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, FsError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("file task failed: {e}")))?
        .map_err(fs_error)
}

async fn root(
    state: &AppState,
    key: &SpriteKey,
) -> Result<(Arc<SpriteRoot>, sprite_core::activity::ActivityGuard), ApiError> {
    let (root, guard) = state.manager.fs_root(key).await?;
    Ok((Arc::new(root), guard))
}

/// Opens the sprite's root (waking it; it stays awake meanwhile) and runs `work` there
/// on the blocking pool, as the sprite's root user.
async fn in_sprite<T: Send + 'static>(
    state: &AppState,
    key: &SpriteKey,
    work: impl FnOnce(&SpriteRoot) -> Result<T, FsError> + Send + 'static,
) -> Result<T, ApiError> {
    let (root, _awake) = root(state, key).await?;
    blocking(move || root.run(work)).await
}

/// A `Range: bytes=...` header against a file of `size` bytes: `Ok(None)` to send it
/// whole, `Ok(Some((start, length)))` for one range, `Err` when it cannot be met.
fn parse_range(value: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None); // another unit: ignored, as HTTP allows
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: the whole file is a valid answer
    }
    let (first, last) = spec.split_once('-').ok_or(())?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let suffix: u64 = last.parse().map_err(|_| ())?;
        if suffix == 0 || size == 0 {
            return Err(());
        }
        let length = suffix.min(size);
        return Ok(Some((size - length, length)));
    }
    let start: u64 = first.parse().map_err(|_| ())?;
    if start >= size {
        return Err(());
    }
    let end = if last.is_empty() {
        size - 1
    } else {
        last.parse::<u64>().map_err(|_| ())?.min(size - 1)
    };
    if end < start {
        return Err(());
    }
    Ok(Some((start, end - start + 1)))
}

/// `GET fs/read?path=&workingDir=`, honouring `Range`.
pub async fn read(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = Params::parse(query).path()?;
    let (root, guard) = root(&state, &key).await?;
    let opened = path.clone();
    let (file, size) = blocking(move || root.run(|r| r.open_read(&opened))).await?;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) => match parse_range(value, size) {
            Ok(range) => range,
            Err(()) => {
                let mut response = fs_error(FsError::new(
                    FsCode::Invalid,
                    &path,
                    format!("range {value} is outside {path}, which has {size} bytes"),
                ))
                .into_response();
                *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return Ok(response);
            }
        },
        None => None,
    };
    let (start, length) = range.unwrap_or((0, size));
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        let mut left = length;
        if start > 0 {
            if let Err(error) = file.seek(std::io::SeekFrom::Start(start)) {
                let _ = sender.blocking_send(Err(error));
                return;
            }
        }
        while left > 0 {
            let mut buffer = vec![0u8; CHUNK.min(left as usize)];
            match file.read(&mut buffer) {
                Ok(0) => break, // the file shrank meanwhile: the answer ends short
                Ok(n) => {
                    buffer.truncate(n);
                    left -= n as u64;
                    if sender.blocking_send(Ok(Bytes::from(buffer))).is_err() {
                        return; // the client went away
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    let _ = sender.blocking_send(Err(error));
                    return;
                }
            }
        }
    });
    // The guard rides along with the body: the sprite stays awake until it is sent.
    let stream =
        futures_util::stream::unfold((receiver, guard), |(mut receiver, guard)| async move {
            receiver.recv().await.map(|item| (item, (receiver, guard)))
        });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let end = start + length.saturating_sub(1);
        if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

/// `PUT fs/write?path=&workingDir=&mode=&mkdirParents=` (default true) with the file as
/// the body.
/// The body goes to a temporary file beside the target, which replaces the target
/// only once complete and synced: a broken upload leaves the old file as it was.
pub async fn write(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Json<FsWritten>, ApiError> {
    let params = Params::parse(query);
    let path = params.path()?;
    let mode = params
        .get("mode")
        .map(parse_mode_text)
        .transpose()
        .map_err(|message| fs_error(FsError::new(FsCode::Invalid, &path, message)))?;
    // Missing parents are made unless asked not to: the Go SDK's Mkdir and the JS
    // SDK's non-recursive mkdir write DIR/.keep without the flag and expect DIR.
    let make_parents = params
        .flag("mkdirParents")?
        .or(params.flag("mkdir")?)
        .unwrap_or(true);
    let (root, _awake) = root(&state, &key).await?;
    let finisher = root.clone();
    let target = path.clone();
    let (pending, file) =
        blocking(move || root.run(|r| r.start_write(&target, mode, make_parents))).await?;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(IN_FLIGHT);
    let written_path = path.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let failed = |e: std::io::Error| {
            FsError::new(
                FsCode::Io,
                &written_path,
                format!("write {written_path}: {e}"),
            )
        };
        // Bodies arrive in pieces of a few KiB to a few hundred: the disk gets whole MiBs.
        let mut buffered = std::io::BufWriter::with_capacity(CHUNK, file);
        // The disk works while the body is still arriving, not all at the end.
        let writeback = sprite_sandbox::sys::WritebackPacer::default();
        while let Some(chunk) = receiver.blocking_recv() {
            buffered.write_all(&chunk).map_err(failed)?;
            let _ = writeback.wrote(buffered.get_ref(), chunk.len() as u64);
        }
        buffered.into_inner().map_err(|e| failed(e.into_error()))
    });
    let mut stream = body.into_data_stream();
    let mut broken = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                if sender.send(chunk).await.is_err() {
                    break; // the writer failed: its error is reported below
                }
            }
            Err(error) => {
                broken = Some(error);
                break;
            }
        }
    }
    drop(sender);
    let file = writer
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("file task failed: {e}")))?
        .map_err(fs_error)?;
    if let Some(error) = broken {
        // `pending` is dropped here, removing the partial file.
        return Err(ApiError::invalid(format!(
            "the upload of {path} broke off ({error}); the file was not changed"
        )));
    }
    let (path, size, mode) = blocking(move || finisher.run(|_| pending.finish(file))).await?;
    Ok(Json(FsWritten {
        path,
        size,
        mode: format_mode(mode),
    }))
}

/// `GET fs/list?path=&workingDir=&recursive=&pattern=&includeSelf=`.
///
/// The SDKs' `stat`, `exists` and `is_dir` are this same request, reading
/// `entries[0]`. A directory's own entry comes first (with no name) when asked with
/// `includeSelf`, and by default for sprites-py, whose `iterdir` skips nameless entries
/// (docs/sdk-compat.md, "stat of a directory"). Other clients get the children only:
/// the JS and Go SDKs' `readdir` would list the directory in itself.
pub async fn list(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<FsList>, ApiError> {
    let params = Params::parse(query);
    let path = params.path()?;
    let recursive = params.flag("recursive")?.unwrap_or(false);
    let pattern = params
        .get("pattern")
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    let include_self = match params.flag("includeSelf")? {
        Some(asked) => asked,
        None => !recursive && pattern.is_none() && from_sprites_py(&headers),
    };
    let listed = path.clone();
    let entries = in_sprite(&state, &key, move |r| {
        r.list(&listed, recursive, pattern.as_deref(), include_self)
    })
    .await?;
    Ok(Json(FsList {
        path,
        count: entries.len(),
        entries,
    }))
}

/// `DELETE fs/delete?path=&workingDir=&recursive=` (or the same fields as JSON).
pub async fn delete(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<FsDeleted>, ApiError> {
    let params = Params::parse(query);
    let request: DeleteRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteRequest::default()
    } else {
        parse_json(&body)?
    };
    let working_dir = request.working_dir.as_deref().or(params.get("workingDir"));
    let path = match request.path.as_deref().or(params.get("path")) {
        Some(path) => clean(working_dir, path)?,
        None => {
            return Err(ApiError::invalid(
                "path is missing: DELETE fs/delete?path=/the/path (add recursive=true for a directory tree)",
            ))
        }
    };
    let recursive = match request.recursive {
        Some(recursive) => recursive,
        None => params.flag("recursive")?.unwrap_or(false),
    };
    let deleted = in_sprite(&state, &key, move |r| r.delete(&path, recursive)).await?;
    Ok(Json(FsDeleted {
        count: deleted.len(),
        deleted,
    }))
}

/// `POST fs/rename {source, dest, workingDir}`.
pub async fn rename(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    body: Bytes,
) -> Result<Json<FsRenamed>, ApiError> {
    let request: RenameRequest = parse_json(&body)?;
    let working_dir = request.working_dir.as_deref();
    let source = clean(working_dir, &request.source)?;
    let dest = clean(working_dir, &request.dest)?;
    let (s, d) = (source.clone(), dest.clone());
    in_sprite(&state, &key, move |r| r.rename(&s, &d)).await?;
    Ok(Json(FsRenamed { source, dest }))
}

/// `POST fs/copy {source, dest, workingDir, recursive, preserveAttrs}`.
pub async fn copy(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    body: Bytes,
) -> Result<Json<sprite_api::fs::FsCopied>, ApiError> {
    let request: CopyRequest = parse_json(&body)?;
    let working_dir = request.working_dir.as_deref();
    let source = clean(working_dir, &request.source)?;
    let dest = clean(working_dir, &request.dest)?;
    let copied = in_sprite(&state, &key, move |r| {
        r.copy(&source, &dest, request.recursive, request.preserve_attrs)
    })
    .await?;
    Ok(Json(copied))
}

/// `POST fs/chmod {path, workingDir, mode, recursive}`.
pub async fn chmod(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    body: Bytes,
) -> Result<Json<FsAffected>, ApiError> {
    let request: ChmodRequest = parse_json(&body)?;
    let path = clean(request.working_dir.as_deref(), &request.path)?;
    let mode = parse_mode(&request.mode)
        .map_err(|message| fs_error(FsError::new(FsCode::Invalid, &path, message)))?;
    let affected = in_sprite(&state, &key, move |r| {
        r.chmod(&path, mode, request.recursive)
    })
    .await?;
    Ok(Json(FsAffected {
        count: affected.len(),
        affected,
    }))
}

/// `POST fs/chown {path, workingDir, uid, gid, recursive}` (ids as seen inside).
pub async fn chown(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    body: Bytes,
) -> Result<Json<FsAffected>, ApiError> {
    let request: ChownRequest = parse_json(&body)?;
    let path = clean(request.working_dir.as_deref(), &request.path)?;
    if request.uid.is_none() && request.gid.is_none() {
        return Err(fs_error(FsError::new(
            FsCode::Invalid,
            &path,
            "chown needs uid, gid or both (numbers seen inside the sprite, e.g. 1000, or names from its /etc/passwd and /etc/group)",
        )));
    }
    let affected = in_sprite(&state, &key, move |r| {
        let uid = resolve_owner(r, request.uid.as_ref(), "/etc/passwd", "user", &path)?;
        let gid = resolve_owner(r, request.gid.as_ref(), "/etc/group", "group", &path)?;
        r.chown(&path, uid, gid, request.recursive)
    })
    .await?;
    Ok(Json(FsAffected {
        count: affected.len(),
        affected,
    }))
}

/// A chown's uid or gid: a number as it is, a name looked up in the sprite's own
/// `/etc/passwd` or `/etc/group` (read through the sprite's root, capped at 1 MiB).
fn resolve_owner(
    root: &sprite_core::files::SpriteRoot,
    owner: Option<&sprite_api::fs::IdOrName>,
    database: &str,
    what: &str,
    path: &str,
) -> Result<Option<u32>, FsError> {
    use std::io::Read;
    let Some(owner) = owner else { return Ok(None) };
    if let Some(id) = owner.id() {
        return Ok(Some(id));
    }
    let sprite_api::fs::IdOrName::Name(name) = owner else {
        return Ok(None);
    };
    let (file, _) = root.open_read(database)?;
    let mut text = String::new();
    file.take(1024 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| FsError::new(FsCode::Io, database, format!("read {database}: {e}")))?;
    sprite_api::fs::lookup_id(&text, name).map(Some).ok_or_else(|| {
        FsError::new(
            FsCode::Invalid,
            path,
            format!("{what} {name:?} does not exist in the sprite ({database}); give a number or a name listed there"),
        )
    })
}

/// `WS fs/watch`: the client subscribes with `{"type":"subscribe","paths":[...],
/// "recursive":bool,"workingDir":"/"}` (more subscriptions may follow); events are
/// sent as JSON text messages. An open watch keeps the sprite awake.
pub async fn watch(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    state.manager.check_exists(&key)?;
    // Each watch is an inotify instance of the daemon's user, and the host allows that
    // user 128 of them for everything it runs.
    let open = OPEN_WATCHES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if open >= MAX_WATCHES {
        OPEN_WATCHES.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        return Err(ApiError::new(
            ErrorKind::RateLimited,
            format!("{MAX_WATCHES} fs watches are open on this daemon; close one (or watch a parent directory recursively)"),
        ));
    }
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            OPEN_WATCHES.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let release = Release;
    Ok(upgrade.on_upgrade(move |socket| async move {
        let _release = release;
        if let Err(error) = serve_watch(state, key, socket).await {
            tracing::debug!("fs watch ended: {error}");
        }
    }))
}

async fn send_json(socket: &mut WebSocket, value: serde_json::Value) -> Result<(), axum::Error> {
    socket.send(Message::Text(value.to_string().into())).await
}

async fn serve_watch(
    state: AppState,
    key: SpriteKey,
    mut socket: WebSocket,
) -> Result<(), axum::Error> {
    let opened = async {
        let (root, awake) = root(&state, &key).await?;
        let watcher = Watcher::new(root).map_err(fs_error)?;
        Ok::<_, ApiError>((watcher, awake))
    }
    .await;
    let (mut watcher, _awake) = match opened {
        Ok(opened) => opened,
        Err(error) => return refuse_watch(socket, &error.message).await,
    };
    let mut keepalive = crate::Keepalive::new();
    loop {
        tokio::select! {
            alive = keepalive.ping_due() => {
                // A silent client's watch ends, and with it what keeps the sprite awake.
                if !alive {
                    return socket.close().await;
                }
                socket.send(Message::Ping(Vec::new().into())).await?;
            }
            message = socket.recv() => {
                keepalive.heard();
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                    Some(Ok(_)) => continue,
                };
                let answer = subscribe(&mut watcher, &text);
                send_json(&mut socket, answer).await?;
            }
            events = watcher.next(), if !watcher.is_empty() => {
                match events {
                    Ok(events) => {
                        for event in events {
                            send_json(&mut socket, serde_json::to_value(&event).unwrap_or_default()).await?;
                        }
                    }
                    Err(error) => return refuse_watch(socket, &error.message).await,
                }
            }
        }
    }
}

/// Sends `{"type":"error",...}` and closes the watch socket.
async fn refuse_watch(mut socket: WebSocket, message: &str) -> Result<(), axum::Error> {
    send_json(
        &mut socket,
        serde_json::json!({"type": "error", "error": message, "message": message}),
    )
    .await?;
    socket.close().await
}

/// Applies one subscribe message; answers `{"type":"subscribed",...}` or an error.
fn subscribe(watcher: &mut Watcher, text: &str) -> serde_json::Value {
    let request: WatchSubscribe = match serde_json::from_str(text) {
        Ok(request) => request,
        Err(error) => {
            let message = format!(
                "malformed message ({error}): send {{\"type\":\"subscribe\",\"paths\":[\"/home/sprite\"],\"recursive\":true}}"
            );
            return serde_json::json!({"type": "error", "error": message, "message": message});
        }
    };
    if request.kind != "subscribe" {
        let message = format!(
            "unknown message type {:?}: only subscribe is understood",
            request.kind
        );
        return serde_json::json!({"type": "error", "error": message, "message": message});
    }
    let mut watched = Vec::new();
    for path in &request.paths {
        let path = match clean_path(request.working_dir.as_deref(), path) {
            Ok(path) => path,
            Err(message) => {
                return serde_json::json!({"type": "error", "error": message, "message": message, "path": path})
            }
        };
        if let Err(error) = watcher.add(&path, request.recursive) {
            return serde_json::json!({"type": "error", "error": error.message, "message": error.message, "code": error.code.as_str(), "path": error.path});
        }
        watched.push(path);
    }
    serde_json::json!({"type": "subscribed", "paths": watched, "recursive": request.recursive})
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_like_http() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 10))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 10))));
        assert_eq!(parse_range("bytes=-5", 100), Ok(Some((95, 5))));
        assert_eq!(parse_range("bytes=-500", 100), Ok(Some((0, 100))));
        assert_eq!(parse_range("bytes=50-500", 100), Ok(Some((50, 50))));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=9-3", 100), Err(()));
        assert_eq!(parse_range("bytes=x-3", 100), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
        assert_eq!(parse_range("bytes=-1", 0), Err(()));
    }

    #[test]
    fn flags_are_lenient_but_not_silent() {
        assert!(parse_flag("r", "true").unwrap());
        assert!(parse_flag("r", "1").unwrap());
        assert!(!parse_flag("r", "False").unwrap());
        assert!(parse_flag("r", "maybe").is_err());
    }
}
