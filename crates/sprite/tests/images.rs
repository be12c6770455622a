//! End to end, as root: the images sprites start from. The `dev` image (built once per
//! machine into the shared test images, like `debian`) has its tools and agents, and
//! each agent's instruction file teaches it the sprite.
#![allow(clippy::unwrap_used)]

mod common;

use common::registry::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_image_has_its_tools_and_teaches_the_agents() {
    let daemon = Daemon::start_with("dev", "storage = \"local\"\n").await;
    let client = daemon.client.clone();
    create(&client, "work").await;

    // Every tool answers, as the sprite user, on the default PATH.
    for (tool, expect) in [
        ("node --version", "v26."),
        ("npm --version", "."),
        ("python3 -m pip --version", "pip "),
        ("python3 -m venv --help", "usage: venv"),
        ("uv --version", "uv "),
        ("gcc --version", "gcc"),
        ("make --version", "GNU Make"),
        ("git --version", "git version"),
        ("jq --version", "jq-"),
        ("rg --version", "ripgrep"),
        ("sqlite3 --version", "3."),
        ("tmux -V", "tmux"),
        ("ssh -V 2>&1", "OpenSSH"),
        ("unzip -v", "UnZip"),
        ("claude --version", "Claude Code"),
        ("gemini --version", "."),
        ("codex --version", "codex"),
        ("whoami", "sprite"),
    ] {
        let out = run(&client, "work", &["bash", "-c", tool]).await;
        let said = format!(
            "{tool}: exit {}, stdout {}, stderr {}",
            out.code,
            out.stdout(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.code, 0, "{said}");
        assert!(out.stdout().contains(expect), "{said}");
    }

    // apt works at once: the package lists are in the image.
    let out = run(
        &client,
        "work",
        &["bash", "-c", "apt-cache policy hello | grep -c Candidate"],
    )
    .await;
    assert_eq!(out.stdout().trim(), "1", "{out:?}");

    // Each agent's instruction file names the sprite-env commands.
    for file in [
        "~/AGENTS.md",
        "~/.claude/CLAUDE.md",
        "~/.gemini/GEMINI.md",
        "~/.codex/AGENTS.md",
    ] {
        let out = run(&client, "work", &["bash", "-c", &format!("cat {file}")]).await;
        assert_eq!(out.code, 0, "{file}: {out:?}");
        let text = out.stdout();
        for command in [
            "sprite-env checkpoint",
            "/restore",
            "sprite-env services",
            "/logs",
            "sprite-env task add",
            "sprite-env info",
            "8080",
        ] {
            assert!(text.contains(command), "{file} lacks {command}");
        }
    }
    // And the commands it names work here.
    let out = run(&client, "work", &["bash", "-c", "sprite-env info"]).await;
    assert!(out.stdout().contains("\"url\""), "{out:?}");
    client.destroy("work").await.unwrap();
}

/// Two images in an OCI layout made with umoci: `base` (one layer: a busybox root
/// without a `sprite` user, /etc/motd, /data/{a,b}) and `app` on top of it (a second
/// layer that whites out /etc/motd, makes /data opaque with only /data/c, adds
/// /srv/hello; Env GREETING=hello, WorkingDir /srv, and a web server on 8080 as
/// Entrypoint + Cmd).
fn make_layout(work: &std::path::Path) -> std::path::PathBuf {
    let layout = work.join("layout");
    let image = |tag: &str| format!("{}:{tag}", layout.display());
    sh("umoci", &["init", "--layout", &layout.to_string_lossy()]);
    sh("umoci", &["new", "--image", &image("base")]);
    // The base: busybox from the host, root only.
    let base = work.join("base");
    for dir in [
        "bin", "etc", "root", "tmp", "data", "home", "proc", "sys", "dev",
    ] {
        std::fs::create_dir_all(base.join(dir)).unwrap();
    }
    std::fs::set_permissions(
        base.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    std::fs::copy("/bin/busybox", base.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "ls", "cat", "env", "pwd", "id", "whoami", "test", "echo", "true",
    ] {
        std::os::unix::fs::symlink("busybox", base.join("bin").join(applet)).unwrap();
    }
    std::fs::write(base.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(base.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(base.join("etc/motd"), "base motd\n").unwrap();
    std::fs::write(base.join("data/a"), "a\n").unwrap();
    std::fs::write(base.join("data/b"), "b\n").unwrap();
    let tar = work.join("base.tar");
    layer_tar(&base, &tar);
    add_layer(&layout, "base", None, &tar);
    // The app layer: a whiteout, an opaque directory, a new file.
    let top = work.join("top");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::create_dir_all(top.join("data")).unwrap();
    std::fs::create_dir_all(top.join("srv")).unwrap();
    std::fs::write(top.join("etc/.wh.motd"), "").unwrap();
    std::fs::write(top.join("data/.wh..wh..opq"), "").unwrap();
    std::fs::write(top.join("data/c"), "c\n").unwrap();
    std::fs::write(top.join("srv/hello"), "hello from the app layer\n").unwrap();
    let tar = work.join("top.tar");
    layer_tar(&top, &tar);
    add_layer(&layout, "base", Some("app"), &tar);
    sh(
        "umoci",
        &[
            "config",
            "--image",
            &image("app"),
            "--config.env",
            "GREETING=hello",
            "--config.workingdir",
            "/srv",
            "--config.entrypoint",
            "/bin/busybox",
            "--config.cmd",
            "httpd",
            "--config.cmd",
            "-f",
            "--config.cmd",
            "-p",
            "--config.cmd",
            "8080",
            "--config.exposedports",
            "8080/tcp",
        ],
    );
    layout
}

/// Checks what sprites of the `app` image see: both layers, the whiteout, the opaque
/// directory, the config, and the `sprite` user added.
async fn check_app_sprite(client: &sprite_client::Client, sprite: &str) {
    let out = run(client, sprite, &["sh", "-c", "cat /srv/hello; ls /data; test -e /etc/motd || echo no-motd; echo $GREETING; pwd; whoami; id -u"]).await;
    assert_eq!(
        out.code,
        0,
        "{} {}",
        out.stdout(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout(),
        "hello from the app layer\nc\nno-motd\nhello\n/srv\nsprite\n1000\n",
        "{sprite}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_images_and_archives_keep_layers_config_and_share_the_base() {
    let work = tempfile::tempdir().unwrap();
    let layout = make_layout(work.path());
    let registry = Registry::start(&work.path().join("registry"), None);
    let at = |repo: &str| format!("docker://127.0.0.1:{}/{repo}", registry.port);
    push(&layout, "base", &at("test/base:1"), None);
    push(&layout, "app", &at("test/app:1"), None);

    let daemon = Daemon::start_with("busybox", "storage = \"spritefs\"\n").await;
    let client = daemon.client.clone();

    // The base first; then the app, whose first layer is the base's: not fetched again.
    let pull = |reference: String, name: Option<&str>| {
        let client = client.clone();
        let name = name.map(str::to_string);
        async move {
            let mut events = Vec::new();
            let request = sprite_api::admin::PullRequest {
                reference,
                name,
                ..Default::default()
            };
            let result = client
                .pull_image(&request, |event| events.push(event.clone()))
                .await;
            (result, events)
        }
    };
    let reference = |repo: &str| format!("127.0.0.1:{}/{repo}", registry.port);
    let (name, events) = pull(reference("test/base:1"), None).await;
    assert_eq!(name.unwrap(), "base-1");
    assert!(
        events.iter().any(
            |e| matches!(e, sprite_api::admin::PullEvent::Layer { state, .. } if state == "ready")
        ),
        "{events:?}"
    );
    let (name, events) = pull(reference("test/app:1"), Some("app")).await;
    assert_eq!(name.unwrap(), "app");
    let states: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            sprite_api::admin::PullEvent::Layer { index, state, .. } if state != "downloading" => {
                Some(format!("{index}:{state}"))
            }
            _ => None,
        })
        .collect();
    assert_eq!(states, ["0:stored", "1:unpacking", "1:ready"], "{events:?}");

    // Sprites of each: the base sees its own files; the app its layers merged.
    let mut request = sprite_request("from-base");
    request.image = Some("base-1".into());
    client.create(&request).await.unwrap();
    let out = run(
        &client,
        "from-base",
        &["sh", "-c", "cat /etc/motd; ls /data; whoami"],
    )
    .await;
    assert_eq!(out.stdout(), "base motd\na\nb\nsprite\n", "{out:?}");
    let mut request = sprite_request("from-app");
    request.image = Some("app".into());
    client.create(&request).await.unwrap();
    check_app_sprite(&client, "from-app").await;
    // Its own writes stay its own, over the read-only layers.
    let out = run(
        &client,
        "from-app",
        &[
            "sh",
            "-c",
            "echo mine > /tmp/d && cat /tmp/d; echo no > /data/e || echo refused",
        ],
    )
    .await;
    assert_eq!(out.stdout(), "mine\nrefused\n", "{out:?}");

    // --run-cmd: the image's Entrypoint + Cmd as service app, the URL on its port.
    let mut request = sprite_request("served");
    request.image = Some("app".into());
    request.run_cmd = Some(true);
    client.create(&request).await.unwrap();
    let mut page = None;
    for _ in 0..100 {
        let answer = reqwest::Client::new()
            .get(format!("{}/hello", daemon.proxy_url))
            .header("host", "served.localhost")
            .bearer_auth(TOKEN)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        if answer.status() == 200 {
            page = Some(answer.text().await.unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(page.as_deref(), Some("hello from the app layer\n"));
    let services = client.services("served").await.unwrap();
    assert_eq!(services[0].name, "app", "{services:?}");
    // It runs with the image's environment, as the image's user.
    let pid = services[0].state.pid.expect("the service runs");
    let script = format!(
        "busybox tr '\\0' '\\n' < /proc/{pid}/environ | busybox grep GREETING; busybox stat -c %U /proc/{pid}"
    );
    let out = run(&client, "served", &["sh", "-c", &script]).await;
    assert_eq!(out.stdout(), "GREETING=hello\nsprite\n", "{out:?}");
    // An image without a command is refused, and nothing is left of the sprite.
    let mut request = sprite_request("nothing-to-run");
    request.image = Some("base-1".into());
    request.run_cmd = Some(true);
    let error = client.create(&request).await.unwrap_err();
    assert!(
        error.to_string().contains("no Entrypoint or Cmd"),
        "{error}"
    );
    assert!(client.get("nothing-to-run").await.is_err());
    client.destroy("served").await.unwrap();

    // The shared layer is one volume in the store: two layer volumes for two images
    // with three layers between them (plus each image's own small setup layer).
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let data = daemon.data_path().join("image-volumes");
    let layer_mounts = mounts
        .lines()
        .filter(|l| l.contains(&format!("{}/layer-", data.display())))
        .count();
    assert_eq!(layer_mounts, 2, "{mounts}");

    // A pull of something that is not there says so.
    let (result, _) = pull(reference("test/nothing:1"), None).await;
    let error = result.unwrap_err().to_string();
    assert!(error.contains("test/nothing"), "{error}");
    // A name that is taken is refused; --replace pulls again.
    let (result, _) = pull(reference("test/app:1"), Some("app")).await;
    assert!(result.unwrap_err().to_string().contains("already exists"));

    // docker-archive and OCI-layout tarballs, made by skopeo from the same image.
    let docker_archive = work.path().join("app-docker.tar");
    let oci_archive = work.path().join("app-oci.tar");
    sh(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &format!("oci:{}:app", layout.display()),
            &format!("docker-archive:{}:test/app:1", docker_archive.display()),
        ],
    );
    sh(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &format!("oci:{}:app", layout.display()),
            &format!("oci-archive:{}:app", oci_archive.display()),
        ],
    );
    for (name, file) in [("app-docker", &docker_archive), ("app-oci", &oci_archive)] {
        let opened = tokio::fs::File::open(file).await.unwrap();
        client.import_image(name, opened).await.unwrap();
        let sprite = format!("s-{name}");
        let mut request = sprite_request(&sprite);
        request.image = Some(name.into());
        client.create(&request).await.unwrap();
        check_app_sprite(&client, &sprite).await;
        client.destroy(&sprite).await.unwrap();
    }

    for sprite in ["from-base", "from-app"] {
        client.destroy(sprite).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_with_basic_auth_wants_the_credentials() {
    let work = tempfile::tempdir().unwrap();
    let layout = make_layout(work.path());
    let htpasswd = work.path().join("htpasswd");
    sh(
        "htpasswd",
        &["-Bbc", &htpasswd.to_string_lossy(), "puller", "s3cret"],
    );
    let registry = Registry::start(&work.path().join("registry"), Some(&htpasswd));
    push(
        &layout,
        "base",
        &format!("docker://127.0.0.1:{}/private/base:1", registry.port),
        Some("puller:s3cret"),
    );
    let daemon = Daemon::start_with("busybox", "storage = \"spritefs\"\n").await;
    let client = daemon.client.clone();
    let mut request = sprite_api::admin::PullRequest {
        reference: format!("127.0.0.1:{}/private/base:1", registry.port),
        ..Default::default()
    };
    let error = client.pull_image(&request, |_| {}).await.unwrap_err();
    assert!(
        error.to_string().to_lowercase().contains("authorized"),
        "{error}"
    );
    request.username = Some("puller".into());
    request.password = Some("wrong".into());
    assert!(client.pull_image(&request, |_| {}).await.is_err());
    request.password = Some("s3cret".into());
    assert_eq!(client.pull_image(&request, |_| {}).await.unwrap(), "base-1");
    let mut create = sprite_request("private");
    create.image = Some("base-1".into());
    client.create(&create).await.unwrap();
    let out = run(&client, "private", &["cat", "/etc/motd"]).await;
    assert_eq!(out.stdout(), "base motd\n");
    client.destroy("private").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_keeps_home_and_a_restore_undoes_it() {
    let work = tempfile::tempdir().unwrap();
    let layout = make_layout(work.path());
    let registry = Registry::start(&work.path().join("registry"), None);
    let tag = format!("docker://127.0.0.1:{}/test/app:1", registry.port);
    push(&layout, "app", &tag, None);
    let daemon = Daemon::start_with("busybox", "storage = \"spritefs\"\n").await;
    let client = daemon.client.clone();
    let reference = format!("127.0.0.1:{}/test/app:1", registry.port);
    let request = sprite_api::admin::PullRequest {
        reference: reference.clone(),
        name: Some("app".into()),
        ..Default::default()
    };
    client.pull_image(&request, |_| {}).await.unwrap();
    // Nothing new in the registry: no new version.
    assert_eq!(
        client
            .update_image("app", &Default::default(), |_| {})
            .await
            .unwrap(),
        "app"
    );

    let mut create = sprite_request("up");
    create.image = Some("app".into());
    client.create(&create).await.unwrap();
    let out = run(
        &client,
        "up",
        &["sh", "-c", "echo kept > ~/keep && echo own > /tmp/own"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");

    // A new release under the same tag: /srv/hello changes.
    let next = work.path().join("next");
    std::fs::create_dir_all(next.join("srv")).unwrap();
    std::fs::write(next.join("srv/hello"), "hello from release 2\n").unwrap();
    let tar = work.path().join("next.tar");
    layer_tar(&next, &tar);
    add_layer(&layout, "app", Some("app2"), &tar);
    push(&layout, "app2", &tag, None);
    let newest = client
        .update_image("app", &Default::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(newest, "app@2");
    // Sprites made from now on start on it; the old one stays where it was.
    let mut fresh = sprite_request("fresh");
    fresh.image = Some("app".into());
    let info = client.create(&fresh).await.unwrap();
    assert_eq!(info.image.as_deref(), Some("app@2"));
    let out = run(&client, "fresh", &["cat", "/srv/hello"]).await;
    assert_eq!(out.stdout(), "hello from release 2\n");
    assert_eq!(
        client.get("up").await.unwrap().image.as_deref(),
        Some("app")
    );
    let out = run(&client, "up", &["cat", "/srv/hello"]).await;
    assert_eq!(out.stdout(), "hello from the app layer\n");

    // The upgrade: the new image under the sprite's own files and /home.
    let report = client.upgrade("up").await.unwrap();
    assert!(report.upgraded, "{report:?}");
    assert_eq!((report.from.as_str(), report.to.as_str()), ("app", "app@2"));
    let checkpoint = report.checkpoint.unwrap();
    let out = run(
        &client,
        "up",
        &["sh", "-c", "cat /srv/hello ~/keep /tmp/own"],
    )
    .await;
    assert_eq!(out.stdout(), "hello from release 2\nkept\nown\n", "{out:?}");
    assert_eq!(
        client.get("up").await.unwrap().image.as_deref(),
        Some("app@2")
    );
    // Upgrading again changes nothing.
    assert!(!client.upgrade("up").await.unwrap().upgraded);

    // Restoring the checkpoint taken first undoes it.
    client.restore("up", &checkpoint).await.unwrap();
    assert_eq!(
        client.get("up").await.unwrap().image.as_deref(),
        Some("app")
    );
    let out = run(&client, "up", &["sh", "-c", "cat /srv/hello ~/keep"]).await;
    assert_eq!(out.stdout(), "hello from the app layer\nkept\n", "{out:?}");

    // The first version goes once nothing uses it: its own layer is unmounted.
    // (This daemon's mounts only: other tests' daemons run beside it.)
    let ours = format!("{}/image-volumes/setup-app", daemon.data_path().display());
    let setup_mounts = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&ours))
            .count()
    };
    assert_eq!(setup_mounts(), 2);
    client.destroy("up").await.unwrap();
    assert_eq!(setup_mounts(), 1);
    // And its sprites' creates keep working on the newest.
    let out = run(&client, "fresh", &["cat", "/srv/hello"]).await;
    assert_eq!(out.stdout(), "hello from release 2\n");
    client.destroy("fresh").await.unwrap();

    // A built-in image is built again as its next version (busybox: quick).
    let mut events = Vec::new();
    let newest = client
        .update_image("busybox", &Default::default(), |e| events.push(e.clone()))
        .await
        .unwrap();
    assert_eq!(newest, "busybox@2", "{events:?}");
    let info = match client.create(&sprite_request("plain")).await {
        Ok(info) => info,
        Err(error) => panic!("{error}: {}", daemon.log()),
    };
    assert_eq!(info.image.as_deref(), Some("busybox@2"));
    assert_eq!(run(&client, "plain", &["true"]).await.code, 0);
    client.destroy("plain").await.unwrap();
    // A version that does not exist is refused (naming one never starts a build).
    let mut request = sprite_request("nowhere");
    request.image = Some("busybox@7".into());
    let error = client.create(&request).await.unwrap_err();
    assert!(error.to_string().contains("unknown image"), "{error}");
    // Updating an image that does not exist says which there are.
    let error = client
        .update_image("nope", &Default::default(), |_| {})
        .await
        .unwrap_err();
    assert!(error.to_string().contains("unknown image"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_behind_a_token_service_is_pulled_with_a_token() {
    let work = tempfile::tempdir().unwrap();
    let layout = make_layout(work.path());
    let tokens = TokenService::start(&work.path().join("tokens"), "puller", "s3cret").await;
    let registry = Registry::start_with_auth(&work.path().join("registry"), &tokens.auth_section());
    push(
        &layout,
        "base",
        &format!("docker://127.0.0.1:{}/private/base:1", registry.port),
        Some("puller:s3cret"),
    );
    let daemon = Daemon::start_with("busybox", "storage = \"spritefs\"\n").await;
    let client = daemon.client.clone();
    let mut request = sprite_api::admin::PullRequest {
        reference: format!("127.0.0.1:{}/private/base:1", registry.port),
        ..Default::default()
    };
    // Anonymous: the token service refuses, so the registry does.
    assert!(client.pull_image(&request, |_| {}).await.is_err());
    request.username = Some("puller".into());
    request.password = Some("wrong".into());
    assert!(client.pull_image(&request, |_| {}).await.is_err());
    request.password = Some("s3cret".into());
    assert_eq!(
        client.pull_image(&request, |_| {}).await.unwrap(),
        "base-1",
        "{}",
        daemon.log()
    );
    let mut create = sprite_request("tokened");
    create.image = Some("base-1".into());
    client.create(&create).await.unwrap();
    let out = run(&client, "tokened", &["cat", "/etc/motd"]).await;
    assert_eq!(out.stdout(), "base motd\n");
    client.destroy("tokened").await.unwrap();
}
