//! `GET /openapi.json`: the API as an OpenAPI 3.1 document. The request and response
//! bodies are the JSON Schemas of the wire types themselves (`sprite-api`, derived with
//! `schemars`), and the operations are the table below, which a test holds against the
//! real router in both directions (every operation here is served; every route and
//! method the router serves is here), so the document cannot drift.

use schemars::SchemaGenerator;
use serde_json::{json, Map, Value};
use sprite_api::{admin, exec, fs, policy, services, sprite};

/// What an operation's body is.
#[derive(Clone, Copy)]
pub enum Body {
    None,
    /// A JSON value of this schema (its name in `components.schemas`).
    Json(&'static str),
    /// A JSON array of this schema.
    JsonArray(&'static str),
    /// NDJSON lines of this schema.
    Ndjson(&'static str),
    /// Raw bytes.
    Bytes,
    /// Prometheus text.
    Text,
    /// HTML.
    Html,
    /// A WebSocket upgrade.
    WebSocket,
}

/// Who may call an operation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Token,
    Admin,
}

/// One operation of the API.
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub request: Body,
    pub response: Body,
    pub access: Access,
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    request: Body,
    response: Body,
    access: Access,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        request,
        response,
        access,
    }
}

use Access::{Admin, Public, Token};
use Body::{Bytes, Html, Json, JsonArray, Ndjson, Text, WebSocket};

/// Every operation the daemon's API listener serves.
pub const OPERATIONS: &[Operation] = &[
    op(
        "GET",
        "/healthz",
        "Liveness: status, version, sprites running, pool",
        Body::None,
        Json("Health"),
        Public,
    ),
    op(
        "GET",
        "/openapi.json",
        "This document",
        Body::None,
        Json("OpenApi"),
        Public,
    ),
    op("GET", "/", "The web console", Body::None, Html, Public),
    op(
        "GET",
        "/console",
        "The web console",
        Body::None,
        Html,
        Public,
    ),
    op(
        "GET",
        "/console/assets/{file}",
        "A file of the web console",
        Body::None,
        Bytes,
        Public,
    ),
    op(
        "POST",
        "/console/login",
        "Exchange a token for a console session cookie",
        Json("ConsoleLogin"),
        Json("ConsoleSession"),
        Public,
    ),
    op(
        "POST",
        "/console/logout",
        "End the console session",
        Body::None,
        Body::None,
        Public,
    ),
    op(
        "GET",
        "/console/session",
        "The console session",
        Body::None,
        Json("ConsoleSession"),
        Public,
    ),
    op(
        "POST",
        "/v1/sprites",
        "Create a sprite",
        Json("CreateSpriteRequest"),
        Json("SpriteInfo"),
        Token,
    ),
    op(
        "GET",
        "/v1/sprites",
        "List sprites (with Accept: application/x-ndjson, a live watch)",
        Body::None,
        Json("SpriteList"),
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}",
        "One sprite",
        Body::None,
        Json("SpriteInfo"),
        Token,
    ),
    op(
        "PUT",
        "/v1/sprites/{name}",
        "Change a sprite's URL settings or labels",
        Json("UpdateSpriteRequest"),
        Json("SpriteInfo"),
        Token,
    ),
    op(
        "DELETE",
        "/v1/sprites/{name}",
        "Destroy a sprite",
        Body::None,
        Body::None,
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/exec",
        "Run a command over a WebSocket; without an upgrade, the sessions",
        Body::None,
        WebSocket,
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/exec",
        "Run a command over plain HTTP (stdin in, framed output back)",
        Bytes,
        Bytes,
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/exec/{session}",
        "Attach to a session (replay, then live)",
        Body::None,
        WebSocket,
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/exec/{session}/kill",
        "Signal a session, KILL after a timeout",
        Body::None,
        Ndjson("KillEvent"),
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/checkpoint",
        "Checkpoint the sprite's disk",
        Json("CheckpointRequest"),
        Ndjson("ProgressEvent"),
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/checkpoints",
        "List checkpoints",
        Body::None,
        JsonArray("CheckpointInfo"),
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/checkpoints/{id}",
        "One checkpoint",
        Body::None,
        Json("CheckpointInfo"),
        Token,
    ),
    op(
        "DELETE",
        "/v1/sprites/{name}/checkpoints/{id}",
        "Delete a checkpoint",
        Body::None,
        Body::None,
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/checkpoints/{id}/restore",
        "Restore a checkpoint",
        Body::None,
        Ndjson("ProgressEvent"),
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/usage",
        "Stored bytes and hourly usage since ?since=",
        Body::None,
        Json("SpriteUsage"),
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/services",
        "List services",
        Body::None,
        JsonArray("ServiceInfo"),
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/services/signal",
        "Signal a service",
        Json("ServiceSignal"),
        Body::None,
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/services/{service}",
        "One service",
        Body::None,
        Json("ServiceInfo"),
        Token,
    ),
    op(
        "PUT",
        "/v1/sprites/{name}/services/{service}",
        "Create or replace a service and start it",
        Json("ServiceSpec"),
        Ndjson("ServiceEvent"),
        Token,
    ),
    op(
        "DELETE",
        "/v1/sprites/{name}/services/{service}",
        "Delete a service",
        Body::None,
        Body::None,
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/services/{service}/start",
        "Start a service",
        Body::None,
        Ndjson("ServiceEvent"),
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/services/{service}/stop",
        "Stop a service",
        Body::None,
        Ndjson("ServiceEvent"),
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/services/{service}/restart",
        "Restart a service",
        Body::None,
        Ndjson("ServiceEvent"),
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/services/{service}/logs",
        "A service's output",
        Body::None,
        Ndjson("ServiceEvent"),
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/proxy",
        "A TCP connection into the sprite",
        Body::None,
        WebSocket,
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/control",
        "The SDKs' multiplexed control connection",
        Body::None,
        WebSocket,
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/ports/watch",
        "Ports opened and closed in the sprite",
        Body::None,
        WebSocket,
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/policy/network",
        "The egress policy",
        Body::None,
        Json("NetworkPolicy"),
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/policy/network",
        "Set the egress policy",
        Json("NetworkPolicy"),
        Body::None,
        Token,
    ),
    op(
        "PUT",
        "/v1/sprites/{name}/policy/network",
        "Set the egress policy",
        Json("NetworkPolicy"),
        Body::None,
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/policy/resources",
        "CPU, memory and disk limits",
        Body::None,
        Json("ResourcesPolicy"),
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/policy/resources",
        "Change limits, live",
        Json("ResourcesPolicy"),
        Json("ResourcesPolicy"),
        Token,
    ),
    op(
        "PUT",
        "/v1/sprites/{name}/policy/resources",
        "Change limits, live",
        Json("ResourcesPolicy"),
        Json("ResourcesPolicy"),
        Token,
    ),
    op(
        "DELETE",
        "/v1/sprites/{name}/policy/resources",
        "Limits back to the sprite's config",
        Body::None,
        Json("ResourcesPolicy"),
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/policy/privileges",
        "Privileges",
        Body::None,
        Json("PrivilegesPolicy"),
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/policy/privileges",
        "Set privileges",
        Json("PrivilegesPolicy"),
        Json("PrivilegesPolicy"),
        Token,
    ),
    op(
        "PUT",
        "/v1/sprites/{name}/policy/privileges",
        "Set privileges",
        Json("PrivilegesPolicy"),
        Json("PrivilegesPolicy"),
        Token,
    ),
    op(
        "DELETE",
        "/v1/sprites/{name}/policy/privileges",
        "Privileges back to the defaults",
        Body::None,
        Json("PrivilegesPolicy"),
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/fs/read",
        "Read a file (Range supported)",
        Body::None,
        Bytes,
        Token,
    ),
    op(
        "PUT",
        "/v1/sprites/{name}/fs/write",
        "Write a file",
        Bytes,
        Json("FsWritten"),
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/fs/list",
        "List a directory",
        Body::None,
        Json("FsList"),
        Token,
    ),
    op(
        "DELETE",
        "/v1/sprites/{name}/fs/delete",
        "Delete a file or tree",
        Json("DeleteRequest"),
        Json("FsDeleted"),
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/fs/rename",
        "Rename",
        Json("RenameRequest"),
        Json("FsRenamed"),
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/fs/copy",
        "Copy",
        Json("CopyRequest"),
        Json("FsCopied"),
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/fs/chmod",
        "Change modes",
        Json("ChmodRequest"),
        Json("FsAffected"),
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/fs/chown",
        "Change owners",
        Json("ChownRequest"),
        Json("FsAffected"),
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/fs/watch",
        "Watch paths for changes",
        Body::None,
        WebSocket,
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/upgrade",
        "Move onto the newest version of its image",
        Body::None,
        Json("UpgradeReport"),
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/restart",
        "Stop and start the sprite",
        Body::None,
        Json("SpriteInfo"),
        Token,
    ),
    op(
        "GET",
        "/v1/sprites/{name}/check",
        "Health of the sprite",
        Body::None,
        Json("Check"),
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/sleep",
        "Sleep now (warm, or ?cold=true)",
        Body::None,
        Json("SpriteInfo"),
        Token,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/wake",
        "Wake now",
        Body::None,
        Json("SpriteInfo"),
        Token,
    ),
    op(
        "GET",
        "/v1/organization",
        "The organization: counts by status and limits",
        Body::None,
        Json("OrgCounts"),
        Token,
    ),
    op(
        "GET",
        "/v1/templates",
        "List templates",
        Body::None,
        Json("TemplateList"),
        Token,
    ),
    op(
        "POST",
        "/v1/templates",
        "Make a template of a checkpoint",
        Json("CreateTemplateRequest"),
        Json("TemplateInfo"),
        Token,
    ),
    op(
        "GET",
        "/v1/templates/{name}",
        "One template",
        Body::None,
        Json("TemplateInfo"),
        Token,
    ),
    op(
        "DELETE",
        "/v1/templates/{name}",
        "Delete a template",
        Body::None,
        Body::None,
        Token,
    ),
    op(
        "GET",
        "/v1/images",
        "Images and their state",
        Body::None,
        Json("ImageList"),
        Token,
    ),
    op(
        "POST",
        "/v1/images",
        "Pull from a registry (JSON) or import a tarball (?name=)",
        Json("PullRequest"),
        Ndjson("PullEvent"),
        Admin,
    ),
    op(
        "POST",
        "/v1/images/{image}/update",
        "A new version of an image",
        Json("PullRequest"),
        Ndjson("PullEvent"),
        Admin,
    ),
    op(
        "POST",
        "/v1/sprites/{name}/move",
        "Move a sprite to another host of the cluster",
        Json("MoveRequest"),
        Json("MoveReport"),
        Admin,
    ),
    op(
        "POST",
        "/v1/admin/gc",
        "Collect unreferenced chunks and layers",
        Body::None,
        Json("GcReport"),
        Admin,
    ),
    op(
        "GET",
        "/v1/admin/hosts",
        "The cluster's hosts",
        Body::None,
        Json("HostList"),
        Admin,
    ),
    op(
        "POST",
        "/v1/admin/hosts/{id}/drain",
        "Move every sprite off a host",
        Body::None,
        Json("DrainReport"),
        Admin,
    ),
    op(
        "GET",
        "/v1/organizations/{org}/tokens",
        "An organization's tokens",
        Body::None,
        Json("TokenList"),
        Admin,
    ),
    op(
        "POST",
        "/v1/organizations/{org}/tokens",
        "Mint a token (the SDKs' create_token)",
        Json("CreateTokenRequest"),
        Json("CreatedToken"),
        Admin,
    ),
    op(
        "DELETE",
        "/v1/organizations/{org}/tokens/{id}",
        "Revoke a token",
        Body::None,
        Body::None,
        Admin,
    ),
    op(
        "GET",
        "/v1/admin/tokens",
        "Every organization's tokens",
        Body::None,
        Json("TokenList"),
        Admin,
    ),
    op(
        "GET",
        "/v1/admin/organizations",
        "Organizations and their limits",
        Body::None,
        Json("OrgList"),
        Admin,
    ),
    op(
        "GET",
        "/v1/admin/organizations/{org}",
        "An organization's limits",
        Body::None,
        Json("OrgLimits"),
        Admin,
    ),
    op(
        "PUT",
        "/v1/admin/organizations/{org}",
        "Set an organization's limits",
        Json("SetOrgLimits"),
        Json("OrgLimits"),
        Admin,
    ),
    op(
        "GET",
        "/v1/admin/status",
        "The daemon's status",
        Body::None,
        Json("DaemonStatus"),
        Admin,
    ),
    op(
        "POST",
        "/v1/admin/stop",
        "Stop the daemon (all: every sprite cold, host cleaned)",
        Json("StopRequest"),
        Ndjson("StopEvent"),
        Admin,
    ),
    op(
        "GET",
        "/metrics",
        "Prometheus metrics",
        Body::None,
        Text,
        Admin,
    ),
];

/// Schemas of bodies that are not one wire type (small objects the handlers build).
fn extra_schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "Health",
            json!({ "type": "object", "properties": {
            "status": { "type": "string" }, "version": { "type": "string" },
            "sprites_running": { "type": "integer" }, "pool_ready": { "type": "integer" } } }),
        ),
        (
            "OpenApi",
            json!({ "type": "object", "description": "An OpenAPI 3.1 document" }),
        ),
        (
            "ConsoleLogin",
            json!({ "type": "object", "required": ["token"], "properties": { "token": { "type": "string" } } }),
        ),
        (
            "ConsoleSession",
            json!({ "type": "object", "properties": {
            "org": { "type": "string" }, "scope": { "$ref": "#/components/schemas/TokenScope" },
            "csrf": { "type": "string" } } }),
        ),
        (
            "CheckpointRequest",
            json!({ "type": "object", "properties": { "comment": { "type": ["string", "null"] } } }),
        ),
        (
            "KillEvent",
            json!({ "type": "object", "properties": { "type": { "type": "string" } }, "additionalProperties": true }),
        ),
        (
            "Check",
            json!({ "type": "object", "additionalProperties": true }),
        ),
    ]
}

/// The component schemas of every wire type the operations name (and of the types
/// they refer to).
fn wire_schemas() -> Map<String, Value> {
    let mut generator = SchemaGenerator::new(
        schemars::generate::SchemaSettings::draft2020_12().with(|s| {
            s.definitions_path = "/components/schemas".into();
        }),
    );
    macro_rules! add {
        ($($t:ty),* $(,)?) => {{
            $( let _ = generator.subschema_for::<$t>(); )*
        }};
    }
    add!(
        sprite::CreateSpriteRequest,
        sprite::SpriteInfo,
        sprite::SpriteList,
        sprite::UpdateSpriteRequest,
        sprite::CheckpointInfo,
        sprite::ProgressEvent,
        sprite::TemplateList,
        sprite::TemplateInfo,
        sprite::CreateTemplateRequest,
        sprite::OrgCounts,
        sprite::UpgradeReport,
        admin::SpriteUsage,
        admin::ImageList,
        admin::PullRequest,
        admin::PullEvent,
        admin::GcReport,
        admin::HostList,
        admin::DrainReport,
        admin::MoveRequest,
        admin::MoveReport,
        admin::TokenList,
        admin::CreateTokenRequest,
        admin::CreatedToken,
        admin::TokenScope,
        admin::OrgList,
        admin::OrgLimits,
        admin::SetOrgLimits,
        admin::DaemonStatus,
        admin::StopRequest,
        admin::StopEvent,
        services::ServiceInfo,
        services::ServiceSpec,
        services::ServiceEvent,
        services::ServiceSignal,
        policy::NetworkPolicy,
        policy::ResourcesPolicy,
        policy::PrivilegesPolicy,
        fs::FsWritten,
        fs::FsList,
        fs::FsDeleted,
        fs::DeleteRequest,
        fs::RenameRequest,
        fs::FsRenamed,
        fs::CopyRequest,
        fs::FsCopied,
        fs::ChmodRequest,
        fs::ChownRequest,
        fs::FsAffected,
        exec::SessionList,
        sprite_api::error::ErrorBody,
    );
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    for (name, schema) in extra_schemas() {
        schemas.insert(name.to_string(), schema);
    }
    schemas
}

fn content(body: Body) -> Option<Value> {
    let reference = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    Some(match body {
        Body::None | WebSocket => return None,
        Json(name) => json!({ "application/json": { "schema": reference(name) } }),
        JsonArray(name) => {
            json!({ "application/json": { "schema": { "type": "array", "items": reference(name) } } })
        }
        Ndjson(name) => json!({ "application/x-ndjson": { "schema": reference(name) } }),
        Bytes => {
            json!({ "application/octet-stream": { "schema": { "type": "string", "contentEncoding": "binary" } } })
        }
        Text => json!({ "text/plain": { "schema": { "type": "string" } } }),
        Html => json!({ "text/html": { "schema": { "type": "string" } } }),
    })
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for operation in OPERATIONS {
        let mut entry = Map::new();
        entry.insert("summary".into(), json!(operation.summary));
        entry.insert(
            "operationId".into(),
            json!(format!(
                "{} {}",
                operation.method.to_lowercase(),
                operation.path
            )),
        );
        let parameters: Vec<Value> = operation
            .path
            .split('/')
            .filter_map(|part| part.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        if !parameters.is_empty() {
            entry.insert("parameters".into(), Value::Array(parameters));
        }
        if let Some(content) = content(operation.request) {
            entry.insert(
                "requestBody".into(),
                json!({ "required": false, "content": content }),
            );
        }
        let mut responses = Map::new();
        let ok = match (operation.response, operation.method) {
            (WebSocket, _) => {
                json!({ "description": "101 Switching Protocols: a WebSocket (see API.md for its frames)" })
            }
            (Body::None, _) => json!({ "description": "done" }),
            (body, _) => json!({ "description": "done", "content": content(body) }),
        };
        let status = match (operation.response, operation.method, operation.path) {
            (WebSocket, ..) => "101",
            (_, "POST", "/v1/sprites") | (_, "POST", "/v1/templates") => "201",
            (_, "POST", "/v1/organizations/{org}/tokens") => "201",
            (Body::None, ..) => "204",
            _ => "200",
        };
        responses.insert(status.into(), ok);
        responses.insert(
            "default".into(),
            json!({ "description": "an error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } } }),
        );
        entry.insert("responses".into(), Value::Object(responses));
        match operation.access {
            Public => {
                entry.insert("security".into(), json!([]));
            }
            Admin => {
                entry.insert(
                    "description".into(),
                    json!("Needs a token with the admin scope."),
                );
            }
            Token => {}
        }
        let item = paths
            .entry(operation.path.to_string())
            .or_insert_with(|| json!({}));
        if let Some(item) = item.as_object_mut() {
            item.insert(operation.method.to_lowercase(), Value::Object(entry));
        }
    }
    let schemas = wire_schemas();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "sprites",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The sprites daemon: the Sprites v1 API (wire-compatible with the hosted product's SDKs) and its extensions. See docs/guide.md."
        },
        "servers": [{ "url": "http://127.0.0.1:7070" }],
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "A token: the daemon's admin token or one from sprite tokens create" }
            }
        }
    })
}

/// `GET /openapi.json`.
pub async fn openapi() -> axum::Json<Value> {
    axum::Json(document())
}
