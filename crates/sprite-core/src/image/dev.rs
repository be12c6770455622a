//! The `dev` image: Debian bookworm with compilers, Python, Node.js and the coding
//! agents, each taught the sprite in its own instruction file.
//!
//! debootstrap lays down the Debian packages; `dev-build.sh` then runs inside the new
//! root (chroot, in its own mount and pid namespaces with /proc mounted, so nothing it
//! starts or mounts outlives it) to fetch Node.js, npm and the agents from the npm
//! registry and `uv` from PyPI. Nothing is downloaded from anywhere else.

use crate::error::CoreError;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tokio::io::AsyncBufReadExt;

/// Debian packages of the `dev` image (debootstrap resolves their dependencies).
pub const DEV_PACKAGES: &str = "bash,coreutils,procps,iproute2,iputils-ping,less,sudo,\
ca-certificates,curl,wget,git,openssh-client,gnupg,unzip,zip,xz-utils,bzip2,file,\
build-essential,pkg-config,python3,python3-pip,python3-venv,python3-dev,\
jq,ripgrep,tmux,vim,sqlite3,man-db,locales,tzdata";

/// The Node.js release line installed (the newest release of it). 26 is the Active
/// LTS line from October 2026.
pub const NODE_MAJOR: &str = "26";

/// The coding agents, installed globally from npm.
pub const AGENTS: &str = "@anthropic-ai/claude-code @google/gemini-cli @openai/codex";

/// What every agent reads about the sprite, written to each agent's own file.
pub const AGENT_INSTRUCTIONS: &str = include_str!("AGENTS.md");

/// Instruction files, relative to the `sprite` user's home.
pub const INSTRUCTION_FILES: [&str; 4] = [
    "AGENTS.md",
    ".claude/CLAUDE.md",
    ".gemini/GEMINI.md",
    ".codex/AGENTS.md",
];

const BUILD_SCRIPT: &str = include_str!("dev-build.sh");

/// Where the build's copy of the host's CA bundle sits inside the root (removed after).
const BUILD_CA: &str = "tmp/.sprite-build-ca.pem";

fn failed(message: String) -> CoreError {
    CoreError::Image {
        image: "dev".into(),
        message,
    }
}

/// The npm package name suffix for this machine (`node-linux-<arch>`).
fn node_arch() -> Result<&'static str, CoreError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("x64"),
        "aarch64" => Ok("arm64"),
        other => Err(failed(format!(
            "no Node.js build on the npm registry for {other}; use the `debian` image"
        ))),
    }
}

/// The Debian security archive beside `mirror` (`.../debian` → `.../debian-security`).
fn security_mirror(mirror: &str) -> String {
    let base = mirror.trim_end_matches('/');
    match base.strip_suffix("/debian") {
        Some(prefix) => format!("{prefix}/debian-security"),
        None => "http://deb.debian.org/debian-security".into(),
    }
}

/// The apt sources of the image: the release, its updates and security fixes.
pub fn sources_list(mirror: &str) -> String {
    let mirror = mirror.trim_end_matches('/');
    format!(
        "deb {mirror} bookworm main\ndeb {mirror} bookworm-updates main\ndeb {} bookworm-security main\n",
        security_mirror(mirror)
    )
}

/// Runs the in-root part of the build on a debootstrapped `rootfs`; each line it prints
/// goes to `progress`. On failure the error carries the last lines of output.
pub async fn provision(
    rootfs: &Path,
    mirror: &str,
    mut progress: impl FnMut(&str),
) -> Result<(), CoreError> {
    let arch = node_arch()?;
    let sources = rootfs.join("etc/apt/sources.list");
    fs::write(&sources, sources_list(mirror)).map_err(CoreError::io("write", &sources))?;
    // The build resolves names as the host does; the sprite gets its own at start.
    let resolv = rootfs.join("etc/resolv.conf");
    let own_resolv = fs::read(&resolv).ok();
    let _ = fs::remove_file(&resolv);
    if let Err(e) = fs::copy("/etc/resolv.conf", &resolv) {
        tracing::warn!("the dev image build has no /etc/resolv.conf of the host: {e}");
    }
    // The host's CAs are trusted during the build, so it works behind a proxy that
    // the host trusts; the copy is removed afterwards.
    let ca = rootfs.join(BUILD_CA);
    let ca_inside = match fs::copy("/etc/ssl/certs/ca-certificates.crt", &ca) {
        Ok(_) => format!("/{BUILD_CA}"),
        Err(_) => String::new(),
    };
    let script = rootfs.join("tmp/.sprite-dev-build.sh");
    fs::write(&script, BUILD_SCRIPT).map_err(CoreError::io("write", &script))?;
    let result = run_script(rootfs, arch, &ca_inside, &mut progress).await;
    let _ = fs::remove_file(&ca);
    let _ = fs::remove_file(&script);
    let _ = fs::remove_file(&resolv);
    if let Some(own) = own_resolv {
        let _ = fs::write(&resolv, own);
    }
    result?;
    progress("writing the agents' instruction files");
    write_instructions(rootfs)
}

async fn run_script(
    rootfs: &Path,
    arch: &str,
    ca: &str,
    progress: &mut impl FnMut(&str),
) -> Result<(), CoreError> {
    let proc_dir = rootfs.join("proc");
    fs::create_dir_all(&proc_dir).map_err(CoreError::io("create", &proc_dir))?;
    let mut child = tokio::process::Command::new(sprite_sys::tools::find("unshare"))
        .args(["--mount", "--pid", "--fork", "--kill-child"])
        .arg(format!("--mount-proc={}", proc_dir.display()))
        .arg("chroot")
        .arg(rootfs)
        .args(["/bin/bash", "/tmp/.sprite-dev-build.sh"])
        // Only what the build needs: not the daemon's own settings for pip or npm.
        .env_clear()
        .envs(passed_env())
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("SPRITE_NODE_MAJOR", NODE_MAJOR)
        .env("SPRITE_NODE_ARCH", arch)
        .env("SPRITE_BUILD_CA", ca)
        .env("SPRITE_AGENTS", AGENTS)
        .env(
            "SPRITE_NPM_REGISTRY",
            std::env::var("NPM_CONFIG_REGISTRY")
                .or_else(|_| std::env::var("npm_config_registry"))
                .unwrap_or_else(|_| "https://registry.npmjs.org".into()),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("cannot run unshare and chroot: {e}")))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    // stderr is read alongside so a chatty step cannot fill its pipe and stall.
    let errors = tokio::spawn(async move {
        let mut tail = Vec::new();
        if let Some(stderr) = stderr {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(image = "dev", "{line}");
                push_tail(&mut tail, line);
            }
        }
        tail
    });
    let mut tail = Vec::new();
    if let Some(stdout) = stdout {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(step) = line.strip_prefix("step: ") {
                tracing::info!(image = "dev", "{step}");
                progress(step);
            } else {
                tracing::debug!(image = "dev", "{line}");
            }
            push_tail(&mut tail, line);
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| failed(format!("waiting for the build: {e}")))?;
    let errors = errors.await.unwrap_or_default();
    if !status.success() {
        return Err(failed(format!(
            "the build script exited with {status}: {} / {}",
            tail.join(" / "),
            errors.join(" / ")
        )));
    }
    Ok(())
}

/// The daemon's proxy and registry settings, which the build honours.
fn passed_env() -> Vec<(String, String)> {
    const PASSED: [&str; 8] = [
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
    ];
    PASSED
        .iter()
        .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
        .collect()
}

fn push_tail(tail: &mut Vec<String>, line: String) {
    tail.push(line);
    if tail.len() > 6 {
        tail.remove(0);
    }
}

/// Writes the sprite instructions to every agent's file in `/home/sprite`, owned by
/// the user (uid 1000 before the image's ids are shifted).
fn write_instructions(rootfs: &Path) -> Result<(), CoreError> {
    let home = rootfs.join("home/sprite");
    for file in INSTRUCTION_FILES {
        let path = home.join(file);
        if let Some(dir) = path.parent() {
            if dir != home {
                fs::create_dir_all(dir).map_err(CoreError::io("create", dir))?;
                std::os::unix::fs::chown(dir, Some(1000), Some(1000))
                    .map_err(CoreError::io("chown", dir))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                    .map_err(CoreError::io("chmod", dir))?;
            }
        }
        fs::write(&path, AGENT_INSTRUCTIONS).map_err(CoreError::io("write", &path))?;
        std::os::unix::fs::chown(&path, Some(1000), Some(1000))
            .map_err(CoreError::io("chown", &path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_archive_sits_beside_the_mirror() {
        assert_eq!(
            security_mirror("http://deb.debian.org/debian/"),
            "http://deb.debian.org/debian-security"
        );
        assert_eq!(
            security_mirror("http://mirror.example/pub/debian"),
            "http://mirror.example/pub/debian-security"
        );
        assert_eq!(
            security_mirror("http://apt.example/"),
            "http://deb.debian.org/debian-security"
        );
        let sources = sources_list("http://deb.debian.org/debian");
        assert!(sources.contains("deb http://deb.debian.org/debian bookworm-updates main"));
    }

    #[test]
    fn instructions_name_the_sprite_env_commands() {
        for command in [
            "sprite-env checkpoint",
            "sprite-env checkpoints",
            "/restore",
            "sprite-env services",
            "/logs",
            "sprite-env task add",
            "sprite-env awake",
            "sprite-env info",
            "8080",
        ] {
            assert!(
                AGENT_INSTRUCTIONS.contains(command),
                "the agents' instructions do not mention {command}"
            );
        }
    }

    #[test]
    fn instructions_written_for_every_agent() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("home/sprite")).expect("home");
        write_instructions(root.path()).expect("write");
        for file in INSTRUCTION_FILES {
            let text = fs::read_to_string(root.path().join("home/sprite").join(file))
                .expect("instruction file");
            assert_eq!(text, AGENT_INSTRUCTIONS);
        }
    }
}
