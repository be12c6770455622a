//! Control-plane state in SQLite: sprites and their settings. Versioned migrations run
//! at open; the schema version is SQLite's `user_version`.

use crate::error::CoreError;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// Schema migrations, in order. Never edit one that has shipped: add a new one.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE sprites (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        name TEXT NOT NULL,
        image TEXT NOT NULL,
        url_auth TEXT NOT NULL,
        labels TEXT NOT NULL,
        config TEXT NOT NULL,
        environment TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        last_running_at TEXT,
        id_base INTEGER NOT NULL,
        UNIQUE (org, name)
    );",
    // Sleep state survives daemon restarts: a cold sprite stays cold, timers go on.
    "CREATE TABLE lifecycle (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        since_ms INTEGER NOT NULL,
        last_active_ms INTEGER NOT NULL,
        last_warming_ms INTEGER
    );",
    // Tasks keep sprites awake across daemon restarts.
    "CREATE TABLE tasks (
        sprite_id TEXT NOT NULL,
        name TEXT NOT NULL,
        expires_ms INTEGER NOT NULL,
        PRIMARY KEY (sprite_id, name)
    );",
    // Egress policy per sprite (API.md, Policy): the JSON as last set.
    "CREATE TABLE policies (
        sprite_id TEXT PRIMARY KEY,
        network TEXT NOT NULL
    );",
    // Checkpoints a sprite made itself (through its api.sock): the only ones it may
    // restore or delete from inside.
    "CREATE TABLE checkpoints_made_inside (
        sprite_id TEXT NOT NULL,
        checkpoint TEXT NOT NULL,
        PRIMARY KEY (sprite_id, checkpoint)
    );",
    // What the SDKs send at create and read back (runtime, private access), as JSON.
    "ALTER TABLE sprites ADD COLUMN attrs TEXT NOT NULL DEFAULT '{}';",
    // The pool is a flag on its sprites, not an organization of its own (`_pool`
    // before this).
    "ALTER TABLE sprites ADD COLUMN pooled INTEGER NOT NULL DEFAULT 0;
     UPDATE sprites SET pooled = 1, org = '' WHERE org = '_pool';",
    // Templates: a named copy (volume) of a sprite's checkpoint, per organization.
    "CREATE TABLE templates (
        org TEXT NOT NULL,
        name TEXT NOT NULL,
        volume TEXT NOT NULL,
        info TEXT NOT NULL,
        PRIMARY KEY (org, name)
    );",
    // API tokens minted here (never the token: its BLAKE3 hash) and organizations'
    // limits (see access.rs).
    "CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        org TEXT NOT NULL,
        scope TEXT NOT NULL,
        description TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE org_limits (
        org TEXT PRIMARY KEY,
        running_limit INTEGER NOT NULL,
        warm_limit INTEGER NOT NULL
    );",
    // Usage per sprite and hour (see usage.rs): what it stored, used and how long it
    // was in each state; `org` and `name` say whose it was after a destroy.
    "CREATE TABLE usage_hourly (
        sprite_id TEXT NOT NULL,
        org TEXT NOT NULL,
        name TEXT NOT NULL,
        hour INTEGER NOT NULL,
        cpu_ms INTEGER NOT NULL DEFAULT 0,
        memory_peak_bytes INTEGER NOT NULL DEFAULT 0,
        memory_sum_bytes INTEGER NOT NULL DEFAULT 0,
        samples INTEGER NOT NULL DEFAULT 0,
        net_rx_bytes INTEGER NOT NULL DEFAULT 0,
        net_tx_bytes INTEGER NOT NULL DEFAULT 0,
        stored_bytes INTEGER,
        running_ms INTEGER NOT NULL DEFAULT 0,
        warm_ms INTEGER NOT NULL DEFAULT 0,
        cold_ms INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (sprite_id, hour)
    );",
];

/// Settings the SDKs send and read back that change nothing here (API.md, create).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SpriteAttrs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_access: Option<String>,
    /// Upgrades that a restore can undo: the checkpoint taken before each, and the
    /// image (version) the sprite ran on then. Oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upgrades: Vec<UpgradeMark>,
}

/// One upgrade of a sprite's image (see [`SpriteAttrs::upgrades`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpgradeMark {
    pub checkpoint: String,
    pub image: String,
}

/// A sprite's sleep state as last saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifeRecord {
    pub status: sprite_api::sprite::SpriteStatus,
    pub since_ms: u64,
    pub last_active_ms: u64,
    pub last_warming_ms: Option<u64>,
}

/// One sprite row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpriteRecord {
    pub id: crate::ids::SpriteId,
    pub org: String,
    pub name: String,
    pub image: String,
    pub url_auth: sprite_api::sprite::UrlAuth,
    pub labels: Vec<String>,
    pub config: sprite_api::sprite::SpriteConfig,
    pub environment: std::collections::BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
    pub last_running_at: Option<String>,
    pub id_base: u32,
    #[serde(default)]
    pub attrs: SpriteAttrs,
    /// A ready sprite of the pool, in no organization until a create takes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pooled: bool,
}

impl SpriteRecord {
    /// What its organization calls it.
    pub fn key(&self) -> crate::ids::SpriteKey {
        crate::ids::SpriteKey::new(self.org.clone(), self.name.clone())
    }
}

/// Inserts a sprite row; `SpriteExists` if the name is taken in its organization.
fn insert_on(connection: &Connection, sprite: &SpriteRecord) -> Result<(), CoreError> {
    let result = connection.execute(
        &format!("INSERT INTO sprites ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"),
        params![
            sprite.id,
            sprite.org,
            sprite.name,
            sprite.image,
            sprite.url_auth.as_str(),
            to_json(&sprite.labels),
            to_json(&sprite.config),
            to_json(&sprite.environment),
            sprite.created_at,
            sprite.updated_at,
            sprite.last_running_at,
            sprite.id_base,
            to_json(&sprite.attrs),
            sprite.pooled,
        ],
    );
    match result {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(CoreError::SpriteExists(sprite.name.clone()))
        }
        Err(e) => Err(e.into()),
    }
}

/// The lowest range no sprite holds.
fn free_range(connection: &Connection, ranges: &IdRanges) -> Result<u32, CoreError> {
    let mut statement = connection.prepare("SELECT id_base FROM sprites WHERE id_base >= ?1")?;
    let taken: std::collections::HashSet<u32> = statement
        .query_map(params![ranges.first], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    (0..ranges.count)
        .map(|k| ranges.first + k * ranges.size)
        .find(|base| !taken.contains(base))
        .ok_or(CoreError::NoIdRange(ranges.count))
}

/// The host ids sprites' ranges are cut from: `count` ranges of `size` ids from `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRanges {
    pub first: u32,
    pub size: u32,
    pub count: u32,
}

impl IdRanges {
    /// Whether `base` is the start of one of these ranges.
    pub fn holds(&self, base: u32) -> bool {
        base >= self.first
            && (base - self.first).is_multiple_of(self.size.max(1))
            && (base - self.first) / self.size.max(1) < self.count
    }
}

#[derive(Debug)]
pub struct Database {
    connection: Mutex<Connection>,
}

/// A column that does not hold what it must (a corrupt or hand-edited database):
/// the read fails, naming the column, instead of reading as a default.
#[derive(Debug, thiserror::Error)]
#[error("column {column} holds {value:?}, which is not {what}")]
struct BadColumn {
    column: &'static str,
    value: String,
    what: &'static str,
}

fn bad_column(
    index: usize,
    column: &'static str,
    value: String,
    what: &'static str,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        index,
        rusqlite::types::Type::Text,
        Box::new(BadColumn {
            column,
            value,
            what,
        }),
    )
}

/// A JSON column, read strictly.
fn json_column<T: for<'de> serde::Deserialize<'de>>(
    row: &rusqlite::Row<'_>,
    index: usize,
    column: &'static str,
) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text)
        .map_err(|_| bad_column(index, column, text, "valid JSON of its kind"))
}

fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<SpriteRecord> {
    let url_auth: String = row.get(4)?;
    Ok(SpriteRecord {
        id: row.get(0)?,
        org: row.get(1)?,
        name: row.get(2)?,
        image: row.get(3)?,
        url_auth: sprite_api::sprite::UrlAuth::parse(&url_auth)
            .ok_or_else(|| bad_column(4, "url_auth", url_auth, "sprite or public"))?,
        labels: json_column(row, 5, "labels")?,
        config: json_column(row, 6, "config")?,
        environment: json_column(row, 7, "environment")?,
        created_at: row.get(8)?,
        updated_at: row.get(9)?,
        last_running_at: row.get(10)?,
        id_base: row.get(11)?,
        attrs: json_column(row, 12, "attrs")?,
        pooled: row.get(13)?,
    })
}

/// A sprite as the idle policy sees it ([`Database::sleep_facts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SleepFacts {
    pub id: String,
    pub name: String,
    /// `config.warm_after` and `config.cold_after` as given at create.
    pub warm_after: Option<String>,
    pub cold_after: Option<String>,
}

const COLUMNS: &str =
    "id, org, name, image, url_auth, labels, config, environment, created_at, updated_at, last_running_at, id_base, attrs, pooled";

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

impl Database {
    /// Opens (or creates) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Database, CoreError> {
        let connection = Connection::open(path)?;
        Self::with_connection(connection)
    }

    pub fn in_memory() -> Result<Database, CoreError> {
        Self::with_connection(Connection::open_in_memory()?)
    }

    fn with_connection(mut connection: Connection) -> Result<Database, CoreError> {
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: usize =
            connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            let transaction = connection.transaction()?;
            transaction.execute_batch(migration)?;
            transaction.pragma_update(None, "user_version", index + 1)?;
            transaction.commit()?;
        }
        Ok(Database {
            connection: Mutex::new(connection),
        })
    }

    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, Connection> {
        self.connection.lock()
    }

    /// Inserts a sprite; `SpriteExists` if the name is taken in its organization.
    pub fn insert(&self, sprite: &SpriteRecord) -> Result<(), CoreError> {
        insert_on(&self.lock(), sprite)
    }

    /// Inserts a new sprite with a host id range of its own (see
    /// [`Self::assign_id_range`]), picked and recorded in one commit. Answers it.
    pub fn insert_with_id_range(
        &self,
        sprite: &SpriteRecord,
        ranges: &IdRanges,
    ) -> Result<u32, CoreError> {
        let connection = self.lock();
        let base = free_range(&connection, ranges)?;
        insert_on(
            &connection,
            &SpriteRecord {
                id_base: base,
                ..sprite.clone()
            },
        )?;
        Ok(base)
    }

    /// The first sprite row matching `condition` (SQL after WHERE).
    fn one(
        &self,
        condition: &str,
        values: impl rusqlite::Params,
    ) -> Result<Option<SpriteRecord>, CoreError> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {COLUMNS} FROM sprites WHERE {condition}"),
                values,
                record,
            )
            .optional()?)
    }

    /// The record of the sprite `key` names; `SpriteNotFound` if there is none.
    pub fn record(&self, key: &crate::ids::SpriteKey) -> Result<SpriteRecord, CoreError> {
        self.get(&key.org, &key.name)?
            .ok_or_else(|| CoreError::SpriteNotFound(key.name.clone()))
    }

    pub fn get(&self, org: &str, name: &str) -> Result<Option<SpriteRecord>, CoreError> {
        self.one("org = ?1 AND name = ?2", params![org, name])
    }

    /// Sprites of an organization whose name starts with `prefix` and sorts after
    /// `after`, in name order, at most `limit`.
    pub fn list(
        &self,
        org: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SpriteRecord>, CoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(&format!(
            "SELECT {COLUMNS} FROM sprites WHERE org = ?1 AND substr(name, 1, length(?2)) = ?2 AND name > ?3
             ORDER BY name LIMIT ?4"
        ))?;
        let rows = statement.query_map(
            params![org, prefix, after.unwrap_or(""), limit as i64],
            record,
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn all(&self) -> Result<Vec<SpriteRecord>, CoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(&format!(
            "SELECT {COLUMNS} FROM sprites ORDER BY created_at"
        ))?;
        let rows = statement.query_map([], record)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// What the idle policy looks at each tick, for every sprite but the pooled ones: id,
    /// name and the sleep timers of its config, without reading (and parsing) the rest
    /// of every record while the database is held. A config that is not valid JSON
    /// reads as no timers of its own (the full record of that sprite is an error).
    pub fn sleep_facts(&self) -> Result<Vec<SleepFacts>, CoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT id, name,
                    CASE WHEN json_valid(config) AND json_type(config, '$.warm_after') = 'text'
                         THEN json_extract(config, '$.warm_after') END,
                    CASE WHEN json_valid(config) AND json_type(config, '$.cold_after') = 'text'
                         THEN json_extract(config, '$.cold_after') END
             FROM sprites WHERE pooled = 0",
        )?;
        let rows = statement.query_map([], |row| {
            Ok(SleepFacts {
                id: row.get(0)?,
                name: row.get(1)?,
                warm_after: row.get(2)?,
                cold_after: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn update(&self, sprite: &SpriteRecord) -> Result<(), CoreError> {
        self.lock().execute(
            "UPDATE sprites SET url_auth = ?2, labels = ?3, updated_at = ?4, last_running_at = ?5, attrs = ?6, config = ?7 WHERE id = ?1",
            params![sprite.id, sprite.url_auth.as_str(), to_json(&sprite.labels), sprite.updated_at, sprite.last_running_at, to_json(&sprite.attrs), to_json(&sprite.config)],
        )?;
        Ok(())
    }

    /// Moves a sprite onto another image (version).
    pub fn set_image(&self, id: &str, image: &str, attrs: &SpriteAttrs) -> Result<(), CoreError> {
        let connection = self.lock();
        connection.execute(
            "UPDATE sprites SET image = ?2, attrs = ?3 WHERE id = ?1",
            params![id, image, to_json(attrs)],
        )?;
        Ok(())
    }

    pub fn delete(&self, id: &str) -> Result<(), CoreError> {
        let connection = self.lock();
        connection.execute("DELETE FROM sprites WHERE id = ?1", params![id])?;
        connection.execute("DELETE FROM lifecycle WHERE id = ?1", params![id])?;
        connection.execute("DELETE FROM policies WHERE sprite_id = ?1", params![id])?;
        connection.execute(
            "DELETE FROM checkpoints_made_inside WHERE sprite_id = ?1",
            params![id],
        )?;
        Ok(())
    }

    /// Records a template (`TemplateExists` if the organization has one of that name).
    pub fn insert_template(
        &self,
        org: &str,
        volume: &str,
        info: &sprite_api::sprite::TemplateInfo,
    ) -> Result<(), CoreError> {
        let text = serde_json::to_string(info).unwrap_or_default();
        let inserted = self.lock().execute(
            "INSERT OR IGNORE INTO templates (org, name, volume, info) VALUES (?1, ?2, ?3, ?4)",
            params![org, info.name, volume, text],
        )?;
        if inserted == 0 {
            return Err(CoreError::TemplateExists(info.name.clone()));
        }
        Ok(())
    }

    /// A template of the organization, with its volume.
    pub fn template(
        &self,
        org: &str,
        name: &str,
    ) -> Result<(String, sprite_api::sprite::TemplateInfo), CoreError> {
        use rusqlite::OptionalExtension;
        let row: Option<(String, String)> = self
            .lock()
            .query_row(
                "SELECT volume, info FROM templates WHERE org = ?1 AND name = ?2",
                params![org, name],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let (volume, info) = row.ok_or_else(|| CoreError::TemplateNotFound(name.to_string()))?;
        let info = serde_json::from_str(&info).map_err(|e| CoreError::Corrupt {
            what: "template record",
            message: e.to_string(),
        })?;
        Ok((volume, info))
    }

    /// The organization's templates, by name.
    pub fn templates(&self, org: &str) -> Result<Vec<sprite_api::sprite::TemplateInfo>, CoreError> {
        let connection = self.lock();
        let mut statement =
            connection.prepare("SELECT info FROM templates WHERE org = ?1 ORDER BY name")?;
        let rows = statement.query_map(params![org], |row| row.get::<_, String>(0))?;
        let mut templates = Vec::new();
        for row in rows {
            let info = serde_json::from_str(&row?).map_err(|e| CoreError::Corrupt {
                what: "template record",
                message: e.to_string(),
            })?;
            templates.push(info);
        }
        Ok(templates)
    }

    /// The image (version) of every template of every organization.
    pub fn template_images(&self) -> Result<Vec<String>, CoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare("SELECT info FROM templates")?;
        let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
        let mut images = Vec::new();
        for info in rows {
            let info = info?;
            if let Ok(info) = serde_json::from_str::<sprite_api::sprite::TemplateInfo>(&info) {
                images.push(info.image);
            }
        }
        Ok(images)
    }

    pub fn delete_template(&self, org: &str, name: &str) -> Result<(), CoreError> {
        self.lock().execute(
            "DELETE FROM templates WHERE org = ?1 AND name = ?2",
            params![org, name],
        )?;
        Ok(())
    }

    /// Records (or forgets) that sprite `sprite_id` made `checkpoint` itself.
    pub fn set_made_inside(
        &self,
        sprite_id: &str,
        checkpoint: &str,
        made_inside: bool,
    ) -> Result<(), CoreError> {
        let sql = if made_inside {
            "INSERT OR IGNORE INTO checkpoints_made_inside (sprite_id, checkpoint) VALUES (?1, ?2)"
        } else {
            "DELETE FROM checkpoints_made_inside WHERE sprite_id = ?1 AND checkpoint = ?2"
        };
        self.lock().execute(sql, params![sprite_id, checkpoint])?;
        Ok(())
    }

    /// Whether sprite `sprite_id` made `checkpoint` itself.
    pub fn made_inside(&self, sprite_id: &str, checkpoint: &str) -> Result<bool, CoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT 1 FROM checkpoints_made_inside WHERE sprite_id = ?1 AND checkpoint = ?2",
                params![sprite_id, checkpoint],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Gives sprite `id` a host id range of its own unless it has one: ranges are
    /// `ranges.first + k * ranges.size` for `k < ranges.count`, and the lowest one no
    /// other sprite holds is taken. Picking and recording happen under one lock, so two
    /// sprites never get the same range; a range is free again once its sprite's row is
    /// deleted (destroy). Answers the sprite's range (its first id).
    pub fn assign_id_range(&self, id: &str, ranges: &IdRanges) -> Result<u32, CoreError> {
        let connection = self.lock();
        let current: u32 = connection
            .query_row(
                "SELECT id_base FROM sprites WHERE id = ?1",
                params![id],
                |row| row.get(0),
            )
            .optional()?
            .ok_or_else(|| CoreError::SpriteNotFound(id.to_string()))?;
        if ranges.holds(current) {
            return Ok(current);
        }
        let free = free_range(&connection, ranges)?;
        connection.execute(
            "UPDATE sprites SET id_base = ?2 WHERE id = ?1",
            params![id, free],
        )?;
        Ok(free)
    }

    /// A sprite's network policy JSON, if one was set.
    pub fn network_policy(&self, sprite_id: &str) -> Result<Option<String>, CoreError> {
        use rusqlite::OptionalExtension;
        Ok(self
            .lock()
            .query_row(
                "SELECT network FROM policies WHERE sprite_id = ?1",
                params![sprite_id],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Records a sprite's network policy JSON.
    pub fn set_network_policy(&self, sprite_id: &str, json: &str) -> Result<(), CoreError> {
        self.lock().execute(
            "INSERT INTO policies (sprite_id, network) VALUES (?1, ?2)
             ON CONFLICT (sprite_id) DO UPDATE SET network = excluded.network",
            params![sprite_id, json],
        )?;
        Ok(())
    }

    /// Gives the pooled sprite `sprite.id` the organization, name and settings of
    /// `sprite` (a create took it); it is pooled no more. `SpriteExists` if that name
    /// is taken, `SpriteNotFound` if no pooled sprite has that id.
    pub fn adopt(&self, sprite: &SpriteRecord) -> Result<(), CoreError> {
        let result = self.lock().execute(
            "UPDATE sprites SET org = ?2, name = ?3, url_auth = ?4, labels = ?5, config = ?6,
                 environment = ?7, created_at = ?8, updated_at = ?9, attrs = ?10, pooled = 0
             WHERE id = ?1 AND pooled = 1",
            params![
                sprite.id,
                sprite.org,
                sprite.name,
                sprite.url_auth.as_str(),
                to_json(&sprite.labels),
                to_json(&sprite.config),
                to_json(&sprite.environment),
                sprite.created_at,
                sprite.updated_at,
                to_json(&sprite.attrs),
            ],
        );
        match result {
            Ok(1) => Ok(()),
            Ok(_) => Err(CoreError::SpriteNotFound(sprite.id.to_string())),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(CoreError::SpriteExists(sprite.name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The oldest sprite of that name in any organization but `except_org`.
    /// The sprite named `name` in any organization (the oldest if several share the
    /// name); pooled sprites are no one's.
    pub fn find_by_name(&self, name: &str) -> Result<Option<SpriteRecord>, CoreError> {
        self.one(
            "name = ?1 AND pooled = 0 ORDER BY created_at LIMIT 1",
            params![name],
        )
    }

    pub fn get_by_id(&self, id: &str) -> Result<Option<SpriteRecord>, CoreError> {
        self.one("id = ?1", params![id])
    }

    pub fn save_task(&self, sprite_id: &str, name: &str, expires_ms: u64) -> Result<(), CoreError> {
        self.lock().execute(
            "INSERT OR REPLACE INTO tasks (sprite_id, name, expires_ms) VALUES (?1, ?2, ?3)",
            params![sprite_id, name, expires_ms as i64],
        )?;
        Ok(())
    }

    /// Deletes one task of a sprite, or all of them.
    pub fn delete_task(&self, sprite_id: &str, name: Option<&str>) -> Result<(), CoreError> {
        let connection = self.lock();
        match name {
            Some(name) => connection.execute(
                "DELETE FROM tasks WHERE sprite_id = ?1 AND name = ?2",
                params![sprite_id, name],
            )?,
            None => {
                connection.execute("DELETE FROM tasks WHERE sprite_id = ?1", params![sprite_id])?
            }
        };
        Ok(())
    }

    /// Every saved task: (sprite id, name, expiry in Unix ms).
    pub fn tasks(&self) -> Result<Vec<(String, String, u64)>, CoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare("SELECT sprite_id, name, expires_ms FROM tasks")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get::<_, i64>(2)?.max(0) as u64,
            ))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn save_life(&self, id: &str, life: &LifeRecord) -> Result<(), CoreError> {
        self.lock().execute(
            "INSERT OR REPLACE INTO lifecycle (id, status, since_ms, last_active_ms, last_warming_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                id,
                life.status.as_str(),
                life.since_ms as i64,
                life.last_active_ms as i64,
                life.last_warming_ms.map(|ms| ms as i64)
            ],
        )?;
        Ok(())
    }

    pub fn life(&self, id: &str) -> Result<Option<LifeRecord>, CoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT status, since_ms, last_active_ms, last_warming_ms FROM lifecycle WHERE id = ?1",
                params![id],
                |row| {
                    let status: String = row.get(0)?;
                    Ok(LifeRecord {
                        status: sprite_api::sprite::SpriteStatus::parse(&status).ok_or_else(
                            || bad_column(0, "status", status, "cold, warm or running"),
                        )?,
                        since_ms: row.get::<_, i64>(1)?.max(0) as u64,
                        last_active_ms: row.get::<_, i64>(2)?.max(0) as u64,
                        last_warming_ms: row.get::<_, Option<i64>>(3)?.map(|ms| ms.max(0) as u64),
                    })
                },
            )
            .optional()?)
    }

    /// The ids of an organization's sprites (what counting them by status needs).
    pub fn ids(&self, org: &str) -> Result<Vec<String>, CoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare("SELECT id FROM sprites WHERE org = ?1")?;
        let rows = statement.query_map(params![org], |row| row.get(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// How many sprites an organization has (read from the `(org, name)` index, no row
    /// is decoded).
    pub fn count_in(&self, org: &str) -> Result<u64, CoreError> {
        Ok(self.lock().query_row(
            "SELECT count(*) FROM sprites WHERE org = ?1",
            params![org],
            |row| row.get::<_, i64>(0),
        )? as u64)
    }

    pub fn count(&self) -> Result<usize, CoreError> {
        Ok(self
            .lock()
            .query_row("SELECT count(*) FROM sprites", [], |row| {
                row.get::<_, i64>(0)
            })? as usize)
    }
}

/// A record for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) fn record(name: &str) -> super::SpriteRecord {
        super::tests::sprite(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn sprite(name: &str) -> SpriteRecord {
        SpriteRecord {
            id: format!("id-{name}").into(),
            org: "default".into(),
            name: name.into(),
            image: "busybox".into(),
            url_auth: sprite_api::sprite::UrlAuth::Sprite,
            labels: vec!["a".into()],
            config: Default::default(),
            environment: Default::default(),
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            last_running_at: None,
            id_base: 100000,
            attrs: SpriteAttrs {
                runtime: Some("dev".into()),
                private_access: None,
                upgrades: Vec::new(),
            },
            pooled: false,
        }
    }

    #[test]
    fn sleep_facts_read_the_timers_of_every_sprite_but_pooled_ones() {
        let db = Database::in_memory().expect("db");
        let mut timed = sprite("timed");
        timed.config.warm_after = Some("5m".into());
        timed.config.cold_after = Some("never".into());
        db.insert(&timed).expect("insert");
        db.insert(&sprite("plain")).expect("insert");
        let mut pooled = sprite("pool-1");
        pooled.pooled = true;
        db.insert(&pooled).expect("insert");
        for (name, config) in [("broken", "not json"), ("odd", "{\"warm_after\": 30}")] {
            db.insert(&sprite(name)).expect("insert");
            db.lock()
                .execute(
                    "UPDATE sprites SET config = ?1 WHERE name = ?2",
                    params![config, name],
                )
                .expect("corrupt");
        }
        let mut facts = db.sleep_facts().expect("facts");
        facts.sort_by(|a, b| a.name.cmp(&b.name));
        let fact = |name: &str, warm: Option<&str>, cold: Option<&str>| SleepFacts {
            id: format!("id-{name}"),
            name: name.into(),
            warm_after: warm.map(String::from),
            cold_after: cold.map(String::from),
        };
        assert_eq!(
            facts,
            vec![
                // A corrupt config reads as no timers of its own, the others still listed.
                fact("broken", None, None),
                fact("odd", None, None),
                fact("plain", None, None),
                fact("timed", Some("5m"), Some("never")),
            ]
        );
        // What the running limit counts before it looks at statuses.
        assert_eq!(db.count_in("default").expect("count"), 5);
        assert_eq!(db.count_in("other").expect("count"), 0);
    }

    #[test]
    fn states_are_typed_and_a_corrupt_row_is_an_error_not_a_default() {
        let db = Database::in_memory().expect("db");
        let mut public = sprite("a");
        public.url_auth = sprite_api::sprite::UrlAuth::Public;
        db.insert(&public).expect("insert");
        let read = db.get("default", "a").expect("get").expect("there");
        assert_eq!(read.url_auth, sprite_api::sprite::UrlAuth::Public);
        let life = LifeRecord {
            status: sprite_api::sprite::SpriteStatus::Warm,
            since_ms: 5,
            last_active_ms: 4,
            last_warming_ms: Some(5),
        };
        db.save_life("id-a", &life).expect("save");
        assert_eq!(db.life("id-a").expect("life"), Some(life));
        for (column, value) in [
            ("config", "{\"ram_mb\": \"lots\"}"),
            ("labels", "not json"),
            ("url_auth", "everyone"),
        ] {
            db.insert(&sprite("b")).expect("insert");
            db.lock()
                .execute(
                    &format!("UPDATE sprites SET {column} = ?1 WHERE id = 'id-b'"),
                    params![value],
                )
                .expect("corrupt");
            let error = db.get("default", "b").expect_err("a corrupt row reads");
            let text = sprite_api::error_chain(&error);
            assert!(text.contains(column), "{column}: {text}");
            db.delete("id-b").expect("delete");
        }
        db.lock()
            .execute(
                "UPDATE lifecycle SET status = 'asleep' WHERE id = 'id-a'",
                [],
            )
            .expect("corrupt");
        assert!(db.life("id-a").is_err());
    }

    #[test]
    fn duplicate_names_conflict() {
        let db = Database::in_memory().expect("db");
        db.insert(&sprite("a")).expect("insert");
        let mut twin = sprite("a");
        twin.id = "other".into();
        assert!(matches!(db.insert(&twin), Err(CoreError::SpriteExists(_))));
        let mut other_org = twin.clone();
        other_org.org = "acme".into();
        db.insert(&other_org).expect("same name in another org");
    }

    #[test]
    fn lists_by_prefix_and_page() {
        let db = Database::in_memory().expect("db");
        for name in ["app-1", "app-2", "app-3", "web"] {
            db.insert(&sprite(name)).expect("insert");
        }
        let page = db.list("default", "app", None, 2).expect("list");
        assert_eq!(
            page.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["app-1", "app-2"]
        );
        let next = db.list("default", "app", Some("app-2"), 2).expect("list");
        assert_eq!(
            next.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["app-3"]
        );
        assert_eq!(db.list("default", "app_", None, 10).expect("list").len(), 0);
    }

    #[test]
    fn sleep_state_is_saved_and_goes_with_the_sprite() {
        let db = Database::in_memory().expect("db");
        let record = sprite("a");
        db.insert(&record).expect("insert");
        assert_eq!(db.life(&record.id).expect("life"), None);
        let life = LifeRecord {
            status: sprite_api::sprite::SpriteStatus::Warm,
            since_ms: 5,
            last_active_ms: 4,
            last_warming_ms: Some(5),
        };
        db.save_life(&record.id, &life).expect("save");
        assert_eq!(db.life(&record.id).expect("life"), Some(life.clone()));
        let colder = LifeRecord {
            status: sprite_api::sprite::SpriteStatus::Cold,
            ..life
        };
        db.save_life(&record.id, &colder).expect("save again");
        assert_eq!(db.life(&record.id).expect("life"), Some(colder));
        db.delete(&record.id).expect("delete");
        assert_eq!(db.life(&record.id).expect("life"), None);
    }

    #[test]
    fn pooled_sprites_of_the_old_hidden_organization_become_flagged() {
        let connection = Connection::open_in_memory().expect("db");
        // The schema before the flag, with a pooled sprite in `_pool`.
        let flag = MIGRATIONS
            .iter()
            .position(|m| m.contains("ADD COLUMN pooled"))
            .expect("the flag's migration");
        for migration in &MIGRATIONS[..flag] {
            connection.execute_batch(migration).expect("migrate");
        }
        connection
            .pragma_update(None, "user_version", flag)
            .expect("version");
        connection
            .execute(
                "INSERT INTO sprites (id, org, name, image, url_auth, labels, config, environment,
                     created_at, updated_at, id_base)
                 VALUES ('p1', '_pool', 'pool-1', 'debian', 'sprite', '[]', '{}', '{}', 't', 't', 0),
                        ('s1', 'default', 'dev', 'debian', 'sprite', '[]', '{}', '{}', 't', 't', 0)",
                [],
            )
            .expect("insert");
        let db = Database::with_connection(connection).expect("upgrade");
        let pooled = db.get_by_id("p1").expect("get").expect("kept");
        assert!(pooled.pooled && pooled.org.is_empty(), "{pooled:?}");
        assert!(!db.get_by_id("s1").expect("get").expect("kept").pooled);
    }

    #[test]
    fn adopting_a_pooled_sprite_renames_it_unless_the_name_is_taken() {
        let db = Database::in_memory().expect("db");
        let mut pooled = sprite("pool-1");
        pooled.org = String::new();
        pooled.pooled = true;
        db.insert(&pooled).expect("insert");
        assert!(
            db.find_by_name("pool-1").expect("find").is_none(),
            "no one's"
        );
        db.insert(&sprite("taken")).expect("insert");
        let mut wanted = sprite("taken");
        wanted.id = pooled.id.clone();
        assert!(matches!(db.adopt(&wanted), Err(CoreError::SpriteExists(_))));
        wanted.name = "fresh".into();
        wanted.labels = vec!["web".into()];
        db.adopt(&wanted).expect("adopt");
        let got = db.get("default", "fresh").expect("get").expect("adopted");
        assert_eq!(
            (got.id.as_str(), got.labels.as_slice()),
            (pooled.id.as_str(), &["web".to_string()][..])
        );
        assert!(db.get("", "pool-1").expect("get").is_none());
        assert!(!got.pooled);
        // Only once: it is no longer in the pool.
        assert!(matches!(
            db.adopt(&wanted),
            Err(CoreError::SpriteNotFound(_))
        ));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn every_sprite_gets_a_range_of_its_own_and_keeps_it() {
        let db = Database::in_memory().unwrap();
        let ranges = IdRanges {
            first: 1 << 30,
            size: 65_536,
            count: 3,
        };
        for name in ["a", "b", "c", "d"] {
            db.insert(&sprite(name)).unwrap();
        }
        let id = |name: &str| db.get("default", name).unwrap().unwrap().id;
        // A sprite of the old shared range (100000) is moved to a range of its own.
        let a = db.assign_id_range(&id("a"), &ranges).unwrap();
        let b = db.assign_id_range(&id("b"), &ranges).unwrap();
        assert_eq!((a, b), (1 << 30, (1 << 30) + 65_536));
        assert_eq!(db.assign_id_range(&id("a"), &ranges).unwrap(), a, "kept");
        assert_eq!(
            db.get("default", "a").unwrap().unwrap().id_base,
            a,
            "recorded"
        );
        db.assign_id_range(&id("c"), &ranges).unwrap();
        assert!(matches!(
            db.assign_id_range(&id("d"), &ranges),
            Err(CoreError::NoIdRange(3))
        ));
        // Destroying a sprite frees its range for the next one.
        db.delete(&id("a")).unwrap();
        assert_eq!(db.assign_id_range(&id("d"), &ranges).unwrap(), a);
        // A new sprite gets its range as it is inserted; none left: a clear error.
        db.delete(&id("b")).unwrap();
        let mut e = sprite("e");
        e.id = "id-e".into();
        assert_eq!(db.insert_with_id_range(&e, &ranges).unwrap(), b);
        assert_eq!(db.get("default", "e").unwrap().unwrap().id_base, b);
        let mut f = sprite("f");
        f.id = "id-f".into();
        assert!(matches!(
            db.insert_with_id_range(&f, &ranges),
            Err(CoreError::NoIdRange(3))
        ));
        assert!(ranges.holds(a) && !ranges.holds(a + 1) && !ranges.holds(100_000));
    }

    #[test]
    fn migrations_are_idempotent() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("db");
        Database::open(&path)
            .expect("first")
            .insert(&sprite("x"))
            .expect("insert");
        let db = Database::open(&path).expect("second");
        assert_eq!(db.count().expect("count"), 1);
    }
}
