//! Wire types of the file-system API (`/v1/sprites/{name}/fs/...`, API.md "File
//! system"), the error codes it reports, and the lexical path rules every route shares.

use serde::{Deserialize, Serialize};

/// The `code` of a file-system error answer, after the errno it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum FsCode {
    #[serde(rename = "ENOENT")]
    NotFound,
    #[serde(rename = "EEXIST")]
    Exists,
    #[serde(rename = "ENOTDIR")]
    NotADirectory,
    #[serde(rename = "EISDIR")]
    IsADirectory,
    #[serde(rename = "EACCES")]
    PermissionDenied,
    #[serde(rename = "ENOTEMPTY")]
    NotEmpty,
    #[serde(rename = "EINVAL")]
    Invalid,
    #[serde(rename = "EIO")]
    Io,
}

impl FsCode {
    /// The errno name, as sent in `code`.
    pub fn as_str(self) -> &'static str {
        match self {
            FsCode::NotFound => "ENOENT",
            FsCode::Exists => "EEXIST",
            FsCode::NotADirectory => "ENOTDIR",
            FsCode::IsADirectory => "EISDIR",
            FsCode::PermissionDenied => "EACCES",
            FsCode::NotEmpty => "ENOTEMPTY",
            FsCode::Invalid => "EINVAL",
            FsCode::Io => "EIO",
        }
    }

    /// The HTTP status of an answer with this code.
    pub fn status(self) -> u16 {
        match self {
            FsCode::NotFound => 404,
            FsCode::Exists | FsCode::NotEmpty => 409,
            FsCode::NotADirectory | FsCode::IsADirectory | FsCode::Invalid => 400,
            FsCode::PermissionDenied => 403,
            FsCode::Io => 500,
        }
    }
}

/// What kind of thing an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    File,
    Directory,
    Symlink,
    /// Sockets, FIFOs and device nodes.
    Other,
}

/// One entry of `GET fs/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FsEntry {
    /// The entry's name in its directory. Absent only on a listed directory's own entry
    /// (`includeSelf`), which is how sprites-py's `iterdir` knows to skip it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Absolute path inside the sprite.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    pub size: u64,
    /// Permission bits in octal, e.g. `"0644"`.
    pub mode: String,
    /// RFC 3339.
    pub mod_time: String,
    pub is_dir: bool,
    /// Where a symlink points (ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Answer of `GET fs/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FsList {
    pub path: String,
    pub entries: Vec<FsEntry>,
    pub count: usize,
}

impl FsList {
    /// The listed path's own entry: a file lists as itself, and a directory listed with
    /// `includeSelf` has its own entry first.
    pub fn itself(&self) -> Option<&FsEntry> {
        self.entries.first().filter(|entry| entry.path == self.path)
    }
}

/// Answer of `PUT fs/write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FsWritten {
    pub path: String,
    pub size: u64,
    pub mode: String,
}

/// Answer of `DELETE fs/delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FsDeleted {
    pub deleted: Vec<String>,
    pub count: usize,
}

/// Body of `DELETE fs/delete` (the query may carry the same fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteRequest {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub recursive: Option<bool>,
}

/// Body of `POST fs/rename`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenameRequest {
    pub source: String,
    pub dest: String,
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// Answer of `POST fs/rename`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FsRenamed {
    pub source: String,
    pub dest: String,
}

/// Body of `POST fs/copy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CopyRequest {
    pub source: String,
    pub dest: String,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub recursive: bool,
    #[serde(default)]
    pub preserve_attrs: bool,
}

/// One copied file of `POST fs/copy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CopiedPair {
    pub source: String,
    pub dest: String,
}

/// Answer of `POST fs/copy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FsCopied {
    pub copied: Vec<CopiedPair>,
    pub count: usize,
    pub total_bytes: u64,
}

/// Body of `POST fs/chmod`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChmodRequest {
    pub path: String,
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Octal, e.g. `"0755"` (a JSON number is read as octal digits too).
    pub mode: serde_json::Value,
    #[serde(default)]
    pub recursive: bool,
}

/// Body of `POST fs/chown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChownRequest {
    pub path: String,
    #[serde(default)]
    pub working_dir: Option<String>,
    /// As seen inside the sprite, a number or a name (from the sprite's
    /// `/etc/passwd` and `/etc/group`); absent keeps the current owner.
    #[serde(default)]
    pub uid: Option<IdOrName>,
    #[serde(default)]
    pub gid: Option<IdOrName>,
    #[serde(default)]
    pub recursive: bool,
}

/// A user or group as the SDKs send it: `1000`, `"1000"` or `"sprite"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum IdOrName {
    Id(u32),
    Name(String),
}

impl IdOrName {
    /// The number, if it is one (`"1000"` counts).
    pub fn id(&self) -> Option<u32> {
        match self {
            IdOrName::Id(id) => Some(*id),
            IdOrName::Name(text) => text.parse().ok(),
        }
    }
}

/// Finds `name` in `/etc/passwd` or `/etc/group` text: the third field of its line.
pub fn lookup_id(database: &str, name: &str) -> Option<u32> {
    database.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name)
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}

/// One changed path of `POST fs/chmod` or `fs/chown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Affected {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// Answer of `POST fs/chmod` and `fs/chown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FsAffected {
    pub affected: Vec<Affected>,
    pub count: usize,
}

/// The client's message on `WS fs/watch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatchSubscribe {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub recursive: bool,
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// What changed, in a `fs/watch` event (what the JS SDK reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WatchChange {
    Create,
    Write,
    Remove,
    Rename,
    Chmod,
}

/// The one kind of [`WatchEvent`] (the socket also carries `subscribed` and `error`
/// messages).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum WatchEventKind {
    #[default]
    Event,
}

/// One event of `WS fs/watch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: WatchEventKind,
    pub event: WatchChange,
    pub path: String,
    pub is_dir: bool,
    pub timestamp: String,
    /// For `rename` within the watched paths: the name it had before (ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_path: Option<String>,
}

/// Formats permission bits the way the API shows them (`"0644"`, `"4755"`).
pub fn format_mode(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

/// Reads a mode given as octal text (`"755"`, `"0755"`, `"0o755"`) or as a JSON
/// number whose decimal digits are the octal ones (`755`).
pub fn parse_mode(value: &serde_json::Value) -> Result<u32, String> {
    match value {
        serde_json::Value::String(text) => parse_mode_text(text),
        serde_json::Value::Number(number) => parse_mode_text(&number.to_string()),
        other => Err(format!(
            "mode must be octal text like \"0755\", not {other}"
        )),
    }
}

/// Reads a mode given as octal text (`"755"`, `"0755"`, `"0o755"`).
pub fn parse_mode_text(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("mode {text:?} is not octal: write it like \"0644\" or \"0755\""))?;
    if mode > 0o7777 {
        return Err(format!(
            "mode {text:?} has bits beyond 07777: only permission, setuid, setgid and sticky bits can be set"
        ));
    }
    Ok(mode)
}

/// Joins `path` to `working_dir` (default `/`) and resolves `.` and `..` lexically,
/// never above `/`: the absolute path inside the sprite that a route works on. Symlinks
/// are left to the kernel, which resolves them inside the sprite's root.
pub fn clean_path(working_dir: Option<&str>, path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("path is empty: give a path inside the sprite, like /home/sprite/file".into());
    }
    if path.contains('\0') || working_dir.is_some_and(|w| w.contains('\0')) {
        return Err("path has a NUL byte".into());
    }
    let mut parts: Vec<&str> = Vec::new();
    let joined;
    let full = if path.starts_with('/') {
        path
    } else {
        joined = format!(
            "{}/{path}",
            working_dir.filter(|w| !w.is_empty()).unwrap_or("/")
        );
        &joined
    };
    for part in full.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    let cleaned = format!("/{}", parts.join("/"));
    if cleaned.len() > 4095 {
        return Err("path is longer than 4095 bytes".into());
    }
    Ok(cleaned)
}

/// Whether `name` matches a shell-style `pattern` (`*`, `?`, `[abc]`, `[a-z]`,
/// `[!x]`).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn class(pattern: &[char], c: char) -> Option<(bool, usize)> {
        // pattern starts after '['; answers (matched, length consumed including ']')
        let mut i = 0;
        let negate = matches!(pattern.first(), Some('!') | Some('^'));
        if negate {
            i += 1;
        }
        let mut matched = false;
        let mut first = true;
        while i < pattern.len() {
            if pattern[i] == ']' && !first {
                return Some((matched != negate, i + 1));
            }
            first = false;
            if i + 2 < pattern.len() && pattern[i + 1] == '-' && pattern[i + 2] != ']' {
                if pattern[i] <= c && c <= pattern[i + 2] {
                    matched = true;
                }
                i += 3;
            } else {
                if pattern[i] == c {
                    matched = true;
                }
                i += 1;
            }
        }
        None
    }
    /// Whether one pattern item at `p[0]` matches `c`; answers how many pattern chars
    /// the item takes (None: no match).
    fn single(p: &[char], c: char) -> Option<usize> {
        match p.first()? {
            '?' => Some(1),
            '[' => match class(&p[1..], c) {
                Some((true, used)) => Some(1 + used),
                Some((false, _)) => None,
                None => (c == '[').then_some(1),
            },
            literal => (*literal == c).then_some(1),
        }
    }
    // Stars match greedily with one backtracking point (the last star): linear in the
    // pattern times the name, never exponential, however many stars a caller sends.
    fn go(p: &[char], n: &[char]) -> bool {
        let (mut pi, mut ni) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            if p.get(pi) == Some(&'*') {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            if let Some(used) = single(&p[pi..], n[ni]) {
                pi += used;
                ni += 1;
                continue;
            }
            match star {
                Some((star_p, star_n)) => {
                    pi = star_p + 1;
                    ni = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            }
        }
        p[pi..].iter().all(|c| *c == '*')
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    #[test]
    fn owners_by_name_or_number() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nsprite:x:1000:1000::/home/sprite:/bin/bash\n";
        assert_eq!(lookup_id(passwd, "sprite"), Some(1000));
        assert_eq!(lookup_id(passwd, "root"), Some(0));
        assert_eq!(lookup_id(passwd, "nobody"), None);
        assert_eq!(lookup_id("broken", "broken"), None);
        let parsed: IdOrName = serde_json::from_str("\"1000\"").unwrap_or(IdOrName::Id(1));
        assert_eq!(parsed.id(), Some(1000));
        let parsed: IdOrName = serde_json::from_str("7").unwrap_or(IdOrName::Id(1));
        assert_eq!(parsed.id(), Some(7));
        let parsed: IdOrName = serde_json::from_str("\"sprite\"").unwrap_or(IdOrName::Id(1));
        assert_eq!(parsed, IdOrName::Name("sprite".into()));
    }

    use super::*;

    #[test]
    fn paths_are_cleaned_inside_the_root() {
        assert_eq!(clean_path(None, "/a/b").unwrap(), "/a/b");
        assert_eq!(
            clean_path(Some("/home/sprite"), "x/y").unwrap(),
            "/home/sprite/x/y"
        );
        assert_eq!(clean_path(None, "x").unwrap(), "/x");
        assert_eq!(
            clean_path(None, "/../../etc/passwd").unwrap(),
            "/etc/passwd"
        );
        assert_eq!(clean_path(Some("/a"), "../../../b").unwrap(), "/b");
        assert_eq!(clean_path(None, "/a/./b//c/").unwrap(), "/a/b/c");
        assert_eq!(clean_path(None, "/").unwrap(), "/");
        assert_eq!(clean_path(Some(""), "..").unwrap(), "/");
        assert!(clean_path(None, "").is_err());
        assert!(clean_path(None, "a\0b").is_err());
        assert!(clean_path(None, &"a/".repeat(3000)).is_err());
    }

    #[test]
    fn modes_parse_as_octal() {
        assert_eq!(parse_mode(&serde_json::json!("0755")).unwrap(), 0o755);
        assert_eq!(parse_mode(&serde_json::json!("644")).unwrap(), 0o644);
        assert_eq!(parse_mode(&serde_json::json!("0o600")).unwrap(), 0o600);
        assert_eq!(parse_mode(&serde_json::json!(755)).unwrap(), 0o755);
        assert_eq!(parse_mode(&serde_json::json!("4755")).unwrap(), 0o4755);
        assert!(parse_mode(&serde_json::json!("0999"))
            .unwrap_err()
            .contains("not octal"));
        assert!(parse_mode(&serde_json::json!("17777")).is_err());
        assert!(parse_mode(&serde_json::json!(true)).is_err());
        assert_eq!(format_mode(0o100644), "0644");
        assert_eq!(format_mode(0o4755), "4755");
    }

    #[test]
    fn globs_match_names() {
        assert!(glob_match("*.rs", "main.rs"));
        assert!(!glob_match("*.rs", "main.rsx"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("[abc]x", "bx"));
        assert!(!glob_match("[!abc]x", "bx"));
        assert!(glob_match("[a-c]*", "cat"));
        assert!(!glob_match("[a-c]*", "dog"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYc") && !glob_match("a*b*c", "aXbY"));
        assert!(glob_match("*[0-9]", "file7") && !glob_match("*[0-9]", "file"));
        // Many stars against a long name that almost matches: quick, not exponential.
        let started = std::time::Instant::now();
        assert!(!glob_match(
            &format!("{}*c", "*a".repeat(30)),
            &"a".repeat(200)
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(glob_match("[", "["));
    }

    #[test]
    fn entries_use_the_wire_names() {
        let entry = FsEntry {
            name: "a".into(),
            path: "/a".into(),
            kind: EntryType::Directory,
            size: 4096,
            mode: "0755".into(),
            mod_time: "2026-01-01T00:00:00Z".into(),
            is_dir: true,
            target: None,
        };
        let dir = FsList {
            path: "/".into(),
            entries: vec![entry.clone()],
            count: 1,
        };
        assert!(
            dir.itself().is_none(),
            "a directory's child is not the directory"
        );
        let file = FsList {
            path: "/a".into(),
            ..dir
        };
        assert_eq!(file.itself(), Some(&entry));
        // A directory listed with its own entry: first, nameless on the wire.
        let own = FsEntry {
            name: String::new(),
            path: "/".into(),
            ..entry.clone()
        };
        let listed = FsList {
            path: "/".into(),
            entries: vec![own.clone(), entry.clone()],
            count: 2,
        };
        assert_eq!(listed.itself(), Some(&own));
        let wire = serde_json::to_value(&listed).unwrap();
        assert!(wire["entries"][0].get("name").is_none(), "{wire}");
        assert_eq!(wire["entries"][1]["name"], "a");
        assert_eq!(
            serde_json::from_value::<FsList>(wire).unwrap(),
            listed,
            "a nameless entry reads back"
        );
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["type"], "directory");
        assert_eq!(json["isDir"], true);
        assert_eq!(json["modTime"], "2026-01-01T00:00:00Z");
        assert!(json.get("target").is_none());
        let copy: CopyRequest =
            serde_json::from_str(r#"{"source":"a","dest":"b","preserveAttrs":true}"#).unwrap();
        assert!(copy.preserve_attrs && !copy.recursive);
        assert_eq!(
            serde_json::to_value(FsCode::NotEmpty).unwrap(),
            serde_json::json!("ENOTEMPTY")
        );
    }
}

#[cfg(test)]
mod fuzz_targets {
    use super::*;
    use crate::fuzz::{budget, fuzz};

    /// Paths of the fs API (working directory, then the path, split at a NUL): a
    /// cleaned path is absolute, has no `.`, `..` or empty parts, and cleans to itself.
    #[test]
    fn fuzz_path_cleaning() {
        let seeds: &[&[u8]] = &[
            b"/home/sprite\0file",
            b"\0../../etc/passwd",
            b"/a/b\0./c/../../../d",
            b"\0/proc/1/root/etc",
            b"rel\0x//y/./z/",
            // Once took exponential time as a glob pattern (fs/list `pattern`).
            b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab\0*a*a*a*a*a*a*a*a*a*a*a*a*a*a*c",
        ];
        fuzz(
            "fs paths",
            budget(),
            seeds,
            &[b"..", b"/", b"\0", b"."],
            |input| {
                let text = String::from_utf8_lossy(input);
                let (working_dir, path) = text.split_once('\0').unwrap_or(("", &text));
                let working_dir = (!working_dir.is_empty()).then_some(working_dir);
                if let Ok(cleaned) = clean_path(working_dir, path) {
                    assert!(cleaned.starts_with('/'), "{cleaned}");
                    assert!(
                        cleaned == "/"
                            || cleaned[1..]
                                .split('/')
                                .all(|part| !part.is_empty() && part != "." && part != ".."),
                        "{cleaned}"
                    );
                    assert_eq!(clean_path(None, &cleaned).as_deref(), Ok(cleaned.as_str()));
                }
                let _ = glob_match(path, working_dir.unwrap_or("x"));
            },
        );
    }
}
