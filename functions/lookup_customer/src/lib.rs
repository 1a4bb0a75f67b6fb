//! `lookup_customer`: finds a customer profile by email address.
//!
//! A read tool whose input is personal data: the email is hashed in audit logs, never logged.
//! Data: the app table (`TOLLGATE_APP_TABLE`), item `pk = EMAIL#<lowercased email>`,
//! `sk = CUSTOMER`.

use aws_sdk_dynamodb::types::AttributeValue;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tollgate::{Annotations, DefaultBudget, Json, LogAs, Tool, ToolContext, ToolError, ToolSpec};

/// Arguments of `lookup_customer`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupCustomerInput {
    /// The customer's email address, as the customer gave it (case does not matter).
    #[schemars(email, length(min = 3, max = 254))]
    pub email: String,
}

/// A customer profile.
#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Customer {
    /// Stable customer id (use it with `open_ticket`).
    pub customer_id: String,
    /// Display name.
    pub name: String,
    /// Support tier: `standard`, `premium` or `enterprise`.
    pub tier: String,
    /// Account status: `active` or `suspended`.
    pub status: String,
}

/// The tool.
#[derive(Debug, Clone)]
pub struct LookupCustomer {
    table: String,
}

/// The tool, configured from the environment (`TOLLGATE_APP_TABLE`, default `tollgate-app`).
pub fn tool() -> LookupCustomer {
    LookupCustomer {
        table: std::env::var("TOLLGATE_APP_TABLE").unwrap_or_else(|_| "tollgate-app".to_owned()),
    }
}

impl LookupCustomer {
    /// The tool reading and writing the app table `table`.
    pub fn with_table(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
        }
    }
}

impl Tool for LookupCustomer {
    type Input = LookupCustomerInput;
    type Output = Json<Customer>;

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "lookup_customer",
            title: "Look up a customer",
            description: "Find a customer's profile (id, name, support tier, account status) by \
                          the email address they registered with.",
            scope: "customers:read",
            annotations: Annotations {
                read_only: true,
                destructive: false,
                idempotent: true,
                open_world: false,
            },
            budget: DefaultBudget::per_minute(120, 30),
            log_fields: &[("email", LogAs::Hashed)],
        }
    }

    async fn call(
        &self,
        ctx: ToolContext,
        input: LookupCustomerInput,
    ) -> Result<Json<Customer>, ToolError> {
        let email = input.email.trim().to_lowercase();
        let item = ctx
            .clients
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(format!("EMAIL#{email}")))
            .key("sk", AttributeValue::S("CUSTOMER".to_owned()))
            .send()
            .await
            .map_err(ToolError::system)?
            .item;
        let Some(item) = item else {
            return Err(ToolError::business(
                "No customer is registered with that email address. Check the spelling, or ask \
                 the user for the address they signed up with.",
            ));
        };
        let text = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_s().ok())
                .cloned()
                .ok_or_else(|| ToolError::system(format!("customer item lacks {name}")))
        };
        Ok(Json(Customer {
            customer_id: text("customer_id")?,
            name: text("name")?,
            tier: text("tier")?,
            status: text("status")?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::catalog::RegisteredTool;

    #[test]
    fn schema_requires_a_valid_email() {
        let t = RegisteredTool::new(tool()).expect("registers");
        assert!(
            t.validate(&serde_json::json!({"email": "ada@example.com"}))
                .is_ok()
        );
        let err = t
            .validate(&serde_json::json!({"email": "not-an-email"}))
            .expect_err("format");
        assert!(err.contains("/email"), "{err}");
        assert!(
            !err.contains("not-an-email"),
            "values are never echoed: {err}"
        );
        assert!(t.validate(&serde_json::json!({})).is_err());
        assert!(
            t.validate(&serde_json::json!({"email": "a@b.c", "x": 1}))
                .is_err()
        );
    }

    #[test]
    fn email_is_hashed_in_logs() {
        let t = RegisteredTool::new(tool()).expect("registers");
        assert_eq!(t.log_as("email"), LogAs::Hashed);
        assert_eq!(
            t.descriptor()
                .annotations
                .as_ref()
                .and_then(|a| a.read_only_hint),
            Some(true)
        );
    }
}
