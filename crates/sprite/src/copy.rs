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

/// Runs `sprite cp`.
pub async fn run(
    client: &Client,
    current: impl Fn() -> Result<String>,
    sources: &[String],
    dest: &str,
    recursive: bool,
    quiet: bool,
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
            upload(client, &name, &locals, &path, recursive, quiet).await
        }
        Place::Local(path) => {
            if sources.len() != 1 {
                bail!("give one SPRITE:PATH to download (use -r for a directory)");
            }
            match &sources[0] {
                Place::Remote(name, remote) => {
                    let name = name_of(name)?;
                    download(client, &name, remote, &path, recursive, quiet).await
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
/// with their modes. Symlinks are followed (the API cannot make links).
#[allow(clippy::type_complexity)]
fn walk(
    root: &Path,
    relative: &Path,
    files: &mut Vec<(PathBuf, PathBuf, u32, u64)>,
    dirs: &mut Vec<(PathBuf, u32)>,
) -> Result<()> {
    let here = root.join(relative);
    let mut entries: Vec<_> = std::fs::read_dir(&here)
        .with_context(|| format!("read {}", here.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("read {}", here.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let rel = relative.join(entry.file_name());
        let metadata =
            std::fs::metadata(&path).with_context(|| format!("read {}", path.display()))?;
        if metadata.is_dir() {
            dirs.push((rel.clone(), mode_of(&metadata)));
            walk(root, &rel, files, dirs)?;
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
    recursive: bool,
    quiet: bool,
) -> Result<Report> {
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
            walk(source, Path::new(""), &mut files, &mut subdirs)?;
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

async fn download_file(
    client: &Client,
    name: &str,
    remote: &str,
    local: &Path,
    mode: u32,
    progress: &Arc<Progress>,
) -> Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    let response = client
        .fs_read(name, remote, None)
        .await
        .with_context(|| format!("copy {name}:{remote}"))?;
    let file_name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = local.with_file_name(format!(".{file_name}.sprite-cp-{}", std::process::id()));
    let result = async {
        let file = std::fs::File::create(&partial)
            .with_context(|| format!("create {}", partial.display()))?;
        // The disk is written by a thread of its own, so the network never waits on it.
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
        let target = local.to_path_buf();
        let writer = tokio::task::spawn_blocking(move || {
            use std::io::Write;
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
                .with_context(|| format!("copy {name}:{remote}: the download broke off"));
        }
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("set the mode of {}", local.display()))?;
        std::fs::rename(&partial, local).with_context(|| format!("write {}", local.display()))?;
        Ok(bytes)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

async fn download(
    client: &Client,
    name: &str,
    source: &str,
    dest: &Path,
    recursive: bool,
    quiet: bool,
) -> Result<Report> {
    use std::os::unix::fs::PermissionsExt;
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
        let progress = Progress::new(entry.size, quiet);
        let mode = safe_mode(&entry.mode, 0o644);
        report.bytes = download_file(client, name, &listed.path, &target, mode, &progress).await?;
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
    let tree = client
        .fs_list(name, &listed.path, true)
        .await
        .with_context(|| format!("list {name}:{source}"))?;
    let total = tree
        .entries
        .iter()
        .filter(|e| e.kind == EntryType::File)
        .map(|e| e.size)
        .sum();
    let progress = Progress::new(total, quiet);
    std::fs::create_dir_all(&target).with_context(|| format!("create {}", target.display()))?;
    let prefix = format!("{}/", listed.path.trim_end_matches('/'));
    let mut dir_modes = Vec::new();
    let mut links = Vec::new();
    for entry in &tree.entries {
        let Some(rel) = entry.path.strip_prefix(&prefix) else {
            continue;
        };
        let local = target.join(rel);
        let mode = safe_mode(&entry.mode, 0o644);
        match entry.kind {
            EntryType::Directory => {
                std::fs::create_dir_all(&local)
                    .with_context(|| format!("create {}", local.display()))?;
                dir_modes.push((local, mode));
                report.directories += 1;
            }
            EntryType::File => {
                report.bytes +=
                    download_file(client, name, &entry.path, &local, mode, &progress).await?;
                report.files += 1;
            }
            EntryType::Symlink => {
                if let Some(link) = &entry.target {
                    // Made last: nothing is ever written through a link this copy made.
                    links.push((local, link.clone()));
                }
            }
            EntryType::Other => eprintln!(
                "skipping {name}:{}: not a regular file or directory",
                entry.path
            ),
        }
    }
    for (local, link) in links {
        let _ = std::fs::remove_file(&local);
        std::os::unix::fs::symlink(&link, &local)
            .with_context(|| format!("create the link {}", local.display()))?;
        report.files += 1;
    }
    let top_mode = remote_mode(client, name, &listed.path).await;
    dir_modes.push((
        target.clone(),
        safe_mode(top_mode.as_deref().unwrap_or("0755"), 0o755),
    ));
    for (dir, mode) in dir_modes.iter().rev() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(*mode))
            .with_context(|| format!("set the mode of {}", dir.display()))?;
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
