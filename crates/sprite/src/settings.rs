//! Where the CLI finds the daemon, its token and the current sprite.
//!
//! API URL: `--api-url`, then `SPRITES_API_URL`, then `http://127.0.0.1:7070`.
//! Token: `--token`, then `SPRITE_TOKEN`, then the admin token the local daemon wrote
//! (`<data dir>/admin-token`). Sprite: `-s NAME`, then the nearest `.sprite` file in
//! this directory or a parent (written by `sprite use`).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The daemon's API address, written once: the daemon listens on it and the CLI
/// talks to it unless told otherwise.
macro_rules! default_listen {
    () => {
        "127.0.0.1:7070"
    };
}
pub const DEFAULT_LISTEN: &str = default_listen!();
pub const DEFAULT_API_URL: &str = concat!("http://", default_listen!());
pub const DEFAULT_DATA_DIR: &str = "/var/lib/sprites";
pub const SPRITE_FILE: &str = ".sprite";

pub fn token_file(data_dir: &Path) -> PathBuf {
    data_dir.join("admin-token")
}

pub fn data_dir() -> PathBuf {
    std::env::var_os("SPRITE_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

pub fn api_url(flag: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| {
            std::env::var("SPRITES_API_URL")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_API_URL.to_string())
}

pub fn token(flag: Option<&str>) -> Result<String> {
    if let Some(token) = flag
        .map(str::to_string)
        .or_else(|| std::env::var("SPRITE_TOKEN").ok().filter(|s| !s.is_empty()))
    {
        return Ok(token);
    }
    let path = token_file(&data_dir());
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().to_string()),
        Err(error) => Err(error).with_context(|| {
            format!(
                "no token: pass --token, set SPRITE_TOKEN, or run as a user who can read {}",
                path.display()
            )
        }),
    }
}

/// Finds the `.sprite` file of this directory or the nearest parent.
pub fn sprite_file_name(start: &Path) -> Option<String> {
    for dir in start.ancestors() {
        let file = dir.join(SPRITE_FILE);
        if let Ok(text) = std::fs::read_to_string(&file) {
            let text = text.trim();
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
                if let Some(name) = value.get("sprite").and_then(|v| v.as_str()) {
                    return Some(name.to_string());
                }
            }
            if !text.is_empty() && !text.starts_with('{') {
                return Some(text.to_string());
            }
        }
    }
    None
}

/// The sprite a command acts on.
pub fn sprite_name(flag: Option<&str>) -> Result<String> {
    if let Some(name) = flag {
        return Ok(name.to_string());
    }
    let cwd = std::env::current_dir().context("read the current directory")?;
    match sprite_file_name(&cwd) {
        Some(name) => Ok(name),
        None => bail!("no sprite given: pass -s NAME, or run `sprite use NAME` in this directory"),
    }
}

pub fn write_sprite_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(SPRITE_FILE);
    let text = serde_json::json!({ "sprite": name }).to_string();
    std::fs::write(&path, format!("{text}\n"))
        .with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sprite_file_is_found_in_parents() {
        let dir = tempfile::tempdir().expect("dir");
        let nested = dir.path().join("a/b");
        std::fs::create_dir_all(&nested).expect("mkdir");
        assert_eq!(sprite_file_name(&nested), None);
        write_sprite_file(dir.path(), "dev").expect("write");
        assert_eq!(sprite_file_name(&nested).as_deref(), Some("dev"));
        std::fs::write(nested.join(SPRITE_FILE), "plain\n").expect("write");
        assert_eq!(sprite_file_name(&nested).as_deref(), Some("plain"));
    }
}
