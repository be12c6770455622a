//! SpriteFS, the storage engine: volumes, versions, block maps and the
//! content-addressed chunk store. Must not depend on the sandbox or the server.
//!
//! Built so far: chunks ([`chunk`]), the object-store stack ([`store`]) and volume
//! metadata with O(1) checkpoint, restore and fork ([`meta`]). Still to come (issue 3):
//! the block engine with local staging and the uploader, FUSE exposure, GC and the
//! metadata log in the object store. Until then sprites' writable layers are local
//! directories (`sprite_core::rootfs::LocalOverlayStore`).
#![forbid(unsafe_code)]

pub mod cache;
pub mod chunk;
pub mod engine;
mod error;
pub mod fuse;
pub mod meta;
pub mod store;

pub use error::{FsError, StoreError};
