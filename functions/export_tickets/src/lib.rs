//! `export_tickets`: exports a customer's support tickets, a long-running tool meant to be
//! called as an MCP task.
//!
//! The export works through `EXPORT_TICKETS_BATCHES` batches (default 10) spread over
//! `EXPORT_TICKETS_DURATION_MS` (default 45 000: longer than API Gateway's 30-second
//! integration limit, the reason tasks exist), reporting progress after each batch and stopping
//! at the next batch when the task is cancelled. The pacing stands in for a slow partner API; the
//! rows are the ticket items of the customer's partition of the app table (`TOLLGATE_APP_TABLE`,
//! `pk = CUSTOMER#<id>`, `sk = TICKET#<ticket id>`, one `Query` of that partition; the local
//! stack seeds two for `C-1001`).

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tollgate::task::TaskSupport;
use tollgate::{Annotations, DefaultBudget, Json, LogAs, Tool, ToolContext, ToolError, ToolSpec};

/// Most rows one export returns.
pub const MAX_ROWS: usize = 500;

/// Arguments of `export_tickets`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportTicketsInput {
    /// The customer whose tickets to export (the `customer_id` from `lookup_customer`).
    #[schemars(regex(pattern = r"^C-[0-9]{4,10}$"))]
    pub customer_id: String,
}

/// One exported ticket.
#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct TicketRow {
    /// Ticket id.
    pub ticket_id: String,
    /// Subject line.
    pub subject: String,
    /// `low`, `normal`, `high` or `urgent`.
    pub priority: String,
    /// `open` or `closed`.
    pub status: String,
}

/// The export.
#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct TicketExport {
    /// The customer.
    pub customer_id: String,
    /// How many tickets the customer has (at most 500 are listed).
    pub ticket_count: usize,
    /// The tickets, by id.
    pub tickets: Vec<TicketRow>,
}

/// The tool.
#[derive(Debug, Clone)]
pub struct ExportTickets {
    table: String,
    duration: Duration,
    batches: u32,
    time_limit: Duration,
}

fn env_ms(name: &str, default: u64) -> Duration {
    Duration::from_millis(
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(default),
    )
}

/// The tool, configured from the environment: `TOLLGATE_APP_TABLE`,
/// `EXPORT_TICKETS_DURATION_MS` (45000), `EXPORT_TICKETS_BATCHES` (10),
/// `EXPORT_TICKETS_TIME_LIMIT_MS` (120000: the task run's limit).
pub fn tool() -> ExportTickets {
    ExportTickets {
        table: std::env::var("TOLLGATE_APP_TABLE").unwrap_or_else(|_| "tollgate-app".to_owned()),
        duration: env_ms("EXPORT_TICKETS_DURATION_MS", 45_000),
        batches: std::env::var("EXPORT_TICKETS_BATCHES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|b| *b > 0)
            .unwrap_or(10),
        time_limit: env_ms("EXPORT_TICKETS_TIME_LIMIT_MS", 120_000),
    }
}

impl ExportTickets {
    /// The tool on app table `table`, taking `duration` in `batches`.
    pub fn new(table: impl Into<String>, duration: Duration, batches: u32) -> Self {
        Self {
            table: table.into(),
            duration,
            batches: batches.max(1),
            time_limit: Duration::from_secs(120),
        }
    }

    async fn customer_exists(&self, ctx: &ToolContext, id: &str) -> Result<bool, ToolError> {
        Ok(ctx
            .clients
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(format!("CUSTOMER#{id}")))
            .key("sk", AttributeValue::S("PROFILE".to_owned()))
            .projection_expression("customer_id")
            .send()
            .await
            .map_err(ToolError::system)?
            .item
            .is_some())
    }

    async fn tickets(&self, ctx: &ToolContext, id: &str) -> Result<Vec<TicketRow>, ToolError> {
        let mut rows = Vec::new();
        let mut start = None;
        loop {
            let page = ctx
                .clients
                .dynamodb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :p AND begins_with(sk, :t)")
                .expression_attribute_values(":p", AttributeValue::S(format!("CUSTOMER#{id}")))
                .expression_attribute_values(":t", AttributeValue::S("TICKET#".to_owned()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(ToolError::system)?;
            for item in page.items() {
                let text = |k: &str| {
                    item.get(k)
                        .and_then(|v| v.as_s().ok())
                        .cloned()
                        .unwrap_or_default()
                };
                rows.push(TicketRow {
                    ticket_id: text("ticket_id"),
                    subject: text("subject"),
                    priority: text("priority"),
                    status: text("status"),
                });
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        Ok(rows)
    }
}

impl Tool for ExportTickets {
    type Input = ExportTicketsInput;
    type Output = Json<TicketExport>;

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "export_tickets",
            title: "Export a customer's tickets",
            description: "Export every support ticket of a customer (id, subject, priority, \
                          status). The export takes about a minute: call it as a task and poll \
                          the task for progress and the result.",
            scope: "tickets:read",
            annotations: Annotations {
                read_only: true,
                destructive: false,
                idempotent: true,
                open_world: false,
            },
            budget: DefaultBudget::per_minute(10, 3),
            log_fields: &[("customer_id", LogAs::Safe)],
        }
    }

    fn task_support(&self) -> TaskSupport {
        TaskSupport::Optional
    }

    fn task_time_limit(&self) -> Option<Duration> {
        Some(self.time_limit)
    }

    async fn call(
        &self,
        ctx: ToolContext,
        input: ExportTicketsInput,
    ) -> Result<Json<TicketExport>, ToolError> {
        if !self.customer_exists(&ctx, &input.customer_id).await? {
            return Err(ToolError::business(
                "No customer has that id. Look the customer up with lookup_customer first and \
                 use the customer_id it returns.",
            ));
        }
        let total = f64::from(self.batches);
        let step = self.duration / self.batches;
        for batch in 1..=self.batches {
            tokio::select! {
                () = tokio::time::sleep(step) => {}
                () = ctx.cancelled() => {
                    return Err(ToolError::business("The export was cancelled."));
                }
            }
            let message = format!("Exported batch {batch} of {}.", self.batches);
            ctx.report_progress(f64::from(batch), Some(total), Some(&message))
                .await;
        }
        let mut tickets = self.tickets(&ctx, &input.customer_id).await?;
        let ticket_count = tickets.len();
        tickets.truncate(MAX_ROWS);
        Ok(Json(TicketExport {
            customer_id: input.customer_id,
            ticket_count,
            tickets,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::catalog::RegisteredTool;

    #[test]
    fn declares_task_support_and_a_limit() {
        let t = RegisteredTool::new(ExportTickets::new("t", Duration::from_secs(1), 2))
            .expect("registers");
        assert_eq!(t.task_support(), TaskSupport::Optional);
        assert_eq!(t.task_time_limit(), Some(Duration::from_secs(120)));
        assert!(
            t.validate(&serde_json::json!({"customer_id": "C-1001"}))
                .is_ok()
        );
        assert!(
            t.validate(&serde_json::json!({"customer_id": "1001"}))
                .is_err()
        );
    }
}
