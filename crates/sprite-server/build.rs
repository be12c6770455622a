//! The web console embeds xterm.js (pinned, from npm): fetched into console/vendor by
//! scripts/console-deps.sh when missing, so a fresh checkout builds with npm present.
use std::path::Path;

const VENDOR: [&str; 3] = ["xterm.js", "xterm.css", "addon-fit.js"];

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let vendor = dir.join("console").join("vendor");
    println!("cargo:rerun-if-changed=console/vendor");
    println!("cargo:rerun-if-changed=build.rs");
    if VENDOR.iter().all(|file| vendor.join(file).is_file()) {
        return;
    }
    let script = dir.join("../../scripts/console-deps.sh");
    let status = std::process::Command::new("bash").arg(&script).status();
    match status {
        Ok(status) if status.success() => {}
        other => panic!(
            "the web console's xterm.js is missing and {} failed ({other:?}); install npm and run it, then build again",
            script.display()
        ),
    }
}
