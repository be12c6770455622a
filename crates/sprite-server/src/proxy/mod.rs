//! The URL proxy: `http://<name>.<domain>:<port>/` goes to port 8080 in the sprite (or
//! the port of its service with `http_port`). HTTP/1.1 and HTTP/2 (h2c) from clients,
//! WebSocket and other upgrades, streaming bodies both ways, `X-Forwarded-*`. A sprite
//! that sleeps is woken and the request held until its port answers; each client
//! connection keeps the sprite awake while open. `url_settings.auth = "sprite"` wants a
//! token of the sprite's organization in `Authorization`, or the `sprite_auth` cookie
//! that `?token=` sets once (with a redirect). The cookie is never the token: it is a
//! capability for that one sprite, expiring, signed with the daemon's secret (HMAC),
//! host-only, `HttpOnly`, `Secure` under TLS. A request that carries it from another
//! origin (`Origin` not the sprite's own: another sprite's page on the same domain) is
//! refused, and a WebSocket upgrade on the cookie needs the sprite's own `Origin`.
//! `token` never reaches the app (public sprites included), nor do our cookies, and an
//! app cannot set them.

mod auth;
pub(crate) mod forward;
mod rewrite;
mod tls;

pub use auth::{CookieKey, AUTH_COOKIE, COOKIE_LIFETIME};
pub use tls::{tls_acceptor, TlsError};

use crate::AppState;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

type Body = BoxBody<Bytes, hyper::Error>;

/// Settings of the proxy.
#[derive(Clone)]
pub struct ProxySettings {
    /// Sprites are `<name>.<domain>`.
    pub domain: String,
    /// How long a request waits for a sleeping sprite to wake and its port to answer.
    pub wake_timeout: Duration,
    /// HTTPS instead of HTTP (ALPN offers h2 and http/1.1), from [`tls_acceptor`].
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Signs the `sprite_auth` cookies ([`CookieKey::load`]).
    pub cookies: CookieKey,
}

impl std::fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxySettings")
            .field("domain", &self.domain)
            .field("wake_timeout", &self.wake_timeout)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Where a request was sent: the `Host` it named, the scheme it came over, and the
/// sprite name in that host.
pub(super) struct Target<'a> {
    pub host: &'a str,
    pub scheme: &'static str,
    pub name: &'a str,
}

/// One client connection: its idle upstream connections, and the sprite record its
/// last request named.
struct ClientConnection {
    peer: SocketAddr,
    upstreams: forward::Upstreams,
    /// The sprite the last request named, and when it was looked up: requests on a
    /// kept-alive connection skip the database for [`RECORD_REUSE`].
    record: parking_lot::Mutex<Option<(String, sprite_core::db::SpriteRecord, std::time::Instant)>>,
}

/// How long a connection reuses the sprite record it looked up (so a change of the
/// URL's auth reaches open connections within this time).
const RECORD_REUSE: Duration = Duration::from_secs(1);

impl ClientConnection {
    fn record(&self, state: &AppState, name: &str) -> Option<sprite_core::db::SpriteRecord> {
        let mut cached = self.record.lock();
        if let Some((cached_name, record, at)) = cached.as_ref() {
            if cached_name == name && at.elapsed() < RECORD_REUSE {
                return Some(record.clone());
            }
        }
        let record = state.manager.sprite_for_url(name).ok()?;
        *cached = Some((name.to_string(), record.clone(), std::time::Instant::now()));
        Some(record)
    }
}

fn page(status: StatusCode, title: &str, text: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>{title}</title>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\">\
         <h1>{title}</h1><p>{text}</p></body>\n"
    );
    let mut response = Response::new(Full::new(Bytes::from(html)).map_err(|e| match e {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// Serves sprite URLs on `listener` until the daemon stops.
pub async fn serve_proxy(
    state: AppState,
    listener: tokio::net::TcpListener,
    settings: ProxySettings,
) {
    let settings = Arc::new(settings);
    let gate = crate::serve::Gate::new(crate::serve::PROXY_LIMITS);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!("proxy accept: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(admission) = gate.admit(peer.ip()) else {
            tracing::debug!(%peer, "proxy connection refused: too many open");
            tokio::spawn(crate::serve::refuse(
                stream,
                "too many open connections from this address; close some and retry",
            ));
            continue;
        };
        let state = state.clone();
        let settings = settings.clone();
        tokio::spawn(async move {
            let _admission = admission;
            serve_connection(state, settings, stream, peer).await;
        });
    }
}

/// Serves one client connection (TLS first, if configured) until it closes.
async fn serve_connection(
    state: AppState,
    settings: Arc<ProxySettings>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let tls = settings.tls.clone();
    let connection = Arc::new(ClientConnection {
        peer,
        upstreams: forward::Upstreams::default(),
        record: parking_lot::Mutex::new(None),
    });
    let service = hyper::service::service_fn(move |request| {
        let (state, settings, connection) = (state.clone(), settings.clone(), connection.clone());
        async move {
            Ok::<_, std::convert::Infallible>(handle(&state, &settings, &connection, request).await)
        }
    });
    let builder = crate::serve::http_server(crate::serve::PROXY_LIMITS);
    let header_timeout = crate::serve::PROXY_LIMITS.header_timeout;
    match &tls {
        None => {
            let stream = crate::serve::FirstByteDeadline::new(stream, header_timeout);
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        }
        Some(acceptor) => {
            let tls =
                match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, "TLS handshake failed: {error}");
                        return;
                    }
                    Err(_) => return,
                };
            let tls = crate::serve::FirstByteDeadline::new(tls, header_timeout);
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
        }
    }
}

/// The sprite name in a `Host` (or HTTP/2 `:authority`).
fn sprite_name<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = host.strip_suffix(domain)?.strip_suffix('.')?;
    (!name.is_empty() && !name.contains('.')).then_some(name)
}

/// One request: which sprite, whether it may pass, then on to the sprite.
async fn handle(
    state: &AppState,
    settings: &ProxySettings,
    connection: &ClientConnection,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let Some(name) = sprite_name(&host, &settings.domain) else {
        return page(
            StatusCode::NOT_FOUND,
            "Not a sprite address",
            &format!(
                "Sprites are served at http://NAME.{}/ on this port.",
                settings.domain
            ),
        );
    };
    let Some(record) = connection.record(state, name) else {
        // Another host of the cluster may hold it: the request goes there as it is.
        if let Some((peers, peer)) = state
            .peers
            .as_ref()
            .filter(|_| !request.headers().contains_key(crate::peers::FORWARDED_BY))
            .and_then(|peers| Some((peers, peers.owner_by_name(name)?)))
        {
            return match state
                .peer_client
                .forward(
                    &peer.proxy,
                    peers.host_id(),
                    request.map(axum::body::Body::new),
                )
                .await
            {
                Ok(response) => response.map(|body| body.boxed()),
                Err(error) => page(
                    StatusCode::BAD_GATEWAY,
                    "The sprite's host did not answer",
                    &format!("{name} lives on host {}: {error}", peer.id),
                ),
            };
        }
        return page(
            StatusCode::NOT_FOUND,
            "No such sprite",
            &format!("There is no sprite named {name} here."),
        );
    };
    let target = Target {
        host: &host,
        scheme,
        name,
    };
    let guarded = auth::Guarded {
        sprite_id: &record.id,
        public: record.url_auth == sprite_api::sprite::UrlAuth::Public,
    };
    let valid = |token: &str| state.tokens.org_of(token) == Some(record.org.as_str());
    let access = match auth::authorize(
        settings,
        &guarded,
        &target,
        &request,
        valid,
        auth::unix_now(),
    ) {
        auth::Verdict::Forward(access) => access,
        auth::Verdict::Answer(response) => return response,
    };
    rewrite::to_upstream(&mut request, &access, connection.peer.ip(), &target);
    forward::forward(state, settings, &connection.upstreams, &record, request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_sprites() {
        assert_eq!(sprite_name("dev.localhost:7080", "localhost"), Some("dev"));
        assert_eq!(sprite_name("dev.localhost", "localhost"), Some("dev"));
        assert_eq!(
            sprite_name("my-app.sprites.example.com", "sprites.example.com"),
            Some("my-app")
        );
        assert_eq!(sprite_name("localhost:7080", "localhost"), None);
        assert_eq!(sprite_name("a.b.localhost", "localhost"), None);
        assert_eq!(sprite_name("devlocalhost", "localhost"), None);
        assert_eq!(sprite_name("dev.example.com", "localhost"), None);
    }
}
