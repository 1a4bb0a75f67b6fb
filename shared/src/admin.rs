//! Operations of the admin CLI (`tollgate` binary): agents, keys and scopes. The binary parses
//! arguments and prints; everything that touches the store is here, against [`Store`], so it
//! is tested against the in-memory store and, end to end, against a real DynamoDB server.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::auth::keys;
use crate::store::{
    AgentRecord, AgentStatus, KeyRecord, KeyStatus, Store, StoreError, now_ms, validate_agent_id,
    validate_scope,
};

/// An admin operation failed; the message is meant for the operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The input is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The agent or key does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The agent or key exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The store failed.
    #[error("store error: {0}")]
    Store(String),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::AlreadyExists(what) => Self::AlreadyExists(what),
            other => Self::Store(other.to_string()),
        }
    }
}

fn checked_scopes(scopes: &[String]) -> Result<BTreeSet<String>, AdminError> {
    scopes
        .iter()
        .map(|s| {
            validate_scope(s)
                .map(|()| s.clone())
                .map_err(AdminError::Invalid)
        })
        .collect()
}

/// Creates an agent.
pub async fn create_agent(
    store: &dyn Store,
    agent_id: &str,
    description: &str,
    scopes: &[String],
) -> Result<AgentRecord, AdminError> {
    validate_agent_id(agent_id).map_err(AdminError::Invalid)?;
    if agent_id.starts_with("oauth-") {
        return Err(AdminError::Invalid(format!(
            "agent id {agent_id:?} is reserved: ids starting with oauth- are derived from OAuth \
             clients; to give an OAuth client a pre-created agent, create it under another id \
             and bind the client with `agents bind-oauth`"
        )));
    }
    let agent = AgentRecord {
        agent_id: agent_id.to_owned(),
        description: description.to_owned(),
        status: AgentStatus::Active,
        scopes: checked_scopes(scopes)?,
        budget: crate::store::AgentBudget::default(),
        created_at_ms: now_ms(),
    };
    store.create_agent(&agent).await?;
    Ok(agent)
}

async fn existing_agent(store: &dyn Store, agent_id: &str) -> Result<AgentRecord, AdminError> {
    validate_agent_id(agent_id).map_err(AdminError::Invalid)?;
    store
        .get_agent(agent_id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("agent {agent_id}")))
}

/// Reads an agent and its keys.
pub async fn show_agent(
    store: &dyn Store,
    agent_id: &str,
) -> Result<(AgentRecord, Vec<KeyRecord>), AdminError> {
    let agent = existing_agent(store, agent_id).await?;
    let keys = store.list_keys(agent_id).await?;
    Ok((agent, keys))
}

/// Sets an agent's status; disabling refuses every key of the agent (permanently, until enabled).
pub async fn set_agent_status(
    store: &dyn Store,
    agent_id: &str,
    status: AgentStatus,
) -> Result<AgentRecord, AdminError> {
    let mut agent = existing_agent(store, agent_id).await?;
    agent.status = status;
    store.update_agent(&agent).await?;
    Ok(agent)
}

/// How to change an agent's scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeChange {
    /// Add to the current scopes.
    Add,
    /// Remove from the current scopes.
    Remove,
    /// Replace the current scopes.
    Set,
}

/// Changes an agent's scopes (and its keys' copies).
pub async fn change_scopes(
    store: &dyn Store,
    agent_id: &str,
    change: ScopeChange,
    scopes: &[String],
) -> Result<AgentRecord, AdminError> {
    let given = checked_scopes(scopes)?;
    let mut agent = existing_agent(store, agent_id).await?;
    match change {
        ScopeChange::Add => agent.scopes.extend(given),
        ScopeChange::Remove => agent.scopes.retain(|s| !given.contains(s)),
        ScopeChange::Set => agent.scopes = given,
    }
    store.update_agent(&agent).await?;
    Ok(agent)
}

/// A created key: the token is shown once, never stored.
#[derive(Debug)]
pub struct CreatedKey {
    /// The stored record.
    pub record: KeyRecord,
    /// The bearer token.
    pub token: String,
}

/// Creates a key for an agent, optionally expiring after `ttl`. The key copies the agent's
/// status, scopes and budget; the store writes it only if the agent still has them, so an
/// `agents disable` racing this call either lands first (the key is created disabled) or
/// rewrites the new key with the rest. A changed agent is read again, a few times.
pub async fn create_key(
    store: &dyn Store,
    agent_id: &str,
    ttl: Option<Duration>,
) -> Result<CreatedKey, AdminError> {
    const ATTEMPTS: usize = 3;
    for _ in 0..ATTEMPTS {
        let agent = existing_agent(store, agent_id).await?;
        let issued = keys::issue();
        let now = now_ms();
        let record = KeyRecord {
            key_id: issued.key_id,
            agent_id: agent.agent_id,
            digest_hex: issued.digest_hex,
            status: KeyStatus::Active,
            created_at_ms: now,
            expires_at_ms: ttl
                .map(|t| now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))),
            agent_status: agent.status,
            scopes: agent.scopes,
            budget: agent.budget,
        };
        match store.create_key(&record).await {
            Ok(()) => {
                return Ok(CreatedKey {
                    record,
                    token: issued.token,
                });
            }
            // The agent was removed or changed since it was read: read it again.
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(AdminError::Store(format!(
        "agent {agent_id} kept changing while the key was created; nothing was created, retry"
    )))
}

/// Revokes a key by its id (the part after `tg_` in the token, or as listed).
pub async fn revoke_key(store: &dyn Store, key_id: &str) -> Result<KeyRecord, AdminError> {
    if key_id.is_empty() || !key_id.bytes().all(|b| b.is_ascii_alphanumeric()) || key_id.len() > 32
    {
        // Never echo the input: it may be a pasted token.
        return Err(AdminError::Invalid(
            "invalid key id: use the 12-character id shown by `keys list`, never the token"
                .to_owned(),
        ));
    }
    Ok(store.revoke_key(key_id).await?)
}

/// What a certificate binding names: one certificate (by its PEM) or a subject DN.
#[derive(Debug, Clone)]
pub enum CertSelector {
    /// The PEM text of one certificate: bound by its SHA-256 fingerprint.
    Pem(String),
    /// A subject DN exactly as API Gateway reports it (`CN=…,O=…`).
    Subject(String),
}

impl CertSelector {
    /// The binding id (`sha256:<hex>` or `subject:<DN>`).
    pub fn binding_id(&self) -> Result<String, AdminError> {
        match self {
            Self::Pem(pem) => crate::auth::mtls::pem_to_der(pem)
                .map(|der| crate::auth::mtls::fingerprint(&der))
                .ok_or_else(|| {
                    AdminError::Invalid(
                        "no PEM certificate found: pass a file holding \
                         -----BEGIN CERTIFICATE-----"
                            .to_owned(),
                    )
                }),
            Self::Subject(dn) => {
                let dn = dn.trim();
                if dn.is_empty() || dn.len() > 1024 || dn.chars().any(char::is_control) {
                    return Err(AdminError::Invalid(
                        "invalid subject: give the DN as API Gateway reports it, e.g. CN=agent,O=Example"
                            .to_owned(),
                    ));
                }
                Ok(crate::auth::mtls::subject_binding(dn))
            }
        }
    }
}

/// Binds a client certificate to an agent (mTLS).
pub async fn bind_cert(
    store: &dyn Store,
    agent_id: &str,
    cert: &CertSelector,
) -> Result<crate::store::CertBinding, AdminError> {
    let id = cert.binding_id()?;
    let agent = existing_agent(store, agent_id).await?;
    let binding = crate::store::CertBinding {
        id,
        agent_id: agent.agent_id,
        created_at_ms: now_ms(),
    };
    store.bind_cert(&binding).await?;
    Ok(binding)
}

/// Removes a certificate binding; the certificate is refused within the cache TTL.
pub async fn unbind_cert(store: &dyn Store, cert: &CertSelector) -> Result<String, AdminError> {
    let id = cert.binding_id()?;
    store.unbind_cert(&id).await?;
    Ok(id)
}

/// Binds an OAuth client (the value of its identity claim, e.g. `client_id`, in tokens of
/// `issuer`) to a pre-created agent: its tokens then act as that agent, with its budgets and
/// connections. Without a binding an OAuth client gets an agent of its own (`oauth-…`), even
/// when its claim equals an existing agent id.
pub async fn bind_oauth(
    store: &dyn Store,
    agent_id: &str,
    issuer: &str,
    claim: &str,
) -> Result<crate::store::CertBinding, AdminError> {
    let (issuer, claim) = (issuer.trim(), claim.trim());
    if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
        return Err(AdminError::Invalid(
            "--issuer must be the authorization server's issuer URL (TOLLGATE_OAUTH_ISSUER)"
                .to_owned(),
        ));
    }
    if claim.is_empty() || claim.len() > 1024 || claim.chars().any(char::is_control) {
        return Err(AdminError::Invalid(
            "invalid client: give the identity claim's value, e.g. the client_id".to_owned(),
        ));
    }
    let agent = existing_agent(store, agent_id).await?;
    let binding = crate::store::CertBinding {
        id: crate::auth::oauth::binding_id(issuer, claim),
        agent_id: agent.agent_id,
        created_at_ms: now_ms(),
    };
    store.bind_cert(&binding).await?;
    Ok(binding)
}

/// Removes an OAuth client binding: the client's next tokens (after the cache TTL) act as its
/// own derived agent again.
pub async fn unbind_oauth(
    store: &dyn Store,
    issuer: &str,
    claim: &str,
) -> Result<String, AdminError> {
    let id = crate::auth::oauth::binding_id(issuer.trim(), claim.trim());
    store.unbind_cert(&id).await?;
    Ok(id)
}

/// Parses a duration such as `30d`, `12h`, `90m` or `3600s`.
pub fn parse_ttl(text: &str) -> Result<Duration, AdminError> {
    let err = || {
        AdminError::Invalid(format!(
            "duration {text:?} is invalid: use e.g. 30d, 12h, 90m or 3600s"
        ))
    };
    // Split before the last character (not byte): a non-ASCII unit is an error, not a panic.
    let split = text.char_indices().next_back().map_or(0, |(i, _)| i);
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let secs = match unit {
        "d" => n.checked_mul(86_400),
        "h" => n.checked_mul(3_600),
        "m" => n.checked_mul(60),
        "s" => Some(n),
        _ => None,
    }
    .filter(|s| *s > 0)
    .ok_or_else(err)?;
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, ToolPolicy};

    /// More shards than burst tokens would raise the effective burst (each shard holds at
    /// least one token); a 0 limit is refused (the runtime reads one as "deny all").
    #[tokio::test]
    async fn set_tool_refuses_more_shards_than_burst_and_zero_limits() {
        let store = MemoryStore::new();
        let policy = |per_minute, burst, shards| {
            Some(ToolPolicy {
                per_minute,
                burst,
                shards,
                fail_open: None,
            })
        };
        for (bad, what) in [
            (policy(60, 2, 4), "must not exceed --burst"),
            (policy(0, 2, 1), "at least 1"),
            (policy(60, 0, 1), "at least 1"),
        ] {
            match budgets::set_tool(&store, "t", bad).await {
                Err(AdminError::Invalid(m)) => assert!(m.contains(what), "{m}"),
                other => panic!("{bad:?} accepted: {other:?}"),
            }
        }
        assert_eq!(store.get_tool_policy("t").await.expect("read"), None);
        budgets::set_tool(&store, "t", policy(60, 4, 4))
            .await
            .expect("as many shards as burst");
    }

    #[test]
    fn parse_ttl_refuses_what_it_cannot_read_without_panicking() {
        assert_eq!(
            parse_ttl("30d").expect("30d"),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(parse_ttl("90m").expect("90m"), Duration::from_secs(5_400));
        for bad in [
            "5µ",
            "µ",
            "1日",
            "",
            "d",
            "0s",
            "18446744073709551615d",
            "-1h",
            "1 h",
        ] {
            assert!(
                matches!(parse_ttl(bad), Err(AdminError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    proptest::proptest! {
        /// Any text is an answer or a clear error, never a panic.
        #[test]
        fn parse_ttl_never_panics(text in "\\PC{0,8}") {
            let _ = parse_ttl(&text);
        }
    }

    #[tokio::test]
    async fn certificate_bindings() {
        let store = MemoryStore::new();
        create_agent(&store, "bot", "", &[]).await.expect("create");
        let pem = CertSelector::Pem(
            "-----BEGIN CERTIFICATE-----\nAAEC\nAw==\n-----END CERTIFICATE-----\n".into(),
        );
        let b = bind_cert(&store, "bot", &pem).await.expect("bind");
        assert!(b.id.starts_with("sha256:"), "{}", b.id);
        assert!(matches!(
            bind_cert(&store, "bot", &pem).await,
            Err(AdminError::AlreadyExists(_))
        ));
        assert!(matches!(
            bind_cert(&store, "ghost", &CertSelector::Subject("CN=x".into())).await,
            Err(AdminError::NotFound(_))
        ));
        for bad in [
            CertSelector::Pem("not a certificate".into()),
            CertSelector::Subject(" ".into()),
            CertSelector::Subject("CN=a\nCN=b".into()),
        ] {
            assert!(matches!(
                bind_cert(&store, "bot", &bad).await,
                Err(AdminError::Invalid(_))
            ));
        }
        assert_eq!(unbind_cert(&store, &pem).await.expect("unbind"), b.id);
        assert!(matches!(
            unbind_cert(&store, &pem).await,
            Err(AdminError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn lifecycle() {
        let store = MemoryStore::new();
        let scopes = vec!["customers:read".to_owned()];
        create_agent(&store, "bot", "test", &scopes)
            .await
            .expect("create");
        assert!(matches!(
            create_agent(&store, "bot", "", &[]).await,
            Err(AdminError::AlreadyExists(_))
        ));
        let key = create_key(&store, "bot", Some(Duration::from_secs(60)))
            .await
            .expect("key");
        assert!(key.token.starts_with("tg_"));
        assert!(key.record.expires_at_ms.is_some());
        let agent = change_scopes(&store, "bot", ScopeChange::Add, &["tickets:write".into()])
            .await
            .expect("add");
        assert_eq!(agent.scopes.len(), 2);
        let (_, keys) = show_agent(&store, "bot").await.expect("show");
        assert_eq!(keys[0].scopes.len(), 2, "key copies follow the agent");
        let revoked = revoke_key(&store, &key.record.key_id)
            .await
            .expect("revoke");
        assert_eq!(revoked.status, KeyStatus::Revoked);
        let disabled = set_agent_status(&store, "bot", AgentStatus::Disabled)
            .await
            .expect("disable");
        assert_eq!(disabled.status, AgentStatus::Disabled);
    }

    #[tokio::test]
    async fn bad_input_is_refused_with_a_clear_message() {
        let store = MemoryStore::new();
        let e = create_agent(&store, "Bad Id", "", &[])
            .await
            .expect_err("id");
        assert!(e.to_string().contains("agent id"));
        let e = create_agent(&store, "ok", "", &["has space".into()])
            .await
            .expect_err("scope");
        assert!(e.to_string().contains("scope"));
        assert!(matches!(
            create_key(&store, "ghost", None).await,
            Err(AdminError::NotFound(_))
        ));
        assert!(matches!(
            revoke_key(&store, "tg_abc_def").await,
            Err(AdminError::Invalid(_))
        ));
        assert!(matches!(
            revoke_key(&store, "abc").await,
            Err(AdminError::NotFound(_))
        ));
        assert!(
            store.list_agents().await.expect("list").is_empty(),
            "nothing written on bad input"
        );
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(
            parse_ttl("30d").expect("d"),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(parse_ttl("90m").expect("m"), Duration::from_secs(5_400));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
        assert!(parse_ttl("").is_err());
    }
}

/// Budget operations of the admin CLI (`tollgate budgets ...`).
pub mod budgets {
    use super::{AdminError, existing_agent};
    use crate::budget::buckets::BucketStore;
    use crate::budget::gcra::{Rate, status};
    use crate::budget::{AgentDefaults, PolicyName};
    use crate::store::{AgentRecord, Store, ToolPolicy, now_ms};

    fn positive(v: Option<u32>, what: &str) -> Result<Option<u32>, AdminError> {
        match v {
            Some(0) => Err(AdminError::Invalid(format!(
                "{what} must be at least 1 (to stop an agent, use `agents disable`)"
            ))),
            other => Ok(other),
        }
    }

    fn valid_tool(tool: &str) -> Result<(), AdminError> {
        let ok = !tool.is_empty()
            && tool.len() <= 64
            && tool
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(())
        } else {
            Err(AdminError::Invalid(format!(
                "tool name {tool:?} is invalid"
            )))
        }
    }

    /// Sets an agent's per-minute / per-day budgets and per-tool caps (`None` leaves a value
    /// alone; a cap of `Some(None)` removes it).
    pub async fn set_agent(
        store: &dyn Store,
        agent_id: &str,
        per_minute: Option<u32>,
        per_day: Option<u32>,
        tool_cap: Option<(&str, Option<u32>)>,
    ) -> Result<AgentRecord, AdminError> {
        let per_minute = positive(per_minute, "--per-minute")?;
        let per_day = positive(per_day, "--per-day")?;
        if let Some((tool, cap)) = tool_cap {
            valid_tool(tool)?;
            positive(cap, "--tool-per-minute")?;
        }
        let mut agent = existing_agent(store, agent_id).await?;
        if per_minute.is_some() {
            agent.budget.per_minute = per_minute;
        }
        if per_day.is_some() {
            agent.budget.per_day = per_day;
        }
        match tool_cap {
            Some((tool, Some(cap))) => {
                agent.budget.tools.insert(tool.to_owned(), cap);
            }
            Some((tool, None)) => {
                agent.budget.tools.remove(tool);
            }
            None => {}
        }
        store.update_agent(&agent).await?;
        Ok(agent)
    }

    /// Sets or clears a tool's budget override.
    pub async fn set_tool(
        store: &dyn Store,
        tool: &str,
        policy: Option<ToolPolicy>,
    ) -> Result<(), AdminError> {
        valid_tool(tool)?;
        if let Some(p) = policy {
            if p.per_minute == 0 || p.burst == 0 || p.shards == 0 {
                return Err(AdminError::Invalid(
                    "--per-minute, --burst and --shards must be at least 1".into(),
                ));
            }
            if p.shards > 64 {
                return Err(AdminError::Invalid("--shards must be at most 64".into()));
            }
            if p.shards > p.burst {
                return Err(AdminError::Invalid(format!(
                    "--shards ({}) must not exceed --burst ({}): every shard holds at least one \
                     token, so more shards would raise the effective burst",
                    p.shards, p.burst
                )));
            }
        }
        Ok(store.put_tool_policy(tool, policy).await?)
    }

    /// One bucket's state: `(policy, limit, window_s, remaining now, ms until full)`.
    pub type BucketStatus = (PolicyName, u64, u64, u64, u64);

    /// What is left of an agent's budgets right now.
    pub async fn agent_status(
        store: &dyn Store,
        buckets: &dyn BucketStore,
        agent_id: &str,
        defaults: AgentDefaults,
    ) -> Result<Vec<BucketStatus>, AdminError> {
        let agent = existing_agent(store, agent_id).await?;
        let per_minute = u64::from(agent.budget.per_minute.unwrap_or(defaults.per_minute));
        let per_day = u64::from(agent.budget.per_day.unwrap_or(defaults.per_day));
        let item = format!("agent#{agent_id}");
        let mut plan = vec![
            (
                "minute".to_owned(),
                PolicyName::AgentPerMinute,
                per_minute,
                60u64,
            ),
            ("day".to_owned(), PolicyName::AgentPerDay, per_day, 86_400),
        ];
        for (tool, cap) in &agent.budget.tools {
            plan.push((
                format!("{}{tool}", crate::budget::TOOL_CAP_PREFIX),
                PolicyName::AgentTool,
                u64::from(*cap),
                60,
            ));
        }
        let now = now_ms();
        let mut out = Vec::new();
        for (attr, policy, limit, window_s) in plan {
            let Some(rate) = Rate::per_window(limit, window_s * 1000, limit) else {
                continue;
            };
            let (remaining, until_full) = status(buckets.peek(&item, &attr).await?, now, rate);
            out.push((policy, limit, window_s, remaining, until_full));
        }
        Ok(out)
    }

    /// What is left of a tool's budget right now (summed over shards).
    pub async fn tool_status(
        store: &dyn Store,
        buckets: &dyn BucketStore,
        tool: &str,
        default: Option<ToolPolicy>,
    ) -> Result<Option<BucketStatus>, AdminError> {
        valid_tool(tool)?;
        let Some(policy) = store.get_tool_policy(tool).await?.or(default) else {
            return Ok(None);
        };
        let Some(rate) = Rate::per_window(
            u64::from(policy.per_minute),
            60_000,
            u64::from(policy.burst),
        ) else {
            return Ok(None);
        };
        let shards = u64::from(policy.shards.clamp(1, policy.burst.max(1)));
        let shard_rate = rate.sharded(shards);
        let now = now_ms();
        let (mut remaining, mut until_full) = (0, 0);
        for shard in 0..shards {
            let (r, u) = status(
                buckets
                    .peek(&format!("tool#{tool}#{shard}"), crate::budget::TOOL_ATTR)
                    .await?,
                now,
                shard_rate,
            );
            remaining += r;
            until_full = until_full.max(u);
        }
        Ok(Some((
            PolicyName::Tool,
            u64::from(policy.per_minute),
            60,
            remaining,
            until_full,
        )))
    }
}
