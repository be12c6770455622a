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

use crate::auth::token_from_header;
use crate::AppState;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, COOKIE, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sprite_core::CoreError;
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

/// The cookie a `?token=` sign-in sets.
pub const AUTH_COOKIE: &str = "sprite_auth";
/// The cookie that held the token itself before `sprite_auth` (never accepted, always
/// stripped).
const OLD_COOKIE: &str = "sprite_token";
/// How long a `sprite_auth` cookie is good for.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The daemon's key for `sprite_auth` cookies: HMAC-SHA256 over the sprite id and the
/// expiry, so a cookie works for one sprite, until it expires, and cannot be made
/// without the key (which never leaves the daemon's data directory).
#[derive(Clone)]
pub struct CookieKey(ring::hmac::Key);

impl CookieKey {
    /// The key in `path` (32 random bytes, mode 0600), made on first use.
    pub fn load(path: &std::path::Path) -> std::io::Result<CookieKey> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let bytes = match std::fs::read(path) {
            Ok(bytes) if bytes.len() >= 32 => bytes,
            _ => {
                let mut bytes = vec![0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                    .map_err(|_| std::io::Error::other("no random bytes for the cookie key"))?;
                let temporary = path.with_extension("new");
                std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&temporary)?
                    .write_all(&bytes)?;
                std::fs::rename(&temporary, path)?;
                bytes
            }
        };
        Ok(CookieKey::from_bytes(&bytes))
    }

    pub fn from_bytes(bytes: &[u8]) -> CookieKey {
        CookieKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes))
    }

    fn message(sprite_id: &str, expires: u64) -> String {
        format!("sprite_auth v1|{sprite_id}|{expires}")
    }

    /// A cookie value for `sprite_id`, good until `expires` (Unix seconds).
    pub fn issue(&self, sprite_id: &str, expires: u64) -> String {
        use base64::Engine;
        let tag = ring::hmac::sign(&self.0, Self::message(sprite_id, expires).as_bytes());
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref());
        format!("v1.{expires}.{tag}")
    }

    /// Whether `value` is a cookie this key issued for `sprite_id` that has not expired
    /// at `now` (Unix seconds). The tag is checked in constant time.
    pub fn verify(&self, value: &str, sprite_id: &str, now: u64) -> bool {
        use base64::Engine;
        let mut parts = value.splitn(3, '.');
        let (Some("v1"), Some(expires), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let (Ok(expires), Ok(tag)) = (
            expires.parse::<u64>(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tag),
        ) else {
            return false;
        };
        expires > now
            && ring::hmac::verify(&self.0, Self::message(sprite_id, expires).as_bytes(), &tag)
                .is_ok()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

/// Why the proxy's certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read the certificate chain {0}")]
    Certificates(std::path::PathBuf, #[source] rustls_pki_types::pem::Error),
    #[error("{0} holds no certificate (it must be a PEM file with BEGIN CERTIFICATE blocks)")]
    NoCertificate(std::path::PathBuf),
    #[error("read the private key {0}")]
    Key(std::path::PathBuf, #[source] rustls_pki_types::pem::Error),
    #[error("the certificate and key do not make a TLS configuration")]
    Config(#[source] tokio_rustls::rustls::Error),
}

/// A TLS acceptor for the URL proxy from PEM files: the certificate chain (leaf
/// first) and its private key (PKCS#8, PKCS#1 or SEC1). ALPN offers HTTP/2 first.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificates(cert.to_path_buf(), e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key(key.to_path_buf(), e))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One client connection: the upstream connection it uses, and what keeps the sprite
/// awake while it is open.
struct ClientConnection {
    peer: SocketAddr,
    upstream: tokio::sync::Mutex<Option<Upstream>>,
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

struct Upstream {
    sprite_id: String,
    sender: hyper::client::conn::http1::SendRequest<Incoming>,
    _lease: sprite_core::proxy::ConnectionLease,
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
        let tls = settings.tls.clone();
        tokio::spawn(async move {
            let _admission = admission;
            let connection = Arc::new(ClientConnection {
                peer,
                upstream: tokio::sync::Mutex::new(None),
                record: parking_lot::Mutex::new(None),
            });
            let service = hyper::service::service_fn(move |request| {
                let (state, settings, connection) =
                    (state.clone(), settings.clone(), connection.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(
                        handle(&state, &settings, &connection, request).await,
                    )
                }
            });
            let builder = crate::serve::http_server(crate::serve::PROXY_LIMITS);
            match &tls {
                None => {
                    let stream = crate::serve::FirstByteDeadline::new(
                        stream,
                        crate::serve::PROXY_LIMITS.header_timeout,
                    );
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {error}");
                            return;
                        }
                        Err(_) => return,
                    };
                    let tls = crate::serve::FirstByteDeadline::new(
                        tls,
                        crate::serve::PROXY_LIMITS.header_timeout,
                    );
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .await;
                }
            }
        });
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

/// The values of the cookies named `name` in a request.
fn cookie_values(request: &Request<Incoming>, name: &str) -> Vec<String> {
    request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().to_string())
        .collect()
}

/// Whether a cookie pair (`name=value`) is one of ours.
fn is_our_cookie(pair: &str) -> bool {
    let name = pair.split('=').next().unwrap_or_default().trim();
    name.eq_ignore_ascii_case(AUTH_COOKIE) || name.eq_ignore_ascii_case(OLD_COOKIE)
}

/// The `token` of the query, if any, and the path and query without it.
fn query_token(request: &Request<Incoming>) -> Option<(String, String)> {
    let query = request.uri().query()?;
    let mut token = None;
    let rest: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .filter_map(|(k, v)| {
            if k == "token" {
                token = Some(v.into_owned());
                None
            } else {
                Some((k.into_owned(), v.into_owned()))
            }
        })
        .collect();
    let rest = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(rest)
        .finish();
    let path = request.uri().path();
    let location = if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{rest}")
    };
    token.map(|t| (t, location))
}

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
    let record = match connection.record(state, name) {
        Some(record) => record,
        None => {
            return page(
                StatusCode::NOT_FOUND,
                "No such sprite",
                &format!("There is no sprite named {name} here."),
            )
        }
    };

    // Auth: a token of the sprite's organization, unless its URL is public.
    let header_token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(token_from_header);
    let valid = |token: &str| state.tokens.org_of(token) == Some(record.org.as_str());
    let query = query_token(&request);
    if record.url_auth != "public" {
        if let Some((token, location)) = &query {
            if valid(token) {
                return signed_in(settings, &record.id, location);
            }
        }
        let by_header = header_token.as_deref().is_some_and(valid);
        let now = unix_now();
        let by_cookie = !by_header
            && cookie_values(&request, AUTH_COOKIE)
                .iter()
                .any(|value| settings.cookies.verify(value, &record.id, now));
        if !by_header && !by_cookie {
            return page(
                StatusCode::UNAUTHORIZED,
                "Sign in needed",
                &format!(
                    "This sprite's URL needs a token: send <code>Authorization: Bearer TOKEN</code>, \
                     or open <code>{scheme}://{host}/?token=TOKEN</code> once in a browser. \
                     <code>sprite url update --auth public -s {name}</code> makes it public."
                ),
            );
        }
        // A cookie rides along on any request the browser makes to this host, also
        // from another sprite's page on the same domain: only the sprite's own pages
        // may use it, and a WebSocket on it must say where it comes from.
        if by_cookie {
            let own = format!("{scheme}://{host}");
            let origin = request
                .headers()
                .get(hyper::header::ORIGIN)
                .map(|o| o.to_str().unwrap_or_default());
            let upgrade = request.headers().contains_key(hyper::header::UPGRADE);
            let allowed = match origin {
                Some(origin) => same_host(origin, &host),
                None => !upgrade,
            };
            if !allowed {
                return page(
                    StatusCode::FORBIDDEN,
                    "Not from this sprite",
                    &format!(
                        "This request carries the sign-in cookie of {own} but comes from {}; \
                         only the sprite's own pages may use it (send a token in \
                         <code>Authorization</code> from elsewhere).",
                        origin.unwrap_or("a page that does not say where it is")
                    ),
                );
            }
        }
    }

    // Our credentials stay here: the app in the sprite sees neither.
    if header_token.as_deref().is_some_and(valid) {
        request.headers_mut().remove(AUTHORIZATION);
    }
    if let Some((_, location)) = query {
        if let Ok(uri) = location.parse::<hyper::Uri>() {
            *request.uri_mut() = uri;
        }
    }
    let cookies: Vec<String> = request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !is_our_cookie(pair) && !pair.is_empty())
        .map(str::to_string)
        .collect();
    request.headers_mut().remove(COOKIE);
    if let Ok(value) = HeaderValue::from_str(&cookies.join("; ")) {
        if !cookies.is_empty() {
            request.headers_mut().insert(COOKIE, value);
        }
    }
    let headers = request.headers_mut();
    let forwarded_for = connection.peer.ip().to_string();
    for (name, value) in [
        ("x-forwarded-for", forwarded_for.as_str()),
        ("x-forwarded-host", host.as_str()),
        ("x-forwarded-proto", scheme),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(&host) {
        headers.insert(HOST, value);
    }
    // Upstream is HTTP/1.1 whatever the client spoke; origin-form URI.
    *request.version_mut() = hyper::Version::HTTP_11;
    if let Some(path) = request.uri().path_and_query().cloned() {
        if let Ok(uri) = hyper::Uri::builder().path_and_query(path).build() {
            *request.uri_mut() = uri;
        }
    }

    let mut upstream = connection.upstream.lock().await;
    // An upstream still streaming an earlier answer (HTTP/2 clients send requests
    // side by side on one connection) is not ready: this request gets a new one.
    let reusable = upstream
        .as_ref()
        .is_some_and(|u| u.sprite_id == record.id && !u.sender.is_closed() && u.sender.is_ready());
    if !reusable {
        *upstream = None;
        match state
            .manager
            .connect_http(&record, settings.wake_timeout)
            .await
        {
            Ok((stream, _port, awake)) => {
                match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                    Ok((sender, conn)) => {
                        tokio::spawn(conn.with_upgrades());
                        *upstream = Some(Upstream {
                            sprite_id: record.id.clone(),
                            sender,
                            _lease: awake,
                        });
                    }
                    Err(error) => {
                        return page(StatusCode::BAD_GATEWAY, "Bad gateway", &format!("{error}"))
                    }
                }
            }
            Err(error @ CoreError::PortTimeout { .. }) => {
                return page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Nothing answered",
                    &error.to_string(),
                )
            }
            Err(error) => {
                return page(
                    StatusCode::BAD_GATEWAY,
                    "The sprite could not be reached",
                    &sprite_api::error_chain(&error),
                )
            }
        }
    }
    let Some(current) = upstream.as_mut() else {
        return page(
            StatusCode::BAD_GATEWAY,
            "Bad gateway",
            "no upstream connection",
        );
    };
    let wants_upgrade = request.headers().contains_key(hyper::header::UPGRADE);
    if !wants_upgrade {
        for name in ["connection", "keep-alive", "proxy-connection"] {
            request.headers_mut().remove(name);
        }
    }
    let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut request));
    let response = current.sender.send_request(request).await;
    let mut response = match response {
        Ok(response) => response,
        Err(error) => {
            *upstream = None;
            return page(StatusCode::BAD_GATEWAY, "Bad gateway", &format!("{error}"));
        }
    };
    // The app cannot set (or clear) our cookies.
    let kept: Vec<HeaderValue> = response
        .headers()
        .get_all(hyper::header::SET_COOKIE)
        .iter()
        .filter(|value| !is_our_cookie(value.to_str().unwrap_or_default()))
        .cloned()
        .collect();
    if response.headers().contains_key(hyper::header::SET_COOKIE) {
        response.headers_mut().remove(hyper::header::SET_COOKIE);
        for value in kept {
            response
                .headers_mut()
                .append(hyper::header::SET_COOKIE, value);
        }
    }
    // Hop-by-hop headers are the upstream connection's, not the client's: a server
    // that closes after each answer must not close the client's connection.
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        for name in ["connection", "keep-alive", "proxy-connection"] {
            response.headers_mut().remove(name);
        }
    }
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The upstream connection now belongs to the upgraded stream.
        let taken = upstream.take();
        if let Some(client_upgrade) = client_upgrade {
            let server_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                let _keep_awake = taken;
                if let (Ok(client), Ok(server)) = (client_upgrade.await, server_upgrade.await) {
                    let _ = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(client),
                        &mut TokioIo::new(server),
                    )
                    .await;
                }
            });
        }
    }
    response.map(|body| body.boxed())
}

/// Whether an `Origin` names the host a request came to (its scheme aside: behind a
/// TLS front proxy the browser's origin is https while this proxy speaks http).
fn same_host(origin: &str, host: &str) -> bool {
    origin
        .split_once("://")
        .is_some_and(|(_, origin_host)| origin_host.eq_ignore_ascii_case(host))
}

/// The answer to a `?token=` sign-in: the signed cookie, and a redirect to the same
/// page without the token.
fn signed_in(settings: &ProxySettings, sprite_id: &str, location: &str) -> Response<Body> {
    let mut response = page(StatusCode::FOUND, "Signed in", "Redirecting…");
    let secure = if settings.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let lifetime = COOKIE_LIFETIME.as_secs();
    let value = settings.cookies.issue(sprite_id, unix_now() + lifetime);
    let cookie = format!(
        "{AUTH_COOKIE}={value}; HttpOnly; SameSite=Lax; Path=/; Max-Age={lifetime}{secure}"
    );
    if let (Ok(cookie), Ok(location)) = (
        HeaderValue::from_str(&cookie),
        HeaderValue::from_str(location),
    ) {
        response
            .headers_mut()
            .insert(hyper::header::SET_COOKIE, cookie);
        response
            .headers_mut()
            .insert(hyper::header::LOCATION, location);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_for_one_sprite_until_they_expire_and_cannot_be_forged() {
        let key = CookieKey::from_bytes(&[7; 32]);
        let cookie = key.issue("sprite-a", 1000);
        assert!(key.verify(&cookie, "sprite-a", 999));
        assert!(!key.verify(&cookie, "sprite-a", 1000), "expired");
        assert!(!key.verify(&cookie, "sprite-b", 999), "another sprite");
        assert!(
            !CookieKey::from_bytes(&[8; 32]).verify(&cookie, "sprite-a", 999),
            "another key"
        );
        let later = cookie.replacen("1000", "9999", 1);
        assert!(
            !key.verify(&later, "sprite-a", 999),
            "a longer life is not forged"
        );
        for bad in ["", "v1", "v1.x.y", "v2.1000.AAAA", "v1.1000.!!!"] {
            assert!(!key.verify(bad, "sprite-a", 1), "{bad:?}");
        }
        assert!(same_host(
            "https://app.localhost:7080",
            "app.localhost:7080"
        ));
        assert!(!same_host(
            "http://evil.localhost:7080",
            "app.localhost:7080"
        ));
        assert!(!same_host("null", "app.localhost:7080"));
        assert!(is_our_cookie("sprite_auth=x; Path=/"));
        assert!(is_our_cookie(" SPRITE_TOKEN=x"));
        assert!(!is_our_cookie("session=sprite_auth"));
    }

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
