//! `account_profile`: reads the user's profile on their connected third-party account.
//!
//! The tool declares the `demo_account` provider: tollgate hands the handler a valid access
//! token for the calling user (refreshing and rotating it as needed), or answers with a connect
//! link when the user has not connected the account. The token goes to the provider's API only
//! (`ACCOUNT_PROFILE_API_URL`), never to the agent or a log.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tollgate::{Annotations, DefaultBudget, Json, LogAs, Tool, ToolContext, ToolError, ToolSpec};

/// The provider this tool acts on (`TOLLGATE_PROVIDERS`).
pub const PROVIDER: &str = "demo_account";

/// Arguments of `account_profile`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountProfileInput {
    /// Also return the account's subscription plan.
    #[serde(default)]
    pub include_usage: bool,
}

/// The user's profile on the connected account.
#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Profile {
    /// Account handle.
    pub username: String,
    /// Display name.
    pub display_name: String,
    /// Subscription plan, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// The tool.
#[derive(Debug, Clone)]
pub struct AccountProfile {
    base_url: Option<String>,
}

/// The tool, configured from `ACCOUNT_PROFILE_API_URL` (the provider API's base URL).
pub fn tool() -> AccountProfile {
    AccountProfile {
        base_url: std::env::var("ACCOUNT_PROFILE_API_URL")
            .ok()
            .map(|u| u.trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty()),
    }
}

const DOWNSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

impl Tool for AccountProfile {
    type Input = AccountProfileInput;
    type Output = Json<Profile>;

    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "account_profile",
            title: "Connected account profile",
            description: "Get the user's profile (handle, display name, optionally plan) from \
                          their connected demo account. If the user has not connected the \
                          account yet, the result carries a link for them to open.",
            scope: "account:read",
            annotations: Annotations {
                read_only: true,
                destructive: false,
                idempotent: true,
                open_world: true,
            },
            budget: DefaultBudget::per_minute(60, 10),
            log_fields: &[("include_usage", LogAs::Safe)],
        }
    }

    fn provider(&self) -> Option<&'static str> {
        Some(PROVIDER)
    }

    async fn call(
        &self,
        ctx: ToolContext,
        input: AccountProfileInput,
    ) -> Result<Json<Profile>, ToolError> {
        let base = self
            .base_url
            .as_deref()
            .ok_or_else(|| ToolError::system("ACCOUNT_PROFILE_API_URL is not configured"))?;
        let token = ctx
            .provider_token
            .as_ref()
            .ok_or_else(|| ToolError::system("no provider token"))?;
        let mut request = ctx
            .clients
            .http
            .get(format!("{base}/api/profile"))
            .header(reqwest::header::AUTHORIZATION, token.authorization())
            .timeout(ctx.remaining().min(DOWNSTREAM_TIMEOUT));
        for (name, value) in ctx.trace_headers() {
            request = request.header(name, value);
        }
        let resp = request
            .send()
            .await
            .map_err(|e| ToolError::system(e.without_url()))?;
        match resp.status().as_u16() {
            200 => {
                let mut profile: Profile = resp
                    .json()
                    .await
                    .map_err(|e| ToolError::system(e.without_url()))?;
                if !input.include_usage {
                    profile.plan = None;
                }
                Ok(Json(profile))
            }
            401 | 403 => Err(ToolError::business(
                "The connected account refused access. Ask the user to reconnect the account.",
            )),
            status => Err(ToolError::system(format!(
                "provider API answered HTTP {status}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::catalog::RegisteredTool;

    #[test]
    fn declares_its_provider_and_schema() {
        let t = RegisteredTool::new(tool()).expect("registers");
        assert_eq!(t.provider(), Some(PROVIDER));
        assert!(t.validate(&serde_json::json!({})).is_ok());
        assert!(
            t.validate(&serde_json::json!({"include_usage": "yes"}))
                .is_err()
        );
        assert!(t.descriptor().output_schema.is_some());
    }
}
