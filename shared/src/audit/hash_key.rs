//! The argument-hashing key: fetched from Secrets Manager (`TOLLGATE_HASH_KEY_SECRET`), cached
//! per instance with a TTL, refreshed in the background, and kept when a refresh fails.
//!
//! The secret's value is the key, base64-encoded (at least 32 bytes decoded). Its version id
//! labels each hash (`hmac-sha256:<version>:<hex>`), so rotating the secret rotates the key and
//! records say which key hashed them. With no key (cold instance and Secrets Manager
//! unreachable), calls are still served and hashed fields are logged as summaries only.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::audit::HashKey;

/// Longest wait for the first fetch on a cold instance.
const COLD_FETCH_TIMEOUT: Duration = Duration::from_secs(1);

enum Source {
    None,
    Fixed,
    SecretsManager {
        client: crate::aws::Lazy<aws_sdk_secretsmanager::Client>,
        secret_id: String,
    },
}

/// Where the hashing key comes from, and the cached key.
pub struct HashKeys {
    source: Source,
    ttl: Duration,
    cached: RwLock<Option<(HashKey, Instant)>>,
    refreshing: AtomicBool,
    /// One cold fetch at a time: concurrent first calls (Lambda Managed Instances) wait for it
    /// rather than each asking Secrets Manager.
    cold_fetch: tokio::sync::Mutex<()>,
    /// Fetches that completed, either way.
    fetches: AtomicU64,
    /// Fetches that failed (the condition is logged and counted).
    pub failures: AtomicU64,
}

impl std::fmt::Debug for HashKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashKeys")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl HashKeys {
    fn with(source: Source, key: Option<HashKey>, ttl: Duration) -> Self {
        Self {
            source,
            ttl,
            cached: RwLock::new(key.map(|k| (k, Instant::now()))),
            refreshing: AtomicBool::new(false),
            cold_fetch: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// No key: hashed fields are logged as summaries.
    pub fn none() -> Self {
        Self::with(Source::None, None, Duration::MAX)
    }

    /// A fixed key (tests and fixtures).
    pub fn fixed(key: HashKey) -> Self {
        Self::with(Source::Fixed, Some(key), Duration::MAX)
    }

    /// The key in Secrets Manager secret `secret_id`, cached for `ttl`.
    pub fn secrets_manager(
        client: impl Into<crate::aws::Lazy<aws_sdk_secretsmanager::Client>>,
        secret_id: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        Self::with(
            Source::SecretsManager {
                client: client.into(),
                secret_id: secret_id.into(),
            },
            None,
            ttl,
        )
    }

    /// The cached key, fresh or not.
    pub fn current(&self) -> Option<HashKey> {
        self.cached
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(k, _)| k.clone())
    }

    fn is_fresh(&self) -> bool {
        self.cached
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < self.ttl)
    }

    /// Makes a key available: a cold instance fetches inline (bounded by a short timeout); a
    /// stale key is refreshed in the background while the cached one keeps serving.
    pub async fn ensure(self: &Arc<Self>) {
        if matches!(self.source, Source::None | Source::Fixed) || self.is_fresh() {
            return;
        }
        if self.current().is_none() {
            // Single flight: whoever waited for the lock while a fetch ran takes its outcome
            // (the key, or none this time) instead of fetching again.
            let attempts = self.attempts();
            let _ = tokio::time::timeout(COLD_FETCH_TIMEOUT, async {
                let _one = self.cold_fetch.lock().await;
                if self.current().is_none() && self.attempts() == attempts {
                    self.refresh().await;
                }
            })
            .await;
            return;
        }
        if !self.refreshing.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move {
                this.refresh().await;
                this.refreshing.store(false, Ordering::Release);
            });
        }
    }

    fn attempts(&self) -> u64 {
        self.fetches.load(Ordering::Acquire)
    }

    /// Fetches the key now; on failure keeps what is cached.
    pub async fn refresh(&self) {
        let Source::SecretsManager { client, secret_id } = &self.source else {
            return;
        };
        let fetched = fetch(client.get(), secret_id).await;
        self.fetches.fetch_add(1, Ordering::AcqRel);
        match fetched {
            Ok(key) => {
                *self
                    .cached
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((key, Instant::now()));
            }
            Err(reason) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let cached = self.current().is_some();
                tracing::warn!(
                    reason,
                    cached,
                    "argument-hashing key unavailable; {}",
                    if cached {
                        "keeping the cached key"
                    } else {
                        "hashed fields are logged as summaries"
                    }
                );
            }
        }
    }
}

async fn fetch(
    client: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> Result<HashKey, &'static str> {
    let out = client
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|_| "secrets manager request failed")?;
    let text = out.secret_string().ok_or("secret has no string value")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| "secret is not base64")?;
    let version: String = out.version_id().unwrap_or("v0").chars().take(8).collect();
    HashKey::new(version, bytes).ok_or("secret is shorter than 32 bytes")
}
