//! End to end, as root: the file-system API (`/v1/sprites/{name}/fs/...`) on a
//! SpriteFS sprite: every route, errors with `code` and `path`, ownership as seen
//! inside, Range reads, a traversal suite that must stay inside the sprite's root, and
//! `fs/watch`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::StreamExt;
use sprite_api::fs::{FsAffected, FsCopied, FsList, FsRenamed};
use std::time::Duration;

const CONFIG: &str = "storage = \"spritefs\"\nwarm_after = \"never\"\ncold_after = \"never\"\n";

async fn read(daemon: &Daemon, sprite: &str, path: &str) -> Result<Vec<u8>, (u16, String)> {
    match daemon.client.fs_read(sprite, path, None).await {
        Ok(response) => Ok(response.bytes().await.unwrap().to_vec()),
        Err(error) => Err((error.status().unwrap_or(0), error.to_string())),
    }
}

async fn write(
    daemon: &Daemon,
    sprite: &str,
    path: &str,
    data: &[u8],
) -> Result<(), (u16, String)> {
    daemon
        .client
        .fs_write(
            sprite,
            path,
            None,
            true,
            std::io::Cursor::new(data.to_vec()),
        )
        .await
        .map(|_| ())
        .map_err(|e| (e.status().unwrap_or(0), e.to_string()))
}

fn err_of<T: std::fmt::Debug>(result: Result<T, sprite_client::ClientError>) -> (u16, String) {
    match result {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(error) => (error.status().unwrap_or(0), error.to_string()),
    }
}

async fn sh(daemon: &Daemon, sprite: &str, script: &str) -> String {
    let done = run(&daemon.client, sprite, &["sh", "-c", script]).await;
    assert_eq!(
        done.code,
        0,
        "{script}: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    done.stdout()
}

/// An error answer's status, JSON body.
async fn raw_error(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_works_and_errors_say_code_and_path() {
    let daemon = Daemon::start_with("busybox", CONFIG).await;
    let client = &daemon.client;
    create(client, "files").await;

    // write: parents made, mode kept, owner like the parent directory (sprite in /home/sprite).
    let written = client
        .fs_write(
            "files",
            "/home/sprite/a/b/hello.txt",
            Some(0o640),
            true,
            std::io::Cursor::new(b"hello world".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(
        (written.path.as_str(), written.size, written.mode.as_str()),
        ("/home/sprite/a/b/hello.txt", 11, "0640")
    );
    assert_eq!(
        sh(
            &daemon,
            "files",
            "stat -c '%a %u:%g' /home/sprite/a/b/hello.txt /home/sprite/a"
        )
        .await,
        "640 1000:1000\n755 1000:1000\n"
    );
    write(&daemon, "files", "/etc/owned-by-root", b"x")
        .await
        .unwrap();
    assert_eq!(
        sh(&daemon, "files", "stat -c '%a %u' /etc/owned-by-root").await,
        "644 0\n"
    );
    // Without mkdirParents, a missing parent is ENOENT with the path.
    let error = client
        .fs_write(
            "files",
            "/nope/x",
            None,
            false,
            std::io::Cursor::new(Vec::new()),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(404), "{error}");
    // The SDKs' mkdir: a write of DIR/.keep. Without the flag, parents are made (Go's
    // Mkdir sends none); with mkdirParents=false, DIR alone is made when its parent is
    // there (sprites-py's mkdir(parents=False)), and a missing grandparent is ENOENT.
    let put = |query: &'static str| {
        reqwest::Client::new()
            .put(format!("{}/v1/sprites/files/fs/write?{query}", daemon.url))
            .bearer_auth(TOKEN)
            .body("")
            .send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(put("path=/tmp/go/made/.keep").await.unwrap()), 200);
    assert_eq!(
        status(put("path=/tmp/py/.keep&mkdirParents=false").await.unwrap()),
        200
    );
    assert_eq!(
        status(
            put("path=/tmp/py2/deep/.keep&mkdirParents=false")
                .await
                .unwrap()
        ),
        404
    );
    assert_eq!(
        status(put("path=/tmp/py3/other&mkdirParents=false").await.unwrap()),
        404,
        "only the mkdir marker makes its directory"
    );
    assert_eq!(
        sh(
            &daemon,
            "files",
            "find /tmp/go /tmp/py | sort; test -e /tmp/py2 || echo no py2; test -e /tmp/py3 || echo no py3"
        )
        .await,
        "/tmp/go\n/tmp/go/made\n/tmp/go/made/.keep\n/tmp/py\n/tmp/py/.keep\nno py2\nno py3\n"
    );

    // read, whole and ranged.
    assert_eq!(
        read(&daemon, "files", "/home/sprite/a/b/hello.txt")
            .await
            .unwrap(),
        b"hello world"
    );
    let http = reqwest::Client::new();
    let url = |route: &str| format!("{}/v1/sprites/files/fs/{route}", daemon.url);
    let ranged = http
        .get(url("read"))
        .query(&[("path", "hello.txt"), ("workingDir", "/home/sprite/a/b")])
        .header("range", "bytes=6-")
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.headers()["content-range"], "bytes 6-10/11");
    assert_eq!(ranged.bytes().await.unwrap().as_ref(), b"world");
    let suffix = client
        .fs_read("files", "/home/sprite/a/b/hello.txt", Some((0, Some(4))))
        .await
        .unwrap();
    assert_eq!(suffix.bytes().await.unwrap().as_ref(), b"hello");
    let outside = http
        .get(url("read"))
        .query(&[("path", "/home/sprite/a/b/hello.txt")])
        .header("range", "bytes=50-60")
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), 416);
    assert_eq!(outside.headers()["content-range"], "bytes */11");
    let (status, body) = raw_error(
        http.get(url("read"))
            .query(&[("path", "/home/sprite/missing")])
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str(), body["path"].as_str()),
        (404, Some("ENOENT"), Some("/home/sprite/missing"))
    );
    let (status, body) = raw_error(
        http.get(url("read"))
            .query(&[("path", "/home/sprite/a")])
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("EISDIR")));

    // list: a directory, a file, recursive, pattern.
    let listed = client
        .fs_list("files", "/home/sprite/a", false)
        .await
        .unwrap();
    assert_eq!(listed.count, 1);
    assert_eq!(
        (listed.entries[0].name.as_str(), listed.entries[0].is_dir),
        ("b", true)
    );
    let file = client
        .fs_list("files", "/home/sprite/a/b/hello.txt", false)
        .await
        .unwrap();
    assert_eq!(
        (
            file.entries[0].size,
            file.entries[0].mode.as_str(),
            file.entries[0].is_dir
        ),
        (11, "0640", false)
    );
    let all = client
        .fs_list("files", "/home/sprite/a", true)
        .await
        .unwrap();
    let paths: Vec<_> = all.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["/home/sprite/a/b", "/home/sprite/a/b/hello.txt"]);
    let matched = daemon
        .get_json("/v1/sprites/files/fs/list?path=/home/sprite/a&recursive=true&pattern=*.txt")
        .await;
    assert_eq!(matched["count"], 1);
    assert_eq!(matched["entries"][0]["type"], "file");
    assert!(matched["entries"][0]["modTime"]
        .as_str()
        .unwrap()
        .ends_with('Z'));

    // A directory's own entry: first and nameless with includeSelf and for sprites-py
    // (whose stat reads entries[0] and whose iterdir skips nameless entries); children
    // only for everyone else (the JS and Go readdir would list the directory in itself).
    let list_as = |query: String, agent: &'static str| {
        http.get(url(&format!("list?{query}")))
            .header("user-agent", agent)
            .bearer_auth(TOKEN)
            .send()
    };
    let names = |listed: &serde_json::Value| -> Vec<Option<String>> {
        listed["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().map(str::to_string))
            .collect()
    };
    for (extra, agent, with_self) in [
        ("", "sprites-py/0.7.2", true),
        ("", "sprites-py/0.7.2 client-signals/1 (agent)", true),
        ("&includeSelf=false", "sprites-py/0.7.2", false),
        ("&recursive=true", "sprites-py/0.7.2", false),
        ("", "node", false),
        ("", "Go-http-client/1.1", false),
        ("&includeSelf=true", "node", true),
    ] {
        let response = list_as(format!("workingDir=/home/sprite&path=a{extra}"), agent)
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{extra} {agent}");
        let listed: serde_json::Value = response.json().await.unwrap();
        let mut want = vec![Some("b".to_string())];
        if extra.contains("recursive") {
            want.push(Some("hello.txt".into()));
        }
        if with_self {
            want.insert(0, None);
            let own = &listed["entries"][0];
            assert_eq!(
                (&own["path"], &own["type"], &own["isDir"]),
                (
                    &serde_json::json!("/home/sprite/a"),
                    &serde_json::json!("directory"),
                    &serde_json::json!(true)
                ),
                "{listed}"
            );
            assert!(own["modTime"].as_str().is_some_and(|t| t.ends_with('Z')));
        }
        assert_eq!(names(&listed), want, "{extra} {agent}: {listed}");
        assert_eq!(listed["count"], want.len(), "{listed}");
    }
    // An empty directory is there (one entry, its own) rather than missing.
    assert_eq!(
        put("path=/home/sprite/empty/x").await.unwrap().status(),
        200
    );
    client
        .fs_delete("files", "/home/sprite/empty/x", false)
        .await
        .unwrap();
    let empty: serde_json::Value = list_as("path=/home/sprite/empty".into(), "sprites-py/0.7.2")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(names(&empty), [None], "{empty}");
    let empty: FsList = serde_json::from_value(empty).unwrap();
    assert!(empty.itself().is_some_and(|own| own.is_dir));
    client
        .fs_delete("files", "/home/sprite/empty", false)
        .await
        .unwrap();

    // copy: a file, then a tree; modes kept.
    let copied: FsCopied = client
        .fs_post("files", "copy", &serde_json::json!({"source": "/home/sprite/a/b/hello.txt", "dest": "/home/sprite/copy.txt"}))
        .await
        .unwrap();
    assert_eq!((copied.count, copied.total_bytes), (1, 11));
    let tree: FsCopied = client
        .fs_post("files", "copy", &serde_json::json!({"source": "a", "dest": "a2", "workingDir": "/home/sprite", "recursive": true}))
        .await
        .unwrap();
    assert_eq!(tree.copied.len(), 1);
    assert_eq!(
        sh(
            &daemon,
            "files",
            "cat /home/sprite/a2/b/hello.txt; stat -c %a /home/sprite/a2/b/hello.txt"
        )
        .await,
        "hello world640\n"
    );
    let error = client
        .fs_post::<FsCopied>(
            "files",
            "copy",
            &serde_json::json!({"source": "/home/sprite/a", "dest": "/home/sprite/a3"}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (error.status(), error.to_string().contains("is a directory")),
        (Some(400), true)
    );

    // rename, within a file system and across mounts (the root overlay to /home).
    let renamed: FsRenamed = client
        .fs_post("files", "rename", &serde_json::json!({"source": "/home/sprite/copy.txt", "dest": "/home/sprite/moved.txt"}))
        .await
        .unwrap();
    assert_eq!(renamed.dest, "/home/sprite/moved.txt");
    write(&daemon, "files", "/opt/tree/f", b"across")
        .await
        .unwrap();
    let _: FsRenamed = client
        .fs_post(
            "files",
            "rename",
            &serde_json::json!({"source": "/opt/tree", "dest": "/home/sprite/tree"}),
        )
        .await
        .unwrap();
    assert_eq!(
        sh(
            &daemon,
            "files",
            "cat /home/sprite/tree/f; test ! -e /opt/tree && echo gone"
        )
        .await,
        "acrossgone\n"
    );

    // Across mounts a directory does not merge into an existing one (as rename(2)).
    write(&daemon, "files", "/opt/again/f", b"again")
        .await
        .unwrap();
    let error = client
        .fs_post::<FsRenamed>(
            "files",
            "rename",
            &serde_json::json!({"source": "/opt/again", "dest": "/home/sprite/tree"}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(409), "{error}");
    // A copy whose destination is inside its source (through a symlink) copies once.
    sh(&daemon, "files", "mkdir -p /home/sprite/src && echo hi > /home/sprite/src/f && ln -s /home/sprite/src /home/sprite/l").await;
    let _: FsCopied = client
        .fs_post("files", "copy", &serde_json::json!({"source": "/home/sprite/src", "dest": "/home/sprite/l/x", "recursive": true}))
        .await
        .unwrap();
    assert_eq!(
        sh(&daemon, "files", "cd /home/sprite/src && find . | sort").await,
        ".\n./f\n./x\n./x/f\n"
    );

    // chmod and chown, recursive; ids as seen inside.
    let changed: FsAffected = client
        .fs_post(
            "files",
            "chmod",
            &serde_json::json!({"path": "/home/sprite/a2", "mode": "0700", "recursive": true}),
        )
        .await
        .unwrap();
    assert_eq!(changed.count, 3);
    assert_eq!(
        sh(&daemon, "files", "stat -c %a /home/sprite/a2/b/hello.txt").await,
        "700\n"
    );
    let owned: FsAffected = client
        .fs_post(
            "files",
            "chown",
            &serde_json::json!({"path": "/etc/owned-by-root", "uid": 1000, "gid": 1000}),
        )
        .await
        .unwrap();
    assert_eq!(
        (owned.affected[0].uid, owned.affected[0].gid),
        (Some(1000), Some(1000))
    );
    assert_eq!(
        sh(&daemon, "files", "stat -c %u:%g /etc/owned-by-root").await,
        "1000:1000\n"
    );
    let error = client
        .fs_post::<FsAffected>(
            "files",
            "chown",
            &serde_json::json!({"path": "/etc/owned-by-root", "uid": 99999999}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400));
    // Names, as the JS SDK allows: looked up in the sprite's own /etc/passwd, /etc/group.
    let owned: FsAffected = client
        .fs_post(
            "files",
            "chown",
            &serde_json::json!({"path": "/etc/owned-by-root", "uid": "root", "gid": "nogroup"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (owned.affected[0].uid, owned.affected[0].gid),
        (Some(0), Some(65534))
    );
    let error = client
        .fs_post::<FsAffected>(
            "files",
            "chown",
            &serde_json::json!({"path": "/etc/owned-by-root", "uid": "nosuchuser"}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400));
    assert!(error.to_string().contains("/etc/passwd"), "{error}");
    let error = client
        .fs_post::<FsAffected>(
            "files",
            "chmod",
            &serde_json::json!({"path": "/etc/owned-by-root", "mode": "0999"}),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not octal"), "{error}");

    // delete: a non-empty directory needs recursive.
    let error = client
        .fs_delete("files", "/home/sprite/a2", false)
        .await
        .unwrap_err();
    assert_eq!(
        (error.status(), error.to_string().contains("not empty")),
        (Some(409), true),
        "{error}"
    );
    let deleted = client
        .fs_delete("files", "/home/sprite/a2", true)
        .await
        .unwrap();
    assert_eq!(deleted.count, 3);
    assert_eq!(deleted.deleted.last().unwrap(), "/home/sprite/a2");
    let error = client.fs_delete("files", "/", true).await.unwrap_err();
    assert_eq!(error.status(), Some(400));
    assert_eq!(
        client
            .fs_delete("files", "/home/sprite/missing", false)
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );

    // A cold sprite wakes for a read.
    client.sleep("files", true).await.unwrap();
    assert_eq!(
        read(&daemon, "files", "/home/sprite/moved.txt")
            .await
            .unwrap(),
        b"hello world"
    );
    assert_eq!(
        client.get("files").await.unwrap().status.as_str(),
        "running"
    );
}

/// At least 30 hostile paths and symlink tricks: none reads or writes anything outside
/// the sprite's root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_gets_out_of_the_sprite() {
    let daemon = Daemon::start_with("busybox", CONFIG).await;
    create(&daemon.client, "jail").await;
    // A secret on the host, at a path that does not exist in the sprite.
    let secret_dir = tempfile::Builder::new()
        .prefix("fs-secret-")
        .tempdir_in("/tmp")
        .unwrap();
    let secret_rel = secret_dir.path().strip_prefix("/").unwrap().join("secret");
    let secret_rel = secret_rel.to_str().unwrap().to_string();
    std::fs::write(secret_dir.path().join("secret"), "HOST SECRET").unwrap();
    let daemon_pid = daemon.pid;
    sh(
        &daemon,
        "jail",
        "cd /home/sprite && mkdir -p d/e && ln -s / abs && ln -s ../../../../../../.. rel && \
         ln -s /proc/1/root p1root && ln -s /proc/self/root selfroot && ln -s loop2 loop1 && \
         ln -s loop1 loop2 && ln -s /proc/1/cwd p1cwd && ln -s d/e/../../../../.. deep && \
         ln -s /home/sprite/abs chain",
    )
    .await;
    let hostile: Vec<String> = vec![
        format!("../../../../../../{secret_rel}"),
        format!("/../../../{secret_rel}"),
        format!("/home/sprite/../../../../{secret_rel}"),
        format!("//..//..//{secret_rel}"),
        format!("/./../{secret_rel}"),
        format!("/home/sprite/abs/{secret_rel}"),
        format!("/home/sprite/abs/../../{secret_rel}"),
        format!("/home/sprite/rel/{secret_rel}"),
        format!("/home/sprite/rel/../../../{secret_rel}"),
        format!("/home/sprite/deep/{secret_rel}"),
        format!("/home/sprite/chain/{secret_rel}"),
        format!("/home/sprite/chain/../{secret_rel}"),
        format!("/home/sprite/p1root/{secret_rel}"),
        format!("/home/sprite/selfroot/{secret_rel}"),
        format!("/home/sprite/p1cwd/{secret_rel}"),
        format!("/proc/1/root/{secret_rel}"),
        format!("/proc/self/root/{secret_rel}"),
        format!("/proc/{daemon_pid}/root/{secret_rel}"),
        format!("/proc/1/cwd/../../{secret_rel}"),
        format!("/proc/1/fd/../../../{secret_rel}"),
        format!("/proc/self/cwd/{secret_rel}"),
        format!("/proc/thread-self/root/{secret_rel}"),
        format!("/home/sprite/loop1/{secret_rel}"),
        format!("/home/sprite/d/e/../../../../../../../{secret_rel}"),
        format!("/.sprite/../../{secret_rel}"),
        format!("/sys/../../{secret_rel}"),
        format!("/dev/../../{secret_rel}"),
        format!("/home/sprite/abs/proc/1/root/{secret_rel}"),
        format!("/home/sprite/abs/home/sprite/abs/{secret_rel}"),
        format!("{secret_rel}"),
        format!("/home/sprite/%2e%2e/%2e%2e/{secret_rel}"),
        format!("/home/sprite/abs/./././../{secret_rel}"),
    ];
    assert!(hostile.len() >= 30);
    for path in &hostile {
        if let Ok(bytes) = read(&daemon, "jail", path).await {
            assert!(
                !String::from_utf8_lossy(&bytes).contains("HOST SECRET"),
                "{path} read the host's file"
            );
        }
        // Listing must not show the host's directory either.
        if let Ok(listed) = daemon
            .client
            .fs_list("jail", path.trim_end_matches("/secret"), false)
            .await
        {
            assert!(
                listed.entries.iter().all(|e| e.name != "secret"),
                "{path} listed the host's directory"
            );
        }
    }
    // Writes through the same paths land inside the sprite, never on the host.
    for (i, path) in hostile.iter().enumerate() {
        let target = path.replace("/secret", &format!("/written-{i}"));
        let _ = write(&daemon, "jail", &target, b"from the api").await;
        let _ = daemon
            .client
            .fs_post::<serde_json::Value>("jail", "copy", &serde_json::json!({"source": "/home/sprite/d", "dest": target.clone(), "recursive": true}))
            .await;
        let _ = daemon
            .client
            .fs_post::<serde_json::Value>(
                "jail",
                "chmod",
                &serde_json::json!({"path": path, "mode": "0777"}),
            )
            .await;
        let _ = daemon.client.fs_delete("jail", path, true).await;
    }
    let host_entries: Vec<_> = std::fs::read_dir(secret_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        host_entries,
        vec![std::ffi::OsString::from("secret")],
        "something was written on the host"
    );
    assert_eq!(
        std::fs::read_to_string(secret_dir.path().join("secret")).unwrap(),
        "HOST SECRET"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_ne!(
        std::fs::metadata(secret_dir.path().join("secret"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o777
    );
    // ... and they did land in the sprite's own /tmp.
    let inside = sh(
        &daemon,
        "jail",
        &format!(
            "ls /{} 2>/dev/null | wc -l",
            secret_rel.trim_end_matches("/secret")
        ),
    )
    .await;
    assert!(
        inside.trim().parse::<u32>().unwrap() > 0,
        "the writes went nowhere"
    );

    // Kernel file systems and the daemon's own mounts are off limits, even for root's API.
    // (Each request is harmless even if it got through: same modes, a tiny range.)
    let sysrq_mode = std::fs::metadata("/proc/sysrq-trigger").map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o7777
    });
    let refused: Vec<(u16, String)> = vec![
        err_of(daemon.client.fs_post::<serde_json::Value>("jail", "chmod", &serde_json::json!({"path": "/proc/sysrq-trigger", "mode": format!("{:04o}", sysrq_mode.as_ref().map_or(0o200, |m| *m))})).await),
        err_of(daemon.client.fs_read("jail", "/proc/kcore", Some((0, Some(15)))).await.map(|_| serde_json::Value::Null)),
        err_of(daemon.client.fs_read("jail", "/proc/version", None).await.map(|_| serde_json::Value::Null)),
        err_of(daemon.client.fs_post::<serde_json::Value>("jail", "copy", &serde_json::json!({"source": "/proc/version", "dest": "/home/sprite/version"})).await),
        err_of(daemon.client.fs_post::<serde_json::Value>("jail", "chmod", &serde_json::json!({"path": "/.sprite/run", "mode": "0755"})).await),
        err_of(daemon.client.fs_post::<serde_json::Value>("jail", "chown", &serde_json::json!({"path": "/dev/null", "uid": 0})).await),
    ];
    for (status, message) in &refused {
        assert!([400, 403, 404].contains(status), "{status} {message}");
    }
    // /proc/version exists in the sprite: refused for what it is, not missing.
    assert_eq!(refused[2].0, 403, "{:?}", refused[2]);
    sh(
        &daemon,
        "jail",
        "ln -s /proc/1/comm /home/sprite/comm && mkfifo /home/sprite/fifo",
    )
    .await;
    let error = write(&daemon, "jail", "/home/sprite/comm", b"x")
        .await
        .unwrap_err();
    assert_eq!(error.0, 403, "{error:?}");
    // A FIFO as a copy's destination is refused at once, not waited on.
    let started = std::time::Instant::now();
    let error = err_of(daemon.client.fs_post::<serde_json::Value>("jail", "copy", &serde_json::json!({"source": "/home/sprite/d", "dest": "/home/sprite/fifo", "recursive": true})).await);
    assert!(
        error.0 >= 400 && started.elapsed() < Duration::from_secs(5),
        "{error:?}"
    );
    let error = err_of(
        daemon
            .client
            .fs_read("jail", "/home/sprite/fifo", None)
            .await
            .map(|_| serde_json::Value::Null),
    );
    assert_eq!(error.0, 400, "{error:?}");
    if let Ok(mode) = sysrq_mode {
        use std::os::unix::fs::PermissionsExt;
        let now = std::fs::metadata("/proc/sysrq-trigger")
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(now, mode);
    }

    // A symlink swapped between a directory and / while paths through it are read.
    let swapper = daemon
        .client
        .exec(
            "jail",
            &params(&[
                "sh",
                "-c",
                "cd /home/sprite; i=0; while [ $i -lt 4000 ]; do ln -sfn / swap; ln -sfn d swap; i=$((i+1)); done",
            ]),
        )
        .await
        .unwrap();
    for _ in 0..200 {
        if let Ok(bytes) = read(
            &daemon,
            "jail",
            &format!("/home/sprite/swap/../../../{secret_rel}"),
        )
        .await
        {
            assert!(!String::from_utf8_lossy(&bytes).contains("HOST SECRET"));
        }
        if let Ok(bytes) = read(&daemon, "jail", &format!("/home/sprite/swap/{secret_rel}")).await {
            assert!(!String::from_utf8_lossy(&bytes).contains("HOST SECRET"));
        }
    }
    let _ = collect(swapper).await;
}

async fn next_events(socket: &mut sprite_client::Tunnel, want: usize) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    while events.len() < want {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap_or_else(|_| panic!("no event after {events:?}"))
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            events.push(serde_json::from_str(&text).unwrap());
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_create_modify_delete_and_rename() {
    let daemon = Daemon::start_with("busybox", CONFIG).await;
    create(&daemon.client, "watched").await;
    sh(&daemon, "watched", "mkdir -p /home/sprite/w").await;
    let mut socket = daemon
        .client
        .fs_watch("watched", &["/home/sprite/w"], true)
        .await
        .unwrap();
    sh(&daemon, "watched", "cd /home/sprite/w && echo one > a").await;
    let events = next_events(&mut socket, 2).await;
    // The shape the JS SDK parses: {type: "event", event, path, isDir, timestamp}.
    assert!(
        events
            .iter()
            .all(|e| e["type"] == "event" && e["timestamp"].is_string()),
        "{events:?}"
    );
    assert_eq!(
        (events[0]["event"].as_str(), events[0]["path"].as_str()),
        (Some("create"), Some("/home/sprite/w/a"))
    );
    assert_eq!(events[1]["event"], "write");
    assert_eq!(events[1]["isDir"], false);
    sh(&daemon, "watched", "cd /home/sprite/w && mv a b").await;
    let events = next_events(&mut socket, 1).await;
    assert_eq!(
        (
            events[0]["event"].as_str(),
            events[0]["path"].as_str(),
            events[0]["oldPath"].as_str()
        ),
        (
            Some("rename"),
            Some("/home/sprite/w/b"),
            Some("/home/sprite/w/a")
        )
    );
    sh(&daemon, "watched", "rm /home/sprite/w/b").await;
    let events = next_events(&mut socket, 1).await;
    assert_eq!(
        (events[0]["event"].as_str(), events[0]["path"].as_str()),
        (Some("remove"), Some("/home/sprite/w/b"))
    );
    sh(
        &daemon,
        "watched",
        "touch /home/sprite/w/c && chmod 600 /home/sprite/w/c",
    )
    .await;
    let events = next_events(&mut socket, 2).await;
    assert_eq!(events[0]["event"], "create");
    assert_eq!(
        (events[1]["event"].as_str(), events[1]["path"].as_str()),
        (Some("chmod"), Some("/home/sprite/w/c"))
    );
    // A directory made later is watched too (recursive).
    sh(&daemon, "watched", "mkdir /home/sprite/w/sub").await;
    let events = next_events(&mut socket, 1).await;
    assert_eq!(
        (events[0]["event"].as_str(), events[0]["isDir"].as_bool()),
        (Some("create"), Some(true))
    );
    sh(&daemon, "watched", "touch /home/sprite/w/sub/deep").await;
    let events = next_events(&mut socket, 1).await;
    assert_eq!(
        (events[0]["event"].as_str(), events[0]["path"].as_str()),
        (Some("create"), Some("/home/sprite/w/sub/deep"))
    );
    // A bad subscription is answered with the code and path.
    let error = daemon
        .client
        .fs_watch("watched", &["/home/sprite/none"], false)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "watch /home/sprite/none: no such file or directory"
    );
}
