//! What the idle policy's once-a-second look at the database costs with many sprites,
//! and how long it holds the database (a create waits for it): every whole record
//! (`Database::all`, what the tick read before) against only the sleep timers
//! (`Database::sleep_facts`), side by side, interleaved, on a file database in a
//! temporary directory.
//!
//! Run: `cargo bench -p sprite-core --bench tick` (`SPRITES=1000 ROUNDS=200` by default).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{median, setting};

use sprite_core::db::{Database, SpriteAttrs, SpriteRecord};
use std::time::Instant;

fn record(i: usize) -> SpriteRecord {
    let config = sprite_api::sprite::SpriteConfig {
        ram_mb: Some(1024),
        cpus: Some(1),
        storage_gb: Some(100),
        warm_after: i.is_multiple_of(10).then(|| "5m".into()),
        ..Default::default()
    };
    SpriteRecord {
        id: format!("sprite-{i:032x}").into(),
        org: "default".into(),
        name: format!("fill-{i}"),
        image: "debian".into(),
        url_auth: sprite_api::sprite::UrlAuth::Sprite,
        labels: vec!["bench".into(), format!("n{i}")],
        config,
        environment: [("LANG".to_string(), "C.UTF-8".to_string())].into(),
        created_at: "2026-12-04T00:00:00Z".into(),
        updated_at: "2026-12-04T00:00:00Z".into(),
        last_running_at: Some("2026-12-04T00:00:00Z".into()),
        id_base: 1 << 30,
        attrs: SpriteAttrs {
            runtime: Some("sprite".into()),
            private_access: None,
            upgrades: Vec::new(),
        },
        pooled: false,
    }
}

fn main() {
    let sprites = setting("SPRITES", 1000);
    let rounds = setting("ROUNDS", 200).max(1);
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = Database::open(&dir.path().join("sprites.db")).expect("database");
    for i in 0..sprites {
        db.insert(&record(i)).expect("insert");
    }
    let (mut all, mut facts) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = Instant::now();
        assert_eq!(db.all().expect("all").len(), sprites);
        all.push(start.elapsed().as_secs_f64() * 1000.0);
        let start = Instant::now();
        assert_eq!(db.sleep_facts().expect("facts").len(), sprites);
        facts.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let (all, facts) = (median(all), median(facts));
    println!("idle tick's read of the database, {sprites} sprites, median of {rounds} (ms)");
    println!("{:<44} {all:>8.3}", "every whole record (before)");
    println!("{:<44} {facts:>8.3}", "the sleep timers only (sleep_facts)");
    println!("{:<44} {:>7.1}x", "faster", all / facts);
}
