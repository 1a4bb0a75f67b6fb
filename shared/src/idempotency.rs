//! Retry safety: a keyed `tools/call` runs once per (agent, tool, idempotency key), however
//! often the agent (or the gateway's `Lambda.Invoke`) retries it.
//!
//! The key comes from the `Idempotency-Key` request header (IETF
//! draft-ietf-httpapi-idempotency-key-header) or from `params._meta` under
//! [`META_KEY`] (the name the MCP request-idempotency proposal, SEP-3182, uses). One record per
//! (agent, tool, SHA-256 of the key) lives in the tollgate table (encrypted at rest with the
//! stack key, expiring by TTL):
//!
//! | pk                                  | sk     | attributes |
//! |-------------------------------------|--------|------------|
//! | `IDEM#<agent>#<tool>#<sha256(key)>` | `IDEM` | `state` (`in_progress`, `complete`, `released`), `args_hash`, `owner`, `lease_until_ms`, `outcome`, `outcome_status`, `outcome_omitted`, `completed_at_ms`, `expires_at_s` |
//!
//! Two conditional writes per keyed call: [`Ledger::begin`] claims the record before the budget
//! layer (so a replay spends no budget), [`Ledger::complete`] stores the outcome after the tool
//! ran, or [`Ledger::release`] frees the record when nothing was done (refused, system error,
//! deadline). A claim whose owner crashed is taken over once its lease (the owner's deadline plus
//! [`LEASE_GRACE`]) has passed. Both writes are `UpdateItem`s, so tool functions need no rights
//! beyond the shared ones.

pub use crate::protocol::META_IDEMPOTENCY_KEY as META_KEY;
pub use crate::tool::Idempotency;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata as _;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::store::{StoreError, TTL_ATTRIBUTE, now_ms};

/// The HTTP request header carrying the key (IETF draft).
pub const HEADER: &str = "idempotency-key";
/// The `_meta` key on results of keyed calls: `{"replayed": bool, ...}`.
pub const META_RESULT: &str = "tollgate/idempotency";
/// Shortest accepted key.
pub const MIN_KEY_LEN: usize = 8;
/// Longest accepted key.
pub const MAX_KEY_LEN: usize = 255;
/// Time added to the owner's deadline before a crashed owner's claim may be taken over.
pub const LEASE_GRACE: Duration = Duration::from_secs(2);

/// The key given with a call, if any; `Err` says what is wrong with it (never echoing it).
pub fn key_from(header: Option<&str>, meta: Option<&Value>) -> Result<Option<String>, String> {
    let from_header = match header {
        Some(raw) => Some(parse_header(raw)?),
        None => None,
    };
    let from_meta = match meta.and_then(|m| m.get(META_KEY)) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(format!("params._meta[\"{META_KEY}\"] must be a string")),
    };
    let key = match (from_header, from_meta) {
        (Some(h), Some(m)) if h != m => {
            return Err(format!(
                "the Idempotency-Key header and params._meta[\"{META_KEY}\"] differ; send one key"
            ));
        }
        (h, m) => h.or(m),
    };
    if let Some(k) = &key {
        validate(k)?;
    }
    Ok(key)
}

/// The header value: an RFC 8941 sf-string (`"…"`, as the draft defines it) or, leniently, the
/// bare key.
fn parse_header(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let inner = match raw.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').ok_or_else(|| {
            "the Idempotency-Key header is not a valid structured-field string".to_owned()
        })?,
        None => raw,
    };
    Ok(inner.to_owned())
}

/// Keys: 8 to 255 characters of `A-Z a-z 0-9 - _ . : ~ + / =` (UUIDs, ULIDs, base64).
fn validate(key: &str) -> Result<(), String> {
    let ok = (MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len())
        && key.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'_' | b'.' | b':' | b'~' | b'+' | b'/' | b'=')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the idempotency key must be {MIN_KEY_LEN} to {MAX_KEY_LEN} characters of A-Z, a-z, \
             0-9, '-', '_', '.', ':', '~', '+', '/' or '=' (a UUID is a good key)"
        ))
    }
}

/// SHA-256 (hex) of the arguments' canonical JSON (object keys sorted, no whitespace).
pub fn arguments_hash(args: &Value) -> String {
    let mut text = String::new();
    canonical(args, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A claimed record: this invocation runs the tool and must [`Ledger::complete`] or
/// [`Ledger::release`] it.
#[derive(Debug, Clone)]
pub struct Claim {
    pk: String,
    owner: String,
}

/// A completed call's stored outcome.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The `CallToolResult` as first answered, or `None` when it was over the size bound.
    pub result: Option<Value>,
    /// `success` or `business_error`.
    pub status: String,
    /// The request id of the call that ran.
    pub request_id: String,
    /// When it completed, Unix ms.
    pub completed_at_ms: u64,
}

/// What [`Ledger::begin`] found.
#[derive(Debug)]
pub enum Begin {
    /// This call runs the tool.
    Run(Claim),
    /// The same call completed before: answer with its outcome.
    Replay(Stored),
    /// The same call is running elsewhere: retry after this many seconds.
    InProgress {
        /// Seconds until the running call's lease ends (at least 1).
        retry_after_s: u64,
    },
    /// The key was used with other arguments.
    Mismatch,
}

/// The idempotency records in the tollgate table.
#[derive(Debug, Clone)]
pub struct Ledger {
    client: Client,
    table: String,
    ttl: Duration,
    max_outcome_bytes: usize,
}

const STATE_IN_PROGRESS: &str = "in_progress";
const STATE_COMPLETE: &str = "complete";
const STATE_RELEASED: &str = "released";

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn unavailable(op: &str, e: &impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{op}: {e}"))
}

impl Ledger {
    /// Records in `table`, kept for `ttl`, outcomes stored up to `max_outcome_bytes`.
    pub fn new(
        client: Client,
        table: impl Into<String>,
        ttl: Duration,
        max_outcome_bytes: usize,
    ) -> Self {
        Self {
            client,
            table: table.into(),
            ttl,
            max_outcome_bytes,
        }
    }

    /// The record's partition key: the key itself is never stored, only its SHA-256.
    pub fn record_key(agent_id: &str, tool: &str, key: &str) -> String {
        format!(
            "IDEM#{agent_id}#{tool}#{}",
            hex::encode(Sha256::digest(key.as_bytes()))
        )
    }

    /// Claims the record for this call (one conditional write), or says why not.
    pub async fn begin(
        &self,
        agent_id: &str,
        tool: &str,
        key: &str,
        args_hash: &str,
        owner: &str,
        deadline: Instant,
    ) -> Result<Begin, StoreError> {
        let pk = Self::record_key(agent_id, tool, key);
        let now = now_ms();
        let lease_ms = u64::try_from(
            (deadline.saturating_duration_since(Instant::now()) + LEASE_GRACE).as_millis(),
        )
        .unwrap_or(u64::MAX);
        let expires_s = (now / 1000).saturating_add(self.ttl.as_secs());
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .key("sk", s("IDEM"))
            .update_expression(
                "SET kind = :kind, #st = :inp, args_hash = :h, #owner = :o, lease_until_ms = :lease, \
                 #ttl = :exp REMOVE outcome, outcome_status, outcome_omitted, completed_at_ms",
            )
            .condition_expression(
                "attribute_not_exists(pk) OR #st = :rel OR (#st = :inp AND lease_until_ms < :now) \
                 OR #ttl < :now_s",
            )
            .expression_attribute_names("#st", "state")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":kind", s("idempotency"))
            .expression_attribute_values(":inp", s(STATE_IN_PROGRESS))
            .expression_attribute_values(":rel", s(STATE_RELEASED))
            .expression_attribute_values(":h", s(args_hash))
            .expression_attribute_values(":o", s(owner))
            .expression_attribute_values(":lease", n(now.saturating_add(lease_ms)))
            .expression_attribute_values(":exp", n(expires_s))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":now_s", n(now / 1000))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let existing = match result {
            Ok(_) => {
                return Ok(Begin::Run(Claim {
                    pk,
                    owner: owner.to_owned(),
                }));
            }
            Err(e) => match crate::store::condition_failed_item(&e)? {
                Some(item) => item,
                None => self.read(&pk).await?.unwrap_or_default(),
            },
        };
        Ok(classify(&existing, args_hash, now))
    }

    async fn read(&self, pk: &str) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let resp = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s("IDEM"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| {
                unavailable("GetItem", &aws_sdk_dynamodb::error::DisplayErrorContext(&e))
            })?;
        Ok(resp.item)
    }

    /// Whether a serialised outcome of `len` bytes is kept for replays.
    pub fn keeps(&self, len: usize) -> bool {
        len <= self.max_outcome_bytes
    }

    /// Stores the outcome (second conditional write): only while this call still owns the claim.
    pub async fn complete(
        &self,
        claim: &Claim,
        result: &Value,
        status: &str,
    ) -> Result<(), StoreError> {
        let text = result.to_string();
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&claim.pk))
            .key("sk", s("IDEM"))
            .condition_expression("#st = :inp AND #owner = :o")
            .expression_attribute_names("#st", "state")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":inp", s(STATE_IN_PROGRESS))
            .expression_attribute_values(":o", s(&claim.owner))
            .expression_attribute_values(":done", s(STATE_COMPLETE))
            .expression_attribute_values(":status", s(status))
            .expression_attribute_values(":at", n(now_ms()));
        update = if self.keeps(text.len()) {
            update
                .update_expression(
                    "SET #st = :done, outcome = :out, outcome_status = :status, completed_at_ms = :at \
                     REMOVE lease_until_ms",
                )
                .expression_attribute_values(":out", s(text))
        } else {
            update
                .update_expression(
                    "SET #st = :done, outcome_omitted = :t, outcome_status = :status, \
                     completed_at_ms = :at REMOVE lease_until_ms",
                )
                .expression_attribute_values(":t", AttributeValue::Bool(true))
        };
        self.finish(update, "complete").await
    }

    /// Frees the claim when nothing was done, so a retry can run.
    pub async fn release(&self, claim: &Claim) -> Result<(), StoreError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&claim.pk))
            .key("sk", s("IDEM"))
            .update_expression("SET #st = :rel REMOVE lease_until_ms")
            .condition_expression("#st = :inp AND #owner = :o")
            .expression_attribute_names("#st", "state")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":inp", s(STATE_IN_PROGRESS))
            .expression_attribute_values(":rel", s(STATE_RELEASED))
            .expression_attribute_values(":o", s(&claim.owner));
        self.finish(update, "release").await
    }

    async fn finish(
        &self,
        update: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
        what: &str,
    ) -> Result<(), StoreError> {
        match update.send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                // The lease ran out and another call took the record over.
                Err(StoreError::NotFound(format!(
                    "idempotency claim ({what}): lease lost"
                )))
            }
            Err(e) => Err(unavailable(
                "UpdateItem",
                &aws_sdk_dynamodb::error::DisplayErrorContext(&e),
            )),
        }
    }
}

fn attr_s<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn attr_n(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

/// What an existing record means for a call with `args_hash` at `now` (Unix ms).
fn classify(item: &HashMap<String, AttributeValue>, args_hash: &str, now: u64) -> Begin {
    if attr_s(item, "args_hash").is_some_and(|h| h != args_hash) {
        return Begin::Mismatch;
    }
    match attr_s(item, "state") {
        Some(STATE_COMPLETE) => Begin::Replay(Stored {
            result: attr_s(item, "outcome").and_then(|t| serde_json::from_str(t).ok()),
            status: attr_s(item, "outcome_status")
                .unwrap_or("success")
                .to_owned(),
            request_id: attr_s(item, "owner").unwrap_or_default().to_owned(),
            completed_at_ms: attr_n(item, "completed_at_ms").unwrap_or(0),
        }),
        _ => {
            // In progress (or released between our write and read): retry after the lease.
            let lease = attr_n(item, "lease_until_ms").unwrap_or(now);
            Begin::InProgress {
                retry_after_s: lease.saturating_sub(now).div_ceil(1000).max(1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::tool::Annotations;

    #[test]
    fn keys_from_header_or_meta() {
        let meta = json!({META_KEY: "0f9c1a2b-key"});
        assert_eq!(key_from(None, Some(&meta)), Ok(Some("0f9c1a2b-key".into())));
        assert_eq!(
            key_from(Some("\"0f9c1a2b-key\""), None),
            Ok(Some("0f9c1a2b-key".into()))
        );
        assert_eq!(
            key_from(Some("0f9c1a2b-key"), Some(&meta)),
            Ok(Some("0f9c1a2b-key".into()))
        );
        assert_eq!(key_from(None, Some(&json!({}))), Ok(None));
        assert_eq!(key_from(None, None), Ok(None));
        assert!(
            key_from(Some("other-key-1"), Some(&meta)).is_err(),
            "two different keys"
        );
        assert!(key_from(None, Some(&json!({META_KEY: 42}))).is_err());
    }

    #[test]
    fn keys_are_bounded_and_errors_do_not_echo_them() {
        assert!(key_from(Some("short"), None).is_err());
        assert!(key_from(Some(&"a".repeat(256)), None).is_err());
        assert!(key_from(Some(&"a".repeat(255)), None).is_ok());
        let err = key_from(Some("has spaces in it"), None).expect_err("charset");
        assert!(!err.contains("spaces"), "{err}");
        assert!(key_from(Some("\"unterminated"), None).is_err());
    }

    #[test]
    fn arguments_hash_ignores_key_order_and_whitespace() {
        let a = json!({"b": [1, {"y": 2, "x": "é"}], "a": null});
        let b: Value =
            serde_json::from_str(r#"{ "a": null, "b": [1, {"x": "é", "y": 2}] }"#).expect("json");
        assert_eq!(arguments_hash(&a), arguments_hash(&b));
        assert_ne!(
            arguments_hash(&a),
            arguments_hash(&json!({"a": null, "b": [{"x": "é", "y": 2}, 1]}))
        );
    }

    #[test]
    fn defaults_follow_annotations() {
        let mut a = Annotations::default();
        assert_eq!(Idempotency::from_annotations(&a), Idempotency::Optional);
        a.destructive = true;
        assert_eq!(Idempotency::from_annotations(&a), Idempotency::Optional);
        a.idempotent = true;
        assert_eq!(Idempotency::from_annotations(&a), Idempotency::Ignored);
        let read = Annotations {
            read_only: true,
            ..Annotations::default()
        };
        assert_eq!(Idempotency::from_annotations(&read), Idempotency::Ignored);
    }

    fn item(pairs: &[(&str, AttributeValue)]) -> HashMap<String, AttributeValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn existing_records_classify() {
        let running = item(&[
            ("state", s("in_progress")),
            ("args_hash", s("h")),
            ("lease_until_ms", n(12_500)),
        ]);
        assert!(matches!(
            classify(&running, "h", 10_000),
            Begin::InProgress { retry_after_s: 3 }
        ));
        assert!(matches!(
            classify(&running, "other", 10_000),
            Begin::Mismatch
        ));
        let done = item(&[
            ("state", s("complete")),
            ("args_hash", s("h")),
            ("outcome", s(r#"{"content":[]}"#)),
            ("owner", s("req-1")),
        ]);
        match classify(&done, "h", 10_000) {
            Begin::Replay(stored) => {
                assert_eq!(stored.result, Some(json!({"content": []})));
                assert_eq!(stored.request_id, "req-1");
            }
            other => panic!("{other:?}"),
        }
        let omitted = item(&[
            ("state", s("complete")),
            ("args_hash", s("h")),
            ("outcome_omitted", AttributeValue::Bool(true)),
        ]);
        assert!(matches!(
            classify(&omitted, "h", 0),
            Begin::Replay(Stored { result: None, .. })
        ));
    }
}
