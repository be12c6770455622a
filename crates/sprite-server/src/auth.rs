//! Bearer-token auth. A token belongs to one organization; handlers read it from the
//! request's extensions as [`Org`].

use crate::{ApiError, AppState};
use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sprite_api::admin::{TokenGrant, TokenScope};
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

/// The tokens given to the daemon itself (its admin token): admin scope, each in its
/// organization. Tokens minted through the API live in [`sprite_core::access::Access`].
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

    /// Each token's hash and grant (admin scope), as a cluster publishes them.
    pub fn grants(&self) -> Vec<(String, TokenGrant)> {
        self.tokens
            .iter()
            .map(|(token, org)| {
                (
                    sprite_core::access::token_hash(token),
                    TokenGrant {
                        org: org.clone(),
                        scope: TokenScope::Admin,
                    },
                )
            })
            .collect()
    }
}

/// What a request's token may do, beside [`Org`] in its extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope(pub TokenScope);

/// Extracts the token from `Bearer <t>`, `FlyV1 <t>` (what the SDKs' `create_token`
/// sends) or `Basic base64(bearer:<t>)`.
pub fn token_from_header(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" | "flyv1" => Some(rest.trim().to_string()),
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

/// What a token grants: the daemon's own, one minted here, or (in a cluster) one any
/// host published.
pub(crate) fn grant_of_token(state: &AppState, token: &str) -> Option<TokenGrant> {
    if token.is_empty() || token.len() > MAX_TOKEN {
        return None;
    }
    if let Some(org) = state.tokens.org_of(token) {
        return Some(TokenGrant {
            org: org.to_string(),
            scope: TokenScope::Admin,
        });
    }
    if let Some(grant) = state.manager.access().grant(token) {
        return Some(grant);
    }
    state
        .peers
        .as_ref()
        .and_then(|peers| peers.grant_of_token(token))
}

/// The longest token looked at (ours are 68 bytes).
const MAX_TOKEN: usize = 512;

/// What the token a request carries grants.
pub(crate) fn grant_of_request(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Option<TokenGrant> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(token_from_header)?;
    grant_of_token(state, &token)
}

fn unauthenticated() -> Response {
    let mut response = ApiError::new(ErrorKind::Unauthenticated, UNAUTHENTICATED).into_response();
    response.headers_mut().insert(
        "www-authenticate",
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
}

pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let grant = match grant_of_request(&state, request.headers()) {
        Some(grant) => grant,
        // The web console's session cookie, when no token is given.
        None if !request.headers().contains_key(AUTHORIZATION) => {
            match crate::console::grant_of_cookie(&state, request.method(), request.headers()) {
                Ok(grant) => grant,
                Err(crate::console::CookieRefusal::Unknown) => return unauthenticated(),
                Err(crate::console::CookieRefusal::Forgery(why)) => {
                    return ApiError::new(ErrorKind::Forbidden, why).into_response()
                }
            }
        }
        None => return unauthenticated(),
    };
    request.extensions_mut().insert(Org(grant.org));
    request.extensions_mut().insert(Scope(grant.scope));
    next.run(request).await
}

/// Lets through only requests whose token has the admin scope (after
/// [`require_token`]); the others get a 403 that says so.
pub async fn require_admin(request: Request, next: Next) -> Response {
    match request.extensions().get::<Scope>() {
        Some(Scope(TokenScope::Admin)) => next.run(request).await,
        Some(_) => ApiError::new(
            ErrorKind::Forbidden,
            "this needs a token with the admin scope; this token may manage only its organization's sprites (an admin mints tokens with `sprite tokens create --scope admin`)",
        )
        .into_response(),
        None => unauthenticated(),
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
        assert_eq!(token_from_header("FlyV1 fm2_x").as_deref(), Some("fm2_x"));
    }

    #[test]
    fn tokens_map_to_orgs() {
        let tokens = Tokens::new(vec![("t1".into(), "default".into())]);
        assert_eq!(tokens.org_of("t1"), Some("default"));
        assert_eq!(tokens.org_of("t2"), None);
        assert_eq!(tokens.org_of(""), None);
    }
}
