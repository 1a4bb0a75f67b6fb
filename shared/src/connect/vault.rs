//! The vault: a user's grant per provider, its tokens encrypted with KMS under an encryption
//! context naming the user and the provider, an in-process cache of access tokens, and the
//! operator's listing and revocation.

use super::*;

/// Every connection of `user` (admin).
pub async fn list(
    db: &aws_sdk_dynamodb::Client,
    table: &str,
    user: &str,
) -> Result<Vec<ConnectionInfo>, crate::store::StoreError> {
    let out = db
        .query()
        .table_name(table)
        .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
        .expression_attribute_values(":pk", s(format!("CONN#{user}")))
        .expression_attribute_values(":p", s("PROVIDER#"))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| {
            crate::store::StoreError::Unavailable(format!(
                "Query: {}",
                e.code().unwrap_or("request failed")
            ))
        })?;
    Ok(out
        .items()
        .iter()
        .map(|i| ConnectionInfo {
            user: user.to_owned(),
            provider: text(i, "provider").unwrap_or_default().to_owned(),
            status: text(i, "status").unwrap_or_default().to_owned(),
            version: num(i, "version").unwrap_or(0),
            access_expires_at_ms: num(i, "access_expires_at_ms").unwrap_or(0),
            updated_at_ms: num(i, "updated_at_ms").unwrap_or(0),
        })
        .collect())
}

/// Deletes `user`'s connection to `provider` (admin): its tokens are gone; the next call gets a
/// connect link. Instances drop their cached access token when it nears expiry.
pub async fn revoke(
    db: &aws_sdk_dynamodb::Client,
    table: &str,
    user: &str,
    provider: &str,
) -> Result<(), crate::store::StoreError> {
    let (pk, sk) = conn_key(user, provider);
    match db
        .delete_item()
        .table_name(table)
        .key("pk", pk)
        .key("sk", sk)
        .condition_expression("attribute_exists(pk)")
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("ConditionalCheckFailedException") => Err(
            crate::store::StoreError::NotFound(format!("connection {user}/{provider}")),
        ),
        Err(e) => Err(crate::store::StoreError::Unavailable(format!(
            "DeleteItem: {}",
            e.code().unwrap_or("request failed")
        ))),
    }
}

impl Connections {
    pub(super) fn lock_tokens(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String), ProviderToken>> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A valid access token for `principal`'s user at `provider`, refreshing it if needed.
    pub async fn access_token(
        &self,
        principal: &Principal,
        provider: &str,
        deadline: Instant,
    ) -> Result<ProviderToken, ConnectError> {
        let p = self.provider(provider)?;
        let user_id = user_of(principal);
        let user = user_id.as_str();
        let key = (user.to_owned(), provider.to_owned());
        let fresh = |t: &ProviderToken| {
            t.expires_at_ms > now_ms() + u64::try_from(REFRESH_SKEW.as_millis()).unwrap_or(0)
        };
        if let Some(t) = self.lock_tokens().get(&key).filter(|t| fresh(t)) {
            return Ok(t.clone());
        }
        loop {
            let item = self.get(user, provider).await?;
            let Some(item) = item else {
                let (connect_url, elicitation_id) = self.connect_link(principal, p).await?;
                return Err(ConnectError::NotConnected {
                    connect_url,
                    elicitation_id,
                });
            };
            if text(&item, "status") != Some("active") {
                let (connect_url, elicitation_id) = self.connect_link(principal, p).await?;
                return Err(ConnectError::Reconsent {
                    connect_url,
                    elicitation_id,
                });
            }
            let version = num(&item, "version").unwrap_or(0);
            let expires = num(&item, "access_expires_at_ms").unwrap_or(0);
            if expires > now_ms() + u64::try_from(REFRESH_SKEW.as_millis()).unwrap_or(0) {
                let access = self.decrypt(&item, "access_ct", user, provider).await?;
                let token = ProviderToken::new(provider.to_owned(), access, expires);
                self.lock_tokens().insert(key, token.clone());
                return Ok(token);
            }
            let leased = num(&item, "lease_until_ms").is_some_and(|t| t > now_ms());
            if !leased && self.take_lease(user, provider, version).await? {
                return match self.refresh(p, user, &item, version).await? {
                    Refreshed::Token(token) => {
                        self.lock_tokens().insert(key, token.clone());
                        Ok(token)
                    }
                    Refreshed::InvalidGrant => {
                        self.lock_tokens().remove(&key);
                        let (connect_url, elicitation_id) = self.connect_link(principal, p).await?;
                        Err(ConnectError::Reconsent {
                            connect_url,
                            elicitation_id,
                        })
                    }
                };
            }
            // Another instance is refreshing: wait for its result.
            if Instant::now() + POLL >= deadline {
                return Err(ConnectError::ProviderUnavailable);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub(super) async fn get(
        &self,
        user: &str,
        provider: &str,
    ) -> Result<Option<Item>, ConnectError> {
        let (pk, sk) = conn_key(user, provider);
        let out = self
            .db
            .get_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error("GetItem", e.code()))?;
        Ok(out.item)
    }

    /// Encrypts and stores new tokens. With `replacing`, only over that version while holding
    /// the lease (a refresh); without, as a new grant (the callback).
    pub(super) async fn store_tokens(
        &self,
        user: &str,
        provider: &str,
        access: &str,
        expires_in: Option<u64>,
        refresh: &str,
        replacing: Option<u64>,
    ) -> Result<ProviderToken, ConnectError> {
        let expires_at_ms = access_expiry_ms(now_ms(), expires_in);
        let access_ct = self.encrypt(access, user, provider, "access").await?;
        let refresh_ct = self.encrypt(refresh, user, provider, "refresh").await?;
        let (pk, sk) = conn_key(user, provider);
        let now = now_ms();
        let request = self
            .db
            .update_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":active", s("active"))
            .expression_attribute_values(":access", s(access_ct))
            .expression_attribute_values(":refresh", s(refresh_ct))
            .expression_attribute_values(":exp", n(expires_at_ms))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":user", s(user))
            .expression_attribute_values(":provider", s(provider))
            .expression_attribute_values(":kind", s("connection"))
            .return_values(ReturnValue::None);
        let request = match replacing {
            Some(v) => request
                .update_expression(
                    "SET #status = :active, access_ct = :access, refresh_ct = :refresh, \
                     access_expires_at_ms = :exp, updated_at_ms = :now, #user = :user, \
                     provider = :provider, kind = :kind, version = version + :one \
                     REMOVE lease_until_ms, lease_owner",
                )
                .condition_expression("version = :v AND lease_owner = :me")
                .expression_attribute_names("#user", "user")
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":v", n(v))
                .expression_attribute_values(":me", s(&self.owner)),
            None => request
                .update_expression(
                    "SET #status = :active, access_ct = :access, refresh_ct = :refresh, \
                     access_expires_at_ms = :exp, updated_at_ms = :now, #user = :user, \
                     provider = :provider, kind = :kind, \
                     version = if_not_exists(version, :zero) + :one \
                     REMOVE lease_until_ms, lease_owner",
                )
                .expression_attribute_names("#user", "user")
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":one", n(1)),
        };
        match request.send().await {
            Ok(_) => Ok(ProviderToken::new(
                provider.to_owned(),
                access.to_owned(),
                expires_at_ms,
            )),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                // The lease ran out and another instance moved the item on: this rotation is
                // lost, so the provider may have invalidated what is stored. Say so loudly.
                tracing::error!(
                    provider,
                    "rotated tokens not stored: the refresh lease expired first"
                );
                Err(ConnectError::ProviderUnavailable)
            }
            Err(e) => Err(store_error("UpdateItem", e.code())),
        }
    }

    pub(super) async fn encrypt(
        &self,
        plaintext: &str,
        user: &str,
        provider: &str,
        field: &str,
    ) -> Result<String, ConnectError> {
        let key = self
            .config
            .kms_key
            .as_deref()
            .ok_or(ConnectError::Unavailable)?;
        let out = self
            .kms
            .get()
            .encrypt()
            .key_id(key)
            .plaintext(aws_sdk_kms::primitives::Blob::new(plaintext.as_bytes()))
            .set_encryption_context(Some(vault_context(user, provider, field)))
            .send()
            .await
            .map_err(|e| {
                use aws_sdk_kms::error::ProvideErrorMetadata as _;
                store_error("kms:Encrypt", e.code())
            })?;
        let blob = out.ciphertext_blob.ok_or(ConnectError::Unavailable)?;
        Ok(base64::engine::general_purpose::STANDARD.encode(blob.as_ref()))
    }

    pub(super) async fn decrypt(
        &self,
        item: &Item,
        attr: &str,
        user: &str,
        provider: &str,
    ) -> Result<String, ConnectError> {
        let field = if attr == "access_ct" {
            "access"
        } else {
            "refresh"
        };
        let ct = text(item, attr).ok_or(ConnectError::Unavailable)?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(ct)
            .map_err(|_| ConnectError::Unavailable)?;
        let out = self
            .kms
            .get()
            .decrypt()
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob))
            .set_encryption_context(Some(vault_context(user, provider, field)))
            .send()
            .await
            .map_err(|e| {
                use aws_sdk_kms::error::ProvideErrorMetadata as _;
                store_error("kms:Decrypt", e.code())
            })?;
        let plain = out.plaintext.ok_or(ConnectError::Unavailable)?;
        String::from_utf8(plain.into_inner()).map_err(|_| ConnectError::Unavailable)
    }
}
