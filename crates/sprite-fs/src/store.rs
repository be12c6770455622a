//! The object store stack: [`BlobStore`] is the narrow interface SpriteFS needs; it is
//! implemented over the `object_store` crate (a local directory by default, any
//! S3-compatible store by URL) and wrapped in layers, never in scattered retry loops:
//! [`Retrying`] (one [`RetryPolicy`]: backoff with jitter, per-attempt and per-call
//! bounds) and, in tests, [`FaultInjecting`]
//! (errors, latency).

use crate::error::StoreError;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What SpriteFS asks of an object store. Keys are relative, `/`-separated.
#[async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;
    /// Deleting a missing key succeeds.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    async fn exists(&self, key: &str) -> Result<bool, StoreError>;
    /// An object with its version tag (its ETag), for a later [`BlobStore::put_if`].
    /// Stores without tags answer None.
    async fn get_tagged(&self, key: &str) -> Result<(Bytes, Option<String>), StoreError> {
        Ok((self.get(key).await?, None))
    }
    /// Writes `data` only if the object is still at version `expected` (None: only if
    /// there is no such object), atomically; answers the new version's tag.
    /// `StoreError::Conflict` when the object changed, `Unsupported` when the store
    /// cannot write conditionally.
    async fn put_if(
        &self,
        key: &str,
        data: Bytes,
        expected: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let _ = (data, expected);
        Err(StoreError::Unsupported {
            operation: "conditional put",
            key: key.to_string(),
        })
    }
}

/// S3 settings that override the `AWS_*` environment.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct S3Options {
    /// e.g. `http://127.0.0.1:9000` for MinIO or a test server (path-style requests).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

/// A [`BlobStore`] over an `object_store` backend, under a key prefix.
#[derive(Debug)]
pub struct ObjectBlobStore {
    inner: Arc<dyn ObjectStore>,
    prefix: String,
}

fn classify(operation: &'static str, key: &str, error: object_store::Error) -> StoreError {
    match error {
        object_store::Error::NotFound { .. } => StoreError::NotFound(key.to_string()),
        object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. } => {
            StoreError::Conflict(key.to_string())
        }
        object_store::Error::NotImplemented => StoreError::Unsupported {
            operation,
            key: key.to_string(),
        },
        object_store::Error::Generic { .. } => StoreError::Transient {
            operation,
            key: key.to_string(),
            source: Box::new(error),
        },
        other => StoreError::Permanent {
            operation,
            key: key.to_string(),
            source: Box::new(other),
        },
    }
}

impl ObjectBlobStore {
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        ObjectBlobStore {
            inner,
            prefix: prefix.trim_matches('/').to_string(),
        }
    }

    /// In memory, for tests.
    pub fn memory() -> Self {
        Self::new(Arc::new(object_store::memory::InMemory::new()), "")
    }

    /// Opens `file:///dir` or `s3://bucket/prefix`. S3 settings (endpoint, region,
    /// credentials) come from the usual `AWS_*` environment variables; `AWS_ENDPOINT`
    /// (with `AWS_ALLOW_HTTP=true` for plain http) points at MinIO, R2 or a test server.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        Self::from_url_with(url, &S3Options::default())
    }

    /// Like [`ObjectBlobStore::from_url`], with S3 settings given explicitly (they win
    /// over the environment).
    pub fn from_url_with(url: &str, options: &S3Options) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        match parsed.scheme() {
            "file" => {
                let path = parsed
                    .to_file_path()
                    .map_err(|()| bad("not a local path".into()))?;
                std::fs::create_dir_all(&path)
                    .map_err(|e| bad(format!("create {}: {e}", path.display())))?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(&path)
                    .map_err(|e| bad(e.to_string()))?;
                Ok(Self::new(Arc::new(local), ""))
            }
            "s3" => {
                let bucket = parsed.host_str().ok_or_else(|| bad("no bucket".into()))?;
                // Retries are [`Retrying`]'s alone (see [`RetryPolicy`]).
                let no_retries = object_store::RetryConfig {
                    max_retries: 0,
                    ..Default::default()
                };
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(no_retries);
                if let Some(endpoint) = &options.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                if let Some(region) = &options.region {
                    builder = builder.with_region(region);
                }
                if let (Some(key), Some(secret)) =
                    (&options.access_key_id, &options.secret_access_key)
                {
                    builder = builder
                        .with_access_key_id(key)
                        .with_secret_access_key(secret);
                }
                let s3 = builder.build().map_err(|e| bad(e.to_string()))?;
                Ok(Self::new(Arc::new(s3), parsed.path()))
            }
            other => Err(bad(format!(
                "scheme {other:?} is not supported; use file:// or s3://"
            ))),
        }
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.inner
            .put(&self.path(key), PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| classify("put", key, e))
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let result = self
            .inner
            .get(&self.path(key))
            .await
            .map_err(|e| classify("get", key, e))?;
        result.bytes().await.map_err(|e| classify("get", key, e))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(classify("delete", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full = self.path(prefix.trim_end_matches('/'));
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let objects: Vec<_> = self
            .inner
            .list(Some(&full))
            .try_collect()
            .await
            .map_err(|e| classify("list", prefix, e))?;
        let mut keys: Vec<String> = objects
            .into_iter()
            .map(|meta| meta.location.to_string())
            .map(|location| {
                location
                    .strip_prefix(&strip)
                    .map(str::to_string)
                    .unwrap_or(location)
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn get_tagged(&self, key: &str) -> Result<(Bytes, Option<String>), StoreError> {
        let result = self
            .inner
            .get(&self.path(key))
            .await
            .map_err(|e| classify("get", key, e))?;
        let tag = result.meta.e_tag.clone();
        let bytes = result.bytes().await.map_err(|e| classify("get", key, e))?;
        Ok((bytes, tag))
    }

    async fn put_if(
        &self,
        key: &str,
        data: Bytes,
        expected: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let mode = match expected {
            None => object_store::PutMode::Create,
            Some(tag) => object_store::PutMode::Update(object_store::UpdateVersion {
                e_tag: Some(tag.to_string()),
                version: None,
            }),
        };
        self.inner
            .put_opts(
                &self.path(key),
                PutPayload::from_bytes(data),
                object_store::PutOptions::from(mode),
            )
            .await
            .map(|result| result.e_tag)
            .map_err(|e| classify("conditional put", key, e))
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.inner.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(classify("head", key, e)),
        }
    }
}

/// How store calls are retried: the one policy of the whole stack (the S3 client's own
/// retries are off, so a failure is never retried twice over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The first wait; each next one doubles up to `max_delay`, each with a random
    /// jitter of up to its own length (so many callers that failed together do not
    /// retry together).
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Bound on one attempt.
    pub attempt_timeout: Duration,
    /// Bound on the whole call, waits included.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(20),
            deadline: Duration::from_secs(60),
        }
    }
}

/// Object store operations of this process, by kind: calls, calls that failed after
/// their retries, and retries (for the daemon's `/metrics`).
#[derive(Debug, Default)]
pub struct StoreCounters {
    calls: [AtomicU64; OPERATIONS.len()],
    errors: [AtomicU64; OPERATIONS.len()],
    retries: AtomicU64,
}

/// The kinds [`StoreCounters`] counts.
pub const OPERATIONS: [&str; 6] = ["put", "get", "delete", "list", "head", "conditional put"];

/// This process's counters.
pub static STORE_COUNTERS: StoreCounters = StoreCounters {
    calls: [const { AtomicU64::new(0) }; OPERATIONS.len()],
    errors: [const { AtomicU64::new(0) }; OPERATIONS.len()],
    retries: AtomicU64::new(0),
};

impl StoreCounters {
    fn index(operation: &str) -> Option<usize> {
        OPERATIONS.iter().position(|o| *o == operation)
    }

    fn called(&self, operation: &str, failed: bool) {
        if let Some(i) = Self::index(operation) {
            self.calls[i].fetch_add(1, Ordering::Relaxed);
            if failed {
                self.errors[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// (operation, calls, failed calls) for each kind, and the retries.
    pub fn snapshot(&self) -> (Vec<(String, u64, u64)>, u64) {
        let ops = OPERATIONS
            .iter()
            .enumerate()
            .map(|(i, op)| {
                (
                    op.to_string(),
                    self.calls[i].load(Ordering::Relaxed),
                    self.errors[i].load(Ordering::Relaxed),
                )
            })
            .collect();
        (ops, self.retries.load(Ordering::Relaxed))
    }
}

/// Retries retryable failures by a [`RetryPolicy`], and bounds every call.
#[derive(Debug)]
pub struct Retrying<S> {
    inner: S,
    policy: RetryPolicy,
}

impl<S: BlobStore> Retrying<S> {
    pub fn new(inner: S) -> Self {
        Self::with_policy(inner, RetryPolicy::default())
    }

    pub fn with_policy(inner: S, policy: RetryPolicy) -> Self {
        Retrying {
            inner,
            policy: RetryPolicy {
                attempts: policy.attempts.max(1),
                ..policy
            },
        }
    }

    async fn run<'a, T, F, Fut>(
        &'a self,
        operation: &'static str,
        key: &str,
        call: F,
    ) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>> + 'a,
    {
        use backon::Retryable;
        let policy = self.policy;
        let timeout = || StoreError::Timeout {
            operation,
            key: key.to_string(),
        };
        let attempt = || {
            let call = call();
            async move {
                tokio::time::timeout(policy.attempt_timeout, call)
                    .await
                    .unwrap_or_else(|_| Err(timeout()))
            }
        };
        let backoff = backon::ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(policy.min_delay)
            .with_max_delay(policy.max_delay)
            .with_max_times(policy.attempts.saturating_sub(1) as usize);
        let retried = attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(StoreError::is_retryable)
            .notify(|error, wait| {
                STORE_COUNTERS.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(operation, key, ?wait, "retrying: {error}");
            });
        let result = tokio::time::timeout(policy.deadline, retried)
            .await
            .unwrap_or_else(|_| Err(timeout()));
        // A conditional put that lost its race is an answer, not a store failure.
        let failed = matches!(&result, Err(error) if !matches!(error, StoreError::Conflict(_) | StoreError::NotFound(_)));
        STORE_COUNTERS.called(operation, failed);
        result
    }
}

#[async_trait]
impl<S: BlobStore> BlobStore for Retrying<S> {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.run("put", key, || self.inner.put(key, data.clone()))
            .await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.run("get", key, || self.inner.get(key)).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.run("delete", key, || self.inner.delete(key)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.run("list", prefix, || self.inner.list(prefix)).await
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.run("head", key, || self.inner.exists(key)).await
    }
    async fn get_tagged(&self, key: &str) -> Result<(Bytes, Option<String>), StoreError> {
        self.run("get", key, || self.inner.get_tagged(key)).await
    }
    /// Retried like a put. A retry after an attempt that did land (its answer lost)
    /// finds the object changed: it is ours if it holds our bytes.
    async fn put_if(
        &self,
        key: &str,
        data: Bytes,
        expected: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let attempts = AtomicU64::new(0);
        let result = self
            .run("conditional put", key, || {
                attempts.fetch_add(1, Ordering::Relaxed);
                self.inner.put_if(key, data.clone(), expected)
            })
            .await;
        match result {
            Err(StoreError::Conflict(key)) if attempts.load(Ordering::Relaxed) > 1 => {
                let (stored, tag) = self.get_tagged(&key).await?;
                if stored == data {
                    Ok(tag)
                } else {
                    Err(StoreError::Conflict(key))
                }
            }
            other => other,
        }
    }
}

/// Parses a fault spec, `PER_MILLE[,LATENCY_MS]` ("100,20": a tenth of the calls
/// fail, every call waits 20 ms). The message says what is wrong.
pub fn parse_faults(spec: &str) -> Result<(u32, Duration), String> {
    let mut parts = spec.split(',');
    let per_mille = parts
        .next()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .filter(|p| *p <= 1000)
        .ok_or_else(|| format!("faults {spec:?}: the failure rate is a number of calls per 1000, 0 to 1000 (e.g. \"100,20\")"))?;
    let latency = match parts.next() {
        None => 0,
        Some(ms) => ms.trim().parse::<u64>().map_err(|_| {
            format!("faults {spec:?}: the latency is a number of milliseconds (e.g. \"100,20\")")
        })?,
    };
    if parts.next().is_some() {
        return Err(format!("faults {spec:?}: expected PER_MILLE[,LATENCY_MS]"));
    }
    Ok((per_mille, Duration::from_millis(latency)))
}

/// Fails a share of calls and slows calls down, for tests. `failures_per_mille` of
/// calls fail (half before reaching the store, half after: a put that "failed" may
/// have landed, as with a real store).
#[derive(Debug)]
pub struct FaultInjecting<S> {
    inner: S,
    failures_per_mille: u32,
    latency: Duration,
    calls: AtomicU64,
    injected: AtomicU64,
}

impl<S: BlobStore> FaultInjecting<S> {
    pub fn new(inner: S, failures_per_mille: u32, latency: Duration) -> Self {
        FaultInjecting {
            inner,
            failures_per_mille,
            latency,
            calls: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// How many calls reached it so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Decides this call's fate: `Some(true)` fails before, `Some(false)` after.
    async fn roll(&self) -> Option<bool> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let draw: u32 = rand::random_range(0..2000);
        if draw < self.failures_per_mille * 2 {
            self.injected.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                before = draw < self.failures_per_mille,
                "injected object-store fault"
            );
            Some(draw < self.failures_per_mille)
        } else {
            None
        }
    }
}

macro_rules! faulty {
    ($self:ident, $operation:literal, $key:expr, $call:expr) => {{
        let fate = $self.roll().await;
        if fate == Some(true) {
            return Err(StoreError::Injected {
                operation: $operation,
                key: $key.to_string(),
            });
        }
        let result = $call.await;
        if fate == Some(false) {
            return Err(StoreError::Injected {
                operation: $operation,
                key: $key.to_string(),
            });
        }
        result
    }};
}

#[async_trait]
impl<S: BlobStore> BlobStore for FaultInjecting<S> {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        faulty!(self, "put", key, self.inner.put(key, data))
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        faulty!(self, "get", key, self.inner.get(key))
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        faulty!(self, "delete", key, self.inner.delete(key))
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        faulty!(self, "list", prefix, self.inner.list(prefix))
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        faulty!(self, "head", key, self.inner.exists(key))
    }
    async fn get_tagged(&self, key: &str) -> Result<(Bytes, Option<String>), StoreError> {
        faulty!(self, "get", key, self.inner.get_tagged(key))
    }
    async fn put_if(
        &self,
        key: &str,
        data: Bytes,
        expected: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        faulty!(
            self,
            "conditional put",
            key,
            self.inner.put_if(key, data, expected)
        )
    }
}

#[async_trait]
impl<T: BlobStore + ?Sized> BlobStore for Arc<T> {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        (**self).put(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        (**self).get(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        (**self).delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        (**self).list(prefix).await
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        (**self).exists(key).await
    }
    async fn get_tagged(&self, key: &str) -> Result<(Bytes, Option<String>), StoreError> {
        (**self).get_tagged(key).await
    }
    async fn put_if(
        &self,
        key: &str,
        data: Bytes,
        expected: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        (**self).put_if(key, data, expected).await
    }
}

/// The conformance suite every [`BlobStore`] must pass; run against each backend.
pub async fn conformance(store: &dyn BlobStore) -> Result<(), String> {
    let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
    store
        .put("t/a", Bytes::from_static(b"one"))
        .await
        .map_err(|e| format!("put: {e}"))?;
    store
        .put("t/b/c", Bytes::from_static(b"two"))
        .await
        .map_err(|e| format!("put: {e}"))?;
    check(
        store.get("t/a").await.map_err(|e| format!("get: {e}"))? == "one",
        "get returns what put stored",
    )?;
    store
        .put("t/a", Bytes::from_static(b"uno"))
        .await
        .map_err(|e| format!("overwrite: {e}"))?;
    check(
        store.get("t/a").await.map_err(|e| format!("get: {e}"))? == "uno",
        "put overwrites",
    )?;
    check(
        matches!(store.get("t/missing").await, Err(StoreError::NotFound(_))),
        "missing key is NotFound",
    )?;
    check(
        store.exists("t/a").await.map_err(|e| e.to_string())?,
        "exists after put",
    )?;
    check(
        !store.exists("t/missing").await.map_err(|e| e.to_string())?,
        "missing does not exist",
    )?;
    // Conditional writes, where the store has them (not a local directory).
    match store.put_if("t/cas", Bytes::from_static(b"v1"), None).await {
        Err(StoreError::Unsupported { .. }) => {}
        Err(error) => return Err(format!("conditional create: {error}")),
        Ok(first) => {
            let first = first.ok_or("a conditional put answers a tag")?;
            check(
                matches!(
                    store.put_if("t/cas", Bytes::from_static(b"v0"), None).await,
                    Err(StoreError::Conflict(_))
                ),
                "a conditional create of an existing object is a conflict",
            )?;
            let (bytes, tag) = store.get_tagged("t/cas").await.map_err(|e| e.to_string())?;
            check(
                bytes == "v1" && tag.as_deref() == Some(first.as_str()),
                "get_tagged answers the put's tag",
            )?;
            let second = match store
                .put_if("t/cas", Bytes::from_static(b"v2"), Some(&first))
                .await
            {
                // Creates only (a local directory): no conditional writes to speak of.
                Err(StoreError::Unsupported { .. }) => {
                    store.delete("t/cas").await.map_err(|e| e.to_string())?;
                    return conformance_rest(store).await;
                }
                other => other.map_err(|e| format!("conditional update: {e}"))?,
            };
            check(
                second.is_some_and(|t| t != first),
                "an update answers a new tag",
            )?;
            check(
                matches!(
                    store
                        .put_if("t/cas", Bytes::from_static(b"v3"), Some(&first))
                        .await,
                    Err(StoreError::Conflict(_))
                ),
                "an update from an old tag is a conflict",
            )?;
            check(
                store.get("t/cas").await.map_err(|e| e.to_string())? == "v2",
                "a refused update changes nothing",
            )?;
            store.delete("t/cas").await.map_err(|e| e.to_string())?;
        }
    }
    conformance_rest(store).await
}

/// The conformance suite from listing on.
async fn conformance_rest(store: &dyn BlobStore) -> Result<(), String> {
    let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
    let keys = store.list("t/").await.map_err(|e| format!("list: {e}"))?;
    check(
        keys == ["t/a", "t/b/c"],
        &format!("list is recursive and sorted, got {keys:?}"),
    )?;
    store
        .delete("t/a")
        .await
        .map_err(|e| format!("delete: {e}"))?;
    store
        .delete("t/a")
        .await
        .map_err(|e| format!("delete twice: {e}"))?;
    check(
        !store.exists("t/a").await.map_err(|e| e.to_string())?,
        "gone after delete",
    )?;
    store
        .delete("t/b/c")
        .await
        .map_err(|e| format!("delete: {e}"))?;
    check(
        store
            .list("t/")
            .await
            .map_err(|e| e.to_string())?
            .is_empty(),
        "empty after deletes",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_conforms() {
        conformance(&ObjectBlobStore::memory())
            .await
            .expect("conformance");
    }

    #[tokio::test]
    async fn local_directory_store_conforms() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("file://{}", dir.path().join("store").display());
        let store = ObjectBlobStore::from_url(&url).expect("open");
        conformance(&store).await.expect("conformance");
        let prefixed = Retrying::new(store);
        conformance(&prefixed).await.expect("through retry layer");
    }

    /// `attempts` attempts of at most `attempt_timeout`, with millisecond waits.
    fn fast_policy(attempts: u32, attempt_timeout: Duration) -> RetryPolicy {
        RetryPolicy {
            attempts,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            attempt_timeout,
            deadline: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn retries_hide_injected_faults() {
        let faulty = FaultInjecting::new(ObjectBlobStore::memory(), 300, Duration::ZERO);
        let store = Retrying::with_policy(faulty, fast_policy(20, Duration::from_secs(5)));
        for round in 0..20 {
            conformance(&store)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        assert!(
            store.inner.injected() > 20,
            "faults were injected: {}",
            store.inner.injected()
        );
    }

    #[tokio::test]
    async fn timeouts_are_reported() {
        let slow = FaultInjecting::new(ObjectBlobStore::memory(), 0, Duration::from_millis(200));
        let store = Retrying::with_policy(slow, fast_policy(2, Duration::from_millis(20)));
        assert!(matches!(
            store.get("x").await,
            Err(StoreError::Timeout { .. })
        ));
        // The whole call is bounded too, however many attempts are left.
        let slow = FaultInjecting::new(ObjectBlobStore::memory(), 0, Duration::from_millis(200));
        let bounded = Retrying::with_policy(
            slow,
            RetryPolicy {
                deadline: Duration::from_millis(300),
                ..fast_policy(1000, Duration::from_millis(20))
            },
        );
        let started = std::time::Instant::now();
        assert!(matches!(
            bounded.get("x").await,
            Err(StoreError::Timeout { .. })
        ));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let faulty = FaultInjecting::new(ObjectBlobStore::memory(), 0, Duration::ZERO);
        let store = Retrying::with_policy(faulty, fast_policy(5, Duration::from_secs(1)));
        assert!(matches!(
            store.get("missing").await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            store.inner.calls.load(Ordering::Relaxed),
            1,
            "one call, no retry"
        );
    }

    #[test]
    fn bad_urls_are_explained() {
        let error = ObjectBlobStore::from_url("ftp://x/y").expect_err("refused");
        assert!(
            error.to_string().contains("use file:// or s3://"),
            "{error}"
        );
    }
}
