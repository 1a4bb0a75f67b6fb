//! Long-running tools as MCP tasks (the 2025-11-25 `tasks` utility): a task-augmented
//! `tools/call` is answered at once with a task, the tool runs asynchronously, and the agent
//! follows it with `tasks/get`, `tasks/result`, `tasks/list` and `tasks/cancel`.
//!
//! One record per task lives in the tollgate table (encrypted at rest with the stack key,
//! expiring by TTL), keyed by its owner so another agent's task id finds nothing:
//!
//! | pk             | sk        | attributes |
//! |----------------|-----------|------------|
//! | `TASK#<agent>` | `<task id>` | `tool`, `state`, `status_message`, `progress`, `progress_total`, `created_ms`, `updated_ms`, `ttl_ms`, `expires_ms`, `run_by_ms`, `started`, `args_hash`, `request_id`, `result_json`, `expires_at_s` |
//!
//! Raw arguments are never stored: they travel to the run in the asynchronous invocation's
//! payload ([`TaskJob`]) and are checked against the record's `args_hash` there. The run is
//! started by a [`TaskStarter`]: on Lambda an `Invoke` of the tool's own function with the
//! `Event` invocation type, in the local stack a background task on the same records.
//! A run that never starts, dies or overruns is found by its `run_by_ms` (creation + the tool's
//! time limit + [`TaskConfig::grace`]) and ends `failed` on the next read.

pub use crate::config::TaskConfig;
pub use crate::protocol::{MISSING_REQUIRED_CLIENT_CAPABILITY, TASKS_EXTENSION, TASKS_VERSION};
pub use crate::tool::{TaskHandle, TaskSupport};
use crate::tool::{TaskRecordLink, TaskState};
use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata as _;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::config::millis_of;
use crate::store::{StoreError, TTL_ATTRIBUTE, now_ms};

/// `_meta` key associating a result with its task (spec: required on `tasks/result`).
pub const META_RELATED_TASK: &str = "io.modelcontextprotocol/related-task";
/// `_meta` key of a `CreateTaskResult`: what a host may hand the model while the task runs.
pub const META_IMMEDIATE_RESPONSE: &str = "io.modelcontextprotocol/model-immediate-response";
/// `_meta` key on a task carrying the handler's last reported progress.
pub const META_PROGRESS: &str = "tollgate/progress";
/// A task's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Created, running or about to.
    Working,
    /// The tool returned a result.
    Completed,
    /// The tool returned an `isError` result, failed, or its run was lost or overran.
    Failed,
    /// Cancelled by its owner.
    Cancelled,
}

impl TaskStatus {
    /// The spec's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Working => "working",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "working" => Self::Working,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Completed, failed or cancelled: the status will not change again.
    pub fn is_terminal(self) -> bool {
        self != Self::Working
    }
}

/// One task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// The task id (a random UUID).
    pub task_id: String,
    /// The owning agent.
    pub owner: String,
    /// The tool it runs.
    pub tool: String,
    /// Current status.
    pub status: TaskStatus,
    /// Human-readable state (progress, or why it failed).
    pub status_message: Option<String>,
    /// Last reported progress and total.
    pub progress: Option<(f64, Option<f64>)>,
    /// Creation, Unix ms.
    pub created_ms: u64,
    /// Last change, Unix ms.
    pub updated_ms: u64,
    /// Granted TTL, ms from creation.
    pub ttl_ms: u64,
    /// When a still-working task is deemed lost, Unix ms.
    pub run_by_ms: u64,
    /// Whether a worker picked it up.
    pub started: bool,
    /// SHA-256 of the arguments' canonical JSON.
    pub args_hash: String,
    /// The request that created it.
    pub request_id: String,
    /// The `CallToolResult` once terminal.
    pub result: Option<Value>,
    /// A failure of the platform rather than the tool's own `isError` answer (panic, system
    /// error, lost or overrun run).
    pub system_failure: bool,
}

impl TaskRecord {
    /// When the task stops being visible, Unix ms.
    pub fn expires_ms(&self) -> u64 {
        self.created_ms.saturating_add(self.ttl_ms)
    }

    /// The spec's `Task` object.
    pub fn to_json(&self, poll_interval: Duration) -> Value {
        let mut task = json!({
            "taskId": self.task_id,
            "status": self.status.as_str(),
            "createdAt": rfc3339(self.created_ms),
            "lastUpdatedAt": rfc3339(self.updated_ms),
            "ttl": self.ttl_ms,
        });
        if let Some(m) = &self.status_message {
            task["statusMessage"] = json!(m);
        }
        if self.status == TaskStatus::Working {
            task["pollInterval"] = json!(millis_of(poll_interval));
        }
        if let Some((progress, total)) = self.progress {
            let mut p = json!({"progress": progress});
            if let Some(t) = total {
                p["total"] = json!(t);
            }
            task["_meta"] = json!({ META_PROGRESS: p });
        }
        task
    }
}

impl TaskRecord {
    /// The extension's status: a tool's own `isError` answer is `completed` there (its result
    /// says so), `failed` is kept for platform failures.
    pub fn extension_status(&self) -> &'static str {
        match self.status {
            TaskStatus::Failed if !self.system_failure => "completed",
            other => other.as_str(),
        }
    }

    /// The extension's task (`ttlMs`, `pollIntervalMs`); with `detailed`, the `tasks/get`
    /// form: the result inline once completed, a JSON-RPC error once failed.
    pub fn to_extension_json(&self, poll_interval: Duration, detailed: bool) -> Value {
        let mut task = json!({
            "taskId": self.task_id,
            "status": self.extension_status(),
            "createdAt": rfc3339(self.created_ms),
            "lastUpdatedAt": rfc3339(self.updated_ms),
            "ttlMs": self.ttl_ms,
        });
        if let Some(m) = &self.status_message {
            task["statusMessage"] = json!(m);
        }
        if self.status == TaskStatus::Working {
            task["pollIntervalMs"] = json!(millis_of(poll_interval));
        }
        if let Some((progress, total)) = self.progress {
            task["_meta"] = json!({ META_PROGRESS: {"progress": progress, "total": total} });
        }
        if detailed {
            match self.extension_status() {
                "completed" => {
                    task["result"] = self
                        .result
                        .clone()
                        .unwrap_or_else(|| json!({"content": []}));
                }
                "failed" => {
                    task["error"] = json!({
                        "code": crate::protocol::codes::INTERNAL_ERROR,
                        "message": self.status_message.clone()
                            .unwrap_or_else(|| "The task failed.".to_owned()),
                    });
                }
                _ => {}
            }
        }
        task
    }
}

fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// What a run gets besides the tool's arguments: sent in the asynchronous invocation's payload
/// (`{"tollgate_task": …}`), never stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TaskJob {
    /// The task.
    pub task_id: String,
    /// Who created it (the handler's `ctx.principal`).
    pub principal: Principal,
    /// The tool.
    pub tool: String,
    /// The validated arguments.
    pub arguments: Value,
    /// Trace headers naming the creating request's span as the parent.
    pub trace: Vec<(String, String)>,
    /// The protocol version of the creating request (audit).
    pub protocol_version: String,
}

/// The payload of an asynchronous run: the one shape a tool function accepts besides API
/// Gateway events. Only a caller allowed to invoke the function (IAM) can send it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct TaskEvent {
    /// The job.
    pub tollgate_task: TaskJob,
}

/// Starts a task's run without waiting for it.
#[async_trait::async_trait]
pub trait TaskStarter: Send + Sync + std::fmt::Debug {
    /// Hands `job` to a worker; `Err` when it could not be handed over (nothing runs).
    async fn start(&self, job: &TaskJob) -> Result<(), String>;
}

/// Lambda `Invoke` of a function with the `Event` invocation type (queued by Lambda, retried
/// per the function's asynchronous configuration, failures to its on-failure destination).
#[derive(Debug, Clone)]
pub struct LambdaStarter {
    client: aws_sdk_lambda::Client,
    function: String,
}

impl LambdaStarter {
    /// Runs tasks on `function` (a tool function runs its own tasks).
    pub fn new(client: aws_sdk_lambda::Client, function: impl Into<String>) -> Self {
        Self {
            client,
            function: function.into(),
        }
    }
}

#[async_trait::async_trait]
impl TaskStarter for LambdaStarter {
    async fn start(&self, job: &TaskJob) -> Result<(), String> {
        let event = TaskEvent {
            tollgate_task: job.clone(),
        };
        let payload = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
        let trace_header = job
            .trace
            .iter()
            .find(|(k, _)| k == "x-amzn-trace-id")
            .map(|(_, v)| v.clone());
        self.client
            .invoke()
            .function_name(&self.function)
            .invocation_type(aws_sdk_lambda::types::InvocationType::Event)
            .payload(aws_smithy_types::Blob::new(payload))
            .customize()
            .mutate_request(move |req| {
                if let Some(v) = &trace_header {
                    req.headers_mut().insert("x-amzn-trace-id", v.clone());
                }
            })
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                use aws_sdk_lambda::error::ProvideErrorMetadata as _;
                e.code().unwrap_or("invoke error").to_owned()
            })
    }
}

/// The task records in the tollgate table.
#[derive(Debug, Clone)]
pub struct TaskStore {
    client: Client,
    table: String,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn unavailable(op: &str, e: &impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{op}: {e}"))
}

/// Partition key of an agent's tasks.
pub fn partition(owner: &str) -> String {
    format!("TASK#{owner}")
}

/// A page of [`TaskStore::list`].
#[derive(Debug)]
pub struct Page {
    /// The owner's live tasks.
    pub tasks: Vec<TaskRecord>,
    /// The task id to continue after, when there may be more.
    pub next: Option<String>,
}

/// What a conditional change found.
#[derive(Debug)]
pub enum Changed {
    /// The change was made; the record as it is now.
    Done(TaskRecord),
    /// The task exists but was not in a state allowing it; the record as it is.
    Refused(TaskRecord),
    /// No such (live) task for this owner.
    Missing,
}

impl TaskStore {
    /// Records in `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Writes a new task (fails if the id exists). An `UpdateItem`, as every task write: the
    /// functions need no `PutItem` on task keys.
    pub async fn create(&self, r: &TaskRecord) -> Result<(), StoreError> {
        let expires_s = r.expires_ms().div_ceil(1000);
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(partition(&r.owner)))
            .key("sk", s(&r.task_id))
            .update_expression(
                "SET kind = :kind, tool = :tool, #st = :st, created_ms = :c, updated_ms = :u, \
                 ttl_ms = :ttl, expires_ms = :e, run_by_ms = :rb, args_hash = :h, \
                 request_id = :rid, status_message = :m, #exp = :es",
            )
            .condition_expression("attribute_not_exists(pk)")
            .expression_attribute_names("#st", "state")
            .expression_attribute_names("#exp", TTL_ATTRIBUTE)
            .expression_attribute_values(":kind", s("task"))
            .expression_attribute_values(":tool", s(&r.tool))
            .expression_attribute_values(":st", s(r.status.as_str()))
            .expression_attribute_values(":c", n(r.created_ms))
            .expression_attribute_values(":u", n(r.updated_ms))
            .expression_attribute_values(":ttl", n(r.ttl_ms))
            .expression_attribute_values(":e", n(r.expires_ms()))
            .expression_attribute_values(":rb", n(r.run_by_ms))
            .expression_attribute_values(":h", s(&r.args_hash))
            .expression_attribute_values(":rid", s(&r.request_id))
            .expression_attribute_values(":m", s(r.status_message.clone().unwrap_or_default()))
            .expression_attribute_values(":es", n(expires_s))
            .send()
            .await
            .map_err(|e| {
                if e.code() == Some("ConditionalCheckFailedException") {
                    StoreError::AlreadyExists(r.task_id.clone())
                } else {
                    unavailable(
                        "UpdateItem",
                        &aws_sdk_dynamodb::error::DisplayErrorContext(&e),
                    )
                }
            })?;
        Ok(())
    }

    /// The owner's task, unless it does not exist, is another agent's, or has expired.
    pub async fn get(&self, owner: &str, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(partition(owner)))
            .key("sk", s(task_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| {
                unavailable("GetItem", &aws_sdk_dynamodb::error::DisplayErrorContext(&e))
            })?;
        Ok(out
            .item()
            .and_then(|i| parse(owner, i))
            .filter(|r| r.expires_ms() > now_ms()))
    }

    /// The owner's live tasks, `limit` at most per page, after the task id `after`.
    pub async fn list(
        &self,
        owner: &str,
        after: Option<&str>,
        limit: i32,
    ) -> Result<Page, StoreError> {
        let mut q = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(partition(owner)))
            .limit(limit)
            .consistent_read(true);
        if let Some(after) = after {
            q = q
                .exclusive_start_key("pk", s(partition(owner)))
                .exclusive_start_key("sk", s(after));
        }
        let out = q
            .send()
            .await
            .map_err(|e| unavailable("Query", &aws_sdk_dynamodb::error::DisplayErrorContext(&e)))?;
        let now = now_ms();
        let tasks = out
            .items()
            .iter()
            .filter_map(|i| parse(owner, i))
            .filter(|r| r.expires_ms() > now)
            .collect();
        let next = out
            .last_evaluated_key()
            .and_then(|k| k.get("sk"))
            .and_then(|v| v.as_s().ok())
            .cloned();
        Ok(Page { tasks, next })
    }

    /// One conditional update of a live task: `set` (an update expression over `values`)
    /// applies only when `condition` holds.
    async fn change(
        &self,
        owner: &str,
        task_id: &str,
        set: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Changed, StoreError> {
        let now = now_ms();
        let mut u = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(partition(owner)))
            .key("sk", s(task_id))
            .update_expression(format!("SET updated_ms = :now, {set}"))
            .condition_expression(format!(
                "attribute_exists(pk) AND expires_ms > :now AND ({condition})"
            ))
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (k, v) in values {
            u = u.expression_attribute_values(k, v);
        }
        match u.send().await {
            Ok(out) => Ok(out
                .attributes()
                .and_then(|i| parse(owner, i))
                .map_or(Changed::Missing, Changed::Done)),
            Err(e) => {
                let old = crate::store::condition_failed_item(&e)?;
                Ok(old
                    .as_ref()
                    .and_then(|i| parse(owner, i))
                    .filter(|r| r.expires_ms() > now)
                    .map_or(Changed::Missing, Changed::Refused))
            }
        }
    }

    /// Cancels a working task.
    pub async fn cancel(&self, owner: &str, task_id: &str) -> Result<Changed, StoreError> {
        self.change(
            owner,
            task_id,
            "#st = :cancelled, status_message = :m",
            "#st = :working",
            vec![
                (":cancelled", s("cancelled")),
                (":working", s("working")),
                (":m", s("The task was cancelled by request.")),
            ],
        )
        .await
    }

    /// Marks a working task as picked up by a worker (once: a redelivered event finds it
    /// started and does nothing).
    pub async fn claim(&self, owner: &str, task_id: &str) -> Result<Changed, StoreError> {
        self.change(
            owner,
            task_id,
            "started = :t",
            "#st = :working AND attribute_not_exists(started)",
            vec![
                (":t", AttributeValue::Bool(true)),
                (":working", s("working")),
            ],
        )
        .await
    }

    /// Records progress of a working task.
    pub async fn progress(
        &self,
        owner: &str,
        task_id: &str,
        progress: f64,
        total: Option<f64>,
        message: Option<&str>,
    ) -> Result<Changed, StoreError> {
        let mut set = String::from("progress = :p");
        let mut values = vec![(":p", n(progress)), (":working", s("working"))];
        if let Some(t) = total {
            set.push_str(", progress_total = :t");
            values.push((":t", n(t)));
        }
        if let Some(m) = message {
            set.push_str(", status_message = :m");
            values.push((":m", s(m)));
        }
        self.change(owner, task_id, &set, "#st = :working", values)
            .await
    }

    /// Ends a working task (a cancelled one stays cancelled); `system` marks a platform
    /// failure.
    pub async fn finish(
        &self,
        owner: &str,
        task_id: &str,
        status: TaskStatus,
        message: &str,
        result: &Value,
        system: bool,
    ) -> Result<Changed, StoreError> {
        self.change(
            owner,
            task_id,
            "#st = :s, status_message = :m, result_json = :r, system_failure = :sys",
            "#st = :working",
            vec![
                (":s", s(status.as_str())),
                (":m", s(message)),
                (":r", s(result.to_string())),
                (":sys", AttributeValue::Bool(system)),
                (":working", s("working")),
            ],
        )
        .await
    }

    /// Fails a working task whose run is overdue (lost, killed or over its limit).
    pub async fn fail_overdue(
        &self,
        owner: &str,
        task_id: &str,
        message: &str,
        result: &Value,
    ) -> Result<Changed, StoreError> {
        self.change(
            owner,
            task_id,
            "#st = :s, status_message = :m, result_json = :r, system_failure = :sys",
            "#st = :working AND run_by_ms < :now",
            vec![
                (":sys", AttributeValue::Bool(true)),
                (":s", s(TaskStatus::Failed.as_str())),
                (":m", s(message)),
                (":r", s(result.to_string())),
                (":working", s("working")),
            ],
        )
        .await
    }
}

/// A stored item as a record; `None` when it is not a well-formed task of `owner`.
fn parse(owner: &str, item: &HashMap<String, AttributeValue>) -> Option<TaskRecord> {
    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let num = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let float = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<f64>().ok())
    };
    if text("pk")? != partition(owner) {
        return None;
    }
    Some(TaskRecord {
        task_id: text("sk")?,
        owner: owner.to_owned(),
        tool: text("tool")?,
        status: TaskStatus::parse(&text("state")?)?,
        status_message: text("status_message"),
        progress: float("progress").map(|p| (p, float("progress_total"))),
        created_ms: num("created_ms")?,
        updated_ms: num("updated_ms")?,
        ttl_ms: num("ttl_ms")?,
        run_by_ms: num("run_by_ms")?,
        started: item
            .get("started")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
        args_hash: text("args_hash")?,
        request_id: text("request_id").unwrap_or_default(),
        result: text("result_json").and_then(|r| serde_json::from_str(&r).ok()),
        system_failure: item
            .get("system_failure")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
    })
}

/// A run's [`TaskRecordLink`] on its record in the tollgate table.
#[derive(Debug)]
pub struct RecordLink {
    store: TaskStore,
    owner: String,
    task_id: String,
}

impl RecordLink {
    /// The link to `task_id` of `owner`.
    pub fn new(store: TaskStore, owner: &str, task_id: &str) -> Box<Self> {
        Box::new(Self {
            store,
            owner: owner.to_owned(),
            task_id: task_id.to_owned(),
        })
    }
}

fn state_of(status: TaskStatus) -> TaskState {
    match status {
        TaskStatus::Working => TaskState::Working,
        TaskStatus::Cancelled => TaskState::Cancelled,
        _ => TaskState::Ended,
    }
}

#[async_trait::async_trait]
impl TaskRecordLink for RecordLink {
    async fn progress(
        &self,
        progress: f64,
        total: Option<f64>,
        message: Option<&str>,
    ) -> Result<TaskState, String> {
        match self
            .store
            .progress(&self.owner, &self.task_id, progress, total, message)
            .await
        {
            Ok(Changed::Done(_)) => Ok(TaskState::Working),
            Ok(Changed::Refused(r)) => Ok(state_of(r.status)),
            Ok(_) => Ok(TaskState::Ended),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn state(&self) -> Result<TaskState, String> {
        match self.store.get(&self.owner, &self.task_id).await {
            Ok(Some(r)) => Ok(state_of(r.status)),
            Ok(None) => Ok(TaskState::Ended),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;

    fn config(pairs: &[(&str, &str)]) -> Result<TaskConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TaskConfig::from_lookup(&|k| map.get(k).cloned())
    }

    #[test]
    fn ttl_is_defaulted_and_bounded() {
        let c = config(&[("TOLLGATE_TASK_MAX_TTL_SECS", "60")]).expect("config");
        assert_eq!(
            c.grant_ttl(None),
            60_000,
            "default 3600 s cut to the maximum"
        );
        assert_eq!(c.grant_ttl(Some(5_000)), 5_000);
        assert_eq!(c.grant_ttl(Some(10)), 1_000, "at least one second");
        assert_eq!(c.grant_ttl(Some(u64::MAX)), 60_000);
        let c = config(&[]).expect("config");
        assert_eq!(c.grant_ttl(None), 3_600_000);
    }

    #[test]
    fn zero_limits_are_refused() {
        assert!(config(&[("TOLLGATE_TASK_MAX_RUN_SECS", "0")]).is_err());
        assert!(config(&[("TOLLGATE_TASK_POLL_INTERVAL_MS", "x")]).is_err());
    }

    #[test]
    fn task_json_has_the_spec_fields() {
        let r = TaskRecord {
            task_id: "t-1".into(),
            owner: "a".into(),
            tool: "x".into(),
            status: TaskStatus::Working,
            status_message: Some("half".into()),
            progress: Some((5.0, Some(10.0))),
            created_ms: 1_764_460_800_000,
            updated_ms: 1_764_460_801_000,
            ttl_ms: 60_000,
            run_by_ms: 0,
            started: true,
            args_hash: String::new(),
            request_id: String::new(),
            result: None,
            system_failure: false,
        };
        let v = r.to_json(Duration::from_millis(500));
        assert_eq!(v["taskId"], "t-1");
        assert_eq!(v["status"], "working");
        assert_eq!(v["createdAt"], "2025-11-30T00:00:00.000Z");
        assert_eq!(v["lastUpdatedAt"], "2025-11-30T00:00:01.000Z");
        assert_eq!(v["ttl"], 60_000);
        assert_eq!(v["pollInterval"], 500);
        assert_eq!(v["statusMessage"], "half");
        assert_eq!(v["_meta"][META_PROGRESS]["total"], 10.0);
        let done = TaskRecord {
            status: TaskStatus::Completed,
            progress: None,
            ..r
        };
        let v = done.to_json(Duration::from_millis(500));
        assert!(v.get("pollInterval").is_none(), "no polling once terminal");
        assert!(v.get("_meta").is_none());
    }
}
