//! Typed client of the sprite daemon's API, used by the CLI and the end-to-end tests.
//! Speaks the same wire as the official Sprites SDKs. Must not depend on the server or
//! the core crates.
#![forbid(unsafe_code)]

use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use sprite_api::exec::{ClientMessage, ExecParams, Frame, ServerMessage, SessionInfo, SessionList};
use sprite_api::services::{ServiceEvent, ServiceInfo, ServiceSignal, ServiceSpec};
use sprite_api::sprite::{
    CheckpointInfo, CreateSpriteRequest, ProgressEvent, SpriteInfo, SpriteList, UpdateSpriteRequest,
};
use sprite_api::ErrorBody;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub use tokio_tungstenite::tungstenite::Message as TunnelMessage;

/// A WebSocket to the daemon (a TCP tunnel from [`Client::tcp_tunnel`]: binary messages
/// carry the bytes).
pub type Tunnel =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the sprite daemon at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the daemon")]
    Decode(#[source] reqwest::Error),
    #[error("websocket")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("invalid url {0}")]
    Url(String),
    #[error("the connection closed before the command's exit status arrived")]
    ClosedBeforeExit,
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Sends `message` as the first text frame of a WebSocket and answers the server's
/// first text frame, as JSON (pings and pongs on the way are skipped).
async fn first_answer(
    socket: &mut Tunnel,
    message: &serde_json::Value,
) -> Result<serde_json::Value, ClientError> {
    socket
        .send(Message::Text(message.to_string().into()))
        .await?;
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                return Ok(serde_json::from_str(&text).unwrap_or_default())
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Err(error)) => return Err(error.into()),
            _ => return Err(ClientError::ClosedBeforeExit),
        }
    }
}

/// A connection to one daemon with one token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// An event of a running exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    SessionInfo {
        session_id: String,
        tty: bool,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
    /// Any other text frame (port events...).
    Text(String),
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An exec or attach WebSocket.
#[derive(Debug)]
pub struct ExecStream {
    sender: ExecSender,
    receiver: ExecReceiver,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Self {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.send_raw(request).await?;
        response.json().await.map_err(ClientError::Decode)
    }

    async fn send_raw(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            // A file-system error's code is its errno name (ENOENT...).
            Ok(body) => (
                body.code.clone().unwrap_or(body.error.clone()),
                body.message.unwrap_or(body.error),
            ),
            Err(_) => (
                String::new(),
                if text.is_empty() {
                    format!("status {status}")
                } else {
                    text
                },
            ),
        };
        Err(ClientError::Api {
            status,
            code,
            message,
        })
    }

    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        self.send(self.http.get(self.url("/healthz"))).await
    }

    pub async fn create(&self, request: &CreateSpriteRequest) -> Result<SpriteInfo, ClientError> {
        self.send(self.http.post(self.url("/v1/sprites")).json(request))
            .await
    }

    pub async fn get(&self, name: &str) -> Result<SpriteInfo, ClientError> {
        self.send(self.http.get(self.url(&format!("/v1/sprites/{name}"))))
            .await
    }

    pub async fn list(
        &self,
        prefix: Option<&str>,
        continuation: Option<&str>,
    ) -> Result<SpriteList, ClientError> {
        let mut query = Vec::new();
        if let Some(prefix) = prefix {
            query.push(("prefix", prefix));
        }
        if let Some(token) = continuation {
            query.push(("continuation_token", token));
        }
        self.send(self.http.get(self.url("/v1/sprites")).query(&query))
            .await
    }

    /// Every sprite, following continuation tokens.
    pub async fn list_all(&self, prefix: Option<&str>) -> Result<Vec<SpriteInfo>, ClientError> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.list(prefix, token.as_deref()).await?;
            all.extend(page.sprites);
            match (page.has_more, page.next_continuation_token) {
                (true, Some(next)) => token = Some(next),
                _ => return Ok(all),
            }
        }
    }

    pub async fn update(
        &self,
        name: &str,
        request: &UpdateSpriteRequest,
    ) -> Result<SpriteInfo, ClientError> {
        self.send(
            self.http
                .put(self.url(&format!("/v1/sprites/{name}")))
                .json(request),
        )
        .await
    }

    pub async fn destroy(&self, name: &str) -> Result<(), ClientError> {
        self.send_raw(self.http.delete(self.url(&format!("/v1/sprites/{name}"))))
            .await
            .map(|_| ())
    }

    pub async fn sessions(&self, name: &str) -> Result<Vec<SessionInfo>, ClientError> {
        let list: SessionList = self
            .send(self.http.get(self.url(&format!("/v1/sprites/{name}/exec"))))
            .await?;
        Ok(list.sessions)
    }

    /// Signals a session; with a `timeout` ("10s"; "0s" only signals), waits that long
    /// for it to exit and then sends SIGKILL. Returns the NDJSON events (`signal`,
    /// `exited` or `timeout` + `killed`, `complete`) as they came.
    pub async fn kill_session(
        &self,
        name: &str,
        session: &str,
        signal: &str,
        timeout: &str,
        on_event: impl FnMut(&serde_json::Value),
    ) -> Result<Vec<serde_json::Value>, ClientError> {
        let url = self.url(&format!("/v1/sprites/{name}/exec/{session}/kill"));
        let request = self
            .http
            .post(url)
            .query(&[("signal", signal), ("timeout", timeout)]);
        self.ndjson_events(request, on_event).await
    }

    /// Runs an NDJSON progress operation; returns its events, or the `error` event's
    /// message as an error.
    async fn progress(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Vec<ProgressEvent>, ClientError> {
        let text = self
            .send_raw(request)
            .await?
            .text()
            .await
            .map_err(ClientError::Decode)?;
        let events: Vec<ProgressEvent> = text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        if let Some(failed) = events
            .iter()
            .find(|e| e.kind == sprite_api::sprite::ProgressKind::Error)
        {
            return Err(ClientError::Api {
                status: 500,
                code: "error".into(),
                message: failed
                    .error
                    .clone()
                    .unwrap_or_else(|| "operation failed".into()),
            });
        }
        if !events
            .iter()
            .any(|e| e.kind == sprite_api::sprite::ProgressKind::Complete)
        {
            return Err(ClientError::Api {
                status: 500,
                code: "error".into(),
                message: "the operation ended without completing".into(),
            });
        }
        Ok(events)
    }

    pub async fn checkpoint(
        &self,
        name: &str,
        comment: Option<&str>,
    ) -> Result<Vec<ProgressEvent>, ClientError> {
        let body = serde_json::json!({ "comment": comment });
        self.progress(
            self.http
                .post(self.url(&format!("/v1/sprites/{name}/checkpoint")))
                .json(&body),
        )
        .await
    }

    pub async fn checkpoints(
        &self,
        name: &str,
        include_auto: bool,
    ) -> Result<Vec<CheckpointInfo>, ClientError> {
        let url = self.url(&format!("/v1/sprites/{name}/checkpoints"));
        self.send(
            self.http
                .get(url)
                .query(&[("includeAuto", include_auto.to_string())]),
        )
        .await
    }

    pub async fn checkpoint_info(
        &self,
        name: &str,
        id: &str,
    ) -> Result<CheckpointInfo, ClientError> {
        self.send(
            self.http
                .get(self.url(&format!("/v1/sprites/{name}/checkpoints/{id}"))),
        )
        .await
    }

    pub async fn delete_checkpoint(&self, name: &str, id: &str) -> Result<(), ClientError> {
        self.send_raw(
            self.http
                .delete(self.url(&format!("/v1/sprites/{name}/checkpoints/{id}"))),
        )
        .await
        .map(|_| ())
    }

    pub async fn restore(&self, name: &str, id: &str) -> Result<Vec<ProgressEvent>, ClientError> {
        self.progress(
            self.http
                .post(self.url(&format!("/v1/sprites/{name}/checkpoints/{id}/restore"))),
        )
        .await
    }

    /// What a sprite stores, and its hourly usage since `since` (RFC 3339 or a
    /// duration back like `7d`; default the last 24 hours).
    pub async fn usage(
        &self,
        name: &str,
        since: Option<&str>,
    ) -> Result<sprite_api::admin::SpriteUsage, ClientError> {
        let mut request = self
            .http
            .get(self.url(&format!("/v1/sprites/{name}/usage")));
        if let Some(since) = since {
            request = request.query(&[("since", since)]);
        }
        self.send(request).await
    }

    pub async fn services(&self, name: &str) -> Result<Vec<ServiceInfo>, ClientError> {
        self.send(
            self.http
                .get(self.url(&format!("/v1/sprites/{name}/services"))),
        )
        .await
    }

    pub async fn service(&self, name: &str, service: &str) -> Result<ServiceInfo, ClientError> {
        self.send(
            self.http
                .get(self.url(&format!("/v1/sprites/{name}/services/{service}"))),
        )
        .await
    }

    /// Creates or replaces a service; follows its output for `duration` (like `5s`).
    /// Each NDJSON event goes to `on_event` as it arrives; all are returned.
    pub async fn put_service(
        &self,
        name: &str,
        service: &str,
        spec: &ServiceSpec,
        duration: Option<&str>,
        on_event: impl FnMut(&ServiceEvent),
    ) -> Result<Vec<ServiceEvent>, ClientError> {
        let url = self.url(&format!("/v1/sprites/{name}/services/{service}"));
        let request = self
            .http
            .put(url)
            .query(&[("duration", duration.unwrap_or(""))])
            .json(spec);
        self.service_events(request, on_event).await
    }

    /// `start` or `stop` a service, with its NDJSON events.
    pub async fn service_action(
        &self,
        name: &str,
        service: &str,
        action: &str,
        duration: Option<&str>,
        on_event: impl FnMut(&ServiceEvent),
    ) -> Result<Vec<ServiceEvent>, ClientError> {
        let url = self.url(&format!("/v1/sprites/{name}/services/{service}/{action}"));
        let request = self
            .http
            .post(url)
            .query(&[("duration", duration.unwrap_or(""))]);
        self.service_events(request, on_event).await
    }

    async fn service_events(
        &self,
        request: reqwest::RequestBuilder,
        on_event: impl FnMut(&ServiceEvent),
    ) -> Result<Vec<ServiceEvent>, ClientError> {
        self.ndjson_events(request, on_event).await
    }

    /// Reads an NDJSON answer line by line as it comes (lines that are not a `T` are
    /// passed over), calling `on_event` on each; returns them all.
    async fn ndjson_events<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        mut on_event: impl FnMut(&T),
    ) -> Result<Vec<T>, ClientError> {
        let mut response = self.send_raw(request).await?;
        let mut pending = Vec::new();
        let mut events = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(ClientError::Decode)? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(event) = serde_json::from_slice::<T>(&line) {
                    on_event(&event);
                    events.push(event);
                }
            }
        }
        Ok(events)
    }

    pub async fn signal_service(
        &self,
        name: &str,
        service: &str,
        signal: &str,
    ) -> Result<(), ClientError> {
        let body = ServiceSignal {
            name: service.into(),
            signal: signal.into(),
        };
        self.send_raw(
            self.http
                .post(self.url(&format!("/v1/sprites/{name}/services/signal")))
                .json(&body),
        )
        .await
        .map(|_| ())
    }

    pub async fn delete_service(&self, name: &str, service: &str) -> Result<(), ClientError> {
        self.send_raw(
            self.http
                .delete(self.url(&format!("/v1/sprites/{name}/services/{service}"))),
        )
        .await
        .map(|_| ())
    }

    /// The last `lines` of a service's log (the NDJSON stream's `stdout` lines).
    pub async fn service_logs(
        &self,
        name: &str,
        service: &str,
        lines: usize,
    ) -> Result<String, ClientError> {
        let request = self
            .http
            .get(self.url(&format!("/v1/sprites/{name}/services/{service}/logs")))
            .query(&[("lines", lines)]);
        let events = self.service_events(request, |_| {}).await?;
        Ok(events
            .iter()
            .filter(|e| {
                use sprite_api::services::ServiceEventKind::{Stderr, Stdout};
                matches!(e.kind, Stdout | Stderr)
            })
            .filter_map(|e| e.data.as_deref())
            .collect())
    }

    /// Puts a sprite to sleep now: warm (frozen) or cold (stopped).
    pub async fn sleep(&self, name: &str, cold: bool) -> Result<SpriteInfo, ClientError> {
        self.send(
            self.http
                .post(self.url(&format!("/v1/sprites/{name}/sleep")))
                .query(&[("cold", cold)]),
        )
        .await
    }

    /// Wakes a sleeping sprite.
    pub async fn wake(&self, name: &str) -> Result<SpriteInfo, ClientError> {
        self.send(
            self.http
                .post(self.url(&format!("/v1/sprites/{name}/wake"))),
        )
        .await
    }

    /// Makes a template of a sprite's checkpoint (its newest when `checkpoint` is None).
    pub async fn create_template(
        &self,
        request: &sprite_api::sprite::CreateTemplateRequest,
    ) -> Result<sprite_api::sprite::TemplateInfo, ClientError> {
        self.send(self.http.post(self.url("/v1/templates")).json(request))
            .await
    }

    pub async fn templates(&self) -> Result<sprite_api::sprite::TemplateList, ClientError> {
        self.send(self.http.get(self.url("/v1/templates"))).await
    }

    pub async fn delete_template(&self, name: &str) -> Result<(), ClientError> {
        self.send_raw(self.http.delete(self.url(&format!("/v1/templates/{name}"))))
            .await
            .map(|_| ())
    }

    /// The live hosts of the cluster the daemon belongs to.
    pub async fn hosts(&self) -> Result<sprite_api::admin::HostList, ClientError> {
        self.send(self.http.get(self.url("/v1/admin/hosts"))).await
    }

    /// Moves every sprite off `host` and stops it taking new ones.
    pub async fn drain(&self, host: &str) -> Result<sprite_api::admin::DrainReport, ClientError> {
        self.send(
            self.http
                .post(self.url(&format!("/v1/admin/hosts/{host}/drain"))),
        )
        .await
    }

    /// Moves a sprite to another host of the cluster (`to`, or one placement picks).
    pub async fn move_sprite(
        &self,
        name: &str,
        to: Option<&str>,
    ) -> Result<sprite_api::admin::MoveReport, ClientError> {
        let request = sprite_api::admin::MoveRequest {
            to: to.map(str::to_string),
        };
        self.send(
            self.http
                .post(self.url(&format!("/v1/sprites/{name}/move")))
                .json(&request),
        )
        .await
    }

    /// Mints a token for `org` (admin scope needed).
    pub async fn create_token(
        &self,
        org: &str,
        request: &sprite_api::admin::CreateTokenRequest,
    ) -> Result<sprite_api::admin::CreatedToken, ClientError> {
        self.send(
            self.http
                .post(self.url(&format!("/v1/organizations/{org}/tokens")))
                .json(request),
        )
        .await
    }

    /// Tokens of `org`, or of every organization.
    pub async fn tokens(
        &self,
        org: Option<&str>,
    ) -> Result<sprite_api::admin::TokenList, ClientError> {
        let path = match org {
            Some(org) => format!("/v1/organizations/{org}/tokens"),
            None => "/v1/admin/tokens".to_string(),
        };
        self.send(self.http.get(self.url(&path))).await
    }

    pub async fn revoke_token(&self, org: &str, id: &str) -> Result<(), ClientError> {
        self.send_raw(
            self.http
                .delete(self.url(&format!("/v1/organizations/{org}/tokens/{id}"))),
        )
        .await
        .map(drop)
    }

    pub async fn organizations(&self) -> Result<sprite_api::admin::OrgList, ClientError> {
        self.send(self.http.get(self.url("/v1/admin/organizations")))
            .await
    }

    pub async fn set_org_limits(
        &self,
        org: &str,
        change: &sprite_api::admin::SetOrgLimits,
    ) -> Result<sprite_api::admin::OrgLimits, ClientError> {
        self.send(
            self.http
                .put(self.url(&format!("/v1/admin/organizations/{org}")))
                .json(change),
        )
        .await
    }

    pub async fn collect_garbage(&self) -> Result<sprite_api::admin::GcReport, ClientError> {
        self.send(self.http.post(self.url("/v1/admin/gc"))).await
    }

    pub async fn images(&self) -> Result<sprite_api::admin::ImageList, ClientError> {
        self.send(self.http.get(self.url("/v1/images"))).await
    }

    /// Pulls an image from a registry (ours: `POST /v1/images` with a JSON body),
    /// calling `on_event` on each progress line; returns the image's name.
    pub async fn pull_image(
        &self,
        request: &sprite_api::admin::PullRequest,
        on_event: impl FnMut(&sprite_api::admin::PullEvent),
    ) -> Result<String, ClientError> {
        self.pull_events(
            self.http.post(self.url("/v1/images")).json(request),
            on_event,
        )
        .await
    }

    /// Reads a pull's NDJSON progress; the name in `complete`, or the `error`.
    async fn pull_events(
        &self,
        request: reqwest::RequestBuilder,
        on_event: impl FnMut(&sprite_api::admin::PullEvent),
    ) -> Result<String, ClientError> {
        use sprite_api::admin::PullEvent;
        let events = self.ndjson_events::<PullEvent>(request, on_event).await?;
        match events.last() {
            Some(PullEvent::Complete { name }) => Ok(name.clone()),
            Some(PullEvent::Error { error }) => Err(ClientError::Api {
                status: 400,
                code: "pull_failed".into(),
                message: error.clone(),
            }),
            _ => Err(ClientError::Api {
                status: 500,
                code: "error".into(),
                message: "the pull ended without completing (the daemon stopped?)".into(),
            }),
        }
    }

    /// Stops the daemon (`all`: every sprite cold and the host cleaned first), calling
    /// `on_event` on each progress line; answers how many sprites went cold.
    pub async fn stop_daemon(
        &self,
        all: bool,
        on_event: impl FnMut(&sprite_api::admin::StopEvent),
    ) -> Result<usize, ClientError> {
        use sprite_api::admin::StopEvent;
        let request = self
            .http
            .post(self.url("/v1/admin/stop"))
            .json(&sprite_api::admin::StopRequest { all });
        let events = self.ndjson_events::<StopEvent>(request, on_event).await?;
        match events.last() {
            Some(StopEvent::Complete { sprites_cold }) => Ok(*sprites_cold),
            Some(StopEvent::Error { error }) => Err(ClientError::Api {
                status: 500,
                code: "stop_failed".into(),
                message: error.clone(),
            }),
            _ => Err(ClientError::Api {
                status: 500,
                code: "error".into(),
                message: "the stop ended without completing".into(),
            }),
        }
    }

    pub async fn daemon_status(&self) -> Result<sprite_api::admin::DaemonStatus, ClientError> {
        self.send(self.http.get(self.url("/v1/admin/status"))).await
    }

    /// Makes a new version of image `name` (ours: `POST /v1/images/{name}/update`);
    /// returns the newest version's key.
    pub async fn update_image(
        &self,
        name: &str,
        credentials: &sprite_api::admin::PullRequest,
        on_event: impl FnMut(&sprite_api::admin::PullEvent),
    ) -> Result<String, ClientError> {
        let request = self
            .http
            .post(self.url(&format!("/v1/images/{name}/update")))
            .json(credentials);
        self.pull_events(request, on_event).await
    }

    /// Moves a sprite onto the newest version of its image.
    pub async fn upgrade(
        &self,
        name: &str,
    ) -> Result<sprite_api::sprite::UpgradeReport, ClientError> {
        self.send(
            self.http
                .post(self.url(&format!("/v1/sprites/{name}/upgrade"))),
        )
        .await
    }

    /// Uploads a root filesystem tarball as image `name` (ours: `POST /v1/images`).
    /// The tarball is streamed, never held in memory whole.
    pub async fn import_image<R>(
        &self,
        name: &str,
        tarball: R,
    ) -> Result<sprite_api::admin::ImageStatus, ClientError>
    where
        R: tokio::io::AsyncRead + Send + Sync + 'static,
    {
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(tarball));
        self.send(
            self.http
                .post(self.url("/v1/images"))
                .query(&[("name", name)])
                .body(body),
        )
        .await
    }

    /// `GET fs/read`: the response, to stream; `range` is `(first, last)` bytes,
    /// inclusive (`None` last = to the end).
    pub async fn fs_read(
        &self,
        name: &str,
        path: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut request = self
            .http
            .get(self.url(&format!("/v1/sprites/{name}/fs/read")))
            .query(&[("path", path)]);
        if let Some((first, last)) = range {
            let last = last.map(|l| l.to_string()).unwrap_or_default();
            request = request.header("range", format!("bytes={first}-{last}"));
        }
        self.send_raw(request).await
    }

    /// `PUT fs/write`: streams `body` into `path` in the sprite.
    pub async fn fs_write<R>(
        &self,
        name: &str,
        path: &str,
        mode: Option<u32>,
        make_parents: bool,
        body: R,
    ) -> Result<sprite_api::fs::FsWritten, ClientError>
    where
        R: tokio::io::AsyncRead + Send + Sync + 'static,
    {
        let mut query = vec![
            ("path", path.to_string()),
            ("mkdirParents", make_parents.to_string()),
        ];
        if let Some(mode) = mode {
            query.push(("mode", format!("{mode:04o}")));
        }
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(body, 1 << 20));
        self.send(
            self.http
                .put(self.url(&format!("/v1/sprites/{name}/fs/write")))
                .header("content-type", "application/octet-stream")
                .query(&query)
                .body(body),
        )
        .await
    }

    /// `GET fs/list`.
    pub async fn fs_list(
        &self,
        name: &str,
        path: &str,
        recursive: bool,
    ) -> Result<sprite_api::fs::FsList, ClientError> {
        self.send(
            self.http
                .get(self.url(&format!("/v1/sprites/{name}/fs/list")))
                .query(&[("path", path), ("recursive", &recursive.to_string())]),
        )
        .await
    }

    /// `DELETE fs/delete`.
    pub async fn fs_delete(
        &self,
        name: &str,
        path: &str,
        recursive: bool,
    ) -> Result<sprite_api::fs::FsDeleted, ClientError> {
        self.send(
            self.http
                .delete(self.url(&format!("/v1/sprites/{name}/fs/delete")))
                .query(&[("path", path), ("recursive", &recursive.to_string())]),
        )
        .await
    }

    /// `POST fs/{operation}` (`rename`, `copy`, `chmod`, `chown`) with a JSON body.
    pub async fn fs_post<T: DeserializeOwned>(
        &self,
        name: &str,
        operation: &str,
        body: &serde_json::Value,
    ) -> Result<T, ClientError> {
        self.send(
            self.http
                .post(self.url(&format!("/v1/sprites/{name}/fs/{operation}")))
                .json(body),
        )
        .await
    }

    /// `WS .../ports/watch`: a `port_list` message, then `port_opened`/`port_closed`.
    pub async fn ports_watch(&self, name: &str) -> Result<Tunnel, ClientError> {
        self.connect_websocket(&format!("/v1/sprites/{name}/ports/watch"))
            .await
    }

    /// `WS fs/watch`, subscribed to `paths`: the socket, after the server confirmed.
    pub async fn fs_watch(
        &self,
        name: &str,
        paths: &[&str],
        recursive: bool,
    ) -> Result<Tunnel, ClientError> {
        let mut socket = self
            .connect_websocket(&format!("/v1/sprites/{name}/fs/watch"))
            .await?;
        let subscribe =
            serde_json::json!({"type": "subscribe", "paths": paths, "recursive": recursive});
        let answer = first_answer(&mut socket, &subscribe).await?;
        if answer["type"] == "subscribed" {
            return Ok(socket);
        }
        Err(ClientError::Api {
            status: 400,
            code: answer["code"].as_str().unwrap_or_default().to_string(),
            message: answer["error"]
                .as_str()
                .unwrap_or("the watch was refused")
                .to_string(),
        })
    }

    async fn websocket(&self, path_and_query: &str, tty: bool) -> Result<ExecStream, ClientError> {
        let socket = self.connect_websocket(path_and_query).await?;
        let (sink, stream) = socket.split();
        Ok(ExecStream {
            sender: ExecSender { sink, tty },
            receiver: ExecReceiver { stream, tty },
        })
    }

    /// Opens a TCP tunnel to `host:port` in a sprite (`WS .../proxy`), waking it.
    pub async fn tcp_tunnel(
        &self,
        name: &str,
        host: &str,
        port: u16,
    ) -> Result<Tunnel, ClientError> {
        let mut socket = self
            .connect_websocket(&format!("/v1/sprites/{name}/proxy"))
            .await?;
        let target = serde_json::json!({ "host": host, "port": port });
        let answer = first_answer(&mut socket, &target).await?;
        if answer["status"] == "connected" {
            return Ok(socket);
        }
        Err(ClientError::Api {
            status: 502,
            code: "proxy".into(),
            message: answer["error"]
                .as_str()
                .unwrap_or("the sprite refused the tunnel")
                .to_string(),
        })
    }

    async fn connect_websocket(&self, path_and_query: &str) -> Result<Tunnel, ClientError> {
        let ws_base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            return Err(ClientError::Url(self.base.clone()));
        };
        let mut request = format!("{ws_base}{path_and_query}")
            .into_client_request()
            .map_err(|e| ClientError::Url(e.to_string()))?;
        let header = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| ClientError::Url("token is not a valid header value".into()))?;
        request.headers_mut().insert("authorization", header);
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response.body().as_deref().unwrap_or_default();
                let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
                    Ok(b) => (b.error.clone(), b.message.unwrap_or(b.error)),
                    Err(_) => (String::new(), format!("status {status}")),
                };
                Err(ClientError::Api {
                    status,
                    code,
                    message,
                })
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Starts a command over WebSocket.
    pub async fn exec(&self, name: &str, params: &ExecParams) -> Result<ExecStream, ClientError> {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.to_query())
            .finish();
        self.websocket(&format!("/v1/sprites/{name}/exec?{query}"), params.tty)
            .await
    }

    /// Re-attaches to a session; the TTY mode is learned from its session_info.
    pub async fn attach(&self, name: &str, session: &str) -> Result<ExecStream, ClientError> {
        self.websocket(&format!("/v1/sprites/{name}/exec/{session}"), false)
            .await
    }
}

impl ExecStream {
    /// Whether the session has a TTY (known for an attach once session_info arrived).
    pub fn is_tty(&self) -> bool {
        self.receiver.tty
    }

    /// The next event; `Err(ClosedBeforeExit)` if the socket ends without an exit.
    pub async fn next(&mut self) -> Result<ExecEvent, ClientError> {
        let event = self.receiver.next().await;
        self.sender.tty = self.receiver.tty;
        event
    }

    pub async fn send_stdin(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.sender.send_stdin(data).await
    }

    pub async fn send_eof(&mut self) -> Result<(), ClientError> {
        self.sender.send_eof().await
    }

    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<(), ClientError> {
        self.sender.resize(cols, rows).await
    }

    pub async fn signal(&mut self, signal: &str) -> Result<(), ClientError> {
        self.sender.signal(signal).await
    }

    pub async fn close(mut self) {
        self.sender.close().await;
    }

    /// Splits into halves for full-duplex use.
    pub fn split(mut self) -> (ExecSender, ExecReceiver) {
        self.sender.tty = self.receiver.tty;
        (self.sender, self.receiver)
    }
}

/// Sending half of an [`ExecStream`].
#[derive(Debug)]
pub struct ExecSender {
    sink: futures_util::stream::SplitSink<Socket, Message>,
    tty: bool,
}

/// Receiving half of an [`ExecStream`].
#[derive(Debug)]
pub struct ExecReceiver {
    stream: futures_util::stream::SplitStream<Socket>,
    tty: bool,
}

impl ExecSender {
    pub async fn send_stdin(&mut self, data: &[u8]) -> Result<(), ClientError> {
        let payload = if self.tty {
            data.to_vec()
        } else {
            Frame::Stdin(data.to_vec()).encode()
        };
        Ok(self.sink.send(Message::Binary(payload.into())).await?)
    }

    pub async fn send_eof(&mut self) -> Result<(), ClientError> {
        if self.tty {
            return Ok(());
        }
        Ok(self
            .sink
            .send(Message::Binary(Frame::StdinEof.encode().into()))
            .await?)
    }

    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<(), ClientError> {
        let text = serde_json::to_string(&ClientMessage::Resize { cols, rows }).unwrap_or_default();
        Ok(self.sink.send(Message::Text(text.into())).await?)
    }

    pub async fn signal(&mut self, signal: &str) -> Result<(), ClientError> {
        let text = serde_json::to_string(&ClientMessage::Signal {
            signal: signal.to_string(),
        })
        .unwrap_or_default();
        Ok(self.sink.send(Message::Text(text.into())).await?)
    }

    pub async fn close(&mut self) {
        let _ = self.sink.close().await;
    }
}

impl ExecReceiver {
    pub async fn next(&mut self) -> Result<ExecEvent, ClientError> {
        loop {
            let Some(message) = self.stream.next().await else {
                return Err(ClientError::ClosedBeforeExit);
            };
            match message? {
                Message::Text(text) => {
                    return Ok(match serde_json::from_str::<ServerMessage>(&text) {
                        Ok(ServerMessage::SessionInfo {
                            session_id, tty, ..
                        }) => {
                            self.tty = tty;
                            ExecEvent::SessionInfo { session_id, tty }
                        }
                        Ok(ServerMessage::Exit { exit_code, .. }) => ExecEvent::Exit(exit_code),
                        _ => ExecEvent::Text(text.to_string()),
                    })
                }
                Message::Binary(data) if self.tty => return Ok(ExecEvent::Stdout(data.to_vec())),
                Message::Binary(data) => match Frame::decode(&data) {
                    Ok(Frame::Stdout(d)) => return Ok(ExecEvent::Stdout(d)),
                    Ok(Frame::Stderr(d)) => return Ok(ExecEvent::Stderr(d)),
                    Ok(Frame::Exit(code)) => return Ok(ExecEvent::Exit(i32::from(code))),
                    _ => continue,
                },
                Message::Close(_) => return Err(ClientError::ClosedBeforeExit),
                _ => continue,
            }
        }
    }
}
