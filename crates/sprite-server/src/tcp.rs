//! `WS /v1/sprites/{name}/proxy` (API.md, TCP proxy): the client sends
//! `{"host":"localhost","port":5432}`, the server answers
//! `{"status":"connected","target":"localhost:5432"}`, then raw bytes flow both ways as
//! binary messages (ours: an empty one from the client is its EOF, a half-close). The sprite is woken first and kept awake while the socket is open.

use crate::auth::SpritePath;
use crate::{ApiError, AppState};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use sprite_core::ids::SpriteKey;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a connect waits for a sleeping sprite and its port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, serde::Deserialize)]
struct Target {
    #[serde(default)]
    host: Option<String>,
    port: u16,
}

pub async fn proxy(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    state.manager.check_exists(&key)?;
    Ok(upgrade.on_upgrade(move |socket| async move {
        serve(state, key, socket).await;
    }))
}

/// Most bytes of the target's that go out in one binary message.
pub(crate) const FRAME_BYTES: usize = 64 * 1024;

/// The target's next bytes as a binary message; `None` once it has closed (or failed).
pub(crate) async fn next_frame(
    tcp_in: &mut tokio::net::tcp::OwnedReadHalf,
    buffer: &mut [u8],
) -> Option<Message> {
    match tcp_in.read(buffer).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(Message::Binary(buffer[..n].to_vec().into())),
    }
}

/// The address the proxy connects to for `host`: `localhost` (or nothing) is the
/// sprite's loopback, an unspecified address (`0.0.0.0`, `::`, as `port_opened` shows
/// a server bound to all) its loopback of that family, an IP address itself (the
/// connect checks it is the sprite's own). Host names are not resolved.
pub(crate) fn target_ip(host: &str) -> Result<std::net::IpAddr, String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    if host.is_empty() || host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let trimmed = host.trim_start_matches('[').trim_end_matches(']');
    match trimmed.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_unspecified() => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Ok(IpAddr::V6(ip)) if ip.is_unspecified() => Ok(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        Ok(ip) => Ok(ip),
        Err(_) => Err(format!(
            "host {host:?} is not reachable: give localhost or an IP address of the sprite itself (as port_opened reports it)"
        )),
    }
}

async fn refuse(mut socket: WebSocket, error: String) {
    let body = serde_json::json!({ "status": "error", "error": error }).to_string();
    let _ = socket.send(Message::Text(body.into())).await;
    let _ = socket.close().await;
}

async fn serve(state: AppState, key: SpriteKey, mut socket: WebSocket) {
    let target = match socket.recv().await {
        Some(Ok(Message::Text(text))) => serde_json::from_str::<Target>(&text),
        _ => return,
    };
    let target = match target {
        Ok(target) => target,
        Err(error) => {
            return refuse(
                socket,
                format!("the first message must be {{\"host\":\"localhost\",\"port\":N}}: {error}"),
            )
            .await
        }
    };
    let host = target.host.unwrap_or_else(|| "localhost".into());
    let ip = match target_ip(&host) {
        Ok(ip) => ip,
        Err(message) => return refuse(socket, message).await,
    };
    let (stream, _awake) = match state
        .manager
        .connect_tcp(&key, ip, target.port, CONNECT_TIMEOUT)
        .await
    {
        Ok(connected) => connected,
        Err(error) => return refuse(socket, sprite_api::error_chain(&error)).await,
    };
    let connected = serde_json::json!({
        "status": "connected",
        "target": format!("{host}:{}", target.port),
    })
    .to_string();
    if socket.send(Message::Text(connected.into())).await.is_err() {
        return;
    }
    let (mut tcp_in, mut tcp_out) = stream.into_split();
    let (mut ws_out, mut ws_in) = socket.split();
    let upstream = async {
        while let Some(Ok(message)) = ws_in.next().await {
            let data = match message {
                // Ours: an empty binary message is the client's EOF (a half-close: the
                // answer still flows back).
                Message::Binary(data) if data.is_empty() => break,
                Message::Binary(data) => data.to_vec(),
                Message::Text(text) => text.as_bytes().to_vec(),
                Message::Close(_) => return true,
                _ => continue,
            };
            if tcp_out.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = tcp_out.shutdown().await;
        false
    };
    let downstream = async {
        let mut buffer = vec![0u8; FRAME_BYTES];
        while let Some(frame) = next_frame(&mut tcp_in, &mut buffer).await {
            if ws_out.send(frame).await.is_err() {
                break;
            }
        }
        let _ = ws_out.close().await;
    };
    // The program's end ends the tunnel; the client's EOF only ends its direction,
    // its close ends both.
    tokio::pin!(upstream, downstream);
    tokio::select! {
        () = &mut downstream => {}
        closed = &mut upstream => {
            if !closed {
                downstream.await;
            }
        }
    }
}

/// `WS /v1/sprites/{name}/ports/watch`: `{"type":"port_list","ports":[...]}` first, then
/// `port_opened` / `port_closed` as processes in the sprite start or stop listening.
/// Watching neither wakes the sprite nor keeps it awake.
pub async fn watch_ports(
    State(state): State<AppState>,
    SpritePath(key): SpritePath,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let mut subscription = state.manager.ports().watch(&key)?;
    let ports = state.manager.ports().now(&key).await?;
    Ok(upgrade.on_upgrade(move |mut socket| async move {
        // Each entry as the JS SDK types it: a port_opened notification.
        let ports: Vec<serde_json::Value> = ports
            .iter()
            .map(|p| {
                let mut entry = serde_json::to_value(p).unwrap_or_default();
                entry["type"] = "port_opened".into();
                entry
            })
            .collect();
        let list = serde_json::json!({"type": "port_list", "ports": ports});
        if socket
            .send(Message::Text(list.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
        let mut keepalive = crate::Keepalive::new();
        loop {
            tokio::select! {
                alive = keepalive.ping_due() => {
                    if !alive || socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                        return;
                    }
                }
                event = subscription.recv() => {
                    let Some(event) = event else { return };
                    let message = port_message(&event);
                    if socket.send(Message::Text(message.into())).await.is_err() {
                        return;
                    }
                }
                message = socket.recv() => {
                    keepalive.heard();
                    match message {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                        Some(Ok(_)) => {}
                    }
                }
            }
        }
    }))
}

/// A port event as the exec and ports/watch sockets send it.
pub(crate) fn port_message(event: &sprite_core::ports::PortEvent) -> String {
    use sprite_api::exec::ServerMessage;
    use sprite_core::ports::PortEvent;
    let message = match event.clone() {
        PortEvent::Opened(p) => ServerMessage::PortOpened {
            port: p.port,
            address: p.address,
            pid: p.pid,
        },
        PortEvent::Closed(p) => ServerMessage::PortClosed {
            port: p.port,
            address: p.address,
            pid: p.pid,
        },
    };
    message.to_json()
}
