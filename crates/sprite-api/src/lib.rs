//! Wire types of the Sprites v1 API as served by the sprite daemon: request and response
//! bodies, the exec WebSocket frame codec, error kinds and name rules.
//!
//! This crate owns no I/O and must not depend on anything async or OS-specific, so that
//! the server, the client and the tests agree on one definition of the wire.
#![forbid(unsafe_code)]

pub mod admin;
pub mod error;
pub mod exec;
pub mod fs;
pub mod fuzz;
pub mod names;
pub mod policy;
pub mod services;
pub mod sprite;

pub use error::{error_chain, ErrorBody, ErrorKind};
pub use names::{validate_sprite_name, NameError};

/// Version the server reports in the `Sprite-Version` header: a bare semver, as the Go
/// SDK parses it (a release version tells it that `WS .../exec/{id}` attach works).
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
