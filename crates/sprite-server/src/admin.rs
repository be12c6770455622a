//! The daemon itself (admin scope): `GET /v1/admin/status` and `POST /v1/admin/stop`
//! (with `{"all": true}`: every sprite cold and the host cleaned first, as NDJSON
//! progress; the daemon exits after the last line).

use crate::{ApiError, AppState};
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use sprite_api::admin::{DaemonStatus, StopEvent, StopRequest};

/// When this process started (for the status's uptime).
static STARTED: std::sync::OnceLock<(std::time::Instant, String)> = std::sync::OnceLock::new();

/// Notes the start time (the daemon calls it once, early).
pub fn note_start() {
    STARTED.get_or_init(|| (std::time::Instant::now(), chrono::Utc::now().to_rfc3339()));
}

pub async fn status(State(state): State<AppState>) -> Result<Json<DaemonStatus>, ApiError> {
    note_start();
    let (started, started_at) = STARTED
        .get()
        .cloned()
        .unwrap_or_else(|| (std::time::Instant::now(), String::new()));
    let manager = &state.manager;
    let (running, warm, cold) = manager.host_counts()?;
    let spritefs = matches!(
        manager.config().storage,
        sprite_core::StorageBackend::SpriteFs { .. }
    );
    let storage_up = if spritefs {
        Some(manager.storage_stats().await.is_ok_and(|s| s.is_some()))
    } else {
        None
    };
    Ok(Json(DaemonStatus {
        version: sprite_api::SERVER_VERSION.to_string(),
        pid: std::process::id(),
        started_at,
        uptime_seconds: started.elapsed().as_secs(),
        data_dir: manager.config().data_dir.display().to_string(),
        storage: if spritefs { "spritefs" } else { "local" }.to_string(),
        storage_up,
        running,
        warm,
        cold,
        pool_ready: manager.pool_ready() as u64,
        host_id: state.peers.as_ref().map(|p| p.host_id().to_string()),
    }))
}

/// How long the last line has to reach the client before the daemon exits.
const LAST_LINE_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

pub async fn stop(
    State(state): State<AppState>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let request: StopRequest =
        crate::read_json_body(body, 4096, "stop", "send {\"all\": true} or nothing")
            .await?
            .unwrap_or_default();
    if state
        .stopping
        .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return Err(ApiError::new(
            sprite_api::ErrorKind::Conflict,
            "a stop of this daemon is already under way; wait for it (sprite admin status)",
        ));
    }
    let (sender, response) = crate::ndjson_channel(64);
    tokio::spawn(async move {
        let line = |event: &StopEvent| crate::ndjson_line(event);
        let last = if request.all {
            tracing::info!("stopping: every sprite goes cold, then the host is cleaned");
            let lines = sender.clone();
            let progress = move |message: String| {
                tracing::info!("{message}");
                let _ = lines.try_send(Ok(line(&StopEvent::Info { message })));
            };
            match state.manager.stop_host(&progress).await {
                Ok(sprites_cold) => StopEvent::Complete { sprites_cold },
                Err(error) => StopEvent::Error {
                    error: sprite_api::error_chain(&error),
                },
            }
        } else {
            StopEvent::Complete { sprites_cold: 0 }
        };
        let failed = matches!(last, StopEvent::Error { .. });
        let _ = sender.send(Ok(line(&last))).await;
        drop(sender);
        if failed {
            // Sprites may be half stopped: the daemon stays to be asked again.
            state
                .stopping
                .store(false, std::sync::atomic::Ordering::SeqCst);
            return;
        }
        tokio::time::sleep(LAST_LINE_GRACE).await;
        tracing::info!("stopping: asked through the API");
        state.stop.notify_one();
    });
    Ok(response)
}
