//! The conformance fixture's tools for the tasks extension scenarios (`tasks-*`, SEP-2663):
//! `greet`, `slow_compute`, `failing_job`, `protocol_error_job` and `confirm_delete`, by the
//! names and behaviours the suite's "Required server fixtures" give. They run as tasks through
//! tollgate's own task machinery (records in DynamoDB, runs started by
//! [`tollgate::server::in_process::InProcessStarter`], the local stack's background runner).
//!
//! tollgate never returns `InputRequiredResult` (multi-round-trip requests), so no tool here
//! asks the client for input: `confirm_delete` answers without deleting anything, and the
//! suite's `multi_input` and `test_tool_with_task` (input gathered before or during a task) are
//! not provided. `tests/conformance/README.md` lists the checks that fail for that reason.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use tollgate::task::TaskSupport;
use tollgate::{Tool, ToolContext, ToolError, ToolSpec};

use crate::conformance::{NoArguments, spec};

/// Longest `slow_compute` run the fixture accepts, in seconds.
pub const MAX_SECONDS: f64 = 600.0;

/// How long `failing_job` works before it fails ("after ~1s" in the suite).
pub const FAILING_JOB_DELAY: Duration = Duration::from_secs(1);

/// Sleeps for `d`, or less when the call's task is cancelled; whether it slept fully.
async fn work(ctx: &ToolContext, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = ctx.cancelled() => false,
    }
}

/// Arguments of `greet`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GreetInput {
    /// Who to greet.
    pub name: String,
}

/// `greet`: synchronous only (task support `forbidden`), answers `Hello, {name}!`.
#[derive(Debug, Clone, Copy)]
pub struct Greet;

impl Tool for Greet {
    type Input = GreetInput;
    type Output = String;

    fn spec(&self) -> ToolSpec {
        spec(
            "greet",
            "Greet",
            "Answers `Hello, {name}!` at once; never a task.",
        )
    }

    async fn call(&self, _ctx: ToolContext, input: GreetInput) -> Result<String, ToolError> {
        Ok(format!("Hello, {}!", input.name))
    }
}

/// Arguments of `slow_compute`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlowComputeInput {
    /// How long the computation takes, in seconds (0 for an immediate answer).
    #[schemars(range(min = 0.0, max = 600.0))]
    pub seconds: f64,
    /// A label echoed in the result.
    #[serde(default)]
    pub label: Option<String>,
}

/// `slow_compute`: task support `optional`; works `seconds` seconds, reporting progress, then
/// answers. A cancelled task stops at once (and stays `cancelled`).
#[derive(Debug, Clone, Copy)]
pub struct SlowCompute;

impl Tool for SlowCompute {
    type Input = SlowComputeInput;
    type Output = String;

    fn spec(&self) -> ToolSpec {
        spec(
            "slow_compute",
            "Slow compute",
            "Works for `seconds` seconds (0 to 600), then answers with its `label`; runs as a \
             task when the client opted into the tasks extension.",
        )
    }

    fn task_support(&self) -> TaskSupport {
        TaskSupport::Optional
    }

    fn task_time_limit(&self) -> Option<Duration> {
        // The longest accepted run plus a margin for a loaded machine.
        Some(Duration::from_secs_f64(MAX_SECONDS) + Duration::from_secs(60))
    }

    async fn call(&self, ctx: ToolContext, input: SlowComputeInput) -> Result<String, ToolError> {
        let seconds = input.seconds.clamp(0.0, MAX_SECONDS);
        ctx.report_progress(0.0, Some(seconds), Some("Computing."))
            .await;
        if !work(&ctx, Duration::from_secs_f64(seconds)).await {
            return Err(ToolError::business("The computation was cancelled."));
        }
        let label = input.label.as_deref().unwrap_or("computation");
        Ok(format!("Computed {label} in {seconds} s."))
    }
}

/// `failing_job`: task support `required`; fails with a tool error (an `isError` result) after
/// [`FAILING_JOB_DELAY`]. A plain call from a client without the extension is -32021.
#[derive(Debug, Clone, Copy)]
pub struct FailingJob;

impl Tool for FailingJob {
    type Input = NoArguments;
    type Output = String;

    fn spec(&self) -> ToolSpec {
        spec(
            "failing_job",
            "Failing job",
            "Runs only as a task; fails with a tool error after about a second.",
        )
    }

    fn task_support(&self) -> TaskSupport {
        TaskSupport::Required
    }

    async fn call(&self, ctx: ToolContext, _input: NoArguments) -> Result<String, ToolError> {
        work(&ctx, FAILING_JOB_DELAY).await;
        Err(ToolError::business(
            "The job failed: this tool always reports an error.",
        ))
    }
}

/// `protocol_error_job`: task support `optional`; fails with a system error, which tollgate
/// reports as a platform failure: the task ends `failed` with a JSON-RPC `error`, no result.
#[derive(Debug, Clone, Copy)]
pub struct ProtocolErrorJob;

impl Tool for ProtocolErrorJob {
    type Input = NoArguments;
    type Output = String;

    fn spec(&self) -> ToolSpec {
        spec(
            "protocol_error_job",
            "Protocol error job",
            "Fails with an internal (system) error; as a task it ends `failed`.",
        )
    }

    fn task_support(&self) -> TaskSupport {
        TaskSupport::Optional
    }

    async fn call(&self, _ctx: ToolContext, _input: NoArguments) -> Result<String, ToolError> {
        Err(ToolError::system(
            "protocol_error_job always fails with a system error",
        ))
    }
}

/// Arguments of `confirm_delete`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmDeleteInput {
    /// The file that would be deleted.
    #[serde(default)]
    pub filename: Option<String>,
}

/// `confirm_delete`: task support `optional`. The suite's fixture asks the client to confirm
/// (an `elicitation/create` input request); tollgate cannot ask, so the tool deletes nothing
/// and says so, as a declined confirmation would end.
#[derive(Debug, Clone, Copy)]
pub struct ConfirmDelete;

impl Tool for ConfirmDelete {
    type Input = ConfirmDeleteInput;
    type Output = String;

    fn spec(&self) -> ToolSpec {
        spec(
            "confirm_delete",
            "Confirm delete",
            "Would delete `filename` once confirmed; this server cannot ask for the \
             confirmation, so nothing is ever deleted.",
        )
    }

    fn task_support(&self) -> TaskSupport {
        TaskSupport::Optional
    }

    async fn call(
        &self,
        _ctx: ToolContext,
        input: ConfirmDeleteInput,
    ) -> Result<String, ToolError> {
        let file = input.filename.as_deref().unwrap_or("the file");
        Ok(format!(
            "Not deleted: deleting {file} needs a confirmation, and this server cannot ask the \
             client for input."
        ))
    }
}
