//! The connect flow in the browser: the link an agent hands its user, our start page (who is
//! the browser's user: a key form or sign-in at our authorization server), the browser-binding
//! cookie, and the provider's callback that stores a grant only for the user the link was made
//! for (RFC 9207 `iss` checked).

use super::*;

/// Whether the browser's cookie is the one bound to the link (digests compared in constant
/// time).
pub(super) fn browser_matches(item: &Item, cookie: Option<&str>) -> bool {
    match (cookie, text(item, "browser")) {
        (Some(c), Some(stored)) => crate::auth::keys::digest_matches(c, stored),
        _ => false,
    }
}

/// The sign-in form of an agent's link: the person who runs the agent proves it with one of
/// the agent's bearer keys (posted to this origin only; never logged).
pub(super) fn key_form(handle: &str, provider: &str) -> String {
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

impl Connections {
    /// A new single-use connect link for `principal`'s user, and its elicitation id. The link
    /// is a page of ours ([`START_PATH`]), never the provider directly: it carries only a
    /// random handle (nothing about the user, nothing that signs anyone in), and the page
    /// establishes who opened it before sending the browser to the provider. The handle's
    /// SHA-256 keys a row with the user, the agent, the provider and the PKCE verifier.
    pub(super) async fn connect_link(
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
    pub(super) fn provider_url(&self, p: &ProviderConfig, handle: &str, verifier: &str) -> String {
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
    pub(super) fn browser_cookie(&self, value: &str) -> String {
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
    pub(super) async fn pending(&self, handle: &str) -> Result<Item, Page> {
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
    pub(super) async fn bind_browser(
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

    pub(super) async fn forget(&self, handle: &str) {
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

    pub(super) async fn verified_redirect(&self, handle: &str, item: &Item) -> Page {
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
    pub(super) async fn login_endpoints(
        &self,
        oauth: &OAuthVerifier,
    ) -> Result<(String, String), Page> {
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
