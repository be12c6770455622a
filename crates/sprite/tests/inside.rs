//! End to end, as root: code inside a sprite uses `/.sprite/api.sock` (through
//! `sprite-env`) to checkpoint itself, see its services and hold Tasks that keep it awake.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sprite_api::sprite::SpriteStatus;
use sprite_client::Client;
use std::time::{Duration, Instant};

async fn status(client: &Client, name: &str) -> SpriteStatus {
    client.get(name).await.unwrap().status
}

async fn env(client: &Client, name: &str, args: &[&str]) -> Finished {
    let mut argv = vec!["sprite-env"];
    argv.extend_from_slice(args);
    run(client, name, &argv).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sprite_checkpoints_itself_and_holds_tasks_through_its_socket() {
    let mut daemon = Daemon::start_with(
        "debian",
        "storage = \"spritefs\"\nwarm_after = \"1s\"\ncold_after = \"never\"\n",
    )
    .await;
    let client = daemon.client.clone();
    create(&client, "agent").await;

    let out = env(&client, "agent", &["services"]).await;
    assert_eq!((out.code, out.stdout().trim()), (0, "[]"), "{out:?}");

    // A checkpoint from inside.
    let out = env(&client, "agent", &["checkpoint", "from inside"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout().contains("complete"), "{out:?}");
    let checkpoints = client.checkpoints("agent", false).await.unwrap();
    assert_eq!(checkpoints[0].comment.as_deref(), Some("from inside"));

    // It reads its own record (name, URL) but cannot change or destroy itself.
    let out = env(&client, "agent", &["info"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let info: serde_json::Value = serde_json::from_str(&out.stdout()).unwrap();
    assert_eq!(info["name"], "agent", "{out:?}");
    assert!(info["url"].as_str().unwrap().contains("agent."), "{out:?}");
    for method in ["DELETE", "PUT"] {
        let out = env(&client, "agent", &["api", method, "/v1/sprite", "{}"]).await;
        assert_eq!(out.code, 1, "{method}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("404"),
            "{out:?}"
        );
    }

    // Only its own services, checkpoints and tasks: nothing else of the API.
    let out = env(&client, "agent", &["api", "GET", "/v1/sprites"]).await;
    assert_eq!(out.code, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{out:?}"
    );

    // A task keeps it awake; ending it lets it sleep.
    let out = env(&client, "agent", &["task", "add", "job", "1m"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = env(&client, "agent", &["task", "add", "job", "1m"]).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("409"),
        "{out:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let info = client.get("agent").await.unwrap();
    assert_eq!(info.status, SpriteStatus::Running);
    let reasons: Vec<String> = info
        .lifecycle
        .unwrap()
        .awake_because
        .into_iter()
        .map(|r| r.reason)
        .collect();
    assert_eq!(reasons, ["task"]);

    // Tasks survive a daemon restart.
    daemon.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status(&client, "agent").await, SpriteStatus::Running);
    let out = env(&client, "agent", &["tasks"]).await;
    assert!(out.stdout().contains("\"job\""), "{out:?}");
    let out = env(&client, "agent", &["task", "done", "job"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    wait_status(&client, "agent", SpriteStatus::Warm, Duration::from_secs(5)).await;

    // A task that expires lets it sleep too.
    let out = env(&client, "agent", &["task", "add", "short", "2s"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let start = Instant::now();
    wait_status(&client, "agent", SpriteStatus::Warm, Duration::from_secs(8)).await;
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "slept before the task expired"
    );

    // `awake` holds a task while its command runs.
    let out = env(
        &client,
        "agent",
        &["awake", "1m", "--", "sh", "-c", "sleep 3; echo done"],
    )
    .await;
    assert_eq!((out.code, out.stdout().trim()), (0, "done"), "{out:?}");
}
