//! Task-augmented `tools/call` (create the record, start the run, answer with the task),
//! the asynchronous run itself, and the `tasks/*` methods served from the record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{CallToolResult, ContentBlock as Content};
use serde_json::{Value, json};
use tracing::Instrument as _;

use super::{CallFacts, Invocation, Server, printable, with_rate_limit};
use crate::audit::CallStatus;
use crate::auth::Principal;
use crate::catalog::RegisteredTool;
use crate::error::Rejection;
use crate::http::Response;
use crate::protocol::jsonrpc::{RequestId, RpcRequest};
use crate::protocol::version::{Era, Negotiated};
use crate::store::now_ms;
use crate::task::{
    Changed, META_IMMEDIATE_RESPONSE, META_RELATED_TASK, RecordLink, TaskHandle, TaskJob,
    TaskRecord, TaskStatus, TaskSupport,
};
use crate::telemetry;
use crate::telemetry::trace::TraceContext;
use crate::tool::ToolContext;

/// Tasks per `tasks/list` page.
const LIST_PAGE: i32 = 50;
/// Longest task id looked up (ours are 36-character UUIDs).
const MAX_TASK_ID: usize = 64;
/// How often `tasks/result` re-reads an unfinished task.
const RESULT_POLL: Duration = Duration::from_millis(250);

fn not_found() -> Rejection {
    Rejection::InvalidParams("Failed to retrieve task: Task not found".into())
}

impl Server {
    /// Whether a `tools/call` runs as a task: `Ok(Some(requested ttl))` for a task,
    /// `Ok(None)` for a plain call, `Err((rejection, audit reason))` when the tool's task
    /// support refuses the call's form. A server that does not declare tasks at this version
    /// ignores the `task` field (spec), but still refuses a plain call of a task-only tool.
    pub(super) fn task_mode(
        &self,
        rpc: &RpcRequest,
        negotiated: &Negotiated,
        tool: &RegisteredTool,
    ) -> Result<Option<Option<u64>>, (Rejection, &'static str)> {
        if negotiated.era == Era::Modern {
            // The extension: the server decides; a client that opted in gets a task from a
            // tool that allows one, a client that did not gets a plain call (or -32021).
            let opted = self.catalog.has_tasks() && opted_in(rpc);
            return match (opted, tool.task_support()) {
                (_, TaskSupport::Forbidden) => Ok(None),
                (true, _) => Ok(Some(None)),
                (false, TaskSupport::Optional) => Ok(None),
                (false, _) => Err((Rejection::MissingTasksCapability, "task_required")),
            };
        }
        let served = self.catalog.has_tasks() && negotiated.version == crate::task::TASKS_VERSION;
        let task = rpc.params.get("task").filter(|_| served);
        match (task, tool.task_support()) {
            (None, TaskSupport::Required) => Err((
                Rejection::MethodNotFound { http_404: false },
                "task_required",
            )),
            (None, _) => Ok(None),
            (Some(_), TaskSupport::Forbidden) => Err((
                Rejection::MethodNotFound { http_404: false },
                "task_forbidden",
            )),
            (Some(Value::Object(t)), _) => match t.get("ttl") {
                None | Some(Value::Null) => Ok(Some(None)),
                Some(v) => v.as_u64().map(|ttl| Some(Some(ttl))).ok_or((
                    Rejection::InvalidParams(
                        "params.task.ttl must be a non-negative integer (milliseconds)".into(),
                    ),
                    "invalid_params",
                )),
            },
            (Some(_), _) => Err((
                Rejection::InvalidParams("params.task must be an object".into()),
                "invalid_params",
            )),
        }
    }

    /// A task-augmented call after authentication and scope: budget, validation, the record,
    /// the run started, and the `CreateTaskResult`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn create_task(
        &self,
        rpc: &RpcRequest,
        negotiated: &Negotiated,
        trace: &TraceContext,
        principal: &Principal,
        tool: &RegisteredTool,
        args: &Value,
        ttl: Option<u64>,
        facts: &mut CallFacts<'_>,
    ) -> Response {
        let Some(starter) = self.task_starter.clone() else {
            tracing::error!(
                tool = tool.spec().name,
                "task-augmented call but no task runner is configured"
            );
            self.write_audit(facts, CallStatus::SystemError, Some("task_runner_missing"));
            return self.reject(Rejection::Unavailable { retry_after_s: 1 }, Some(&rpc.id));
        };
        let admission = match self.admit(principal, tool, facts).await {
            Ok(a) => a,
            Err(r) => return self.reject(r, Some(&rpc.id)),
        };
        if let Err(message) = tool.validate(args) {
            // No task is created for arguments that cannot run: the error says what to fix.
            self.write_audit(facts, CallStatus::InvalidInput, Some("schema_validation"));
            telemetry::record_error("schema_validation", false);
            return with_rate_limit(
                self.reject(Rejection::InvalidParams(message), Some(&rpc.id)),
                admission.as_ref(),
            );
        }
        facts.validated = true;
        let config = &self.config.tasks;
        let created = now_ms();
        let limit = self.task_limit(tool);
        let record = TaskRecord {
            task_id: uuid::Uuid::new_v4().to_string(),
            owner: principal.agent_id.clone(),
            tool: tool.spec().name.to_owned(),
            status: TaskStatus::Working,
            status_message: Some("The task is queued.".into()),
            progress: None,
            created_ms: created,
            updated_ms: created,
            ttl_ms: config.grant_ttl(ttl),
            run_by_ms: created
                .saturating_add(millis(limit))
                .saturating_add(millis(config.grace)),
            started: false,
            args_hash: crate::idempotency::arguments_hash(args),
            request_id: facts.inv.request_id.clone(),
            result: None,
            system_failure: false,
        };
        facts.task_id = Some(record.task_id.clone());
        if let Err(e) = self.tasks.create(&record).await {
            tracing::error!(error = %e, request_id = %facts.inv.request_id, "task record not created");
            self.write_audit(
                facts,
                CallStatus::SystemError,
                Some("task_store_unavailable"),
            );
            return self.reject(Rejection::Unavailable { retry_after_s: 1 }, Some(&rpc.id));
        }
        let job = TaskJob {
            task_id: record.task_id.clone(),
            principal: principal.clone(),
            tool: record.tool.clone(),
            arguments: args.clone(),
            // Inside this request's server span: the run's spans join this trace.
            trace: trace
                .outgoing_headers()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            protocol_version: negotiated.version.clone(),
        };
        if let Err(e) = starter.start(&job).await {
            tracing::error!(error = %e, request_id = %facts.inv.request_id, "task run not started");
            let result = self.system_error_value(&facts.inv.request_id);
            let _ = self
                .tasks
                .finish(
                    &record.owner,
                    &record.task_id,
                    TaskStatus::Failed,
                    "The task could not be started.",
                    &result,
                    true,
                )
                .await;
            self.write_audit(facts, CallStatus::SystemError, Some("task_start_failed"));
            return self.reject(Rejection::Unavailable { retry_after_s: 1 }, Some(&rpc.id));
        }
        self.write_audit(facts, CallStatus::TaskCreated, None);
        if negotiated.era == Era::Modern {
            let mut resp = self.ok(
                &rpc.id,
                record.to_extension_json(config.poll_interval, false),
                negotiated.era,
            );
            set_result_type(&mut resp, "task");
            return with_rate_limit(resp, admission.as_ref());
        }
        let body = json!({
            "task": record.to_json(config.poll_interval),
            "_meta": {
                META_IMMEDIATE_RESPONSE: format!(
                    "The tool {} is running as task {}; its result will be available when the \
                     task completes.",
                    record.tool, record.task_id
                ),
            },
        });
        with_rate_limit(self.ok(&rpc.id, body, negotiated.era), admission.as_ref())
    }

    /// How long a task run of `tool` may take.
    fn task_limit(&self, tool: &RegisteredTool) -> Duration {
        let max = self.config.tasks.max_run;
        tool.task_time_limit().map_or(max, |l| l.min(max))
    }

    fn system_error_value(&self, request_id: &str) -> Value {
        let result = CallToolResult::error(vec![Content::text(format!(
            "The tool failed because of an internal error (reference {request_id}). \
             Retrying later may succeed; the arguments were not at fault."
        ))]);
        serde_json::to_value(result).unwrap_or_else(|_| json!({"content": [], "isError": true}))
    }

    /// `tasks/get`, `tasks/result`, `tasks/list`, `tasks/cancel` for an authenticated caller:
    /// only its own tasks, of tools this server serves and it still holds the scope of.
    pub(super) async fn tasks_method(
        &self,
        rpc: &RpcRequest,
        principal: &Principal,
        inv: &Invocation,
        negotiated: &Negotiated,
    ) -> Response {
        if negotiated.era == Era::Modern {
            return self.extension_method(rpc, principal).await;
        }
        let era = crate::protocol::version::Era::Legacy;
        if rpc.method == "tasks/list" {
            return self.tasks_list(rpc, principal).await;
        }
        let record = match self.requested_task(rpc, principal).await {
            Ok(r) => r,
            Err(resp) => return resp,
        };
        let poll = self.config.tasks.poll_interval;
        match rpc.method.as_str() {
            "tasks/get" => self.ok(&rpc.id, record.to_json(poll), era),
            "tasks/cancel" => self.tasks_cancel(&rpc.id, principal, record).await,
            "tasks/result" => self.tasks_result(&rpc.id, principal, record, inv).await,
            _ => self.reject(Rejection::MethodNotFound { http_404: false }, Some(&rpc.id)),
        }
    }

    /// The task `params.taskId` names, if the caller may see it; else the error answer.
    async fn requested_task(
        &self,
        rpc: &RpcRequest,
        principal: &Principal,
    ) -> Result<TaskRecord, Response> {
        let Some(task_id) = rpc.params.get("taskId").and_then(Value::as_str) else {
            return Err(self.reject(
                Rejection::InvalidParams("params.taskId must be a string".into()),
                Some(&rpc.id),
            ));
        };
        match self.visible_task(principal, task_id).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(self.reject(not_found(), Some(&rpc.id))),
            Err(r) => Err(self.reject(r, Some(&rpc.id))),
        }
    }

    /// The caller's live task, failed first when its run is overdue; `None` for an unknown
    /// id, another agent's task, an expired one, or one of a tool this caller may not use.
    async fn visible_task(
        &self,
        principal: &Principal,
        task_id: &str,
    ) -> Result<Option<TaskRecord>, Rejection> {
        if task_id.is_empty() || task_id.len() > MAX_TASK_ID {
            return Ok(None);
        }
        let record = self
            .tasks
            .get(&principal.agent_id, task_id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "task record unavailable");
                Rejection::Unavailable { retry_after_s: 1 }
            })?;
        match record.filter(|r| self.may_see(principal, r)) {
            Some(r) => self.settle_overdue(r).await.map(Some),
            None => Ok(None),
        }
    }

    fn may_see(&self, principal: &Principal, r: &TaskRecord) -> bool {
        self.catalog
            .get(&r.tool)
            .is_some_and(|t| principal.has_scope(t.spec().scope))
    }

    /// A working task past its `run_by_ms` ends `failed` (its run was lost, killed or overran).
    async fn settle_overdue(&self, r: TaskRecord) -> Result<TaskRecord, Rejection> {
        if r.status != TaskStatus::Working || now_ms() <= r.run_by_ms {
            return Ok(r);
        }
        let result = self.system_error_value(&r.request_id);
        let message = "The task's run stopped without finishing (it was lost, killed or ran past \
                       its time limit).";
        match self
            .tasks
            .fail_overdue(&r.owner, &r.task_id, message, &result)
            .await
        {
            Ok(Changed::Done(now) | Changed::Refused(now)) => {
                if now.status == TaskStatus::Failed && now.system_failure {
                    tracing::warn!(task_id = %now.task_id, tool = %now.tool, "task failed: run overdue");
                }
                Ok(now)
            }
            Ok(Changed::Missing) => Ok(r),
            Err(e) => {
                tracing::error!(error = %e, "task record unavailable");
                Err(Rejection::Unavailable { retry_after_s: 1 })
            }
        }
    }

    async fn tasks_cancel(&self, id: &RequestId, principal: &Principal, r: TaskRecord) -> Response {
        let era = crate::protocol::version::Era::Legacy;
        let poll = self.config.tasks.poll_interval;
        let terminal = |r: &TaskRecord| {
            Rejection::InvalidParams(format!(
                "Cannot cancel task: already in terminal status '{}'",
                r.status.as_str()
            ))
        };
        if r.status.is_terminal() {
            return self.reject(terminal(&r), Some(id));
        }
        match self.tasks.cancel(&principal.agent_id, &r.task_id).await {
            Ok(Changed::Done(now)) => self.ok(id, now.to_json(poll), era),
            Ok(Changed::Refused(now)) => self.reject(terminal(&now), Some(id)),
            Ok(Changed::Missing) => self.reject(not_found(), Some(id)),
            Err(e) => {
                tracing::error!(error = %e, "task record unavailable");
                self.reject(Rejection::Unavailable { retry_after_s: 1 }, Some(id))
            }
        }
    }

    /// The tool's result once the task is terminal; waits for an unfinished one up to
    /// `TOLLGATE_TASK_RESULT_WAIT_MS` (within the invocation's deadline), then answers with
    /// an error saying to poll again.
    async fn tasks_result(
        &self,
        id: &RequestId,
        principal: &Principal,
        mut r: TaskRecord,
        inv: &Invocation,
    ) -> Response {
        let era = crate::protocol::version::Era::Legacy;
        let wait_until = (Instant::now() + self.config.tasks.result_wait).min(
            inv.deadline
                .checked_sub(self.config.deadline_margin + Duration::from_secs(1))
                .unwrap_or(inv.deadline),
        );
        while !r.status.is_terminal() {
            if Instant::now() + RESULT_POLL > wait_until {
                let body = crate::protocol::jsonrpc::error_body(
                    Some(id),
                    crate::protocol::codes::TASK_NOT_FINISHED,
                    "The task has not finished yet; poll tasks/get and call tasks/result again \
                     once its status is completed, failed or cancelled.",
                    Some(json!({
                        "reason": "task_not_finished",
                        "retry": "after_poll",
                        "taskId": r.task_id,
                        "status": r.status.as_str(),
                        "pollInterval": millis(self.config.tasks.poll_interval),
                    })),
                );
                return Response::json(200, &body);
            }
            tokio::time::sleep(RESULT_POLL).await;
            r = match self.visible_task(principal, &r.task_id).await {
                Ok(Some(now)) => now,
                Ok(None) => return self.reject(not_found(), Some(id)),
                Err(e) => return self.reject(e, Some(id)),
            };
        }
        let mut result = match (r.status, r.result) {
            (_, Some(v)) => v,
            (TaskStatus::Cancelled, None) => {
                serde_json::to_value(CallToolResult::error(vec![Content::text(
                    "The task was cancelled before the tool finished; it has no result.",
                )]))
                .unwrap_or_else(|_| json!({"content": [], "isError": true}))
            }
            _ => self.system_error_value(&r.request_id),
        };
        if let Some(obj) = result.as_object_mut() {
            let meta = obj.entry("_meta").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert(META_RELATED_TASK.to_owned(), json!({"taskId": r.task_id}));
            }
        }
        self.ok(id, result, era)
    }

    async fn tasks_list(&self, rpc: &RpcRequest, principal: &Principal) -> Response {
        let era = crate::protocol::version::Era::Legacy;
        let after = match rpc.params.get("cursor") {
            None | Some(Value::Null) => None,
            Some(Value::String(c)) => match decode_cursor(c) {
                Some(after) => Some(after),
                None => {
                    return self.reject(
                        Rejection::InvalidParams("Invalid cursor".into()),
                        Some(&rpc.id),
                    );
                }
            },
            Some(_) => {
                return self.reject(
                    Rejection::InvalidParams("params.cursor must be a string".into()),
                    Some(&rpc.id),
                );
            }
        };
        let page = match self
            .tasks
            .list(&principal.agent_id, after.as_deref(), LIST_PAGE)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "task records unavailable");
                return self.reject(Rejection::Unavailable { retry_after_s: 1 }, Some(&rpc.id));
            }
        };
        let mut tasks = Vec::with_capacity(page.tasks.len());
        for r in page.tasks {
            if !self.may_see(principal, &r) {
                continue;
            }
            match self.settle_overdue(r).await {
                Ok(r) => tasks.push(r.to_json(self.config.tasks.poll_interval)),
                Err(e) => return self.reject(e, Some(&rpc.id)),
            }
        }
        let mut result = json!({"tasks": tasks});
        if let Some(next) = page.next {
            result["nextCursor"] = json!(encode_cursor(&next));
        }
        self.ok(&rpc.id, result, era)
    }

    /// Runs a task's tool (the asynchronous invocation): once per task, under the tool's time
    /// limit, with progress and cancellation on its context; ends the record and writes the
    /// task's second audit record.
    pub async fn run_task(&self, job: TaskJob, inv: Invocation) {
        let mut headers = http::HeaderMap::new();
        for (k, v) in &job.trace {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                headers.insert(name, value);
            }
        }
        let trace = TraceContext::extract(None, &headers, inv.trace_id.as_deref());
        let Some(tool) = self.catalog.get(&job.tool).cloned() else {
            tracing::error!(tool = %printable(&job.tool), "task for a tool this function does not serve");
            return;
        };
        let span =
            telemetry::server_span("tools/call", Some(tool.spec().name), &job.task_id, &trace);
        self.run_task_inner(job, &tool, &trace, &inv)
            .instrument(span)
            .await;
    }

    async fn run_task_inner(
        &self,
        job: TaskJob,
        tool: &RegisteredTool,
        trace: &TraceContext,
        inv: &Invocation,
    ) {
        let started = Instant::now();
        let owner = job.principal.agent_id.clone();
        tracing::Span::current().record("enduser.id", owner.as_str());
        let record = match self.tasks.claim(&owner, &job.task_id).await {
            Ok(Changed::Done(r)) => r,
            Ok(Changed::Refused(r)) => {
                tracing::info!(task_id = %job.task_id, status = r.status.as_str(), "task not run: already started or ended");
                return;
            }
            Ok(Changed::Missing) => {
                tracing::info!(task_id = %job.task_id, "task not run: unknown or expired");
                return;
            }
            Err(e) => {
                // Not claimed: the record fails it once overdue.
                tracing::error!(error = %e, task_id = %job.task_id, "task record unavailable; not run");
                return;
            }
        };
        let mut facts = CallFacts {
            inv,
            trace,
            started,
            version: &job.protocol_version,
            principal: Some(&job.principal),
            denied_agent: None,
            tool: Some(tool),
            args: &job.arguments,
            validated: true,
            budget_layer: None,
            budget_note: None,
            idempotency_key: None,
            task_id: Some(job.task_id.clone()),
        };
        let config = &self.config.tasks;
        let handle = TaskHandle::new(
            RecordLink::new(self.tasks.clone(), &owner, &job.task_id),
            &job.task_id,
            config.progress_interval,
        );
        let (status, reason, result) = if crate::idempotency::arguments_hash(&job.arguments)
            != record.args_hash
        {
            facts.validated = false;
            tracing::error!(task_id = %job.task_id, "task arguments differ from the recorded hash; not run");
            (
                CallStatus::SystemError,
                Some("task_arguments_mismatch"),
                CallToolResult::error(vec![Content::text(
                    "The task could not run: its arguments were altered.",
                )]),
            )
        } else {
            tokio::spawn(handle.clone().watch(config.cancel_check));
            let limit_until = record.run_by_ms.saturating_sub(millis(config.grace));
            let left = Duration::from_millis(limit_until.saturating_sub(now_ms()));
            let deadline = (Instant::now() + left).min(
                inv.deadline
                    .checked_sub(self.config.deadline_margin)
                    .unwrap_or(inv.deadline),
            );
            let ctx = ToolContext {
                principal: Arc::new(job.principal.clone()),
                request_id: inv.request_id.clone(),
                deadline,
                clients: self.clients.clone(),
                trace: trace.clone(),
                provider_token: None,
                task: Some(handle.clone()),
            };
            tokio::select! {
                done = self.execute(tool, ctx, &job.arguments, deadline, inv) => done,
                () = handle.cancelled() => (
                    CallStatus::Cancelled,
                    None,
                    CallToolResult::error(vec![Content::text("The task was cancelled.")]),
                ),
            }
        };
        let mut value = serde_json::to_value(&result)
            .unwrap_or_else(|_| json!({"content": [], "isError": true}));
        let (mut task_status, mut message, mut system) = match status {
            CallStatus::Success => (TaskStatus::Completed, "The tool completed.", false),
            CallStatus::BusinessError => (TaskStatus::Failed, "The tool reported an error.", false),
            CallStatus::Cancelled => (
                TaskStatus::Cancelled,
                "The task was cancelled by request.",
                false,
            ),
            _ => (
                TaskStatus::Failed,
                "The tool failed because of an internal error.",
                true,
            ),
        };
        let mut reason = reason;
        if value.to_string().len() > config.max_result_bytes {
            tracing::error!(task_id = %job.task_id, "task result over TOLLGATE_TASK_MAX_RESULT_BYTES; not stored");
            value = serde_json::to_value(CallToolResult::error(vec![Content::text(
                "The tool's result was too large to keep, so it was not stored.",
            )]))
            .unwrap_or_else(|_| json!({"content": [], "isError": true}));
            (task_status, message, system) = (
                TaskStatus::Failed,
                "The tool's result was too large to keep.",
                true,
            );
            reason = Some("task_result_too_large");
        }
        let mut audit_status = match task_status {
            TaskStatus::Cancelled => CallStatus::Cancelled,
            TaskStatus::Failed if system => CallStatus::SystemError,
            _ => status,
        };
        match self
            .tasks
            .finish(&owner, &job.task_id, task_status, message, &value, system)
            .await
        {
            Ok(Changed::Done(_)) => {}
            Ok(Changed::Refused(r)) if r.status == TaskStatus::Cancelled => {
                audit_status = CallStatus::Cancelled;
            }
            Ok(Changed::Refused(r)) => {
                tracing::warn!(task_id = %job.task_id, status = r.status.as_str(), "task already ended; outcome not stored");
            }
            Ok(Changed::Missing) => {
                tracing::info!(task_id = %job.task_id, "task expired before its run ended");
            }
            Err(e) => {
                tracing::error!(error = %e, task_id = %job.task_id, "task outcome not stored; the task fails once overdue");
            }
        }
        // The watcher holds only a weak reference: it ends with this run.
        drop(handle);
        if audit_status != CallStatus::Success {
            telemetry::record_error(
                reason.unwrap_or(match audit_status {
                    CallStatus::Cancelled => "cancelled",
                    _ => "tool_error",
                }),
                audit_status == CallStatus::SystemError,
            );
        }
        self.write_audit(&facts, audit_status, reason);
    }
}

impl Server {
    /// `tasks/get`, `tasks/update`, `tasks/cancel` of the 2026-07-28 extension.
    async fn extension_method(&self, rpc: &RpcRequest, principal: &Principal) -> Response {
        let era = Era::Modern;
        if !opted_in(rpc) {
            return self.reject(Rejection::MissingTasksCapability, Some(&rpc.id));
        }
        let record = match self.requested_task(rpc, principal).await {
            Ok(r) => r,
            Err(resp) => return resp,
        };
        let poll = self.config.tasks.poll_interval;
        match rpc.method.as_str() {
            "tasks/get" => self.ok(&rpc.id, record.to_extension_json(poll, true), era),
            // No input is ever requested: an update changes nothing.
            "tasks/update" => self.ok(&rpc.id, json!({}), era),
            "tasks/cancel" => {
                // An acknowledgement, also for a task already terminal (idempotent).
                if !record.status.is_terminal()
                    && let Err(e) = self
                        .tasks
                        .cancel(&principal.agent_id, &record.task_id)
                        .await
                {
                    tracing::error!(error = %e, "task record unavailable");
                    return self.reject(Rejection::Unavailable { retry_after_s: 1 }, Some(&rpc.id));
                }
                self.ok(&rpc.id, json!({}), era)
            }
            _ => self.reject(Rejection::MethodNotFound { http_404: true }, Some(&rpc.id)),
        }
    }
}

/// Whether a 2026-07-28 request opted into the tasks extension.
pub(super) fn opted_in(rpc: &RpcRequest) -> bool {
    rpc.meta()
        .and_then(|m| m.get(crate::protocol::META_CLIENT_CAPABILITIES))
        .and_then(|c| c.get("extensions"))
        .and_then(|e| e.get(crate::task::TASKS_EXTENSION))
        .is_some()
}

/// Sets `resultType` of a result response (the extension's `"task"`).
fn set_result_type(resp: &mut Response, result_type: &str) {
    if let Some(mut body) = resp.body_json() {
        body["result"]["resultType"] = json!(result_type);
        resp.body = Some(body.to_string());
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn encode_cursor(after: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(after)
}

fn decode_cursor(cursor: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let after = String::from_utf8(bytes).ok()?;
    (!after.is_empty() && after.len() <= MAX_TASK_ID && after.bytes().all(|b| b.is_ascii_graphic()))
        .then_some(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let id = "0b8f4a52-2b7e-4c43-9d59-3e1f6f0c2a11";
        assert_eq!(decode_cursor(&encode_cursor(id)).as_deref(), Some(id));
        assert_eq!(decode_cursor("!!!"), None);
        assert_eq!(decode_cursor(&encode_cursor("")), None);
        assert_eq!(decode_cursor(&encode_cursor(&"x".repeat(65))), None);
    }
}
