//! Forwarding `tools/call` from the aggregating gateway to a tool's own function.
//!
//! The gateway hands the tool function the very API Gateway event it received, so the tool
//! runs the full pipeline (auth, scope, validation, audit) exactly as when called directly.
//! On AWS the forward is a synchronous Lambda `Invoke`; the local stack calls the tool's
//! handler in-process. Both sit behind [`Invoker`].

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};

use crate::http::Response;
use crate::server::Invocation;

/// A forward to a tool function failed before the function answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// No function is known for the tool.
    #[error("no function for tool {0}")]
    UnknownTool(String),
    /// The invoke call itself failed (network, throttling, permissions).
    #[error("invoke failed: {0}")]
    Transport(String),
    /// The function ran but raised an unhandled error or returned an unreadable payload.
    #[error("function error: {0}")]
    Function(String),
}

impl InvokeError {
    /// The error class, for spans (`error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownTool(_) => "unknown_function",
            Self::Transport(_) => "invoke_failed",
            Self::Function(_) => "function_error",
        }
    }
}

/// Calls a tool's function with an API Gateway event and returns its HTTP response.
#[async_trait::async_trait]
pub trait Invoker: Send + Sync + std::fmt::Debug {
    /// Forwards `event` to the function serving `tool`.
    async fn invoke(
        &self,
        tool: &str,
        event: &ApiGatewayV2httpRequest,
        invocation: &Invocation,
    ) -> Result<Response, InvokeError>;
}

/// Synchronous Lambda `Invoke` (RequestResponse) of `<prefix><tool>`.
#[derive(Debug, Clone)]
pub struct LambdaInvoker {
    client: aws_sdk_lambda::Client,
    prefix: String,
}

impl LambdaInvoker {
    /// Invokes functions named `prefix` + tool name (`.` in tool names becomes `-`).
    pub fn new(client: aws_sdk_lambda::Client, prefix: impl Into<String>) -> Self {
        Self {
            client,
            prefix: prefix.into(),
        }
    }

    /// The function name serving `tool`.
    pub fn function_name(&self, tool: &str) -> String {
        format!("{}{}", self.prefix, tool.replace('.', "-"))
    }
}

#[async_trait::async_trait]
impl Invoker for LambdaInvoker {
    async fn invoke(
        &self,
        tool: &str,
        event: &ApiGatewayV2httpRequest,
        _invocation: &Invocation,
    ) -> Result<Response, InvokeError> {
        let payload =
            serde_json::to_vec(event).map_err(|e| InvokeError::Transport(e.to_string()))?;
        // The Invoke request names the same parent as the forwarded event, so Lambda's own
        // segments for the tool function join this trace too.
        let trace_header = event.headers.get("x-amzn-trace-id").cloned();
        let out = self
            .client
            .invoke()
            .function_name(self.function_name(tool))
            .payload(aws_smithy_types::Blob::new(payload))
            .customize()
            .mutate_request(move |req| {
                if let Some(v) = trace_header.as_ref().and_then(|v| v.to_str().ok()) {
                    req.headers_mut().insert("x-amzn-trace-id", v.to_owned());
                }
            })
            .send()
            .await
            .map_err(|e| {
                use aws_sdk_lambda::error::ProvideErrorMetadata as _;
                InvokeError::Transport(e.code().unwrap_or("invoke error").to_owned())
            })?;
        if let Some(err) = out.function_error() {
            return Err(InvokeError::Function(err.to_owned()));
        }
        let body = out.payload().map(|b| b.as_ref()).unwrap_or_default();
        let resp: ApiGatewayV2httpResponse = serde_json::from_slice(body)
            .map_err(|e| InvokeError::Function(format!("unreadable response: {e}")))?;
        Ok(Response::from_event_response(resp))
    }
}
