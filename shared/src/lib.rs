//! tollgate: the shared runtime every tollgate Lambda function links.
//!
//! One pipeline serves every MCP request, in the order of the request path in the README:
//! transport and JSON-RPC checks ([`protocol`]), authentication ([`auth`]), authorization by
//! scope, argument validation and the tool run ([`tool`], [`server`]), then one audit record
//! ([`audit`]), all inside one server span continuing the caller's trace ([`telemetry`]). The
//! same handler is fed an API Gateway HTTP API (payload 2.0) event whoever calls it: the Lambda
//! runtime ([`lambda`]), the gateway's forward ([`server::forward`]) or the local stack.
//!
//! The modules form one-way layers, lowest first; docs/ARCHITECTURE.md describes them and the
//! request path through them.

#![warn(missing_docs)]

// The modules in layers, lowest first (docs/ARCHITECTURE.md). A module uses only modules of
// lower layers and its own folder; `tests/tests/layers.rs` keeps it so.

// L0: wire and storage primitives, AWS clients made on first use, and every configuration
// type.
pub mod aws;
pub mod config;
pub mod http;
pub mod protocol;
pub mod store;
pub mod tls;

// L1: who is calling, and the trace it belongs to.
pub mod auth;
pub mod telemetry;

// L2: what a tool is, and the one mapping of failures onto HTTP and JSON-RPC.
pub mod error;
pub mod tool;

// L3: the pipeline's stages that keep state: tool registry, budgets, connections, idempotency
// ledger, task records.
pub mod budget;
pub mod catalog;
pub mod connect;
pub mod idempotency;
pub mod task;

// L4: one audit record, metrics and argument hashing per call.
pub mod audit;

// L5: the pipeline: transport checks, negotiation, dispatch, forwarding.
pub mod server;

// L6: composition roots: the Lambda entry point and the operator's actions.
pub mod admin;
pub mod lambda;

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
