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
mod callback;
mod refresh;
mod vault;

pub use vault::{list, revoke};

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
    kms: crate::aws::Lazy<aws_sdk_kms::Client>,
    secrets: crate::aws::Lazy<aws_sdk_secretsmanager::Client>,
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
        kms: impl Into<crate::aws::Lazy<aws_sdk_kms::Client>>,
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
            kms: kms.into(),
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

    async fn client_secret(&self, p: &ProviderConfig) -> Result<String, ConnectError> {
        let mut cache = self.client_secrets.lock().await;
        if let Some((v, at)) = cache.get(&p.name)
            && at.elapsed() < Duration::from_secs(300)
        {
            return Ok(v.clone());
        }
        let out = self
            .secrets
            .get()
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
