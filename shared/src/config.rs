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
        Ok(Self {
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
        })
    }
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

fn parse_or<T: std::str::FromStr>(
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
