//! SpriteFS, the storage engine: volumes, versions, block maps, the chunk store, the
//! cache, the uploader, GC and FUSE. Must not depend on the sandbox or the server.
//!
//! Not built yet: until it is, sprites' writable layers are local directories
//! (`sprite_core::rootfs::LocalOverlayStore`), behind the `RootStore` trait this crate
//! will implement.
#![forbid(unsafe_code)]
