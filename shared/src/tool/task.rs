//! What a tool knows of tasks: whether it may run as one ([`TaskSupport`]) and, when it does,
//! its link to the task's record ([`TaskHandle`]: progress and cancellation).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether a tool may, or must, be called as a task (the tool's `execution.taskSupport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskSupport {
    /// Never as a task (the default): a task-augmented call is refused with -32601.
    #[default]
    Forbidden,
    /// Either way.
    Optional,
    /// Only as a task: a plain call is refused with -32601.
    Required,
}

impl TaskSupport {
    /// The spec's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forbidden => "forbidden",
            Self::Optional => "optional",
            Self::Required => "required",
        }
    }
}

/// What a task's run reads and writes on its record, through [`TaskHandle`]. The task layer
/// implements it on the task records.
#[async_trait::async_trait]
pub trait TaskRecordLink: Send + Sync + std::fmt::Debug {
    /// Records progress (and a status message) on the task.
    async fn progress(
        &self,
        progress: f64,
        total: Option<f64>,
        message: Option<&str>,
    ) -> Result<TaskState, String>;
    /// The task's state as recorded.
    async fn state(&self) -> Result<TaskState, String>;
}

/// A task's state as a run sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Still running.
    Working,
    /// Cancelled by its owner: the run should stop.
    Cancelled,
    /// Ended (or gone): nothing more to report.
    Ended,
}

/// A run's link to its task, on [`crate::tool::ToolContext::task`]: progress reports (written
/// at a bounded rate) and the cancellation signal.
#[derive(Debug)]
pub struct TaskHandle {
    link: Box<dyn TaskRecordLink>,
    task_id: String,
    interval: Duration,
    last_write: Mutex<Option<Instant>>,
    cancelled: tokio::sync::watch::Sender<bool>,
}

impl TaskHandle {
    /// A handle on `task_id`, whose record is reached through `link`; progress is written at
    /// most once per `interval`.
    pub fn new(link: Box<dyn TaskRecordLink>, task_id: &str, interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            link,
            task_id: task_id.to_owned(),
            interval,
            last_write: Mutex::new(None),
            cancelled: tokio::sync::watch::channel(false).0,
        })
    }

    /// The task id.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Whether the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// Resolves once the task is cancelled (never, if it is not).
    pub async fn cancelled(&self) {
        let mut rx = self.cancelled.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Marks the task cancelled for the handler.
    pub fn cancel(&self) {
        self.cancelled.send_replace(true);
    }

    /// Records progress (and a status message) on the task, at most once per interval; a
    /// report inside the interval is dropped. A report finding the task no longer working
    /// (cancelled) trips the cancellation.
    pub async fn report(&self, progress: f64, total: Option<f64>, message: Option<&str>) {
        {
            let mut last = self
                .last_write
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < self.interval) {
                return;
            }
            *last = Some(Instant::now());
        }
        let message = message.map(|m| m.chars().take(512).collect::<String>());
        match self
            .link
            .progress(progress, total, message.as_deref())
            .await
        {
            Ok(TaskState::Cancelled) => self.cancel(),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "task progress not recorded"),
        }
    }

    /// Reads the record every `every` and trips the cancellation when it says `cancelled`;
    /// ends when the handle is dropped elsewhere or the task leaves `working`.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(&self);
        drop(self);
        loop {
            tokio::time::sleep(every).await;
            let Some(handle) = weak.upgrade() else { return };
            match handle.link.state().await {
                Ok(TaskState::Working) => {}
                Ok(TaskState::Cancelled) => {
                    handle.cancel();
                    return;
                }
                Ok(TaskState::Ended) => return,
                Err(e) => tracing::warn!(error = %e, "task record not readable; still running"),
            }
        }
    }
}
