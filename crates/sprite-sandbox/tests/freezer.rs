//! The cgroup freezer on this host's real hierarchy (needs root, like CI).

use sprite_sandbox::cgroup::{Layout, SpriteCgroup};
use sprite_sandbox::spec::Limits;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

/// Kills what the test started and removes its cgroup, also when it fails.
struct Cleanup(SpriteCgroup, Child);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.0.thaw();
        let _ = self.0.kill_all(Duration::from_secs(5));
        let _ = self.1.wait();
        let _ = self.0.remove();
    }
}

fn counter(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_frozen_cgroup_stops_and_resumes_where_it_was() {
    let layout = Layout::detect(Path::new("/sys/fs/cgroup")).expect("cgroup hierarchy");
    let cgroup = SpriteCgroup::new(
        layout,
        &format!("sprite-test-freezer-{}", std::process::id()),
    );
    cgroup.create(&Limits::default()).expect("create cgroup");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("count");
    // Counts in a file; writes to a temp file then renames, so a read never sees half.
    let child = Command::new("sh")
        .arg("-c")
        .arg("i=0; while :; do i=$((i+1)); echo $i > \"$1.new\"; mv \"$1.new\" \"$1\"; sleep 0.01; done")
        .arg("sh")
        .arg(&file)
        .spawn()
        .expect("spawn counter");
    let cleanup = Cleanup(cgroup, child);
    cleanup.0.add_process(cleanup.1.id()).expect("join cgroup");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!cleanup.0.is_frozen());

    cleanup.0.freeze(Duration::from_secs(5)).expect("freeze");
    assert!(cleanup.0.is_frozen());
    let frozen_at = counter(&file);
    assert!(frozen_at > 0, "the counter never ran");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter(&file), frozen_at, "a frozen process kept counting");

    cleanup.0.thaw().expect("thaw");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!cleanup.0.is_frozen());
    let resumed = counter(&file);
    assert!(resumed > frozen_at, "the counter did not resume");
    assert!(
        resumed < frozen_at + 100,
        "the counter restarted instead of resuming: {frozen_at} then {resumed}"
    );
}
