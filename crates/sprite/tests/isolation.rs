//! Isolation, as root, in the default Debian image (built once per machine into
//! `/var/tmp/sprites-test-images`, about a minute): what a sprite must not be able to
//! do, even as root through sudo.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

async fn shell(daemon: &Daemon, sprite: &str, script: &str) -> Finished {
    run(&daemon.client, sprite, &["bash", "-c", script]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sprite_cannot_escape() {
    let daemon = Daemon::start_with("debian", "pids_limit = 200\n").await;
    let mut request = sprite_request("jail");
    request.config = Some(sprite_api::sprite::SpriteConfig {
        ram_mb: Some(128),
        ..Default::default()
    });
    daemon.client.create(&request).await.unwrap();

    // The sprite user, with passwordless sudo, in its own hostname.
    let out = shell(&daemon, "jail", "id -un; hostname; sudo id -u; pwd").await;
    assert_eq!(out.stdout(), "sprite\njail\n0\n/home/sprite\n", "{:?}", out);
    assert!(
        out.stderr.is_empty(),
        "sudo complained: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Only its own processes.
    let out = shell(&daemon, "jail", "ps -eo args --no-headers").await;
    assert!(
        !out.stdout().contains("daemon"),
        "host processes visible: {}",
        out.stdout()
    );
    let count = out.stdout().lines().count();
    assert!(count <= 4, "unexpected processes: {}", out.stdout());

    // No mounts, no reboot, no modules, no namespaces, even as root.
    let out = shell(&daemon, "jail", "sudo mount -t tmpfs none /mnt").await;
    assert_ne!(out.code, 0, "mount succeeded");
    let probe = r#"sudo python3 - <<'PY'
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(result):
    return 0 if result == 0 else ctypes.get_errno()
print("reboot", errno_of(libc.reboot(0x01234567)))
print("init_module", errno_of(libc.init_module(None, 0, b"")))
print("unshare", errno_of(libc.unshare(0x10000000)))
print("setns", errno_of(libc.setns(0, 0)))
PY"#;
    let out = shell(&daemon, "jail", probe).await;
    for line in out.stdout().lines() {
        let (call, errno) = line.split_once(' ').unwrap();
        assert_ne!(errno, "0", "{call} succeeded inside the sprite");
    }
    assert_eq!(out.stdout().lines().count(), 4, "{:?}", out);
    // Still alive after a reboot attempt.
    assert_eq!(shell(&daemon, "jail", "true").await.code, 0);

    // Host files and PID 1's view of them are out of reach.
    let secret = format!("/tmp/sprite-host-secret-{}", std::process::id());
    std::fs::write(&secret, "host only").unwrap();
    let out = shell(
        &daemon,
        "jail",
        &format!("cat {secret}; sudo ls /proc/1/root/; sudo cat /proc/1/environ"),
    )
    .await;
    std::fs::remove_file(&secret).unwrap();
    assert!(!out.stdout().contains("host only"));
    assert!(out.stdout().trim().is_empty(), "{}", out.stdout());

    // Host pids cannot be signalled.
    let out = shell(&daemon, "jail", &format!("sudo kill -9 {}", daemon.pid)).await;
    assert_ne!(out.code, 0);
    assert!(daemon.client.health().await.is_ok());

    // A fork bomb stops at the pids limit.
    let bomb = r#"python3 - <<'PY'
import os, time
children = 0
while children < 1000:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children += 1
print(children)
PY"#;
    let out = shell(&daemon, "jail", bomb).await;
    let children: u32 = out
        .stdout()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{out:?}"));
    assert!(
        children < 200,
        "forked {children} processes past a limit of 200"
    );
    assert!(children > 50, "only {children} forks");

    // A memory hog is killed at the memory limit; the sprite and the daemon carry on.
    let out = shell(
        &daemon,
        "jail",
        "python3 -c 'x = b\"x\" * (400 * 1024 * 1024); print(len(x))'",
    )
    .await;
    assert_eq!(out.code, 137, "{out:?}");
    assert_eq!(
        shell(&daemon, "jail", "echo alive").await.stdout(),
        "alive\n"
    );
    assert!(daemon.client.health().await.is_ok());

    daemon.client.destroy("jail").await.unwrap();
}

/// Runs an official SDK's suite (`tests/sdk/<script>`) against a fresh daemon, without
/// and then with control mode; it must print `done` and leave no sprite behind.
async fn run_sdk_suite(what: &str, program: &str, script: &str, env: &[(&str, &str)], done: &str) {
    let daemon = Daemon::start("debian").await;
    let script = format!("{}/../../tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    for control in ["0", "1"] {
        let output = tokio::process::Command::new(program)
            .arg(&script)
            .env("SPRITES_API_URL", &daemon.url)
            .env("SPRITE_TOKEN", TOKEN)
            .env("SPRITES_CONTROL_MODE", control)
            .envs(env.iter().copied())
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{what} test (control mode {control}) failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains(done));
    }
    assert!(
        daemon.sprite_ids().is_empty(),
        "the {what} test left sprites behind"
    );
}

/// The official Python SDK (`sprites-py`) against this daemon. Needs a Python with
/// the SDK installed, named by SPRITE_SDK_PYTHON (scripts/test.sh sets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_works() {
    let Ok(python) = std::env::var("SPRITE_SDK_PYTHON") else {
        eprintln!("SPRITE_SDK_PYTHON is not set: skipping the sprites-py test (CI runs it)");
        return;
    };
    run_sdk_suite("sprites-py", &python, "test_sdk.py", &[], "sdk ok").await;
}

/// The official JS SDK (`@fly/sprites` on Node 24) against this daemon. Needs
/// SPRITE_SDK_NODE and SPRITE_SDK_JS (scripts/test.sh sets them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_js_sdk_works() {
    let (Ok(node), Ok(sdk)) = (
        std::env::var("SPRITE_SDK_NODE"),
        std::env::var("SPRITE_SDK_JS"),
    ) else {
        eprintln!("SPRITE_SDK_NODE or SPRITE_SDK_JS is not set: skipping the @fly/sprites test (CI runs it)");
        return;
    };
    let env = [("SPRITES_JS_SDK", sdk.as_str())];
    run_sdk_suite("@fly/sprites", &node, "test_sdk.mjs", &env, "js sdk ok").await;
}
