//! API errors: every failure becomes `{"error": ..., "message": ...}` with the status
//! of its [`ErrorKind`], decided in one place.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sprite_api::{ErrorBody, ErrorKind};
use sprite_core::CoreError;

#[derive(Debug)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// File-system errors: the errno code and the path (API.md, File system).
    pub fs: Option<(sprite_api::fs::FsCode, String)>,
    /// 429s about creating sprites: what the SDKs read from the body and headers.
    pub limit: Option<sprite_core::RateLimitInfo>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            fs: None,
            limit: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }
}

impl From<CoreError> for ApiError {
    fn from(error: CoreError) -> Self {
        let kind = error.kind();
        if kind == ErrorKind::Internal {
            tracing::error!("{}", sprite_api::error_chain(&error));
        }
        let fs = match &error {
            CoreError::Fs(fs) => Some((fs.code, fs.path.clone())),
            _ => None,
        };
        ApiError {
            kind,
            limit: error.rate_limit(),
            message: sprite_api::error_chain(&error),
            fs,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self
            .fs
            .as_ref()
            .map_or(self.kind.status(), |(code, _)| code.status());
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match self.fs {
            // The SDKs show `error` as the message of a file-system error.
            Some((code, path)) => ErrorBody {
                error: self.message.clone(),
                message: Some(self.message),
                code: Some(code.as_str().to_string()),
                path: Some(path),
                ..ErrorBody::default()
            },
            None => ErrorBody {
                error: self
                    .limit
                    .as_ref()
                    .map_or(self.kind.code(), |limit| limit.code)
                    .to_string(),
                message: Some(self.message),
                limit: self.limit.as_ref().map(|l| l.limit),
                window_seconds: self.limit.as_ref().and_then(|l| l.window_seconds),
                retry_after_seconds: self.limit.as_ref().map(|l| l.retry_after_seconds),
                current_count: self.limit.as_ref().and_then(|l| l.current_count),
                ..ErrorBody::default()
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if self.kind == ErrorKind::RateLimited {
            let retry = self.limit.as_ref().map_or(5, |l| l.retry_after_seconds);
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry));
            if let Some(limit) = &self.limit {
                let reset = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
                    + retry;
                headers.insert("x-ratelimit-limit", HeaderValue::from(limit.limit));
                headers.insert("x-ratelimit-remaining", HeaderValue::from(0u64));
                headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
            }
        }
        response
    }
}

/// Parses a JSON body, answering 400 with the parser's complaint when it is malformed.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("malformed JSON body: {e}")))
}
