//! Volume metadata in SQLite: volumes, layers, versions and block maps.
//!
//! A volume's block map is a chain of **layers**: each layer holds only the blocks
//! written while it was the head, and points at its parent. Reading a block walks from
//! the head towards the root; the nearest layer that has it wins. That makes the
//! operations that matter metadata-only and O(1), whatever the volume holds:
//! - **checkpoint**: seal the head, name it as a version, start a new empty head on top;
//! - **restore**: start a new empty head on top of the version's layer;
//! - **fork**: a new volume whose head is a new empty layer on top of the version's.
//!
//! A sealed layer never changes. Layers no volume head or version can reach are garbage.

use crate::chunk::ChunkId;
use crate::error::FsError;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    block_size INTEGER NOT NULL,
    head INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE layers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    volume TEXT NOT NULL,
    parent INTEGER,
    sealed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE versions (
    volume TEXT NOT NULL,
    name TEXT NOT NULL,
    layer INTEGER NOT NULL,
    comment TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (volume, name)
);
-- chunk NULL: the block was written with zeros (a hole over an older layer's data).
CREATE TABLE blocks (
    layer INTEGER NOT NULL,
    block INTEGER NOT NULL,
    chunk BLOB,
    PRIMARY KEY (layer, block)
) WITHOUT ROWID;
",
    "
-- Blocks whose newest bytes are only in the local staging file (fsynced, not yet
-- uploaded). Recovery uploads them before the volume is used again.
CREATE TABLE staged (
    volume TEXT NOT NULL,
    block INTEGER NOT NULL,
    PRIMARY KEY (volume, block)
) WITHOUT ROWID;
",
    "
-- Whether a sealed layer's record is in the object store.
ALTER TABLE layers ADD COLUMN published INTEGER NOT NULL DEFAULT 0;
",
    "
-- Stored (compressed) size of each chunk this host uploaded or saw, for usage.
CREATE TABLE chunks (
    id BLOB PRIMARY KEY,
    stored_size INTEGER NOT NULL
) WITHOUT ROWID;
",
    "
-- The write log (see log.rs): the first segment that applies on top of the head, and
-- the epoch of the volume's latest opening.
ALTER TABLE volumes ADD COLUMN log_from INTEGER NOT NULL DEFAULT 0;
ALTER TABLE volumes ADD COLUMN log_epoch INTEGER NOT NULL DEFAULT 0;
",
    "
-- The ownership epoch this host holds the volume at (a cluster bumps it each time a
-- volume changes hosts); its published heads carry it.
ALTER TABLE volumes ADD COLUMN owner_epoch INTEGER NOT NULL DEFAULT 1;
",
];

/// A volume's fixed properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub id: String,
    pub size: u64,
    pub block_size: u64,
    pub head: i64,
}

/// A named, immutable version of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub name: String,
    pub layer: i64,
    pub comment: Option<String>,
    pub created_at: String,
}

/// A layer in the object store (`layers/<id>.json`, or a volume's `head.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerRecord {
    pub id: i64,
    pub volume: String,
    pub parent: Option<i64>,
    pub sealed: bool,
    /// Block index → chunk hash, `None` for a block written with zeros.
    pub blocks: BTreeMap<u64, Option<String>>,
    /// In a volume's `head.json` only: the first write-log segment that applies on top
    /// of this head (see log.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_from: Option<u64>,
    /// In a volume's `head.json` only, in a cluster: the ownership epoch of the host
    /// that published it (a host holding an older one is stale and publishes no more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionRecord {
    pub name: String,
    pub layer: i64,
    pub comment: Option<String>,
    pub created_at: String,
    /// The versions of the same volume this one descends from, nearest first (filled
    /// when versions are listed for the API; not part of a stored manifest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
}

/// A volume in the object store (`volumes/<id>/manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeManifest {
    pub id: String,
    pub size: u64,
    pub block_size: u64,
    pub head: i64,
    pub versions: Vec<VersionRecord>,
}

#[derive(Debug)]
pub struct Meta {
    connection: Mutex<Connection>,
}

fn now() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    seconds.to_string()
}

fn chunk_from(blob: Option<Vec<u8>>) -> Option<ChunkId> {
    let blob = blob?;
    let bytes: [u8; 32] = blob.try_into().ok()?;
    Some(ChunkId(bytes))
}

/// A layer id from a time in milliseconds and random bits: `ms << 21 | random`, kept
/// positive (42 bits of milliseconds last until the year 2109).
pub(crate) fn layer_id(unix_ms: u64, random: u32) -> i64 {
    let ms = unix_ms & ((1 << 42) - 1);
    ((ms << 21) | u64::from(random & ((1 << 21) - 1))) as i64
}

impl Meta {
    pub fn open(path: &Path) -> Result<Meta, FsError> {
        Self::init(Connection::open(path)?)
    }

    pub fn in_memory() -> Result<Meta, FsError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut connection: Connection) -> Result<Meta, FsError> {
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        let version: usize =
            connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            let transaction = connection.transaction()?;
            transaction.execute_batch(migration)?;
            transaction.pragma_update(None, "user_version", index + 1)?;
            transaction.commit()?;
        }
        Ok(Meta {
            connection: Mutex::new(connection),
        })
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Connection> {
        self.connection.lock()
    }

    /// A new layer. Its id names its record in the object store (`layers/<id>.json`),
    /// which the hosts of a cluster share: ids are the creation time in milliseconds
    /// with 21 random bits below it, so hosts never pick the same one, and a volume's
    /// later layers have larger ids (its versions list in that order).
    fn new_layer(
        connection: &Connection,
        volume: &str,
        parent: Option<i64>,
    ) -> Result<i64, FsError> {
        loop {
            let random = rand::random::<u32>();
            let id = layer_id(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                random,
            )
            // Above its parent even within one millisecond (or with a clock that went
            // back): a checkpoint's layer sorts after the one before it.
            .max(parent.unwrap_or(0) + 1 + i64::from(random >> 12));
            let inserted = connection.execute(
                "INSERT OR IGNORE INTO layers (id, volume, parent) VALUES (?1, ?2, ?3)",
                params![id, volume, parent],
            )?;
            if inserted == 1 {
                return Ok(id);
            }
        }
    }

    pub fn create_volume(
        &self,
        id: &str,
        size: u64,
        block_size: u64,
    ) -> Result<VolumeInfo, FsError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let head = Self::new_layer(&transaction, id, None)?;
        transaction.execute(
            "INSERT INTO volumes (id, size, block_size, head, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, size as i64, block_size as i64, head, now()],
        )?;
        transaction.commit()?;
        Ok(VolumeInfo {
            id: id.to_string(),
            size,
            block_size,
            head,
        })
    }

    pub fn volume(&self, id: &str) -> Result<VolumeInfo, FsError> {
        self.lock()
            .query_row(
                "SELECT id, size, block_size, head FROM volumes WHERE id = ?1",
                params![id],
                |row| {
                    Ok(VolumeInfo {
                        id: row.get(0)?,
                        size: row.get::<_, i64>(1)? as u64,
                        block_size: row.get::<_, i64>(2)? as u64,
                        head: row.get(3)?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| FsError::VolumeNotFound(id.to_string()))
    }

    pub fn volumes(&self) -> Result<Vec<String>, FsError> {
        let connection = self.lock();
        let mut statement = connection.prepare("SELECT id FROM volumes ORDER BY id")?;
        let rows = statement.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The block map of a volume's head: block index → chunk (holes left out).
    pub fn block_map(&self, volume: &str) -> Result<BTreeMap<u64, ChunkId>, FsError> {
        let head = self.volume(volume)?.head;
        self.layer_map(head)
    }

    /// The block map as seen from a layer (its own blocks over its ancestors').
    pub fn layer_map(&self, layer: i64) -> Result<BTreeMap<u64, ChunkId>, FsError> {
        let connection = self.lock();
        let mut chain = Vec::new();
        let mut next = Some(layer);
        while let Some(id) = next {
            chain.push(id);
            next = connection.query_row(
                "SELECT parent FROM layers WHERE id = ?1",
                params![id],
                |row| row.get(0),
            )?;
        }
        let mut map: BTreeMap<u64, Option<ChunkId>> = BTreeMap::new();
        let mut statement =
            connection.prepare("SELECT block, chunk FROM blocks WHERE layer = ?1")?;
        for id in chain {
            let rows = statement.query_map(params![id], |row| {
                Ok((
                    row.get::<_, i64>(0)? as u64,
                    row.get::<_, Option<Vec<u8>>>(1)?,
                ))
            })?;
            for row in rows {
                let (block, chunk) = row?;
                map.entry(block).or_insert_with(|| chunk_from(chunk));
            }
        }
        Ok(map
            .into_iter()
            .filter_map(|(block, chunk)| chunk.map(|c| (block, c)))
            .collect())
    }

    /// Records blocks written to the volume's head (`None` = zeros) in one transaction.
    pub fn record_blocks(
        &self,
        volume: &str,
        blocks: &[(u64, Option<ChunkId>)],
    ) -> Result<(), FsError> {
        let head = self.volume(volume)?.head;
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        {
            let mut statement = transaction.prepare(
                "INSERT OR REPLACE INTO blocks (layer, block, chunk) VALUES (?1, ?2, ?3)",
            )?;
            for (block, chunk) in blocks {
                statement.execute(params![head, *block as i64, chunk.map(|c| c.0.to_vec())])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// Seals the head as version `name` and starts a new head on top. Cost is constant.
    pub fn checkpoint(
        &self,
        volume: &str,
        name: &str,
        comment: Option<&str>,
    ) -> Result<VersionInfo, FsError> {
        let head = self.volume(volume)?.head;
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        transaction.execute("UPDATE layers SET sealed = 1 WHERE id = ?1", params![head])?;
        let created_at = now();
        transaction.execute(
            "INSERT INTO versions (volume, name, layer, comment, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![volume, name, head, comment, created_at],
        )?;
        let new_head = Self::new_layer(&transaction, volume, Some(head))?;
        transaction.execute(
            "UPDATE volumes SET head = ?2 WHERE id = ?1",
            params![volume, new_head],
        )?;
        transaction.commit()?;
        Ok(VersionInfo {
            name: name.to_string(),
            layer: head,
            comment: comment.map(str::to_string),
            created_at,
        })
    }

    pub fn version(&self, volume: &str, name: &str) -> Result<VersionInfo, FsError> {
        self.lock()
            .query_row(
                "SELECT name, layer, comment, created_at FROM versions WHERE volume = ?1 AND name = ?2",
                params![volume, name],
                |row| Ok(VersionInfo { name: row.get(0)?, layer: row.get(1)?, comment: row.get(2)?, created_at: row.get(3)? }),
            )
            .optional()?
            .ok_or_else(|| FsError::VersionNotFound { volume: volume.to_string(), version: name.to_string() })
    }

    pub fn versions(&self, volume: &str) -> Result<Vec<VersionInfo>, FsError> {
        let connection = self.lock();
        let mut statement =
            connection.prepare("SELECT name, layer, comment, created_at FROM versions WHERE volume = ?1 ORDER BY layer")?;
        let rows = statement.query_map(params![volume], |row| {
            Ok(VersionInfo {
                name: row.get(0)?,
                layer: row.get(1)?,
                comment: row.get(2)?,
                created_at: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Points the volume's head at a new empty layer over version `name`.
    pub fn restore(&self, volume: &str, name: &str) -> Result<(), FsError> {
        let version = self.version(volume, name)?;
        let connection = self.lock();
        let head = Self::new_layer(&connection, volume, Some(version.layer))?;
        connection.execute(
            "UPDATE volumes SET head = ?2 WHERE id = ?1",
            params![volume, head],
        )?;
        Ok(())
    }

    /// Makes a new volume from a version of another: metadata only.
    pub fn fork(&self, source: &str, version: &str, new_id: &str) -> Result<VolumeInfo, FsError> {
        let info = self.volume(source)?;
        let version = self.version(source, version)?;
        let connection = self.lock();
        let head = Self::new_layer(&connection, new_id, Some(version.layer))?;
        connection.execute(
            "INSERT INTO volumes (id, size, block_size, head, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![new_id, info.size as i64, info.block_size as i64, head, now()],
        )?;
        Ok(VolumeInfo {
            id: new_id.to_string(),
            size: info.size,
            block_size: info.block_size,
            head,
        })
    }

    pub fn delete_version(&self, volume: &str, name: &str) -> Result<(), FsError> {
        self.version(volume, name)?;
        self.lock().execute(
            "DELETE FROM versions WHERE volume = ?1 AND name = ?2",
            params![volume, name],
        )?;
        Ok(())
    }

    pub fn delete_volume(&self, id: &str) -> Result<(), FsError> {
        let connection = self.lock();
        connection.execute("DELETE FROM versions WHERE volume = ?1", params![id])?;
        connection.execute("DELETE FROM staged WHERE volume = ?1", params![id])?;
        connection.execute("DELETE FROM volumes WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Deletes layers no volume head or version reaches, with their block rows. Returns
    /// the layers that went.
    pub fn collect_layers(&self) -> Result<Vec<i64>, FsError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let live: HashSet<i64> = {
            let mut roots: Vec<i64> = Vec::new();
            let mut statement =
                transaction.prepare("SELECT head FROM volumes UNION SELECT layer FROM versions")?;
            for row in statement.query_map([], |row| row.get(0))? {
                roots.push(row?);
            }
            let mut parent = transaction.prepare("SELECT parent FROM layers WHERE id = ?1")?;
            let mut live = HashSet::new();
            for root in roots {
                let mut next = Some(root);
                while let Some(id) = next {
                    if !live.insert(id) {
                        break;
                    }
                    next = parent
                        .query_row(params![id], |row| row.get(0))
                        .optional()?
                        .flatten();
                }
            }
            live
        };
        let all: Vec<i64> = {
            let mut statement = transaction.prepare("SELECT id FROM layers")?;
            let rows = statement.query_map([], |row| row.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut removed = Vec::new();
        for id in all.into_iter().filter(|id| !live.contains(id)) {
            transaction.execute("DELETE FROM blocks WHERE layer = ?1", params![id])?;
            transaction.execute("DELETE FROM layers WHERE id = ?1", params![id])?;
            removed.push(id);
        }
        transaction.commit()?;
        Ok(removed)
    }

    /// Records blocks as staged (durable locally, upload pending).
    pub fn stage_blocks(&self, volume: &str, blocks: &[u64]) -> Result<(), FsError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        {
            let mut statement = transaction
                .prepare("INSERT OR IGNORE INTO staged (volume, block) VALUES (?1, ?2)")?;
            for block in blocks {
                statement.execute(params![volume, *block as i64])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// Records uploaded blocks in the head, clears them from the staged set and records
    /// the chunks the upload stored (with their sizes), in one transaction, so a crash
    /// leaves each block either staged or recorded.
    pub fn commit_uploads(
        &self,
        volume: &str,
        blocks: &[(u64, Option<ChunkId>)],
        unstage: &[u64],
        stored: &[(ChunkId, u64)],
        log_from: u64,
    ) -> Result<(), FsError> {
        let head = self.volume(volume)?.head;
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        transaction.execute(
            "UPDATE volumes SET log_from = ?2 WHERE id = ?1",
            params![volume, log_from as i64],
        )?;
        {
            let mut record = transaction.prepare(
                "INSERT OR REPLACE INTO blocks (layer, block, chunk) VALUES (?1, ?2, ?3)",
            )?;
            for (block, chunk) in blocks {
                record.execute(params![head, *block as i64, chunk.map(|c| c.0.to_vec())])?;
            }
            let mut clear =
                transaction.prepare("DELETE FROM staged WHERE volume = ?1 AND block = ?2")?;
            for block in unstage {
                clear.execute(params![volume, *block as i64])?;
            }
            let mut note = transaction
                .prepare("INSERT OR REPLACE INTO chunks (id, stored_size) VALUES (?1, ?2)")?;
            for (id, size) in stored {
                note.execute(params![id.0.to_vec(), *size as i64])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// The ownership epoch this host holds a volume at.
    pub fn owner_epoch(&self, volume: &str) -> Result<u64, FsError> {
        self.lock()
            .query_row(
                "SELECT owner_epoch FROM volumes WHERE id = ?1",
                params![volume],
                |row| row.get::<_, i64>(0),
            )
            .optional()?
            .map(|epoch| epoch as u64)
            .ok_or_else(|| FsError::VolumeNotFound(volume.to_string()))
    }

    pub fn set_owner_epoch(&self, volume: &str, epoch: u64) -> Result<(), FsError> {
        self.lock().execute(
            "UPDATE volumes SET owner_epoch = ?2 WHERE id = ?1",
            params![volume, epoch as i64],
        )?;
        Ok(())
    }

    pub fn set_log_from(&self, volume: &str, log_from: u64) -> Result<(), FsError> {
        self.lock().execute(
            "UPDATE volumes SET log_from = ?2 WHERE id = ?1",
            params![volume, log_from as i64],
        )?;
        Ok(())
    }

    /// Starts a new write-log epoch for an opening of the volume: later than the last
    /// one, than its `log_from`'s and than `at_least`. Answers it.
    pub fn next_log_epoch(&self, volume: &str, at_least: u64) -> Result<u64, FsError> {
        let connection = self.lock();
        let (epoch, log_from): (i64, i64) = connection
            .query_row(
                "SELECT log_epoch, log_from FROM volumes WHERE id = ?1",
                params![volume],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?
            .ok_or_else(|| FsError::VolumeNotFound(volume.to_string()))?;
        let next = (epoch as u64)
            .max(crate::log::epoch_of(log_from as u64))
            .max(at_least)
            + 1;
        connection.execute(
            "UPDATE volumes SET log_epoch = ?2 WHERE id = ?1",
            params![volume, next as i64],
        )?;
        Ok(next)
    }

    /// Forgets every staged block of a volume (a restore abandons them).
    pub fn clear_staged(&self, volume: &str) -> Result<(), FsError> {
        self.lock()
            .execute("DELETE FROM staged WHERE volume = ?1", params![volume])?;
        Ok(())
    }

    pub fn staged_blocks(&self, volume: &str) -> Result<Vec<u64>, FsError> {
        let connection = self.lock();
        let mut statement =
            connection.prepare("SELECT block FROM staged WHERE volume = ?1 ORDER BY block")?;
        let rows = statement.query_map(params![volume], |row| row.get::<_, i64>(0))?;
        Ok(rows
            .map(|r| r.map(|b| b as u64))
            .collect::<Result<_, _>>()?)
    }

    /// A layer as it is published to the object store.
    pub fn export_layer(&self, layer: i64) -> Result<LayerRecord, FsError> {
        Self::export_layer_in(&self.lock(), layer)
    }

    /// A volume's head layer as it is published (`head.json`), with its `log_from`,
    /// both read at one instant (a commit between the two reads would pair blocks and a
    /// `log_from` of different states).
    pub fn export_head(&self, volume: &str) -> Result<LayerRecord, FsError> {
        let connection = self.lock();
        let (head, log_from): (i64, i64) = connection
            .query_row(
                "SELECT head, log_from FROM volumes WHERE id = ?1",
                params![volume],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?
            .ok_or_else(|| FsError::VolumeNotFound(volume.to_string()))?;
        let mut record = Self::export_layer_in(&connection, head)?;
        record.log_from = Some(log_from as u64);
        Ok(record)
    }

    fn export_layer_in(connection: &Connection, layer: i64) -> Result<LayerRecord, FsError> {
        let (volume, parent, sealed): (String, Option<i64>, bool) = connection.query_row(
            "SELECT volume, parent, sealed FROM layers WHERE id = ?1",
            params![layer],
            |row| Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? != 0)),
        )?;
        let mut statement = connection
            .prepare("SELECT block, chunk FROM blocks WHERE layer = ?1 ORDER BY block")?;
        let rows = statement.query_map(params![layer], |row| {
            Ok((
                row.get::<_, i64>(0)? as u64,
                row.get::<_, Option<Vec<u8>>>(1)?,
            ))
        })?;
        let mut blocks = BTreeMap::new();
        for row in rows {
            let (block, chunk) = row?;
            blocks.insert(block, chunk_from(chunk).map(|c| c.to_hex()));
        }
        Ok(LayerRecord {
            id: layer,
            volume,
            parent,
            sealed,
            blocks,
            log_from: None,
            epoch: None,
        })
    }

    /// Sealed layers in a volume's chain (head first) that are not published yet.
    pub fn unpublished_layers(&self, volume: &str) -> Result<Vec<i64>, FsError> {
        let head = self.volume(volume)?.head;
        let connection = self.lock();
        let mut layers = Vec::new();
        let mut next = Some(head);
        while let Some(id) = next {
            let (parent, sealed, published): (Option<i64>, i64, i64) = connection.query_row(
                "SELECT parent, sealed, published FROM layers WHERE id = ?1",
                params![id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?;
            if sealed != 0 && published == 0 {
                layers.push(id);
            }
            next = parent;
        }
        Ok(layers)
    }

    pub fn mark_published(&self, layer: i64) -> Result<(), FsError> {
        self.lock().execute(
            "UPDATE layers SET published = 1 WHERE id = ?1",
            params![layer],
        )?;
        Ok(())
    }

    /// Imports a layer with its own id (recovery on a fresh host).
    pub fn import_layer(&self, layer: &LayerRecord) -> Result<(), FsError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        transaction.execute(
            "INSERT OR REPLACE INTO layers (id, volume, parent, sealed, published) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![layer.id, layer.volume, layer.parent, layer.sealed as i64, layer.sealed as i64],
        )?;
        transaction.execute("DELETE FROM blocks WHERE layer = ?1", params![layer.id])?;
        {
            let mut statement = transaction
                .prepare("INSERT INTO blocks (layer, block, chunk) VALUES (?1, ?2, ?3)")?;
            for (block, chunk) in &layer.blocks {
                let chunk = chunk
                    .as_deref()
                    .and_then(ChunkId::from_hex)
                    .map(|c| c.0.to_vec());
                statement.execute(params![layer.id, *block as i64, chunk])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// Imports a volume row and its versions (recovery on a fresh host).
    pub fn import_volume(&self, manifest: &VolumeManifest) -> Result<(), FsError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        transaction.execute(
            "INSERT OR REPLACE INTO volumes (id, size, block_size, head, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![manifest.id, manifest.size as i64, manifest.block_size as i64, manifest.head, now()],
        )?;
        for version in &manifest.versions {
            transaction.execute(
                "INSERT OR REPLACE INTO versions (volume, name, layer, comment, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![manifest.id, version.name, version.layer, version.comment, version.created_at],
            )?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// What describes a volume in the object store.
    pub fn volume_manifest(&self, volume: &str) -> Result<VolumeManifest, FsError> {
        let info = self.volume(volume)?;
        Ok(VolumeManifest {
            id: info.id,
            size: info.size,
            block_size: info.block_size,
            head: info.head,
            versions: self
                .versions(volume)?
                .into_iter()
                .map(|v| VersionRecord {
                    name: v.name,
                    layer: v.layer,
                    comment: v.comment,
                    created_at: v.created_at,
                    history: Vec::new(),
                })
                .collect(),
        })
    }

    /// The volume's versions with their history (the versions each descends from,
    /// nearest first), and the history of the volume's head: what it was restored from
    /// or last checkpointed as, and before.
    pub fn lineage(&self, volume: &str) -> Result<(Vec<VersionRecord>, Vec<String>), FsError> {
        let mut versions = self.volume_manifest(volume)?;
        let names: HashMap<i64, String> = versions
            .versions
            .iter()
            .map(|v| (v.layer, v.name.clone()))
            .collect();
        let connection = self.lock();
        let mut parent_of = connection.prepare("SELECT parent FROM layers WHERE id = ?1")?;
        // The versions above each layer, nearest first, found once per layer: versions
        // share their ancestors (one layer per checkpoint or restore).
        let mut above: HashMap<i64, Vec<String>> = HashMap::new();
        let mut history = |start: i64| -> Result<Vec<String>, FsError> {
            // Up from `start` to the first layer already known (or the root); `known`
            // ends as the history of the chain's top layer.
            let mut chain: Vec<i64> = Vec::new();
            let mut next = Some(start);
            let mut known = Vec::new();
            while let Some(layer) = next {
                if let Some(found) = above.get(&layer) {
                    if chain.is_empty() {
                        return Ok(found.clone());
                    }
                    // `layer` is the parent of the chain's top.
                    known = names.get(&layer).cloned().into_iter().collect();
                    known.extend(found.iter().cloned());
                    break;
                }
                chain.push(layer);
                // The bound only stops a corrupt cycle.
                next = if chain.len() < 100_000 {
                    parent_of
                        .query_row(params![layer], |row| row.get::<_, Option<i64>>(0))
                        .optional()?
                        .flatten()
                } else {
                    None
                };
            }
            // Back down: a layer's history is its parent's name (if a version) and the
            // parent's history.
            while let Some(layer) = chain.pop() {
                above.insert(layer, known.clone());
                if let Some(name) = names.get(&layer) {
                    known.insert(0, name.clone());
                }
            }
            Ok(above.get(&start).cloned().unwrap_or_default())
        };
        for version in &mut versions.versions {
            version.history = history(version.layer)?;
        }
        let current = history(versions.head)?;
        Ok((versions.versions, current))
    }

    /// Stored bytes of a set of chunks (unknown ones count as 0).
    pub fn stored_bytes(&self, chunks: &HashSet<ChunkId>) -> Result<u64, FsError> {
        let connection = self.lock();
        let mut statement = connection.prepare("SELECT stored_size FROM chunks WHERE id = ?1")?;
        let mut total = 0u64;
        for chunk in chunks {
            total += statement
                .query_row(params![chunk.0.to_vec()], |row| row.get::<_, i64>(0))
                .optional()?
                .unwrap_or(0) as u64;
        }
        Ok(total)
    }

    /// Whether a chunk is recorded as stored.
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool, FsError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached("SELECT 1 FROM chunks WHERE id = ?1")?;
        Ok(statement.exists(params![id.0.to_vec()])?)
    }

    pub fn forget_chunk(&self, id: &ChunkId) -> Result<(), FsError> {
        self.lock()
            .execute("DELETE FROM chunks WHERE id = ?1", params![id.0.to_vec()])?;
        Ok(())
    }

    /// Chunks a layer itself holds (what a checkpoint added).
    pub fn layer_chunks(&self, layer: i64) -> Result<HashSet<ChunkId>, FsError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare("SELECT chunk FROM blocks WHERE layer = ?1 AND chunk IS NOT NULL")?;
        let rows = statement.query_map(params![layer], |row| row.get::<_, Option<Vec<u8>>>(0))?;
        let mut chunks = HashSet::new();
        for row in rows {
            if let Some(chunk) = chunk_from(row?) {
                chunks.insert(chunk);
            }
        }
        Ok(chunks)
    }

    /// Every chunk some live block row references.
    pub fn referenced_chunks(&self) -> Result<HashSet<ChunkId>, FsError> {
        let connection = self.lock();
        let mut statement =
            connection.prepare("SELECT DISTINCT chunk FROM blocks WHERE chunk IS NOT NULL")?;
        let rows = statement.query_map([], |row| row.get::<_, Option<Vec<u8>>>(0))?;
        let mut chunks = HashSet::new();
        for row in rows {
            if let Some(chunk) = chunk_from(row?) {
                chunks.insert(chunk);
            }
        }
        Ok(chunks)
    }

    /// Chunks a volume's head reaches (for usage: bytes it references).
    pub fn volume_chunks(&self, volume: &str) -> Result<HashSet<ChunkId>, FsError> {
        Ok(self.block_map(volume)?.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn layer_ids_grow_with_time_and_above_their_parent() {
        assert!(layer_id(2, 0) > layer_id(1, u32::MAX));
        assert_ne!(layer_id(5, 1), layer_id(5, 2));
        assert!(layer_id(u64::MAX, u32::MAX) > 0);
        let meta = Meta::in_memory().expect("meta");
        meta.create_volume("v", 1 << 30, 1 << 20).expect("create");
        for n in 0..50 {
            meta.checkpoint("v", &format!("v{n}"), None)
                .expect("checkpoint");
        }
        let names: Vec<String> = meta
            .versions("v")
            .expect("versions")
            .into_iter()
            .map(|v| v.name)
            .collect();
        let expected: Vec<String> = (0..50).map(|n| format!("v{n}")).collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn layers_resolve_nearest_first() {
        let meta = Meta::in_memory().expect("meta");
        meta.create_volume("v", 1 << 30, 1 << 20).expect("create");
        meta.record_blocks("v", &[(0, Some(id(1))), (1, Some(id(2)))])
            .expect("write");
        meta.checkpoint("v", "v0", Some("first"))
            .expect("checkpoint");
        meta.record_blocks("v", &[(1, Some(id(3))), (2, None), (0, None)])
            .expect("write");
        let map = meta.block_map("v").expect("map");
        assert_eq!(map, BTreeMap::from([(1, id(3))]));
        let v0 = meta.version("v", "v0").expect("version");
        assert_eq!(
            meta.layer_map(v0.layer).expect("map"),
            BTreeMap::from([(0, id(1)), (1, id(2))])
        );
    }

    #[test]
    fn lineage_follows_checkpoints_and_restores() {
        let meta = Meta::in_memory().expect("meta");
        meta.create_volume("a", 1 << 30, 1 << 20).expect("create");
        meta.checkpoint("a", "v0", None).expect("checkpoint");
        meta.checkpoint("a", "v1", None).expect("checkpoint");
        meta.checkpoint("a", "v2", None).expect("checkpoint");
        meta.restore("a", "v0").expect("restore");
        meta.checkpoint("a", "v3", None).expect("checkpoint");
        // A fork's versions are its own: the parent's are not in its history.
        meta.fork("a", "v1", "b").expect("fork");
        meta.checkpoint("b", "w0", None).expect("checkpoint");
        let (versions, current) = meta.lineage("a").expect("lineage");
        let history = |name: &str| {
            versions
                .iter()
                .find(|v| v.name == name)
                .map(|v| v.history.clone())
                .unwrap_or_else(|| vec!["missing".into()])
        };
        assert_eq!(history("v0"), Vec::<String>::new());
        assert_eq!(history("v1"), ["v0"]);
        assert_eq!(history("v2"), ["v1", "v0"]);
        assert_eq!(history("v3"), ["v0"], "v3 was made after restoring v0");
        assert_eq!(current, ["v3", "v0"]);
        let (forked, forked_current) = meta.lineage("b").expect("lineage");
        assert_eq!(forked[0].history, Vec::<String>::new());
        assert_eq!(forked_current, ["w0"]);
        // The plain listing carries no history.
        assert!(meta
            .volume_manifest("a")
            .expect("manifest")
            .versions
            .iter()
            .all(|v| v.history.is_empty()));
    }

    #[test]
    fn restore_and_fork_are_metadata_only() {
        let meta = Meta::in_memory().expect("meta");
        meta.create_volume("a", 1 << 30, 1 << 20).expect("create");
        meta.record_blocks("a", &[(5, Some(id(5)))]).expect("write");
        meta.checkpoint("a", "v0", None).expect("checkpoint");
        meta.record_blocks("a", &[(5, Some(id(6)))]).expect("write");
        meta.fork("a", "v0", "b").expect("fork");
        meta.restore("a", "v0").expect("restore");
        assert_eq!(
            meta.block_map("a").expect("map"),
            BTreeMap::from([(5, id(5))])
        );
        assert_eq!(
            meta.block_map("b").expect("map"),
            BTreeMap::from([(5, id(5))])
        );
        meta.record_blocks("b", &[(7, Some(id(7)))]).expect("write");
        assert!(
            !meta.block_map("a").expect("map").contains_key(&7),
            "fork diverges"
        );
        assert!(matches!(
            meta.restore("a", "nope"),
            Err(FsError::VersionNotFound { .. })
        ));
    }

    #[test]
    fn garbage_layers_are_collected() {
        let meta = Meta::in_memory().expect("meta");
        meta.create_volume("a", 1 << 30, 1 << 20).expect("create");
        meta.record_blocks("a", &[(0, Some(id(1)))]).expect("write");
        meta.checkpoint("a", "v0", None).expect("checkpoint");
        meta.record_blocks("a", &[(0, Some(id(2)))]).expect("write");
        // Restoring abandons the head that held id(2).
        meta.restore("a", "v0").expect("restore");
        assert_eq!(meta.collect_layers().expect("gc").len(), 1);
        assert_eq!(
            meta.referenced_chunks().expect("refs"),
            HashSet::from([id(1)])
        );
        meta.delete_version("a", "v0").expect("delete version");
        // v0's layer is still the head's parent: nothing to collect.
        assert_eq!(meta.collect_layers().expect("gc").len(), 0);
        meta.delete_volume("a").expect("delete");
        assert_eq!(meta.collect_layers().expect("gc").len(), 2);
        assert!(meta.referenced_chunks().expect("refs").is_empty());
    }

    #[test]
    fn checkpoint_cost_does_not_depend_on_data() {
        let meta = Meta::in_memory().expect("meta");
        meta.create_volume("big", 1 << 40, 1 << 20).expect("create");
        let blocks: Vec<(u64, Option<ChunkId>)> = (0..20_000u64)
            .map(|b| (b, Some(ChunkId::of(&b.to_le_bytes()))))
            .collect();
        meta.record_blocks("big", &blocks).expect("write");
        // A checkpoint touches a constant number of rows: it must not copy the map.
        let before = meta
            .lock()
            .query_row("SELECT count(*) FROM blocks", [], |r| r.get::<_, i64>(0))
            .expect("count");
        meta.checkpoint("big", "v0", None).expect("checkpoint");
        let after = meta
            .lock()
            .query_row("SELECT count(*) FROM blocks", [], |r| r.get::<_, i64>(0))
            .expect("count");
        assert_eq!(before, after);
    }
}
