//! Typed ids: a [`SpriteId`] is what the host knows a sprite by (its cgroup, state
//! directory, volume, slot), fixed for its life; its name is what its organization
//! calls it (a pool take renames a sprite, its id stays), and the two must not be
//! confused.

use std::fmt;

/// A sprite's id, `sprite-<32 hex>`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct SpriteId(String);

impl SpriteId {
    /// A new, random id.
    pub fn generate() -> SpriteId {
        SpriteId(format!("sprite-{}", uuid::Uuid::new_v4().simple()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for SpriteId {
    fn from(id: String) -> SpriteId {
        SpriteId(id)
    }
}

impl From<&str> for SpriteId {
    fn from(id: &str) -> SpriteId {
        SpriteId(id.to_string())
    }
}

impl std::ops::Deref for SpriteId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SpriteId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for SpriteId {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl std::borrow::Borrow<str> for SpriteId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpriteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for SpriteId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SpriteId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for SpriteId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl rusqlite::ToSql for SpriteId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

impl rusqlite::types::FromSql for SpriteId {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        String::column_result(value).map(SpriteId)
    }
}

/// A sprite as its organization names it (API paths, the CLI's `-s`): resolved once at
/// the edge and passed whole, so an organization and a name never travel as two loose
/// strings that can be swapped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpriteKey {
    pub org: String,
    pub name: String,
}

impl SpriteKey {
    pub fn new(org: impl Into<String>, name: impl Into<String>) -> SpriteKey {
        SpriteKey {
            org: org.into(),
            name: name.into(),
        }
    }

    /// The same organization's sprite `name`.
    pub fn sibling(&self, name: impl Into<String>) -> SpriteKey {
        SpriteKey::new(self.org.clone(), name)
    }
}

/// A key shows as its name: messages go to the organization that named it.
impl fmt::Display for SpriteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_a_plain_string_on_the_wire_and_in_the_database() {
        let id = SpriteId::generate();
        assert!(id.starts_with("sprite-") && id.len() == 39, "{id}");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<SpriteId>(&json).unwrap(), id);
        let db = rusqlite::Connection::open_in_memory().unwrap();
        let back: SpriteId = db
            .query_row("SELECT ?1", rusqlite::params![id], |row| row.get(0))
            .unwrap();
        assert_eq!(back, id);
        let mut set = std::collections::HashSet::new();
        set.insert(id.clone());
        assert!(set.contains(id.as_str()), "looked up by &str");
    }

    #[test]
    fn a_key_names_its_sprite_and_keeps_its_organization() {
        let key = SpriteKey::new("acme", "dev");
        assert_eq!(key.to_string(), "dev");
        let other = key.sibling("ci");
        assert_eq!((other.org.as_str(), other.name.as_str()), ("acme", "ci"));
        assert_ne!(
            key,
            SpriteKey::new("other", "dev"),
            "same name, other organization"
        );
    }
}
