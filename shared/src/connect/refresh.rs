//! Refresh with safe rotation: one instance at a time refreshes a grant (a lease on its item),
//! stores the rotated refresh token before using the new access token, and marks a grant the
//! provider refused as needing consent again.

use super::*;

impl Connections {
    /// Takes the refresh lease on the item at `version`; false when another instance holds it
    /// or the item moved on.
    pub(super) async fn take_lease(
        &self,
        user: &str,
        provider: &str,
        version: u64,
    ) -> Result<bool, ConnectError> {
        let (pk, sk) = conn_key(user, provider);
        let now = now_ms();
        let result = self
            .db
            .update_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .update_expression("SET lease_until_ms = :until, lease_owner = :me")
            .condition_expression(
                "version = :v AND #status = :active AND \
                 (attribute_not_exists(lease_until_ms) OR lease_until_ms < :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(
                ":until",
                n(now + u64::try_from(LEASE.as_millis()).unwrap_or(0)),
            )
            .expression_attribute_values(":me", s(&self.owner))
            .expression_attribute_values(":v", n(version))
            .expression_attribute_values(":active", s("active"))
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(store_error("UpdateItem", e.code())),
        }
    }

    pub(super) async fn release_lease(&self, user: &str, provider: &str) {
        let (pk, sk) = conn_key(user, provider);
        let result = self
            .db
            .update_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .update_expression("REMOVE lease_until_ms, lease_owner")
            .condition_expression("lease_owner = :me")
            .expression_attribute_values(":me", s(&self.owner))
            .send()
            .await;
        if let Err(e) = result
            && e.code() != Some("ConditionalCheckFailedException")
        {
            tracing::warn!(
                code = e.code().unwrap_or("request failed"),
                "refresh lease not released; it expires on its own"
            );
        }
    }

    /// Refreshes with the provider while holding the lease on `version`.
    pub(super) async fn refresh(
        &self,
        p: &ProviderConfig,
        user: &str,
        item: &Item,
        version: u64,
    ) -> Result<Refreshed, ConnectError> {
        let outcome = async {
            let refresh_token = self.decrypt(item, "refresh_ct", user, &p.name).await?;
            let secret = self.client_secret(p).await?;
            let resp = self
                .http
                .post(&p.token_url)
                .basic_auth(pct(&p.client_id), Some(pct(&secret)))
                .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(http::header::ACCEPT, "application/json")
                .body(form_encode(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &refresh_token),
                ]))
                .timeout(PROVIDER_TIMEOUT)
                .send()
                .await
                .map_err(|e| {
                    tracing::warn!(provider = %p.name, timeout = e.is_timeout(), "refresh request failed");
                    ConnectError::ProviderUnavailable
                })?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(|_| ConnectError::ProviderUnavailable)?;
            if status.is_success() {
                let tokens: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
                    tracing::warn!(provider = %p.name, "token response is not the expected JSON");
                    ConnectError::ProviderUnavailable
                })?;
                return Ok(Some((tokens, refresh_token)));
            }
            let error = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
            if status.as_u16() == 400 && error.as_deref() == Some("invalid_grant") {
                return Ok(None);
            }
            tracing::warn!(provider = %p.name, status = status.as_u16(), error = error.as_deref().unwrap_or(""), "refresh refused");
            Err(ConnectError::ProviderUnavailable)
        }
        .await;
        match outcome {
            Ok(Some((tokens, old_refresh))) => {
                let rotated = tokens.refresh_token.as_deref().unwrap_or(&old_refresh);
                let token = self
                    .store_tokens(
                        user,
                        &p.name,
                        &tokens.access_token,
                        tokens.expires_in,
                        rotated,
                        Some(version),
                    )
                    .await?;
                Ok(Refreshed::Token(token))
            }
            Ok(None) => {
                tracing::warn!(provider = %p.name, "grant refused by the provider (invalid_grant): consent needed");
                self.mark_needs_consent(user, &p.name, version).await?;
                Ok(Refreshed::InvalidGrant)
            }
            Err(e) => {
                self.release_lease(user, &p.name).await;
                Err(e)
            }
        }
    }

    pub(super) async fn mark_needs_consent(
        &self,
        user: &str,
        provider: &str,
        version: u64,
    ) -> Result<(), ConnectError> {
        let (pk, sk) = conn_key(user, provider);
        self.db
            .update_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .update_expression(
                "SET #status = :needs, version = version + :one, updated_at_ms = :now \
                 REMOVE lease_until_ms, lease_owner, access_ct",
            )
            .condition_expression("version = :v AND lease_owner = :me")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":needs", s("needs_consent"))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", n(now_ms()))
            .expression_attribute_values(":v", n(version))
            .expression_attribute_values(":me", s(&self.owner))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| store_error("UpdateItem", e.code()))
    }
}
