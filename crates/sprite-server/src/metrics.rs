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

/// A gauge family with `labels`, registered in `registry`.
fn gauges(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, ApiError> {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).map_err(internal)?;
    registry.register(Box::new(vec.clone())).map_err(internal)?;
    Ok(vec)
}

/// A counter family with `labels`, registered in `registry`.
fn counters(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, ApiError> {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).map_err(internal)?;
    registry.register(Box::new(vec.clone())).map_err(internal)?;
    Ok(vec)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, ApiError> {
    let gauge = IntGauge::new(name, help).map_err(internal)?;
    registry
        .register(Box::new(gauge.clone()))
        .map_err(internal)?;
    Ok(gauge)
}

pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let manager = &state.manager;
    let registry = Registry::new();
    let by_status = gauges(
        &registry,
        "sprites",
        "Sprites on this host by status",
        &["status"],
    )?;
    let pool = gauge(&registry, "sprites_pool_ready", "Ready sprites in the pool")?;
    let sprite = ["org", "sprite"];
    let cpu = prometheus::CounterVec::new(
        Opts::new(
            "sprite_cpu_seconds_total",
            "CPU time of the sprite's processes since it last started",
        ),
        &sprite,
    )
    .map_err(internal)?;
    registry.register(Box::new(cpu.clone())).map_err(internal)?;
    let memory = gauges(
        &registry,
        "sprite_memory_bytes",
        "Memory the sprite uses",
        &sprite,
    )?;
    let stored = gauges(
        &registry,
        "sprite_disk_stored_bytes",
        "Bytes the sprite's disk stores in the object store (compressed, as of the last hourly sample)",
        &sprite,
    )?;
    let received = counters(
        &registry,
        "sprite_network_receive_bytes_total",
        "Bytes the sprite received since it last started",
        &sprite,
    )?;
    let sent = counters(
        &registry,
        "sprite_network_transmit_bytes_total",
        "Bytes the sprite sent since it last started",
        &sprite,
    )?;
    for status in [
        SpriteStatus::Running,
        SpriteStatus::Warm,
        SpriteStatus::Cold,
    ] {
        by_status.with_label_values(&[status.as_str()]).set(0);
    }
    pool.set(manager.pool_ready() as i64);
    let stats = manager.sprite_stats()?;
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
    let storage_up = gauge(
        &registry,
        "sprites_storage_up",
        "Whether the storage process answered this scrape (1) or not (0)",
    )?;
    match manager.storage_stats().await {
        Ok(Some(storage)) => {
            storage_up.set(1);
            let calls = counters(
                &registry,
                "sprites_store_operations_total",
                "Object store calls of the storage process, by kind",
                &["operation"],
            )?;
            let errors = counters(
                &registry,
                "sprites_store_errors_total",
                "Object store calls that failed after their retries, by kind",
                &["operation"],
            )?;
            for (operation, count, failed) in &storage.operations {
                calls
                    .with_label_values(&[operation.as_str()])
                    .inc_by(*count);
                errors
                    .with_label_values(&[operation.as_str()])
                    .inc_by(*failed);
            }
            let retries = prometheus::IntCounter::new(
                "sprites_store_retries_total",
                "Object store calls retried",
            )
            .map_err(internal)?;
            registry
                .register(Box::new(retries.clone()))
                .map_err(internal)?;
            retries.inc_by(storage.retries);
            gauge(
                &registry,
                "sprites_storage_queue_blocks",
                "Blocks written on this host that wait to be uploaded to the object store",
            )?
            .set(storage.pending_blocks as i64);
            gauge(
                &registry,
                "sprites_storage_attached_volumes",
                "Volumes the storage process serves now",
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
