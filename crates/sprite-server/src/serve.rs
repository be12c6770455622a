//! Accepting connections with bounds, for the API, the URL proxy and each sprite's
//! `api.sock`: a cap on open connections in all and per peer (an IP address, or the
//! sprite whose socket it is), and a deadline for every request's headers, which also
//! ends a kept-alive connection that sends nothing. A refused connection gets a short
//! 503 and is closed at once, so a flood from one peer costs the others nothing and the
//! daemon never runs out of file descriptors.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections in all.
    pub total: usize,
    /// Open connections of one peer.
    pub per_peer: usize,
    /// Longest wait for a request's headers, including the wait for the next request
    /// on a kept-alive connection.
    pub header_timeout: Duration,
}

/// The API on TCP: many clients (CLIs, SDKs, agents), each a few connections at most.
pub const API_LIMITS: Limits = Limits {
    total: 8192,
    per_peer: 1024,
    header_timeout: Duration::from_secs(30),
};

/// One sprite's `api.sock`: its own code, a handful of clients.
pub const SPRITE_SOCKET_LIMITS: Limits = Limits {
    total: 64,
    per_peer: 64,
    header_timeout: Duration::from_secs(10),
};

/// The URL proxy: browsers open several connections per page.
pub const PROXY_LIMITS: Limits = Limits {
    total: 16384,
    per_peer: 1024,
    header_timeout: Duration::from_secs(30),
};

/// Counts open connections, in all and per peer.
#[derive(Debug)]
pub struct Gate<K: Hash + Eq + Clone> {
    limits: Limits,
    open: Mutex<(usize, HashMap<K, usize>)>,
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Admission<K: Hash + Eq + Clone> {
    gate: Arc<Gate<K>>,
    peer: K,
}

impl<K: Hash + Eq + Clone> Gate<K> {
    pub fn new(limits: Limits) -> Arc<Gate<K>> {
        Arc::new(Gate {
            limits,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A place for one more connection of `peer`, if the caps allow it.
    pub fn admit(self: &Arc<Self>, peer: K) -> Option<Admission<K>> {
        let mut open = self.open.lock();
        let (total, per_peer) = &mut *open;
        let count = per_peer.get(&peer).copied().unwrap_or(0);
        if *total >= self.limits.total || count >= self.limits.per_peer {
            return None;
        }
        *total += 1;
        per_peer.insert(peer.clone(), count + 1);
        Some(Admission {
            gate: self.clone(),
            peer,
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.lock().0
    }
}

impl<K: Hash + Eq + Clone> Drop for Admission<K> {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock();
        let (total, per_peer) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(count) = per_peer.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                per_peer.remove(&self.peer);
            }
        }
    }
}

/// The HTTP/1.1 and HTTP/2 server of one connection, with the header deadline.
pub fn http_server(limits: Limits) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(256);
    builder
}

/// Answers a refused connection with a 503 and closes it (never waiting on it long).
pub async fn refuse(mut stream: impl AsyncWrite + Unpin, why: &str) {
    let body = serde_json::json!({ "error": "unavailable", "message": why }).to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// A connection's I/O whose first read must bring bytes within a deadline: the server
/// must learn which protocol a client speaks before hyper's own header deadline
/// applies, and a client that never sends a byte must not hold its place forever.
pub struct FirstByteDeadline<I> {
    inner: I,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<I> FirstByteDeadline<I> {
    pub fn new(inner: I, within: Duration) -> Self {
        FirstByteDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstByteDeadline<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.deadline = None;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = self
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request in time",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstByteDeadline<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The address a TCP connection came from (an extension of its requests).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::IpAddr);

/// Serves `router` on one accepted connection, keeping `admission` until it ends.
/// `peer`: the address a TCP connection came from, given to each request as
/// [`PeerAddr`].
pub fn serve_connection<I, K>(
    stream: I,
    router: Router,
    admission: Admission<K>,
    peer: Option<std::net::IpAddr>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    let limits = admission.gate.limits();
    tokio::spawn(async move {
        let _admission = admission;
        let router = tower::ServiceExt::map_request(
            router,
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                if let Some(ip) = peer {
                    request.extensions_mut().insert(PeerAddr(ip));
                }
                request
            },
        );
        let service = hyper_util::service::TowerToHyperService::new(router);
        let stream = FirstByteDeadline::new(stream, limits.header_timeout);
        let _ = http_server(limits)
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .await;
    });
}

/// Serves the API on `listener` until `shutdown` resolves, within `limits` per peer
/// address; then waits up to 5 s for the requests in flight.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let gate = Gate::new(limits);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, say: pause instead of spinning.
                tracing::warn!("accept: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small exec frames must not wait for delayed ACKs (Nagle adds ~40 ms per exec).
        let _ = stream.set_nodelay(true);
        match gate.admit(peer.ip()) {
            Some(admission) => serve_connection(stream, router.clone(), admission, Some(peer.ip())),
            None => {
                tracing::debug!(%peer, "connection refused: too many open");
                tokio::spawn(refuse(
                    stream,
                    "too many open connections from this address; close some and retry",
                ));
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gate.open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_in_all_and_per_peer_and_places_come_back() {
        let gate = Gate::new(Limits {
            total: 3,
            per_peer: 2,
            header_timeout: Duration::from_secs(1),
        });
        let a1 = gate.admit("a").expect("first");
        let _a2 = gate.admit("a").expect("second");
        assert!(gate.admit("a").is_none(), "per peer");
        let _b1 = gate.admit("b").expect("another peer");
        assert!(gate.admit("c").is_none(), "in all");
        drop(a1);
        assert_eq!(gate.open(), 2);
        assert!(gate.admit("a").is_some(), "a place came back");
    }
}
