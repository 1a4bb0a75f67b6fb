//! The local stack's stand-ins for what Lambda does between functions: forwarding a call to a
//! tool's server in this process ([`InProcessInvoker`]) and running a task in the background of
//! this process ([`InProcessStarter`]), on the same records a deployment writes. Built with the
//! `test-util` feature (the local stack, fixtures and tests), never into a function.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;

use super::forward::{InvokeError, Invoker};
use super::{Invocation, Server};
use crate::http::Response;
use crate::task::{TaskEvent, TaskJob, TaskStarter};

/// Calls tool servers in the same process (the local stack).
#[derive(Debug, Default, Clone)]
pub struct InProcessInvoker {
    servers: HashMap<String, Arc<Server>>,
}

impl InProcessInvoker {
    /// An invoker over the given tool servers, by tool name.
    pub fn new(servers: HashMap<String, Arc<Server>>) -> Self {
        Self { servers }
    }
}

#[async_trait::async_trait]
impl Invoker for InProcessInvoker {
    async fn invoke(
        &self,
        tool: &str,
        event: &ApiGatewayV2httpRequest,
        invocation: &Invocation,
    ) -> Result<Response, InvokeError> {
        let server = self
            .servers
            .get(tool)
            .ok_or_else(|| InvokeError::UnknownTool(tool.to_owned()))?;
        // Round-trip through JSON, as a real Invoke would, so both paths see the same bytes.
        let json =
            serde_json::to_value(event).map_err(|e| InvokeError::Transport(e.to_string()))?;
        let event: ApiGatewayV2httpRequest =
            serde_json::from_value(json).map_err(|e| InvokeError::Transport(e.to_string()))?;
        let resp = server.handle(event, invocation.clone()).await;
        Ok(Response::from_event_response(resp))
    }
}

/// Runs tasks as background tasks of this process (the local stack), on the same records.
#[derive(Debug, Default)]
pub struct InProcessStarter {
    servers: OnceLock<HashMap<String, Weak<Server>>>,
    /// How long a background run may take (the local stack's stand-in for a function timeout).
    timeout: Duration,
}

impl InProcessStarter {
    /// A starter whose runs get `timeout` (their Lambda timeout); servers are set once built.
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            servers: OnceLock::new(),
            timeout,
        })
    }

    /// The tool servers, by tool name (set once, after they are built).
    pub fn set_servers(&self, servers: &HashMap<String, Arc<Server>>) {
        let weak = servers
            .iter()
            .map(|(k, v)| (k.clone(), Arc::downgrade(v)))
            .collect();
        let _ = self.servers.set(weak);
    }
}

#[async_trait::async_trait]
impl TaskStarter for InProcessStarter {
    async fn start(&self, job: &TaskJob) -> Result<(), String> {
        let server = self
            .servers
            .get()
            .and_then(|s| s.get(&job.tool))
            .and_then(Weak::upgrade)
            .ok_or_else(|| format!("no server for tool {}", job.tool))?;
        // Through JSON, as the Lambda payload would be.
        let event = serde_json::to_vec(&TaskEvent {
            tollgate_task: job.clone(),
        })
        .map_err(|e| e.to_string())?;
        let event: TaskEvent = serde_json::from_slice(&event).map_err(|e| e.to_string())?;
        let inv = Invocation::new(uuid::Uuid::new_v4().to_string(), self.timeout);
        tokio::spawn(async move { server.run_task(event.tollgate_task, inv).await });
        Ok(())
    }
}
