//! What one look at a sprite's listening ports costs (the port watch every exec session
//! starts does one every half second), on an empty host and on one with many TCP
//! connections open: `/proc/<pid>/net/tcp` and `tcp6` (what the watch read before; the
//! kernel walks every connection of the host to print one namespace's) against
//! `NETLINK_SOCK_DIAG` asking for listening sockets only (what it reads now), side by
//! side, interleaved.
//!
//! The "sprite" is a thread in a network namespace of its own with one listener; the
//! connections are loopback ones in the bench's namespace, as other sprites' and the
//! host's would be. Needs root (a new network namespace).
//!
//! Run: `sudo cargo bench -p sprite-core --bench ports` (`CONNECTIONS=5000 ROUNDS=300`
//! by default).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{median, setting};

use std::net::{TcpListener, TcpStream};
use std::time::Instant;

/// The old way: both files read and parsed.
fn by_proc(tid: i32) -> Vec<(u64, u16, String)> {
    let mut found = Vec::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let text = std::fs::read_to_string(format!("/proc/{tid}/net/{file}")).unwrap();
        found.extend(sprite_core::ports::parse_proc_net(&text, v6));
    }
    found.sort();
    found
}

/// The new way.
fn by_sock_diag(tid: i32) -> Vec<(u64, u16, String)> {
    let mut found: Vec<(u64, u16, String)> =
        sprite_sys::sockdiag::listeners_in_namespace_of(tid as u32)
            .unwrap()
            .into_iter()
            .map(|l| (l.inode, l.port, l.address.to_string()))
            .collect();
    found.sort();
    found
}

/// Medians (ms) of both ways, interleaved.
fn measure(tid: i32, rounds: usize) -> (f64, f64) {
    let expected = by_proc(tid);
    assert_eq!(
        by_sock_diag(tid),
        expected,
        "both ways see the same sockets"
    );
    assert_eq!(expected.len(), 1, "the sprite's one listener");
    let (mut proc, mut diag) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = Instant::now();
        std::hint::black_box(by_proc(tid));
        proc.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        std::hint::black_box(by_sock_diag(tid));
        diag.push(start.elapsed().as_secs_f64() * 1e3);
    }
    (median(proc), median(diag))
}

fn main() {
    let connections = setting("CONNECTIONS", 5000);
    let rounds = setting("ROUNDS", 300).max(1);
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the ports bench needs root (it makes a network namespace): run it with sudo");
        std::process::exit(2);
    }
    // Two descriptors a connection.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("the descriptor limit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise the descriptor limit");
    assert!(
        hard as usize > 2 * connections + 100,
        "the descriptor limit ({hard}) is too low for {connections} connections"
    );
    // The sprite: a thread alone in a new network namespace, listening on one port.
    let (ready, sprite) = std::sync::mpsc::channel();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let sprite_thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a network namespace");
        let listener = TcpListener::bind("0.0.0.0:8080").expect("listen in the namespace");
        ready.send(nix::unistd::gettid().as_raw()).unwrap();
        let _ = stopped.recv();
        drop(listener);
    });
    let tid = sprite.recv().expect("the sprite thread");

    let (empty_proc, empty_diag) = measure(tid, rounds);

    // The busy host: established loopback connections (two sockets each).
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = server.local_addr().unwrap();
    let accepting = std::thread::spawn(move || {
        let mut accepted = Vec::new();
        for _ in 0..connections {
            accepted.push(server.accept().unwrap().0);
        }
        accepted
    });
    let clients: Vec<TcpStream> = (0..connections)
        .map(|_| TcpStream::connect(address).unwrap())
        .collect();
    let accepted = accepting.join().unwrap();
    let (busy_proc, busy_diag) = measure(tid, rounds);

    println!(
        "one look at a sprite's listening ports, median of {rounds} (ms)\n\
         {:<44} {:>10} {:>10}\n\
         {:<44} {:>10.3} {:>10.3}\n\
         {:<44} {:>10.3} {:>10.3}\n\
         {:<44} {:>9.1}x {:>9.1}x",
        "",
        "/proc tcp",
        "sock_diag",
        "empty host",
        empty_proc,
        empty_diag,
        format!("host with {connections} connections open"),
        busy_proc,
        busy_diag,
        "busy / empty",
        busy_proc / empty_proc,
        busy_diag / empty_diag,
    );
    drop(clients);
    drop(accepted);
    let _ = stop.send(());
    let _ = sprite_thread.join();
}
