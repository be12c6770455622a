//! Pulling from OCI / Docker registries (v2 distribution API) with `oci-client`:
//! anonymous, basic and token auth (the client follows `WWW-Authenticate` to a token
//! service with the credentials given), the host's platform picked from an index,
//! every blob checked against its digest as it streams to disk.

use super::oci::{ImageConfig, LayerRef, MAX_LAYERS, MAX_LAYER_BYTES};
use crate::error::CoreError;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Credentials for a registry.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl Credentials {
    fn auth(&self) -> RegistryAuth {
        match (&self.username, &self.password) {
            (Some(user), Some(password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            _ => RegistryAuth::Anonymous,
        }
    }
}

/// A registry image's manifest and config, ready to pull its layers.
pub struct Remote {
    client: Client,
    reference: Reference,
    pub digest: String,
    pub layers: Vec<LayerRef>,
    descriptors: Vec<OciDescriptor>,
    pub config: ImageConfig,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("reference", &self.reference.whole())
            .field("digest", &self.digest)
            .field("layers", &self.layers)
            .finish()
    }
}

fn registry_error(reference: &str, error: impl std::fmt::Display) -> CoreError {
    CoreError::Registry {
        reference: reference.to_string(),
        message: error.to_string(),
    }
}

/// Whether a registry is reached over plain HTTP: loopback registries always (a local
/// `docker-registry` serves HTTP), others when listed as insecure.
fn plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(host, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            host
        } else {
            registry
        }
    });
    host == "localhost"
        || host == "127.0.0.1"
        || host == "[::1]"
        || insecure.iter().any(|r| r == registry || r == host)
}

/// Fetches the manifest and config of `reference` (the host's platform of an index).
pub async fn resolve(
    reference: &str,
    credentials: &Credentials,
    insecure: &[String],
) -> Result<Remote, CoreError> {
    let parsed: Reference = reference.parse().map_err(|e| CoreError::BadImage(format!(
        "{reference:?} is not an image reference ({e}); write it as [REGISTRY/]REPOSITORY[:TAG|@DIGEST]"
    )))?;
    let registry = parsed.resolve_registry().to_string();
    let protocol = if plain_http(&registry, insecure) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    let config = ClientConfig {
        protocol,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    };
    // Whoever came first installed it; ours is the same.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::new(config);
    let (manifest, digest, config_text) = client
        .pull_manifest_and_config(&parsed, &credentials.auth())
        .await
        .map_err(|e| registry_error(reference, e))?;
    if manifest.layers.len() > MAX_LAYERS {
        return Err(CoreError::BadImage(format!(
            "{reference} has {} layers; at most {MAX_LAYERS} are supported",
            manifest.layers.len()
        )));
    }
    let mut layers = Vec::new();
    for layer in &manifest.layers {
        let size = u64::try_from(layer.size).unwrap_or(0);
        if size > MAX_LAYER_BYTES {
            return Err(CoreError::BadImage(format!(
                "a layer of {reference} is {size} bytes; at most {MAX_LAYER_BYTES} are supported"
            )));
        }
        if !layer.media_type.contains("tar") {
            return Err(CoreError::BadImage(format!(
                "{reference} has a layer of type {}, not a filesystem layer",
                layer.media_type
            )));
        }
        layers.push(LayerRef {
            digest: layer.digest.clone(),
            size,
        });
    }
    let config = ImageConfig::from_document(config_text.as_bytes())
        .map_err(|e| registry_error(reference, e))?;
    Ok(Remote {
        client,
        reference: parsed,
        digest,
        layers,
        descriptors: manifest.layers,
        config,
    })
}

impl Remote {
    /// Streams layer `index` to `dest` (its digest checked as it arrives); `progress`
    /// hears the bytes so far.
    pub async fn fetch_layer(
        &self,
        index: usize,
        dest: &Path,
        mut progress: impl FnMut(u64),
    ) -> Result<(), CoreError> {
        let reference = self.reference.whole();
        let descriptor = self
            .descriptors
            .get(index)
            .ok_or_else(|| registry_error(&reference, "no such layer"))?;
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, descriptor)
            .await
            .map_err(|e| registry_error(&reference, e))?;
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(CoreError::io("create", dest))?;
        let mut received = 0u64;
        while let Some(chunk) = stream.stream.next().await {
            let chunk = chunk.map_err(|e| registry_error(&reference, e))?;
            received += chunk.len() as u64;
            if received > MAX_LAYER_BYTES {
                return Err(CoreError::BadImage(format!(
                    "a layer of {reference} is larger than {MAX_LAYER_BYTES} bytes"
                )));
            }
            file.write_all(&chunk)
                .await
                .map_err(CoreError::io("write", dest))?;
            progress(received);
        }
        file.sync_all().await.map_err(CoreError::io("sync", dest))?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_speak_http() {
        assert!(plain_http("localhost:5000", &[]));
        assert!(plain_http("127.0.0.1:5000", &[]));
        assert!(plain_http("localhost", &[]));
        assert!(!plain_http("ghcr.io", &[]));
        assert!(!plain_http("registry.example:5000", &[]));
        assert!(plain_http(
            "registry.example:5000",
            &["registry.example:5000".into()]
        ));
        assert!(plain_http(
            "registry.example:5000",
            &["registry.example".into()]
        ));
    }

    #[test]
    fn credentials_never_print_the_password() {
        let credentials = Credentials {
            username: Some("me".into()),
            password: Some("secret".into()),
        };
        assert!(!format!("{credentials:?}").contains("secret"));
    }
}
