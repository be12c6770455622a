//! Base images: read-only root filesystems shared by every sprite on the host.
//!
//! `dev` (the default) is Debian bookworm with compilers, Python, Node.js and coding
//! agents ([`dev`]); `debian` is a minimal Debian bookworm from debootstrap; both have a
//! user `sprite` (uid 1000, passwordless sudo). `busybox` is a tiny image from the
//! host's static busybox, for tests; any other name is a rootfs tarball imported by the user
//! ([`ImageStore::import_tarball`]). An image is built once, on first need, into
//! `<data>/images/<name>/rootfs`, with its file owners shifted into the host id range
//! that sprites' user namespaces map to (uid 0 inside = `id_base` on the host).
//! A build goes to a scratch directory and is renamed into place when complete, so an
//! interrupted build is never used.

use crate::error::CoreError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncBufReadExt;

pub mod dev;
pub mod oci;
pub mod registry;

/// Packages of the default image on top of debootstrap's minbase.
pub const DEBIAN_PACKAGES: &str =
    "bash,coreutils,procps,iproute2,curl,ca-certificates,git,python3,sudo,less,vim-tiny,tmux";

/// The record of an image from a registry or an archive, in its directory.
const OCI_RECORD: &str = "oci.json";

/// The directory of files naming each image's newest version (`.current/<name>`).
const CURRENT: &str = ".current";

/// The image a key is a version of (`dev@2` → `dev`).
pub fn base_name(key: &str) -> &str {
    key.split_once('@').map_or(key, |(name, _)| name)
}

/// The version number of a key (`dev` is 1, `dev@2` is 2).
pub fn version_of(key: &str) -> u32 {
    key.split_once('@')
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(1)
}

/// Images this daemon knows how to build.
pub const KNOWN_IMAGES: [&str; 3] = ["dev", "debian", "busybox"];

pub use sprite_api::admin::{ImageState, ImageStatus};

#[derive(Debug)]
pub struct ImageStore {
    dir: PathBuf,
    id_base: u32,
    mirror: String,
    builds: tokio::sync::Mutex<()>,
    status: Arc<Mutex<HashMap<String, ImageStatus>>>,
    /// Records of registry and archive images read so far (None: not one).
    oci_records: Mutex<HashMap<String, Option<Arc<oci::OciImage>>>>,
}

fn set_status(
    status: &Mutex<HashMap<String, ImageStatus>>,
    name: &str,
    state: ImageState,
    detail: &str,
) {
    let mut map = status.lock();
    map.insert(
        name.to_string(),
        ImageStatus {
            name: name.into(),
            state,
            detail: detail.into(),
        },
    );
}

impl ImageStore {
    pub fn new(dir: PathBuf, id_base: u32, mirror: String) -> Self {
        ImageStore {
            dir,
            id_base,
            mirror,
            builds: tokio::sync::Mutex::new(()),
            status: Default::default(),
            oci_records: Default::default(),
        }
    }

    pub fn rootfs(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("rootfs")
    }

    pub fn is_ready(&self, name: &str) -> bool {
        let dir = self.dir.join(name);
        dir.join("image.json").exists() || dir.join(OCI_RECORD).exists()
    }

    /// The record of `name` if it is an image from a registry or an archive.
    pub fn oci(&self, name: &str) -> Result<Option<oci::OciImage>, CoreError> {
        let path = self.dir.join(name).join(OCI_RECORD);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| CoreError::Corrupt {
                    what: "image record",
                    message: format!("{}: {e}", path.display()),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CoreError::io("read", path)(e)),
        }
    }

    /// The record of a registry or archive image, kept in memory after the first read
    /// (every exec asks); None for other images and on any error.
    pub fn oci_cached(&self, name: &str) -> Option<Arc<oci::OciImage>> {
        if KNOWN_IMAGES.contains(&name) {
            return None;
        }
        if let Some(found) = self.oci_records.lock().get(name) {
            return found.clone();
        }
        let found = self.oci(name).ok().flatten().map(Arc::new);
        self.oci_records
            .lock()
            .insert(name.to_string(), found.clone());
        found
    }

    /// Keeps the record of an image from a registry or an archive (written aside and
    /// renamed: a crash leaves the old record or the new one).
    pub fn save_oci(&self, image: &oci::OciImage) -> Result<(), CoreError> {
        let dir = self.dir.join(&image.name);
        fs::create_dir_all(&dir).map_err(CoreError::io("create", &dir))?;
        let path = dir.join(OCI_RECORD);
        let partial = dir.join(format!("{OCI_RECORD}.partial"));
        let json = serde_json::to_vec_pretty(image).unwrap_or_default();
        fs::write(&partial, json).map_err(CoreError::io("write", &partial))?;
        fs::rename(&partial, &path).map_err(CoreError::io("rename", &partial))?;
        self.oci_records.lock().remove(&image.name);
        Ok(())
    }

    /// Where layers of registry and archive images are unpacked (`<key>/rootfs`).
    pub fn layers_dir(&self) -> PathBuf {
        self.dir.join(".layers")
    }

    /// Where the build of `key` stands, if one was asked of this daemon.
    pub fn status_of(&self, key: &str) -> Option<ImageStatus> {
        self.status.lock().get(key).cloned()
    }

    /// Notes a pull's or an import's progress for `sprite images`.
    pub fn note_progress(&self, name: &str, detail: &str) {
        set_status(&self.status, name, ImageState::Building, detail);
    }

    /// Notes how a pull or an import ended.
    pub fn note_done(&self, name: &str, result: &Result<(), CoreError>) {
        self.note_outcome(name, result);
    }

    /// Names of imported images on this host.
    fn imported(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| {
                        !KNOWN_IMAGES.contains(&n.as_str())
                            && !n.starts_with('.')
                            && !n.contains('@')
                    })
                    .filter(|n| self.is_ready(n))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Status of every known and imported image.
    pub fn statuses(&self) -> Vec<ImageStatus> {
        let imported = self.imported();
        let map = self.status.lock();
        KNOWN_IMAGES
            .iter()
            .map(|name| name.to_string())
            .chain(imported)
            .map(|name| {
                let name = name.as_str();
                if self.is_ready(name) {
                    let version = version_of(&self.current_key(name));
                    ImageStatus {
                        name: name.to_string(),
                        state: ImageState::Ready,
                        detail: if version > 1 {
                            format!("version {version}")
                        } else {
                            String::new()
                        },
                    }
                } else {
                    map.get(name).cloned().unwrap_or(ImageStatus {
                        name: name.to_string(),
                        state: ImageState::Absent,
                        detail: String::new(),
                    })
                }
            })
            .collect()
    }

    /// Records that `name` is ready from elsewhere (an image volume in the object
    /// store), so `sprite images` does not call it absent on a host that never built it.
    pub fn note_stored(&self, name: &str) {
        set_status(
            &self.status,
            name,
            ImageState::Ready,
            "image volume from the object store",
        );
    }

    /// An error unless `key` is an image name or a version of one (`NAME@N`, N ≥ 2).
    pub fn check_key(key: &str) -> Result<(), CoreError> {
        match key.split_once('@') {
            None => Self::check_name(key),
            Some((name, version)) => {
                Self::check_name(name)?;
                match version.parse::<u32>() {
                    Ok(n) if n >= 2 && version == n.to_string() => Ok(()),
                    _ => Err(CoreError::InvalidName {
                        what: "image version",
                        value: key.to_string(),
                        rule:
                            "write NAME@N with N a version number from 2 (sprite images lists them)",
                    }),
                }
            }
        }
    }

    /// The newest version of image `name` on this host (`dev`, `dev@2`...).
    pub fn current_key(&self, name: &str) -> String {
        let name = base_name(name);
        fs::read_to_string(self.dir.join(CURRENT).join(name))
            .ok()
            .map(|text| text.trim().to_string())
            .filter(|key| base_name(key) == name && Self::check_key(key).is_ok())
            .unwrap_or_else(|| name.to_string())
    }

    /// Makes `key` the newest version of its image (new sprites get it).
    pub fn set_current(&self, key: &str) -> Result<(), CoreError> {
        let dir = self.dir.join(CURRENT);
        fs::create_dir_all(&dir).map_err(CoreError::io("create", &dir))?;
        let name = base_name(key);
        let partial = dir.join(format!(".{name}.partial"));
        fs::write(&partial, key).map_err(CoreError::io("write", &partial))?;
        let path = dir.join(name);
        fs::rename(&partial, &path).map_err(CoreError::io("rename", &partial))
    }

    /// The key of the version after the newest one of `name`.
    pub fn next_key(&self, name: &str) -> String {
        let current = self.current_key(name);
        format!("{}@{}", base_name(name), version_of(&current) + 1)
    }

    /// Every version of `name` kept on this host (the name itself first).
    pub fn versions(&self, name: &str) -> Vec<String> {
        let name = base_name(name);
        let prefix = format!("{name}@");
        let mut keys: Vec<String> = fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix) && Self::check_key(n).is_ok())
                    .collect()
            })
            .unwrap_or_default();
        keys.sort_by_key(|k| version_of(k));
        keys.insert(0, name.to_string());
        keys
    }

    /// Removes the local copy of image version `key` (its directory and record).
    pub fn forget_version(&self, key: &str) -> Result<(), CoreError> {
        if !key.contains('@') {
            return Ok(());
        }
        let dir = self.dir.join(key);
        self.oci_records.lock().remove(key);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CoreError::io("remove", dir)(e)),
        }
    }

    /// An error unless `name` is a well-formed image name (as sprite names).
    pub fn check_name(name: &str) -> Result<(), CoreError> {
        sprite_api::validate_sprite_name(name).map_err(|e| CoreError::InvalidName {
            what: "image name",
            value: name.to_string(),
            rule: match e {
                sprite_api::NameError::Empty => "it is empty",
                sprite_api::NameError::TooLong(_) => "use at most 63 characters",
                _ => "use a-z, 0-9 and -, not first or last",
            },
        })
    }

    /// An error naming the images there are unless `name` is one (a version of one:
    /// `dev@2`).
    pub fn check_known(&self, name: &str) -> Result<(), CoreError> {
        Self::check_key(name)?;
        if KNOWN_IMAGES.contains(&base_name(name)) || self.is_ready(name) {
            return Ok(());
        }
        let mut names: Vec<String> = KNOWN_IMAGES.iter().map(|n| n.to_string()).collect();
        names.extend(self.imported());
        Err(CoreError::UnknownImage {
            name: name.to_string(),
            known: names,
        })
    }

    /// Imports a root filesystem tarball (plain or compressed as tar recognises:
    /// gzip, xz, zstd, bzip2) as image `name`. Owners are kept as numbers (uid 0 in
    /// the tarball is root inside sprites). Answers the image's root.
    pub async fn import_tarball(&self, name: &str, tarball: &Path) -> Result<PathBuf, CoreError> {
        Self::check_name(name)?;
        if KNOWN_IMAGES.contains(&name) {
            return Err(CoreError::BuiltInImage(name.to_string()));
        }
        let _guard = self.builds.lock().await;
        if self.is_ready(name) {
            return Err(CoreError::ImageExists(name.to_string()));
        }
        set_status(
            &self.status,
            name,
            ImageState::Building,
            "unpacking the tarball",
        );
        let result = self.unpack(name, tarball).await;
        self.note_outcome(name, &result);
        result.map(|()| self.rootfs(name))
    }

    async fn unpack(&self, name: &str, tarball: &Path) -> Result<(), CoreError> {
        let scratch = self.dir.join(format!(".build-{name}"));
        let _ = fs::remove_dir_all(&scratch);
        let rootfs = scratch.join("rootfs");
        fs::create_dir_all(&rootfs).map_err(CoreError::io("create", &rootfs))?;
        let output = tokio::process::Command::new(sprite_sys::tools::find("tar"))
            .arg("-xf")
            .arg(tarball)
            .arg("-C")
            .arg(&rootfs)
            .args(["--numeric-owner", "--same-owner", "--same-permissions"])
            .output()
            .await
            .map_err(|e| CoreError::Image {
                image: name.into(),
                message: format!("cannot run tar: {e}"),
            })?;
        if !output.status.success() {
            let _ = fs::remove_dir_all(&scratch);
            return Err(CoreError::BadTarball {
                image: name.to_string(),
                reason: format!(
                    "not a tarball tar can read: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        if !rootfs.join("bin").exists() && !rootfs.join("usr/bin").exists() {
            let _ = fs::remove_dir_all(&scratch);
            return Err(CoreError::BadTarball {
                image: name.to_string(),
                reason: "the tarball has no bin/ or usr/bin/ at its top; pack the root filesystem itself (tar -C ROOT -c .)".into(),
            });
        }
        self.finish(name, &scratch, &rootfs, "tarball").await
    }

    /// Returns the image's root, building it first if needed.
    pub async fn ensure(&self, name: &str) -> Result<PathBuf, CoreError> {
        self.check_known(name)?;
        if self.is_ready(name) {
            return Ok(self.rootfs(name));
        }
        let _guard = self.builds.lock().await;
        if self.is_ready(name) {
            return Ok(self.rootfs(name));
        }
        set_status(&self.status, name, ImageState::Building, "starting");
        let result = self.build(name).await;
        self.note_outcome(name, &result);
        result.map(|()| self.rootfs(name))
    }

    /// Records how a build or an import of `name` ended.
    fn note_outcome(&self, name: &str, result: &Result<(), CoreError>) {
        match result {
            Ok(()) => set_status(&self.status, name, ImageState::Ready, ""),
            Err(e) => set_status(
                &self.status,
                name,
                ImageState::Failed,
                &sprite_api::error_chain(e),
            ),
        }
    }

    async fn build(&self, name: &str) -> Result<(), CoreError> {
        let scratch = self.dir.join(format!(".build-{name}"));
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch).map_err(CoreError::io("create", &scratch))?;
        let rootfs = scratch.join("rootfs");
        tracing::info!(image = name, "building image");
        match base_name(name) {
            "debian" => {
                self.debootstrap(name, &rootfs, DEBIAN_PACKAGES).await?;
                add_sprite_user(name, &rootfs, false).await?;
            }
            "dev" => {
                self.debootstrap(name, &rootfs, dev::DEV_PACKAGES).await?;
                add_sprite_user(name, &rootfs, true).await?;
                let status = self.status.clone();
                dev::provision(&rootfs, &self.mirror, |step| {
                    set_status(&status, name, ImageState::Building, step)
                })
                .await?;
            }
            _ => build_busybox(&rootfs)?,
        }
        self.finish(name, &scratch, &rootfs, "built").await
    }

    /// Shifts owners into the sprites' id range and moves a complete root into place.
    async fn finish(
        &self,
        name: &str,
        scratch: &Path,
        rootfs: &Path,
        source: &str,
    ) -> Result<(), CoreError> {
        let image_dir = self.dir.join(name);
        let base = self.id_base;
        let shift_root = rootfs.to_path_buf();
        tokio::task::spawn_blocking(move || shift_ids(&shift_root, base))
            .await
            .map_err(|e| CoreError::Task("image id shift", e))??;
        fs::set_permissions(rootfs, fs::Permissions::from_mode(0o755))
            .map_err(CoreError::io("chmod", rootfs))?;
        let _ = fs::remove_dir_all(&image_dir);
        fs::create_dir_all(&image_dir).map_err(CoreError::io("create", &image_dir))?;
        fs::set_permissions(&image_dir, fs::Permissions::from_mode(0o711))
            .map_err(CoreError::io("chmod", &image_dir))?;
        fs::rename(rootfs, self.rootfs(name))
            .map_err(CoreError::io("move image into", self.rootfs(name)))?;
        let manifest = serde_json::json!({
            "name": name,
            "built_at": chrono::Utc::now().to_rfc3339(),
            "id_base": self.id_base,
            "source": source,
        });
        let manifest_path = image_dir.join("image.json");
        fs::write(&manifest_path, manifest.to_string())
            .map_err(CoreError::io("write", &manifest_path))?;
        let _ = fs::remove_dir_all(scratch);
        tracing::info!(image = name, source, "image ready");
        Ok(())
    }

    /// Lays down Debian bookworm (minbase plus `packages`) in `rootfs` for image `name`.
    async fn debootstrap(
        &self,
        name: &str,
        rootfs: &Path,
        packages: &str,
    ) -> Result<(), CoreError> {
        let failed = |message: String| CoreError::Image {
            image: name.into(),
            message,
        };
        let mut child = tokio::process::Command::new(sprite_sys::tools::find("debootstrap"))
            .args([
                "--variant=minbase",
                &format!("--include={packages}"),
                "bookworm",
            ])
            .arg(rootfs)
            .arg(&self.mirror)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                failed(format!(
                    "cannot run debootstrap ({e}); install it with `apt-get install debootstrap`"
                ))
            })?;
        let mut last_lines = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                set_status(&self.status, name, ImageState::Building, &line);
                tracing::info!(image = name, "{line}");
                last_lines.push(line);
                if last_lines.len() > 5 {
                    last_lines.remove(0);
                }
            }
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|e| failed(format!("debootstrap: {e}")))?;
        if !output.status.success() {
            return Err(failed(format!(
                "debootstrap exited with {}: {} {}",
                output.status,
                last_lines.join(" / "),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        set_status(
            &self.status,
            name,
            ImageState::Building,
            "adding user sprite",
        );
        Ok(())
    }
}

/// Adds the user `sprite` (uid 1000, passwordless sudo) to a debootstrapped root;
/// `keep_lists` keeps apt's package lists (else they are removed, as is the cache).
async fn add_sprite_user(name: &str, rootfs: &Path, keep_lists: bool) -> Result<(), CoreError> {
    let failed = |message: String| CoreError::Image {
        image: name.into(),
        message,
    };
    let mut script = String::from(
        "set -e
        useradd -m -u 1000 -U -s /bin/bash -G sudo sprite
        echo 'sprite ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/sprite
        chmod 0440 /etc/sudoers.d/sprite
        echo 'Set disable_coredump false' > /etc/sudo.conf
        apt-get clean
",
    );
    if !keep_lists {
        script.push_str("rm -rf /var/lib/apt/lists/*\n");
    }
    let status = tokio::process::Command::new(sprite_sys::tools::find("chroot"))
        .arg(rootfs)
        .args(["/bin/sh", "-c", &script])
        .status()
        .await
        .map_err(|e| failed(format!("chroot: {e}")))?;
    if !status.success() {
        return Err(failed(format!(
            "setting up the sprite user failed: {status}"
        )));
    }
    let hosts = rootfs.join("etc/hosts");
    fs::write(&hosts, "127.0.0.1 localhost\n::1 localhost\n")
        .map_err(CoreError::io("write", &hosts))?;
    Ok(())
}

/// Finds a static busybox on the host.
fn host_busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn build_busybox(rootfs: &Path) -> Result<(), CoreError> {
    let failed = |message: String| CoreError::Image {
        image: "busybox".into(),
        message,
    };
    let busybox = host_busybox().ok_or_else(|| {
        failed("no busybox on the host; install it with `apt-get install busybox-static`".into())
    })?;
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "root",
        "home/sprite",
        "tmp",
        "proc",
        "sys",
        "dev",
        "var/tmp",
    ] {
        let path = rootfs.join(dir);
        fs::create_dir_all(&path).map_err(CoreError::io("create", &path))?;
    }
    fs::copy(&busybox, rootfs.join("bin/busybox")).map_err(CoreError::io("copy", &busybox))?;
    let list = std::process::Command::new(&busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| failed(format!("busybox --list-full: {e}")))?;
    let mut applets = Vec::new();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = rootfs.join(applet);
        if applet.is_empty() || applet == "bin/busybox" || link.exists() {
            continue;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link).map_err(CoreError::io("link", &link))?;
        applets.push(applet.rsplit('/').next().unwrap_or(applet).to_string());
    }
    if !applets.iter().any(|a| a == "bash") {
        let bash = rootfs.join("bin/bash");
        fs::write(&bash, "#!/bin/sh\nexec /bin/sh \"$@\"\n")
            .map_err(CoreError::io("write", &bash))?;
        fs::set_permissions(&bash, fs::Permissions::from_mode(0o755))
            .map_err(CoreError::io("chmod", &bash))?;
    }
    let files = [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nsprite:x:1000:1000:sprite:/home/sprite:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"),
        ("etc/group", "root:x:0:\ntty:x:5:\nsudo:x:27:sprite\nsprite:x:1000:\nnogroup:x:65534:\n"),
        ("etc/hosts", "127.0.0.1 localhost\n"),
    ];
    for (path, text) in files {
        let path = rootfs.join(path);
        fs::write(&path, text).map_err(CoreError::io("write", &path))?;
    }
    for dir in ["tmp", "var/tmp"] {
        let path = rootfs.join(dir);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o1777))
            .map_err(CoreError::io("chmod", &path))?;
    }
    let home = rootfs.join("home/sprite");
    std::os::unix::fs::chown(&home, Some(1000), Some(1000))
        .map_err(CoreError::io("chown", &home))?;
    Ok(())
}

/// Adds `base` to the owner and group of every file below `root` that is not shifted
/// yet (hard links are met twice), keeping setuid and setgid bits (chown clears them).
pub fn shift_ids(root: &Path, base: u32) -> Result<(), CoreError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let metadata = fs::symlink_metadata(&path).map_err(CoreError::io("stat", &path))?;
        if metadata.uid() < base || metadata.gid() < base {
            let uid = if metadata.uid() < base {
                metadata.uid() + base
            } else {
                metadata.uid()
            };
            let gid = if metadata.gid() < base {
                metadata.gid() + base
            } else {
                metadata.gid()
            };
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .map_err(CoreError::io("chown", &path))?;
            if !metadata.file_type().is_symlink() && metadata.mode() & 0o6000 != 0 {
                fs::set_permissions(&path, fs::Permissions::from_mode(metadata.mode() & 0o7777))
                    .map_err(CoreError::io("chmod", &path))?;
            }
        }
        if metadata.is_dir() {
            for entry in fs::read_dir(&path).map_err(CoreError::io("read", &path))? {
                stack.push(entry.map_err(CoreError::io("read", &path))?.path());
            }
        }
    }
    Ok(())
}
