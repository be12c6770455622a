//! The object-store stack and the engine against a real S3-compatible server started
//! here (`s3s-fs`, installed by scripts/test.sh; no mocks of S3).
#![allow(clippy::unwrap_used)]

use sprite_fs::cache::ChunkCache;
use sprite_fs::engine::Engine;
use sprite_fs::meta::Meta;
use sprite_fs::store::{conformance, BlobStore, ObjectBlobStore, Retrying, S3Options};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

struct S3Server {
    child: Child,
    endpoint: String,
    _root: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_fs() -> PathBuf {
    if let Ok(path) = std::env::var("SPRITE_S3S_FS") {
        return PathBuf::from(path);
    }
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
        .join(".cargo/bin/s3s-fs");
    if home.exists() {
        return home;
    }
    PathBuf::from("s3s-fs")
}

fn start_server(bucket: &str) -> S3Server {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join(bucket)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(s3s_fs())
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "test-key", "--secret-key", "test-secret"])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start s3s-fs ({e}); install it with `cargo install s3s-fs --version 0.14.1 --features binary`"));
    let server = S3Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        _root: root,
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("s3s-fs did not start");
}

fn options(server: &S3Server) -> S3Options {
    S3Options {
        endpoint: Some(server.endpoint.clone()),
        region: Some("us-east-1".into()),
        access_key_id: Some("test-key".into()),
        secret_access_key: Some("test-secret".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_conforms_and_serves_a_volume() {
    let server = start_server("sprites");
    let store =
        ObjectBlobStore::from_url_with("s3://sprites/some/prefix", &options(&server)).unwrap();
    conformance(&store).await.unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(Retrying::new(store));

    let block = 256 * 1024;
    let data: Vec<u8> = (0..3 * block + 17)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1])
        .collect();
    let first = tempfile::tempdir().unwrap();
    {
        let meta = Arc::new(Meta::open(&first.path().join("meta.db")).unwrap());
        let cache = ChunkCache::open(&first.path().join("cache"), 1 << 30).unwrap();
        let engine = Engine::new(meta, store.clone(), cache, first.path().join("staging")).unwrap();
        engine
            .meta()
            .create_volume("vol", 64 * block as u64, block as u64)
            .unwrap();
        let volume = engine.open_volume("vol").unwrap();
        volume.write(100, &data).await.unwrap();
        engine.checkpoint(&volume, "v0", None).await.unwrap();
    }
    // A second host recovers the volume from S3 alone.
    let second = tempfile::tempdir().unwrap();
    let meta = Arc::new(Meta::open(&second.path().join("meta.db")).unwrap());
    let cache = ChunkCache::open(&second.path().join("cache"), 1 << 30).unwrap();
    let engine = Engine::new(meta, store.clone(), cache, second.path().join("staging")).unwrap();
    assert_eq!(engine.recover().await.unwrap(), ["vol"]);
    let volume = engine.open_volume("vol").unwrap();
    assert!(volume.read(100, data.len()).await.unwrap() == data);
    assert!(store.list("chunks/").await.unwrap().len() >= 3);
}
