//! Acting for a user on a third-party system: OAuth 2 connections with refresh-token rotation.
//!
//! - **Connect**: a tool that declares a provider ([`crate::Tool::provider`]) and finds no
//!   connection for the caller's user answers with a link to the provider's authorization
//!   endpoint (authorization code + PKCE S256). `state` is 32 random bytes, stored under its
//!   SHA-256 with the agent, the user, the provider and the PKCE verifier; it is single use
//!   (deleted with a conditional delete when the callback redeems it) and expires after
//!   [`STATE_TTL`]. The callback (`GET /connect/callback`) exchanges the code and stores the grant.
//! - **Vault**: one DynamoDB item per (user, provider) holding the refresh token and the current
//!   access token, each encrypted with KMS (`Encrypt`, with the user, provider and field as
//!   encryption context, so a ciphertext cannot be moved to another row), on a table that is
//!   itself encrypted with a customer-managed key. Tokens are never logged and never returned
//!   to the agent.
//! - **Refresh, race-safe**: an access token within [`REFRESH_SKEW`] of expiry is refreshed by
//!   exactly one instance: the one that wins a conditional-write lease on the item (lease
//!   expiry [`LEASE`]). The others poll the item until its version changes and use the new
//!   token. The rotated refresh token is written with a condition on the version it replaced
//!   and on holding the lease. `invalid_grant` marks the connection `needs_consent`: the agent
//!   gets a distinct, non-retryable answer with a new connect link. A provider that is down or
//!   slow releases the lease and leaves the stored tokens as they were.

pub use crate::config::{ConnectConfig, ProviderConfig};
pub use crate::tool::ProviderToken;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::error::ProvideErrorMetadata as _;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::auth::Principal;
use crate::auth::oauth::OAuthVerifier;
use crate::store::now_ms;

/// How long a connect link stays valid.
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// An access token this close to expiry is refreshed before use.
pub const REFRESH_SKEW: Duration = Duration::from_secs(60);
/// How long a refresh lease is held at most (longer than a refresh request may take).
pub const LEASE: Duration = Duration::from_secs(15);
/// Longest wait on the provider's token endpoint.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll interval while another instance refreshes.
const POLL: Duration = Duration::from_millis(100);
/// The callback route.
pub const CALLBACK_PATH: &str = "/connect/callback";
/// The page a connect link opens: establishes who the browser's user is.
pub const START_PATH: &str = "/connect/start";
/// Back from signing in at tollgate's authorization server (OAuth users).
pub const LOGIN_PATH: &str = "/connect/login";
/// The cookie binding a browser to the link it opened (its SHA-256 is in the link's row).
pub const COOKIE: &str = "tg_connect";

const STAGE_ISSUED: &str = "issued";
const STAGE_LOGIN: &str = "login";
const STAGE_VERIFIED: &str = "verified";

const MSG_INVALID: &str = "This link is not valid. Ask the agent for a new one.";
const MSG_USED: &str = "This link was already used or is not valid. Ask the agent for a new one.";
const MSG_EXPIRED: &str = "This link has expired. Ask the agent for a new one.";
const MSG_UNAVAILABLE: &str = "Temporarily unavailable; try the link again shortly.";
const MSG_OTHER_USER: &str = "This link was made for another user than the one who signed in. \
    Nothing was connected, and the link is no longer valid. If you meant to connect your own \
    account, ask your agent for a new link.";
const MSG_OTHER_BROWSER: &str = "This authorization did not start in this browser as the user \
    the link was made for. Nothing was connected; open the agent's link again.";
const MSG_SIGN_IN_FAILED: &str = "The sign-in could not be verified. Nothing was connected.";
const MSG_NO_LOGIN: &str =
    "Signing in for connections is not available here. Nothing was connected.";

/// What a browser gets from a connect page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// Go on to `location` (303), setting the browser-binding cookie when given.
    Redirect {
        /// The next URL.
        location: String,
        /// A `Set-Cookie` value.
        cookie: Option<String>,
    },
    /// An HTML page (the agent-key form).
    Html(String),
    /// A plain-text message for a person, with its status.
    Message(u16, String),
}

impl Page {
    fn message(status: u16, text: &str) -> Self {
        Self::Message(status, text.to_owned())
    }
}

/// Whether the browser's cookie is the one bound to the link (digests compared in constant
/// time).
fn browser_matches(item: &Item, cookie: Option<&str>) -> bool {
    match (cookie, text(item, "browser")) {
        (Some(c), Some(stored)) => crate::auth::keys::digest_matches(c, stored),
        _ => false,
    }
}

/// The sign-in form of an agent's link: the person who runs the agent proves it with one of
/// the agent's bearer keys (posted to this origin only; never logged).
fn key_form(handle: &str, provider: &str) -> String {
    let esc = |v: &str| {
        v.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Connect {p}</title></head>\
         <body><h1>Connect {p}</h1><p>This link was made for an agent that signs in with a \
         bearer key. To connect {p} for that agent, enter one of its keys.</p>\
         <form method=\"post\" action=\"{START_PATH}\"><input type=\"hidden\" name=\"id\" \
         value=\"{h}\"><label>Agent key <input type=\"password\" name=\"key\" \
         autocomplete=\"off\" required></label> <button type=\"submit\">Continue</button>\
         </form></body></html>",
        p = esc(provider),
        h = esc(handle),
    )
}

/// Why no access token could be handed to the tool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The user has not connected the provider.
    #[error("not connected")]
    NotConnected {
        /// Where the user authorizes the connection.
        connect_url: String,
        /// The elicitation's id (URL-mode elicitation).
        elicitation_id: String,
    },
    /// The provider refused the stored grant (revoked, expired): the user must consent again.
    #[error("consent required again")]
    Reconsent {
        /// Where the user authorizes the connection again.
        connect_url: String,
        /// The elicitation's id (URL-mode elicitation).
        elicitation_id: String,
    },
    /// The provider could not be reached or failed; nothing stored changed. Retry later.
    #[error("provider unavailable")]
    ProviderUnavailable,
    /// The store, KMS or configuration failed. Retry later.
    #[error("connection store unavailable")]
    Unavailable,
}

impl ConnectError {
    /// Machine-readable reason for results and audit records.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotConnected { .. } => "connection_required",
            Self::Reconsent { .. } => "reconsent_required",
            Self::ProviderUnavailable => "provider_unavailable",
            Self::Unavailable => "connection_store_unavailable",
        }
    }

    /// The connect link and its elicitation id, when the user must act.
    pub fn link(&self) -> Option<(&str, &str)> {
        match self {
            Self::NotConnected {
                connect_url,
                elicitation_id,
            }
            | Self::Reconsent {
                connect_url,
                elicitation_id,
            } => Some((connect_url, elicitation_id)),
            _ => None,
        }
    }

    /// The message shown to the user with a URL-mode elicitation.
    pub fn elicitation_message(&self, provider: &str) -> String {
        match self {
            Self::Reconsent { .. } => format!(
                "Your {provider} authorization was revoked or has expired. Open the link to \
                 sign in and authorize {provider} again."
            ),
            _ => format!(
                "This tool acts on your {provider} account. Open the link to sign in and \
                 connect {provider}."
            ),
        }
    }

    /// The result the agent gets: what happened, whether to retry, and the link when the user
    /// must act.
    pub fn to_result(&self, provider: &str) -> rmcp::model::CallToolResult {
        let (message, retry, url) = match self {
            Self::NotConnected { connect_url, .. } => (
                format!(
                    "The user has not connected their {provider} account. Ask them to open this \
                     link, then call the tool again: {connect_url}"
                ),
                "after_user_connects",
                Some(connect_url),
            ),
            Self::Reconsent { connect_url, .. } => (
                format!(
                    "The user's {provider} authorization was revoked or has expired. Do not \
                     retry: ask them to authorize again at {connect_url}"
                ),
                "after_user_connects",
                Some(connect_url),
            ),
            Self::ProviderUnavailable => (
                format!("{provider} is unavailable right now; retry in a few seconds."),
                "later",
                None,
            ),
            Self::Unavailable => (
                "The connection store is unavailable right now; retry in a few seconds.".to_owned(),
                "later",
                None,
            ),
        };
        let mut structured = serde_json::json!({
            "error": self.reason(),
            "provider": provider,
            "retry": retry,
        });
        if let Some(url) = url {
            structured["connect_url"] = serde_json::json!(url);
        }
        let mut result =
            rmcp::model::CallToolResult::error(vec![rmcp::model::ContentBlock::text(message)]);
        result.structured_content = Some(structured);
        result
    }
}

/// A connection as the admin CLI lists it (never the tokens).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnectionInfo {
    /// The user.
    pub user: String,
    /// The provider.
    pub provider: String,
    /// `active` or `needs_consent`.
    pub status: String,
    /// Incremented on every stored change.
    pub version: u64,
    /// Access-token expiry, Unix ms.
    pub access_expires_at_ms: u64,
    /// Last change, Unix ms.
    pub updated_at_ms: u64,
}

/// The user a principal acts for, in its namespace (`agent:<id>` or `oauth:<issuer>:<sub>`):
/// see [`Principal::user`].
pub fn user_of(principal: &Principal) -> String {
    principal.user()
}

type Item = HashMap<String, AttributeValue>;

/// Tokens the provider's token endpoint returned (no `Debug`: it holds both tokens).
#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

enum Refreshed {
    Token(ProviderToken),
    InvalidGrant,
}

/// The vault and the refresh logic. One per process. Its `Debug` shows neither the cached
/// client secrets nor tokens.
pub struct Connections {
    db: aws_sdk_dynamodb::Client,
    table: String,
    kms: aws_sdk_kms::Client,
    secrets: aws_sdk_secretsmanager::Client,
    http: reqwest::Client,
    config: ConnectConfig,
    callback_url: String,
    /// Scheme and authority of the callback URL: the connect pages live there too.
    origin: String,
    owner: String,
    login_endpoints: tokio::sync::Mutex<Option<(String, String)>>,
    client_secrets: tokio::sync::Mutex<HashMap<String, (String, Instant)>>,
    tokens: Mutex<HashMap<(String, String), ProviderToken>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("table", &self.table)
            .field("providers", &self.config.providers)
            .field("callback_url", &self.callback_url)
            .finish_non_exhaustive()
    }
}

/// The KMS encryption context of a vault token: a ciphertext only decrypts for its own user,
/// provider and field (and IAM allows the key only under this context).
fn vault_context(user: &str, provider: &str, field: &str) -> HashMap<String, String> {
    HashMap::from([
        ("tollgate:user".to_owned(), user.to_owned()),
        ("tollgate:provider".to_owned(), provider.to_owned()),
        ("tollgate:field".to_owned(), field.to_owned()),
    ])
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn num(item: &Item, name: &str) -> Option<u64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

fn conn_key(user: &str, provider: &str) -> (AttributeValue, AttributeValue) {
    (s(format!("CONN#{user}")), s(format!("PROVIDER#{provider}")))
}

fn state_key(state: &str) -> AttributeValue {
    s(format!(
        "CONNSTATE#{}",
        hex::encode(Sha256::digest(state.as_bytes()))
    ))
}

fn random_b64(len: usize) -> String {
    let mut b = vec![0u8; len];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encoding of everything but RFC 3986 unreserved characters.
fn pct(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Connections {
    /// The vault on `table`, with `config`'s providers. `callback_url` defaults to the resource
    /// URL's origin plus [`CALLBACK_PATH`].
    pub fn new(
        clients: &crate::tool::Clients,
        kms: aws_sdk_kms::Client,
        config: ConnectConfig,
    ) -> Option<Self> {
        let callback_url = config.callback_url.clone().or_else(|| {
            clients
                .config
                .resource_url
                .as_deref()
                .and_then(crate::http::origin_of)
                .map(|o| format!("{o}{CALLBACK_PATH}"))
        })?;
        let origin = crate::http::origin_of(&callback_url)?;
        Some(Self {
            origin,
            login_endpoints: tokio::sync::Mutex::new(None),
            db: clients.dynamodb.clone(),
            table: clients.config.table.clone(),
            kms,
            secrets: clients.secretsmanager.clone(),
            http: clients.http.clone(),
            config,
            callback_url,
            owner: uuid::Uuid::new_v4().to_string(),
            client_secrets: tokio::sync::Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The callback URL (its origin serves the connect pages).
    pub fn callback_url(&self) -> String {
        self.callback_url.clone()
    }

    fn provider(&self, name: &str) -> Result<&ProviderConfig, ConnectError> {
        self.config
            .providers
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| {
                tracing::error!(
                    provider = name,
                    "tool needs a provider that is not configured"
                );
                ConnectError::Unavailable
            })
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), ProviderToken>> {
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

    async fn get(&self, user: &str, provider: &str) -> Result<Option<Item>, ConnectError> {
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

    /// Takes the refresh lease on the item at `version`; false when another instance holds it
    /// or the item moved on.
    async fn take_lease(
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

    async fn release_lease(&self, user: &str, provider: &str) {
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
    async fn refresh(
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

    async fn mark_needs_consent(
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

    /// Encrypts and stores new tokens. With `replacing`, only over that version while holding
    /// the lease (a refresh); without, as a new grant (the callback).
    async fn store_tokens(
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

    async fn encrypt(
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

    async fn decrypt(
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

    async fn client_secret(&self, p: &ProviderConfig) -> Result<String, ConnectError> {
        let mut cache = self.client_secrets.lock().await;
        if let Some((v, at)) = cache.get(&p.name)
            && at.elapsed() < Duration::from_secs(300)
        {
            return Ok(v.clone());
        }
        let out = self
            .secrets
            .get_secret_value()
            .secret_id(&p.client_secret)
            .send()
            .await
            .map_err(|e| {
                use aws_sdk_secretsmanager::error::ProvideErrorMetadata as _;
                store_error("GetSecretValue", e.code())
            })?;
        let secret = out.secret_string.ok_or(ConnectError::Unavailable)?;
        cache.insert(p.name.clone(), (secret.clone(), Instant::now()));
        Ok(secret)
    }

    /// A new single-use connect link for `principal`'s user, and its elicitation id. The link
    /// is a page of ours ([`START_PATH`]), never the provider directly: it carries only a
    /// random handle (nothing about the user, nothing that signs anyone in), and the page
    /// establishes who opened it before sending the browser to the provider. The handle's
    /// SHA-256 keys a row with the user, the agent, the provider and the PKCE verifier.
    async fn connect_link(
        &self,
        principal: &Principal,
        p: &ProviderConfig,
    ) -> Result<(String, String), ConnectError> {
        let handle = random_b64(32);
        let verifier = random_b64(32);
        let elicitation_id = uuid::Uuid::new_v4().to_string();
        let expires_s = (now_ms() + u64::try_from(STATE_TTL.as_millis()).unwrap_or(0)) / 1000;
        self.db
            .put_item()
            .table_name(&self.table)
            .item("pk", state_key(&handle))
            .item("sk", s("STATE"))
            .item("kind", s("connect_state"))
            .item("user", s(user_of(principal)))
            .item("agent_id", s(&principal.agent_id))
            .item("provider", s(&p.name))
            .item("verifier", s(&verifier))
            .item("stage", s(STAGE_ISSUED))
            .item("elicitation_id", s(&elicitation_id))
            .item(crate::store::TTL_ATTRIBUTE, n(expires_s))
            .send()
            .await
            .map_err(|e| store_error("PutItem", e.code()))?;
        Ok((
            format!("{}{START_PATH}?id={handle}", self.origin),
            elicitation_id,
        ))
    }

    /// The provider's authorization URL for a verified link (`state` is the link's handle).
    fn provider_url(&self, p: &ProviderConfig, handle: &str, verifier: &str) -> String {
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        let sep = if p.authorize_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{sep}{}",
            p.authorize_url,
            form_encode(&[
                ("response_type", "code"),
                ("client_id", &p.client_id),
                ("redirect_uri", &self.callback_url),
                ("scope", &p.scopes),
                ("state", handle),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ])
        )
    }

    /// The `Set-Cookie` value binding this browser to a link (`Secure` unless the public URL
    /// is plain http, i.e. the local stack).
    fn browser_cookie(&self, value: &str) -> String {
        let secure = if self.origin.starts_with("https://") {
            "; Secure"
        } else {
            ""
        };
        format!(
            "{COOKIE}={value}; Path=/connect; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            STATE_TTL.as_secs()
        )
    }

    /// The unexpired row of a link, without redeeming it.
    async fn pending(&self, handle: &str) -> Result<Item, Page> {
        if handle.is_empty() || handle.len() > 128 {
            return Err(Page::message(400, MSG_INVALID));
        }
        let out = self
            .db
            .get_item()
            .table_name(&self.table)
            .key("pk", state_key(handle))
            .key("sk", s("STATE"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| {
                store_error("GetItem", e.code());
                Page::message(503, MSG_UNAVAILABLE)
            })?;
        let item = out.item.ok_or_else(|| Page::message(400, MSG_USED))?;
        if num(&item, crate::store::TTL_ATTRIBUTE).is_none_or(|t| t * 1000 < now_ms()) {
            return Err(Page::message(400, MSG_EXPIRED));
        }
        Ok(item)
    }

    /// Binds the link to this browser (a new cookie) and moves it to `stage`; refused once
    /// the link was verified (another browser cannot take it over then).
    async fn bind_browser(
        &self,
        handle: &str,
        stage: &str,
        login_verifier: Option<&str>,
    ) -> Result<String, Page> {
        let nonce = random_b64(32);
        let mut update = self
            .db
            .update_item()
            .table_name(&self.table)
            .key("pk", state_key(handle))
            .key("sk", s("STATE"))
            .condition_expression("attribute_exists(pk) AND #stage <> :verified")
            .expression_attribute_names("#stage", "stage")
            .expression_attribute_values(":verified", s(STAGE_VERIFIED))
            .expression_attribute_values(":stage", s(stage))
            .expression_attribute_values(":b", s(hex::encode(Sha256::digest(nonce.as_bytes()))));
        update = match login_verifier {
            Some(v) => update
                .update_expression("SET #stage = :stage, browser = :b, login_verifier = :lv")
                .expression_attribute_values(":lv", s(v)),
            None => update.update_expression("SET #stage = :stage, browser = :b"),
        };
        match update.send().await {
            Ok(_) => Ok(nonce),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                Err(Page::message(400, MSG_USED))
            }
            Err(e) => {
                store_error("UpdateItem", e.code());
                Err(Page::message(503, MSG_UNAVAILABLE))
            }
        }
    }

    async fn forget(&self, handle: &str) {
        if let Err(e) = self
            .db
            .delete_item()
            .table_name(&self.table)
            .key("pk", state_key(handle))
            .key("sk", s("STATE"))
            .send()
            .await
        {
            store_error("DeleteItem", e.code());
        }
    }

    /// `GET /connect/start?id=…`: the page the link opens. An agent's link shows a form
    /// asking for a bearer key of that agent; an OAuth user's link sends the browser to
    /// tollgate's authorization server to sign in (authorization code + PKCE), bound to this
    /// browser by a cookie. Nothing goes to the provider before the user is established.
    pub async fn start(&self, handle: &str, oauth: Option<&OAuthVerifier>) -> Page {
        let item = match self.pending(handle).await {
            Ok(i) => i,
            Err(page) => return page,
        };
        let user = text(&item, "user").unwrap_or_default();
        let provider = text(&item, "provider").unwrap_or_default();
        if user.starts_with("agent:") {
            return Page::Html(key_form(handle, provider));
        }
        let (Some(client_id), Some(oauth)) = (self.config.login_client_id.as_deref(), oauth) else {
            tracing::error!(
                "an OAuth user's connect link was opened, but TOLLGATE_CONNECT_LOGIN_CLIENT_ID is not set"
            );
            return Page::message(503, MSG_NO_LOGIN);
        };
        let Some(resource) = oauth.config().audiences.first() else {
            return Page::message(503, MSG_NO_LOGIN);
        };
        let (authorize, _) = match self.login_endpoints(oauth).await {
            Ok(e) => e,
            Err(page) => return page,
        };
        let login_verifier = random_b64(32);
        let nonce = match self
            .bind_browser(handle, STAGE_LOGIN, Some(&login_verifier))
            .await
        {
            Ok(n) => n,
            Err(page) => return page,
        };
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(login_verifier.as_bytes()));
        let sep = if authorize.contains('?') { '&' } else { '?' };
        Page::Redirect {
            location: format!(
                "{authorize}{sep}{}",
                form_encode(&[
                    ("response_type", "code"),
                    ("client_id", client_id),
                    ("redirect_uri", &format!("{}{LOGIN_PATH}", self.origin)),
                    ("scope", "openid"),
                    ("state", handle),
                    ("code_challenge", &challenge),
                    ("code_challenge_method", "S256"),
                    ("resource", resource),
                ])
            ),
            cookie: Some(self.browser_cookie(&nonce)),
        }
    }

    /// `POST /connect/start` (form `id`, `key`): an agent's link, completed by presenting a
    /// bearer key of the same agent. Another agent's key stores nothing and kills the link.
    pub async fn start_with_key(
        &self,
        handle: &str,
        key: &str,
        auth: &crate::auth::Authenticator,
    ) -> Page {
        let item = match self.pending(handle).await {
            Ok(i) => i,
            Err(page) => return page,
        };
        let user = text(&item, "user").unwrap_or_default();
        if !user.starts_with("agent:") {
            return Page::message(400, MSG_INVALID);
        }
        let presented = match auth.authenticate_key(key.trim()).await {
            Ok(p) => p,
            Err(d) if d.error.is_unavailable() => return Page::message(503, MSG_UNAVAILABLE),
            Err(_) => {
                return Page::message(
                    403,
                    "That key was not accepted (unknown, revoked, expired or disabled). Nothing \
                     was connected.",
                );
            }
        };
        if presented.user() != user {
            tracing::warn!(agent_id = %presented.agent_id, "connect link opened with another agent's key: refused");
            self.forget(handle).await;
            return Page::message(403, MSG_OTHER_USER);
        }
        self.verified_redirect(handle, &item).await
    }

    async fn verified_redirect(&self, handle: &str, item: &Item) -> Page {
        let (Some(provider), Some(verifier)) = (text(item, "provider"), text(item, "verifier"))
        else {
            return Page::message(400, MSG_INVALID);
        };
        let Ok(p) = self.provider(provider) else {
            return Page::message(400, "This provider is not configured.");
        };
        match self.bind_browser(handle, STAGE_VERIFIED, None).await {
            Ok(nonce) => Page::Redirect {
                location: self.provider_url(p, handle, verifier),
                cookie: Some(self.browser_cookie(&nonce)),
            },
            Err(page) => page,
        }
    }

    /// `GET /connect/login?code=…&state=…`: back from signing in at tollgate's authorization
    /// server. The sign-in must have started in this browser (cookie), and the signed-in
    /// subject must be the link's user; then the browser goes on to the provider. Another
    /// user stores nothing and kills the link.
    pub async fn login(
        &self,
        handle: &str,
        code: &str,
        cookie: Option<&str>,
        oauth: Option<&OAuthVerifier>,
    ) -> Page {
        let item = match self.pending(handle).await {
            Ok(i) => i,
            Err(page) => return page,
        };
        if text(&item, "stage") != Some(STAGE_LOGIN) || !browser_matches(&item, cookie) {
            return Page::message(403, MSG_OTHER_BROWSER);
        }
        let (Some(client_id), Some(oauth), Some(login_verifier)) = (
            self.config.login_client_id.as_deref(),
            oauth,
            text(&item, "login_verifier"),
        ) else {
            return Page::message(503, MSG_NO_LOGIN);
        };
        let (_, token_url) = match self.login_endpoints(oauth).await {
            Ok(e) => e,
            Err(page) => return page,
        };
        let resource = oauth
            .config()
            .audiences
            .first()
            .cloned()
            .unwrap_or_default();
        let resp = self
            .http
            .post(&token_url)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(form_encode(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &format!("{}{LOGIN_PATH}", self.origin)),
                ("client_id", client_id),
                ("code_verifier", login_verifier),
                ("resource", &resource),
            ]))
            .timeout(PROVIDER_TIMEOUT)
            .send()
            .await;
        let token = match resp {
            Ok(r) if r.status().is_success() => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v.get("access_token")?.as_str().map(str::to_owned)),
            Ok(r) => {
                tracing::warn!(
                    status = r.status().as_u16(),
                    "sign-in code exchange refused"
                );
                None
            }
            Err(_) => {
                tracing::warn!("sign-in code exchange failed");
                None
            }
        };
        let Some(token) = token else {
            return Page::message(403, MSG_SIGN_IN_FAILED);
        };
        let signed_in = match oauth.verify(&token, None).await {
            Ok(id) => id
                .user
                .map(|sub| crate::auth::oauth::user_for(&oauth.config().issuer, &sub)),
            Err(e) => {
                tracing::warn!(reason = e.reason(), "sign-in token refused");
                return Page::message(403, MSG_SIGN_IN_FAILED);
            }
        };
        if signed_in.as_deref() != text(&item, "user") {
            tracing::warn!("connect link opened by another user: refused");
            self.forget(handle).await;
            return Page::message(403, MSG_OTHER_USER);
        }
        self.verified_redirect(handle, &item).await
    }

    /// The authorization and token endpoints of tollgate's own authorization server (RFC 8414
    /// metadata, else OpenID configuration; its `issuer` must match), cached per instance.
    async fn login_endpoints(&self, oauth: &OAuthVerifier) -> Result<(String, String), Page> {
        if let Some(hit) = self.login_endpoints.lock().await.clone() {
            return Ok(hit);
        }
        let issuer = oauth.config().issuer.trim_end_matches('/').to_owned();
        let origin = crate::http::origin_of(&issuer).unwrap_or_default();
        let path = issuer.strip_prefix(&origin).unwrap_or("");
        for url in [
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
            format!("{issuer}/.well-known/openid-configuration"),
        ] {
            let Ok(resp) = self.http.get(&url).timeout(PROVIDER_TIMEOUT).send().await else {
                continue;
            };
            let Ok(doc) = resp.json::<serde_json::Value>().await else {
                continue;
            };
            if doc["issuer"].as_str().map(|i| i.trim_end_matches('/')) != Some(issuer.as_str()) {
                continue;
            }
            if let (Some(a), Some(t)) = (
                doc["authorization_endpoint"].as_str(),
                doc["token_endpoint"].as_str(),
            ) {
                let found = (a.to_owned(), t.to_owned());
                *self.login_endpoints.lock().await = Some(found.clone());
                return Ok(found);
            }
        }
        tracing::warn!("authorization server metadata unavailable for the connect sign-in");
        Err(Page::message(503, MSG_UNAVAILABLE))
    }

    /// The callback: redeems `state` (once) and, only if this browser is the one that proved
    /// the link's user (its cookie) and the RFC 9207 `iss`, when sent, is the provider's,
    /// exchanges `code` and stores the grant. The error is the message shown to the browser.
    pub async fn callback(
        &self,
        state: &str,
        code: &str,
        iss: Option<&str>,
        cookie: Option<&str>,
    ) -> Result<String, &'static str> {
        let out = self
            .db
            .delete_item()
            .table_name(&self.table)
            .key("pk", state_key(state))
            .key("sk", s("STATE"))
            .condition_expression("attribute_exists(pk)")
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        let item = match out {
            Ok(o) => o.attributes.unwrap_or_default(),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                return Err(MSG_USED);
            }
            Err(e) => {
                tracing::warn!(
                    code = e.code().unwrap_or("request failed"),
                    "connect state lookup failed"
                );
                return Err(MSG_UNAVAILABLE);
            }
        };
        if num(&item, crate::store::TTL_ATTRIBUTE).is_none_or(|t| t * 1000 < now_ms()) {
            return Err(MSG_EXPIRED);
        }
        if text(&item, "stage") != Some(STAGE_VERIFIED) || !browser_matches(&item, cookie) {
            tracing::warn!(
                "connect callback in a browser that did not open the link as its user: nothing stored"
            );
            return Err(MSG_OTHER_BROWSER);
        }
        let (Some(user), Some(provider), Some(verifier)) = (
            text(&item, "user"),
            text(&item, "provider"),
            text(&item, "verifier"),
        ) else {
            return Err(MSG_INVALID);
        };
        let Ok(p) = self.provider(provider) else {
            return Err("This provider is not configured.");
        };
        if let Some(iss) = iss {
            // RFC 9207: the response names its issuer; it must be the provider we sent the
            // user to (a mix-up attack otherwise). Without a configured issuer it cannot be
            // checked, so it is refused.
            if p.issuer.as_deref().map(|i| i.trim_end_matches('/'))
                != Some(iss.trim_end_matches('/'))
            {
                tracing::warn!(
                    provider,
                    "callback iss is not the provider's issuer: nothing stored"
                );
                return Err(
                    "The authorization came from an unexpected issuer. Nothing was connected; ask the agent for a new link.",
                );
            }
        }
        let secret = self
            .client_secret(p)
            .await
            .map_err(|_| "Temporarily unavailable; ask the agent for a new link shortly.")?;
        let resp = self
            .http
            .post(&p.token_url)
            .basic_auth(pct(&p.client_id), Some(pct(&secret)))
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(form_encode(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &self.callback_url),
                ("code_verifier", verifier),
            ]))
            .timeout(PROVIDER_TIMEOUT)
            .send()
            .await
            .map_err(|_| "The provider did not answer; ask the agent for a new link shortly.")?;
        if !resp.status().is_success() {
            tracing::warn!(
                provider,
                status = resp.status().as_u16(),
                "code exchange refused"
            );
            return Err("The provider refused the authorization; ask the agent for a new link.");
        }
        let tokens: TokenResponse = resp
            .json()
            .await
            .map_err(|_| "The provider's answer was not understood.")?;
        let Some(refresh) = tokens.refresh_token.as_deref() else {
            tracing::warn!(provider, "code exchange returned no refresh token");
            return Err("The provider granted no refresh token; check the requested scopes.");
        };
        self.store_tokens(
            user,
            provider,
            &tokens.access_token,
            tokens.expires_in,
            refresh,
            None,
        )
        .await
        .map_err(|_| "Temporarily unavailable; ask the agent for a new link shortly.")?;
        self.lock_tokens()
            .remove(&(user.to_owned(), provider.to_owned()));
        tracing::info!(provider, "connection stored");
        Ok(format!(
            "Your {provider} account is connected. You can return to your agent."
        ))
    }
}

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

fn store_error(op: &str, code: Option<&str>) -> ConnectError {
    tracing::warn!(
        op,
        code = code.unwrap_or("request failed"),
        "connection store call failed"
    );
    ConnectError::Unavailable
}

/// When an access token granted at `now_ms` for `expires_in` seconds (1 hour when the provider
/// does not say) expires, in Unix milliseconds; a huge `expires_in` saturates instead of
/// overflowing.
fn access_expiry_ms(now_ms: u64, expires_in: Option<u64>) -> u64 {
    now_ms.saturating_add(expires_in.unwrap_or(3600).saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any `expires_in` a provider sends, up to `u64::MAX`, gives an expiry no earlier than
        /// now, without overflow.
        #[test]
        fn access_expiry_never_overflows(now in 0u64..=u64::MAX, expires_in in proptest::option::of(0u64..=u64::MAX)) {
            let at = access_expiry_ms(now, expires_in);
            let want = u128::from(now) + u128::from(expires_in.unwrap_or(3600)) * 1000;
            proptest::prop_assert_eq!(u128::from(at), want.min(u128::from(u64::MAX)));
        }
    }

    #[test]
    fn forms_are_percent_encoded() {
        assert_eq!(
            form_encode(&[("a b", "x&y=z/é"), ("k", "-._~")]),
            "a%20b=x%26y%3Dz%2F%C3%A9&k=-._~"
        );
    }

    #[test]
    fn tokens_never_show_in_debug() {
        let t = ProviderToken::new("p", "very-secret", 1);
        assert!(!format!("{t:?}").contains("very-secret"));
        assert_eq!(t.authorization(), "Bearer very-secret");
    }

    #[test]
    fn results_say_what_to_do() {
        let r = ConnectError::Reconsent {
            connect_url: "https://as/authorize?x".into(),
            elicitation_id: "e".into(),
        }
        .to_result("demo");
        assert_eq!(r.is_error, Some(true));
        let s = r.structured_content.expect("structured");
        assert_eq!(s["error"], "reconsent_required");
        assert_eq!(s["retry"], "after_user_connects");
        assert_eq!(s["connect_url"], "https://as/authorize?x");
        let r = ConnectError::ProviderUnavailable.to_result("demo");
        let s = r.structured_content.expect("structured");
        assert_eq!(
            (s["error"].as_str(), s["retry"].as_str()),
            (Some("provider_unavailable"), Some("later"))
        );
        assert!(s.get("connect_url").is_none());
    }
}
