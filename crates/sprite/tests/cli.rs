//! The `sprite` CLI against a real daemon: exit codes, binary-safe pipes both ways,
//! JSON output, errors with hints, and a console in a pseudo-terminal.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn sprite(daemon: &Daemon, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sprite"))
        .args(args)
        .env("SPRITES_API_URL", &daemon.url)
        .env("SPRITE_TOKEN", TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

/// Runs `script` with `python -c`, `input` on its stdin; its stdout (it must succeed).
fn python_with_stdin(python: &str, script: &str, input: &str) -> Vec<u8> {
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.as_bytes().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}\n{input}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_round_trips() {
    let daemon = Daemon::start("busybox").await;
    let out = sprite(&daemon, &["create", "cli", "--skip-console", "--json"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["name"], "cli");

    // The URL, and who may open it.
    let out = sprite(&daemon, &["url", "-s", "cli", "--json"], b"");
    let url: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(url["auth"], "sprite");
    assert!(url["url"]
        .as_str()
        .unwrap()
        .starts_with("http://cli.localhost:"));
    let out = sprite(
        &daemon,
        &["url", "update", "--auth", "public", "-s", "cli", "--json"],
        b"",
    );
    let url: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        url["auth"],
        "public",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sprite(
        &daemon,
        &["url", "update", "--auth", "everyone", "-s", "cli"],
        b"",
    );
    assert!(!out.status.success());

    // A TCP tunnel on stdin/stdout (`-W`, as an ssh ProxyCommand uses it): stdin's end
    // half-closes, the answer still comes back.
    let create = [
        "services",
        "create",
        "echo",
        "-s",
        "cli",
        "--duration",
        "0s",
        "--",
        "nc",
        "-ll",
        "-p",
        "7000",
        "-e",
        "cat",
    ];
    let out = sprite(&daemon, &create, b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tunnel = ["proxy", "-W", "localhost:7000", "-s", "cli"];
    let out = sprite(&daemon, &tunnel, b"through the tunnel\n");
    assert_eq!(
        out.stdout,
        b"through the tunnel\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `sprite proxy` needs something to forward.
    let out = sprite(&daemon, &["proxy", "-s", "cli"], b"");
    assert!(!out.status.success());

    // Sleep and wake from the CLI.
    let out = sprite(&daemon, &["sleep", "cli", "--json"], b"");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        info["status"],
        "warm",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sprite(&daemon, &["wake", "cli", "--json"], b"");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["status"], "running");

    // Exit codes pass through.
    let out = sprite(
        &daemon,
        &[
            "exec",
            "-s",
            "cli",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 42",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");

    // Binary-safe both ways: a tar stream in, and back out.
    let source = tempfile::tempdir().unwrap();
    let blob: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(source.path().join("blob.bin"), &blob).unwrap();
    std::fs::write(source.path().join("text.txt"), "hello\n").unwrap();
    let tarball = Command::new("tar")
        .arg("c")
        .arg("-C")
        .arg(source.path())
        .arg(".")
        .output()
        .unwrap()
        .stdout;
    let out = sprite(
        &daemon,
        &[
            "exec",
            "-s",
            "cli",
            "--",
            "sh",
            "-c",
            "mkdir -p /tmp/in && tar x -C /tmp/in",
        ],
        &tarball,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sprite(
        &daemon,
        &["x", "-s", "cli", "--", "tar", "c", "-C", "/tmp/in", "."],
        b"",
    );
    assert!(out.status.success());
    let back = tempfile::tempdir().unwrap();
    let mut untar = Command::new("tar")
        .arg("x")
        .arg("-C")
        .arg(back.path())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    untar.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    assert!(untar.wait().unwrap().success());
    assert!(std::fs::read(back.path().join("blob.bin")).unwrap() == blob);
    assert_eq!(
        std::fs::read_to_string(back.path().join("text.txt")).unwrap(),
        "hello\n"
    );

    // JSON listing, and sessions.
    let out = sprite(&daemon, &["list", "--json"], b"");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "cli");
    let out = sprite(&daemon, &["sessions", "list", "-s", "cli", "--json"], b"");
    let sessions: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(sessions.as_array().unwrap().len() >= 3);

    // Errors say what was wrong and what to do.
    let out = sprite(&daemon, &["exec", "-s", "ghost", "--", "true"], b"");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error:") && stderr.contains("ghost") && stderr.contains("hint:"),
        "{stderr}"
    );
    let out = sprite(&daemon, &["create", "Bad_Name", "--skip-console"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use only a-z"));

    // A console in a pseudo-terminal: the shell's exit code comes back.
    let command = format!(
        "SPRITES_API_URL={} SPRITE_TOKEN={} {} console -s cli",
        daemon.url,
        TOKEN,
        env!("CARGO_BIN_EXE_sprite")
    );
    let mut console = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = console.stdin.take().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    input.write_all(b"echo inside-$((6*7)); exit 7\n").unwrap();
    let output = console.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("inside-42"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(output.status.code(), Some(7));

    let out = sprite(&daemon, &["destroy", "cli", "--force"], b"");
    assert!(out.status.success());
    assert!(daemon.sprite_ids().is_empty());
}

/// Every file and directory under `root`: relative path → (mode, contents; None for a
/// directory).
fn snapshot(root: &std::path::Path) -> std::collections::BTreeMap<String, (u32, Option<Vec<u8>>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                found.insert(rel, (mode, None));
                stack.push(path);
            } else {
                found.insert(rel, (mode, Some(std::fs::read(&path).unwrap())));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_round_trips_a_tree_with_contents_and_modes() {
    use std::os::unix::fs::PermissionsExt;
    let daemon = Daemon::start_with("busybox", "storage = \"spritefs\"\n").await;
    create(&daemon.client, "cp").await;
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("src/deep")).unwrap();
    std::fs::create_dir_all(tree.join("empty")).unwrap();
    std::fs::write(tree.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(tree.join("src/secret"), "s3cr3t").unwrap();
    std::fs::write(tree.join("src/deep/empty-file"), "").unwrap();
    let big: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(tree.join("src/deep/big.bin"), &big).unwrap();
    for (path, mode) in [
        ("run.sh", 0o755),
        ("src/secret", 0o600),
        ("empty", 0o700),
        ("src/deep", 0o750),
    ] {
        std::fs::set_permissions(tree.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
    }

    let up = sprite(
        &daemon,
        &[
            "cp",
            "-r",
            tree.to_str().unwrap(),
            "cp:/home/sprite/tree",
            "--json",
        ],
        b"",
    );
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    assert_eq!(
        (report["files"].as_u64(), report["bytes"].as_u64()),
        (Some(4), Some(big.len() as u64 + 24))
    );
    let inside = run(&daemon.client, "cp", &["sh", "-c", "cd /home/sprite/tree && ./run.sh && stat -c '%a %U' src/secret empty src/deep && md5sum src/deep/big.bin"]).await;
    let md5 = format!("{:x}", md5_of(&big));
    assert_eq!(
        inside.stdout(),
        format!("hi\n600 sprite\n700 sprite\n750 sprite\n{md5}  src/deep/big.bin\n")
    );

    let back = work.path().join("back");
    let down = sprite(
        &daemon,
        &["cp", "-r", "-q", "cp:tree", back.to_str().unwrap()],
        b"",
    );
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(snapshot(&back), snapshot(&tree));

    // One file each way, into a directory; errors name the path and exit non-zero.
    let single = sprite(
        &daemon,
        &["cp", tree.join("run.sh").to_str().unwrap(), "cp:/tmp/"],
        b"",
    );
    assert!(
        single.status.success(),
        "{}",
        String::from_utf8_lossy(&single.stderr)
    );
    let out = sprite(
        &daemon,
        &[
            "cp",
            ":/tmp/run.sh",
            work.path().to_str().unwrap(),
            "-s",
            "cp",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(work.path().join("run.sh")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    let missing = sprite(
        &daemon,
        &["cp", "cp:/home/sprite/nope", work.path().to_str().unwrap()],
        b"",
    );
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("/home/sprite/nope"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let dir_without_r = sprite(&daemon, &["cp", tree.to_str().unwrap(), "cp:/tmp/x"], b"");
    assert!(String::from_utf8_lossy(&dir_without_r.stderr).contains("add -r"));
}

/// MD5 (RFC 1321), to compare with `md5sum` in the sprite without a dependency.
fn md5_of(data: &[u8]) -> u128 {
    let s: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4294967296.0) as u32)
        .collect();
    let (mut a0, mut b0, mut c0, mut d0) =
        (0x67452301u32, 0xefcdab89u32, 0x98badcfeu32, 0x10325476u32);
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_le_bytes());
    for chunk in message.chunks(64) {
        let m: Vec<u32> = chunk
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(s[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    let mut digest = [0u8; 16];
    for (i, word) in [a0, b0, c0, d0].iter().enumerate() {
        digest[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
    }
    u128::from_be_bytes(digest)
}

/// Tokens and organization limits through the CLI: a token minted for `acme` acts
/// there alone, limits refuse creates and wakes past `running_limit` with the SDKs'
/// 429 and send sleeping sprites cold past `warm_limit`, and a revoked token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_organization_limits() {
    use sprite_api::sprite::SpriteStatus;
    let daemon = Daemon::start_with(
        "busybox",
        "warm_after = \"never\"\ncold_after = \"never\"\n",
    )
    .await;
    let ok = |out: &Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let created = ok(&sprite(
        &daemon,
        &[
            "tokens",
            "create",
            "--org",
            "acme",
            "--description",
            "ci",
            "--json",
        ],
        b"",
    ));
    let token = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    let acme = sprite_client::Client::new(&daemon.url, &token);
    let listed = ok(&sprite(&daemon, &["tokens", "list", "--json"], b""));
    assert_eq!(listed["tokens"][0]["id"], id.as_str());
    assert!(!listed.to_string().contains(&token));

    let limits = ok(&sprite(
        &daemon,
        &[
            "orgs",
            "set",
            "acme",
            "--running-limit",
            "1",
            "--warm-limit",
            "0",
            "--json",
        ],
        b"",
    ));
    assert_eq!(limits["running_limit"], 1);
    acme.create(&sprite_request("a1")).await.unwrap();
    let refused = acme.create(&sprite_request("a2")).await.unwrap_err();
    assert!(
        matches!(&refused, sprite_client::ClientError::Api { status: 429, code, .. } if code == "concurrent_sprite_limit_exceeded"),
        "{refused:?}"
    );
    // Another organization is not affected, nor sees acme's sprites.
    create(&daemon.client, "d1").await;
    assert_eq!(acme.list(None, None).await.unwrap().sprites.len(), 1);
    // Past the warm limit, a sleeping sprite goes cold; then a2 has room.
    assert_eq!(
        acme.sleep("a1", false).await.unwrap().status,
        SpriteStatus::Cold
    );
    acme.create(&sprite_request("a2")).await.unwrap();
    // a1 cannot wake while a2 is awake.
    let error = acme.exec("a1", &params(&["true"])).await.unwrap_err();
    assert!(error.to_string().contains("running_limit"), "{error}");
    acme.sleep("a2", true).await.unwrap();
    assert_eq!(run(&acme, "a1", &["true"]).await.code, 0);

    // An organization token manages no host.
    let out = sprite(&daemon, &["admin", "gc"], b"");
    assert!(out.status.success(), "the admin token may");
    let child = Command::new(env!("CARGO_BIN_EXE_sprite"))
        .args(["admin", "gc"])
        .env("SPRITES_API_URL", &daemon.url)
        .env("SPRITE_TOKEN", &token)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&child.stderr).to_string();
    assert!(
        !child.status.success() && stderr.contains("admin scope"),
        "{stderr}"
    );

    // Revoked: refused.
    ok(&sprite(
        &daemon,
        &["tokens", "revoke", &id, "--org", "acme", "--json"],
        b"",
    ));
    let error = acme.list(None, None).await.unwrap_err();
    assert!(
        matches!(error, sprite_client::ClientError::Api { status: 401, .. }),
        "{error:?}"
    );
    let out = sprite(&daemon, &["tokens", "revoke", &id, "--org", "acme"], b"");
    assert!(!out.status.success(), "twice is an error");
    // acme's sprites are destroyed with a new token of acme's.
    let again = ok(&sprite(
        &daemon,
        &["tokens", "create", "--org", "acme", "--json"],
        b"",
    ));
    let acme = sprite_client::Client::new(&daemon.url, again["token"].as_str().unwrap());
    for name in ["a1", "a2"] {
        acme.destroy(name).await.unwrap();
    }
}

/// Usage history (sampled every second here) through `sprite usage`, and `/metrics`
/// read by the Prometheus client library's own text parser (prometheus_client, in the
/// SDK venv scripts/test.sh makes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_history_and_metrics() {
    let daemon = Daemon::start_with(
        "busybox",
        "usage_interval = \"1s\"\nwarm_after = \"never\"\ncold_after = \"never\"\n",
    )
    .await;
    create(&daemon.client, "u1").await;
    // About a second of CPU, then a pause for the samples to see it.
    let burn = run(
        &daemon.client,
        "u1",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done",
        ],
    )
    .await;
    assert_eq!(burn.code, 0);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let out = sprite(
        &daemon,
        &["usage", "-s", "u1", "--since", "2h", "--json"],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let usage: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hours = usage["history"].as_array().unwrap();
    assert!(!hours.is_empty(), "{usage}");
    let cpu: f64 = hours
        .iter()
        .map(|h| h["cpu_seconds"].as_f64().unwrap())
        .sum();
    let running: f64 = hours
        .iter()
        .map(|h| h["running_seconds"].as_f64().unwrap())
        .sum();
    assert!(cpu >= 0.2, "the loop's CPU is counted: {usage}");
    assert!(running >= 1.0, "{usage}");
    assert!(hours
        .iter()
        .any(|h| h["memory_peak_bytes"].as_u64().unwrap() > 0));
    let text = sprite(&daemon, &["usage", "-s", "u1"], b"");
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(text.contains("HOUR (UTC)") && text.contains('#'), "{text}");
    let bad = sprite(&daemon, &["usage", "-s", "u1", "--since", "yesterday"], b"");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("neither a time"));

    // A warm sleep and a wake, for the wake histogram.
    daemon.client.sleep("u1", false).await.unwrap();
    assert_eq!(run(&daemon.client, "u1", &["true"]).await.code, 0);

    let response = reqwest::Client::new()
        .get(format!("{}/metrics", daemon.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let body = response.text().await.unwrap();
    let Ok(python) = std::env::var("SPRITE_SDK_PYTHON") else {
        eprintln!("SPRITE_SDK_PYTHON is not set: /metrics is not parsed (CI parses it)");
        return;
    };
    let parser = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append({"family": family.name, "type": family.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(samples))
"#;
    let parsed = python_with_stdin(&python, parser, &body);
    let samples: Vec<serde_json::Value> = serde_json::from_slice(&parsed).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        samples
            .iter()
            .find(|s| {
                s["name"] == name
                    && labels
                        .iter()
                        .all(|(k, v)| s["labels"][*k].as_str() == Some(*v))
            })
            .and_then(|s| s["value"].as_f64())
    };
    assert_eq!(
        value("sprites", &[("status", "running")]),
        Some(1.0),
        "{body}"
    );
    assert!(value("sprite_cpu_seconds_total", &[("sprite", "u1")]).unwrap() >= 0.2);
    assert!(value("sprite_memory_bytes", &[("sprite", "u1")]).unwrap() > 0.0);
    assert!(value("sprites_create_seconds_count", &[("source", "new")]).unwrap() >= 1.0);
    assert!(value("sprites_wake_seconds_count", &[("from", "warm")]).unwrap() >= 1.0);
    assert_eq!(value("sprites_storage_up", &[]), Some(1.0));
    assert!(
        value("sprites_store_operations_total", &[("operation", "put")]).is_some(),
        "{body}"
    );

    // An organization token does not see the host's metrics.
    let created = daemon
        .client
        .create_token("acme", &Default::default())
        .await
        .unwrap();
    let status = reqwest::Client::new()
        .get(format!("{}/metrics", daemon.url))
        .bearer_auth(&created.token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 403);
}

/// `sprite admin status`, then `sprite admin stop --all`: every sprite goes cold and the
/// daemon leaves no mount, loop device, cgroup, process or nftables table behind; the
/// next daemon finds the sprites, cold, with their files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_stop_all_leaves_the_host_clean() {
    let mut daemon = Daemon::start_with(
        "busybox",
        "warm_after = \"never\"\ncold_after = \"never\"\n",
    )
    .await;
    let data = daemon.data_path().to_path_buf();
    for name in ["s1", "s2"] {
        create(&daemon.client, name).await;
    }
    let wrote = run(
        &daemon.client,
        "s1",
        &["sh", "-c", "echo kept > /home/sprite/note && sync"],
    )
    .await;
    assert_eq!(wrote.code, 0);
    daemon.client.sleep("s2", false).await.unwrap();
    let ids = daemon.sprite_ids();
    let out = sprite(&daemon, &["admin", "status", "--json"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (status["running"].as_u64(), status["warm"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(status["storage_up"], true);

    let out = sprite(&daemon, &["admin", "stop", "--all"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}\n{}", daemon.log());
    assert!(stderr.contains("2 sprites put cold"), "{stderr}");
    assert!(
        daemon.wait_exit(Duration::from_secs(10)),
        "the daemon exits"
    );

    let data_text = data.to_string_lossy().to_string();
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| p.starts_with(&data_text))
        .collect();
    assert!(
        mounts.is_empty(),
        "mounts left: {mounts:?}\n{}",
        daemon.log()
    );
    let fuse = data.join("fs/mnt").to_string_lossy().to_string();
    let loops: Vec<(std::path::PathBuf, String)> = sprite_sys::loopdev::list()
        .into_iter()
        .filter(|(_, back)| {
            back.starts_with(&fuse) || ids.iter().any(|id| back.contains(id.as_str()))
        })
        .collect();
    assert!(loops.is_empty(), "loop devices left: {loops:?}");
    let layout =
        sprite_sandbox::cgroup::Layout::detect(std::path::Path::new("/sys/fs/cgroup")).unwrap();
    for id in &ids {
        for cgroup in sprite_cgroups(&layout, id) {
            assert!(!cgroup.exists(), "cgroup of {id} left");
        }
    }
    let storage = Command::new("pgrep")
        .args(["-f", &format!("storage --data-dir {data_text}")])
        .output()
        .unwrap();
    assert!(storage.stdout.is_empty(), "the storage process is left");
    let table = std::fs::read_to_string(data.join("network-table")).unwrap_or_default();
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout).to_string();
    let name = table.split_whitespace().last().unwrap_or("sprites_none");
    assert!(!tables.contains(name), "nft table {name} left: {tables}");

    // The next daemon: both cold, s1's file kept, and it wakes.
    daemon.restart().await;
    for name in ["s1", "s2"] {
        let info = daemon.client.get(name).await.unwrap();
        assert_eq!(
            info.status,
            sprite_api::sprite::SpriteStatus::Cold,
            "{name}"
        );
    }
    let stream = daemon
        .client
        .exec("s1", &params(&["cat", "/home/sprite/note"]))
        .await
        .unwrap_or_else(|e| panic!("waking s1 after the stop: {e}\n{}", daemon.log()));
    let read = collect(stream).await;
    assert_eq!(read.stdout().trim(), "kept");
}

/// `/mcp` sessions are bounded: 64 per organization (then a 429 that says what to do),
/// another organization still gets its own, and ending one makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_sessions_are_bounded_per_organization() {
    let daemon = Daemon::start("busybox").await;
    let http = reqwest::Client::new();
    let open = |token: String| {
        http.post(format!("{}/mcp", daemon.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"bound","version":"1"}}}"#)
            .send()
    };
    let mut ids = Vec::new();
    for n in 0..64 {
        let response = open(TOKEN.to_string()).await.unwrap();
        assert_eq!(response.status(), 200, "session {n}");
        let id = response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
        ids.push(id);
    }
    let refused = open(TOKEN.to_string()).await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = refused.json().await.unwrap();
    let message = body["error"].as_str().unwrap_or_default().to_string()
        + body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("too many MCP sessions open (64 of this organization's 64"),
        "{body}"
    );
    // Another organization is not held back by this one's sessions.
    let created = sprite(
        &daemon,
        &["tokens", "create", "--org", "other", "--json"],
        b"",
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let other: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let other = other["token"].as_str().unwrap().to_string();
    assert_eq!(open(other.clone()).await.unwrap().status(), 200);
    // Opens at once cannot all pass one count: exactly the 63 left get through.
    let statuses = futures_util::future::join_all((0..70).map(|_| open(other.clone()))).await;
    let opened = statuses
        .into_iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 200))
        .count();
    assert_eq!(opened, 63);
    // Ending a session makes room for one more.
    let ended = http
        .delete(format!("{}/mcp", daemon.url))
        .bearer_auth(TOKEN)
        .header("mcp-session-id", &ids[0])
        .send()
        .await
        .unwrap();
    assert!(ended.status().is_success(), "{}", ended.status());
    assert_eq!(open(TOKEN.to_string()).await.unwrap().status(), 200);
}

/// The MCP server through the official MCP Python SDK, over streamable HTTP (`/mcp`)
/// and over stdio (`sprite mcp`): tools listed, a sprite made, a command run (output
/// capped and marked, a timeout), files written and read, a checkpoint made and
/// restored. A request without a token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_over_http_and_stdio() {
    let daemon = Daemon::start("busybox").await;
    let refused = reqwest::Client::new()
        .post(format!("{}/mcp", daemon.url))
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let Ok(python) = std::env::var("SPRITE_SDK_PYTHON") else {
        eprintln!("SPRITE_SDK_PYTHON is not set: skipping the MCP client test (CI runs it)");
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp_client.py");
    let runs = [
        vec![
            "http".to_string(),
            format!("{}/mcp", daemon.url),
            TOKEN.to_string(),
            "over-http".to_string(),
        ],
        vec![
            "stdio".to_string(),
            env!("CARGO_BIN_EXE_sprite").to_string(),
            daemon.url.clone(),
            TOKEN.to_string(),
            "over-stdio".to_string(),
        ],
    ];
    for args in runs {
        let out = Command::new(&python)
            .arg(script)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}\n{}",
            args[0],
            String::from_utf8_lossy(&out.stderr),
            daemon.log()
        );
        let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let check = |key: &str, error: bool, contains: &str| {
            assert_eq!(seen[key]["error"], error, "{key}: {seen}");
            let text = seen[key]["text"].as_str().unwrap();
            assert!(
                text.contains(contains),
                "{key}: {text:?} lacks {contains:?}"
            );
        };
        let tools: Vec<&str> = seen["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        for tool in [
            "list_sprites",
            "create_sprite",
            "destroy_sprite",
            "exec",
            "read_file",
            "write_file",
            "list_files",
            "checkpoint_create",
            "checkpoint_list",
            "checkpoint_restore",
            "fork_sprite",
            "sprite_url",
            "service_create",
            "service_list",
            "service_logs",
        ] {
            assert!(tools.contains(&tool), "{tool} missing: {tools:?}");
        }
        assert!(seen["exec_description"]
            .as_str()
            .unwrap()
            .contains("checkpoint_create first"));
        let sprite = &args[args.len() - 1];
        check("create", false, sprite);
        check("exec", false, "42");
        check("exec_fail", true, "exit code: 3");
        check("exec_fail", true, "oops");
        check("exec_cut", false, "[output cut: 4900 more bytes");
        check("exec_timeout", true, "timed out after 1 s");
        check("write", false, "wrote 6 bytes");
        check("read", false, "first");
        check("list_files", false, "a.txt");
        check("checkpoints", false, "before the change");
        check("read_changed", false, "second");
        check("restore", false, "restored");
        check("read_restored", false, "first");
        check("list", false, sprite);
        check("url", false, "http");
        check("missing", true, "not found");
        check("destroy", false, "destroyed");
    }
}

/// `/openapi.json` from a running daemon, checked by an OpenAPI validator
/// (openapi-spec-validator, in the SDK venv), needing no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid() {
    let daemon = Daemon::start("busybox").await;
    let document = reqwest::get(format!("{}/openapi.json", daemon.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&document).unwrap();
    assert_eq!(value["openapi"], "3.1.0");
    let Ok(python) = std::env::var("SPRITE_SDK_PYTHON") else {
        eprintln!("SPRITE_SDK_PYTHON is not set: the document is not validated (CI does)");
        return;
    };
    let validator = "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(sys.stdin))\nprint('valid')";
    let out = python_with_stdin(&python, validator, &document);
    assert_eq!(String::from_utf8_lossy(&out).trim(), "valid");
}
