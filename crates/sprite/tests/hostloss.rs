//! Durable means durable: a host lost at a random instant, against a real S3 server.
//!
//! Two sprites on one host, one per durability mode, each running a writer that appends
//! 4 KiB records with an fsync after each (printing each sequence number once its fsync
//! returned) and rewrites random blocks of another file. At a random instant the storage
//! process, the daemon and every sprite process are SIGKILLed, the local data directory
//! is discarded, and a fresh daemon starts on the same object store. Then: `store` lost
//! no acknowledged record, `local` none acknowledged more than a second before the kill,
//! and the disk of each is a clean ext4 (e2fsck) after the journal replay of its mount.
//! `SPRITE_HOSTLOSS_ROUNDS` rounds (default 20).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sprite_api::sprite::{Durability, SpriteConfig};
use sprite_client::ExecEvent;
use std::time::{Duration, Instant};

/// The writer: checks the log it finds (complete records 1..n, in order), cuts it to
/// them, prints `start n`, then appends records n+1, n+2... printing each number after
/// its fsync returned, and rewrites random 4 KiB blocks of a 16 MiB file beside.
const WRITER: &str = r#"
import os, random, sys, time
def record(n):
    return (b"%010d" % n * 410)[:4095] + b"\n"
fd = os.open("/home/sprite/log", os.O_RDWR | os.O_CREAT, 0o644)
size = os.fstat(fd).st_size
data = os.pread(fd, size, 0)
n = 0
while (n + 1) * 4096 <= size and data[n * 4096:(n + 1) * 4096] == record(n + 1):
    n += 1
print("start", n, size, flush=True)
os.ftruncate(fd, n * 4096)
os.fsync(fd)
blob = os.open("/home/sprite/blob", os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(blob, 16 << 20)
while True:
    n += 1
    os.pwrite(fd, record(n), (n - 1) * 4096)
    os.fsync(fd)
    print(n, flush=True)
    for _ in range(4):
        os.pwrite(blob, os.urandom(4096), random.randrange(0, 16 << 20, 4096))
    if n % 8 == 0:
        os.fsync(blob)
    time.sleep(0.02)
"#;

/// One sprite under test: its mode and what its writer acknowledged, with when.
struct Subject {
    name: &'static str,
    durability: Durability,
    /// Acknowledged sequence numbers and when the test saw each.
    acked: Vec<(u64, Instant)>,
}

impl Subject {
    /// The records the next start must find: every acknowledged one for `store`; for
    /// `local`, every one acknowledged more than a second before the kill.
    fn required(&self, killed: Instant) -> u64 {
        let before = match self.durability {
            Durability::Store => killed,
            Durability::Local => killed - Duration::from_secs(1),
        };
        self.acked
            .iter()
            .filter(|(_, at)| *at <= before)
            .map(|(n, _)| *n)
            .max()
            .unwrap_or(0)
    }
}

/// A started writer: the records it found, its `start` line, its stream, and what
/// came after the line in the same frame.
struct Writer {
    found: u64,
    line: String,
    stream: sprite_client::ExecStream,
    rest: String,
}

/// Starts the writer in `sprite`.
async fn start_writer(daemon: &Daemon, sprite: &str) -> Writer {
    let mut stream = daemon
        .client
        .exec(sprite, &params(&["python3", "-c", WRITER]))
        .await
        .unwrap_or_else(|e| panic!("exec in {sprite}: {e}\n{}", daemon.log()));
    let mut seen = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("the writer did not start within a minute")
            .expect("exec stream")
        {
            ExecEvent::Stdout(data) => {
                seen.push_str(&String::from_utf8_lossy(&data));
                if let Some(start) = seen.find("start ") {
                    if let Some(end) = seen[start..].find('\n') {
                        let line = seen[start..start + end].to_string();
                        let found = line.split_whitespace().nth(1).unwrap().parse().unwrap();
                        let rest = seen[start + end + 1..].to_string();
                        return Writer {
                            found,
                            line,
                            stream,
                            rest,
                        };
                    }
                }
            }
            ExecEvent::Stderr(data) => seen.push_str(&String::from_utf8_lossy(&data)),
            ExecEvent::Exit(code) => panic!("the writer exited {code}: {seen}"),
            _ => {}
        }
    }
}

/// Records each writer must have acknowledged in a round.
const MIN_ACKS: usize = 10;

/// Reads a writer's acknowledgements until `until`, and past it (by at most 10 s)
/// until there are more than [`MIN_ACKS`]: a slow round on a loaded machine still
/// tests something, and the host is still lost at an instant nobody chose.
async fn collect_acks(writer: &mut Writer, acked: &mut Vec<(u64, Instant)>, until: Instant) {
    let mut partial = std::mem::take(&mut writer.rest);
    let stream = &mut writer.stream;
    let latest = until + Duration::from_secs(10);
    let deadline = |acked: &Vec<(u64, Instant)>| {
        if acked.len() > MIN_ACKS {
            until
        } else {
            latest
        }
    };
    while let Ok(event) = tokio::time::timeout_at(deadline(acked).into(), stream.next()).await {
        match event {
            Ok(ExecEvent::Stdout(data)) => {
                partial.push_str(&String::from_utf8_lossy(&data));
                let now = Instant::now();
                while let Some(end) = partial.find('\n') {
                    if let Ok(n) = partial[..end].trim().parse::<u64>() {
                        acked.push((n, now));
                    }
                    partial.drain(..=end);
                }
            }
            Ok(ExecEvent::Exit(code)) => panic!("the writer exited {code}"),
            Ok(_) => {}
            Err(error) => panic!("writer stream: {error}"),
        }
    }
}

/// Stops a recovered sprite and checks its disk offline (after the journal replay its
/// mount did): e2fsck must find nothing to fix.
fn check_disk(daemon: &Daemon, sprite_id: &str) -> Result<(), String> {
    let layout =
        sprite_sandbox::cgroup::Layout::detect(std::path::Path::new("/sys/fs/cgroup")).unwrap();
    sprite_sandbox::cgroup::SpriteCgroup::new(layout, sprite_id)
        .kill_all(Duration::from_secs(10))
        .map_err(|e| format!("kill: {e}"))?;
    let mount = daemon
        .data_path()
        .join("layers")
        .join(sprite_id)
        .join("mnt");
    let unmounted = std::process::Command::new("umount")
        .arg(&mount)
        .status()
        .map_err(|e| format!("umount: {e}"))?;
    if !unmounted.success() {
        return Err(format!("umount {} failed", mount.display()));
    }
    let device = daemon.data_path().join("fs/mnt").join(sprite_id);
    let fsck = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(&device)
        .output()
        .map_err(|e| format!("e2fsck: {e}"))?;
    if !fsck.status.success() {
        return Err(format!(
            "e2fsck:\n{}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_fsyncs_survive_losing_the_host() {
    let rounds: usize = std::env::var("SPRITE_HOSTLOSS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let config = format!("storage = \"spritefs\"\nwarm_after = \"never\"\n{S3_STORE}");
    let mut daemon = Daemon::start_with("debian", &config).await;
    let mut subjects = [
        Subject {
            name: "durable-store",
            durability: Durability::Store,
            acked: Vec::new(),
        },
        Subject {
            name: "durable-local",
            durability: Durability::Local,
            acked: Vec::new(),
        },
    ];
    for subject in &subjects {
        let request = sprite_api::sprite::CreateSpriteRequest {
            config: Some(SpriteConfig {
                durability: Some(subject.durability),
                ..Default::default()
            }),
            ..sprite_request(subject.name)
        };
        daemon.client.create(&request).await.unwrap();
        let info = daemon.client.get(subject.name).await.unwrap();
        assert_eq!(info.config.durability, Some(subject.durability));
    }
    let mut required = [0u64; 2];
    let mut lost_local_ms: Vec<f64> = Vec::new();
    // Rounds whose fresh host found `store` fsyncs in the write log (not yet in blocks).
    let mut replayed = 0;
    for round in 0..=rounds {
        // Each writer finds at least what its mode promised of the last round.
        let mut streams = Vec::new();
        for (index, subject) in subjects.iter().enumerate() {
            let writer = start_writer(&daemon, subject.name).await;
            let (found, line) = (writer.found, writer.line.clone());
            assert!(
                found >= required[index],
                "round {round}: {} ({}) found {found} records ({line}), {} were promised \
                 (acknowledged: {:?})\n{}",
                subject.name,
                subject.durability.as_str(),
                required[index],
                subject.acked.last().map(|(n, _)| n),
                daemon.log()
            );
            if subject.durability == Durability::Local {
                // How much of what was acknowledged the loss took, in time.
                let newest = subject.acked.iter().rev().find(|(n, _)| *n <= found);
                if let (Some((_, kept_at)), Some((_, last_at))) = (newest, subject.acked.last()) {
                    lost_local_ms.push(last_at.duration_since(*kept_at).as_secs_f64() * 1000.0);
                }
            }
            streams.push(writer);
        }
        if round == rounds {
            break;
        }
        for subject in subjects.iter_mut() {
            subject.acked.clear();
        }
        // A random instant: 1 to 3.5 s of writing.
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()) % 2500);
        let run_for = Duration::from_millis(1000 + jitter);
        let started = Instant::now();
        let until = started + run_for;
        let (first, second) = subjects.split_at_mut(1);
        let (stream_a, stream_b) = streams.split_at_mut(1);
        tokio::join!(
            collect_acks(&mut stream_a[0], &mut first[0].acked, until),
            collect_acks(&mut stream_b[0], &mut second[0].acked, until),
        );
        let killed = Instant::now();
        daemon.lose_host_abruptly().await;
        drop(streams);
        for (index, subject) in subjects.iter().enumerate() {
            required[index] = subject.required(killed);
            assert!(
                subject.acked.len() > MIN_ACKS,
                "round {round}: {} acknowledged only {} records in {:?}",
                subject.name,
                subject.acked.len(),
                killed - started
            );
        }
        let storage_log =
            std::fs::read_to_string(daemon.data_path().join("storage.log")).unwrap_or_default();
        if storage_log.contains("write log replayed") {
            replayed += 1;
        }
        // The fresh host started both sprites from the store: their disks mount (the
        // journal replayed) and check clean.
        for subject in &subjects {
            let id = daemon
                .client
                .get(subject.name)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {} not recovered: {e}", subject.name))
                .id;
            let ready = run(&daemon.client, subject.name, &["true"]).await;
            assert_eq!(ready.code, 0, "round {round}: {ready:?}");
            if let Err(problem) = check_disk(&daemon, &id) {
                panic!(
                    "round {round}: {}: {problem}\n{}",
                    subject.name,
                    daemon.log()
                );
            }
        }
        // Their processes were killed for the check: start them again the way a lost
        // host would (nothing of this host's state is kept).
        daemon.lose_host().await;
    }
    lost_local_ms.sort_by(f64::total_cmp);
    eprintln!("local mode, acknowledged writes lost per host loss (ms, sorted): {lost_local_ms:?}");
    eprintln!("rounds that replayed the write log: {replayed} of {rounds}");
    assert!(
        rounds == 0 || replayed > 0,
        "no round found a store-mode fsync in the write log: the test did not reach it"
    );
    for subject in &subjects {
        daemon.client.destroy(subject.name).await.unwrap();
    }
}
