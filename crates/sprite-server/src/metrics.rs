//! `GET /metrics` (admin scope): the Prometheus text format, read fresh at each scrape
//! (sprites by status, per-sprite CPU, memory, stored bytes and network, the storage
//! process's object store calls and upload queue), plus the create and wake latency
//! histograms the manager records as it goes.

use crate::{ApiError, AppState};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use sprite_api::sprite::SpriteStatus;

fn internal(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        sprite_api::ErrorKind::Internal,
        format!("metrics could not be rendered: {error}"),
    )
}

/// `metric`, registered in `registry`.
fn add<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> Result<M, ApiError> {
    let metric = metric.map_err(internal)?;
    registry
        .register(Box::new(metric.clone()))
        .map_err(internal)?;
    Ok(metric)
}

pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let manager = &state.manager;
    let registry = Registry::new();
    let by_status = add(
        &registry,
        IntGaugeVec::new(
            Opts::new("sprites", "Sprites on this host by status"),
            &["status"],
        ),
    )?;
    let pool = add(
        &registry,
        IntGauge::new("sprites_pool_ready", "Ready sprites in the pool"),
    )?;
    let sprite = ["org", "sprite"];
    let cpu = add(
        &registry,
        prometheus::CounterVec::new(
            Opts::new(
                "sprite_cpu_seconds_total",
                "CPU time of the sprite's processes since it last started",
            ),
            &sprite,
        ),
    )?;
    let memory = add(
        &registry,
        IntGaugeVec::new(
            Opts::new("sprite_memory_bytes", "Memory the sprite uses"),
            &sprite,
        ),
    )?;
    let stored = add(
        &registry,
        IntGaugeVec::new(
            Opts::new(
                "sprite_disk_stored_bytes",
                "Bytes the sprite's disk stores in the object store (compressed, as of the last hourly sample)",
            ),
            &sprite,
        ),
    )?;
    let received = add(
        &registry,
        IntCounterVec::new(
            Opts::new(
                "sprite_network_receive_bytes_total",
                "Bytes the sprite received since it last started",
            ),
            &sprite,
        ),
    )?;
    let sent = add(
        &registry,
        IntCounterVec::new(
            Opts::new(
                "sprite_network_transmit_bytes_total",
                "Bytes the sprite sent since it last started",
            ),
            &sprite,
        ),
    )?;
    for status in [
        SpriteStatus::Running,
        SpriteStatus::Warm,
        SpriteStatus::Cold,
    ] {
        by_status.with_label_values(&[status.as_str()]).set(0);
    }
    pool.set(manager.pool_ready() as i64);
    let stats = manager.sprite_stats().await?;
    for one in &stats {
        by_status.with_label_values(&[one.status.as_str()]).inc();
        let labels = [one.org.as_str(), one.name.as_str()];
        if let Some(seconds) = one.cpu_seconds {
            cpu.with_label_values(&labels).inc_by(seconds);
        }
        if let Some(bytes) = one.memory_bytes {
            memory.with_label_values(&labels).set(bytes as i64);
        }
        if let Some(bytes) = one.stored_bytes {
            stored.with_label_values(&labels).set(bytes as i64);
        }
        if let Some((rx, tx)) = one.traffic {
            received.with_label_values(&labels).inc_by(rx);
            sent.with_label_values(&labels).inc_by(tx);
        }
    }
    let storage_up = add(
        &registry,
        IntGauge::new(
            "sprites_storage_up",
            "Whether the storage process answered this scrape (1) or not (0)",
        ),
    )?;
    match manager.storage_stats().await {
        Ok(Some(storage)) => {
            storage_up.set(1);
            let calls = add(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "sprites_store_operations_total",
                        "Object store calls of the storage process, by kind",
                    ),
                    &["operation"],
                ),
            )?;
            let errors = add(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "sprites_store_errors_total",
                        "Object store calls that failed after their retries, by kind",
                    ),
                    &["operation"],
                ),
            )?;
            for (operation, count, failed) in &storage.operations {
                calls
                    .with_label_values(&[operation.as_str()])
                    .inc_by(*count);
                errors
                    .with_label_values(&[operation.as_str()])
                    .inc_by(*failed);
            }
            add(
                &registry,
                prometheus::IntCounter::new(
                    "sprites_store_retries_total",
                    "Object store calls retried",
                ),
            )?
            .inc_by(storage.retries);
            add(
                &registry,
                IntGauge::new(
                    "sprites_storage_queue_blocks",
                    "Blocks written on this host that wait to be uploaded to the object store",
                ),
            )?
            .set(storage.pending_blocks as i64);
            add(
                &registry,
                IntGauge::new(
                    "sprites_storage_attached_volumes",
                    "Volumes the storage process serves now",
                ),
            )?
            .set(storage.attached_volumes as i64);
        }
        Ok(None) => storage_up.set(1),
        Err(error) => {
            tracing::warn!(
                "metrics: storage stats: {}",
                sprite_api::error_chain(&error)
            );
            storage_up.set(0);
        }
    }
    let mut families = registry.gather();
    families.extend(manager.metrics().registry.gather());
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut text)
        .map_err(internal)?;
    Ok((
        [(CONTENT_TYPE, TextEncoder::new().format_type().to_string())],
        text,
    )
        .into_response())
}
