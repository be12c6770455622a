//! The `sprite` CLI against a real daemon: exit codes, binary-safe pipes both ways,
//! JSON output, errors with hints, and a console in a pseudo-terminal.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Output, Stdio};

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
