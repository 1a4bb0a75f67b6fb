//! Authentication: turns the request's credentials into a typed [`Principal`].
//!
//! Nothing else in tollgate reads the `Authorization` header or the client certificate.
//! Bearer keys are looked up by their public id with one read, compared by digest in constant
//! time, and cached per instance for at most `TOLLGATE_KEY_CACHE_TTL_SECS` (revocation takes
//! effect within that bound). OAuth access tokens are verified by [`oauth::OAuthVerifier`];
//! client certificates from API Gateway mutual TLS are mapped by [`mtls`]. Agent records and
//! certificate bindings are cached for the same bound.

mod cache;
mod jws;
pub mod keys;
pub mod mtls;
pub mod oauth;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{AuthConfig, AuthMethods};
use crate::http::Request;
use crate::store::{
    AgentRecord, AgentStatus, CertBinding, KeyRecord, KeyStatus, Store, StoreError, now_ms,
};
use cache::BoundedCache;
use oauth::OAuthVerifier;

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// The authenticated caller. Produced once per request by [`Authenticator::authenticate`]
/// (and carried to a task's asynchronous run, see [`crate::task`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// The end user the agent acts for, when the credential names one (an OAuth token's
    /// `sub`, as `oauth:<issuer>:<sub>`); see [`Principal::user`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl Principal {
    /// The user whose connections (third-party grants) this principal acts on, in its own
    /// namespace: `oauth:<issuer>:<sub>` for an OAuth token with a `sub`, else
    /// `agent:<agent id>` (bearer keys, certificates, OAuth tokens without `sub`). No value of
    /// one namespace can name a user of another.
    pub fn user(&self) -> String {
        self.user
            .clone()
            .unwrap_or_else(|| format!("agent:{}", self.agent_id))
    }

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
    /// The access token is not a well-formed, correctly signed token for an accepted algorithm.
    #[error("invalid token")]
    InvalidToken,
    /// The token (`nbf`, `iat`) or certificate is not valid yet.
    #[error("not yet valid")]
    NotYetValid,
    /// The token's audience is not this server (RFC 8707).
    #[error("wrong audience")]
    WrongAudience,
    /// The token was issued by another authorization server.
    #[error("wrong issuer")]
    WrongIssuer,
    /// The token names a signing key the issuer does not publish.
    #[error("unknown signing key")]
    UnknownSigningKey,
    /// The token carries none of the configured identity claims.
    #[error("no identity claim")]
    NoIdentity,
    /// The authorization server (JWKS, introspection) could not be reached and nothing cached
    /// can decide.
    #[error("authorization server unavailable")]
    IssuerUnavailable,
    /// The client certificate is bound to no agent.
    #[error("unknown certificate")]
    UnknownCertificate,
    /// The client certificate's validity has ended.
    #[error("certificate expired")]
    CertificateExpired,
    /// The certificate and the token belong to different agents.
    #[error("certificate and token disagree")]
    CertificateMismatch,
    /// The token's `sub` cannot name a user here (too long, empty, not a string, control
    /// characters).
    #[error("subject not accepted")]
    SubjectRejected,
}

impl AuthError {
    /// Whether the denial is permanent (the agent must not retry with this credential).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Revoked | Self::AgentDisabled)
    }

    /// Whether the denial is temporary on the server's side (503, retry later).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::StoreUnavailable | Self::IssuerUnavailable)
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
            Self::InvalidToken => "invalid_token",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongAudience => "wrong_audience",
            Self::WrongIssuer => "wrong_issuer",
            Self::UnknownSigningKey => "unknown_signing_key",
            Self::NoIdentity => "no_identity_claim",
            Self::IssuerUnavailable => "authorization_server_unavailable",
            Self::UnknownCertificate => "unknown_certificate",
            Self::CertificateExpired => "certificate_expired",
            Self::CertificateMismatch => "certificate_token_mismatch",
            Self::SubjectRejected => "subject_not_accepted",
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

/// A per-instance cache whose entries live at most `ttl`; full, it evicts the least recently
/// used entries rather than emptying itself (see `auth::cache`).
#[derive(Debug)]
struct TtlCache<V> {
    cache: BoundedCache<String, V>,
    ttl: Duration,
}

impl<V: Clone> TtlCache<V> {
    fn new(ttl: Duration) -> Self {
        Self {
            cache: BoundedCache::new(MAX_CACHE_ENTRIES),
            ttl,
        }
    }

    fn get(&self, key: &str) -> Option<V> {
        self.cache.get(&key.to_owned())
    }

    fn insert(&self, key: &str, value: V) {
        self.cache
            .insert(key.to_owned(), value, Instant::now() + self.ttl);
    }
}

/// Authenticates requests; one per process, shared by every request.
///
/// Which credentials count is configuration ([`AuthMethods`]): a client certificate (mTLS)
/// when one was presented and mTLS is accepted, else the bearer token: a `tg_` key, or an
/// OAuth access token. Every path yields the same [`Principal`].
#[derive(Debug)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    keys: TtlCache<Option<KeyRecord>>,
    agents: TtlCache<Option<AgentRecord>>,
    certs: TtlCache<Option<CertBinding>>,
    methods: AuthMethods,
    mtls_require_token: bool,
    /// Whether keys issued before the checksum are looked up (`TOLLGATE_ACCEPT_LEGACY_KEYS`).
    accept_legacy_keys: bool,
    oauth: Option<Arc<OAuthVerifier>>,
    /// Scheme and authority of the public URL, for a direct tool route's own audience.
    origin: Option<String>,
    fixed: Option<Principal>,
    /// Key lookups of one key id run one at a time (striped by a hash of the id): concurrent
    /// requests for an uncached key id wait for the first read and take its cached answer, so a
    /// flood costs at most one store read per distinct key id (found by `make load`).
    lookups: Arc<[tokio::sync::Mutex<()>]>,
}

/// Stripes of [`Authenticator::lookups`]: up to this many distinct key ids are read at once.
const LOOKUP_STRIPES: usize = 64;

fn lookup_stripes() -> Arc<[tokio::sync::Mutex<()>]> {
    (0..LOOKUP_STRIPES)
        .map(|_| tokio::sync::Mutex::new(()))
        .collect()
}

impl Authenticator {
    /// An authenticator accepting bearer keys from `store`, caching each lookup for `ttl`.
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Self {
        Self {
            store,
            keys: TtlCache::new(ttl),
            agents: TtlCache::new(ttl),
            certs: TtlCache::new(ttl),
            methods: AuthMethods {
                api_key: true,
                oauth: false,
                mtls: false,
            },
            mtls_require_token: false,
            accept_legacy_keys: true,
            oauth: None,
            origin: None,
            fixed: None,
            lookups: lookup_stripes(),
        }
    }

    /// Accepts the configured methods; OAuth tokens are checked by `oauth`.
    pub fn with_config(
        mut self,
        auth: &AuthConfig,
        oauth: Option<Arc<OAuthVerifier>>,
        resource_url: Option<&str>,
    ) -> Self {
        self.methods = auth.methods;
        self.mtls_require_token = auth.mtls_require_token;
        self.accept_legacy_keys = auth.accept_legacy_keys;
        self.oauth = oauth;
        self.origin = resource_url.and_then(crate::http::origin_of);
        self
    }

    /// The OAuth verifier, when OAuth tokens are accepted.
    pub fn oauth(&self) -> Option<&Arc<OAuthVerifier>> {
        self.oauth.as_ref()
    }

    /// An authenticator that admits every request as `principal` without credentials.
    ///
    /// Only for test fixtures that drive the protocol without credentials (the MCP conformance
    /// suite sends none). No configuration variable selects it; built only with the `test-util` feature.
    #[cfg(any(test, feature = "test-util"))]
    pub fn admit_all_as(principal: Principal) -> Self {
        let mut auth = Self::new(Arc::new(crate::store::MemoryStore::new()), Duration::ZERO);
        auth.fixed = Some(principal);
        auth
    }

    /// Extracts and verifies the request's credentials.
    #[tracing::instrument(name = "authenticate", skip_all, fields(auth.method = tracing::field::Empty))]
    pub async fn authenticate(&self, req: &Request<'_>) -> Result<Principal, Denied> {
        if let Some(p) = &self.fixed {
            return Ok(p.clone());
        }
        let cert = if self.methods.mtls {
            mtls::ClientCert::from_event(req.event())?
        } else {
            None
        };
        let Some(cert) = cert else {
            if self.mtls_require_token || !(self.methods.api_key || self.methods.oauth) {
                // A certificate is required and none came.
                return Err(AuthError::Missing.into());
            }
            return self.by_token(bearer_token(req)?, req).await;
        };
        tracing::Span::current().record("auth.method", "mtls");
        let by_cert = self.by_cert(&cert).await?;
        if !self.mtls_require_token {
            return Ok(by_cert);
        }
        // Both factors: the token decides scopes; it must belong to the certificate's agent.
        let by_token = self.by_token(bearer_token(req)?, req).await?;
        if by_token.agent_id != by_cert.agent_id {
            return Err(Denied {
                error: AuthError::CertificateMismatch,
                agent_id: Some(by_cert.agent_id),
            });
        }
        Ok(by_token)
    }

    async fn by_token(&self, token: &str, req: &Request<'_>) -> Result<Principal, Denied> {
        if self.methods.api_key {
            match keys::shape(token) {
                keys::Shape::Foreign => {}
                shape => {
                    tracing::Span::current().record("auth.method", "api_key");
                    return self.by_key(token, shape).await;
                }
            }
        }
        let Some(oauth) = self.oauth.as_ref().filter(|_| self.methods.oauth) else {
            return Err(AuthError::UnknownToken.into());
        };
        tracing::Span::current().record("auth.method", "oauth");
        // A direct tool route is also a resource of its own (its metadata names it).
        let route_url = self
            .origin
            .as_ref()
            .filter(|_| req.path().starts_with("/tools/"))
            .map(|o| format!("{o}{}", req.path()));
        let identity = oauth.verify(token, route_url.as_deref()).await?;
        self.oauth_principal(identity, &oauth.config().issuer).await
    }

    /// The principal of a verified OAuth identity: the agent an explicit binding names
    /// (`tollgate agents bind-oauth`), else the agent derived from issuer and claim (created
    /// on first sight). A claim never selects an agent by its spelling.
    async fn oauth_principal(
        &self,
        identity: oauth::TokenIdentity,
        issuer: &str,
    ) -> Result<Principal, Denied> {
        let bound = self
            .cert_binding(&oauth::binding_id(issuer, &identity.subject))
            .await?;
        let (agent_id, record) = match bound {
            Some(b) => {
                let record = self.agent(&b.agent_id, false).await?;
                (b.agent_id, record)
            }
            None => {
                let id = oauth::agent_id_for(issuer, &identity.subject);
                let record = self.agent(&id, true).await?;
                (id, record)
            }
        };
        let Some(record) = record else {
            return Err(AuthError::StoreUnavailable.into());
        };
        if record.status != AgentStatus::Active {
            return Err(Denied {
                error: AuthError::AgentDisabled,
                agent_id: Some(agent_id),
            });
        }
        Ok(Principal {
            agent_id,
            scopes: identity.scopes,
            method: AuthMethod::Oauth,
            credential_id: identity.credential_id,
            budget: record.budget,
            user: identity.user.map(|sub| oauth::user_for(issuer, &sub)),
        })
    }

    /// Authenticates a bearer key presented outside an MCP request (an agent's connect page):
    /// the same checks as on a call.
    pub async fn authenticate_key(&self, token: &str) -> Result<Principal, Denied> {
        if self.methods.api_key && token.len() <= MAX_AUTHORIZATION_LEN {
            self.by_key(token, keys::shape(token)).await
        } else {
            Err(AuthError::UnknownToken.into())
        }
    }

    /// A bearer key: refused offline unless it has a key's shape and a matching checksum (or is
    /// a legacy key, while those are accepted), then looked up by its id.
    async fn by_key(&self, token: &str, shape: keys::Shape<'_>) -> Result<Principal, Denied> {
        let key_id = match shape {
            keys::Shape::Key { id, checked } if checked || self.accept_legacy_keys => id,
            _ => return Err(AuthError::UnknownToken.into()),
        };
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
        if matches!(shape, keys::Shape::Key { checked: false, .. }) {
            // What an operator migrating to checksummed keys looks for (README "Bearer keys").
            tracing::info!(key_id = %record.key_id, "legacy bearer key without checksum used");
        }
        Ok(Principal {
            agent_id: record.agent_id,
            scopes: record.scopes,
            method: AuthMethod::ApiKey,
            credential_id: record.key_id,
            budget: record.budget,
            user: None,
        })
    }

    async fn by_cert(&self, cert: &mtls::ClientCert) -> Result<Principal, Denied> {
        cert.check_validity(now_ms() / 1000)?;
        let mut binding = None;
        for id in cert.binding_ids() {
            if let Some(hit) = self.cert_binding(&id).await? {
                binding = Some(hit);
                break;
            }
        }
        let Some(binding) = binding else {
            return Err(AuthError::UnknownCertificate.into());
        };
        let Some(record) = self.agent(&binding.agent_id, false).await? else {
            return Err(AuthError::UnknownCertificate.into());
        };
        if record.status != AgentStatus::Active {
            return Err(Denied {
                error: AuthError::AgentDisabled,
                agent_id: Some(record.agent_id),
            });
        }
        Ok(Principal {
            agent_id: record.agent_id,
            scopes: record.scopes,
            method: AuthMethod::Mtls,
            credential_id: cert.fingerprint.clone(),
            budget: record.budget,
            user: None,
        })
    }

    async fn lookup(&self, key_id: &str) -> Result<Option<KeyRecord>, Denied> {
        if let Some(hit) = self.keys.get(key_id) {
            return Ok(hit);
        }
        let stripe = {
            use std::hash::{BuildHasher as _, BuildHasherDefault};
            let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .hash_one(key_id);
            (h % LOOKUP_STRIPES as u64) as usize
        };
        let _one = self.lookups[stripe].lock().await;
        if let Some(hit) = self.keys.get(key_id) {
            return Ok(hit);
        }
        let record = self.store.get_key(key_id).await.map_err(|e| {
            tracing::warn!(error = %e, "key lookup failed");
            Denied::from(AuthError::StoreUnavailable)
        })?;
        self.keys.insert(key_id, record.clone());
        Ok(record)
    }

    async fn cert_binding(&self, id: &str) -> Result<Option<CertBinding>, Denied> {
        if let Some(hit) = self.certs.get(id) {
            return Ok(hit);
        }
        let binding = self.store.get_cert(id).await.map_err(|e| {
            tracing::warn!(error = %e, "certificate lookup failed");
            Denied::from(AuthError::StoreUnavailable)
        })?;
        self.certs.insert(id, binding.clone());
        Ok(binding)
    }

    /// The agent's record; with `create`, an agent seen for the first time (OAuth) is created
    /// with the deployment's default budgets and no stored scopes.
    async fn agent(&self, agent_id: &str, create: bool) -> Result<Option<AgentRecord>, Denied> {
        if let Some(hit) = self.agents.get(agent_id)
            && (hit.is_some() || !create)
        {
            return Ok(hit);
        }
        let unavailable = |e: StoreError| {
            tracing::warn!(error = %e, "agent lookup failed");
            Denied::from(AuthError::StoreUnavailable)
        };
        let mut record = self.store.get_agent(agent_id).await.map_err(unavailable)?;
        if record.is_none() && create {
            let new = AgentRecord {
                agent_id: agent_id.to_owned(),
                description: "created on its first OAuth access token".to_owned(),
                status: AgentStatus::Active,
                scopes: BTreeSet::new(),
                budget: crate::store::AgentBudget::default(),
                created_at_ms: now_ms(),
            };
            match self.store.create_agent(&new).await {
                Ok(()) => {
                    tracing::info!(agent_id, "agent created for an OAuth identity");
                    record = Some(new);
                }
                Err(StoreError::AlreadyExists(_)) => {
                    record = self.store.get_agent(agent_id).await.map_err(unavailable)?;
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        self.agents.insert(agent_id, record.clone());
        Ok(record)
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
