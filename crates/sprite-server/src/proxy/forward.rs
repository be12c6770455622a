//! Forwarding: each client connection keeps a few idle HTTP/1.1 connections to the
//! sprite. A request takes an idle one that is ready or opens a new one, and gives it
//! back as soon as the answer's headers are in, so the requests of an HTTP/2 client
//! proceed side by side: a slow answer never holds up a fast one. No lock is held
//! across an await. An upgrade (WebSocket) keeps its upstream connection for itself.

use super::{page, rewrite, Body, ProxySettings};
use crate::AppState;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sprite_core::CoreError;

/// How many idle upstream connections a client connection keeps (it opens more while
/// more requests are in flight; those close when their answers are done).
const IDLE_UPSTREAMS: usize = 4;

/// One connection to the sprite's HTTP port, and the lease that keeps the sprite awake
/// while it is open.
struct Upstream {
    sprite_id: String,
    sender: SendRequest<Incoming>,
    _lease: sprite_core::proxy::ConnectionLease,
}

/// The idle upstream connections of one client connection.
#[derive(Default)]
pub(super) struct Upstreams {
    idle: parking_lot::Mutex<Vec<Upstream>>,
}

impl Upstreams {
    /// An idle connection to `sprite_id` that can take a request now; closed ones are
    /// dropped on the way.
    fn take(&self, sprite_id: &str) -> Option<Upstream> {
        let mut idle = self.idle.lock();
        idle.retain(|u| !u.sender.is_closed());
        let ready = idle
            .iter()
            .position(|u| u.sprite_id == sprite_id && u.sender.is_ready())?;
        Some(idle.swap_remove(ready))
    }

    /// Gives a connection back once its answer's headers are in (it becomes ready when
    /// the body is done). Beyond [`IDLE_UPSTREAMS`] the oldest that is still busy, or
    /// else this one, closes after its answer.
    fn give_back(&self, upstream: Upstream) {
        let mut idle = self.idle.lock();
        idle.retain(|u| !u.sender.is_closed());
        if idle.len() >= IDLE_UPSTREAMS {
            match idle.iter().position(|u| !u.sender.is_ready()) {
                Some(busy) => {
                    idle.remove(busy);
                }
                None => return,
            }
        }
        idle.push(upstream);
    }
}

/// A new connection to the sprite's HTTP port, waking the sprite if it sleeps.
async fn connect(
    state: &AppState,
    settings: &ProxySettings,
    record: &sprite_core::db::SpriteRecord,
) -> Result<Upstream, Response<Body>> {
    match state
        .manager
        .connect_http(record, settings.wake_timeout)
        .await
    {
        Ok((stream, _port, lease)) => {
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok((sender, connection)) => {
                    tokio::spawn(connection.with_upgrades());
                    Ok(Upstream {
                        sprite_id: record.id.to_string(),
                        sender,
                        _lease: lease,
                    })
                }
                Err(error) => Err(page(
                    StatusCode::BAD_GATEWAY,
                    "Bad gateway",
                    &error.to_string(),
                )),
            }
        }
        Err(error @ CoreError::PortTimeout { .. }) => Err(page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Nothing answered",
            &error.to_string(),
        )),
        Err(error) => Err(page(
            StatusCode::BAD_GATEWAY,
            "The sprite could not be reached",
            &sprite_api::error_chain(&error),
        )),
    }
}

/// Sends `request` (already rewritten for the sprite) and returns the sprite's answer
/// as the client should see it.
pub(super) async fn forward(
    state: &AppState,
    settings: &ProxySettings,
    upstreams: &Upstreams,
    record: &sprite_core::db::SpriteRecord,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let client_upgrade = request
        .headers()
        .contains_key(hyper::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut request));
    // An idle connection may have been closed by the app in the meantime: a request it
    // never sent goes again on a new connection.
    let request = match upstreams.take(&record.id) {
        Some(mut upstream) => match upstream.sender.try_send_request(request).await {
            Ok(response) => return answer(upstreams, upstream, response, client_upgrade),
            Err(mut error) => match error.take_message() {
                Some(unsent) => unsent,
                None => {
                    let error = error.into_error();
                    return page(StatusCode::BAD_GATEWAY, "Bad gateway", &error.to_string());
                }
            },
        },
        None => request,
    };
    let mut upstream = match connect(state, settings, record).await {
        Ok(upstream) => upstream,
        Err(answer) => return answer,
    };
    match upstream.sender.send_request(request).await {
        Ok(response) => answer(upstreams, upstream, response, client_upgrade),
        Err(error) => page(StatusCode::BAD_GATEWAY, "Bad gateway", &error.to_string()),
    }
}

/// The sprite's answer as the client should see it; the upstream connection goes back
/// to the idle ones, or to the upgraded stream.
fn answer(
    upstreams: &Upstreams,
    upstream: Upstream,
    mut response: Response<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    rewrite::from_upstream(&mut response);
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The upstream connection now belongs to the upgraded stream.
        if let Some(client_upgrade) = client_upgrade {
            let server_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                let _keep_awake = upstream;
                join_upgrades(client_upgrade, server_upgrade).await;
            });
        }
    } else {
        upstreams.give_back(upstream);
    }
    response.map(|body| body.boxed())
}

/// Once both sides of an upgrade (a WebSocket) are through, copies between them until
/// either closes.
pub(crate) async fn join_upgrades(
    client: hyper::upgrade::OnUpgrade,
    server: hyper::upgrade::OnUpgrade,
) {
    if let (Ok(client), Ok(server)) = (client.await, server.await) {
        let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(server))
            .await;
    }
}
