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
/// `htpasswd`, basic auth is required; [`Registry::start_with_auth`] takes any `auth:`
/// section (a token service). Killed on drop.
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
        let auth = match htpasswd {
            Some(file) => format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                file.display()
            ),
            None => String::new(),
        };
        Self::start_with_auth(root, &auth)
    }

    /// A registry with `auth` (a YAML `auth:` section, or empty for none).
    pub fn start_with_auth(root: &std::path::Path, auth: &str) -> Registry {
        let port = free_port();
        std::fs::create_dir_all(root.join("data")).unwrap();
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

/// Adds an uncompressed layer tar on top of tag `from` of an OCI layout, as tag `tag`
/// (`from` itself when None).
pub fn add_layer(layout: &std::path::Path, from: &str, tag: Option<&str>, tar: &std::path::Path) {
    let image = format!("{}:{from}", layout.display());
    let tar = tar.to_string_lossy();
    let mut args = vec!["raw", "add-layer", "--image", image.as_str()];
    if let Some(tag) = tag {
        args.extend(["--tag", tag]);
    }
    args.push(&tar);
    sh("umoci", &args);
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

/// A token service for a registry's `auth: token` (the Docker registry token protocol):
/// it wants basic auth `user:password` and answers a JWT (RS256, signed by `openssl`
/// with a throwaway key whose self-signed certificate the registry trusts) granting
/// the scope asked for. Stopped on drop.
pub struct TokenService {
    pub port: u16,
    pub cert: std::path::PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn base64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl TokenService {
    pub async fn start(dir: &std::path::Path, user: &str, password: &str) -> TokenService {
        use base64::Engine;
        std::fs::create_dir_all(dir).unwrap();
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        sh(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=sprite-test-token",
                "-keyout",
                &key.to_string_lossy(),
                "-out",
                &cert.to_string_lossy(),
            ],
        );
        let der = std::process::Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap()
            .stdout;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let wanted = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let task = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).to_string();
                let authorized = text.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:") && l[14..].trim() == wanted
                });
                let response = if !authorized {
                    "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_string()
                } else {
                    // scope=repository:NAME:pull,push
                    let target = text.split_whitespace().nth(1).unwrap_or("").to_string();
                    let scope = target
                        .split(['?', '&'])
                        .find_map(|p| p.strip_prefix("scope="))
                        .map(|s| {
                            s.replace("%3A", ":")
                                .replace("%2C", ",")
                                .replace("%2F", "/")
                        })
                        .unwrap_or_default();
                    let mut parts = scope.splitn(3, ':');
                    let (kind, name, actions) = (
                        parts.next().unwrap_or(""),
                        parts.next().unwrap_or(""),
                        parts.next().unwrap_or(""),
                    );
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [x5c]});
                    let claims = serde_json::json!({
                        "iss": "sprite-test-issuer", "sub": "puller", "aud": "sprite-test-registry",
                        "exp": now + 600, "nbf": now - 10, "iat": now, "jti": format!("{now}-{port}"),
                        "access": if kind.is_empty() { serde_json::json!([]) } else {
                            serde_json::json!([{"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}])
                        },
                    });
                    let signing_input = format!(
                        "{}.{}",
                        base64url(header.to_string().as_bytes()),
                        base64url(claims.to_string().as_bytes())
                    );
                    let key = key.clone();
                    let input = signing_input.clone();
                    let signature = tokio::task::spawn_blocking(move || {
                        use std::io::Write;
                        let mut child = std::process::Command::new("openssl")
                            .args(["dgst", "-sha256", "-sign"])
                            .arg(&key)
                            .stdin(std::process::Stdio::piped())
                            .stdout(std::process::Stdio::piped())
                            .spawn()
                            .unwrap();
                        child
                            .stdin
                            .take()
                            .unwrap()
                            .write_all(input.as_bytes())
                            .unwrap();
                        child.wait_with_output().unwrap().stdout
                    })
                    .await
                    .unwrap();
                    let token = format!("{signing_input}.{}", base64url(&signature));
                    let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 600}).to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        TokenService { port, cert, task }
    }

    /// The registry's `auth:` section for this service.
    pub fn auth_section(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: sprite-test-registry\n    issuer: sprite-test-issuer\n    rootcertbundle: {}\n",
            self.port,
            self.cert.display()
        )
    }
}
