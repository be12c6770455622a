//! The sprite lifecycle: creating, starting, recovering and destroying sprites, their
//! images and root layers, sessions, and the control-plane database.
//!
//! The server turns each request into a call on [`SpriteManager`], which holds the
//! components and calls them: the lifecycle (`lifecycle.rs`: provision, start, wake,
//! sleep, teardown), the pool, tasks, ports, and per-sprite handles for services and
//! files. Nothing here knows about HTTP. Must not depend on axum or hyper.
#![forbid(unsafe_code)]

pub mod access;
pub mod activity;
pub mod config;
pub mod db;
pub mod directory;
pub mod dns;
mod error;
pub mod files;
mod host;
pub mod ids;
pub mod image;
mod lifecycle;
pub mod limits;
pub mod manager;
pub mod metrics;
mod moves;
pub mod network;
mod oci_images;
mod pool;
pub mod ports;
pub mod proxy;
mod resources;
pub mod rootfs;
pub mod sandboxes;
#[cfg(test)]
mod sequences;
pub mod services;
mod sleep;
mod slots;
pub mod space;
pub mod tasks;
pub mod templates;
pub mod time;
mod upgrades;
pub mod usage;

pub use config::{CoreConfig, StorageBackend};
pub use error::{CoreError, RateLimitInfo};
pub use manager::{Caller, SpriteManager};
pub use sleep::SpriteCheck;
