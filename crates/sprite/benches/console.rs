//! Web console benchmark, in one run on one daemon (release build, Debian image), in
//! headless Chromium over the DevTools protocol:
//! - page load of `/` (signed in, browser cache off): time to the first byte and to the
//!   load event, from the browser's own Navigation Timing, 30 loads;
//! - terminal keystroke echo: a key sent from the page's terminal until the shell's
//!   echo is drawn by xterm.js (browser → WebSocket → daemon → sprite's PTY → bash →
//!   back), 300 keys; beside the same echo measured by a plain WebSocket client in
//!   this process (no browser), the floor.
//!
//! p50 and p99 of each. Run: `sudo ./bench/console.sh`. Results: stdout and
//! target/bench/console.json.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::browser::{chromium, Browser};
use common::*;
use std::time::{Duration, Instant};

fn main() {
    // A hang fails the bench with everything it made cleaned up (the future, and with
    // it the browser and the daemon, is dropped).
    run_bench(async {
        tokio::time::timeout(Duration::from_secs(600), bench())
            .await
            .expect("the console bench finished within 10 minutes")
    });
}

const LOADS: usize = 30;
const KEYS: usize = 300;

async fn bench() {
    let binary = chromium().expect("chromium is installed (apt-get install chromium)");
    let daemon = Daemon::start("debian").await;
    create(&daemon.client, "bench").await;
    let mut browser = Browser::launch(&binary).await;
    eprintln!("browser up");
    browser.set_size(1280, 800, false).await;
    browser.call("Network.enable", serde_json::json!({})).await;
    browser
        .call(
            "Network.setCacheDisabled",
            serde_json::json!({ "cacheDisabled": true }),
        )
        .await;
    browser.navigate(&format!("{}/", daemon.url)).await;
    let wait = Duration::from_secs(30);
    browser
        .wait_for("!!document.querySelector('#token')", wait)
        .await;
    browser
        .eval("document.querySelector('#token').focus()")
        .await;
    browser.type_text(TOKEN).await;
    browser
        .eval("document.querySelector('#signin').click()")
        .await;
    browser
        .wait_for("!!document.querySelector('[data-sprite=\"bench\"]')", wait)
        .await;

    eprintln!("signed in");
    // Page loads, signed in (the list renders after each).
    let (mut first_byte, mut loaded) = (Vec::new(), Vec::new());
    for load in 0..LOADS {
        // A new URL each time: a full navigation, not a same-document one.
        browser
            .navigate(&format!("{}/?load={load}#/", daemon.url))
            .await;
        browser
            .wait_for(
                &format!("(() => {{ const n = performance.getEntriesByType('navigation')[0]; return n && new URL(n.name).searchParams.get('load') === '{load}' && n.loadEventEnd > 0 && !!document.querySelector('[data-sprite=\"bench\"]'); }})()"),
                wait,
            )
            .await;
        let timing = browser
            .eval("(() => { const n = performance.getEntriesByType('navigation')[0]; return [n.responseStart - n.startTime, n.loadEventEnd - n.startTime]; })()")
            .await;
        first_byte.push(timing[0].as_f64().unwrap());
        loaded.push(timing[1].as_f64().unwrap());
    }

    eprintln!("page loads done");
    browser.call("Network.disable", serde_json::json!({})).await;

    // Keystroke echo in the page's terminal.
    browser.eval("location.hash = '#/s/bench/terminal'").await;
    browser
        .wait_for("window.sprites && window.sprites.state.session", wait)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let script = format!(
        "(async () => {{ const t = window.sprites.state; const times = []; for (let i = 0; i < {KEYS}; i++) {{ if (i % 50 === 0) t.send('\\x15'); const ch = String.fromCharCode(97 + i % 26); const seen = new Promise(r => {{ const d = t.term.onWriteParsed(() => {{ d.dispose(); r(); }}); }}); const t0 = performance.now(); t.send(ch); await seen; times.push(performance.now() - t0); }} t.send('\\x15'); return times; }})()"
    );
    eprintln!("terminal attached");
    let echo: Vec<f64> = browser
        .eval(&script)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();

    // The floor: the same echo from a WebSocket client here.
    let mut params = params(&["bash", "-l"]);
    params.tty = true;
    params.stdin = true;
    let mut stream = daemon.client.exec("bench", &params).await.unwrap();
    // Let the prompt come.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
    }
    let mut floor = Vec::new();
    for i in 0..KEYS {
        if i % 50 == 0 {
            stream.send_stdin(b"\x15").await.unwrap();
            let _ = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
        }
        let key = [b'a' + (i % 26) as u8];
        let started = Instant::now();
        stream.send_stdin(&key).await.unwrap();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("the echo came within 10 s")
                .unwrap();
            match event {
                sprite_client::ExecEvent::Stdout(data) if data.contains(&key[0]) => break,
                _ => {}
            }
        }
        floor.push(ms(started.elapsed()));
    }

    let (fb50, fb99) = summary(first_byte.clone(), 0.99);
    let (ld50, ld99) = summary(loaded.clone(), 0.99);
    let (e50, e99) = summary(echo.clone(), 0.99);
    let (f50, f99) = summary(floor.clone(), 0.99);
    println!("console page load ({LOADS} loads, cache off): first byte p50 {fb50:.2} ms p99 {fb99:.2} ms; load event p50 {ld50:.1} ms p99 {ld99:.1} ms");
    println!(
        "keystroke echo in the browser terminal ({KEYS} keys): p50 {e50:.2} ms p99 {e99:.2} ms"
    );
    println!("keystroke echo, plain WebSocket client (floor): p50 {f50:.2} ms p99 {f99:.2} ms");
    write_report(
        "console",
        &serde_json::json!({
            "page_first_byte_ms": { "p50": fb50, "p99": fb99, "samples": first_byte },
            "page_load_ms": { "p50": ld50, "p99": ld99, "samples": loaded },
            "keystroke_echo_browser_ms": { "p50": e50, "p99": e99 },
            "keystroke_echo_websocket_ms": { "p50": f50, "p99": f99 },
        }),
    );
}
