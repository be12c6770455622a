//! Who may call the API and how much an organization may run: tokens minted here
//! (kept as BLAKE3 hashes, never the token) with their scope, and each organization's
//! limits (sprites awake at once, sprites in warm sleep).
//!
//! The tables are read once at open into maps that every request looks up without
//! touching SQLite; each change writes the table first, then the map.

use crate::db::Database;
use crate::error::CoreError;
use parking_lot::RwLock;
use rusqlite::params;
use sprite_api::admin::{CreatedToken, OrgLimits, SetOrgLimits, TokenGrant, TokenInfo, TokenScope};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Most tokens one organization may hold.
pub const MAX_TOKENS_PER_ORG: usize = 1000;
/// Longest token description, in bytes.
pub const MAX_DESCRIPTION: usize = 256;
/// Length of a token id (hex digits of its hash).
const ID_LEN: usize = 16;

/// Tokens and organization limits (see the module docs).
#[derive(Debug)]
pub struct Access {
    db: Arc<Database>,
    /// Token hash → the token as listed.
    tokens: RwLock<HashMap<String, TokenInfo>>,
    limits: RwLock<HashMap<String, (u64, u64)>>,
    default_running: u64,
    default_warm: u64,
}

/// The hash a token is kept and published under (hex BLAKE3).
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// A new token: `spr_` and 64 hex digits (244 random bits).
fn new_token() -> String {
    format!(
        "spr_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn corrupt(what: &'static str) -> impl Fn(String) -> CoreError {
    move |message| CoreError::Corrupt { what, message }
}

impl Access {
    /// Reads the tables; `default_running` and `default_warm` are the limits of an
    /// organization that has none of its own.
    pub fn open(
        db: Arc<Database>,
        default_running: u64,
        default_warm: u64,
    ) -> Result<Access, CoreError> {
        let mut tokens = HashMap::new();
        let mut limits = HashMap::new();
        {
            let connection = db.lock();
            let mut statement = connection
                .prepare("SELECT id, hash, org, scope, description, created_at FROM tokens")?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })?;
            for row in rows {
                let (id, hash, org, scope, description, created_at) = row?;
                let scope = TokenScope::parse(&scope)
                    .ok_or_else(|| format!("token {id} has the unknown scope {scope:?}"))
                    .map_err(corrupt("token record"))?;
                tokens.insert(
                    hash,
                    TokenInfo {
                        id,
                        org,
                        scope,
                        description,
                        created_at,
                    },
                );
            }
            let mut statement =
                connection.prepare("SELECT org, running_limit, warm_limit FROM org_limits")?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (org, running, warm) = row?;
                limits.insert(org, (running.max(0) as u64, warm.max(0) as u64));
            }
        }
        Ok(Access {
            db,
            tokens: RwLock::new(tokens),
            limits: RwLock::new(limits),
            default_running,
            default_warm,
        })
    }

    /// What a token grants, if it is one minted here and not revoked.
    pub fn grant(&self, token: &str) -> Option<TokenGrant> {
        self.tokens
            .read()
            .get(&token_hash(token))
            .map(TokenInfo::grant)
    }

    /// Every token's hash and grant (published to a cluster).
    pub fn grants(&self) -> Vec<(String, TokenGrant)> {
        self.tokens
            .read()
            .iter()
            .map(|(hash, info)| (hash.clone(), info.grant()))
            .collect()
    }

    /// Mints a token for `org`; the answer is the only place the token is shown. Also
    /// answers its hash (for a cluster to publish).
    pub fn create(
        &self,
        org: &str,
        scope: TokenScope,
        description: &str,
    ) -> Result<(CreatedToken, String), CoreError> {
        sprite_api::admin::validate_org_name(org).map_err(CoreError::Validation)?;
        if description.len() > MAX_DESCRIPTION {
            return Err(CoreError::OutOfRange {
                field: "description",
                value: format!("{} bytes", description.len()),
                allowed: format!("at most {MAX_DESCRIPTION} bytes"),
            });
        }
        if description.chars().any(char::is_control) {
            return Err(CoreError::Validation(
                "description has control characters; use one line of plain text".into(),
            ));
        }
        let held = self
            .tokens
            .read()
            .values()
            .filter(|info| info.org == org)
            .count();
        if held >= MAX_TOKENS_PER_ORG {
            return Err(CoreError::Validation(format!(
                "organization {org} holds {held} tokens, the most it may; revoke unused ones first (sprite tokens list, sprite tokens revoke ID)"
            )));
        }
        let token = new_token();
        let hash = token_hash(&token);
        let info = TokenInfo {
            id: hash[..ID_LEN].to_string(),
            org: org.to_string(),
            scope,
            description: description.to_string(),
            created_at: crate::time::now(),
        };
        self.db.lock().execute(
            "INSERT INTO tokens (id, hash, org, scope, description, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![info.id, hash, info.org, scope.as_str(), info.description, info.created_at],
        )?;
        self.tokens.write().insert(hash.clone(), info.clone());
        Ok((CreatedToken { token, info }, hash))
    }

    /// Tokens minted here, of one organization or all, oldest first.
    pub fn list(&self, org: Option<&str>) -> Vec<TokenInfo> {
        let mut tokens: Vec<TokenInfo> = self
            .tokens
            .read()
            .values()
            .filter(|info| org.is_none_or(|org| info.org == org))
            .cloned()
            .collect();
        tokens.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        tokens
    }

    /// A token given by its id (or the token itself), of `org` when given, and its hash.
    pub fn find(&self, org: Option<&str>, id_or_token: &str) -> Option<(TokenInfo, String)> {
        let tokens = self.tokens.read();
        let by_token = token_hash(id_or_token);
        tokens
            .iter()
            .find(|(hash, info)| {
                (info.id == id_or_token || **hash == by_token)
                    && org.is_none_or(|org| info.org == org)
            })
            .map(|(hash, info)| (info.clone(), hash.clone()))
    }

    /// Revokes a token given by its id (or the token itself), of `org` when given.
    /// Answers it and its hash (for a cluster to withdraw).
    pub fn revoke(
        &self,
        org: Option<&str>,
        id_or_token: &str,
    ) -> Result<(TokenInfo, String), CoreError> {
        let (info, hash) = self
            .find(org, id_or_token)
            .ok_or_else(|| CoreError::TokenNotFound(id_or_token.into()))?;
        self.db
            .lock()
            .execute("DELETE FROM tokens WHERE hash = ?1", params![hash])?;
        self.tokens.write().remove(&hash);
        Ok((info, hash))
    }

    /// An organization's limits.
    pub fn limits(&self, org: &str) -> OrgLimits {
        match self.limits.read().get(org) {
            Some(&(running, warm)) => OrgLimits {
                name: org.to_string(),
                running_limit: running,
                warm_limit: warm,
                default: false,
            },
            None => OrgLimits {
                name: org.to_string(),
                running_limit: self.default_running,
                warm_limit: self.default_warm,
                default: true,
            },
        }
    }

    /// Sets an organization's limits (fields left out stay), or resets them.
    pub fn set_limits(&self, org: &str, change: &SetOrgLimits) -> Result<OrgLimits, CoreError> {
        sprite_api::admin::validate_org_name(org).map_err(CoreError::Validation)?;
        if change.reset {
            self.db
                .lock()
                .execute("DELETE FROM org_limits WHERE org = ?1", params![org])?;
            self.limits.write().remove(org);
            return Ok(self.limits(org));
        }
        let now = self.limits(org);
        let running = change.running_limit.unwrap_or(now.running_limit);
        let warm = change.warm_limit.unwrap_or(now.warm_limit);
        for (field, value) in [("running_limit", running), ("warm_limit", warm)] {
            if value > i64::MAX as u64 {
                return Err(CoreError::OutOfRange {
                    field,
                    value: value.to_string(),
                    allowed: format!("0 to {}", i64::MAX),
                });
            }
        }
        self.db.lock().execute(
            "INSERT INTO org_limits (org, running_limit, warm_limit) VALUES (?1, ?2, ?3)
             ON CONFLICT (org) DO UPDATE SET running_limit = ?2, warm_limit = ?3",
            params![org, running as i64, warm as i64],
        )?;
        self.limits.write().insert(org.to_string(), (running, warm));
        Ok(self.limits(org))
    }

    /// Every organization this host knows (with sprites, tokens or limits of its
    /// own), by name, with its limits.
    pub fn organizations(&self) -> Result<Vec<OrgLimits>, CoreError> {
        let mut names: BTreeSet<String> = self.limits.read().keys().cloned().collect();
        names.extend(self.tokens.read().values().map(|info| info.org.clone()));
        {
            let connection = self.db.lock();
            let mut statement =
                connection.prepare("SELECT DISTINCT org FROM sprites WHERE pooled = 0")?;
            let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
            for row in rows {
                names.insert(row?);
            }
        }
        Ok(names.iter().map(|name| self.limits(name)).collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn access(db: &Arc<Database>) -> Access {
        Access::open(db.clone(), 10, 20).unwrap()
    }

    #[test]
    fn tokens_are_kept_hashed_and_revoked() {
        let db = Arc::new(Database::in_memory().unwrap());
        let access = access(&db);
        let (created, hash) = access
            .create("acme", TokenScope::Organization, "ci")
            .unwrap();
        assert!(created.token.starts_with("spr_") && created.token.len() == 68);
        assert_eq!(hash, token_hash(&created.token));
        let stored: String = db
            .lock()
            .query_row("SELECT hash FROM tokens", [], |row| row.get(0))
            .unwrap();
        assert_eq!(stored, hash, "the table holds the hash");
        let text: String = db
            .lock()
            .query_row(
                "SELECT id || hash || org || scope || description || created_at FROM tokens",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(!text.contains(&created.token[4..]), "never the token");
        let grant = access.grant(&created.token).unwrap();
        assert_eq!(
            (grant.org.as_str(), grant.scope),
            ("acme", TokenScope::Organization)
        );
        assert!(access.grant("spr_nope").is_none());
        // A second open reads the same.
        assert!(Access::open(db.clone(), 1, 1)
            .unwrap()
            .grant(&created.token)
            .is_some());
        assert_eq!(access.list(Some("acme")).len(), 1);
        assert!(access.list(Some("other")).is_empty());
        // Another organization cannot revoke it; its own can, by id.
        assert!(matches!(
            access.revoke(Some("other"), &created.info.id),
            Err(CoreError::TokenNotFound(_))
        ));
        let (revoked, _) = access.revoke(Some("acme"), &created.info.id).unwrap();
        assert_eq!(revoked.id, created.info.id);
        assert!(access.grant(&created.token).is_none());
        assert!(Access::open(db, 1, 1)
            .unwrap()
            .grant(&created.token)
            .is_none());
    }

    #[test]
    fn bad_token_requests_are_refused() {
        let db = Arc::new(Database::in_memory().unwrap());
        let access = access(&db);
        for org in ["", "Acme", "a b", "-x"] {
            assert!(
                access.create(org, TokenScope::Admin, "").is_err(),
                "{org:?}"
            );
        }
        assert!(access
            .create("acme", TokenScope::Admin, &"x".repeat(MAX_DESCRIPTION + 1))
            .is_err());
        assert!(access
            .create("acme", TokenScope::Admin, "two\nlines")
            .is_err());
        // Revoking by the token itself works too.
        let (created, _) = access.create("acme", TokenScope::Admin, "x").unwrap();
        assert!(access.revoke(None, &created.token).is_ok());
        assert!(access.revoke(None, &created.token).is_err());
    }

    #[test]
    fn limits_default_set_and_reset() {
        let db = Arc::new(Database::in_memory().unwrap());
        let access = access(&db);
        let default = access.limits("acme");
        assert_eq!((default.running_limit, default.warm_limit), (10, 20));
        assert!(default.default);
        let set = access
            .set_limits(
                "acme",
                &SetOrgLimits {
                    running_limit: Some(2),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            (set.running_limit, set.warm_limit, set.default),
            (2, 20, false)
        );
        assert_eq!(
            Access::open(db.clone(), 10, 20)
                .unwrap()
                .limits("acme")
                .running_limit,
            2
        );
        assert_eq!(access.organizations().unwrap().len(), 1);
        let reset = access
            .set_limits(
                "acme",
                &SetOrgLimits {
                    reset: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(reset.default);
        assert!(access
            .set_limits("Bad Org", &SetOrgLimits::default())
            .is_err());
    }
}
