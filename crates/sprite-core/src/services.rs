//! Services of a sprite: the daemon's side. sprite-init runs them and keeps their
//! definitions in the sprite's filesystem; every call here wakes the sprite first.

use crate::error::CoreError;
use crate::ids::SpriteKey;
use crate::manager::SpriteManager;
use sprite_api::services::{ServiceInfo, ServiceSpec};
use sprite_api::ErrorKind;
use sprite_sandbox::protocol::{ErrorCode, Event, Request};
use sprite_sandbox::SandboxError;

impl SpriteManager {
    async fn service_call(&self, key: &SpriteKey, request: Request) -> Result<Event, CoreError> {
        let name = key.name.as_str();
        let (_, client, _awake) = self.running_client(key).await?;
        client.service(request).await.map_err(|error| match error {
            SandboxError::Init {
                kind: ErrorCode::NotFound,
                message,
            } => CoreError::InSprite {
                kind: ErrorKind::NotFound,
                message,
            },
            SandboxError::Init {
                kind: ErrorCode::Conflict | ErrorCode::Gone,
                message,
            } => CoreError::InSprite {
                kind: ErrorKind::Conflict,
                message,
            },
            SandboxError::Init {
                kind: ErrorCode::Invalid | ErrorCode::SpawnFailed,
                message,
            } => CoreError::InSprite {
                kind: ErrorKind::InvalidRequest,
                message,
            },
            source => CoreError::Sandbox {
                sprite: name.to_string(),
                source,
            },
        })
    }

    async fn service_answer(
        &self,
        key: &SpriteKey,
        request: Request,
    ) -> Result<ServiceInfo, CoreError> {
        let name = key.name.as_str();
        match self.service_call(key, request).await? {
            Event::Service { service } => Ok(*service),
            other => Err(unexpected(name, &other)),
        }
    }

    pub async fn services(&self, key: &SpriteKey) -> Result<Vec<ServiceInfo>, CoreError> {
        let name = key.name.as_str();
        match self.service_call(key, Request::ServiceList).await? {
            Event::ServiceList { services } => Ok(services),
            other => Err(unexpected(name, &other)),
        }
    }

    pub async fn service(&self, key: &SpriteKey, service: &str) -> Result<ServiceInfo, CoreError> {
        let request = Request::ServiceGet {
            name: service.into(),
        };
        self.service_answer(key, request).await
    }

    /// Creates or replaces a service and starts it.
    pub async fn put_service(
        &self,
        key: &SpriteKey,
        service: &str,
        spec: ServiceSpec,
    ) -> Result<ServiceInfo, CoreError> {
        sprite_api::services::validate_service_spec(service, &spec)
            .map_err(CoreError::Validation)?;
        let request = Request::ServicePut {
            name: service.into(),
            spec,
        };
        let answer = self.service_answer(key, request).await;
        self.forget_http_port(&self.record(key)?.id);
        answer
    }

    pub async fn start_service(
        &self,
        key: &SpriteKey,
        service: &str,
    ) -> Result<ServiceInfo, CoreError> {
        let request = Request::ServiceStart {
            name: service.into(),
        };
        self.service_answer(key, request).await
    }

    /// Stops a service (it stays stopped until started again): SIGTERM, then SIGKILL
    /// after `grace` (sprite-init's default when `None`).
    pub async fn stop_service(
        &self,
        key: &SpriteKey,
        service: &str,
        grace: Option<std::time::Duration>,
    ) -> Result<ServiceInfo, CoreError> {
        let request = Request::ServiceStop {
            name: service.into(),
            grace_ms: grace.map(|g| u64::try_from(g.as_millis()).unwrap_or(u64::MAX)),
        };
        self.service_answer(key, request).await
    }

    pub async fn signal_service(
        &self,
        key: &SpriteKey,
        service: &str,
        signal: i32,
    ) -> Result<(), CoreError> {
        let request = Request::ServiceSignal {
            name: service.into(),
            signal,
        };
        self.service_call(key, request).await.map(|_| ())
    }

    pub async fn delete_service(&self, key: &SpriteKey, service: &str) -> Result<(), CoreError> {
        let request = Request::ServiceDelete {
            name: service.into(),
        };
        let answer = self.service_call(key, request).await.map(|_| ());
        self.forget_http_port(&self.record(key)?.id);
        answer
    }

    /// The last `lines` lines of a service's log.
    pub async fn service_logs(
        &self,
        key: &SpriteKey,
        service: &str,
        lines: usize,
    ) -> Result<String, CoreError> {
        let name = key.name.as_str();
        let request = Request::ServiceLogs {
            name: service.into(),
            lines,
        };
        match self.service_call(key, request).await? {
            Event::Logs { text } => Ok(text),
            other => Err(unexpected(name, &other)),
        }
    }
}

fn unexpected(name: &str, event: &Event) -> CoreError {
    CoreError::Sandbox {
        sprite: name.to_string(),
        source: SandboxError::Unexpected(format!("{event:?}")),
    }
}
