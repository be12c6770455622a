//! Images from OCI / Docker registries and from image archives (docker-archive and
//! OCI-layout tarballs).
//!
//! An OCI image is kept as its layers, each a read-only layer of its own named by the
//! digest of its blob (`layer-<48 hex>`), so images that share a base layer share it:
//! on SpriteFS each layer is an image volume, stored once in the object store and
//! mounted once per host. A layer's tar is unpacked with its owners shifted into the
//! sprites' id range, and its whiteouts become overlayfs whiteouts (`.wh.NAME` → a 0/0
//! character device, `.wh..wh..opq` → `user.overlay.opaque`, as sprites' overlays are mounted with
//! `userxattr`). A sprite's root stacks the image's layers, topmost first, under its own
//! disk, with a small layer of ours on top (the `sprite` user when the image has none,
//! `/etc/hosts`). The image's config (`Env`,
//! `WorkingDir`, `User`, `Entrypoint`, `Cmd`) is kept in its record, `oci.json`.

use crate::error::CoreError;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The most layers an image may have (overlayfs stacks at most 500 lowers; real
/// images have a few dozen).
pub const MAX_LAYERS: usize = 128;
/// The largest layer blob accepted.
pub const MAX_LAYER_BYTES: u64 = 16 << 30;
/// The largest manifest or config document read from an archive.
const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

/// The parts of an image's config that sprites honour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// TCP ports of `ExposedPorts`, in order.
    #[serde(default)]
    pub exposed_tcp_ports: Vec<u16>,
}

impl ImageConfig {
    /// Reads the `config` object of an OCI / Docker image config document.
    pub fn from_document(document: &[u8]) -> Result<ImageConfig, String> {
        #[derive(Deserialize)]
        struct Document {
            #[serde(default)]
            config: Option<Inner>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Inner {
            #[serde(default)]
            env: Option<Vec<String>>,
            #[serde(default)]
            working_dir: Option<String>,
            #[serde(default)]
            user: Option<String>,
            #[serde(default)]
            entrypoint: Option<Vec<String>>,
            #[serde(default)]
            cmd: Option<Vec<String>>,
            #[serde(default)]
            exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
        }
        let document: Document = serde_json::from_slice(document)
            .map_err(|e| format!("the image config is not valid JSON: {e}"))?;
        let inner = document.config.unwrap_or(Inner {
            env: None,
            working_dir: None,
            user: None,
            entrypoint: None,
            cmd: None,
            exposed_ports: None,
        });
        let mut ports: Vec<u16> = inner
            .exposed_ports
            .unwrap_or_default()
            .keys()
            .filter_map(|key| {
                let (port, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
                (proto == "tcp").then(|| port.parse().ok()).flatten()
            })
            .collect();
        ports.sort_unstable();
        Ok(ImageConfig {
            env: inner.env.unwrap_or_default(),
            working_dir: inner.working_dir.filter(|d| !d.is_empty()),
            user: inner.user.filter(|u| !u.is_empty()),
            entrypoint: inner.entrypoint.unwrap_or_default(),
            cmd: inner.cmd.unwrap_or_default(),
            exposed_tcp_ports: ports,
        })
    }

    /// `Env` as pairs (entries without `=` are skipped).
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter_map(|entry| {
                let (key, value) = entry.split_once('=')?;
                (!key.is_empty()).then(|| (key.to_string(), value.to_string()))
            })
            .collect()
    }

    /// `Entrypoint` followed by `Cmd`: what the image runs (empty: nothing).
    pub fn run_command(&self) -> Vec<String> {
        self.entrypoint
            .iter()
            .chain(self.cmd.iter())
            .cloned()
            .collect()
    }
}

/// One layer of an image: the digest of its blob as the registry or archive has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub digest: String,
    #[serde(default)]
    pub size: u64,
}

impl LayerRef {
    /// The layer's name as a read-only layer (and image volume): `layer-<48 hex>`.
    pub fn key(&self) -> Result<String, CoreError> {
        layer_key(&self.digest)
    }
}

/// `layer-` and the first 48 hex digits of a `sha256:` digest (192 bits).
pub fn layer_key(digest: &str) -> Result<String, CoreError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| CoreError::BadImage(format!("unsupported layer digest {digest:?}")))?;
    Ok(format!("layer-{}", hex[..48].to_ascii_lowercase()))
}

/// An image from a registry or an archive, as kept in `<images>/<name>/oci.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciImage {
    pub name: String,
    /// Where it came from: a registry reference, or `archive:<file name>`.
    pub source: String,
    /// The manifest digest (registry) or the config digest (archive).
    pub digest: String,
    /// Bottom first.
    pub layers: Vec<LayerRef>,
    pub config: ImageConfig,
    /// The user sprites of this image run as by default (`User`, else `sprite`).
    pub user: String,
    pub pulled_at: String,
}

impl OciImage {
    /// The name of the image's own top layer (the sprite user, /etc/hosts).
    pub fn setup_key(&self) -> String {
        let hex: String = self
            .digest
            .trim_start_matches("sha256:")
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(32)
            .collect();
        format!("setup-{}-{hex}", self.name)
    }
}

/// A name for an image from its reference: the last path component and the tag
/// (`ghcr.io/acme/tools:1.2` → `tools-1-2`), in image-name form.
pub fn name_for_reference(reference: &str) -> String {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let (repo, tag) = match last.split_once(':') {
        Some((repo, tag)) => (repo, Some(tag)),
        None => (last, None),
    };
    let mut name: String = match tag {
        Some(tag) if tag != "latest" => format!("{repo}-{tag}"),
        _ => repo.to_string(),
    }
    .to_ascii_lowercase()
    .chars()
    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
    .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    let name = name.trim_matches('-');
    let name: String = name.chars().take(63).collect();
    let name = name.trim_end_matches('-').to_string();
    if name.is_empty() {
        "image".into()
    } else {
        name
    }
}

/// Whether `text` is an image reference rather than an image name: names have no `/`,
/// `:`, `.` or `@`.
pub fn is_reference(text: &str) -> bool {
    text.contains(['/', ':', '.', '@'])
}

/// Unpacks a layer blob (tar, gzip, zstd or xz: tar recognises each) into `dir` and
/// turns its whiteouts into overlayfs ones. Owners are kept as numbers; shifting them
/// into the sprites' range is the caller's.
pub async fn unpack_layer(blob: &Path, dir: &Path) -> Result<(), CoreError> {
    fs::create_dir_all(dir).map_err(CoreError::io("create", dir))?;
    let output = tokio::process::Command::new(sprite_sys::tools::find("tar"))
        .arg("-xf")
        .arg(blob)
        .arg("-C")
        .arg(dir)
        .args([
            "--numeric-owner",
            "--same-owner",
            "--same-permissions",
            "--no-overwrite-dir",
            "--xattrs",
            "--xattrs-include=*",
        ])
        .output()
        .await
        .map_err(|e| CoreError::BadImage(format!("cannot run tar: {e}")))?;
    if !output.status.success() {
        return Err(CoreError::BadImage(format!(
            "a layer is not a tar archive tar can read: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let root = dir.to_path_buf();
    tokio::task::spawn_blocking(move || convert_whiteouts(&root))
        .await
        .map_err(|e| CoreError::Task("layer whiteouts", e))?
}

/// Replaces OCI whiteout files below `root` by overlayfs whiteouts.
pub fn convert_whiteouts(root: &Path) -> Result<(), CoreError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(CoreError::io("read", &dir))?;
        for entry in entries {
            let entry = entry.map_err(CoreError::io("read", &dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            let kind = entry.file_type().map_err(CoreError::io("stat", &path))?;
            if name == ".wh..wh..opq" {
                fs::remove_file(&path).map_err(CoreError::io("remove", &path))?;
                rustix::fs::lsetxattr(
                    &dir,
                    "user.overlay.opaque",
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )
                .map_err(|e| CoreError::io("mark opaque", &dir)(e.into()))?;
            } else if let Some(hidden) = name.strip_prefix(".wh.") {
                if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                    return Err(CoreError::BadImage(format!(
                        "a layer has a malformed whiteout {}",
                        path.display()
                    )));
                }
                fs::remove_file(&path).map_err(CoreError::io("remove", &path))?;
                let target = dir.join(hidden);
                if let Ok(meta) = fs::symlink_metadata(&target) {
                    if meta.is_dir() {
                        fs::remove_dir_all(&target).map_err(CoreError::io("remove", &target))?;
                    } else {
                        fs::remove_file(&target).map_err(CoreError::io("remove", &target))?;
                    }
                }
                nix::sys::stat::mknod(
                    &target,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::empty(),
                    0,
                )
                .map_err(|e| CoreError::io("make the whiteout", &target)(e.into()))?;
            } else if kind.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// Reads a file of at most `limit` bytes.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, CoreError> {
    let file = fs::File::open(path).map_err(CoreError::io("open", path))?;
    let mut data = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(CoreError::io("read", path))?;
    if data.len() as u64 > limit {
        return Err(CoreError::BadImage(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(data)
}

/// The sha256 digest of a file, as `sha256:<hex>`.
pub fn file_digest(path: &Path) -> Result<String, CoreError> {
    use sha2::Digest;
    let mut file = fs::File::open(path).map_err(CoreError::io("open", path))?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(CoreError::io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let digest = hasher.finalize();
    Ok(format!(
        "sha256:{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

/// What an unpacked image archive holds: its config document and its layer files,
/// bottom first.
#[derive(Debug)]
pub struct ArchiveImage {
    pub config: Vec<u8>,
    pub digest: String,
    pub layers: Vec<PathBuf>,
}

/// Reads an unpacked docker-archive (`manifest.json`) or OCI layout (`index.json` and
/// `blobs/`) in `dir`; None when it is neither (a plain root filesystem tarball).
pub fn read_archive(dir: &Path) -> Result<Option<ArchiveImage>, CoreError> {
    if dir.join("oci-layout").is_file() && dir.join("index.json").is_file() {
        return read_oci_layout(dir).map(Some);
    }
    if dir.join("manifest.json").is_file() {
        return read_docker_archive(dir).map(Some);
    }
    Ok(None)
}

/// A path inside the archive named by the archive itself: relative, no `..`.
fn inside(dir: &Path, relative: &str) -> Result<PathBuf, CoreError> {
    let path = Path::new(relative);
    if relative.is_empty()
        || path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(CoreError::BadImage(format!(
            "the archive names a path outside itself: {relative:?}"
        )));
    }
    Ok(dir.join(path))
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, CoreError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| CoreError::BadImage(format!("unsupported digest {digest:?}")))?;
    Ok(dir.join("blobs/sha256").join(hex))
}

fn read_oci_layout(dir: &Path) -> Result<ArchiveImage, CoreError> {
    #[derive(Deserialize)]
    struct Descriptor {
        #[serde(rename = "mediaType", default)]
        media_type: String,
        digest: String,
    }
    #[derive(Deserialize)]
    struct Index {
        manifests: Vec<Descriptor>,
    }
    #[derive(Deserialize)]
    struct Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    }
    let bad = |what: &str, e: serde_json::Error| CoreError::BadImage(format!("{what}: {e}"));
    let mut index: Index =
        serde_json::from_slice(&read_bounded(&dir.join("index.json"), MAX_DOCUMENT_BYTES)?)
            .map_err(|e| bad("index.json", e))?;
    // An index may point at a nested index (multi-platform): follow one level.
    let first = index
        .manifests
        .first()
        .ok_or_else(|| CoreError::BadImage("index.json lists no image".into()))?;
    if first.media_type.contains("index") || first.media_type.contains("manifest.list") {
        let nested = blob_path(dir, &first.digest)?;
        index = serde_json::from_slice(&read_bounded(&nested, MAX_DOCUMENT_BYTES)?)
            .map_err(|e| bad("the nested index", e))?;
    }
    let first = index
        .manifests
        .first()
        .ok_or_else(|| CoreError::BadImage("the index lists no image".into()))?;
    let manifest: Manifest = serde_json::from_slice(&read_bounded(
        &blob_path(dir, &first.digest)?,
        MAX_DOCUMENT_BYTES,
    )?)
    .map_err(|e| bad("the image manifest", e))?;
    let config_path = blob_path(dir, &manifest.config.digest)?;
    let config = read_bounded(&config_path, MAX_DOCUMENT_BYTES)?;
    let mut layers = Vec::new();
    for layer in &manifest.layers {
        let path = blob_path(dir, &layer.digest)?;
        if file_digest(&path)? != layer.digest.to_ascii_lowercase() {
            return Err(CoreError::BadImage(format!(
                "layer {} does not match its digest",
                layer.digest
            )));
        }
        layers.push(path);
    }
    Ok(ArchiveImage {
        config,
        digest: manifest.config.digest.clone(),
        layers,
    })
}

fn read_docker_archive(dir: &Path) -> Result<ArchiveImage, CoreError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        layers: Vec<String>,
    }
    let entries: Vec<Entry> = serde_json::from_slice(&read_bounded(
        &dir.join("manifest.json"),
        MAX_DOCUMENT_BYTES,
    )?)
    .map_err(|e| CoreError::BadImage(format!("manifest.json: {e}")))?;
    let entry = entries
        .first()
        .ok_or_else(|| CoreError::BadImage("manifest.json lists no image".into()))?;
    let config_path = inside(dir, &entry.config)?;
    let config = read_bounded(&config_path, MAX_DOCUMENT_BYTES)?;
    let layers = entry
        .layers
        .iter()
        .map(|layer| inside(dir, layer))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ArchiveImage {
        digest: file_digest(&config_path)?,
        config,
        layers,
    })
}

/// The account line of `user` in a passwd text.
fn passwd_entry<'a>(passwd: &'a str, user: &str) -> Option<Vec<&'a str>> {
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() >= 7 && fields[0] == user)
}

/// The name of the account with uid `uid` in a passwd text.
fn name_of_uid(passwd: &str, uid: &str) -> Option<String> {
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() >= 7 && fields[2] == uid)
        .map(|fields| fields[0].to_string())
}

/// The first uid from 1000 up that no account of `passwd` has.
fn free_uid(passwd: &str) -> u32 {
    let taken: std::collections::HashSet<u32> = passwd
        .lines()
        .filter_map(|line| line.split(':').nth(2)?.parse().ok())
        .collect();
    (1000..60000)
        .find(|uid| !taken.contains(uid))
        .unwrap_or(1000)
}

/// What the image's own top layer adds, from the image's merged `/etc/passwd` and
/// `/etc/group` (empty when absent), whether it has `/bin/bash` and `/etc/sudoers.d`,
/// and its `User`: the files to write (path, text, mode) and the default user.
pub fn setup_files(
    passwd: &str,
    group: &str,
    has_bash: bool,
    has_sudoers_dir: bool,
    has_hosts: bool,
    image_user: Option<&str>,
) -> (Vec<(String, String, u32)>, String, Option<u32>) {
    let mut files = Vec::new();
    let mut home_uid = None;
    let user = match image_user {
        Some(user) => {
            let name = user.split(':').next().unwrap_or(user);
            if name.bytes().all(|b| b.is_ascii_digit()) {
                name_of_uid(passwd, name).unwrap_or_else(|| "root".into())
            } else {
                name.to_string()
            }
        }
        None => "sprite".into(),
    };
    if passwd_entry(passwd, "sprite").is_none() {
        let uid = free_uid(passwd);
        let shell = if has_bash { "/bin/bash" } else { "/bin/sh" };
        let mut passwd = passwd.to_string();
        if passwd.is_empty() {
            passwd.push_str("root:x:0:0:root:/root:/bin/sh\n");
        }
        if !passwd.ends_with('\n') {
            passwd.push('\n');
        }
        passwd.push_str(&format!(
            "sprite:x:{uid}:{uid}:sprite:/home/sprite:{shell}\n"
        ));
        let mut group_text = group.to_string();
        if group_text.is_empty() {
            group_text.push_str("root:x:0:\n");
        }
        if !group_text.ends_with('\n') {
            group_text.push('\n');
        }
        let mut sudo_listed = false;
        let mut lines: Vec<String> = group_text.lines().map(str::to_string).collect();
        for line in &mut lines {
            if line.starts_with("sudo:") {
                if line.ends_with(':') {
                    line.push_str("sprite");
                } else {
                    line.push_str(",sprite");
                }
                sudo_listed = true;
            }
        }
        if !sudo_listed {
            lines.push("sudo:x:27:sprite".into());
        }
        lines.push(format!("sprite:x:{uid}:"));
        files.push(("etc/passwd".to_string(), passwd, 0o644));
        files.push(("etc/group".to_string(), lines.join("\n") + "\n", 0o644));
        home_uid = Some(uid);
    }
    if has_sudoers_dir {
        files.push((
            "etc/sudoers.d/sprite".to_string(),
            "sprite ALL=(ALL) NOPASSWD:ALL\n".to_string(),
            0o440,
        ));
    }
    if !has_hosts {
        files.push((
            "etc/hosts".to_string(),
            "127.0.0.1 localhost\n::1 localhost\n".to_string(),
            0o644,
        ));
    }
    (files, user, home_uid)
}

/// Looks `relative` up in the layers (topmost first), as the overlay will show it.
pub fn find_in_layers(layers_top_first: &[PathBuf], relative: &str) -> Option<PathBuf> {
    for layer in layers_top_first {
        let path = layer.join(relative);
        match fs::symlink_metadata(&path) {
            Ok(meta) => {
                // A whiteout hides it from the layers below.
                if meta.file_type().is_char_device_like() && meta.rdev() == 0 {
                    return None;
                }
                return Some(path);
            }
            Err(_) => continue,
        }
    }
    None
}

trait CharDevice {
    fn is_char_device_like(&self) -> bool;
}

impl CharDevice for fs::FileType {
    fn is_char_device_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_char_device(self)
    }
}

/// Writes the image's own top layer into `dir` (files owned by root, `/home/sprite`
/// by the new user). Owners are shifted by the caller.
pub fn write_setup_layer(
    dir: &Path,
    files: &[(String, String, u32)],
    home_uid: Option<u32>,
) -> Result<(), CoreError> {
    fs::create_dir_all(dir).map_err(CoreError::io("create", dir))?;
    for (relative, text, mode) in files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(CoreError::io("create", parent))?;
        }
        fs::write(&path, text).map_err(CoreError::io("write", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
            .map_err(CoreError::io("chmod", &path))?;
    }
    if let Some(uid) = home_uid {
        let home = dir.join("home/sprite");
        fs::create_dir_all(&home).map_err(CoreError::io("create", &home))?;
        std::os::unix::fs::chown(&home, Some(uid), Some(uid))
            .map_err(CoreError::io("chown", &home))?;
        fs::set_permissions(&home, fs::Permissions::from_mode(0o755))
            .map_err(CoreError::io("chmod", &home))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_from_references() {
        assert_eq!(name_for_reference("alpine"), "alpine");
        assert_eq!(name_for_reference("alpine:3.19"), "alpine-3-19");
        assert_eq!(name_for_reference("ghcr.io/acme/Tools:1.2"), "tools-1-2");
        assert_eq!(name_for_reference("localhost:5000/base:latest"), "base");
        assert_eq!(
            name_for_reference("docker.io/library/node@sha256:abcd"),
            "node"
        );
        assert_eq!(name_for_reference("___"), "image");
        assert!(name_for_reference(&"x".repeat(200)).len() <= 63);
        assert!(is_reference("localhost:5000/base"));
        assert!(is_reference("alpine:3"));
        assert!(!is_reference("dev"));
    }

    #[test]
    fn layer_keys_are_content_addressed_and_checked() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            layer_key(&digest).unwrap(),
            format!("layer-{}", "ab".repeat(24))
        );
        assert!(layer_key("sha256:12").is_err());
        assert!(layer_key("md5:abc").is_err());
        assert!(layer_key(&format!("sha256:{}", "zz".repeat(32))).is_err());
    }

    #[test]
    fn config_fields_are_read() {
        let doc = br#"{"architecture":"amd64","config":{"Env":["PATH=/usr/bin","GREETING=hi there","bad"],"WorkingDir":"/srv","User":"app","Entrypoint":["/bin/serve"],"Cmd":["--port","8080"],"ExposedPorts":{"9090/tcp":{},"53/udp":{},"8080":{}}}}"#;
        let config = ImageConfig::from_document(doc).unwrap();
        assert_eq!(config.working_dir.as_deref(), Some("/srv"));
        assert_eq!(config.user.as_deref(), Some("app"));
        assert_eq!(
            config.env_pairs(),
            vec![
                ("PATH".to_string(), "/usr/bin".to_string()),
                ("GREETING".to_string(), "hi there".to_string())
            ]
        );
        assert_eq!(config.run_command(), ["/bin/serve", "--port", "8080"]);
        assert_eq!(config.exposed_tcp_ports, [8080, 9090]);
        let empty = ImageConfig::from_document(b"{}").unwrap();
        assert_eq!(empty, ImageConfig::default());
        assert!(ImageConfig::from_document(b"nope").is_err());
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        fs::create_dir_all(dir.join("etc/opaque")).unwrap();
        fs::write(dir.join("etc/opaque/.wh..wh..opq"), "").unwrap();
        fs::write(dir.join("etc/opaque/kept"), "new").unwrap();
        fs::write(dir.join("etc/.wh.gone"), "").unwrap();
        fs::write(dir.join(".wh.top"), "").unwrap();
        convert_whiteouts(dir).unwrap();
        assert!(!dir.join("etc/opaque/.wh..wh..opq").exists());
        assert!(dir.join("etc/opaque/kept").exists());
        let mut value = [0u8; 4];
        let n = rustix::fs::lgetxattr(dir.join("etc/opaque"), "user.overlay.opaque", &mut value)
            .unwrap();
        assert_eq!(&value[..n], b"y");
        for whiteout in ["etc/gone", "top"] {
            let meta = fs::symlink_metadata(dir.join(whiteout)).unwrap();
            assert!(std::os::unix::fs::FileTypeExt::is_char_device(
                &meta.file_type()
            ));
            assert_eq!(meta.rdev(), 0);
        }
        assert!(!dir.join("etc/.wh.gone").exists());
        // A malformed whiteout is refused.
        fs::write(dir.join(".wh."), "").unwrap();
        assert!(convert_whiteouts(dir).is_err());
    }

    #[test]
    fn the_sprite_user_is_added_when_missing() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\n";
        let group = "root:x:0:\nnode:x:1000:\n";
        let (files, user, home_uid) = setup_files(passwd, group, true, true, false, None);
        assert_eq!(user, "sprite");
        assert_eq!(home_uid, Some(1001));
        let text = |path: &str| {
            files
                .iter()
                .find(|(p, _, _)| p == path)
                .map(|(_, t, _)| t.clone())
                .unwrap()
        };
        assert!(text("etc/passwd").contains("sprite:x:1001:1001:sprite:/home/sprite:/bin/bash"));
        assert!(text("etc/passwd").starts_with("root:"));
        assert!(text("etc/group").contains("sudo:x:27:sprite"));
        assert!(text("etc/sudoers.d/sprite").contains("NOPASSWD"));
        assert!(text("etc/hosts").contains("localhost"));
        // An image with the user already and its own User: nothing but what is missing.
        let passwd = "root:x:0:0::/root:/bin/sh\nsprite:x:1000:1000::/home/sprite:/bin/sh\napp:x:1234:1234::/app:/bin/sh\n";
        let (files, user, home_uid) =
            setup_files(passwd, "", false, false, true, Some("1234:1234"));
        assert!(files.is_empty());
        assert_eq!((user.as_str(), home_uid), ("app", None));
        let (_, user, _) = setup_files(passwd, "", false, false, true, Some("4242"));
        assert_eq!(user, "root");
    }

    #[test]
    fn archives_cannot_name_paths_outside() {
        let dir = Path::new("/tmp/x");
        assert!(inside(dir, "../etc/passwd").is_err());
        assert!(inside(dir, "/etc/passwd").is_err());
        assert!(inside(dir, "").is_err());
        assert_eq!(
            inside(dir, "abc/layer.tar").unwrap(),
            dir.join("abc/layer.tar")
        );
    }
}
