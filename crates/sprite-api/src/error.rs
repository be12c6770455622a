//! Error kinds of the API and the JSON body every error answer carries.
//!
//! The mapping from kind to HTTP status lives here, in one place, so the server never
//! picks a status ad hoc.

use serde::{Deserialize, Serialize};

/// What went wrong, as far as an API client needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is malformed or out of range.
    InvalidRequest,
    /// Missing or wrong token.
    Unauthenticated,
    /// The caller may not do this (a sprite acting on what is not its own).
    Forbidden,
    /// The sprite does not exist in the caller's organization.
    SpriteNotFound,
    /// Something other than a sprite was not found (a session, a route).
    NotFound,
    /// The request conflicts with current state (duplicate name).
    Conflict,
    /// The thing existed but is gone (a session that already exited).
    Gone,
    /// Too many requests or sprites; retry later.
    RateLimited,
    /// The daemon failed; the client may retry.
    Internal,
    /// The sprite or a dependency is not available right now.
    Unavailable,
    /// A route of the Sprites API this server does not serve yet.
    NotImplemented,
}

impl ErrorKind {
    /// The HTTP status code for this kind.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::SpriteNotFound | ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Gone => 410,
            ErrorKind::RateLimited => 429,
            ErrorKind::Internal => 500,
            ErrorKind::Unavailable => 503,
            ErrorKind::NotImplemented => 501,
        }
    }

    /// The short `error` code of the JSON body.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Unauthenticated => "authentication failed",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::SpriteNotFound => "sprite not found",
            ErrorKind::NotFound => "not found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Gone => "gone",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Internal => "internal_error",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::NotImplemented => "not_implemented",
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited | ErrorKind::Internal | ErrorKind::Unavailable
        )
    }
}

/// JSON body of every error answer: `{"error": ..., "message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// File-system errors: the errno name (`ENOENT`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// File-system errors: the path inside the sprite the error is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// 429s about creating sprites: the limit, its window, when to retry, how many
    /// there are (the fields the SDKs' `APIError` reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_count: Option<u64>,
}

/// Formats an error and its sources as `a: b: c`, for logs and error bodies.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_are_joined() {
        let error = Wrapper(std::io::Error::other("disk full"));
        assert_eq!(error_chain(&error), "write failed: disk full");
    }

    #[derive(Debug)]
    struct Wrapper(std::io::Error);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("write failed")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn statuses_match_the_api() {
        assert_eq!(ErrorKind::Unauthenticated.status(), 401);
        assert_eq!(ErrorKind::Unauthenticated.code(), "authentication failed");
        assert_eq!(ErrorKind::SpriteNotFound.code(), "sprite not found");
        assert_eq!(ErrorKind::Conflict.status(), 409);
        assert!(ErrorKind::Unavailable.is_retryable());
        assert!(!ErrorKind::InvalidRequest.is_retryable());
    }
}
