//! A local OCI registry (Debian's `docker-registry`) and image-making helpers, for
//! the image tests and the images bench.

use super::*;

/// Runs a host command; panics with its output if it fails.
pub fn sh(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); scripts/test.sh installs it"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Debian `docker-registry` on a free loopback port, serving `root`; with
/// `htpasswd`, basic auth is required. Killed on drop.
pub struct Registry {
    child: std::process::Child,
    pub port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    pub fn start(root: &std::path::Path, htpasswd: Option<&std::path::Path>) -> Registry {
        let port = free_port();
        std::fs::create_dir_all(root.join("data")).unwrap();
        let auth = match htpasswd {
            Some(file) => format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                file.display()
            ),
            None => String::new(),
        };
        let config = root.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n{auth}http:\n  addr: 127.0.0.1:{port}\n",
                root.join("data").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Registry { child, port }
    }
}

/// Packs `dir` as an uncompressed layer tar owned by root.
pub fn layer_tar(dir: &std::path::Path, tar: &std::path::Path) {
    sh(
        "tar",
        &[
            "-C",
            &dir.to_string_lossy(),
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-cf",
            &tar.to_string_lossy(),
            ".",
        ],
    );
}

/// Copies tag `tag` of an OCI layout to `to` (a skopeo destination).
pub fn push(layout: &std::path::Path, tag: &str, to: &str, creds: Option<&str>) {
    let mut args = vec![
        "copy".to_string(),
        "--quiet".into(),
        "--dest-tls-verify=false".into(),
    ];
    if let Some(creds) = creds {
        args.push(format!("--dest-creds={creds}"));
    }
    args.push(format!("oci:{}:{tag}", layout.display()));
    args.push(to.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sh("skopeo", &args);
}
