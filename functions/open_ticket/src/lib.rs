//! `open_ticket`: opens a support ticket for a customer.
//!
//! A write tool with a side effect: expensive for the support team, so its default budget is
//! low, and it is annotated destructive (it creates work that cannot be taken back silently).
//! Retries are made safe by the framework: a call with an idempotency key (the
//! `Idempotency-Key` header or `params._meta["io.modelcontextprotocol/idempotencyKey"]`) opens
//! one ticket, and a retry with the same key gets that ticket back (see the README's "Retry
//! safety").

use aws_sdk_dynamodb::types::AttributeValue;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tollgate::{Annotations, DefaultBudget, Json, LogAs, Tool, ToolContext, ToolError, ToolSpec};

/// How urgent a ticket is.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Whenever convenient.
    Low,
    /// The usual queue.
    Normal,
    /// Needs attention today.
    High,
    /// A customer is blocked right now.
    Urgent,
}

/// Arguments of `open_ticket`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenTicketInput {
    /// The customer's id, as returned by `lookup_customer` (e.g. `C-1001`).
    #[schemars(regex(pattern = r"^C-[0-9]{1,12}$"))]
    pub customer_id: String,
    /// One-line summary of the problem.
    #[schemars(length(min = 3, max = 120))]
    pub subject: String,
    /// What happened, what the customer expected, and anything already tried.
    #[schemars(length(min = 1, max = 4000))]
    pub description: String,
    /// How urgent the ticket is.
    pub priority: Priority,
}

/// The opened ticket.
#[derive(Debug, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Ticket {
    /// Ticket id, to quote to the customer.
    pub ticket_id: String,
    /// Always `open` for a new ticket.
    pub status: String,
    /// Priority as filed.
    pub priority: Priority,
}

/// The tool.
#[derive(Debug, Clone)]
pub struct OpenTicket {
    table: String,
}

/// The tool, configured from the environment (`TOLLGATE_APP_TABLE`, default `tollgate-app`).
pub fn tool() -> OpenTicket {
    OpenTicket {
        table: std::env::var("TOLLGATE_APP_TABLE").unwrap_or_else(|_| "tollgate-app".to_owned()),
    }
}

fn ticket_id() -> String {
    format!("T-{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

impl OpenTicket {
    /// The tool reading and writing the app table `table`.
    pub fn with_table(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
        }
    }
}

impl Tool for OpenTicket {
    type Input = OpenTicketInput;
    type Output = Json<Ticket>;

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "open_ticket",
            title: "Open a support ticket",
            description: "Open a support ticket for a customer. Creates work for the support \
                          team: check first that no ticket is needed for the same problem.",
            scope: "tickets:write",
            annotations: Annotations {
                read_only: false,
                destructive: true,
                idempotent: false,
                open_world: false,
            },
            budget: DefaultBudget::per_minute(6, 2),
            log_fields: &[
                ("customer_id", LogAs::Safe),
                ("priority", LogAs::Safe),
                ("subject", LogAs::Summarised),
                ("description", LogAs::Summarised),
            ],
        }
    }

    async fn call(
        &self,
        ctx: ToolContext,
        input: OpenTicketInput,
    ) -> Result<Json<Ticket>, ToolError> {
        let db = &ctx.clients.dynamodb;
        let customer = db
            .get_item()
            .table_name(&self.table)
            .key(
                "pk",
                AttributeValue::S(format!("CUSTOMER#{}", input.customer_id)),
            )
            .key("sk", AttributeValue::S("PROFILE".to_owned()))
            .projection_expression("customer_id, #st")
            .expression_attribute_names("#st", "status")
            .send()
            .await
            .map_err(ToolError::system)?
            .item;
        let Some(customer) = customer else {
            return Err(ToolError::business(
                "No customer has that id. Look the customer up with lookup_customer first and \
                 use the customer_id it returns.",
            ));
        };
        if customer
            .get("status")
            .and_then(|v| v.as_s().ok())
            .map(String::as_str)
            == Some("suspended")
        {
            return Err(ToolError::business(
                "This customer's account is suspended; tickets for suspended accounts go \
                 through the billing team, not this tool.",
            ));
        }
        let id = ticket_id();
        let priority = serde_json::to_value(input.priority)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "normal".to_owned());
        let put = db
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(format!("TICKET#{id}")))
            .item("sk", AttributeValue::S("TICKET".to_owned()))
            .item("ticket_id", AttributeValue::S(id.clone()))
            .item("customer_id", AttributeValue::S(input.customer_id.clone()))
            .item("subject", AttributeValue::S(input.subject))
            .item("description", AttributeValue::S(input.description))
            .item("priority", AttributeValue::S(priority))
            .item("status", AttributeValue::S("open".to_owned()))
            .item(
                "opened_by",
                AttributeValue::S(ctx.principal.agent_id.clone()),
            )
            .item("request_id", AttributeValue::S(ctx.request_id.clone()))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        put.map_err(ToolError::system)?;
        Ok(Json(Ticket {
            ticket_id: id,
            status: "open".to_owned(),
            priority: input.priority,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::catalog::RegisteredTool;

    #[test]
    fn the_framework_honours_idempotency_keys_for_open_ticket() {
        let t = RegisteredTool::new(tool()).expect("registers");
        assert_eq!(
            t.idempotency(),
            tollgate::idempotency::Idempotency::Optional
        );
        assert!(
            t.descriptor()
                .description
                .as_deref()
                .is_some_and(|d| d.contains(tollgate::idempotency::META_KEY)),
            "tools/list tells the model about the key"
        );
        assert_ne!(ticket_id(), ticket_id());
    }

    #[test]
    fn schema_rules() {
        let t = RegisteredTool::new(tool()).expect("registers");
        let ok = serde_json::json!({"customer_id": "C-1", "subject": "Login fails", "description": "x", "priority": "high"});
        assert!(t.validate(&ok).is_ok());
        let bad = serde_json::json!({"customer_id": "1", "subject": "x", "description": "", "priority": "asap"});
        let err = t.validate(&bad).expect_err("invalid");
        assert!(
            err.contains("/customer_id") && err.contains("/priority"),
            "{err}"
        );
        assert_eq!(
            t.descriptor()
                .annotations
                .as_ref()
                .and_then(|a| a.destructive_hint),
            Some(true)
        );
        assert!(
            t.spec().budget.per_minute <= 10,
            "an expensive tool keeps a low default budget"
        );
    }
}
