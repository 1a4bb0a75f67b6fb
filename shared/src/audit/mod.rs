//! Audit: exactly one structured JSON record per tool call, whatever its outcome.
//!
//! Arguments never appear raw unless the tool declared the field [`LogAs::Safe`]: hashed fields
//! are HMAC-SHA256 under a secret key (with the key's version, so the key can rotate),
//! summarised fields keep only their JSON type and size. Without a hashing key, hashed fields
//! fall back to summaries: never to raw values.

pub mod hash_key;
pub mod metrics;

use std::io::Write as _;
use std::sync::Mutex;

use hmac::{Hmac, Mac as _};
use serde::Serialize;
use sha2::Sha256;

use crate::catalog::RegisteredTool;
use crate::tool::LogAs;

/// Largest serialised size of the `arguments` field in a record.
pub const MAX_ARGUMENT_LOG_BYTES: usize = 2048;

/// The outcome of one tool call, as logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CallStatus {
    /// The tool returned a result.
    Success,
    /// The tool refused for a reason the agent can fix (`isError` result).
    BusinessError,
    /// The tool failed, timed out or panicked.
    SystemError,
    /// Authentication failed.
    DeniedAuth,
    /// The principal lacks the tool's scope.
    DeniedScope,
    /// A budget refused the call.
    RateLimited,
    /// Arguments did not validate, or the tool does not exist.
    InvalidInput,
    /// Answered with the stored outcome of an earlier call with the same idempotency key:
    /// the tool did not run, no budget was spent.
    Replayed,
    /// A task-augmented call was accepted: the tool runs asynchronously, and a second record
    /// (same `task_id`) tells how the task ended.
    TaskCreated,
    /// The task was cancelled by its owner before the tool finished.
    Cancelled,
}

impl CallStatus {
    /// Name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::BusinessError => "business_error",
            Self::SystemError => "system_error",
            Self::DeniedAuth => "denied_auth",
            Self::DeniedScope => "denied_scope",
            Self::RateLimited => "rate_limited",
            Self::InvalidInput => "invalid_input",
            Self::Replayed => "replayed",
            Self::TaskCreated => "task_created",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One audit record. Serialised as one JSON line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditRecord {
    /// RFC 3339 time the call finished.
    pub timestamp: String,
    /// Log level (`INFO`, or `ERROR` for system errors), for Lambda's log-level filtering.
    pub level: &'static str,
    /// Always `audit`: tells audit records from other log lines.
    pub kind: &'static str,
    /// Service name.
    pub service: String,
    /// Function name.
    pub function: String,
    /// Whether this was the first invocation of the instance.
    pub cold_start: bool,
    /// Invocation request id.
    pub request_id: String,
    /// X-Ray trace id, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The agent, when authenticated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// How it authenticated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<&'static str>,
    /// Tool name as requested (only when it names a registered tool).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Negotiated protocol version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    /// Milliseconds from receipt to response.
    pub latency_ms: u64,
    /// Outcome.
    pub status: CallStatus,
    /// Machine-readable reason for a denial or failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Budget layer that refused the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_layer: Option<String>,
    /// Arguments as the tool declared they may be logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Value>,
    /// The call's idempotency key, HMAC-hashed like a hashed argument (without a hashing key,
    /// summarised); never raw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<serde_json::Value>,
    /// The task a task-augmented call created, or whose end this record tells.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
}

/// Where audit records go: stdout on Lambda (CloudWatch), a buffer in tests.
pub trait AuditSink: Send + Sync + std::fmt::Debug {
    /// Writes one record.
    fn write(&self, record: &AuditRecord);
}

/// Writes each record as one line on stdout, followed by its EMF metrics line
/// ([`crate::audit::metrics`]).
#[derive(Debug, Default)]
pub struct StdoutSink;

impl AuditSink for StdoutSink {
    fn write(&self, record: &AuditRecord) {
        let metrics = crate::audit::metrics::emf(record, crate::store::now_ms());
        // Both lines in one buffer and one `write`: stdout is line-buffered, which would
        // make each line a system call of its own.
        let mut lines = Vec::with_capacity(1024);
        if serde_json::to_writer(&mut lines, record).is_ok() {
            lines.push(b'\n');
            if serde_json::to_writer(&mut lines, &metrics).is_ok() {
                lines.push(b'\n');
                let _ = std::io::stdout().lock().write_all(&lines);
            }
        }
    }
}

/// Keeps records in memory (tests).
#[derive(Debug, Default)]
pub struct MemorySink {
    records: Mutex<Vec<AuditRecord>>,
}

impl MemorySink {
    /// Records written so far.
    pub fn records(&self) -> Vec<AuditRecord> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl AuditSink for MemorySink {
    fn write(&self, record: &AuditRecord) {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(record.clone());
    }
}

/// A versioned secret key for hashing argument values.
#[derive(Clone)]
pub struct HashKey {
    /// Version label logged beside each hash.
    pub version: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashKey")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl HashKey {
    /// A key of at least 32 bytes.
    pub fn new(version: impl Into<String>, key: Vec<u8>) -> Option<Self> {
        (key.len() >= 32).then(|| Self {
            version: version.into(),
            key,
        })
    }

    /// `hmac-sha256:<version>:<hex>` of a value's canonical JSON text.
    pub fn hash(&self, value: &serde_json::Value) -> String {
        let canonical = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for HMAC.
        let mut mac = match <Hmac<Sha256>>::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => return "hash_unavailable".to_owned(),
        };
        mac.update(canonical.as_bytes());
        format!(
            "hmac-sha256:{}:{}",
            self.version,
            hex::encode(mac.finalize().into_bytes())
        )
    }
}

/// A value's type and size, never its content.
pub fn summarise(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::{Value, json};
    match value {
        Value::Null => json!({"type": "null"}),
        Value::Bool(_) => json!({"type": "boolean"}),
        Value::Number(_) => json!({"type": "number"}),
        Value::String(s) => json!({"type": "string", "len": s.chars().count()}),
        Value::Array(a) => json!({"type": "array", "len": a.len()}),
        Value::Object(o) => json!({"type": "object", "keys": o.len()}),
    }
}

/// The arguments as they may be logged for `tool`, bounded to [`MAX_ARGUMENT_LOG_BYTES`].
///
/// `Safe` fields are logged raw only when the arguments `validated` against the tool's schema:
/// a safe field is safe because its schema constrains it (an enum, an id pattern), and an
/// invalid call may carry anything in it.
pub fn redact_arguments(
    tool: Option<&RegisteredTool>,
    args: &serde_json::Value,
    key: Option<&HashKey>,
    validated: bool,
) -> serde_json::Value {
    let serde_json::Value::Object(fields) = args else {
        return summarise(args);
    };
    let mut out = serde_json::Map::new();
    let mut size = 2usize;
    for (name, value) in fields {
        let how = tool.map_or(LogAs::Summarised, |t| t.log_as(name));
        // Unknown field names may themselves carry data: only declared names are kept.
        let declared = tool.is_some_and(|t| {
            t.descriptor()
                .input_schema
                .get("properties")
                .and_then(|p| p.as_object())
                .is_some_and(|p| p.contains_key(name))
        });
        if !declared {
            continue;
        }
        let logged = match (how, key) {
            (LogAs::Safe, _) if validated => value.clone(),
            (LogAs::Hashed, Some(k)) => serde_json::Value::String(k.hash(value)),
            _ => summarise(value),
        };
        let entry = serde_json::to_string(&logged).map_or(0, |s| s.len()) + name.len() + 4;
        if size + entry > MAX_ARGUMENT_LOG_BYTES {
            out.insert("_truncated".to_owned(), serde_json::Value::Bool(true));
            break;
        }
        size += entry;
        out.insert(name.clone(), logged);
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_for_a_key_and_changes_with_it() {
        let k1 = HashKey::new("v1", vec![7; 32]).expect("key");
        let k2 = HashKey::new("v2", vec![8; 32]).expect("key");
        let v = serde_json::json!("ada@example.com");
        assert_eq!(k1.hash(&v), k1.hash(&v));
        assert_ne!(k1.hash(&v), k2.hash(&v));
        assert!(k1.hash(&v).starts_with("hmac-sha256:v1:"));
        assert!(!k1.hash(&v).contains("ada"));
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(HashKey::new("v1", vec![1; 16]).is_none());
    }

    #[test]
    fn summaries_hold_no_content() {
        let s = summarise(&serde_json::json!("secret@example.com"));
        assert_eq!(s, serde_json::json!({"type": "string", "len": 18}));
        assert!(!s.to_string().contains("secret"));
    }
}
