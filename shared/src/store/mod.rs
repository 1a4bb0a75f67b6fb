//! Agent and key records, behind the [`Store`] trait.
//!
//! The real implementation is [`DynamoStore`] (DynamoDB, one table); `MemoryStore` (tests, `test-util` feature) exists for
//! unit tests of pure logic. Every behaviour that matters is also tested against a real
//! DynamoDB-protocol server (see `tests/`).
//!
//! Table layout (single table, string keys `pk` / `sk`, one GSI `gsi1` on `gsi1pk` / `gsi1sk`):
//!
//! | item  | pk               | sk      | gsi1pk           | gsi1sk          |
//! |-------|------------------|---------|------------------|-----------------|
//! | agent | `AGENT#<id>`     | `AGENT` | `AGENTS`         | `AGENT#<id>`    |
//! | key   | `KEY#<key id>`   | `KEY`   | `AGENT#<id>`     | `KEY#<key id>`  |
//! | agent buckets | `BUCKET#agent#<id>` | `BUCKET` | | |
//! | tool bucket   | `BUCKET#tool#<tool>#<shard>` | `BUCKET` | | |
//! | idempotency record | `IDEM#<agent>#<tool>#<sha256(key)>` | `IDEM` | - | - |
//!
//! Bucket items are written by the budget layer only (`crate::budget::buckets`): the agent's
//! item holds one TAT attribute per bucket (`minute`, `day`, `tool:<tool>`), a tool's item one
//! (`tat`); both carry the TTL attribute.
//!
//! Idempotency records are written by [`crate::idempotency::Ledger`], not through [`Store`].
//!
//! A key item carries a copy of its agent's status and scopes, so authenticating a request is
//! one `GetItem`. Every agent change rewrites the agent's key items in the same transaction.

mod dynamo;
#[cfg(any(test, feature = "test-util"))]
mod memory;

use std::collections::BTreeSet;

pub use dynamo::{DynamoStore, TTL_ATTRIBUTE};
#[cfg(any(test, feature = "test-util"))]
pub use memory::MemoryStore;

/// Whether an agent may call anything at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentStatus {
    /// The agent may authenticate.
    Active,
    /// The agent is switched off; its keys are refused permanently.
    Disabled,
}

/// Whether one key may authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyStatus {
    /// The key works until it expires.
    Active,
    /// The key was revoked; it is refused permanently.
    Revoked,
}

impl AgentStatus {
    /// Wire/storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
        }
    }

    /// Parses the storage name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "disabled" => Some(Self::Disabled),
            _ => None,
        }
    }
}

impl KeyStatus {
    /// Wire/storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
        }
    }

    /// Parses the storage name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

/// An agent's own budgets; `None` means the deployment default.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentBudget {
    /// Calls per minute across every tool.
    pub per_minute: Option<u32>,
    /// Calls per day across every tool.
    pub per_day: Option<u32>,
    /// Per-tool calls per minute for this agent (an extra bucket in the agent layer).
    pub tools: std::collections::BTreeMap<String, u32>,
}

/// A tool's budget override, stored as data (`TOOL#<name>` / `POLICY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ToolPolicy {
    /// Calls per minute across every agent.
    pub per_minute: u32,
    /// Calls at once on an idle bucket.
    pub burst: u32,
    /// Buckets the rate is split over (for tools hotter than one item takes).
    pub shards: u32,
    /// Whether the tool admits on a local bucket when the store fails (`None`: the tool's own
    /// default).
    pub fail_open: Option<bool>,
}

/// An agent: a program that calls tools, with its scopes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AgentRecord {
    /// Stable identifier (`[a-z0-9][a-z0-9._-]{0,63}`).
    pub agent_id: String,
    /// Free-text description for operators.
    pub description: String,
    /// Whether the agent may authenticate.
    pub status: AgentStatus,
    /// Scopes the agent holds; a tool requires one scope.
    pub scopes: BTreeSet<String>,
    /// Budgets.
    pub budget: AgentBudget,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: u64,
}

/// One bearer key. The token itself is never stored, only its SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyRecord {
    /// Public identifier embedded in the token (safe to log).
    pub key_id: String,
    /// Owning agent.
    pub agent_id: String,
    /// Lowercase hex SHA-256 of the whole token.
    #[serde(skip)]
    pub digest_hex: String,
    /// Whether the key may authenticate.
    pub status: KeyStatus,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: u64,
    /// Optional expiry, Unix milliseconds.
    pub expires_at_ms: Option<u64>,
    /// Copy of the agent's status at the last agent change.
    pub agent_status: AgentStatus,
    /// Copy of the agent's scopes at the last agent change.
    pub scopes: BTreeSet<String>,
    /// Copy of the agent's budgets at the last agent change.
    pub budget: AgentBudget,
}

/// A client certificate bound to an agent (mTLS). `id` is `sha256:<hex>` (the certificate's
/// fingerprint) or `subject:<DN>` (any certificate with that subject from the truststore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertBinding {
    /// The binding's id.
    pub id: String,
    /// The agent the certificate authenticates as.
    pub agent_id: String,
    /// Creation time, Unix ms.
    pub created_at_ms: u64,
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record to create exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The record to change does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The store could not be reached or answered with an error (details are logged, not shown).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored item does not have the expected shape.
    #[error("stored item is malformed: {0}")]
    Corrupt(String),
}

/// Agents and keys. Implemented by [`DynamoStore`] and, for unit tests, `MemoryStore` (tests, `test-util` feature).
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Looks a key up by its public id: one read.
    async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Creates an agent; fails with `AlreadyExists` when the id is taken.
    async fn create_agent(&self, agent: &AgentRecord) -> Result<(), StoreError>;
    /// Reads an agent.
    async fn get_agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError>;
    /// Every agent, ordered by id.
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;
    /// Replaces an agent's status and scopes and rewrites its keys' copies, atomically.
    async fn update_agent(&self, agent: &AgentRecord) -> Result<(), StoreError>;
    /// Stores a new key for an existing agent whose status, scopes and budget still equal the
    /// key's copies (checked atomically with the write); `NotFound` when the agent is missing
    /// or changed since it was read.
    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    /// Every key of one agent, ordered by id.
    async fn list_keys(&self, agent_id: &str) -> Result<Vec<KeyRecord>, StoreError>;
    /// Marks a key revoked; returns the updated record.
    async fn revoke_key(&self, key_id: &str) -> Result<KeyRecord, StoreError>;
    /// A tool's budget override, if one is set.
    async fn get_tool_policy(&self, tool: &str) -> Result<Option<ToolPolicy>, StoreError>;
    /// Sets (or, with `None`, removes) a tool's budget override.
    async fn put_tool_policy(
        &self,
        tool: &str,
        policy: Option<ToolPolicy>,
    ) -> Result<(), StoreError>;
    /// Binds a client certificate to an existing agent; `AlreadyExists` when bound.
    async fn bind_cert(&self, binding: &CertBinding) -> Result<(), StoreError>;
    /// Looks a certificate binding up: one read.
    async fn get_cert(&self, id: &str) -> Result<Option<CertBinding>, StoreError>;
    /// Removes a certificate binding; `NotFound` when there is none.
    async fn unbind_cert(&self, id: &str) -> Result<(), StoreError>;
}

/// Checks an agent id: lowercase letters, digits, `.`, `_`, `-`, 1 to 64 characters.
pub fn validate_agent_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || (i > 0 && matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "agent id {id:?} is invalid: use 1-64 characters of a-z, 0-9, '.', '_' or '-', \
             starting with a letter or digit"
        ))
    }
}

/// Checks a scope name: visible ASCII without spaces, quotes or backslashes (RFC 6749 3.3).
pub fn validate_scope(scope: &str) -> Result<(), String> {
    let ok = !scope.is_empty()
        && scope.len() <= 128
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "scope {scope:?} is invalid: use visible ASCII without spaces, '\"' or '\\'"
        ))
    }
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The item a conditional `UpdateItem` found when its condition failed (`ALL_OLD`; `None` when
/// the server returned none), or `Err` for any other failure.
pub(crate) fn condition_failed_item(
    e: &aws_sdk_dynamodb::error::SdkError<
        aws_sdk_dynamodb::operation::update_item::UpdateItemError,
    >,
) -> Result<
    Option<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>>,
    StoreError,
> {
    use aws_sdk_dynamodb::error::ProvideErrorMetadata as _;
    use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
    match e.as_service_error() {
        Some(UpdateItemError::ConditionalCheckFailedException(c)) => Ok(c.item().cloned()),
        _ if e.code() == Some("ConditionalCheckFailedException") => Ok(None),
        _ => Err(StoreError::Unavailable(format!(
            "UpdateItem: {}",
            aws_sdk_dynamodb::error::DisplayErrorContext(e)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids() {
        assert!(validate_agent_id("billing-bot.v2").is_ok());
        assert!(validate_agent_id("").is_err());
        assert!(validate_agent_id("-x").is_err());
        assert!(validate_agent_id("Upper").is_err());
        assert!(validate_agent_id(&"a".repeat(65)).is_err());
    }

    #[test]
    fn scopes() {
        assert!(validate_scope("customers:read").is_ok());
        assert!(validate_scope("has space").is_err());
        assert!(validate_scope("quo\"te").is_err());
        assert!(validate_scope("").is_err());
    }
}
