//! `sprite`: the CLI, `sprite daemon` (the server) and the hidden `sprite init` (the
//! launcher that becomes PID 1 of each sprite), in one binary.
#![forbid(unsafe_code)]

mod cli;
mod console;
mod copy;
mod daemon;
mod mcp;
mod services;
mod settings;
mod sprite_env;
mod storage;
mod tcp_proxy;

use clap::Parser;
use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    // `sprite init` must run before any thread exists: it forks into new namespaces.
    if std::env::args().nth(1).as_deref() == Some("init") {
        if std::env::args().nth(2).as_deref() == Some("--serve") {
            return serve_launches();
        }
        return run_init();
    }
    // Inside a sprite, this binary is `/.sprite/bin/sprite-env`.
    let called = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&called).file_name() == Some(std::ffi::OsStr::new("sprite-env")) {
        return ExitCode::from(sprite_env::main());
    }
    let args = cli::Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(cli::run(args));
    // A read of the terminal may still be blocked in a worker thread: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            cli::print_error(&error);
            ExitCode::from(1)
        }
    }
}

/// Structured logs on stderr (`SPRITE_LOG` filters, default info), for the daemon and
/// the storage process.
pub fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("SPRITE_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The launch server (`sprite init --serve`, its socket in `SPRITE_LAUNCH_SOCKET`):
/// forks a launcher per request.
fn serve_launches() -> ExitCode {
    let Some(socket) = std::env::var_os(sprite_sandbox::LAUNCH_SOCKET_VARIABLE) else {
        eprintln!(
            "sprite init --serve: set {} to the socket path",
            sprite_sandbox::LAUNCH_SOCKET_VARIABLE
        );
        return ExitCode::from(2);
    };
    match sprite_sandbox::launch::serve_launches(std::path::Path::new(&socket)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sprite init --serve: {}", sprite_api::error_chain(&error));
            ExitCode::from(1)
        }
    }
}

/// The launcher: reads a sandbox spec on stdin, starts the sprite, prints its pid.
fn run_init() -> ExitCode {
    let mut input = Vec::new();
    if let Err(error) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("sprite init: read spec: {error}");
        return ExitCode::from(2);
    }
    let spec: sprite_sandbox::spec::SandboxSpec = match serde_json::from_slice(&input) {
        Ok(spec) => spec,
        Err(error) => {
            eprintln!("sprite init: is an internal command of the daemon; the spec on stdin is malformed: {error}");
            return ExitCode::from(2);
        }
    };
    match sprite_sandbox::launch::run_launcher(&spec) {
        Ok(result) => {
            println!("{}", serde_json::json!({ "pid": result.pid }));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{}", sprite_api::error_chain(&error));
            ExitCode::from(1)
        }
    }
}
