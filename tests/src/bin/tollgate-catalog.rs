//! Prints the deployment's tool catalog as JSON, as the code builds it: every tool the gateway
//! registers (functions/gateway/Cargo.toml), with what the infrastructure is rendered from.
//! `infra/render.py` runs it; the template is never read out of the source text.
//!
//!     cargo run -q -p tollgate-tests --bin tollgate-catalog

use serde_json::json;

fn main() -> anyhow::Result<()> {
    let catalog = gateway::catalog()?;
    let mut tools: Vec<_> = catalog
        .iter()
        .map(|t| {
            let spec = t.spec();
            json!({
                "name": spec.name,
                "scope": spec.scope,
                "budget": spec.budget,
                "task_support": t.task_support().as_str(),
                "task_time_limit_s": t.task_time_limit().map(|d| d.as_secs()),
                "idempotency": t.idempotency(),
                "provider": t.provider(),
            })
        })
        .collect();
    tools.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({ "tools": tools }))?
    );
    Ok(())
}
