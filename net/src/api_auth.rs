//! Who may call a gRPC API (the distributor's, the metastore's): API keys, presented as
//! `authorization: Bearer <key>`, checked against the SHA-256 hashes in the node's
//! configuration, each with scopes (docs/security.md):
//!
//! | scope | distributor RPCs | metastore RPCs |
//! |---|---|---|
//! | `publish` | Publish, PublishBatch, PublishStream, History, TopicStatus | none |
//! | `admin` | KickUser | GetSlotMap, Watch, ClusterStatus, SetHotTopic, ClearHotTopic |
//! | `member` | ForwardBatch, Handover, and the owner-only forms of History and TopicStatus | every RPC, Raft's too |
//!
//! The configuration holds only hashes, so it can be read by more people than the keys.
//! A node presents its own `member_key_file` on its calls to the others.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Publish,
    Admin,
    Member,
}

impl Scope {
    fn parse(s: &str) -> Option<Scope> {
        match s {
            "publish" => Some(Scope::Publish),
            "admin" => Some(Scope::Admin),
            "member" => Some(Scope::Member),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Admin => "admin",
            Scope::Member => "member",
        }
    }
}

/// One accepted key: a name (for logs and errors), the SHA-256 of the key (hex), its scopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    pub name: String,
    pub sha256: String,
    pub scopes: Vec<Scope>,
}

impl ApiKeyEntry {
    /// `NAME:SCOPE[+SCOPE…]:SHA256HEX`, as `--api-key` takes it and `firetower api-key`
    /// prints it.
    pub fn parse(text: &str) -> Result<ApiKeyEntry, ConfigError> {
        let bad = |why: &str| ConfigError::new("api.keys", format!("{text:?}: {why}"));
        let mut parts = text.splitn(3, ':');
        let (Some(name), Some(scopes), Some(sha256)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected NAME:SCOPE[+SCOPE…]:SHA256"));
        };
        let scopes = scopes
            .split('+')
            .map(|s| Scope::parse(s).ok_or_else(|| bad(&format!("unknown scope {s:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let entry = ApiKeyEntry {
            name: name.to_string(),
            sha256: sha256.to_ascii_lowercase(),
            scopes,
        };
        entry.validate()?;
        Ok(entry)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("api.keys", "a key needs a name"));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ConfigError::new(
                "api.keys",
                format!("{}: sha256 must be 64 hex digits", self.name),
            ));
        }
        if self.scopes.is_empty() {
            return Err(ConfigError::new(
                "api.keys",
                format!("{}: a key needs at least one scope", self.name),
            ));
        }
        Ok(())
    }
}

/// How callers of a node's gRPC API authenticate (`[api]` of its configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiAuthConfig {
    /// Take calls without a key, in every scope. Off by default.
    pub allow_unauthenticated: bool,
    pub keys: Vec<ApiKeyEntry>,
    /// The key this node presents to the other nodes of its role and to the metastore (a
    /// `member` key of theirs).
    pub member_key_file: Option<PathBuf>,
}

impl ApiAuthConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.allow_unauthenticated && self.keys.is_empty() {
            return Err(ConfigError::new(
                "api",
                "no API keys and allow_unauthenticated is false: nobody could call this node",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for key in &self.keys {
            key.validate()?;
            if !names.insert(&key.name) {
                return Err(ConfigError::new(
                    "api.keys",
                    format!("{}: two keys have this name", key.name),
                ));
            }
        }
        Ok(())
    }
}

/// The SHA-256 of a key.
fn digest_of(key: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(
        ring::digest::digest(&ring::digest::SHA256, key.trim().as_bytes()).as_ref(),
    );
    out
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The digest a configured hash (64 hex digits, checked by `validate`) stands for.
fn digest_from_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 of a key, in hex (what the configuration holds).
pub fn hash_key(key: &str) -> String {
    hex(&digest_of(key))
}

/// A new random key: `ftk_` and 32 random bytes in hex.
pub fn new_key() -> Result<String, ConfigError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| ConfigError::new("api", "no system randomness"))?;
    Ok(format!("ftk_{}", hex(&bytes)))
}

/// The check every RPC makes first.
#[derive(Debug)]
pub struct ApiAuth {
    allow_unauthenticated: bool,
    /// SHA-256 of the key → (name, scopes). A call costs one digest and one lookup, no
    /// allocation.
    keys: HashMap<[u8; 32], (String, Vec<Scope>)>,
}

impl ApiAuth {
    pub fn new(config: &ApiAuthConfig) -> ApiAuth {
        ApiAuth {
            allow_unauthenticated: config.allow_unauthenticated,
            keys: config
                .keys
                .iter()
                .filter_map(|k| {
                    // `validate` refused any other shape before a node starts.
                    let digest = digest_from_hex(&k.sha256)?;
                    Some((digest, (k.name.clone(), k.scopes.clone())))
                })
                .collect(),
        }
    }

    /// The name of the known API key the call presents, if any.
    pub fn key_name<T>(&self, request: &tonic::Request<T>) -> Option<&str> {
        let header = request.metadata().get("authorization")?.to_str().ok()?;
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))?;
        self.keys
            .get(&digest_of(key))
            .map(|(name, _)| name.as_str())
    }

    /// Whether the call's key grants one of `scopes`: `UNAUTHENTICATED` without a known key,
    /// `PERMISSION_DENIED` with a key that lacks the scope.
    pub fn check<T>(
        &self,
        request: &tonic::Request<T>,
        scopes: &[Scope],
    ) -> Result<(), tonic::Status> {
        if self.allow_unauthenticated {
            return Ok(());
        }
        let Some(header) = request.metadata().get("authorization") else {
            return Err(tonic::Status::unauthenticated(
                "missing API key: send metadata authorization: Bearer <key>",
            ));
        };
        let key = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                tonic::Status::unauthenticated("authorization: expected Bearer <key>")
            })?;
        let Some((name, granted)) = self.keys.get(&digest_of(key)) else {
            return Err(tonic::Status::unauthenticated("unknown API key"));
        };
        if scopes.iter().any(|s| granted.contains(s)) {
            return Ok(());
        }
        let wanted: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
        Err(tonic::Status::permission_denied(format!(
            "the API key {name:?} lacks the {} scope",
            wanted.join(" or ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(key: Option<&str>) -> tonic::Request<()> {
        let mut r = tonic::Request::new(());
        if let Some(k) = key {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        r
    }

    #[test]
    fn keys_are_checked_by_hash_and_scope() {
        let entry = ApiKeyEntry::parse(&format!("backend:publish:{}", hash_key("k1"))).unwrap();
        let admin = ApiKeyEntry::parse(&format!("ops:publish+admin:{}", hash_key("k2"))).unwrap();
        let auth = ApiAuth::new(&ApiAuthConfig {
            keys: vec![entry, admin],
            ..Default::default()
        });
        assert!(auth.check(&call(Some("k1")), &[Scope::Publish]).is_ok());
        let e = auth.check(&call(Some("k1")), &[Scope::Admin]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().contains("\"backend\" lacks the admin scope"),
            "{}",
            e.message()
        );
        assert!(auth.check(&call(Some("k2")), &[Scope::Admin]).is_ok());
        for key in [None, Some("nope")] {
            let e = auth.check(&call(key), &[Scope::Publish]).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
        }
    }

    #[test]
    fn entries_and_config_name_what_is_wrong() {
        assert!(ApiKeyEntry::parse("a:publish").is_err());
        assert!(ApiKeyEntry::parse("a:root:00").is_err());
        assert!(ApiKeyEntry::parse(&format!("a:publish:{}", "z".repeat(64))).is_err());
        assert_eq!(
            ApiAuthConfig::default().validate().unwrap_err().field,
            "api"
        );
        let k = ApiKeyEntry::parse(&format!("a:member:{}", hash_key("x"))).unwrap();
        let twice = ApiAuthConfig {
            keys: vec![k.clone(), k],
            ..Default::default()
        };
        assert_eq!(twice.validate().unwrap_err().field, "api.keys");
        assert!(new_key().unwrap().starts_with("ftk_"));
    }
}
