//! Services: long-running processes a sprite keeps up (API.md, Services).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest service name.
pub const MAX_SERVICE_NAME: usize = 63;

/// `PUT /v1/sprites/{name}/services/{svc}` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct ServiceSpec {
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Services that must be started before this one.
    #[serde(default)]
    pub needs: Vec<String>,
    /// The port the sprite's URL is proxied to (one service per sprite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    /// Ours: the account it runs as (default `sprite`, or root in an image without
    /// one); a registry image's service from `run_cmd` runs as the image's `User`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// What a service is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceStatus {
    Stopped,
    Starting,
    Running,
    Stopping,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServiceState {
    pub name: String,
    pub status: ServiceStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub restart_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_restart_at: Option<String>,
    /// Ours: the exec session of the current run (attach to it to follow its output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// A service as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServiceInfo {
    pub name: String,
    #[serde(flatten)]
    pub spec: ServiceSpec,
    pub state: ServiceState,
}

/// What a line of a service's NDJSON stream says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceEventKind {
    Started,
    Stdout,
    Stderr,
    Exit,
    Stopping,
    Stopped,
    Error,
    Complete,
    /// A kind this version does not know (a newer server's).
    #[serde(other)]
    Other,
}

impl ServiceEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceEventKind::Started => "started",
            ServiceEventKind::Stdout => "stdout",
            ServiceEventKind::Stderr => "stderr",
            ServiceEventKind::Exit => "exit",
            ServiceEventKind::Stopping => "stopping",
            ServiceEventKind::Stopped => "stopped",
            ServiceEventKind::Error => "error",
            ServiceEventKind::Complete => "complete",
            ServiceEventKind::Other => "other",
        }
    }
}

impl std::fmt::Display for ServiceEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of a service's NDJSON stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServiceEvent {
    #[serde(rename = "type")]
    pub kind: ServiceEventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Milliseconds since the Unix epoch (the SDKs read an integer).
    pub timestamp: i64,
    /// On `complete`: where the service's output is logged inside the sprite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_files: Option<BTreeMap<String, String>>,
}

/// The log file of a service inside its sprite.
pub fn service_log_path(name: &str) -> String {
    format!("/.sprite/logs/services/{name}.log")
}

/// `POST /v1/sprites/{name}/services/signal` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServiceSignal {
    pub name: String,
    pub signal: String,
}

/// Checks a service name: 1 to 63 of a-z, 0-9, `-` and `_`, not `signal` (a route).
pub fn validate_service_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name != "signal";
    if valid {
        Ok(())
    } else {
        Err(format!(
            "service name {name:?} is not valid; use 1 to {MAX_SERVICE_NAME} of a-z, 0-9, - and _ (not \"signal\")"
        ))
    }
}

/// Checks a service spec on its own (the names it needs are checked against the
/// sprite's other services where it is stored).
pub fn validate_service_spec(name: &str, spec: &ServiceSpec) -> Result<(), String> {
    validate_service_name(name)?;
    if spec.cmd.trim().is_empty() {
        return Err(format!("service {name}: cmd is required"));
    }
    if spec.needs.iter().any(|n| n == name) {
        return Err(format!("service {name} cannot need itself"));
    }
    if spec.http_port == Some(0) {
        return Err(format!("service {name}: http_port 0 is not a port"));
    }
    if let Some(key) = spec
        .env
        .keys()
        .find(|k| k.is_empty() || k.contains(['=', '\0']))
    {
        return Err(format!(
            "service {name}: environment key {key:?} is not valid"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn event_kinds_are_the_wire_words_and_an_unknown_one_is_other() {
        let line = r#"{"type":"stdout","data":"hi","timestamp":1}"#;
        let event: ServiceEvent = serde_json::from_str(line).expect("reads");
        assert_eq!(event.kind, ServiceEventKind::Stdout);
        assert_eq!(serde_json::to_string(&event).expect("writes"), line);
        let newer: ServiceEvent =
            serde_json::from_str(r#"{"type":"paused","timestamp":1}"#).expect("reads");
        assert_eq!(newer.kind, ServiceEventKind::Other);
        for kind in [
            "started", "stderr", "exit", "stopping", "stopped", "error", "complete",
        ] {
            let parsed: ServiceEventKind =
                serde_json::from_value(serde_json::json!(kind)).expect("known");
            assert_eq!(parsed.as_str(), kind);
        }
        let progress: crate::sprite::ProgressEvent =
            serde_json::from_str(r#"{"type":"complete","data":"v1"}"#).expect("reads");
        assert_eq!(progress.kind, crate::sprite::ProgressKind::Complete);
        let change: crate::fs::WatchChange =
            serde_json::from_value(serde_json::json!("chmod")).expect("reads");
        assert_eq!(change, crate::fs::WatchChange::Chmod);
    }

    use super::*;

    #[test]
    fn service_info_has_the_api_shape() {
        let info = ServiceInfo {
            name: "web".into(),
            spec: ServiceSpec {
                cmd: "python3".into(),
                args: vec!["-m".into(), "http.server".into()],
                http_port: Some(8080),
                ..Default::default()
            },
            state: ServiceState {
                name: "web".into(),
                status: ServiceStatus::Running,
                pid: Some(7),
                started_at: None,
                error: None,
                restart_count: 0,
                next_restart_at: None,
                session_id: None,
            },
        };
        let value = serde_json::to_value(&info).expect("json");
        assert_eq!(value["cmd"], "python3");
        assert_eq!(value["http_port"], 8080);
        assert_eq!(value["state"]["status"], "running");
        let back: ServiceInfo = serde_json::from_value(value).expect("parse");
        assert_eq!(back, info);
    }

    #[test]
    fn names_and_specs_are_checked() {
        assert!(validate_service_name("web-1_a").is_ok());
        for bad in ["", "Web", "a/b", "signal", &"x".repeat(64)] {
            assert!(validate_service_name(bad).is_err(), "{bad}");
        }
        let spec = ServiceSpec {
            cmd: "run".into(),
            ..Default::default()
        };
        assert!(validate_service_spec("a", &spec).is_ok());
        let needs_itself = ServiceSpec {
            needs: vec!["a".into()],
            ..spec.clone()
        };
        assert!(validate_service_spec("a", &needs_itself).is_err());
        let no_cmd = ServiceSpec::default();
        assert!(validate_service_spec("a", &no_cmd)
            .expect_err("no cmd")
            .contains("cmd is required"));
    }
}
