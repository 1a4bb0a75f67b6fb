//! OAuth 2.1 resource server: access tokens verified against the issuer's JWKS, or, for
//! opaque tokens, through RFC 7662 introspection.
//!
//! - Only asymmetric algorithms (RS256, PS256, ES256, EdDSA) are accepted, and each key is
//!   pinned to one algorithm (its JWKS `alg`, else the one its type implies), so `alg: none`
//!   and HMAC-with-the-public-key tokens never reach a signature check.
//! - `exp` is required; `nbf` and `iat` may not lie in the future beyond the leeway; `iss` must
//!   be the configured issuer and `aud` must name this server (RFC 8707).
//! - The JWKS is fetched once, reused for its TTL, refreshed on an unknown `kid` at most once per
//!   `jwks_min_refresh` (one fetch in flight per instance), and kept when the endpoint is down.
//!   With no JWKS ever fetched, verification fails with `IssuerUnavailable` (503).
//! - Introspection answers are cached by the token's SHA-256, never past the token's `exp`.
//!
//! The token itself is never logged, cached in clear, or passed to any other service.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::AuthError;
use crate::config::OAuthConfig;

/// Longest access token considered; longer ones are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Longest JWKS or metadata document read.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Longest wait on the issuer (metadata, JWKS, introspection).
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_INTROSPECTION_ENTRIES: usize = 10_000;
/// Longest `sub` accepted: it names the end user's connections (a DynamoDB key and a KMS
/// encryption context). A longer one is refused (401 `subject_not_accepted`), never truncated.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// What a verified token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// The value of the first configured identity claim present.
    pub subject: String,
    /// Scopes granted (`scope`, space separated, or `scp`).
    pub scopes: BTreeSet<String>,
    /// Public reference for logs: the token's `jti`, else a digest prefix. Never the token.
    pub credential_id: String,
    /// Expiry, Unix seconds.
    pub expires_at: Option<u64>,
    /// The token's `sub`, when present (the end user), at most [`MAX_SUBJECT_BYTES`].
    pub user: Option<String>,
}

#[derive(Debug, Clone)]
struct PinnedKey {
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Debug, Default)]
struct Jwks {
    keys: HashMap<String, PinnedKey>,
    /// When the current keys were fetched.
    fetched: Option<Instant>,
    /// When a fetch was last tried (successful or not).
    attempted: Option<Instant>,
    /// The JWKS URL, once configured or discovered.
    url: Option<String>,
}

#[derive(Debug, Clone)]
struct Introspected {
    identity: TokenIdentity,
    until: Instant,
}

/// Client credentials for the introspection endpoint. Its `Debug` never shows the secret.
#[derive(Clone, serde::Deserialize)]
pub struct ClientCredentials {
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: String,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// Where introspection credentials come from (Secrets Manager on Lambda and locally).
#[async_trait::async_trait]
pub trait CredentialSource: Send + Sync + std::fmt::Debug {
    /// Reads the introspection client's credentials.
    async fn credentials(&self) -> Result<ClientCredentials, String>;
}

/// Introspection credentials read from a Secrets Manager secret holding
/// `{"client_id": …, "client_secret": …}`.
#[derive(Debug)]
pub struct SecretsManagerCredentials {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
}

impl SecretsManagerCredentials {
    /// Reads `secret_id` with `client`.
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: String) -> Self {
        Self { client, secret_id }
    }
}

#[async_trait::async_trait]
impl CredentialSource for SecretsManagerCredentials {
    async fn credentials(&self) -> Result<ClientCredentials, String> {
        use aws_sdk_secretsmanager::error::ProvideErrorMetadata as _;
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| format!("GetSecretValue: {}", e.code().unwrap_or("request failed")))?;
        let text = out
            .secret_string()
            .ok_or("the introspection secret has no string value")?;
        serde_json::from_str(text)
            .map_err(|_| "the introspection secret is not {client_id, client_secret}".to_owned())
    }
}

/// Verifies OAuth access tokens. One per process.
#[derive(Debug)]
pub struct OAuthVerifier {
    config: OAuthConfig,
    http: reqwest::Client,
    jwks: tokio::sync::RwLock<Jwks>,
    /// Serialises fetches: one in flight per instance.
    fetch: tokio::sync::Mutex<()>,
    credentials: Option<Box<dyn CredentialSource>>,
    cached_credentials: tokio::sync::Mutex<Option<(ClientCredentials, Instant)>>,
    introspected: Mutex<HashMap<[u8; 32], Introspected>>,
    /// JWKS fetches made (for tests and benchmarks).
    pub fetches: std::sync::atomic::AtomicU64,
}

impl OAuthVerifier {
    /// A verifier for `config`, fetching with `http`; `credentials` serve introspection.
    pub fn new(
        config: OAuthConfig,
        http: reqwest::Client,
        credentials: Option<Box<dyn CredentialSource>>,
    ) -> Self {
        let url = config.jwks_url.clone();
        Self {
            config,
            http,
            jwks: tokio::sync::RwLock::new(Jwks {
                url,
                ..Jwks::default()
            }),
            fetch: tokio::sync::Mutex::new(()),
            credentials,
            cached_credentials: tokio::sync::Mutex::new(None),
            introspected: Mutex::new(HashMap::new()),
            fetches: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The verifier's settings.
    pub fn config(&self) -> &OAuthConfig {
        &self.config
    }

    /// Verifies `token` for one of `audiences` (the configured ones, plus the route's own URL).
    pub async fn verify(
        &self,
        token: &str,
        extra_audience: Option<&str>,
    ) -> Result<TokenIdentity, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let mut audiences: Vec<&str> = self.config.audiences.iter().map(String::as_str).collect();
        audiences.extend(extra_audience);
        if token.bytes().filter(|&b| b == b'.').count() == 2 {
            self.verify_jwt(token, &audiences).await
        } else if self.config.introspection_url.is_some() {
            self.introspect(token, &audiences).await
        } else {
            Err(AuthError::UnknownToken)
        }
    }

    async fn verify_jwt(
        &self,
        token: &str,
        audiences: &[&str],
    ) -> Result<TokenIdentity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::InvalidToken)?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(AuthError::InvalidToken);
        }
        let key = self.key_for(header.kid.as_deref()).await?;
        if key.alg != header.alg {
            return Err(AuthError::InvalidToken);
        }
        let mut validation = Validation::new(key.alg);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidAudience => AuthError::WrongAudience,
                    ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                    ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthError::WrongAudience,
                    ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthError::WrongIssuer,
                    _ => AuthError::InvalidToken,
                })?;
        let claims = data.claims;
        let now = jsonwebtoken::get_current_timestamp();
        if claims
            .get("iat")
            .and_then(Value::as_u64)
            .is_some_and(|iat| iat > now + self.config.leeway.as_secs())
        {
            return Err(AuthError::NotYetValid);
        }
        let credential_id = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| j.len() <= 64 && j.bytes().all(|b| b.is_ascii_graphic()))
            .map_or_else(|| digest_ref(token), str::to_owned);
        identity(&claims, &self.config.agent_claims, credential_id)
    }

    /// The key named `kid`, refreshing the JWKS when it is stale or does not know `kid`.
    async fn key_for(&self, kid: Option<&str>) -> Result<PinnedKey, AuthError> {
        let (found, stale, may_refetch) = {
            let jwks = self.jwks.read().await;
            (
                pick(&jwks.keys, kid),
                jwks.fetched
                    .is_none_or(|t| t.elapsed() >= self.config.jwks_ttl),
                jwks.attempted
                    .is_none_or(|t| t.elapsed() >= self.config.jwks_min_refresh),
            )
        };
        match found {
            Some(k) if !stale => return Ok(k),
            Some(k) => {
                // Stale: refresh if no fetch was tried recently; on failure keep the old keys.
                if may_refetch {
                    self.refresh().await;
                }
                return Ok(pick(&self.jwks.read().await.keys, kid).unwrap_or(k));
            }
            None => {}
        }
        if may_refetch {
            self.refresh().await;
        }
        let jwks = self.jwks.read().await;
        match pick(&jwks.keys, kid) {
            Some(k) => Ok(k),
            None if jwks.fetched.is_none() => Err(AuthError::IssuerUnavailable),
            None => Err(AuthError::UnknownSigningKey),
        }
    }

    /// Fetches the JWKS unless a fetch was tried within the minimum interval (also by a
    /// task this one waited for): a cold instance whose issuer is down does not retry per call.
    async fn refresh(&self) {
        let _one = self.fetch.lock().await;
        if self
            .jwks
            .read()
            .await
            .attempted
            .is_some_and(|t| t.elapsed() < self.config.jwks_min_refresh)
        {
            return;
        }
        let url = self.jwks.read().await.url.clone();
        let started = Instant::now();
        let result = async {
            let url = match url {
                Some(u) => u,
                None => self.discover_jwks_url().await?,
            };
            let set: JwkSet = self.get_json(&url).await?;
            Ok::<_, String>((url, pinned_keys(&set)))
        }
        .await;
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut jwks = self.jwks.write().await;
        jwks.attempted = Some(Instant::now());
        match result {
            Ok((url, keys)) => {
                tracing::info!(
                    keys = keys.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "JWKS fetched"
                );
                jwks.url = Some(url);
                jwks.keys = keys;
                jwks.fetched = Some(Instant::now());
            }
            Err(cause) => {
                tracing::warn!(%cause, cached_keys = jwks.keys.len(), "JWKS fetch failed");
            }
        }
    }

    /// The JWKS URL from the issuer's RFC 8414 metadata, else its OpenID configuration.
    async fn discover_jwks_url(&self) -> Result<String, String> {
        let issuer = self.config.issuer.trim_end_matches('/');
        let (origin, path) = match issuer.split_once("://") {
            Some((scheme, rest)) => match rest.find('/') {
                Some(i) => (format!("{scheme}://{}", &rest[..i]), &rest[i..]),
                None => (issuer.to_owned(), ""),
            },
            None => return Err("issuer is not a URL".to_owned()),
        };
        let candidates = [
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
            format!("{issuer}/.well-known/openid-configuration"),
        ];
        let mut last = String::new();
        for url in candidates {
            match self.get_json::<Value>(&url).await {
                Ok(doc) => {
                    if doc
                        .get("issuer")
                        .and_then(Value::as_str)
                        .map(|i| i.trim_end_matches('/'))
                        != Some(issuer)
                    {
                        return Err("issuer metadata names another issuer".to_owned());
                    }
                    return doc
                        .get("jwks_uri")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .ok_or_else(|| "issuer metadata has no jwks_uri".to_owned());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let resp = self
            .http
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("GET {}: {}", redact_url(url), kind_of(&e)))?;
        if !resp.status().is_success() {
            return Err(format!(
                "GET {}: HTTP {}",
                redact_url(url),
                resp.status().as_u16()
            ));
        }
        let bytes = read_limited(resp).await?;
        serde_json::from_slice(&bytes).map_err(|_| format!("GET {}: not JSON", redact_url(url)))
    }

    async fn introspect(
        &self,
        token: &str,
        audiences: &[&str],
    ) -> Result<TokenIdentity, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cached_introspection(&digest) {
            return Ok(hit);
        }
        let url = self
            .config
            .introspection_url
            .as_deref()
            .ok_or(AuthError::UnknownToken)?;
        let creds = self.introspection_credentials().await?;
        let resp = self
            .http
            .post(url)
            .basic_auth(&creds.client_id, Some(&creds.client_secret))
            .header(http::header::ACCEPT, "application/json")
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(cause = kind_of(&e), "introspection request failed");
                AuthError::IssuerUnavailable
            })?;
        if !resp.status().is_success() {
            tracing::warn!(status = resp.status().as_u16(), "introspection refused");
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                // Credentials may have rotated: read them again next time.
                *self.cached_credentials.lock().await = None;
            }
            return Err(AuthError::IssuerUnavailable);
        }
        let body = read_limited(resp)
            .await
            .map_err(|_| AuthError::IssuerUnavailable)?;
        let claims: serde_json::Map<String, Value> =
            serde_json::from_slice(&body).map_err(|_| AuthError::IssuerUnavailable)?;
        if claims.get("active").and_then(Value::as_bool) != Some(true) {
            return Err(AuthError::UnknownToken);
        }
        let now = jsonwebtoken::get_current_timestamp();
        let exp = claims.get("exp").and_then(Value::as_u64);
        if exp.is_some_and(|e| e + self.config.leeway.as_secs() <= now) {
            return Err(AuthError::Expired);
        }
        if claims
            .get("nbf")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > now + self.config.leeway.as_secs())
        {
            return Err(AuthError::NotYetValid);
        }
        if let Some(iss) = claims.get("iss")
            && iss.as_str().map(|i| i.trim_end_matches('/'))
                != Some(self.config.issuer.trim_end_matches('/'))
        {
            return Err(AuthError::WrongIssuer);
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => audiences.contains(&a.as_str()),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| audiences.contains(&a)),
            _ => false,
        };
        if !aud_ok {
            return Err(AuthError::WrongAudience);
        }
        let identity = identity(&claims, &self.config.agent_claims, digest_ref(token))?;
        let mut life = self.config.introspection_cache_ttl;
        if let Some(exp) = exp {
            life = life.min(Duration::from_secs(exp.saturating_sub(now)));
        }
        let mut cache = self
            .introspected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= MAX_INTROSPECTION_ENTRIES {
            cache.retain(|_, c| c.until > Instant::now());
            if cache.len() >= MAX_INTROSPECTION_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            digest,
            Introspected {
                identity: identity.clone(),
                until: Instant::now() + life,
            },
        );
        Ok(identity)
    }

    fn cached_introspection(&self, digest: &[u8; 32]) -> Option<TokenIdentity> {
        let cache = self
            .introspected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .get(digest)
            .filter(|c| c.until > Instant::now())
            .map(|c| c.identity.clone())
    }

    async fn introspection_credentials(&self) -> Result<ClientCredentials, AuthError> {
        let mut cached = self.cached_credentials.lock().await;
        if let Some((c, at)) = cached.as_ref()
            && at.elapsed() < Duration::from_secs(300)
        {
            return Ok(c.clone());
        }
        let source = self
            .credentials
            .as_ref()
            .ok_or(AuthError::IssuerUnavailable)?;
        match source.credentials().await {
            Ok(c) => {
                *cached = Some((c.clone(), Instant::now()));
                Ok(c)
            }
            Err(cause) => {
                tracing::warn!(%cause, "introspection credentials unavailable");
                // Keep using what was read before, if anything.
                cached
                    .as_ref()
                    .map(|(c, _)| c.clone())
                    .ok_or(AuthError::IssuerUnavailable)
            }
        }
    }
}

/// The key for `kid`; without a `kid`, the only key when there is exactly one.
fn pick(keys: &HashMap<String, PinnedKey>, kid: Option<&str>) -> Option<PinnedKey> {
    match kid {
        Some(k) => keys.get(k).cloned(),
        None if keys.len() == 1 => keys.values().next().cloned(),
        None => None,
    }
}

/// The signing keys of a JWKS, each pinned to one asymmetric algorithm. Symmetric keys,
/// encryption keys, keys without a `kid` among several, and keys whose declared `alg`
/// contradicts their type are left out.
fn pinned_keys(set: &JwkSet) -> HashMap<String, PinnedKey> {
    let mut out = HashMap::new();
    let only = set.keys.len() == 1;
    for jwk in &set.keys {
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) {
            continue;
        }
        let implied = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Some(Algorithm::ES256)
            }
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Some(Algorithm::EdDSA)
            }
            _ => None,
        };
        let alg = match (jwk.common.key_algorithm, implied) {
            (None, Some(a)) => a,
            (Some(KeyAlgorithm::RS256), Some(Algorithm::RS256)) => Algorithm::RS256,
            (Some(KeyAlgorithm::PS256), Some(Algorithm::RS256)) => Algorithm::PS256,
            (Some(KeyAlgorithm::ES256), Some(Algorithm::ES256)) => Algorithm::ES256,
            (Some(KeyAlgorithm::EdDSA), Some(Algorithm::EdDSA)) => Algorithm::EdDSA,
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let kid = match (&jwk.common.key_id, only) {
            (Some(k), _) => k.clone(),
            (None, true) => String::new(),
            (None, false) => continue,
        };
        out.insert(kid, PinnedKey { alg, key });
    }
    out
}

/// Identity and scopes from verified claims.
fn identity(
    claims: &serde_json::Map<String, Value>,
    agent_claims: &[String],
    credential_id: String,
) -> Result<TokenIdentity, AuthError> {
    let subject = agent_claims
        .iter()
        .find_map(|c| {
            claims
                .get(c)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
        })
        .ok_or(AuthError::NoIdentity)?
        .to_owned();
    let mut scopes = BTreeSet::new();
    match claims.get("scope").or_else(|| claims.get("scp")) {
        Some(Value::String(s)) => scopes.extend(s.split_whitespace().map(str::to_owned)),
        Some(Value::Array(list)) => {
            scopes.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
        }
        _ => {}
    }
    Ok(TokenIdentity {
        subject,
        scopes,
        credential_id,
        expires_at: claims.get("exp").and_then(Value::as_u64),
        user: subject_of(claims)?,
    })
}

/// The token's `sub`: absent is fine (no end user); present, it must be a non-empty string of
/// at most [`MAX_SUBJECT_BYTES`] without control characters, else the token is refused (a
/// dropped `sub` would make every such user share the agent's connections).
fn subject_of(claims: &serde_json::Map<String, Value>) -> Result<Option<String>, AuthError> {
    match claims.get("sub") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s))
            if !s.is_empty()
                && s.len() <= MAX_SUBJECT_BYTES
                && !s.chars().any(char::is_control) =>
        {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(AuthError::SubjectRejected),
    }
}

/// A public reference to a token: the first 16 hex digits of its SHA-256.
fn digest_ref(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    format!("sha256:{}", hex::encode(&d[..8]))
}

/// The URL without query or userinfo, for logs.
fn redact_url(url: &str) -> String {
    let base = url.split(['?', '#']).next().unwrap_or(url);
    match base.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => base.to_owned(),
        },
        None => base.to_owned(),
    }
}

fn kind_of(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}

async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| kind_of(&e).to_owned())? {
        if out.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err("document too large".to_owned());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The OAuth agent id for an identity claim of `issuer`'s tokens when no binding names one:
/// `oauth-` and 24 hex digits of the SHA-256 of issuer and claim. Always derived, even when the
/// claim reads like an agent id, so a client can never become an agent by choosing its name;
/// `oauth-` ids are reserved (the admin CLI refuses to create them).
pub fn agent_id_for(issuer: &str, subject: &str) -> String {
    format!("oauth-{}", &binding_digest(issuer, subject)[..24])
}

/// The id of an explicit binding of `issuer`'s identity claim `subject` to a pre-created agent
/// (`tollgate agents bind-oauth`): `oauth:` and the SHA-256 of issuer and claim, so any claim
/// fits a key.
pub fn binding_id(issuer: &str, subject: &str) -> String {
    format!("oauth:{}", binding_digest(issuer, subject))
}

fn binding_digest(issuer: &str, subject: &str) -> String {
    let mut h = Sha256::new();
    h.update(issuer.trim_end_matches('/').as_bytes());
    h.update(b"\n");
    h.update(subject.as_bytes());
    hex::encode(h.finalize())
}

/// The vault's user for an OAuth end user: `oauth:<issuer>:<sub>`, a namespace no agent id
/// (`agent:<id>`) can enter.
pub fn user_for(issuer: &str, sub: &str) -> String {
    format!("oauth:{}:{sub}", issuer.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_takes_the_first_configured_claim_and_both_scope_forms() {
        let claims: serde_json::Map<String, Value> = serde_json::from_value(serde_json::json!({
            "sub": "user-1", "azp": "billing-bot", "scope": "a b  c"
        }))
        .expect("claims");
        let claims_list = ["client_id", "azp", "sub"].map(str::to_owned);
        let id = identity(&claims, &claims_list, "r".into()).expect("identity");
        assert_eq!(id.subject, "billing-bot");
        assert_eq!(id.scopes.iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        let claims: serde_json::Map<String, Value> =
            serde_json::from_value(serde_json::json!({"scp": ["x", "y"]})).expect("claims");
        assert_eq!(
            identity(&claims, &claims_list, "r".into()),
            Err(AuthError::NoIdentity)
        );
    }

    #[test]
    fn agent_ids_for_claims_are_stable_valid_and_never_the_claim_itself() {
        const ISS: &str = "https://as.example";
        // A claim spelled like an agent id does not become that agent (a binding is needed).
        let named = agent_id_for(ISS, "billing-bot");
        assert_ne!(named, "billing-bot");
        let mapped = agent_id_for(ISS, "Client/ABC");
        assert!(
            mapped.starts_with("oauth-") && mapped.len() == 30,
            "{mapped}"
        );
        assert_eq!(mapped, agent_id_for(ISS, "Client/ABC"));
        assert_eq!(mapped, agent_id_for("https://as.example/", "Client/ABC"));
        assert_ne!(mapped, agent_id_for("https://other.example", "Client/ABC"));
        assert!(crate::store::validate_agent_id(&mapped).is_ok());
        assert!(crate::store::validate_agent_id(&named).is_ok());
        assert_ne!(
            binding_id(ISS, "a"),
            binding_id("https://other.example", "a")
        );
    }

    #[test]
    fn subjects_that_do_not_fit_are_refused_not_dropped() {
        let claims_list = ["client_id", "sub"].map(str::to_owned);
        let with_sub = |sub: Value| {
            let claims: serde_json::Map<String, Value> =
                serde_json::from_value(serde_json::json!({"client_id": "c", "sub": sub}))
                    .expect("claims");
            identity(&claims, &claims_list, "r".into())
        };
        let ok = with_sub(Value::String("x".repeat(MAX_SUBJECT_BYTES))).expect("fits");
        assert_eq!(ok.user.as_deref().map(str::len), Some(MAX_SUBJECT_BYTES));
        for bad in [
            Value::String("x".repeat(MAX_SUBJECT_BYTES + 1)),
            Value::String(String::new()),
            Value::String("a\nb".into()),
            serde_json::json!(42),
        ] {
            assert_eq!(with_sub(bad), Err(AuthError::SubjectRejected));
        }
        let claims: serde_json::Map<String, Value> =
            serde_json::from_value(serde_json::json!({"client_id": "c"})).expect("claims");
        assert_eq!(
            identity(&claims, &claims_list, "r".into())
                .expect("no sub")
                .user,
            None
        );
        assert_eq!(
            user_for("https://as.example/", "u1"),
            "oauth:https://as.example:u1"
        );
    }

    #[test]
    fn jwks_keys_are_pinned_and_symmetric_keys_dropped() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "ec", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "ec-liar", "crv": "P-256", "alg": "RS256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "ec-enc", "use": "enc", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}))
        .expect("jwks");
        let keys = pinned_keys(&set);
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["ec"]);
        assert_eq!(keys["ec"].alg, Algorithm::ES256);
    }

    #[test]
    fn client_secrets_never_show_in_debug() {
        let c = ClientCredentials {
            client_id: "rs".into(),
            client_secret: "very-secret".into(),
        };
        assert!(!format!("{c:?}").contains("very-secret"));
    }

    #[test]
    fn urls_in_logs_lose_credentials_and_queries() {
        assert_eq!(
            redact_url("https://user:pw@as.example/jwks?x=1"),
            "https://as.example/jwks"
        );
    }
}
