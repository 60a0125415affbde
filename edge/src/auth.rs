//! Who may connect and what they may do: JWT on the WebSocket upgrade, the Origin
//! allow-list, and the topic grants a token carries (`docs/security.md`).
//!
//! A connection presents a token as `?token=<JWT>` (browsers cannot set headers on a
//! WebSocket) or `Authorization: Bearer <JWT>`. The token is checked against the configured
//! keys (HS256 secret, or an RS256/ES256 public key); its claims:
//!
//! ```json
//! {"sub":"alice","exp":1767225600,"subscribe":["chat/*","user/{sub}/*"],"publish":["chat/*"]}
//! ```
//!
//! `sub` becomes the connection's user id; `subscribe` and `publish` list the topics it may
//! use: a name, or a prefix ending in `*` (`"*"` is every topic); `{sub}` stands for the
//! user id. A missing list grants nothing. Without a token, a connection is refused (401)
//! unless `allow_anonymous` is set; anonymous connections may use every topic, and their
//! user id is the unverified `?user=` of the original protocol.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::http;

use crate::error::ConfigError;
use crate::hooks::Rejection;

/// The most patterns a token may list, per kind: grants are checked on every subscribe and
/// publish, so their cost is bounded.
pub const MAX_GRANT_PATTERNS: usize = 64;
/// The longest pattern a token may carry.
pub const MAX_PATTERN_BYTES: usize = 256;

/// How clients authenticate (`[auth]` of the edge's configuration).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Let connections without a token in, with every grant. Off by default.
    pub allow_anonymous: bool,
    /// A file holding the HS256 secret (its bytes, without a trailing newline).
    pub jwt_hs256_key_file: Option<PathBuf>,
    /// A file holding an RS256 or ES256 public key (PEM).
    pub jwt_public_key_file: Option<PathBuf>,
    /// Browser origins (`Origin` header, e.g. `https://app.example.com`) that may connect.
    /// Empty: only the edge's own origin (the `Origin` host equals `Host`); `*`: any.
    /// Requests without `Origin` (not from a browser) are not affected.
    pub allowed_origins: Vec<String>,
    /// Serve `GET /dev/token?user=NAME`: a 24-hour token for any user, on every topic,
    /// signed with the HS256 key. For `firetower dev` only (it lets anyone in); the
    /// `firetower edge` command has no flag for it.
    pub dev_tokens: bool,
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.dev_tokens && self.jwt_hs256_key_file.is_none() {
            return Err(ConfigError::new(
                "auth.dev_tokens",
                "needs jwt_hs256_key_file (the tokens are signed with it)",
            ));
        }
        if !self.allow_anonymous
            && self.jwt_hs256_key_file.is_none()
            && self.jwt_public_key_file.is_none()
        {
            return Err(ConfigError::new(
                "auth",
                "no JWT key (jwt_hs256_key_file or jwt_public_key_file) and allow_anonymous \
                 is false: no client could connect",
            ));
        }
        Ok(())
    }
}

/// One topic pattern of a grant, with `{sub}` already replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn new(text: &str, sub: &str) -> Pattern {
        let text = text.replace("{sub}", sub);
        match text.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_string()),
            None => Pattern::Exact(text),
        }
    }

    fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(t) => t == topic,
            Pattern::Prefix(p) => topic.starts_with(p.as_str()),
        }
    }
}

/// What a connection may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Grants {
    /// Every topic (anonymous connections, and identities made by an embedder's hook).
    #[default]
    All,
    /// What its token lists.
    Token {
        subscribe: Vec<Pattern>,
        publish: Vec<Pattern>,
    },
}

impl Grants {
    pub fn may_subscribe(&self, topic: &str) -> bool {
        match self {
            Grants::All => true,
            Grants::Token { subscribe, .. } => subscribe.iter().any(|p| p.matches(topic)),
        }
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        match self {
            Grants::All => true,
            Grants::Token { publish, .. } => publish.iter().any(|p| p.matches(topic)),
        }
    }
}

/// The claims of a client token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default)]
    pub subscribe: Vec<String>,
    #[serde(default)]
    pub publish: Vec<String>,
}

/// Seconds since the Unix epoch, by the wall clock. A token's `exp` is wall-clock time by
/// definition (and `jsonwebtoken` checks it against the same clock), so this is the one
/// place the edge reads it; the simulation runs without tokens.
#[allow(clippy::disallowed_methods)]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Claims {
    /// Every topic, for `sub`, valid `ttl_secs` from now.
    pub fn everything(sub: &str, ttl_secs: u64) -> Claims {
        let now = unix_now();
        Claims {
            sub: sub.to_string(),
            exp: now + ttl_secs,
            subscribe: vec!["*".into()],
            publish: vec!["*".into()],
        }
    }
}

/// Who a verified (or anonymous) connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The token's `sub`; `None` for an anonymous connection.
    pub user_id: Option<String>,
    pub grants: Arc<Grants>,
}

/// The checks of an upgrade request, built once from [`AuthConfig`] (the key files are read
/// then).
pub struct ClientAuth {
    allow_anonymous: bool,
    /// The HS256 secret, kept only to mint dev tokens ([`AuthConfig::dev_tokens`]).
    dev_secret: Option<Vec<u8>>,
    keys: Vec<(DecodingKey, Algorithm)>,
    allowed_origins: Vec<String>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("allow_anonymous", &self.allow_anonymous)
            .field("keys", &self.keys.len())
            .field("allowed_origins", &self.allowed_origins)
            .finish()
    }
}

fn read_key(field: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::new(field, format!("cannot read {}: {e}", path.display())))
}

impl ClientAuth {
    pub fn from_config(config: &AuthConfig) -> Result<ClientAuth, ConfigError> {
        config.validate()?;
        let mut keys = Vec::new();
        let mut dev_secret = None;
        if let Some(path) = &config.jwt_hs256_key_file {
            let mut secret = read_key("auth.jwt_hs256_key_file", path)?;
            while secret.last().is_some_and(|b| b.is_ascii_whitespace()) {
                secret.pop();
            }
            if secret.len() < 32 {
                return Err(ConfigError::new(
                    "auth.jwt_hs256_key_file",
                    format!(
                        "the secret has {} bytes; at least 32 are needed",
                        secret.len()
                    ),
                ));
            }
            keys.push((DecodingKey::from_secret(&secret), Algorithm::HS256));
            if config.dev_tokens {
                dev_secret = Some(secret);
            }
        }
        if let Some(path) = &config.jwt_public_key_file {
            let pem = read_key("auth.jwt_public_key_file", path)?;
            let key = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (key, Algorithm::RS256)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (key, Algorithm::ES256)
            } else {
                return Err(ConfigError::new(
                    "auth.jwt_public_key_file",
                    format!("{} is not an RSA or EC public key in PEM", path.display()),
                ));
            };
            keys.push(key);
        }
        Ok(ClientAuth {
            allow_anonymous: config.allow_anonymous,
            dev_secret,
            keys,
            allowed_origins: config.allowed_origins.clone(),
        })
    }

    /// Checks HS256 tokens with `secret` (no anonymous access, any origin): for embedding
    /// with a secret from elsewhere than a file, and for the fuzz targets.
    pub fn from_hs256_secret(secret: &[u8]) -> ClientAuth {
        ClientAuth {
            allow_anonymous: false,
            dev_secret: None,
            keys: vec![(DecodingKey::from_secret(secret), Algorithm::HS256)],
            allowed_origins: vec!["*".into()],
        }
    }

    /// A dev token for `user` (every topic, 24 hours), if dev tokens are on.
    pub fn dev_token(&self, user: &str) -> Option<String> {
        let secret = self.dev_secret.as_ref()?;
        mint_hs256(secret, &Claims::everything(user, 24 * 3600)).ok()
    }

    /// Checks an upgrade request: its origin, then its token.
    pub fn check(&self, request: &http::Request<()>) -> Result<Verified, Rejection> {
        self.check_origin(request)?;
        let Some(token) = token_of(request) else {
            if self.allow_anonymous {
                return Ok(Verified {
                    user_id: None,
                    grants: Arc::new(Grants::All),
                });
            }
            return Err(unauthorized(
                "missing token: pass ?token=<JWT> or Authorization: Bearer <JWT>",
            ));
        };
        let claims = self.verify(&token)?;
        if claims.subscribe.len() > MAX_GRANT_PATTERNS || claims.publish.len() > MAX_GRANT_PATTERNS
        {
            return Err(unauthorized(&format!(
                "token: at most {MAX_GRANT_PATTERNS} subscribe and {MAX_GRANT_PATTERNS} publish patterns"
            )));
        }
        if let Some(long) = claims
            .subscribe
            .iter()
            .chain(&claims.publish)
            .find(|p| p.len() > MAX_PATTERN_BYTES)
        {
            return Err(unauthorized(&format!(
                "token: a pattern of {} bytes is longer than {MAX_PATTERN_BYTES}",
                long.len()
            )));
        }
        let sub = claims.sub.as_str();
        let grants = Grants::Token {
            subscribe: claims
                .subscribe
                .iter()
                .map(|p| Pattern::new(p, sub))
                .collect(),
            publish: claims
                .publish
                .iter()
                .map(|p| Pattern::new(p, sub))
                .collect(),
        };
        Ok(Verified {
            user_id: Some(claims.sub),
            grants: Arc::new(grants),
        })
    }

    /// The token's claims, if one of the keys signed it and it has not expired.
    pub fn verify(&self, token: &str) -> Result<Claims, Rejection> {
        // With one key (the usual case) `decode` checks the algorithm itself; the header is
        // read separately only to choose between two keys.
        let chosen = match self.keys.as_slice() {
            [only] => Some(only),
            keys => {
                let header = jsonwebtoken::decode_header(token)
                    .map_err(|e| unauthorized(&format!("token: {e}")))?;
                keys.iter().find(|(_, alg)| *alg == header.alg)
            }
        };
        let Some((key, alg)) = chosen else {
            return Err(unauthorized("token: its algorithm is not accepted here"));
        };
        let mut validation = Validation::new(*alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| {
                let reason = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired".into(),
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                        "token: invalid signature".into()
                    }
                    _ => format!("token: {e}"),
                };
                unauthorized(&reason)
            })
    }

    fn check_origin(&self, request: &http::Request<()>) -> Result<(), Rejection> {
        let Some(origin) = request.headers().get("origin") else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("");
        let allowed = if self.allowed_origins.is_empty() {
            // Same origin: the Origin's host[:port] is the Host the request was sent to.
            let host = request
                .headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
            !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
        } else {
            self.allowed_origins
                .iter()
                .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
        };
        if allowed {
            Ok(())
        } else {
            Err(Rejection {
                status: 403,
                reason: format!("origin {origin:?} is not allowed"),
            })
        }
    }
}

fn unauthorized(reason: &str) -> Rejection {
    Rejection {
        status: 401,
        reason: reason.to_string(),
    }
}

/// The token of a request: `?token=` or `Authorization: Bearer`.
fn token_of(request: &http::Request<()>) -> Option<String> {
    if let Some(q) = request.uri().query() {
        if let Some(t) = q.split('&').find_map(|kv| kv.strip_prefix("token=")) {
            return Some(crate::ws::percent_decode(t));
        }
    }
    let header = request.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// The upgrade request a client presenting `token` sends (`GET /ws?token=…`), for tests
/// and the fuzz targets; an error when the token cannot be part of a URI.
pub fn upgrade_request(token: &str) -> Result<http::Request<()>, http::Error> {
    http::Request::builder()
        .uri(format!("/ws?token={token}"))
        .body(())
}

/// Makes an HS256 client token (for `firetower token` and `firetower dev`).
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn auth(anonymous: bool, origins: &[&str]) -> ClientAuth {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, SECRET).unwrap();
        ClientAuth::from_config(&AuthConfig {
            allow_anonymous: anonymous,
            jwt_hs256_key_file: Some(path),
            jwt_public_key_file: None,
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            dev_tokens: false,
        })
        .unwrap()
    }

    fn now() -> u64 {
        unix_now()
    }

    fn token(sub: &str, exp: u64, subscribe: &[&str], publish: &[&str]) -> String {
        let claims = Claims {
            sub: sub.into(),
            exp,
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
        };
        mint_hs256(SECRET, &claims).unwrap()
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn a_valid_token_gives_its_user_and_its_grants() {
        let t = token(
            "alice",
            now() + 60,
            &["chat/*", "user/{sub}/*"],
            &["chat/room"],
        );
        let v = auth(false, &[])
            .check(&request(&format!("/ws?token={t}"), &[]))
            .unwrap();
        assert_eq!(v.user_id.as_deref(), Some("alice"));
        assert!(v.grants.may_subscribe("chat/x"));
        assert!(v.grants.may_subscribe("user/alice/inbox"));
        assert!(!v.grants.may_subscribe("user/bob/inbox"));
        assert!(!v.grants.may_subscribe("news"));
        assert!(v.grants.may_publish("chat/room"));
        assert!(!v.grants.may_publish("chat/other"));
        // The header form.
        let v = auth(false, &[])
            .check(&request(
                "/ws",
                &[("authorization", &format!("Bearer {t}"))],
            ))
            .unwrap();
        assert_eq!(v.user_id.as_deref(), Some("alice"));
    }

    #[test]
    fn bad_tokens_are_401_with_the_reason() {
        let a = auth(false, &[]);
        let cases = [
            ("/ws".to_string(), "missing token"),
            ("/ws?token=abc".to_string(), "token: "),
            (
                format!("/ws?token={}", token("a", now() - 10, &["*"], &[])),
                "token expired",
            ),
            (
                format!(
                    "/ws?token={}",
                    mint_hs256(
                        b"another secret, another secret!!",
                        &Claims {
                            sub: "a".into(),
                            exp: now() + 60,
                            subscribe: vec![],
                            publish: vec![]
                        }
                    )
                    .unwrap()
                ),
                "token: invalid signature",
            ),
        ];
        for (uri, reason) in cases {
            let r = a.check(&request(&uri, &[])).unwrap_err();
            assert_eq!(r.status, 401, "{uri}");
            assert!(r.reason.starts_with(reason), "{uri}: {}", r.reason);
        }
    }

    #[test]
    fn anonymous_only_when_allowed() {
        let v = auth(true, &[]).check(&request("/ws", &[])).unwrap();
        assert_eq!(v.user_id, None);
        assert!(v.grants.may_publish("anything"));
        assert_eq!(
            auth(false, &[])
                .check(&request("/ws", &[]))
                .unwrap_err()
                .status,
            401
        );
    }

    #[test]
    fn origins_are_checked_against_the_list_or_the_host() {
        let same = auth(true, &[]);
        let ok = [
            ("origin", "http://127.0.0.1:9999"),
            ("host", "127.0.0.1:9999"),
        ];
        assert!(same.check(&request("/ws", &ok)).is_ok());
        let other = [
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:9999"),
        ];
        assert_eq!(same.check(&request("/ws", &other)).unwrap_err().status, 403);
        // No Origin: not a browser.
        assert!(same.check(&request("/ws", &[])).is_ok());
        let listed = auth(true, &["https://app.example"]);
        let app = [("origin", "https://app.example"), ("host", "edge:9999")];
        assert!(listed.check(&request("/ws", &app)).is_ok());
        assert_eq!(
            listed.check(&request("/ws", &other)).unwrap_err().status,
            403
        );
        assert!(auth(true, &["*"]).check(&request("/ws", &other)).is_ok());
    }

    #[test]
    fn no_key_and_no_anonymous_is_a_config_error() {
        let e = AuthConfig::default().validate().unwrap_err();
        assert_eq!(e.field, "auth");
    }
}
