//! The MCP server: sprites as tools for an agent (Claude Desktop, Claude Code, any
//! MCP client). Served two ways with one tool set, which calls the daemon's own HTTP
//! API with the caller's token (so scopes, limits, wakes and a cluster's forwarding
//! apply as for any client):
//! - `/mcp` on the daemon's API listener (streamable HTTP, `Authorization: Bearer`);
//! - `sprite mcp` (stdio), for desktop clients that start a process.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData as McpError, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use sprite_client::{Client, ExecEvent};
use std::time::Duration;

/// What an agent is told about these tools (the server's instructions).
const INSTRUCTIONS: &str = "Sprites are disposable Linux computers with a persistent disk. \
Create one per task (create_sprite), run commands in it (exec), read and write its files, \
and serve an app on port 8080 at its URL (sprite_url). Checkpoints are instant and cheap: \
call checkpoint_create before anything risky (installing or upgrading packages, deleting \
or rewriting many files, database migrations, running code you did not write), and \
checkpoint_restore to undo it if it goes wrong. fork_sprite copies a checkpoint into a new \
sprite to try two approaches side by side. Destroy sprites you no longer need.";

/// Longest time an exec may run.
const MAX_EXEC_SECS: u64 = 600;
/// Default and largest output an exec answers (stdout and stderr together).
const DEFAULT_OUTPUT: usize = 64 << 10;
const MAX_OUTPUT: usize = 1 << 20;
/// Largest file read_file answers.
const MAX_READ: usize = 1 << 20;

/// The tools. `token`: the stdio server's token; over HTTP each request's own.
#[derive(Clone)]
pub struct SpritesMcp {
    api: String,
    token: Option<String>,
    tool_router: ToolRouter<Self>,
}

impl std::fmt::Debug for SpritesMcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpritesMcp")
            .field("api", &self.api)
            .finish()
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListArgs {
    /// Only sprites whose name starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateArgs {
    /// Lowercase letters, digits and dashes, at most 63 (it becomes the URL's first label).
    pub name: String,
    /// The image: `dev` (default: build tools, Python, Node, coding agents), `debian`,
    /// or one pulled from a registry.
    #[serde(default)]
    pub image: Option<String>,
    /// A template to start from (a saved checkpoint of another sprite).
    #[serde(default)]
    pub template: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SpriteArgs {
    /// The sprite's name.
    pub sprite: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExecArgs {
    /// The sprite's name.
    pub sprite: String,
    /// A shell command line, run with `sh -c` as the sprite's user.
    pub command: String,
    /// Working directory (default: the user's home).
    #[serde(default)]
    pub dir: Option<String>,
    /// Seconds before the command is killed (default 60, at most 600).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Most bytes of output returned (default 65536, at most 1048576); the rest is
    /// cut and the answer says how much.
    #[serde(default)]
    pub max_output_bytes: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReadArgs {
    pub sprite: String,
    /// Absolute, or relative to /home/sprite.
    pub path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WriteArgs {
    pub sprite: String,
    /// Absolute, or relative to /home/sprite.
    pub path: String,
    /// The whole new content (UTF-8 text).
    pub content: String,
    /// Make missing parent directories (default true).
    #[serde(default)]
    pub make_parents: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListFilesArgs {
    pub sprite: String,
    /// A directory (default /home/sprite).
    #[serde(default)]
    pub path: Option<String>,
    /// Everything below it, not only its entries.
    #[serde(default)]
    pub recursive: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CheckpointArgs {
    pub sprite: String,
    /// What this checkpoint is (shown by checkpoint_list).
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RestoreArgs {
    pub sprite: String,
    /// The checkpoint's id (`v3`), from checkpoint_list or checkpoint_create.
    pub checkpoint: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ForkArgs {
    /// The sprite to copy.
    pub source: String,
    /// Its checkpoint to copy (default: its newest).
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// The new sprite's name.
    pub name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct UrlArgs {
    pub sprite: String,
    /// Change who may open the URL: `public` (anyone) or `sprite` (a token holder).
    #[serde(default)]
    pub auth: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ServiceArgs {
    pub sprite: String,
    /// The service's name.
    pub name: String,
    /// The program.
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Serve this port at the sprite's URL (one service per sprite).
    #[serde(default)]
    pub http_port: Option<u16>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub dir: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct LogsArgs {
    pub sprite: String,
    /// The service's name.
    pub name: String,
    /// How many of the last lines (default 100, at most 5000).
    #[serde(default)]
    pub lines: Option<usize>,
}

fn text(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text.into())])
}

fn failed(error: impl std::fmt::Display) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(error.to_string())])
}

fn json(value: &impl serde::Serialize) -> CallToolResult {
    text(serde_json::to_string_pretty(value).unwrap_or_default())
}

/// A path as the API takes it: relative ones under the sprite user's home.
fn in_home(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/home/sprite/{path}")
    }
}

/// Appends `data` to `out` up to `limit` bytes in all; counts what was cut.
fn capped(out: &mut Vec<u8>, data: &[u8], limit: usize, cut: &mut usize) {
    let room = limit.saturating_sub(out.len());
    let taken = room.min(data.len());
    out.extend_from_slice(&data[..taken]);
    *cut += data.len() - taken;
}

#[tool_router]
impl SpritesMcp {
    /// Tools over the API at `api`; `token` for stdio (HTTP takes each request's).
    pub fn new(api: &str, token: Option<String>) -> Self {
        SpritesMcp {
            api: api.to_string(),
            token,
            tool_router: Self::tool_router(),
        }
    }

    /// The API client for this call: the server's token, or the request's bearer.
    fn client(&self, ctx: &RequestContext<RoleServer>) -> Result<Client, McpError> {
        if let Some(token) = &self.token {
            return Ok(Client::new(&self.api, token));
        }
        let token = ctx
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.headers.get(axum::http::header::AUTHORIZATION))
            .and_then(|value| value.to_str().ok())
            .and_then(sprite_server::auth_token_from_header)
            .ok_or_else(|| {
                McpError::invalid_request(
                    "no token: send Authorization: Bearer <token> with every request",
                    None,
                )
            })?;
        Ok(Client::new(&self.api, &token))
    }

    #[tool(description = "List your sprites with their status (running, warm, cold) and URL.")]
    async fn list_sprites(
        &self,
        Parameters(args): Parameters<ListArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let client = self.client(&ctx)?;
        Ok(match client.list_all(args.prefix.as_deref()).await {
            Ok(sprites) if sprites.is_empty() => text("no sprites; create_sprite makes one"),
            Ok(sprites) => text(
                sprites
                    .iter()
                    .map(|s| format!("{}\t{}\t{}", s.name, s.status.as_str(), s.url))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            Err(error) => failed(error),
        })
    }

    #[tool(
        description = "Create a sprite: a Linux computer with a persistent 100 GiB disk, ready in a moment. One per task. Answers its name, status and URL."
    )]
    async fn create_sprite(
        &self,
        Parameters(args): Parameters<CreateArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let client = self.client(&ctx)?;
        let request = serde_json::json!({
            "name": args.name,
            "image": args.image,
            "template": args.template,
        });
        let request = match serde_json::from_value(request) {
            Ok(request) => request,
            Err(error) => return Ok(failed(format!("bad request: {error}"))),
        };
        Ok(match client.create(&request).await {
            Ok(info) => json(&serde_json::json!({
                "name": info.name, "status": info.status, "url": info.url,
            })),
            Err(error) => failed(error),
        })
    }

    #[tool(
        description = "Destroy a sprite and everything in it, checkpoints included. Cannot be undone."
    )]
    async fn destroy_sprite(
        &self,
        Parameters(args): Parameters<SpriteArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let client = self.client(&ctx)?;
        Ok(match client.destroy(&args.sprite).await {
            Ok(()) => text(format!("destroyed {}", args.sprite)),
            Err(error) => failed(error),
        })
    }

    #[tool(
        description = "Run a shell command in a sprite (sh -c, as its user, in its home) and answer its exit code, stdout and stderr. Wakes a sleeping sprite. Before a risky command (package installs or upgrades, rm -rf, migrations, unknown scripts) call checkpoint_create first, so checkpoint_restore can undo it."
    )]
    async fn exec(
        &self,
        Parameters(args): Parameters<ExecArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let client = self.client(&ctx)?;
        let timeout =
            Duration::from_secs(args.timeout_seconds.unwrap_or(60).clamp(1, MAX_EXEC_SECS));
        let limit = args
            .max_output_bytes
            .unwrap_or(DEFAULT_OUTPUT)
            .clamp(1, MAX_OUTPUT);
        let mut params = match sprite_api::exec::ExecParams::from_query(&[], 0) {
            Ok(params) => params,
            Err(error) => return Ok(failed(error)),
        };
        params.argv = vec!["sh".into(), "-c".into(), args.command.clone()];
        params.path = "sh".into();
        params.dir = args.dir.clone();
        let mut stream = match client.exec(&args.sprite, &params).await {
            Ok(stream) => stream,
            Err(error) => return Ok(failed(error)),
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut cut = 0usize;
        let run = async {
            loop {
                match stream.next().await? {
                    ExecEvent::Stdout(data) => {
                        let used = stderr.len();
                        capped(&mut stdout, &data, limit.saturating_sub(used), &mut cut)
                    }
                    ExecEvent::Stderr(data) => {
                        let used = stdout.len();
                        capped(&mut stderr, &data, limit.saturating_sub(used), &mut cut)
                    }
                    ExecEvent::Exit(code) => return Ok::<i32, sprite_client::ClientError>(code),
                    _ => {}
                }
            }
        };
        let outcome = tokio::time::timeout(timeout, run).await;
        let code = match outcome {
            Ok(Ok(code)) => Some(code),
            Ok(Err(error)) => {
                return Ok(failed(format!("the command's connection broke: {error}")))
            }
            Err(_) => {
                let _ = stream.signal("KILL").await;
                None
            }
        };
        let mut answer = match code {
            Some(code) => format!("exit code: {code}\n"),
            None => format!(
                "timed out after {} s: killed (raise timeout_seconds, or run it as a service)\n",
                timeout.as_secs()
            ),
        };
        answer.push_str(&format!(
            "--- stdout ---\n{}",
            String::from_utf8_lossy(&stdout)
        ));
        if !stdout.ends_with(b"\n") && !stdout.is_empty() {
            answer.push('\n');
        }
        answer.push_str(&format!(
            "--- stderr ---\n{}",
            String::from_utf8_lossy(&stderr)
        ));
        if cut > 0 {
            answer.push_str(&format!(
                "\n[output cut: {cut} more bytes; raise max_output_bytes (at most {MAX_OUTPUT}) or redirect to a file and read_file it]"
            ));
        }
        Ok(if code == Some(0) {
            text(answer)
        } else {
            CallToolResult::error(vec![ContentBlock::text(answer)])
        })
    }

    #[tool(description = "Read a text file of a sprite (at most 1 MiB).")]
    async fn read_file(
        &self,
        Parameters(args): Parameters<ReadArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let client = self.client(&ctx)?;
        let path = in_home(&args.path);
        let response = match client
            .fs_read(&args.sprite, &path, Some((0, Some(MAX_READ as u64))))
            .await
        {
            Ok(response) => response,
            Err(error) => return Ok(failed(error)),
        };
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(error) => return Ok(failed(format!("read {path}: {error}"))),
        };
        let mut answer = match std::str::from_utf8(&bytes[..bytes.len().min(MAX_READ)]) {
            Ok(content) => content.to_string(),
            Err(_) => {
                return Ok(failed(format!(
                    "{path} is not UTF-8 text ({} bytes); use exec with base64 or xxd",
                    bytes.len()
                )))
            }
        };
        if bytes.len() > MAX_READ {
            answer.push_str("\n[cut at 1 MiB; read the rest with exec (tail, sed -n)]");
        }
        Ok(text(answer))
    }

    #[tool(
        description = "Write a text file in a sprite (replaces it; parent directories are made)."
    )]
    async fn write_file(
        &self,
        Parameters(args): Parameters<WriteArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let client = self.client(&ctx)?;
        let path = in_home(&args.path);
        let size = args.content.len();
        let body = std::io::Cursor::new(args.content.into_bytes());
        Ok(
            match client
                .fs_write(
                    &args.sprite,
                    &path,
                    None,
                    args.make_parents.unwrap_or(true),
                    body,
                )
                .await
            {
                Ok(_) => text(format!("wrote {size} bytes to {path}")),
                Err(error) => failed(error),
            },
        )
    }

    #[tool(
        description = "List a directory of a sprite: name, type, size, mode, modification time."
    )]
    async fn list_files(
        &self,
        Parameters(args): Parameters<ListFilesArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let client = self.client(&ctx)?;
        let path = in_home(args.path.as_deref().unwrap_or("/home/sprite"));
        Ok(
            match client
                .fs_list(&args.sprite, &path, args.recursive.unwrap_or(false))
                .await
            {
                Ok(list) => text(
                    list.entries
                        .iter()
                        .map(|e| {
                            format!(
                                "{}{}\t{}\t{}\t{}",
                                e.path,
                                if e.is_dir { "/" } else { "" },
                                e.size,
                                e.mode,
                                e.mod_time
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                Err(error) => failed(error),
            },
        )
    }

    #[tool(
        description = "Checkpoint a sprite's whole disk now (instant, at any size). Do it before risky steps; checkpoint_restore goes back. Answers the checkpoint's id."
    )]
    async fn checkpoint_create(
        &self,
        Parameters(args): Parameters<CheckpointArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let client = self.client(&ctx)?;
        let events = match client
            .checkpoint(&args.sprite, args.comment.as_deref())
            .await
        {
            Ok(events) => events,
            Err(error) => return Ok(failed(error)),
        };
        let lines: Vec<String> = events
            .iter()
            .filter_map(|e| e.data.clone().or_else(|| e.error.clone()))
            .collect();
        Ok(text(lines.join("\n")))
    }

    #[tool(description = "List a sprite's checkpoints, newest first, with their comments.")]
    async fn checkpoint_list(
        &self,
        Parameters(args): Parameters<SpriteArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let client = self.client(&ctx)?;
        Ok(match client.checkpoints(&args.sprite, false).await {
            Ok(list) if list.is_empty() => text("no checkpoints yet"),
            Ok(list) => text(
                list.iter()
                    .map(|c| {
                        format!(
                            "{}\t{}\t{}",
                            c.id,
                            c.create_time,
                            c.comment.clone().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            Err(error) => failed(error),
        })
    }

    #[tool(
        description = "Restore a sprite's disk to a checkpoint: everything since is gone and its processes restart. Use it to undo a failed step."
    )]
    async fn checkpoint_restore(
        &self,
        Parameters(args): Parameters<RestoreArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let client = self.client(&ctx)?;
        Ok(match client.restore(&args.sprite, &args.checkpoint).await {
            Ok(_) => text(format!("restored {} to {}", args.sprite, args.checkpoint)),
            Err(error) => failed(error),
        })
    }

    #[tool(
        description = "Fork: a new sprite whose disk is a copy of another's checkpoint (instant). Try two approaches side by side."
    )]
    async fn fork_sprite(
        &self,
        Parameters(args): Parameters<ForkArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let client = self.client(&ctx)?;
        let request = serde_json::json!({
            "name": args.name,
            "from": { "sprite": args.source, "checkpoint": args.checkpoint },
        });
        let request = match serde_json::from_value(request) {
            Ok(request) => request,
            Err(error) => return Ok(failed(format!("bad request: {error}"))),
        };
        Ok(match client.create(&request).await {
            Ok(info) => json(&serde_json::json!({
                "name": info.name, "status": info.status, "url": info.url,
            })),
            Err(error) => failed(error),
        })
    }

    #[tool(
        description = "A sprite's URL (what listens on port 8080 in it, or its http service, answers there) and who may open it; with auth, change that (public or sprite)."
    )]
    async fn sprite_url(
        &self,
        Parameters(args): Parameters<UrlArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let client = self.client(&ctx)?;
        let info = match &args.auth {
            Some(auth) => {
                let request = serde_json::json!({ "url_settings": { "auth": auth } });
                let request = match serde_json::from_value(request) {
                    Ok(request) => request,
                    Err(error) => {
                        return Ok(failed(format!(
                            "auth {auth:?}: {error}; use public or sprite"
                        )))
                    }
                };
                client.update(&args.sprite, &request).await
            }
            None => client.get(&args.sprite).await,
        };
        Ok(match info {
            Ok(info) => json(&serde_json::json!({
                "url": info.url, "auth": info.url_settings.auth,
            })),
            Err(error) => failed(error),
        })
    }

    #[tool(
        description = "Create (or replace) and start a service: a long-running process restarted when it exits and started again when the sprite wakes. With http_port it serves the sprite's URL."
    )]
    async fn service_create(
        &self,
        Parameters(args): Parameters<ServiceArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let client = self.client(&ctx)?;
        let spec = sprite_api::services::ServiceSpec {
            cmd: args.cmd,
            args: args.args,
            env: args.env,
            dir: args.dir,
            needs: Vec::new(),
            http_port: args.http_port,
            user: None,
        };
        Ok(
            match client
                .put_service(&args.sprite, &args.name, &spec, Some("2s"), |_| {})
                .await
            {
                Ok(events) => {
                    let output: String = events
                        .iter()
                        .filter_map(|e| e.data.clone())
                        .collect::<Vec<_>>()
                        .join("");
                    text(format!(
                        "service {} started; its first output:\n{output}",
                        args.name
                    ))
                }
                Err(error) => failed(error),
            },
        )
    }

    #[tool(description = "List a sprite's services with their state.")]
    async fn service_list(
        &self,
        Parameters(args): Parameters<SpriteArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let client = self.client(&ctx)?;
        Ok(match client.services(&args.sprite).await {
            Ok(list) => json(&list),
            Err(error) => failed(error),
        })
    }

    #[tool(description = "The last lines a service wrote (stdout and stderr).")]
    async fn service_logs(
        &self,
        Parameters(args): Parameters<LogsArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let client = self.client(&ctx)?;
        let lines = args.lines.unwrap_or(100).clamp(1, 5000);
        Ok(
            match client.service_logs(&args.sprite, &args.name, lines).await {
                Ok(logs) => text(logs),
                Err(error) => failed(error),
            },
        )
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SpritesMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("sprites", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

/// Most MCP sessions open at once on a daemon, and for one organization. A session
/// holds a task and a channel until its client ends it or it idles out (rmcp's
/// keep-alive, 5 minutes); an initialize that never comes ends it after 60 s.
const MAX_MCP_SESSIONS: usize = 256;
const MAX_MCP_SESSIONS_PER_ORG: usize = 64;

type Sessions = rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

/// Who opened each open session, and the opens under way, to bound them per
/// organization.
#[derive(Clone, Default)]
struct SessionBound {
    sessions: std::sync::Arc<Sessions>,
    held: std::sync::Arc<parking_lot::Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    /// Session id → its organization.
    owners: std::collections::HashMap<String, String>,
    /// Opens let through and not answered yet, by organization: they count, so
    /// concurrent opens cannot all pass one count.
    opening: std::collections::HashMap<String, usize>,
}

/// An open under way; counted until dropped (answered or abandoned).
struct Opening {
    held: std::sync::Arc<parking_lot::Mutex<Held>>,
    org: String,
}

impl Drop for Opening {
    fn drop(&mut self) {
        let mut held = self.held.lock();
        if let Some(count) = held.opening.get_mut(&self.org) {
            *count -= 1;
            if *count == 0 {
                held.opening.remove(&self.org);
            }
        }
    }
}

impl SessionBound {
    /// Lets an open by `org` through (forgetting the sessions that ended), or answers
    /// (this organization's, the daemon's) sessions when it would pass a bound.
    async fn admit(&self, org: &str) -> Result<Opening, (usize, usize)> {
        let open = self.sessions.sessions.read().await;
        let mut held = self.held.lock();
        held.owners.retain(|id, _| open.contains_key(id.as_str()));
        let opening = |org: Option<&str>| -> usize {
            held.opening
                .iter()
                .filter(|(o, _)| org.is_none_or(|org| o.as_str() == org))
                .map(|(_, n)| n)
                .sum()
        };
        let mine = held.owners.values().filter(|o| o.as_str() == org).count() + opening(Some(org));
        let all = open.len() + opening(None);
        if all >= MAX_MCP_SESSIONS || mine >= MAX_MCP_SESSIONS_PER_ORG {
            return Err((mine, all));
        }
        *held.opening.entry(org.to_string()).or_default() += 1;
        Ok(Opening {
            held: self.held.clone(),
            org: org.to_string(),
        })
    }
}

/// Refuses a request that would open a session past the bounds with a 429 that says
/// so; notes who opened the ones it lets through.
async fn bound_sessions(
    axum::extract::State(bound): axum::extract::State<SessionBound>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use rmcp::transport::common::http_header::HEADER_SESSION_ID;
    let opens = request.method() == axum::http::Method::POST
        && !request.headers().contains_key(HEADER_SESSION_ID);
    if !opens {
        return next.run(request).await;
    }
    let org = request
        .extensions()
        .get::<sprite_server::Org>()
        .map(|org| org.0.clone())
        .unwrap_or_default();
    let opening = match bound.admit(&org).await {
        Ok(opening) => opening,
        Err((mine, all)) => {
            let message = format!(
                "too many MCP sessions open ({mine} of this organization's {MAX_MCP_SESSIONS_PER_ORG}, {all} of the daemon's {MAX_MCP_SESSIONS}): end unused ones (DELETE /mcp with their Mcp-Session-Id) or wait for idle ones to close (5 minutes)"
            );
            return sprite_server::ApiError::new(sprite_api::ErrorKind::RateLimited, message)
                .into_response();
        }
    };
    let response = next.run(request).await;
    if let Some(id) = response
        .headers()
        .get(HEADER_SESSION_ID)
        .and_then(|v| v.to_str().ok())
    {
        bound.held.lock().owners.insert(id.to_string(), org);
    }
    drop(opening);
    response
}

/// `/mcp` for the daemon's router: streamable HTTP, every request with a token the
/// daemon knows (refused with 401 before MCP sees it otherwise), sessions bounded.
pub fn http_routes(state: sprite_server::AppState, api: &str) -> axum::Router {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let api = api.to_string();
    let bound = SessionBound::default();
    let service: StreamableHttpService<SpritesMcp, Sessions> = StreamableHttpService::new(
        move || Ok(SpritesMcp::new(&api, None)),
        bound.sessions.clone(),
        // Every request carries a token, so a page a browser opens cannot use
        // it: no need to check Host against a list.
        StreamableHttpServerConfig::default().disable_allowed_hosts(),
    );
    axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(bound, bound_sessions))
        .layer(axum::middleware::from_fn_with_state(
            state,
            sprite_server::require_token,
        ))
}

/// `sprite mcp`: the same tools over stdin/stdout until the client leaves.
pub async fn serve_stdio(api: &str, token: &str) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let running = SpritesMcp::new(api, Some(token.to_string()))
        .serve(rmcp::transport::stdio())
        .await?;
    running.waiting().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped_and_counted() {
        let mut out = Vec::new();
        let mut cut = 0;
        capped(&mut out, b"hello", 3, &mut cut);
        capped(&mut out, b"more", 3, &mut cut);
        assert_eq!((out.as_slice(), cut), (&b"hel"[..], 6));
        assert_eq!(in_home("a/b"), "/home/sprite/a/b");
        assert_eq!(in_home("/etc/x"), "/etc/x");
    }
}
