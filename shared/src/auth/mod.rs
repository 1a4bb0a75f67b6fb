//! Authentication: turns the request's credentials into a typed [`Principal`].
//!
//! Nothing else in tollgate reads the `Authorization` header. Bearer keys are looked up by
//! their public id with one read, compared by digest in constant time, and cached per instance
//! for at most `TOLLGATE_KEY_CACHE_TTL_SECS` (revocation takes effect within that bound).

pub mod keys;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http::Request;
use crate::store::{AgentStatus, KeyRecord, KeyStatus, Store, now_ms};

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuthMethod {
    /// A per-agent bearer key (`tg_…`).
    ApiKey,
    /// An OAuth 2.1 access token.
    Oauth,
    /// A client certificate presented over mutual TLS.
    Mtls,
}

impl AuthMethod {
    /// Name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::Oauth => "oauth",
            Self::Mtls => "mtls",
        }
    }
}

/// The authenticated caller. Produced once per request by [`Authenticator::authenticate`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Principal {
    /// The agent's id.
    pub agent_id: String,
    /// Scopes the agent holds.
    pub scopes: BTreeSet<String>,
    /// How it authenticated.
    pub method: AuthMethod,
    /// Public id of the credential used (a key id); never a secret.
    pub credential_id: String,
    /// The agent's budgets (copied with its scopes).
    pub budget: crate::store::AgentBudget,
}

impl Principal {
    /// Whether the principal holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }
}

/// Why a request was not authenticated. Mapped to HTTP by [`crate::error::Rejection`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credentials were sent.
    #[error("authentication required")]
    Missing,
    /// The Authorization header is not a usable bearer credential.
    #[error("malformed credentials")]
    Malformed,
    /// The token is not known here (or does not match its stored digest).
    #[error("unknown token")]
    UnknownToken,
    /// The key's expiry has passed.
    #[error("token expired")]
    Expired,
    /// The key was revoked: permanent.
    #[error("key revoked")]
    Revoked,
    /// The agent is disabled: permanent.
    #[error("agent disabled")]
    AgentDisabled,
    /// The credential store could not be reached.
    #[error("credential store unavailable")]
    StoreUnavailable,
}

impl AuthError {
    /// Whether the denial is permanent (the agent must not retry with this credential).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Revoked | Self::AgentDisabled)
    }

    /// Machine-readable reason for error bodies and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing_credentials",
            Self::Malformed => "malformed_credentials",
            Self::UnknownToken => "unknown_token",
            Self::Expired => "token_expired",
            Self::Revoked => "key_revoked",
            Self::AgentDisabled => "agent_disabled",
            Self::StoreUnavailable => "credential_store_unavailable",
        }
    }
}

/// A refused authentication: why, and which agent the credential belonged to when the key was
/// found (revoked, expired or disabled), so the denial can be audited against the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Why.
    pub error: AuthError,
    /// The credential's agent, when known.
    pub agent_id: Option<String>,
}

impl From<AuthError> for Denied {
    fn from(error: AuthError) -> Self {
        Self {
            error,
            agent_id: None,
        }
    }
}

/// Longest Authorization header value considered; longer ones are refused before parsing.
pub const MAX_AUTHORIZATION_LEN: usize = 8192;
const MAX_CACHE_ENTRIES: usize = 10_000;

#[derive(Debug, Clone)]
struct Cached {
    record: Option<KeyRecord>,
    fetched: Instant,
}

/// Authenticates requests; one per process, shared by every request.
#[derive(Debug)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    fixed: Option<Principal>,
}

impl Authenticator {
    /// An authenticator reading keys from `store`, caching each lookup for `ttl`.
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            cache: Mutex::new(HashMap::new()),
            fixed: None,
        }
    }

    /// An authenticator that admits every request as `principal` without credentials.
    ///
    /// Only for test fixtures that drive the protocol without credentials (the MCP conformance
    /// suite sends none). No configuration variable selects it; functions never use it.
    pub fn admit_all_as(principal: Principal) -> Self {
        Self {
            store: Arc::new(crate::store::MemoryStore::new()),
            ttl: Duration::ZERO,
            cache: Mutex::new(HashMap::new()),
            fixed: Some(principal),
        }
    }

    /// Extracts and verifies the request's credentials.
    #[tracing::instrument(name = "authenticate", skip_all, fields(auth.method = tracing::field::Empty))]
    pub async fn authenticate(&self, req: &Request<'_>) -> Result<Principal, Denied> {
        if let Some(p) = &self.fixed {
            return Ok(p.clone());
        }
        let token = bearer_token(req)?;
        let Some(key_id) = keys::key_id(token) else {
            return Err(AuthError::UnknownToken.into());
        };
        tracing::Span::current().record("auth.method", "api_key");
        let record = self.lookup(key_id).await?;
        let Some(record) = record else {
            return Err(AuthError::UnknownToken.into());
        };
        if !keys::digest_matches(token, &record.digest_hex) {
            return Err(AuthError::UnknownToken.into());
        }
        let denied = |error| Denied {
            error,
            agent_id: Some(record.agent_id.clone()),
        };
        if record.status == KeyStatus::Revoked {
            return Err(denied(AuthError::Revoked));
        }
        if record.agent_status != AgentStatus::Active {
            return Err(denied(AuthError::AgentDisabled));
        }
        if record.expires_at_ms.is_some_and(|exp| exp <= now_ms()) {
            return Err(denied(AuthError::Expired));
        }
        Ok(Principal {
            agent_id: record.agent_id,
            scopes: record.scopes,
            method: AuthMethod::ApiKey,
            credential_id: record.key_id,
            budget: record.budget,
        })
    }

    async fn lookup(&self, key_id: &str) -> Result<Option<KeyRecord>, Denied> {
        if let Some(hit) = self.cached(key_id) {
            return Ok(hit);
        }
        let record = self.store.get_key(key_id).await.map_err(|e| {
            tracing::warn!(error = %e, "key lookup failed");
            Denied::from(AuthError::StoreUnavailable)
        })?;
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= MAX_CACHE_ENTRIES {
            let ttl = self.ttl;
            cache.retain(|_, c| c.fetched.elapsed() < ttl);
            if cache.len() >= MAX_CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            key_id.to_owned(),
            Cached {
                record: record.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(record)
    }

    fn cached(&self, key_id: &str) -> Option<Option<KeyRecord>> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .get(key_id)
            .filter(|c| c.fetched.elapsed() < self.ttl)
            .map(|c| c.record.clone())
    }
}

/// The bearer token from the Authorization header (RFC 6750 section 2.1).
fn bearer_token<'r>(req: &'r Request<'_>) -> Result<&'r str, AuthError> {
    let Some(raw) = req.headers().get(http::header::AUTHORIZATION) else {
        return Err(AuthError::Missing);
    };
    if raw.len() > MAX_AUTHORIZATION_LEN {
        return Err(AuthError::Malformed);
    }
    let value = raw.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    let token = token.trim();
    if token.is_empty() || token.contains(' ') {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

#[cfg(test)]
mod tests;
