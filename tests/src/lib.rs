//! The local stack and test support: serves the API Gateway routes over real HTTP on loopback,
//! turning each request into the same API Gateway v2 event Lambda would deliver and feeding it
//! to the same handlers (`tollgate::Server`). The gateway forwards `tools/call` in-process.

pub mod carrier;
pub mod conformance;
pub mod conformance_tasks;
pub mod devstack;
pub mod fixtures;
pub mod fuzz_short;
pub mod fuzzing;
pub mod http_front;
pub mod moto;
pub mod tls_front;
