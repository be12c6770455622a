//! The names of a cluster. On one host every name is the host's own; in a cluster a
//! sprite's name is claimed for the whole cluster before the sprite is made here, and
//! released when it is destroyed, through a [`Directory`] the daemon provides (over
//! etcd). Nothing here knows how the directory is kept.

use crate::ids::SpriteKey;
use std::future::Future;
use std::pin::Pin;

/// An answer of the directory.
pub type DirectoryFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, DirectoryError>> + Send + 'a>>;

/// What a directory may answer besides yes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The name belongs to a sprite already (on `owner`).
    #[error("the name is taken by a sprite on host {owner}")]
    Taken { owner: String },
    /// The directory could not be asked (etcd unreachable): nothing was changed.
    #[error("the cluster directory did not answer: {0}")]
    Unavailable(String),
}

/// Names of sprites across the hosts of a cluster.
pub trait Directory: Send + Sync + std::fmt::Debug {
    /// Makes `key` this host's, if no sprite of the cluster has that name: exactly one
    /// of any number of concurrent claims of one name wins.
    fn claim<'a>(&'a self, key: &'a SpriteKey) -> DirectoryFuture<'a, ()>;
    /// Gives the name up (the sprite is destroyed, or its creation failed).
    fn release<'a>(&'a self, key: &'a SpriteKey) -> DirectoryFuture<'a, ()>;
    /// The host that owns `key` when it is another host (None: this one, or nobody).
    fn owns<'a>(&'a self, key: &'a SpriteKey) -> DirectoryFuture<'a, Option<String>>;
    /// The sprite a claim was for is made (its record is here and in the store).
    fn made(&self, key: &SpriteKey);
}
