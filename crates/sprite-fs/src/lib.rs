//! SpriteFS, the storage engine: volumes, versions, block maps and the
//! content-addressed chunk store. Must not depend on the sandbox or the server.
//!
//! Layers, bottom up: chunks ([`chunk`]), the object-store stack ([`store`]), volume
//! metadata with O(1) checkpoint, restore and fork ([`meta`]), the block engine with
//! local staging, uploads, publication of metadata and GC ([`engine`]), the write log of
//! `store`-durability volumes ([`log`]), the chunk cache
//! ([`cache`]), FUSE exposure ([`fuse`]) and the per-host storage process ([`service`]).
#![forbid(unsafe_code)]

pub mod cache;
pub mod chunk;
pub mod engine;
mod error;
pub mod fuse;
pub mod log;
pub mod meta;
pub mod service;
pub mod store;

pub use error::{FsError, StoreError};
