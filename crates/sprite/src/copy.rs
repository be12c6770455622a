//! `sprite cp`: files and directory trees between this machine and a sprite, over the
//! file-system API. Every file streams (nothing is held whole in memory), modes are
//! kept, downloads land in a temporary file renamed into place when complete, and a
//! progress line shows on a terminal.

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use sprite_api::fs::EntryType;
use sprite_client::Client;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Local(PathBuf),
    /// A path in a sprite (`None`: the current sprite).
    Remote(Option<String>, String),
}

/// Reads `NAME:PATH` or `:PATH` as a path in a sprite, anything else as a local path
/// (write `./a:b` for a local file whose name has a colon).
pub fn parse_place(text: &str) -> Place {
    if let Some((name, path)) = text.split_once(':') {
        if !name.contains('/') && !path.is_empty() {
            let name = (!name.is_empty()).then(|| name.to_string());
            // Relative paths start in the sprite user's home, as with scp.
            let path = if path.starts_with('/') {
                path.to_string()
            } else {
                format!("/home/sprite/{path}")
            };
            return Place::Remote(name, path);
        }
    }
    Place::Local(PathBuf::from(text))
}

/// Byte counts shared with the progress line.
struct Progress {
    done: AtomicU64,
    total: u64,
    started: Instant,
    shown: bool,
}

impl Progress {
    fn new(total: u64, quiet: bool) -> Arc<Progress> {
        Arc::new(Progress {
            done: AtomicU64::new(0),
            total,
            started: Instant::now(),
            // Only worth a line when there is something big and someone to see it.
            shown: !quiet && total >= 8 << 20 && std::io::stderr().is_terminal(),
        })
    }

    fn add(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    fn show(&self, file: &str) {
        if !self.shown {
            return;
        }
        let done = self.done.load(Ordering::Relaxed);
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let percent = (done * 100).checked_div(self.total).unwrap_or(100);
        eprint!(
            "\r\x1b[2K{:.1} / {:.1} MiB  {percent:>3}%  {:.0} MiB/s  {file}",
            mib(done),
            mib(self.total),
            mib(done) / seconds
        );
    }

    fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

/// What was copied, for `--json` and the summary line.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
}

/// How a copy goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Directories and everything in them.
    pub recursive: bool,
    /// No progress line.
    pub quiet: bool,
    /// Uploads copy what symlinks in a tree point at (else they are skipped).
    pub follow: bool,
}

/// Runs `sprite cp`.
pub async fn run(
    client: &Client,
    current: impl Fn() -> Result<String>,
    sources: &[String],
    dest: &str,
    options: Options,
) -> Result<Report> {
    let dest = parse_place(dest);
    let sources: Vec<Place> = sources.iter().map(|s| parse_place(s)).collect();
    let name_of = |name: &Option<String>| match name {
        Some(name) => Ok(name.clone()),
        None => current(),
    };
    match dest {
        Place::Remote(name, path) => {
            let name = name_of(&name)?;
            let mut locals = Vec::new();
            for source in sources {
                match source {
                    Place::Local(path) => locals.push(path),
                    Place::Remote(..) => bail!(
                        "copying from a sprite to a sprite is not supported: copy to this machine first"
                    ),
                }
            }
            upload(client, &name, &locals, &path, options).await
        }
        Place::Local(path) => {
            if sources.len() != 1 {
                bail!("give one SPRITE:PATH to download (use -r for a directory)");
            }
            match &sources[0] {
                Place::Remote(name, remote) => {
                    let name = name_of(name)?;
                    download(client, &name, remote, &path, options).await
                }
                Place::Local(_) => bail!(
                    "one side must be in a sprite: write it as SPRITE:PATH (or :PATH for the current sprite)"
                ),
            }
        }
    }
}

/// What a path in the sprite is: `None` when it does not exist.
async fn remote_kind(client: &Client, name: &str, path: &str) -> Result<Option<EntryType>> {
    match client.fs_list(name, path, false).await {
        Ok(listed) => Ok(Some(
            listed
                .itself()
                .map_or(EntryType::Directory, |entry| entry.kind),
        )),
        Err(error) if error.status() == Some(404) => Ok(None),
        Err(error) => Err(error).with_context(|| format!("look at {name}:{path}")),
    }
}

fn join_remote(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// The permission bits of a listed mode (`"0755"`), else `default`: a download never
/// makes setuid, setgid or sticky files.
fn safe_mode(mode: &str, default: u32) -> u32 {
    sprite_api::fs::parse_mode_text(mode).unwrap_or(default) & 0o777
}

fn mode_of(metadata: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o7777
}

/// Local files of a tree: (path, path relative to the tree, mode, size); directories
/// with their modes. Symlinks in the tree are skipped (the API makes no links, and
/// following them would send what they point at, `~/.ssh` say, into the sprite) unless
/// `follow` (`-L`); a directory met twice through links is walked once.
#[allow(clippy::type_complexity)]
fn walk(
    root: &Path,
    relative: &Path,
    follow: bool,
    seen: &mut std::collections::HashSet<(u64, u64)>,
    files: &mut Vec<(PathBuf, PathBuf, u32, u64)>,
    dirs: &mut Vec<(PathBuf, u32)>,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let here = root.join(relative);
    let mut entries: Vec<_> = std::fs::read_dir(&here)
        .with_context(|| format!("read {}", here.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("read {}", here.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let rel = relative.join(entry.file_name());
        let mut metadata =
            std::fs::symlink_metadata(&path).with_context(|| format!("read {}", path.display()))?;
        if metadata.file_type().is_symlink() {
            if !follow {
                eprintln!(
                    "skipping {}: a symbolic link (-L copies what links point at)",
                    path.display()
                );
                continue;
            }
            metadata =
                std::fs::metadata(&path).with_context(|| format!("read {}", path.display()))?;
        }
        if metadata.is_dir() {
            if !seen.insert((metadata.dev(), metadata.ino())) {
                eprintln!("skipping {}: a directory already copied", path.display());
                continue;
            }
            dirs.push((rel.clone(), mode_of(&metadata)));
            walk(root, &rel, follow, seen, files, dirs)?;
        } else if metadata.is_file() {
            files.push((path, rel, mode_of(&metadata), metadata.len()));
        } else {
            eprintln!(
                "skipping {}: not a regular file or directory",
                path.display()
            );
        }
    }
    Ok(())
}

async fn upload_file(
    client: &Client,
    name: &str,
    local: &Path,
    remote: &str,
    mode: u32,
    progress: &Arc<Progress>,
) -> Result<()> {
    let file = tokio::fs::File::open(local)
        .await
        .with_context(|| format!("open {}", local.display()))?;
    let counted = Counted {
        inner: file,
        progress: progress.clone(),
        label: remote.to_string(),
    };
    client
        .fs_write(name, remote, Some(mode), true, counted)
        .await
        .with_context(|| format!("copy {} to {name}:{remote}", local.display()))?;
    Ok(())
}

async fn upload(
    client: &Client,
    name: &str,
    sources: &[PathBuf],
    dest: &str,
    options: Options,
) -> Result<Report> {
    let Options {
        recursive,
        quiet,
        follow,
    } = options;
    let dest_kind = remote_kind(client, name, dest).await?;
    let into_dir =
        dest.ends_with('/') || dest_kind == Some(EntryType::Directory) || sources.len() > 1;
    if sources.len() > 1 && dest_kind.is_some_and(|k| k != EntryType::Directory) {
        bail!("{name}:{dest} is not a directory: several sources need a directory to go into");
    }
    // Plan every file first: the total for the progress line, and errors before bytes move.
    let mut plan: Vec<(PathBuf, String, u32, u64)> = Vec::new();
    let mut dirs: Vec<(String, u32)> = Vec::new();
    for source in sources {
        let metadata =
            std::fs::metadata(source).with_context(|| format!("read {}", source.display()))?;
        let base = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| ".".into());
        let target = if into_dir {
            join_remote(dest, &base)
        } else {
            dest.to_string()
        };
        if metadata.is_dir() {
            if !recursive {
                bail!(
                    "{} is a directory: add -r to copy it and everything in it",
                    source.display()
                );
            }
            // Like cp -r: into an existing directory it goes beneath, else it becomes dest.
            let target = if dest_kind == Some(EntryType::Directory) || sources.len() > 1 {
                join_remote(dest, &base)
            } else {
                dest.trim_end_matches('/').to_string()
            };
            let mut files = Vec::new();
            let mut subdirs = Vec::new();
            let mut seen = std::collections::HashSet::new();
            {
                use std::os::unix::fs::MetadataExt;
                seen.insert((metadata.dev(), metadata.ino()));
            }
            walk(
                source,
                Path::new(""),
                follow,
                &mut seen,
                &mut files,
                &mut subdirs,
            )?;
            dirs.push((target.clone(), mode_of(&metadata)));
            for (rel, mode) in subdirs {
                dirs.push((join_remote(&target, &rel.to_string_lossy()), mode));
            }
            for (path, rel, mode, size) in files {
                plan.push((
                    path,
                    join_remote(&target, &rel.to_string_lossy()),
                    mode,
                    size,
                ));
            }
        } else {
            plan.push((source.clone(), target, mode_of(&metadata), metadata.len()));
        }
    }
    let total = plan.iter().map(|p| p.3).sum();
    let progress = Progress::new(total, quiet);
    let mut report = Report::default();
    // Directories first (an empty one is made by writing and removing a marker).
    for (dir, _) in &dirs {
        if remote_kind(client, name, dir).await? != Some(EntryType::Directory) {
            let marker = join_remote(dir, ".sprite-cp-mkdir");
            client
                .fs_write(name, &marker, Some(0o600), true, tokio::io::empty())
                .await
                .with_context(|| format!("make directory {name}:{dir}"))?;
            client
                .fs_delete(name, &marker, false)
                .await
                .with_context(|| format!("make directory {name}:{dir}"))?;
        }
    }
    for (local, remote, mode, size) in &plan {
        upload_file(client, name, local, remote, *mode, &progress).await?;
        report.files += 1;
        report.bytes += size;
    }
    // Directory modes last, deepest first, so a read-only one does not block its files.
    for (dir, mode) in dirs.iter().rev() {
        client
            .fs_post::<serde_json::Value>(
                name,
                "chmod",
                &serde_json::json!({"path": dir, "mode": format!("{mode:04o}")}),
            )
            .await
            .with_context(|| format!("set the mode of {name}:{dir}"))?;
        report.directories += 1;
    }
    progress.finish();
    Ok(report)
}

/// Where a download writes: a directory it opened, and every path under it resolved
/// by the kernel beneath it with no symbolic link followed (`openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so no name the sprite chose, and no link
/// already on this machine (one an earlier download made, say), leads a write
/// anywhere else.
struct LocalTree {
    root: std::os::fd::OwnedFd,
    path: PathBuf,
}

impl LocalTree {
    fn open(path: &Path) -> Result<LocalTree> {
        use nix::fcntl::{open, OFlag};
        let root = open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_PATH | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .with_context(|| format!("open {}", path.display()))?;
        Ok(LocalTree {
            root,
            path: path.to_path_buf(),
        })
    }

    /// A directory beneath the root (`""` is the root itself), never through a link.
    fn dir(&self, relative: &Path) -> Result<std::os::fd::OwnedFd> {
        use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
        let relative = if relative.as_os_str().is_empty() {
            Path::new(".")
        } else {
            relative
        };
        let how = OpenHow::new()
            .flags(OFlag::O_DIRECTORY | OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        openat2(&self.root, relative, how).with_context(|| {
            format!(
                "open {} (a download never writes through a symbolic link or outside {})",
                self.path.join(relative).display(),
                self.path.display()
            )
        })
    }

    /// Makes `relative` and its parents, each beneath the root and never a link.
    fn make_dirs(&self, relative: &Path) -> Result<()> {
        let mut done = PathBuf::new();
        for part in relative.components() {
            let parent = self.dir(&done)?;
            match nix::sys::stat::mkdirat(
                &parent,
                part.as_os_str(),
                nix::sys::stat::Mode::from_bits_truncate(0o700),
            ) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(error) => {
                    return Err(error).with_context(|| {
                        format!("create {}", self.path.join(&done).join(part).display())
                    })
                }
            }
            done.push(part);
        }
        self.dir(&done).map(drop)
    }

    /// The directory and name of a file at `relative`.
    fn parent_of(&self, relative: &Path) -> Result<(std::os::fd::OwnedFd, std::ffi::OsString)> {
        let name = relative
            .file_name()
            .context("a file to download has no name")?
            .to_os_string();
        let parent = relative.parent().unwrap_or(Path::new(""));
        Ok((self.dir(parent)?, name))
    }

    fn set_mode(&self, relative: &Path, mode: u32) -> Result<()> {
        let dir = self.dir(relative)?;
        std::fs::set_permissions(
            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir)),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .with_context(|| format!("set the mode of {}", self.path.join(relative).display()))
    }
}

/// Downloads one file to `name` in the directory `parent`: into a temporary file made
/// there (never through a link), renamed over `name` when complete and synced.
#[allow(clippy::too_many_arguments)]
async fn download_file(
    client: &Client,
    sprite: &str,
    remote: &str,
    parent: &std::os::fd::OwnedFd,
    name: &std::ffi::OsStr,
    shown: &Path,
    mode: u32,
    progress: &Arc<Progress>,
) -> Result<u64> {
    use nix::fcntl::{openat, renameat, OFlag};
    use nix::sys::stat::Mode;
    use nix::unistd::{unlinkat, UnlinkatFlags};
    let response = client
        .fs_read(sprite, remote, None)
        .await
        .with_context(|| format!("copy {sprite}:{remote}"))?;
    let partial = format!(
        ".{}.sprite-cp-{}",
        name.to_string_lossy(),
        std::process::id()
    );
    let _ = unlinkat(parent, partial.as_str(), UnlinkatFlags::NoRemoveDir);
    let file: std::fs::File = openat(
        parent,
        partial.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .with_context(|| format!("create a temporary file beside {}", shown.display()))?
    .into();
    let result = async {
        // The disk is written by a thread of its own, so the network never waits on it.
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
        let target = shown.to_path_buf();
        let writer = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            use std::os::unix::fs::PermissionsExt;
            let mut buffered = std::io::BufWriter::with_capacity(1 << 20, file);
            // The disk works while the download goes on, not all at the end.
            let writeback = sprite_sandbox::sys::WritebackPacer::default();
            while let Some(chunk) = receiver.blocking_recv() {
                buffered
                    .write_all(&chunk)
                    .with_context(|| format!("write {}", target.display()))?;
                let _ = writeback.wrote(buffered.get_ref(), chunk.len() as u64);
            }
            let file = buffered
                .into_inner()
                .map_err(|e| e.into_error())
                .with_context(|| format!("write {}", target.display()))?;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("set the mode of {}", target.display()))?;
            file.sync_all()
                .with_context(|| format!("write {}", target.display()))
        });
        let mut stream = response.bytes_stream();
        let mut bytes = 0u64;
        let mut broken = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => {
                    broken = Some(error);
                    break;
                }
            };
            bytes += chunk.len() as u64;
            progress.add(chunk.len() as u64);
            progress.show(remote);
            if sender.send(chunk).await.is_err() {
                break; // the writer failed: its error is reported below
            }
        }
        drop(sender);
        writer.await.context("the writer thread failed")??;
        if let Some(error) = broken {
            return Err(anyhow::Error::new(error))
                .with_context(|| format!("copy {sprite}:{remote}: the download broke off"));
        }
        // A rename replaces a link in the way, never writes through it.
        renameat(parent, partial.as_str(), parent, name)
            .with_context(|| format!("write {}", shown.display()))?;
        Ok(bytes)
    }
    .await;
    if result.is_err() {
        let _ = unlinkat(parent, partial.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    result
}

async fn download(
    client: &Client,
    name: &str,
    source: &str,
    dest: &Path,
    options: Options,
) -> Result<Report> {
    let Options {
        recursive, quiet, ..
    } = options;
    let listed = client
        .fs_list(name, source, false)
        .await
        .with_context(|| format!("copy {name}:{source}"))?;
    let file = listed.itself().filter(|entry| !entry.is_dir);
    let base = Path::new(&listed.path)
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "root".into());
    let mut report = Report::default();
    if let Some(entry) = file {
        let target = if dest.is_dir() {
            dest.join(&base)
        } else {
            dest.to_path_buf()
        };
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tree = LocalTree::open(parent)?;
        let (dir, file_name) =
            tree.parent_of(Path::new(target.file_name().context("no file name")?))?;
        let progress = Progress::new(entry.size, quiet);
        let mode = safe_mode(&entry.mode, 0o644);
        report.bytes = download_file(
            client,
            name,
            &listed.path,
            &dir,
            &file_name,
            &target,
            mode,
            &progress,
        )
        .await?;
        report.files = 1;
        progress.finish();
        return Ok(report);
    }
    if !recursive {
        bail!("{name}:{source} is a directory: add -r to copy it and everything in it");
    }
    let target = if dest.is_dir() {
        dest.join(&base)
    } else {
        dest.to_path_buf()
    };
    let entries = client
        .fs_list(name, &listed.path, true)
        .await
        .with_context(|| format!("list {name}:{source}"))?;
    let total = entries
        .entries
        .iter()
        .filter(|e| e.kind == EntryType::File)
        .map(|e| e.size)
        .sum();
    let progress = Progress::new(total, quiet);
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    match std::fs::create_dir(&target) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error).with_context(|| format!("create {}", target.display())),
    }
    let tree = LocalTree::open(&target)?;
    let prefix = format!("{}/", listed.path.trim_end_matches('/'));
    let mut dir_modes = Vec::new();
    let mut links = Vec::new();
    for entry in &entries.entries {
        let Some(rel) = entry.path.strip_prefix(&prefix) else {
            continue;
        };
        let rel = Path::new(rel);
        // Names come from the sprite: only plain names, never `..` or an absolute path.
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            eprintln!("skipping {name}:{}: not a plain path", entry.path);
            continue;
        }
        let local = target.join(rel);
        let mode = safe_mode(&entry.mode, 0o644);
        match entry.kind {
            EntryType::Directory => {
                tree.make_dirs(rel)?;
                dir_modes.push((rel.to_path_buf(), mode));
                report.directories += 1;
            }
            EntryType::File => {
                if let Some(parent) = rel.parent() {
                    tree.make_dirs(parent)?;
                }
                let (dir, file_name) = tree.parent_of(rel)?;
                report.bytes += download_file(
                    client,
                    name,
                    &entry.path,
                    &dir,
                    &file_name,
                    &local,
                    mode,
                    &progress,
                )
                .await?;
                report.files += 1;
            }
            EntryType::Symlink => {
                if let Some(link) = &entry.target {
                    // Made last: nothing is ever written through a link this copy made.
                    links.push((rel.to_path_buf(), link.clone()));
                }
            }
            EntryType::Other => eprintln!(
                "skipping {name}:{}: not a regular file or directory",
                entry.path
            ),
        }
    }
    for (rel, link) in links {
        let (dir, link_name) = tree.parent_of(&rel)?;
        let _ = nix::unistd::unlinkat(
            &dir,
            link_name.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        nix::unistd::symlinkat(link.as_str(), &dir, link_name.as_os_str())
            .with_context(|| format!("create the link {}", target.join(&rel).display()))?;
        report.files += 1;
    }
    let top_mode = remote_mode(client, name, &listed.path).await;
    dir_modes.push((
        PathBuf::new(),
        safe_mode(top_mode.as_deref().unwrap_or("0755"), 0o755),
    ));
    for (dir, mode) in dir_modes.iter().rev() {
        tree.set_mode(dir, *mode)?;
    }
    progress.finish();
    Ok(report)
}

/// The mode of a directory in the sprite, from its parent's listing.
async fn remote_mode(client: &Client, name: &str, path: &str) -> Option<String> {
    let parent = Path::new(path).parent()?.to_string_lossy().into_owned();
    let listed = client.fs_list(name, &parent, false).await.ok()?;
    listed
        .entries
        .into_iter()
        .find(|e| e.path == path)
        .map(|e| e.mode)
}

/// An upload body that counts what it hands out.
struct Counted<R> {
    inner: R,
    progress: Arc<Progress>,
    label: String,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            self.progress.add(read);
            self.progress.show(&self.label);
        }
        polled
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn places_are_read_like_scp() {
        assert_eq!(
            parse_place("dev:/tmp/x"),
            Place::Remote(Some("dev".into()), "/tmp/x".into())
        );
        assert_eq!(parse_place(":/tmp/x"), Place::Remote(None, "/tmp/x".into()));
        assert_eq!(
            parse_place("dev:rel"),
            Place::Remote(Some("dev".into()), "/home/sprite/rel".into())
        );
        assert_eq!(parse_place("./a:b"), Place::Local("./a:b".into()));
        assert_eq!(parse_place("file.txt"), Place::Local("file.txt".into()));
        assert_eq!(parse_place("dev:"), Place::Local("dev:".into()));
    }
}
