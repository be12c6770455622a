//! Services of a sprite: the daemon's side. sprite-init runs them and keeps their
//! definitions in the sprite's filesystem. [`SpriteManager::services`] wakes the sprite
//! and hands out a [`SpriteServices`], which talks to its init and holds it awake while
//! it lives (as [`crate::files::SpriteRoot`] does for the file-system API).

use crate::activity::{ActivityGuard, Reason};
use crate::error::CoreError;
use crate::ids::SpriteKey;
use crate::manager::SpriteManager;
use crate::slots::Slots;
use sprite_api::services::{ServiceInfo, ServiceSpec};
use sprite_api::ErrorKind;
use sprite_sandbox::client::InitClient;
use sprite_sandbox::protocol::{ErrorCode, Event, Request};
use sprite_sandbox::SandboxError;
use std::sync::Arc;

/// The services of one awake sprite.
#[derive(Debug)]
pub struct SpriteServices {
    name: String,
    client: InitClient,
    /// The sprite's id, and the slots of the host: a change of services forgets the
    /// port its URL goes to (if the sprite still has a slot: a destroy meanwhile took
    /// it, and looking must not make it again).
    sprite_id: String,
    slots: Arc<Slots>,
    _awake: ActivityGuard,
}

impl SpriteManager {
    /// The services of a sprite, waking it first; it stays awake while the answer lives.
    pub async fn services(&self, key: &SpriteKey) -> Result<SpriteServices, CoreError> {
        let record = self.record(key)?;
        let awake = self.lifecycle.wake_record(&record, Reason::Api).await?;
        Ok(SpriteServices {
            name: record.name.clone(),
            client: self.lifecycle.client_for(&record.id),
            sprite_id: record.id.to_string(),
            slots: self.lifecycle.slots.clone(),
            _awake: awake,
        })
    }
}

impl SpriteServices {
    async fn call(&self, request: Request) -> Result<Event, CoreError> {
        self.client
            .service(request)
            .await
            .map_err(|error| match error {
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
                    sprite: self.name.clone(),
                    source,
                },
            })
    }

    async fn answer(&self, request: Request) -> Result<ServiceInfo, CoreError> {
        match self.call(request).await? {
            Event::Service { service } => Ok(*service),
            other => Err(self.unexpected(&other)),
        }
    }

    fn unexpected(&self, event: &Event) -> CoreError {
        CoreError::Sandbox {
            sprite: self.name.clone(),
            source: SandboxError::Unexpected(format!("{event:?}")),
        }
    }

    /// The port the sprite's URL goes to may have changed.
    fn forget_http_port(&self) {
        if let Some(slot) = self.slots.peek(&self.sprite_id) {
            *slot.http_port.lock() = None;
        }
    }

    pub async fn list(&self) -> Result<Vec<ServiceInfo>, CoreError> {
        match self.call(Request::ServiceList).await? {
            Event::ServiceList { services } => Ok(services),
            other => Err(self.unexpected(&other)),
        }
    }

    pub async fn get(&self, service: &str) -> Result<ServiceInfo, CoreError> {
        self.answer(Request::ServiceGet {
            name: service.into(),
        })
        .await
    }

    /// Creates or replaces a service and starts it.
    pub async fn put(&self, service: &str, spec: ServiceSpec) -> Result<ServiceInfo, CoreError> {
        sprite_api::services::validate_service_spec(service, &spec)
            .map_err(CoreError::Validation)?;
        let answer = self
            .answer(Request::ServicePut {
                name: service.into(),
                spec,
            })
            .await;
        self.forget_http_port();
        answer
    }

    pub async fn start(&self, service: &str) -> Result<ServiceInfo, CoreError> {
        self.answer(Request::ServiceStart {
            name: service.into(),
        })
        .await
    }

    /// Stops a service (it stays stopped until started again): SIGTERM, then SIGKILL
    /// after `grace` (sprite-init's default when `None`).
    pub async fn stop(
        &self,
        service: &str,
        grace: Option<std::time::Duration>,
    ) -> Result<ServiceInfo, CoreError> {
        self.answer(Request::ServiceStop {
            name: service.into(),
            grace_ms: grace.map(|g| u64::try_from(g.as_millis()).unwrap_or(u64::MAX)),
        })
        .await
    }

    pub async fn signal(&self, service: &str, signal: i32) -> Result<(), CoreError> {
        self.call(Request::ServiceSignal {
            name: service.into(),
            signal,
        })
        .await
        .map(|_| ())
    }

    pub async fn delete(&self, service: &str) -> Result<(), CoreError> {
        let answer = self
            .call(Request::ServiceDelete {
                name: service.into(),
            })
            .await
            .map(|_| ());
        self.forget_http_port();
        answer
    }

    /// The last `lines` lines of a service's log.
    pub async fn logs(&self, service: &str, lines: usize) -> Result<String, CoreError> {
        let request = Request::ServiceLogs {
            name: service.into(),
            lines,
        };
        match self.call(request).await? {
            Event::Logs { text } => Ok(text),
            other => Err(self.unexpected(&other)),
        }
    }
}
