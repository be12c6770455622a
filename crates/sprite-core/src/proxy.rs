//! What the URL proxy needs from the lifecycle: which sprite a host name means, and a
//! connection to its HTTP port, waking it first and waiting for the port to answer.

use crate::activity::{ActivityGuard, Reason};
use crate::db::SpriteRecord;
use crate::error::CoreError;
use crate::ids::SpriteKey;
use crate::manager::SpriteManager;
use std::time::{Duration, Instant};

/// The port a sprite's URL goes to when no service claims one.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// How long a looked-up `http_port` is reused.
const PORT_CACHE: Duration = Duration::from_secs(2);
/// Most connections into one sprite at once (URL proxy and TCP proxy together): a
/// sprite drowned in clients (or one whose clients never leave) takes no more of the
/// daemon's descriptors than this.
pub use crate::slots::MAX_CONNECTIONS_PER_SPRITE;

/// What a connection into a sprite holds for as long as it is open: the sprite stays
/// awake, and one of its [`MAX_CONNECTIONS_PER_SPRITE`] places is taken.
#[derive(Debug)]
pub struct ConnectionLease {
    _awake: ActivityGuard,
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl SpriteManager {
    /// The sprite a URL names (`<name>.<domain>`), in any organization (the oldest if
    /// several share the name).
    pub fn sprite_for_url(&self, name: &str) -> Result<SpriteRecord, CoreError> {
        self.db
            .find_by_name(name)?
            .ok_or_else(|| CoreError::SpriteNotFound(name.to_string()))
    }

    /// The port the sprite's URL goes to: its service with `http_port`, else 8080.
    async fn http_port(&self, record: &SpriteRecord) -> u16 {
        let slot = self.lifecycle.slots.get(&record.id);
        if let Some((port, at)) = *slot.http_port.lock() {
            if at.elapsed() < PORT_CACHE {
                return port;
            }
        }
        let services = match self.services(&record.key()).await {
            Ok(services) => services.list().await,
            Err(error) => Err(error),
        };
        let port = match services {
            Ok(services) => services
                .iter()
                .find_map(|s| s.spec.http_port)
                .unwrap_or(DEFAULT_HTTP_PORT),
            Err(_) => DEFAULT_HTTP_PORT,
        };
        *slot.http_port.lock() = Some((port, Instant::now()));
        port
    }

    /// Wakes the sprite and connects to its HTTP port, retrying until `timeout` while
    /// the server inside comes up. The guard keeps the sprite awake (hold it for as
    /// long as the client's connection lasts).
    pub async fn connect_http(
        &self,
        record: &SpriteRecord,
        timeout: Duration,
    ) -> Result<(tokio::net::TcpStream, u16, ConnectionLease), CoreError> {
        let deadline = Instant::now() + timeout;
        let place = self.connection_place(record)?;
        let guard = self.lifecycle.wake_record(record, Reason::Proxy).await?;
        let port = self.http_port(record).await;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let stream = self.connect_port(record, port, remaining).await?;
        Ok((
            stream,
            port,
            ConnectionLease {
                _awake: guard,
                _place: place,
            },
        ))
    }

    /// One of the sprite's connection places, or a clear refusal.
    fn connection_place(
        &self,
        record: &SpriteRecord,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, CoreError> {
        let places = self.lifecycle.slots.get(&record.id).places.clone();
        places
            .try_acquire_owned()
            .map_err(|_| CoreError::TooManyConnections {
                sprite: record.name.clone(),
                limit: MAX_CONNECTIONS_PER_SPRITE,
            })
    }

    /// The TCP proxy's connection: wakes the sprite (the guard keeps it awake) and
    /// connects to `port` on its loopback, retrying until `timeout`.
    pub async fn connect_tcp(
        &self,
        key: &SpriteKey,
        ip: std::net::IpAddr,
        port: u16,
        timeout: Duration,
    ) -> Result<(tokio::net::TcpStream, ConnectionLease), CoreError> {
        let record = self.record(key)?;
        let place = self.connection_place(&record)?;
        let guard = self.lifecycle.wake_record(&record, Reason::Proxy).await?;
        let stream = self.connect_port_at(&record, ip, port, timeout).await?;
        Ok((
            stream,
            ConnectionLease {
                _awake: guard,
                _place: place,
            },
        ))
    }

    /// Connects to `port` on the sprite's loopback (it must be awake), retrying until
    /// `timeout` while nothing answers yet.
    async fn connect_port(
        &self,
        record: &SpriteRecord,
        port: u16,
        timeout: Duration,
    ) -> Result<tokio::net::TcpStream, CoreError> {
        let loopback = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        self.connect_port_at(record, loopback, port, timeout).await
    }

    /// [`Self::connect_port`] to `ip`, an address of the sprite itself; another
    /// address is refused at once.
    async fn connect_port_at(
        &self,
        record: &SpriteRecord,
        ip: std::net::IpAddr,
        port: u16,
        timeout: Duration,
    ) -> Result<tokio::net::TcpStream, CoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = async {
                let init = self.lifecycle.pinned_init(record)?;
                let connected = tokio::task::spawn_blocking(move || {
                    sprite_sandbox::connect_in_sprite_at(&init, ip, port, Duration::from_secs(1))
                        .and_then(|stream| {
                            stream.set_nonblocking(true)?;
                            Ok(stream)
                        })
                })
                .await
                .map_err(|e| CoreError::Task("connect", e))?;
                Ok::<_, CoreError>(connected)
            };
            match attempt.await? {
                Ok(stream) => {
                    let stream = tokio::net::TcpStream::from_std(stream).map_err(|source| {
                        CoreError::Io {
                            what: "adopt a connection to",
                            path: format!("{}:{port}", record.name).into(),
                            source,
                        }
                    })?;
                    return Ok(stream);
                }
                Err(error) if error.kind() == std::io::ErrorKind::AddrNotAvailable => {
                    return Err(CoreError::NotSpriteAddress {
                        sprite: record.name.clone(),
                        address: format!("{ip}:{port}"),
                    });
                }
                Err(error) if Instant::now() < deadline => {
                    tracing::debug!(sprite = %record.name, port, "not answering yet: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => {
                    return Err(CoreError::PortTimeout {
                        sprite: record.name.clone(),
                        port,
                        seconds: timeout.as_secs(),
                    })
                }
            }
        }
    }
}
