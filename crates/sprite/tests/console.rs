//! The web console in a real browser (headless Chromium over the DevTools protocol),
//! against a real daemon, at a phone's size and a desktop's: sign in, the sprite list,
//! create a sprite, a terminal (type `echo $((6*7))`, read 42; resize; a dropped
//! connection re-attaches to the same shell), upload a file and find it in the sprite,
//! create and restore a checkpoint. Screenshots of each page go to
//! target/console-screenshots (docs/console holds a set). Also the session's rules:
//! the cookie is HttpOnly, changes need the CSRF token, WebSockets the page's origin.
#![allow(clippy::unwrap_used)]

mod common;

use common::browser::{chromium, Browser};
use common::*;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// The terminal's text, all lines (the page exposes its xterm as `window.sprites`).
const SCREEN: &str = "(() => { const b = window.sprites.term.buffer.active; const out = []; for (let i = 0; i < b.length; i++) { out.push(b.getLine(i).translateToString(true)); } return out.join('\\n'); })()";

async fn click(browser: &mut Browser, selector: &str) {
    browser
        .wait_for(&format!("!!document.querySelector({selector:?})"), WAIT)
        .await;
    browser
        .eval(&format!("document.querySelector({selector:?}).click()"))
        .await;
}

/// Types a line into the terminal, presses Enter, and waits for `expect` on its screen.
async fn in_terminal(browser: &mut Browser, line: &str, expect: &str) {
    browser.eval("window.sprites.term.focus()").await;
    browser.type_text(line).await;
    browser.press("Enter", 13, "\r").await;
    browser
        .wait_for(
            &format!("{SCREEN}.split('\\n').some(l => l.trim() === {expect:?})"),
            WAIT,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_browser_at_phone_and_desktop_sizes() {
    let Some(binary) = chromium() else {
        eprintln!("chromium is not installed: skipping the browser test (CI installs it)");
        return;
    };
    let daemon = Daemon::start("debian").await;
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    let upload_dir = tempfile::tempdir().unwrap();
    let upload = upload_dir.path().join("upload.txt");
    std::fs::write(&upload, "uploaded from the browser\n").unwrap();

    for (size, width, height, mobile) in [("phone", 375, 667, true), ("desktop", 1280, 800, false)]
    {
        let sprite = format!("web-{size}");
        let mut browser = Browser::launch(&binary).await;
        browser.set_size(width, height, mobile).await;
        browser.navigate(&format!("{}/", daemon.url)).await;

        // Sign in.
        browser
            .wait_for("!!document.querySelector('#token')", WAIT)
            .await;
        browser
            .screenshot(&shots.join(format!("{size}-signin.png")))
            .await;
        browser
            .eval("document.querySelector('#token').focus()")
            .await;
        browser.type_text(TOKEN).await;
        click(&mut browser, "#signin").await;
        browser
            .wait_for(
                "document.querySelector('#who').textContent.includes('default')",
                WAIT,
            )
            .await;
        let cookie_visible = browser
            .eval("document.cookie.includes('sprites_session')")
            .await;
        assert_eq!(cookie_visible, false, "the session cookie is HttpOnly");

        // Create a sprite from the list page.
        browser
            .wait_for("!!document.querySelector('#new-name')", WAIT)
            .await;
        browser
            .eval("document.querySelector('#new-name').focus()")
            .await;
        browser.type_text(&sprite).await;
        click(&mut browser, "form.inline button[type=submit]").await;
        browser
            .wait_for(
                &format!("!!document.querySelector('[data-sprite=\"{sprite}\"]')"),
                WAIT,
            )
            .await;
        browser
            .wait_for(
                &format!("document.querySelector('[data-sprite=\"{sprite}\"] .status').textContent === 'running'"),
                WAIT,
            )
            .await;
        browser
            .screenshot(&shots.join(format!("{size}-list.png")))
            .await;

        // The terminal.
        browser
            .eval(&format!("location.hash = '#/s/{sprite}/terminal'"))
            .await;
        browser
            .wait_for("window.sprites && window.sprites.state.session", WAIT)
            .await;
        in_terminal(&mut browser, "echo $((6*7))", "42").await;
        // The on-screen keys are there, and a resize reaches the shell.
        let keys = browser
            .eval(
                "[...document.querySelectorAll('.keys button')].map(b => b.textContent).join(' ')",
            )
            .await;
        assert_eq!(keys, "Ctrl Esc Tab ← ↑ ↓ →");
        let before = browser.eval("window.sprites.term.cols").await;
        let (w2, h2) = if mobile { (667, 375) } else { (960, 700) };
        browser.set_size(w2, h2, mobile).await;
        browser
            .wait_for(&format!("window.sprites.term.cols !== {before}"), WAIT)
            .await;
        let rows = browser.eval("window.sprites.term.rows").await;
        let cols = browser.eval("window.sprites.term.cols").await;
        in_terminal(&mut browser, "stty size", &format!("{rows} {cols}")).await;
        // A dropped connection: the page re-attaches to the same shell (with its replay).
        let session = browser.eval("window.sprites.state.session").await;
        browser.eval("window.sprites.state.ws.close()").await;
        browser
            .wait_for(
                "document.querySelector('.term-state').textContent.startsWith('reconnected')",
                WAIT,
            )
            .await;
        assert_eq!(browser.eval("window.sprites.state.session").await, session);
        in_terminal(&mut browser, "echo again-$((1+1))", "again-2").await;
        browser.set_size(width, height, mobile).await;
        browser
            .screenshot(&shots.join(format!("{size}-terminal.png")))
            .await;

        // Files: upload one and find it in the sprite.
        browser
            .eval(&format!("location.hash = '#/s/{sprite}/files'"))
            .await;
        browser
            .wait_for("!!document.querySelector('#upload')", WAIT)
            .await;
        browser.choose_files("#upload", &[upload.as_path()]).await;
        browser
            .wait_for(
                "!!document.querySelector('[data-file=\"upload.txt\"]')",
                WAIT,
            )
            .await;
        let read = run(&daemon.client, &sprite, &["cat", "/home/sprite/upload.txt"]).await;
        assert_eq!(read.stdout(), "uploaded from the browser\n");
        browser
            .screenshot(&shots.join(format!("{size}-files.png")))
            .await;

        // A checkpoint, a change, and a restore from the page.
        browser
            .eval(&format!("location.hash = '#/s/{sprite}/checkpoints'"))
            .await;
        browser
            .wait_for("!!document.querySelector('#checkpoint-create')", WAIT)
            .await;
        browser
            .eval("document.querySelector('#checkpoint-comment').focus()")
            .await;
        browser.type_text("before the change").await;
        click(&mut browser, "#checkpoint-create").await;
        browser
            .wait_for("!!document.querySelector('[data-checkpoint]')", WAIT)
            .await;
        let changed = run(
            &daemon.client,
            &sprite,
            &["sh", "-c", "echo changed > /home/sprite/upload.txt"],
        )
        .await;
        assert_eq!(changed.code, 0);
        browser
            .screenshot(&shots.join(format!("{size}-checkpoints.png")))
            .await;
        // Restore asks again before it acts: two clicks.
        let restore = "[data-checkpoint] button.danger";
        click(&mut browser, restore).await;
        click(&mut browser, restore).await;
        browser
            .wait_for(
                "document.querySelector('#notice').textContent.startsWith('restored')",
                WAIT,
            )
            .await;
        let read = run(&daemon.client, &sprite, &["cat", "/home/sprite/upload.txt"]).await;
        assert_eq!(read.stdout(), "uploaded from the browser\n", "restored");

        // The other pages render.
        for (tab, ready) in [
            ("services", "#service-logs"),
            ("settings", "#policy"),
            ("usage", "#usage"),
        ] {
            browser
                .eval(&format!("location.hash = '#/s/{sprite}/{tab}'"))
                .await;
            browser
                .wait_for(&format!("!!document.querySelector('{ready}')"), WAIT)
                .await;
            browser
                .screenshot(&shots.join(format!("{size}-{tab}.png")))
                .await;
        }
    }
}

/// The session's rules, without a browser: a changing request with the cookie but no
/// CSRF token is refused, a WebSocket from another origin is refused, a bad token
/// gets no session, and sign-out ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_refuse_forgeries() {
    let daemon = Daemon::start("busybox").await;
    let http = reqwest::Client::new();
    let page = http.get(format!("{}/", daemon.url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("/console/assets/app.js"));
    let refused = http
        .post(format!("{}/console/login", daemon.url))
        .body(r#"{"token":"wrong"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let login = http
        .post(format!("{}/console/login", daemon.url))
        .body(format!(r#"{{"token":"{TOKEN}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let body: serde_json::Value = login.json().await.unwrap();
    let csrf = body["csrf"].as_str().unwrap().to_string();
    // Reads with the cookie work.
    let list = http
        .get(format!("{}/v1/sprites", daemon.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    // A change without the CSRF token: 403; with it: done.
    let create = |with_csrf: bool| {
        let mut request = http
            .post(format!("{}/v1/sprites", daemon.url))
            .header("cookie", &cookie)
            .header("content-type", "application/json")
            .body(r#"{"name":"c1"}"#);
        if with_csrf {
            request = request.header("x-csrf-token", &csrf);
        }
        request.send()
    };
    let forged = create(false).await.unwrap();
    assert_eq!(forged.status(), 403);
    assert!(forged.text().await.unwrap().contains("X-CSRF-Token"));
    assert_eq!(create(true).await.unwrap().status(), 201);
    // A WebSocket with the cookie from another origin: refused before the upgrade.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let host = daemon.url.trim_start_matches("http://").to_string();
    for (origin, allowed) in [
        ("http://evil.example", false),
        (format!("http://{host}").as_str(), true),
    ] {
        let mut request = format!("ws://{host}/v1/sprites/c1/exec?cmd=true")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("cookie", cookie.parse().unwrap());
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        let result = tokio_tungstenite::connect_async(request).await;
        assert_eq!(result.is_ok(), allowed, "{origin}: {result:?}");
    }
    // Signed out: the cookie is worth nothing.
    let out = http
        .post(format!("{}/console/logout", daemon.url))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let after = http
        .get(format!("{}/v1/sprites", daemon.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
}
