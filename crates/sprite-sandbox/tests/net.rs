//! Sprite networking on this host's kernel (needs root and nft, like CI): two "sprites"
//! (processes in new network namespaces) and an "internet" namespace behind a veth of its
//! own, all made and removed by the test.

use sprite_sandbox::net::{Egress, Net, NetPlan, SlotAddrs};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SERVER_PORT: u16 = 8080;
const B_PORT: u16 = 8081;
/// How long a connection to a dropped destination is given before it counts as blocked.
const BLOCKED_AFTER: Duration = Duration::from_secs(1);

/// Everything the test made, removed on drop, also when the test fails.
struct World {
    net: Net,
    namespaces: Vec<Child>,
    slots: Vec<u32>,
    internet_link: String,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
    ip_forward_before: Option<String>,
    /// Subnets whose tracked connections are forgotten at the end.
    subnets: Vec<String>,
}

impl World {
    /// A process in a new network namespace, holding it; returns its pid once it is there.
    fn spawn_namespace(&mut self) -> u32 {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare");
        let pid = child.id();
        self.namespaces.push(child);
        let own = std::fs::read_link("/proc/self/ns/net").expect("own namespace");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .as_ref()
            == Some(&own)
        {
            assert!(
                Instant::now() < deadline,
                "unshare never entered a new namespace"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        pid
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for &slot in &self.slots {
            let _ = self.net.detach(slot);
        }
        for child in &mut self.namespaces {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.internet_link])
            .stderr(Stdio::null())
            .status();
        let _ = self.net.uninstall();
        for subnet in &self.subnets {
            for direction in ["-s", "-d"] {
                let _ = Command::new("conntrack")
                    .args(["-D", direction, subnet])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
        if let Some(value) = &self.ip_forward_before {
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", value);
        }
    }
}

/// Runs `work` on a thread of its own inside the network namespace of `pid`; sockets it
/// makes stay in that namespace.
fn in_namespace<T: Send>(
    pid: u32,
    work: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    let namespace = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                work()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
    })
}

fn connect(pid: u32, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    in_namespace(pid, || TcpStream::connect_timeout(&to, timeout))
}

fn echo(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(message)?;
    let mut answer = vec![0; message.len()];
    stream.read_exact(&mut answer)?;
    assert_eq!(answer, message);
    Ok(())
}

fn run(command: &[&str], input: &str) {
    let mut child = Command::new(command[0])
        .args(&command[1..])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    assert!(child.wait().expect("wait").success(), "{command:?} failed");
}

/// An echo server on `listener` until `stop`; each connection on a thread of its own,
/// all joined before it returns.
fn serve(listener: TcpListener, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = listener.set_nonblocking(true);
        let mut connections = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let stop = stop.clone();
                    connections.push(std::thread::spawn(move || {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
                        let mut buffer = [0; 4096];
                        while !stop.load(Ordering::SeqCst) {
                            match stream.read(&mut buffer) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if stream.write_all(&buffer[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        ErrorKind::WouldBlock | ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                    }));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        for connection in connections {
            let _ = connection.join();
        }
    })
}

fn tool_missing(tool: &str) -> bool {
    // `ip -V`: iproute2 has no `--version`.
    Command::new(tool)
        .arg(if tool == "ip" { "-V" } else { "--version" })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| !status.success())
        .unwrap_or(true)
}

fn table_exists(table: &str) -> bool {
    let output = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft list tables");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|line| line.trim() == format!("table inet {table}"))
}

fn interfaces_named(matches: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .expect("list interfaces")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| matches(name))
        .collect()
}

fn attach_timed(net: &Net, slot: u32, pid: u32) -> (SlotAddrs, Duration) {
    let started = Instant::now();
    let addrs = net.attach(slot, pid, Egress::Open).expect("attach");
    (addrs, started.elapsed())
}

#[test]
fn sprites_reach_out_through_nat_but_not_the_host_nor_each_other() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: sprite networking needs root");
        return;
    }
    if ["nft", "ip", "unshare", "nsenter"]
        .iter()
        .any(|tool| tool_missing(tool))
    {
        eprintln!("skipped: needs nft, ip, unshare and nsenter");
        return;
    }
    let tag = std::process::id() % 100_000;
    let octet = std::process::id() % 200 + 20;
    let plan = NetPlan::new(
        &format!("10.253.{octet}.0/24"),
        &format!("sprites_test_{tag}"),
        &format!("sn{tag}x"),
    )
    .expect("plan");
    let net = Net::system(plan.clone());
    let mut world = World {
        net: net.clone(),
        namespaces: Vec::new(),
        slots: vec![1, 2],
        internet_link: format!("si{tag}x"),
        stop: Arc::new(AtomicBool::new(false)),
        server: None,
        ip_forward_before: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").ok(),
        subnets: vec![
            format!("10.253.{octet}.0/24"),
            format!("10.252.{octet}.0/24"),
        ],
    };
    net.install(&[]).expect("install");

    // The "internet": a namespace with 10.252.<octet>.2 behind a veth from the host.
    let internet = world.spawn_namespace();
    let host_side = Ipv4Addr::new(10, 252, octet as u8, 1);
    let server_ip = Ipv4Addr::new(10, 252, octet as u8, 2);
    let link = world.internet_link.clone();
    run(
        &["ip", "-batch", "-"],
        &format!(
            "link add name {link} type veth peer name eth0 netns {internet}\n\
             addr add {host_side}/24 dev {link}\nlink set {link} up\n"
        ),
    );
    run(
        &[
            "nsenter",
            &format!("--net=/proc/{internet}/ns/net"),
            "ip",
            "-batch",
            "-",
        ],
        &format!("addr add {server_ip}/24 dev eth0\nlink set eth0 up\n"),
    );
    let listener = in_namespace(internet, || TcpListener::bind(("0.0.0.0", SERVER_PORT)))
        .expect("listen in the internet namespace");
    world.server = Some(serve(listener, world.stop.clone()));
    let server = SocketAddr::from((server_ip, SERVER_PORT));

    let a = world.spawn_namespace();
    let b = world.spawn_namespace();
    let (a_addrs, a_time) = attach_timed(&net, 1, a);
    let (mut b_addrs, b_time) = attach_timed(&net, 2, b);
    let mut times = vec![a_time, b_time];
    for _ in 0..5 {
        net.detach(2).expect("detach b");
        let (addrs, time) = attach_timed(&net, 2, b);
        b_addrs = addrs;
        times.push(time);
    }
    times.sort();
    eprintln!(
        "attach took {:?} (median of {}, min {:?}, max {:?})",
        times[times.len() / 2],
        times.len(),
        times[0],
        times[times.len() - 1]
    );
    assert_eq!(a_addrs.sprite, Ipv4Addr::new(10, 253, octet as u8, 6));
    assert_eq!(b_addrs.gateway, Ipv4Addr::new(10, 253, octet as u8, 9));

    // NAT: A reaches the internet namespace, which knows no route back to the subnet.
    let mut stream = connect(a, server, Duration::from_secs(2)).expect("A reaches the internet");
    echo(&mut stream, b"through nat").expect("echo through nat");

    // Sprites do not reach each other, though the host reaches B.
    let b_listener = in_namespace(b, || TcpListener::bind(("0.0.0.0", B_PORT))).expect("B listens");
    let b_service = SocketAddr::from((b_addrs.sprite, B_PORT));
    TcpStream::connect_timeout(&b_service, Duration::from_secs(2)).expect("the host reaches B");
    assert!(connect(a, b_service, BLOCKED_AFTER).is_err(), "A reached B");

    // The host's own services are out of reach, on any of its addresses.
    let host_any = TcpListener::bind(("0.0.0.0", 0)).expect("host listener");
    let any_port = host_any.local_addr().expect("port").port();
    let host_gateway = TcpListener::bind((a_addrs.gateway, 0)).expect("gateway listener");
    let gateway_port = host_gateway.local_addr().expect("port").port();
    TcpStream::connect_timeout(&(a_addrs.gateway, any_port).into(), Duration::from_secs(2))
        .expect("the host reaches its own listener");
    for target in [
        SocketAddr::from((a_addrs.gateway, any_port)),
        SocketAddr::from((b_addrs.gateway, any_port)),
        SocketAddr::from((host_side, any_port)),
        SocketAddr::from((a_addrs.gateway, gateway_port)),
    ] {
        assert!(
            connect(a, target, BLOCKED_AFTER).is_err(),
            "A reached the host at {target}"
        );
    }

    // DNS: each sprite reaches port 53 on its own gateway only.
    let resolvers = (
        TcpListener::bind((a_addrs.gateway, 53)),
        TcpListener::bind((b_addrs.gateway, 53)),
    );
    let dns_checked = resolvers.0.is_ok() && resolvers.1.is_ok();
    if dns_checked {
        connect(a, (a_addrs.gateway, 53).into(), Duration::from_secs(2))
            .expect("A reaches its resolver");
        assert!(
            connect(a, (b_addrs.gateway, 53).into(), BLOCKED_AFTER).is_err(),
            "A reached B's resolver"
        );
    } else {
        eprintln!("port 53 is taken on the host; resolver reachability not checked");
    }

    // Restricted: the live connection is cut and new ones are refused at once.
    net.set_egress(1, Egress::Restricted).expect("restrict");
    assert!(
        echo(&mut stream, b"cut").is_err(),
        "a restricted sprite kept its connection"
    );
    let started = Instant::now();
    let refused = connect(a, server, Duration::from_secs(2)).expect_err("restricted connect");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    assert!(started.elapsed() < Duration::from_millis(500));
    if dns_checked {
        connect(a, (a_addrs.gateway, 53).into(), Duration::from_secs(2))
            .expect("a restricted sprite reaches its resolver");
    }
    connect(b, server, Duration::from_secs(2)).expect("B is still open");

    net.allow(1, &[(server_ip, Duration::from_secs(60))])
        .expect("allow");
    net.allow(1, &[(server_ip, Duration::from_secs(120))])
        .expect("allow again");
    let mut stream = connect(a, server, Duration::from_secs(2)).expect("allowed connect");
    echo(&mut stream, b"allowed").expect("echo when allowed");

    // A restarted daemon re-installs with the live slots: the connection, the allowed
    // address and the isolation all survive.
    // The internet link exists now, so the new table counts its network among the
    // host's own: open egress does not reach it by default (the host's LAN)...
    net.install(&[(1, Egress::Restricted), (2, Egress::Open)])
        .expect("reinstall");
    let refused = connect(b, server, Duration::from_secs(2)).expect_err("B to the host's LAN");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    // ...unless the daemon lets sprites reach local networks.
    let mut plan = plan.clone();
    plan.local_egress = true;
    let net = Net::system(plan.clone());
    net.install(&[(1, Egress::Restricted), (2, Egress::Open)])
        .expect("reinstall");
    echo(&mut stream, b"after reinstall").expect("echo after reinstall");
    connect(a, server, Duration::from_secs(2)).expect("allowed after reinstall");
    connect(b, server, Duration::from_secs(2)).expect("B open after reinstall");
    assert!(
        connect(a, b_service, BLOCKED_AFTER).is_err(),
        "A reached B after reinstall"
    );
    assert!(
        connect(a, (a_addrs.gateway, any_port).into(), BLOCKED_AFTER).is_err(),
        "A reached the host after reinstall"
    );

    // Revoking cuts the live connection at its next packet.
    net.revoke(1, &[server_ip]).expect("revoke");
    let started = Instant::now();
    let cut = echo(&mut stream, b"revoked").expect_err("a revoked connection lived on");
    assert!(
        !matches!(cut.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "the revoked connection hung instead of failing: {cut}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(connect(a, server, Duration::from_secs(2)).is_err());
    net.revoke(1, &[server_ip])
        .expect("revoke an absent address");

    net.allow(1, &[(server_ip, Duration::from_secs(60))])
        .expect("allow");
    connect(a, server, Duration::from_secs(2)).expect("allowed again");
    net.clear_allowed(1).expect("clear");
    assert!(connect(a, server, Duration::from_secs(2)).is_err());
    net.set_egress(1, Egress::Open).expect("open");
    connect(a, server, Duration::from_secs(2)).expect("open again");

    // Detach removes the host interfaces; detaching twice is fine.
    for slot in [1, 2] {
        net.detach(slot).expect("detach");
        net.detach(slot).expect("detach again");
    }
    assert_eq!(
        interfaces_named(|name| name.starts_with(&plan.iface_prefix)),
        Vec::<String>::new()
    );
    assert!(matches!(
        net.attach(64, a, Egress::Open),
        Err(sprite_sandbox::SandboxError::NetworkSlot { slot: 64, .. })
    ));

    drop((stream, b_listener, host_any, host_gateway, resolvers));
    let pids: Vec<u32> = world.namespaces.iter().map(Child::id).collect();
    let internet_link = world.internet_link.clone();
    drop(world);
    assert!(!table_exists(&plan.table), "table left behind");
    assert_eq!(
        interfaces_named(|name| name.starts_with(&plan.iface_prefix) || name == internet_link),
        Vec::<String>::new()
    );
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "namespace holder {pid} left running"
        );
    }
}

/// What attach and detach cost: `SPRITE_NET_ROUNDS` rounds (20) on one sprite, with
/// `SPRITE_NET_LIVE_SLOTS` other slots (0) in the table. Run by `bench/net.sh`.
#[test]
#[ignore = "a measurement, run by bench/net.sh"]
fn attach_and_detach_timing() {
    if !nix::unistd::Uid::effective().is_root() || tool_missing("nft") {
        eprintln!("skipped: sprite networking needs root and nft");
        return;
    }
    let setting = |name: &str, default: u32| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let rounds = setting("SPRITE_NET_ROUNDS", 20).max(1);
    let live_slots = setting("SPRITE_NET_LIVE_SLOTS", 0);
    let tag = std::process::id() % 100_000;
    let plan = NetPlan::new(
        "10.250.0.0/16",
        &format!("sprites_bench_{tag}"),
        &format!("sb{tag}x"),
    )
    .expect("plan");
    let net = Net::system(plan.clone());
    let mut world = World {
        net: net.clone(),
        namespaces: Vec::new(),
        slots: vec![0],
        internet_link: format!("sb{tag}y"),
        stop: Arc::new(AtomicBool::new(false)),
        server: None,
        ip_forward_before: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").ok(),
        subnets: vec!["10.250.0.0/16".into()],
    };
    let live: Vec<(u32, Egress)> = (1..=live_slots)
        .map(|slot| (slot, Egress::Restricted))
        .collect();
    let started = Instant::now();
    net.install(&live).expect("install");
    let install_time = started.elapsed();
    let sprite = world.spawn_namespace();
    let mut attach_times = Vec::new();
    let mut detach_times = Vec::new();
    for _ in 0..rounds {
        attach_times.push(attach_timed(&net, 0, sprite).1);
        let started = Instant::now();
        net.detach(0).expect("detach");
        detach_times.push(started.elapsed());
    }
    attach_times.sort();
    detach_times.sort();
    let median = |times: &[Duration]| times[times.len() / 2];
    eprintln!(
        "install with {live_slots} live slots {install_time:?}; over {rounds} rounds: \
         attach median {:?} (min {:?}), detach median {:?} (min {:?})",
        median(&attach_times),
        attach_times[0],
        median(&detach_times),
        detach_times[0],
    );
    drop(world);
}
