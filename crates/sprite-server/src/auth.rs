//! Bearer-token auth. A token belongs to one organization; handlers read it from the
//! request's extensions as [`Org`].

use crate::{ApiError, AppState};
use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sprite_api::ErrorKind;
use sprite_core::ids::SpriteKey;
use subtle::ConstantTimeEq;

/// The organization a request acts for.
#[derive(Debug, Clone)]
pub struct Org(pub String);

/// What a request without a known token is told.
const UNAUTHENTICATED: &str =
    "missing or unknown token; pass it as `Authorization: Bearer <token>`";

/// The sprite a request is about: its organization (from the token) and the `{name}`
/// of its path, resolved once here and passed whole to the manager.
#[derive(Debug, Clone)]
pub struct SpritePath(pub SpriteKey);

impl<S: Send + Sync> FromRequestParts<S> for SpritePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<SpritePath, ApiError> {
        let org = parts
            .extensions
            .get::<Org>()
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorKind::Unauthenticated, UNAUTHENTICATED))?;
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(e.body_text()))?;
        let name = params
            .iter()
            .find(|(key, _)| *key == "name")
            .map(|(_, value)| value.to_string())
            .ok_or_else(|| ApiError::invalid("this path names no sprite"))?;
        Ok(SpritePath(SpriteKey::new(org.0, name)))
    }
}

/// Known tokens and their organizations.
#[derive(Debug, Default)]
pub struct Tokens {
    tokens: Vec<(String, String)>,
}

impl Tokens {
    pub fn new(tokens: Vec<(String, String)>) -> Self {
        Tokens { tokens }
    }

    /// Organization of a token, compared in constant time.
    pub fn org_of(&self, token: &str) -> Option<&str> {
        self.tokens
            .iter()
            .find(|(known, _)| bool::from(known.as_bytes().ct_eq(token.as_bytes())))
            .map(|(_, org)| org.as_str())
    }
}

/// Extracts the token from `Bearer <t>` or `Basic base64(bearer:<t>)`.
pub fn token_from_header(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Some(rest.trim().to_string()),
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (user, password) = text.split_once(':')?;
            user.eq_ignore_ascii_case("bearer")
                .then(|| password.to_string())
        }
        _ => None,
    }
}

/// The organization of a token: one of this host's, or (in a cluster) one any host
/// published.
pub(crate) fn org_of_token(state: &AppState, token: &str) -> Option<String> {
    if let Some(org) = state.tokens.org_of(token) {
        return Some(org.to_string());
    }
    state
        .peers
        .as_ref()
        .and_then(|peers| peers.org_of_token(token))
}

/// The organization of the token a request carries.
pub(crate) fn org_of_request(state: &AppState, headers: &axum::http::HeaderMap) -> Option<String> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(token_from_header)?;
    org_of_token(state, &token)
}

pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let org = org_of_request(&state, request.headers());
    match org {
        Some(org) => {
            request.extensions_mut().insert(Org(org));
            next.run(request).await
        }
        None => {
            let mut response =
                ApiError::new(ErrorKind::Unauthenticated, UNAUTHENTICATED).into_response();
            response.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic() {
        assert_eq!(token_from_header("Bearer abc").as_deref(), Some("abc"));
        let basic = base64::engine::general_purpose::STANDARD.encode("bearer:xyz");
        assert_eq!(
            token_from_header(&format!("Basic {basic}")).as_deref(),
            Some("xyz")
        );
        let other = base64::engine::general_purpose::STANDARD.encode("alice:xyz");
        assert_eq!(token_from_header(&format!("Basic {other}")), None);
        assert_eq!(token_from_header("Token abc"), None);
    }

    #[test]
    fn tokens_map_to_orgs() {
        let tokens = Tokens::new(vec![("t1".into(), "default".into())]);
        assert_eq!(tokens.org_of("t1"), Some("default"));
        assert_eq!(tokens.org_of("t2"), None);
        assert_eq!(tokens.org_of(""), None);
    }
}
