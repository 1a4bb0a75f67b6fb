//! Runtime configuration, read once from the environment at cold start.
//!
//! The same variable names apply on Lambda and in the local stack; README.md has the table.

use std::time::Duration;

/// Everything the shared pipeline needs to know about its deployment.
#[derive(Debug, Clone)]
pub struct Config {
    /// DynamoDB table holding agents, keys and budget state (`TOLLGATE_TABLE`).
    pub table: String,
    /// Canonical resource URI of this MCP server (`TOLLGATE_RESOURCE_URL`).
    pub resource_url: Option<String>,
    /// Origins allowed to call from a browser (`TOLLGATE_ALLOWED_ORIGINS`, comma separated).
    /// Requests without an `Origin` header (agents, CLIs) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Largest accepted request body in bytes (`TOLLGATE_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// How long a verified bearer key stays cached per instance (`TOLLGATE_KEY_CACHE_TTL_SECS`).
    /// Revocation takes effect within this bound.
    pub key_cache_ttl: Duration,
    /// Name of the running function, for logs (`AWS_LAMBDA_FUNCTION_NAME`, else `TOLLGATE_SERVICE`).
    pub function_name: String,
    /// Service name in logs and metrics (`TOLLGATE_SERVICE`, default `tollgate`).
    pub service: String,
    /// Time kept back from the Lambda deadline for writing the response and audit record.
    pub deadline_margin: Duration,
    /// Secrets Manager id of the argument-hashing key (`TOLLGATE_HASH_KEY_SECRET`).
    pub hash_key_secret: Option<String>,
    /// How long the hashing key is cached before a background refresh
    /// (`TOLLGATE_HASH_KEY_TTL_SECS`).
    pub hash_key_ttl: Duration,
    /// OAuth authorization server issuer, advertised in the protected-resource metadata
    /// (`TOLLGATE_OAUTH_ISSUER`).
    pub oauth_issuer: Option<String>,
    /// Default agent budget per minute (`TOLLGATE_AGENT_PER_MINUTE`).
    pub agent_per_minute: u32,
    /// Default agent budget per day (`TOLLGATE_AGENT_PER_DAY`).
    pub agent_per_day: u32,
    /// Longest a budget decision may wait on the store before the tool's failure policy
    /// applies (`TOLLGATE_BUDGET_TIMEOUT_MS`).
    pub budget_timeout: Duration,
    /// How long a tool's budget override is cached per instance (`TOLLGATE_POLICY_CACHE_TTL_SECS`).
    pub policy_cache_ttl: Duration,
    /// Quota leases (`TOLLGATE_LEASES`, `TOLLGATE_LEASE_WINDOW_MS`,
    /// `TOLLGATE_LEASE_MAX_FRACTION`).
    pub leases: LeaseConfig,
    /// How long idempotency records (and stored outcomes) are kept
    /// (`TOLLGATE_IDEMPOTENCY_TTL_SECS`).
    pub idempotency_ttl: Duration,
    /// Largest stored outcome of a keyed call; larger results are not replayable
    /// (`TOLLGATE_IDEMPOTENCY_MAX_OUTCOME_BYTES`).
    pub idempotency_max_outcome_bytes: usize,
    /// Which credentials are accepted, and how OAuth tokens are verified.
    pub auth: AuthConfig,
    /// Third-party providers tools act on for users, and the vault's key.
    pub connect: ConnectConfig,
    /// Task-augmented calls: TTLs, run limits, polling and progress rates (`TOLLGATE_TASK_*`).
    pub tasks: TaskConfig,
}

/// Accepted authentication methods (`TOLLGATE_AUTH_METHODS`, comma separated: `api_key`,
/// `oauth`, `mtls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthMethods {
    /// Per-agent bearer keys (`tg_…`).
    pub api_key: bool,
    /// OAuth 2.1 access tokens (JWT, or opaque through introspection).
    pub oauth: bool,
    /// Client certificates from API Gateway mutual TLS.
    pub mtls: bool,
}

/// Authentication settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Accepted methods.
    pub methods: AuthMethods,
    /// With mTLS, also require a bearer credential of the same agent
    /// (`TOLLGATE_MTLS_REQUIRE_TOKEN`).
    pub mtls_require_token: bool,
    /// Look up bearer keys issued before the checksum (`TOLLGATE_ACCEPT_LEGACY_KEYS`, default
    /// true); off, every key without a valid checksum is refused offline.
    pub accept_legacy_keys: bool,
    /// OAuth resource-server settings, when `oauth` is accepted.
    pub oauth: Option<OAuthConfig>,
}

/// How OAuth access tokens are verified (the server is an OAuth 2.1 resource server).
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// Expected `iss` (`TOLLGATE_OAUTH_ISSUER`).
    pub issuer: String,
    /// JWKS URL (`TOLLGATE_OAUTH_JWKS_URL`); discovered from the issuer's metadata when unset.
    pub jwks_url: Option<String>,
    /// Audiences accepted (`TOLLGATE_OAUTH_AUDIENCE`, comma separated; default
    /// `TOLLGATE_RESOURCE_URL`). A direct tool route also accepts its own URL.
    pub audiences: Vec<String>,
    /// Claims tried in order for the agent identity (`TOLLGATE_OAUTH_AGENT_CLAIM`, comma
    /// separated; default `client_id,azp,sub`).
    pub agent_claims: Vec<String>,
    /// Clock leeway for `exp`, `nbf` and `iat` (`TOLLGATE_OAUTH_LEEWAY_SECS`, default 30).
    pub leeway: Duration,
    /// How long a fetched JWKS is used before a refresh (`TOLLGATE_OAUTH_JWKS_TTL_SECS`).
    pub jwks_ttl: Duration,
    /// Least time between two JWKS fetches prompted by unknown `kid`s
    /// (`TOLLGATE_OAUTH_JWKS_MIN_REFRESH_SECS`).
    pub jwks_min_refresh: Duration,
    /// RFC 7662 introspection endpoint for opaque tokens (`TOLLGATE_OAUTH_INTROSPECTION_URL`).
    pub introspection_url: Option<String>,
    /// Secrets Manager id of the introspection client credentials, a JSON object with
    /// `client_id` and `client_secret` (`TOLLGATE_OAUTH_INTROSPECTION_SECRET`).
    pub introspection_secret: Option<String>,
    /// Longest an introspection answer is reused (never past the token's `exp`)
    /// (`TOLLGATE_OAUTH_INTROSPECTION_CACHE_SECS`).
    pub introspection_cache_ttl: Duration,
}

/// A configuration variable held a value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The variable is set but does not parse.
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid {
        /// Variable name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A variable the component needs is not set.
    #[error("environment variable {0} must be set")]
    Missing(&'static str),
}

/// Largest bearer-key cache lifetime accepted; longer would delay revocation too much.
pub const MAX_KEY_CACHE_TTL: Duration = Duration::from_secs(30);

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let service = lookup("TOLLGATE_SERVICE").unwrap_or_else(|| "tollgate".to_owned());
        let key_cache_secs: u64 = parse_or(&lookup, "TOLLGATE_KEY_CACHE_TTL_SECS", 30)?;
        if Duration::from_secs(key_cache_secs) > MAX_KEY_CACHE_TTL {
            return Err(ConfigError::Invalid {
                name: "TOLLGATE_KEY_CACHE_TTL_SECS",
                reason: format!("must be at most {} seconds", MAX_KEY_CACHE_TTL.as_secs()),
            });
        }
        let resource_url = lookup("TOLLGATE_RESOURCE_URL").filter(|s| !s.is_empty());
        if let Some(url) = &resource_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ConfigError::Invalid {
                name: "TOLLGATE_RESOURCE_URL",
                reason: "must be an absolute http(s) URL".to_owned(),
            });
        }
        let auth = auth_config(&lookup, resource_url.as_deref())?;
        let connect = connect_config(&lookup)?;
        let tasks = TaskConfig::from_lookup(&lookup)?;
        Ok(Self {
            auth,
            connect,
            tasks,
            table: lookup("TOLLGATE_TABLE").unwrap_or_else(|| "tollgate".to_owned()),
            allowed_origins: lookup("TOLLGATE_ALLOWED_ORIGINS")
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().trim_end_matches('/').to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            resource_url,
            max_body_bytes: parse_or(&lookup, "TOLLGATE_MAX_BODY_BYTES", 256 * 1024)?,
            key_cache_ttl: Duration::from_secs(key_cache_secs),
            function_name: lookup("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| service.clone()),
            service,
            deadline_margin: Duration::from_millis(parse_or(
                &lookup,
                "TOLLGATE_DEADLINE_MARGIN_MS",
                250,
            )?),
            hash_key_secret: lookup("TOLLGATE_HASH_KEY_SECRET").filter(|s| !s.is_empty()),
            hash_key_ttl: Duration::from_secs(parse_or(
                &lookup,
                "TOLLGATE_HASH_KEY_TTL_SECS",
                300,
            )?),
            oauth_issuer: lookup("TOLLGATE_OAUTH_ISSUER").filter(|s| !s.is_empty()),
            agent_per_minute: positive(
                parse_or(&lookup, "TOLLGATE_AGENT_PER_MINUTE", 60)?,
                "TOLLGATE_AGENT_PER_MINUTE",
            )?,
            agent_per_day: positive(
                parse_or(&lookup, "TOLLGATE_AGENT_PER_DAY", 10_000)?,
                "TOLLGATE_AGENT_PER_DAY",
            )?,
            budget_timeout: Duration::from_millis(parse_or(
                &lookup,
                "TOLLGATE_BUDGET_TIMEOUT_MS",
                800,
            )?),
            policy_cache_ttl: Duration::from_secs(parse_or(
                &lookup,
                "TOLLGATE_POLICY_CACHE_TTL_SECS",
                60,
            )?),
            leases: lease_config(&lookup)?,
            idempotency_ttl: Duration::from_secs(u64::from(positive(
                parse_or(&lookup, "TOLLGATE_IDEMPOTENCY_TTL_SECS", 86_400)?,
                "TOLLGATE_IDEMPOTENCY_TTL_SECS",
            )?)),
            idempotency_max_outcome_bytes: parse_or(
                &lookup,
                "TOLLGATE_IDEMPOTENCY_MAX_OUTCOME_BYTES",
                32 * 1024,
            )?,
        })
    }
}

fn auth_config(
    lookup: &impl Fn(&str) -> Option<String>,
    resource_url: Option<&str>,
) -> Result<AuthConfig, ConfigError> {
    let issuer = lookup("TOLLGATE_OAUTH_ISSUER").filter(|s| !s.is_empty());
    let list = |name: &str| -> Option<Vec<String>> {
        lookup(name).filter(|v| !v.trim().is_empty()).map(|v| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
    };
    let methods = match list("TOLLGATE_AUTH_METHODS") {
        None => AuthMethods {
            api_key: true,
            oauth: issuer.is_some(),
            mtls: false,
        },
        Some(names) => {
            let mut m = AuthMethods {
                api_key: false,
                oauth: false,
                mtls: false,
            };
            for name in &names {
                match name.as_str() {
                    "api_key" => m.api_key = true,
                    "oauth" => m.oauth = true,
                    "mtls" => m.mtls = true,
                    other => {
                        return Err(ConfigError::Invalid {
                            name: "TOLLGATE_AUTH_METHODS",
                            reason: format!(
                                "unknown method {other:?}: use api_key, oauth and/or mtls"
                            ),
                        });
                    }
                }
            }
            m
        }
    };
    if !(methods.api_key || methods.oauth || methods.mtls) {
        return Err(ConfigError::Invalid {
            name: "TOLLGATE_AUTH_METHODS",
            reason: "name at least one of api_key, oauth, mtls".to_owned(),
        });
    }
    let mtls_require_token = parse_or(lookup, "TOLLGATE_MTLS_REQUIRE_TOKEN", false)?;
    if mtls_require_token && !methods.mtls {
        return Err(ConfigError::Invalid {
            name: "TOLLGATE_MTLS_REQUIRE_TOKEN",
            reason: "needs mtls in TOLLGATE_AUTH_METHODS".to_owned(),
        });
    }
    if mtls_require_token && !(methods.api_key || methods.oauth) {
        return Err(ConfigError::Invalid {
            name: "TOLLGATE_MTLS_REQUIRE_TOKEN",
            reason: "needs api_key or oauth in TOLLGATE_AUTH_METHODS".to_owned(),
        });
    }
    let oauth = if methods.oauth {
        let issuer = issuer.ok_or(ConfigError::Missing("TOLLGATE_OAUTH_ISSUER"))?;
        let audiences = list("TOLLGATE_OAUTH_AUDIENCE")
            .or_else(|| resource_url.map(|u| vec![u.to_owned()]))
            .ok_or(ConfigError::Missing("TOLLGATE_OAUTH_AUDIENCE"))?;
        let introspection_url =
            lookup("TOLLGATE_OAUTH_INTROSPECTION_URL").filter(|s| !s.is_empty());
        let introspection_secret =
            lookup("TOLLGATE_OAUTH_INTROSPECTION_SECRET").filter(|s| !s.is_empty());
        if introspection_url.is_some() && introspection_secret.is_none() {
            return Err(ConfigError::Missing("TOLLGATE_OAUTH_INTROSPECTION_SECRET"));
        }
        for (name, url) in [
            ("TOLLGATE_OAUTH_ISSUER", Some(&issuer)),
            (
                "TOLLGATE_OAUTH_JWKS_URL",
                lookup("TOLLGATE_OAUTH_JWKS_URL").as_ref(),
            ),
            (
                "TOLLGATE_OAUTH_INTROSPECTION_URL",
                introspection_url.as_ref(),
            ),
        ] {
            if let Some(url) = url.filter(|u| !u.is_empty())
                && !(url.starts_with("https://") || url.starts_with("http://"))
            {
                return Err(ConfigError::Invalid {
                    name,
                    reason: "must be an absolute http(s) URL".to_owned(),
                });
            }
        }
        Some(OAuthConfig {
            jwks_url: lookup("TOLLGATE_OAUTH_JWKS_URL").filter(|s| !s.is_empty()),
            issuer,
            audiences,
            agent_claims: list("TOLLGATE_OAUTH_AGENT_CLAIM")
                .unwrap_or_else(|| ["client_id", "azp", "sub"].map(str::to_owned).to_vec()),
            leeway: Duration::from_secs(parse_or(lookup, "TOLLGATE_OAUTH_LEEWAY_SECS", 30)?),
            jwks_ttl: Duration::from_secs(parse_or(lookup, "TOLLGATE_OAUTH_JWKS_TTL_SECS", 600)?),
            jwks_min_refresh: Duration::from_secs(parse_or(
                lookup,
                "TOLLGATE_OAUTH_JWKS_MIN_REFRESH_SECS",
                30,
            )?),
            introspection_url,
            introspection_secret,
            introspection_cache_ttl: Duration::from_secs(parse_or(
                lookup,
                "TOLLGATE_OAUTH_INTROSPECTION_CACHE_SECS",
                60,
            )?),
        })
    } else {
        None
    };
    Ok(AuthConfig {
        methods,
        mtls_require_token,
        accept_legacy_keys: parse_or(lookup, "TOLLGATE_ACCEPT_LEGACY_KEYS", true)?,
        oauth,
    })
}

fn connect_config(lookup: &impl Fn(&str) -> Option<String>) -> Result<ConnectConfig, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        name: "TOLLGATE_PROVIDERS",
        reason,
    };
    let mut providers = Vec::new();
    for name in lookup("TOLLGATE_PROVIDERS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(invalid(format!(
                "provider {name:?}: use lowercase letters, digits and '_'"
            )));
        }
        let prefix = format!("TOLLGATE_PROVIDER_{}_", name.to_uppercase());
        let var = |suffix: &str, required: bool| -> Result<String, ConfigError> {
            match lookup(&format!("{prefix}{suffix}")).filter(|v| !v.trim().is_empty()) {
                Some(v) => Ok(v.trim().to_owned()),
                None if required => Err(invalid(format!("{prefix}{suffix} must be set"))),
                None => Ok(String::new()),
            }
        };
        let provider = ProviderConfig {
            name: name.to_owned(),
            authorize_url: var("AUTHORIZE_URL", true)?,
            token_url: var("TOKEN_URL", true)?,
            client_id: var("CLIENT_ID", true)?,
            client_secret: var("CLIENT_SECRET", true)?,
            scopes: var("SCOPES", false)?,
            issuer: Some(var("ISSUER", false)?).filter(|v| !v.is_empty()),
        };
        for url in [&provider.authorize_url, &provider.token_url] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid(format!(
                    "{prefix}*_URL must be absolute http(s) URLs"
                )));
            }
        }
        providers.push(provider);
    }
    let kms_key = lookup("TOLLGATE_VAULT_KMS_KEY").filter(|v| !v.is_empty());
    if !providers.is_empty() && kms_key.is_none() {
        return Err(ConfigError::Missing("TOLLGATE_VAULT_KMS_KEY"));
    }
    Ok(ConnectConfig {
        providers,
        kms_key,
        callback_url: lookup("TOLLGATE_CONNECT_CALLBACK_URL").filter(|v| !v.is_empty()),
        login_client_id: lookup("TOLLGATE_CONNECT_LOGIN_CLIENT_ID").filter(|v| !v.is_empty()),
    })
}

fn lease_config(lookup: &impl Fn(&str) -> Option<String>) -> Result<LeaseConfig, ConfigError> {
    use LeaseConfig;
    let enabled = match lookup("TOLLGATE_LEASES").as_deref().map(str::trim) {
        None | Some("" | "on") => true,
        Some("off") => false,
        Some(_) => {
            return Err(ConfigError::Invalid {
                name: "TOLLGATE_LEASES",
                reason: "must be `on` or `off`".to_owned(),
            });
        }
    };
    let window_ms = parse_or(lookup, "TOLLGATE_LEASE_WINDOW_MS", 2_000u64)?;
    if !(100..=60_000).contains(&window_ms) {
        return Err(ConfigError::Invalid {
            name: "TOLLGATE_LEASE_WINDOW_MS",
            reason: "must be between 100 and 60000".to_owned(),
        });
    }
    let max_fraction = parse_or(
        lookup,
        "TOLLGATE_LEASE_MAX_FRACTION",
        LeaseConfig::DEFAULT.max_fraction,
    )?;
    if !(max_fraction > 0.0 && max_fraction <= 0.5) {
        return Err(ConfigError::Invalid {
            name: "TOLLGATE_LEASE_MAX_FRACTION",
            reason: "must be above 0 and at most 0.5".to_owned(),
        });
    }
    Ok(LeaseConfig {
        enabled,
        window: Duration::from_millis(window_ms),
        max_fraction,
    })
}

fn positive(v: u32, name: &'static str) -> Result<u32, ConfigError> {
    if v == 0 {
        return Err(ConfigError::Invalid {
            name,
            reason: "must be at least 1".to_owned(),
        });
    }
    Ok(v)
}

pub(crate) fn parse_or<T: std::str::FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match lookup(name) {
        None => Ok(default),
        Some(v) if v.trim().is_empty() => Ok(default),
        Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
            name,
            reason: e.to_string(),
        }),
    }
}

/// Lease settings (`TOLLGATE_LEASES`, `TOLLGATE_LEASE_WINDOW_MS`, `TOLLGATE_LEASE_MAX_FRACTION`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseConfig {
    /// Leases on (`true`) or every call decided by the store (exact mode).
    pub enabled: bool,
    /// How long a lease may be used before its rest is given back.
    pub window: Duration,
    /// Largest lease as a fraction of the smallest burst among its buckets.
    pub max_fraction: f64,
}

impl LeaseConfig {
    /// Every call decided by the store.
    pub const EXACT: Self = Self {
        enabled: false,
        window: Duration::from_millis(2_000),
        max_fraction: 0.1,
    };
    /// The deployment default: leases over a 2 s window, at most a tenth of a burst.
    pub const DEFAULT: Self = Self {
        enabled: true,
        ..Self::EXACT
    };
}

/// A third-party provider, from `TOLLGATE_PROVIDER_<NAME>_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// Provider name as tools declare it (lowercase).
    pub name: String,
    /// Authorization endpoint.
    pub authorize_url: String,
    /// Token endpoint.
    pub token_url: String,
    /// OAuth client id.
    pub client_id: String,
    /// Secrets Manager id of the client secret (the secret string is the client secret).
    pub client_secret: String,
    /// Scopes requested, space separated.
    pub scopes: String,
    /// The provider's issuer identifier (`_ISSUER`): an RFC 9207 `iss` on the callback must
    /// equal it.
    pub issuer: Option<String>,
}

/// Connection settings (`TOLLGATE_PROVIDERS`, `TOLLGATE_VAULT_KMS_KEY`,
/// `TOLLGATE_CONNECT_CALLBACK_URL`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectConfig {
    /// Configured providers.
    pub providers: Vec<ProviderConfig>,
    /// KMS key that encrypts the tokens.
    pub kms_key: Option<String>,
    /// Public URL of the callback route.
    pub callback_url: Option<String>,
    /// OAuth client id (public client, PKCE) with which OAuth users sign in at tollgate's own
    /// authorization server on the connect page (`TOLLGATE_CONNECT_LOGIN_CLIENT_ID`).
    pub login_client_id: Option<String>,
}

/// Task settings (`TOLLGATE_TASK_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskConfig {
    /// TTL when the request names none (`TOLLGATE_TASK_DEFAULT_TTL_SECS`, 3600).
    pub default_ttl: Duration,
    /// Longest TTL granted (`TOLLGATE_TASK_MAX_TTL_SECS`, 86400); longer requests are cut.
    pub max_ttl: Duration,
    /// Longest run of any tool (`TOLLGATE_TASK_MAX_RUN_SECS`, 900: Lambda's limit).
    pub max_run: Duration,
    /// Time after a run's limit before a task whose worker vanished is failed
    /// (`TOLLGATE_TASK_GRACE_MS`, 30000: covers the asynchronous invocation's queueing).
    pub grace: Duration,
    /// `pollInterval` suggested to clients (`TOLLGATE_TASK_POLL_INTERVAL_MS`, 2000).
    pub poll_interval: Duration,
    /// Least time between two progress writes of one run (`TOLLGATE_TASK_PROGRESS_INTERVAL_MS`,
    /// 1000); reports in between are dropped, except the last status change.
    pub progress_interval: Duration,
    /// How often a run reads its record to see a cancellation
    /// (`TOLLGATE_TASK_CANCEL_CHECK_MS`, 1000).
    pub cancel_check: Duration,
    /// Largest stored result (`TOLLGATE_TASK_MAX_RESULT_BYTES`, 262144; DynamoDB items stop at
    /// 400 KB); a larger result ends the task `failed`.
    pub max_result_bytes: usize,
    /// Longest `tasks/result` waits for an unfinished task (`TOLLGATE_TASK_RESULT_WAIT_MS`,
    /// 20000: API Gateway answers within 30 s), bounded by the invocation's deadline.
    pub result_wait: Duration,
}

impl TaskConfig {
    /// Reads the settings through `lookup`.
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let secs = |name, default| parse_or(lookup, name, default).map(Duration::from_secs);
        let millis = |name, default| parse_or(lookup, name, default).map(Duration::from_millis);
        let config = Self {
            default_ttl: secs("TOLLGATE_TASK_DEFAULT_TTL_SECS", 3600)?,
            max_ttl: secs("TOLLGATE_TASK_MAX_TTL_SECS", 86_400)?,
            max_run: secs("TOLLGATE_TASK_MAX_RUN_SECS", 900)?,
            grace: millis("TOLLGATE_TASK_GRACE_MS", 30_000)?,
            poll_interval: millis("TOLLGATE_TASK_POLL_INTERVAL_MS", 2000)?,
            progress_interval: millis("TOLLGATE_TASK_PROGRESS_INTERVAL_MS", 1000)?,
            cancel_check: millis("TOLLGATE_TASK_CANCEL_CHECK_MS", 1000)?,
            max_result_bytes: parse_or(lookup, "TOLLGATE_TASK_MAX_RESULT_BYTES", 256 * 1024)?,
            result_wait: millis("TOLLGATE_TASK_RESULT_WAIT_MS", 20_000)?,
        };
        for (name, value) in [
            ("TOLLGATE_TASK_MAX_TTL_SECS", config.max_ttl),
            ("TOLLGATE_TASK_MAX_RUN_SECS", config.max_run),
            ("TOLLGATE_TASK_CANCEL_CHECK_MS", config.cancel_check),
            ("TOLLGATE_TASK_POLL_INTERVAL_MS", config.poll_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Invalid {
                    name,
                    reason: "must be positive".to_owned(),
                });
            }
        }
        Ok(config)
    }

    /// The TTL granted for a requested one (milliseconds): the default when absent, at most
    /// the maximum, at least one second.
    pub fn grant_ttl(&self, requested_ms: Option<u64>) -> u64 {
        let max = millis_of(self.max_ttl);
        requested_ms
            .unwrap_or_else(|| millis_of(self.default_ttl))
            .clamp(1000, max.max(1000))
    }
}

pub(crate) fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn leases_default_on_and_bad_values_name_the_variable() {
        let c = cfg(&[]).expect("config");
        assert_eq!(c.leases, LeaseConfig::DEFAULT);
        let c = cfg(&[
            ("TOLLGATE_LEASES", "off"),
            ("TOLLGATE_LEASE_WINDOW_MS", "500"),
            ("TOLLGATE_LEASE_MAX_FRACTION", "0.25"),
        ])
        .expect("config");
        assert!(!c.leases.enabled);
        assert_eq!(c.leases.window, Duration::from_millis(500));
        assert!((c.leases.max_fraction - 0.25).abs() < f64::EPSILON);
        for (name, value) in [
            ("TOLLGATE_LEASES", "maybe"),
            ("TOLLGATE_LEASE_WINDOW_MS", "50"),
            ("TOLLGATE_LEASE_WINDOW_MS", "soon"),
            ("TOLLGATE_LEASE_MAX_FRACTION", "0"),
            ("TOLLGATE_LEASE_MAX_FRACTION", "0.9"),
            ("TOLLGATE_LEASE_MAX_FRACTION", "NaN"),
        ] {
            match cfg(&[(name, value)]) {
                Err(ConfigError::Invalid { name: got, .. }) => assert_eq!(got, name, "{value}"),
                other => panic!("{name}={value}: {other:?}"),
            }
        }
    }

    #[test]
    fn auth_methods_default_to_keys_plus_oauth_when_an_issuer_is_set() {
        let c = cfg(&[]).expect("config");
        assert_eq!(
            (
                c.auth.methods.api_key,
                c.auth.methods.oauth,
                c.auth.methods.mtls
            ),
            (true, false, false)
        );
        let c = cfg(&[
            ("TOLLGATE_OAUTH_ISSUER", "https://as.example"),
            ("TOLLGATE_RESOURCE_URL", "https://api.example/mcp"),
        ])
        .expect("config");
        assert!(c.auth.methods.oauth);
        let oauth = c.auth.oauth.expect("oauth");
        assert_eq!(oauth.audiences, ["https://api.example/mcp"]);
        assert_eq!(oauth.agent_claims, ["client_id", "azp", "sub"]);
    }

    #[test]
    fn auth_method_errors_name_the_variable() {
        for (pairs, name) in [
            (
                vec![("TOLLGATE_AUTH_METHODS", "api_key,saml")],
                "TOLLGATE_AUTH_METHODS",
            ),
            (
                vec![("TOLLGATE_AUTH_METHODS", " , ")],
                "TOLLGATE_AUTH_METHODS",
            ),
            (
                vec![("TOLLGATE_AUTH_METHODS", "oauth")],
                "TOLLGATE_OAUTH_ISSUER",
            ),
            (
                vec![
                    ("TOLLGATE_AUTH_METHODS", "oauth"),
                    ("TOLLGATE_OAUTH_ISSUER", "https://as.example"),
                ],
                "TOLLGATE_OAUTH_AUDIENCE",
            ),
            (
                vec![("TOLLGATE_MTLS_REQUIRE_TOKEN", "true")],
                "TOLLGATE_MTLS_REQUIRE_TOKEN",
            ),
            (
                vec![
                    ("TOLLGATE_AUTH_METHODS", "oauth"),
                    ("TOLLGATE_OAUTH_ISSUER", "https://as.example"),
                    ("TOLLGATE_OAUTH_AUDIENCE", "https://api.example/mcp"),
                    (
                        "TOLLGATE_OAUTH_INTROSPECTION_URL",
                        "https://as.example/introspect",
                    ),
                ],
                "TOLLGATE_OAUTH_INTROSPECTION_SECRET",
            ),
            (
                vec![
                    ("TOLLGATE_AUTH_METHODS", "oauth"),
                    ("TOLLGATE_OAUTH_ISSUER", "https://as.example"),
                    ("TOLLGATE_OAUTH_AUDIENCE", "https://api.example/mcp"),
                    ("TOLLGATE_OAUTH_JWKS_URL", "file:///etc/keys"),
                ],
                "TOLLGATE_OAUTH_JWKS_URL",
            ),
        ] {
            let err = cfg(&pairs).expect_err("must be refused").to_string();
            assert!(err.contains(name), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn providers_are_read_and_checked() {
        let base = [
            ("TOLLGATE_PROVIDERS", "demo_account"),
            (
                "TOLLGATE_PROVIDER_DEMO_ACCOUNT_AUTHORIZE_URL",
                "https://p.example/authorize",
            ),
            (
                "TOLLGATE_PROVIDER_DEMO_ACCOUNT_TOKEN_URL",
                "https://p.example/token",
            ),
            ("TOLLGATE_PROVIDER_DEMO_ACCOUNT_CLIENT_ID", "tollgate"),
            (
                "TOLLGATE_PROVIDER_DEMO_ACCOUNT_CLIENT_SECRET",
                "tollgate/demo-secret",
            ),
            ("TOLLGATE_VAULT_KMS_KEY", "alias/tollgate-vault"),
        ];
        let c = cfg(&base).expect("config");
        assert_eq!(c.connect.providers.len(), 1);
        assert_eq!(c.connect.providers[0].token_url, "https://p.example/token");
        let err = cfg(&base[..5]).expect_err("no key").to_string();
        assert!(err.contains("TOLLGATE_VAULT_KMS_KEY"), "{err}");
        let err = cfg(&[base[0], base[1], base[5]])
            .expect_err("partial")
            .to_string();
        assert!(
            err.contains("TOLLGATE_PROVIDER_DEMO_ACCOUNT_TOKEN_URL"),
            "{err}"
        );
        let err = cfg(&[("TOLLGATE_PROVIDERS", "Bad-Name")])
            .expect_err("name")
            .to_string();
        assert!(err.contains("TOLLGATE_PROVIDERS"), "{err}");
    }

    #[test]
    fn defaults_apply_when_unset() {
        let c = cfg(&[]).expect("defaults");
        assert_eq!(c.table, "tollgate");
        assert_eq!(c.key_cache_ttl, Duration::from_secs(30));
        assert!(c.allowed_origins.is_empty());
    }

    #[test]
    fn cache_ttl_above_bound_is_refused() {
        let err = cfg(&[("TOLLGATE_KEY_CACHE_TTL_SECS", "300")]).expect_err("bound");
        assert!(err.to_string().contains("TOLLGATE_KEY_CACHE_TTL_SECS"));
    }

    #[test]
    fn bad_number_names_the_variable() {
        let err = cfg(&[("TOLLGATE_MAX_BODY_BYTES", "lots")]).expect_err("parse");
        assert!(err.to_string().contains("TOLLGATE_MAX_BODY_BYTES"));
    }

    #[test]
    fn origins_are_split_and_normalised() {
        let c = cfg(&[(
            "TOLLGATE_ALLOWED_ORIGINS",
            "https://a.example/, http://localhost:5173",
        )])
        .expect("origins");
        assert_eq!(
            c.allowed_origins,
            vec!["https://a.example", "http://localhost:5173"]
        );
    }

    #[test]
    fn resource_url_must_be_absolute() {
        assert!(cfg(&[("TOLLGATE_RESOURCE_URL", "mcp.example.com")]).is_err());
    }
}
