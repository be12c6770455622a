//! `sprite proxy`: local ports forwarded to ports in a sprite, or stdin/stdout to one
//! (`-W host:port`, usable as an ssh ProxyCommand). Each connection is a WebSocket
//! tunnel (`WS /v1/sprites/{name}/proxy`), which wakes the sprite.

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use sprite_client::{Client, Tunnel, TunnelMessage as Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Parses `PORT` or `LOCAL:REMOTE`.
pub fn parse_forward(text: &str) -> Result<(u16, u16)> {
    let parse = |part: &str| {
        part.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("{text:?} is not PORT or LOCAL:REMOTE (ports 1 to 65535)"))
    };
    match text.split_once(':') {
        Some((local, remote)) => Ok((parse(local)?, parse(remote)?)),
        None => Ok((parse(text)?, parse(text)?)),
    }
}

/// Copies bytes between a local stream and a tunnel until either side ends.
async fn pump(
    tunnel: Tunnel,
    mut input: impl AsyncRead + Unpin,
    mut output: impl AsyncWrite + Unpin,
) -> Result<()> {
    let (mut sink, mut stream) = tunnel.split();
    let up = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match input.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buffer[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        // Our EOF: an empty message (the answer keeps coming until the program closes).
        let _ = sink.send(Message::Binary(Vec::new().into())).await;
    };
    let down = async {
        while let Some(Ok(message)) = stream.next().await {
            let data = match message {
                Message::Binary(data) => data.to_vec(),
                Message::Text(text) => text.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if output.write_all(&data).await.is_err() {
                break;
            }
            let _ = output.flush().await;
        }
    };
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut down => {}
        () = &mut up => down.await,
    }
    Ok(())
}

/// `-W host:port`: this process's stdin and stdout are the connection.
pub async fn stdio(client: &Client, sprite: &str, target: &str) -> Result<u8> {
    let Some((host, port)) = target.rsplit_once(':') else {
        bail!("-W {target:?} is not HOST:PORT (like localhost:22)");
    };
    let port: u16 = port
        .parse()
        .with_context(|| format!("-W {target:?}: {port:?} is not a port"))?;
    let tunnel = client.tcp_tunnel(sprite, host, port).await?;
    pump(tunnel, tokio::io::stdin(), tokio::io::stdout()).await?;
    Ok(0)
}

/// Listens on each local port and tunnels every connection to its port in the sprite,
/// until interrupted.
pub async fn forward(client: &Client, sprite: &str, forwards: &[(u16, u16)]) -> Result<u8> {
    let mut tasks = Vec::new();
    for (local, remote) in forwards.iter().copied() {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", local))
            .await
            .with_context(|| format!("listen on 127.0.0.1:{local} (is it in use?)"))?;
        eprintln!("127.0.0.1:{local} → {sprite}:{remote}");
        let client = client.clone();
        let sprite = sprite.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((connection, _)) = listener.accept().await else {
                    continue;
                };
                let client = client.clone();
                let sprite = sprite.clone();
                tokio::spawn(async move {
                    match client.tcp_tunnel(&sprite, "localhost", remote).await {
                        Ok(tunnel) => {
                            let (input, output) = connection.into_split();
                            let _ = pump(tunnel, input, output).await;
                        }
                        Err(error) => eprintln!("{sprite}:{remote}: {error}"),
                    }
                });
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse() {
        assert_eq!(parse_forward("5432").expect("port"), (5432, 5432));
        assert_eq!(parse_forward("8000:3000").expect("ports"), (8000, 3000));
        assert!(parse_forward("0").is_err());
        assert!(parse_forward("a:b").is_err());
        assert!(parse_forward("70000").is_err());
    }
}
