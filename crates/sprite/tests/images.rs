//! End to end, as root: the images sprites start from. The `dev` image (built once per
//! machine into the shared test images, like `debian`) has its tools and agents, and
//! each agent's instruction file teaches it the sprite.
#![allow(clippy::unwrap_used)]

mod common;

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
