//! End to end, as root: each sprite's network. A test-made "internet" (a network
//! namespace with an HTTP server and an echo server behind its own veth) and a test DNS
//! server on the host's loopback stand in for the world. Sprites reach it through NAT,
//! never each other nor the host's own services, and their egress policy (API.md,
//! Policy) decides which names resolve and which addresses answer, at once.
#![allow(clippy::unwrap_used)]

mod common;

use common::internet::*;
use common::*;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sprites_reach_the_world_not_each_other_and_policy_decides() {
    let internet = Internet::new(0, 0.0, false);
    // The test's DNS server, the daemon's upstream.
    let dns_socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns_port = dns_socket.local_addr().unwrap().port();
    let records: HashMap<String, Vec<Ipv4Addr>> = HashMap::from([
        (
            "allowed.test".to_string(),
            vec![internet.address(2).parse().unwrap()],
        ),
        (
            "denied.test".to_string(),
            vec![internet.address(3).parse().unwrap()],
        ),
    ]);
    let dns = tokio::spawn(sprite_core::dns::serve_static(dns_socket, records));
    let daemon = Daemon::start_with(
        "debian",
        // The test's internet is a network the host is connected to, which sprites
        // without a policy do not reach by default.
        &format!("storage = \"local\"\nwarm_after = \"never\"\ncold_after = \"never\"\negress_private = \"allow\"\ndns_upstreams = [\"127.0.0.1:{dns_port}\"]\n"),
    )
    .await;
    let client = &daemon.client;
    for name in ["a", "b"] {
        create(client, name).await;
        install_client(&daemon, name).await;
    }

    // The host end of a sprite's veth has IPv6 off (sprites speak IPv4; a link-local
    // route per sprite would slow every change of the host's IPv6 routes).
    let peer = run(client, "a", &["cat", "/sys/class/net/eth0/iflink"]).await;
    let peer = peer.stdout().trim().to_string();
    let host_end = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .find(|link| {
            std::fs::read_to_string(link.path().join("ifindex"))
                .is_ok_and(|index| index.trim() == peer)
        })
        .map(|link| link.file_name().to_string_lossy().to_string())
        .expect("the host end of sprite a's veth");
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        let setting =
            std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{host_end}/disable_ipv6"))
                .unwrap();
        assert_eq!(setting.trim(), "1", "IPv6 off on {host_end}");
    }

    // Unrestricted: names resolve through the sprite's resolver, NAT reaches the world.
    let allowed_ip = internet.address(2);
    let denied_ip = internet.address(3);
    assert_eq!(
        py(&daemon, "a", &["resolve", "allowed.test"]).await,
        allowed_ip
    );
    assert_eq!(
        py(&daemon, "a", &["get", "http://allowed.test:8000/"]).await,
        "hello from the internet"
    );
    assert_eq!(
        py(&daemon, "a", &["connect", &denied_ip, "8000"]).await,
        "connected"
    );

    // Not each other, not the host's services (a listener on all the host's addresses).
    let gateway_b = run(
        client,
        "b",
        &[
            "sh",
            "-c",
            "awk '/^nameserver/ {print $2}' /etc/resolv.conf",
        ],
    )
    .await
    .stdout();
    let gateway_b: Ipv4Addr = gateway_b.trim().parse().unwrap();
    let address_b = Ipv4Addr::from(u32::from(gateway_b) + 1).to_string();
    let _server_b = client
        .exec(
            "b",
            &params(&["python3", "-m", "http.server", "--bind", "0.0.0.0", "9000"]),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        py(&daemon, "b", &["connect", &address_b, "9000"]).await,
        "connected",
        "b's own server is up"
    );
    assert!(
        py(&daemon, "a", &["connect", &address_b, "9000"])
            .await
            .starts_with("failed"),
        "a reached b"
    );
    let host_listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_listener.local_addr().unwrap().port().to_string();
    let gateway_a = run(
        client,
        "a",
        &[
            "sh",
            "-c",
            "awk '/^nameserver/ {print $2}' /etc/resolv.conf",
        ],
    )
    .await
    .stdout();
    for host_address in [
        gateway_a.trim(),
        gateway_b.to_string().as_str(),
        internet.address(1).as_str(),
    ] {
        assert!(
            py(&daemon, "a", &["connect", host_address, &host_port])
                .await
                .starts_with("failed"),
            "a reached the host at {host_address}"
        );
    }
    let daemon_port = daemon.url.rsplit(':').next().unwrap().to_string();
    assert!(
        py(&daemon, "a", &["connect", gateway_a.trim(), &daemon_port])
            .await
            .starts_with("failed")
    );

    // Only allowed.test: denied.test does not resolve, raw IPs answer only once an
    // allowed name resolved to them.
    let response = set_policy(
        &daemon,
        "a",
        serde_json::json!([{"domain": "allowed.test", "action": "allow"}]),
    )
    .await;
    assert_eq!(response.status(), 204);
    assert!(
        py(&daemon, "a", &["connect", &allowed_ip, "8000"])
            .await
            .starts_with("failed"),
        "a raw IP before any name"
    );
    assert_eq!(
        py(&daemon, "a", &["get", "http://allowed.test:8000/"]).await,
        "hello from the internet"
    );
    assert_eq!(
        py(&daemon, "a", &["connect", &allowed_ip, "8000"]).await,
        "connected"
    );
    assert!(py(&daemon, "a", &["resolve", "denied.test"])
        .await
        .starts_with("failed"));
    assert!(py(&daemon, "a", &["connect", &denied_ip, "8000"])
        .await
        .starts_with("failed"));
    // b has no policy: unaffected.
    assert_eq!(
        py(&daemon, "b", &["connect", &denied_ip, "8000"]).await,
        "connected"
    );
    // The sprite can read its policy; the API gives it back.
    let inside = run(client, "a", &["cat", "/.sprite/policy/network.json"])
        .await
        .stdout();
    assert!(inside.contains("allowed.test"), "{inside}");
    let policy = daemon.get_json("/v1/sprites/a/policy/network").await;
    assert_eq!(
        policy,
        serde_json::json!({"rules": [{"domain": "allowed.test", "action": "allow"}]})
    );

    // A rule change cuts a live connection that it denies.
    let mut hold = client
        .exec(
            "a",
            &params(&[
                "python3",
                "/home/sprite/net.py",
                "hold",
                "allowed.test",
                "8001",
            ]),
        )
        .await
        .unwrap();
    let mut output = String::new();
    while !output.contains("held") {
        match tokio::time::timeout(Duration::from_secs(10), hold.next())
            .await
            .unwrap()
            .unwrap()
        {
            sprite_client::ExecEvent::Stdout(data) => {
                output.push_str(&String::from_utf8_lossy(&data))
            }
            sprite_client::ExecEvent::Exit(code) => panic!("hold exited {code}: {output}"),
            _ => {}
        }
    }
    let response = set_policy(
        &daemon,
        "a",
        serde_json::json!([{"domain": "*.example.org", "action": "allow"}]),
    )
    .await;
    assert_eq!(response.status(), 204);
    let cut_at = std::time::Instant::now();
    let done = collect(hold).await;
    assert!(
        String::from_utf8_lossy(&done.stdout).contains("failed"),
        "{}",
        String::from_utf8_lossy(&done.stdout)
    );
    assert!(
        cut_at.elapsed() < Duration::from_secs(5),
        "the connection lived on for {:?}",
        cut_at.elapsed()
    );

    // Bad rules are refused with what to write instead; an empty list opens it again.
    let response = set_policy(
        &daemon,
        "a",
        serde_json::json!([{"domain": "https://x.com/", "action": "allow"}]),
    )
    .await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("x.com"));
    assert_eq!(
        set_policy(&daemon, "a", serde_json::json!([]))
            .await
            .status(),
        204
    );
    assert_eq!(
        py(&daemon, "a", &["connect", &denied_ip, "8000"]).await,
        "connected"
    );
    dns.abort();
}
