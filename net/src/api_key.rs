//! The API key a caller presents on gRPC calls to a distributor (`authorization: Bearer`),
//! as a tonic interceptor: backends, the CLI, and cluster members calling each other.

use std::path::Path;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;

use crate::error::ConfigError;

/// Adds `authorization: Bearer <key>` to every request (nothing when there is no key).
#[derive(Debug, Clone, Default)]
pub struct ApiKey(Option<MetadataValue<Ascii>>);

impl ApiKey {
    /// No key: calls go without one (a distributor that allows unauthenticated calls).
    pub fn none() -> ApiKey {
        ApiKey(None)
    }

    /// A key as given (surrounding whitespace removed).
    pub fn new(field: &'static str, key: &str) -> Result<ApiKey, ConfigError> {
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                field,
                "an API key is one word of printable ASCII",
            ));
        }
        MetadataValue::try_from(format!("Bearer {key}"))
            .map(|v| ApiKey(Some(v)))
            .map_err(|e| ConfigError::new(field, e.to_string()))
    }

    /// The key in a file (its first line).
    pub fn from_file(field: &'static str, path: &Path) -> Result<ApiKey, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(field, format!("cannot read {}: {e}", path.display())))?;
        ApiKey::new(field, text.lines().next().unwrap_or(""))
    }

    /// From an optional file: no file, no key.
    pub fn from_optional_file(
        field: &'static str,
        path: Option<&Path>,
    ) -> Result<ApiKey, ConfigError> {
        path.map_or(Ok(ApiKey::none()), |p| ApiKey::from_file(field, p))
    }
}

impl ApiKey {
    /// Sets the key on one request (for clients built without the interceptor).
    pub fn attach<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
    }
}

impl Interceptor for ApiKey {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A distributor client that presents an API key.
pub type KeyedChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, ApiKey>;
