//! tollgate: the shared runtime every tollgate Lambda function links.
//!
//! One pipeline serves every MCP request, in the order of the request path in the README:
//! transport and JSON-RPC checks ([`protocol`]), authentication ([`auth`]), authorization by
//! scope, argument validation and the tool run ([`tool`], [`server`]), then one audit record
//! ([`audit`]), all inside one server span continuing the caller's trace ([`trace`],
//! [`telemetry`]). The same handler is fed an API Gateway HTTP API (payload 2.0) event whoever calls
//! it: the Lambda runtime ([`lambda`]), the gateway's forward ([`gateway`]) or the local stack.

pub mod audit;
pub mod auth;
pub mod budget;
pub mod catalog;
pub mod config;
pub mod connect;
pub mod error;
pub mod gateway;
pub mod hash_key;
pub mod http;
pub mod idempotency;
pub mod lambda;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod tls;
pub mod tool;
pub mod trace;

pub mod admin;

pub use auth::{AuthMethod, Principal};
pub use catalog::Catalog;
pub use config::Config;
pub use server::{Invocation, Server};
pub use tool::{Annotations, DefaultBudget, Json, LogAs, Tool, ToolContext, ToolError, ToolSpec};

/// Re-exports tool crates need, so every tool builds against the same versions.
pub mod deps {
    pub use aws_sdk_dynamodb;
    pub use aws_sdk_kms;
    pub use aws_sdk_secretsmanager;
    pub use reqwest;
    pub use schemars;
    pub use serde;
    pub use serde_json;
}
