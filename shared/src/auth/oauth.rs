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
//!   With no JWKS ever fetched, or when the last fetch failed and the token names a key the
//!   cached keys lack (the issuer may have rotated during its outage), verification fails with
//!   `IssuerUnavailable` (503, retry later) rather than `UnknownSigningKey` (401).
//! - The `typ` header is checked as RFC 9068 asks, with room for issuers that predate it: see
//!   `check_token_type` (ID tokens are refused).
//! - Introspection answers are cached by the token's SHA-256, never past the token's `exp`;
//!   refusals are cached for 30 s and at most 8 introspections run at once per instance, so a
//!   flood of random opaque tokens does not become one POST each. Full caches evict the least
//!   recently used entries.
//!
//! The token itself is never logged, cached in clear, or passed to any other service.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::AuthError;
use super::cache::BoundedCache;
use crate::config::OAuthConfig;

/// Longest access token considered; longer ones are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Longest JWKS or metadata document read.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Longest wait on the issuer (metadata, JWKS, introspection).
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_INTROSPECTION_ENTRIES: usize = 10_000;
/// How long a refused opaque token is answered from the cache without asking the
/// authorization server again.
const NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// Introspection requests in flight at once per instance; more wait (up to the fetch timeout)
/// instead of each becoming a POST to the authorization server.
const MAX_CONCURRENT_INTROSPECTIONS: usize = 8;
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
    /// Whether that last try failed: a `kid` the cached keys do not know may then be a key
    /// the issuer published meanwhile, so the token is not known to be bad (503, not 401).
    last_failed: bool,
    /// The JWKS URL, once configured or discovered.
    url: Option<String>,
}

/// Introspection answers cached per token digest: accepted identities until the token's
/// `exp` (at most the cache TTL), refusals for [`NEGATIVE_TTL`].
type Introspected = Result<TokenIdentity, AuthError>;

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
    client: crate::aws::Lazy<aws_sdk_secretsmanager::Client>,
    secret_id: String,
}

impl SecretsManagerCredentials {
    /// Reads `secret_id` with `client`.
    pub fn new(
        client: impl Into<crate::aws::Lazy<aws_sdk_secretsmanager::Client>>,
        secret_id: String,
    ) -> Self {
        Self {
            client: client.into(),
            secret_id,
        }
    }
}

#[async_trait::async_trait]
impl CredentialSource for SecretsManagerCredentials {
    async fn credentials(&self) -> Result<ClientCredentials, String> {
        use aws_sdk_secretsmanager::error::ProvideErrorMetadata as _;
        let out = self
            .client
            .get()
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
    introspected: BoundedCache<[u8; 32], Introspected>,
    introspections: tokio::sync::Semaphore,
    /// Introspection requests sent (for tests and benchmarks).
    pub introspection_requests: std::sync::atomic::AtomicU64,
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
        super::jws::install();
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
            introspected: BoundedCache::new(MAX_INTROSPECTION_ENTRIES),
            introspections: tokio::sync::Semaphore::new(MAX_CONCURRENT_INTROSPECTIONS),
            introspection_requests: std::sync::atomic::AtomicU64::new(0),
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
        check_token_type(header.typ.as_deref(), &claims)?;
        let now = jsonwebtoken::get_current_timestamp();
        if claims
            .get("iat")
            .and_then(Value::as_u64)
            .is_some_and(|iat| iat > now.saturating_add(self.config.leeway.as_secs()))
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
            None if jwks.fetched.is_none() || jwks.last_failed => Err(AuthError::IssuerUnavailable),
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
                jwks.last_failed = false;
            }
            Err(cause) => {
                jwks.last_failed = true;
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
        if let Some(hit) = self.introspected.get(&digest) {
            return hit;
        }
        // At most MAX_CONCURRENT_INTROSPECTIONS in flight; a caller that waited finds the
        // answer another one cached meanwhile.
        let _permit = tokio::time::timeout(FETCH_TIMEOUT, self.introspections.acquire())
            .await
            .map_err(|_| {
                tracing::warn!("introspection queue full; refusing rather than waiting longer");
                AuthError::IssuerUnavailable
            })?
            .map_err(|_| AuthError::IssuerUnavailable)?;
        if let Some(hit) = self.introspected.get(&digest) {
            return hit;
        }
        let url = self
            .config
            .introspection_url
            .as_deref()
            .ok_or(AuthError::UnknownToken)?;
        let creds = self.introspection_credentials().await?;
        self.introspection_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        let now = jsonwebtoken::get_current_timestamp();
        let answer = check_introspected(
            &claims,
            now,
            self.config.leeway.as_secs(),
            &self.config.issuer,
            audiences,
        )
        .and_then(|()| identity(&claims, &self.config.agent_claims, digest_ref(token)));
        let life = match &answer {
            Ok(_) => {
                let mut life = self.config.introspection_cache_ttl;
                if let Some(exp) = claims.get("exp").and_then(Value::as_u64) {
                    life = life.min(Duration::from_secs(exp.saturating_sub(now)));
                }
                life
            }
            Err(_) => NEGATIVE_TTL,
        };
        self.introspected
            .insert(digest, answer.clone(), Instant::now() + life);
        answer
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

/// The checks on an introspection answer (RFC 7662): active, not expired (with `leeway`
/// seconds; an `exp` near `u64::MAX` is far future, never an overflow), not before `nbf`, from
/// `issuer` when it names one, for one of `audiences`.
fn check_introspected(
    claims: &serde_json::Map<String, Value>,
    now: u64,
    leeway: u64,
    issuer: &str,
    audiences: &[&str],
) -> Result<(), AuthError> {
    if claims.get("active").and_then(Value::as_bool) != Some(true) {
        return Err(AuthError::UnknownToken);
    }
    if claims
        .get("exp")
        .and_then(Value::as_u64)
        .is_some_and(|e| e.saturating_add(leeway) <= now)
    {
        return Err(AuthError::Expired);
    }
    if claims
        .get("nbf")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > now.saturating_add(leeway))
    {
        return Err(AuthError::NotYetValid);
    }
    if let Some(iss) = claims.get("iss")
        && iss.as_str().map(|i| i.trim_end_matches('/')) != Some(issuer.trim_end_matches('/'))
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
    if aud_ok {
        Ok(())
    } else {
        Err(AuthError::WrongAudience)
    }
}

/// RFC 9068 section 2.1 / 4: a JWT access token is typed `at+jwt` (or `application/at+jwt`,
/// case-insensitive). Issuers that predate the profile send `JWT` or no `typ`; those are
/// accepted unless the claims carry what only an OpenID Connect ID token carries (`nonce`,
/// `at_hash`, `c_hash`): an ID token proves a sign-in to a client, it grants nothing here. Any
/// other `typ` (`id_token+jwt`, `logout+jwt`, `dpop+jwt`, ...) is another kind of token.
fn check_token_type(
    typ: Option<&str>,
    claims: &serde_json::Map<String, Value>,
) -> Result<(), AuthError> {
    let typ = typ.map(|t| {
        let t = t.to_ascii_lowercase();
        t.strip_prefix("application/")
            .map(str::to_owned)
            .unwrap_or(t)
    });
    match typ.as_deref() {
        Some("at+jwt") => Ok(()),
        None | Some("jwt")
            if !["nonce", "at_hash", "c_hash"]
                .iter()
                .any(|c| claims.contains_key(*c)) =>
        {
            Ok(())
        }
        _ => Err(AuthError::InvalidToken),
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
    use std::sync::Arc;

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

    /// A token naming a key the cached JWKS lacks is refused as an unknown key (401, get a
    /// new token) only when the last JWKS fetch succeeded; when it failed (issuer down while
    /// it rotates keys), the key may exist: 503, retry later (found by `make chaos`).
    #[tokio::test]
    async fn an_unknown_kid_after_a_failed_refresh_is_unavailable_not_invalid() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "EC", "kid": "k1", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}))
        .expect("jwks");
        let v = introspecting("http://127.0.0.1:9/introspect");
        {
            let mut jwks = v.jwks.write().await;
            jwks.keys = pinned_keys(&set);
            jwks.fetched = Some(Instant::now());
            // Tried just now: within the minimum interval, so no fetch happens here.
            jwks.attempted = Some(Instant::now());
        }
        assert!(v.key_for(Some("k1")).await.is_ok());
        assert_eq!(
            v.key_for(Some("k2")).await.err(),
            Some(AuthError::UnknownSigningKey)
        );
        v.jwks.write().await.last_failed = true;
        assert_eq!(
            v.key_for(Some("k2")).await.err(),
            Some(AuthError::IssuerUnavailable)
        );
        assert!(
            v.key_for(Some("k1")).await.is_ok(),
            "cached keys still serve"
        );
    }

    fn claims(v: serde_json::Value) -> serde_json::Map<String, Value> {
        serde_json::from_value(v).expect("claims")
    }

    /// RFC 9068: `at+jwt` in any spelling passes; `JWT` or no `typ` pass unless the claims are
    /// an ID token's; every other type is refused.
    #[test]
    fn access_tokens_pass_and_id_tokens_are_refused_by_type() {
        let access = claims(serde_json::json!({"sub": "u", "client_id": "c"}));
        let id_token = claims(serde_json::json!({"sub": "u", "nonce": "n", "at_hash": "h"}));
        for typ in ["at+jwt", "AT+JWT", "application/at+jwt"] {
            assert_eq!(check_token_type(Some(typ), &access), Ok(()), "{typ}");
            assert_eq!(check_token_type(Some(typ), &id_token), Ok(()), "{typ}");
        }
        for typ in [None, Some("JWT"), Some("jwt"), Some("application/jwt")] {
            assert_eq!(check_token_type(typ, &access), Ok(()), "{typ:?}");
            assert_eq!(
                check_token_type(typ, &id_token),
                Err(AuthError::InvalidToken),
                "{typ:?}"
            );
        }
        for c in ["nonce", "at_hash", "c_hash"] {
            let mut with = access.clone();
            with.insert(c.to_owned(), Value::from("x"));
            assert_eq!(
                check_token_type(Some("JWT"), &with),
                Err(AuthError::InvalidToken)
            );
        }
        for typ in ["id_token+jwt", "logout+jwt", "dpop+jwt", "secevent+jwt", ""] {
            assert_eq!(
                check_token_type(Some(typ), &access),
                Err(AuthError::InvalidToken),
                "{typ}"
            );
        }
    }

    proptest::proptest! {
        /// Any `exp` / `nbf`, up to `u64::MAX`, is checked without overflow.
        #[test]
        fn introspected_times_never_overflow(exp in proptest::prelude::any::<u64>(),
                                             nbf in proptest::prelude::any::<u64>(),
                                             now in proptest::prelude::any::<u64>(),
                                             leeway in 0u64..=u64::MAX) {
            let c = claims(serde_json::json!({
                "active": true, "exp": exp, "nbf": nbf, "aud": "a"
            }));
            let r = check_introspected(&c, now, leeway, "https://as", &["a"]);
            let expired = u128::from(exp) + u128::from(leeway) <= u128::from(now);
            let early = u128::from(nbf) > u128::from(now) + u128::from(leeway);
            let want = if expired {
                Err(AuthError::Expired)
            } else if early {
                Err(AuthError::NotYetValid)
            } else {
                Ok(())
            };
            proptest::prop_assert_eq!(r, want);
        }
    }

    #[test]
    fn a_huge_exp_is_far_future_not_a_panic() {
        let c = claims(serde_json::json!({"active": true, "exp": u64::MAX, "aud": "a"}));
        assert_eq!(
            check_introspected(&c, 1_800_000_000, 30, "https://as", &["a"]),
            Ok(())
        );
    }

    #[derive(Debug)]
    struct Fixed;

    #[async_trait::async_trait]
    impl CredentialSource for Fixed {
        async fn credentials(&self) -> Result<ClientCredentials, String> {
            Ok(ClientCredentials {
                client_id: "rs".into(),
                client_secret: "s".into(),
            })
        }
    }

    /// A local introspection endpoint answering `{"active": false}` to everything; counts the
    /// requests and the most it had in flight at once (each is held 50 ms).
    async fn inactive_endpoint() -> (
        String,
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/introspect", listener.local_addr().expect("addr"));
        let (count, now, peak) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (c, p) = (count.clone(), peak.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (c, n, p) = (c.clone(), now.clone(), p.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut got = Vec::new();
                    // Headers, then a form body of Content-Length bytes.
                    loop {
                        let Ok(k) = sock.read(&mut buf).await else {
                            return;
                        };
                        if k == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..k]);
                        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len = text
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if got.len() >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                    let inflight = n.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(inflight, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                    let body = "{\"active\":false}";
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        (url, count, peak)
    }

    fn introspecting(url: &str) -> OAuthVerifier {
        let config = crate::Config::from_lookup(|k| match k {
            "TOLLGATE_AUTH_METHODS" => Some("oauth".to_owned()),
            "TOLLGATE_OAUTH_ISSUER" => Some("http://127.0.0.1:9".to_owned()),
            "TOLLGATE_OAUTH_AUDIENCE" => Some("https://api.example/mcp".to_owned()),
            "TOLLGATE_OAUTH_INTROSPECTION_URL" => Some(url.to_owned()),
            "TOLLGATE_OAUTH_INTROSPECTION_SECRET" => Some("unused".to_owned()),
            _ => None,
        })
        .expect("config");
        OAuthVerifier::new(
            config.auth.oauth.expect("oauth"),
            crate::tls::Trust::default()
                .reqwest()
                .build()
                .expect("client"),
            Some(Box::new(Fixed)),
        )
    }

    /// A refused opaque token is answered from the cache (one POST however often it comes
    /// back), and a flood of distinct tokens never has more than the bound in flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn introspection_refusals_are_cached_and_concurrency_is_bounded() {
        use std::sync::atomic::Ordering;
        let (url, count, peak) = inactive_endpoint().await;
        let v = Arc::new(introspecting(&url));
        for _ in 0..5 {
            assert_eq!(
                v.verify("opaque-token-1", None).await,
                Err(AuthError::UnknownToken)
            );
        }
        assert_eq!(count.load(Ordering::SeqCst), 1, "the refusal was cached");
        let flood = (0..40).map(|i| {
            let v = v.clone();
            tokio::spawn(async move { v.verify(&format!("random-{i}"), None).await })
        });
        for r in futures::future::join_all(flood).await {
            let r = r.expect("task");
            // Refused as unknown, or (a caller that waited past the fetch timeout) unavailable.
            assert!(
                matches!(
                    r,
                    Err(AuthError::UnknownToken | AuthError::IssuerUnavailable)
                ),
                "{r:?}"
            );
        }
        assert!(
            peak.load(Ordering::SeqCst) <= MAX_CONCURRENT_INTROSPECTIONS,
            "{} in flight at once",
            peak.load(Ordering::SeqCst)
        );
        assert_eq!(
            v.introspection_requests.load(Ordering::Relaxed),
            count.load(Ordering::SeqCst) as u64
        );
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
