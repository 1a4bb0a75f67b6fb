use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::http::event_from_parts;
use crate::store::{AgentRecord, KeyRecord, MemoryStore, Store, StoreError};

async fn seeded() -> (Arc<MemoryStore>, String, String) {
    let store = Arc::new(MemoryStore::new());
    let agent = AgentRecord {
        agent_id: "bot".to_owned(),
        description: String::new(),
        status: AgentStatus::Active,
        scopes: BTreeSet::from(["customers:read".to_owned()]),
        budget: Default::default(),
        created_at_ms: 0,
    };
    store.create_agent(&agent).await.expect("agent");
    let k = keys::issue();
    store
        .create_key(&KeyRecord {
            key_id: k.key_id.clone(),
            agent_id: "bot".to_owned(),
            digest_hex: k.digest_hex.clone(),
            status: KeyStatus::Active,
            created_at_ms: 0,
            expires_at_ms: None,
            agent_status: AgentStatus::Active,
            scopes: agent.scopes.clone(),
            budget: Default::default(),
        })
        .await
        .expect("key");
    (store, k.token, k.key_id)
}

fn event(auth: Option<&str>) -> aws_lambda_events::apigw::ApiGatewayV2httpRequest {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    event_from_parts("POST", "/mcp", headers, Some(b"{}"), "r1", "127.0.0.1")
}

async fn run(a: &Authenticator, auth: Option<&str>) -> Result<Principal, AuthError> {
    let ev = event(auth);
    a.authenticate(&Request::new(&ev))
        .await
        .map_err(|d| d.error)
}

#[tokio::test]
async fn valid_key_yields_principal_with_scopes() {
    let (store, token, key_id) = seeded().await;
    let a = Authenticator::new(store, Duration::from_secs(30));
    let p = run(&a, Some(&format!("Bearer {token}")))
        .await
        .expect("principal");
    assert_eq!(p.agent_id, "bot");
    assert_eq!(p.credential_id, key_id);
    assert_eq!(p.method, AuthMethod::ApiKey);
    assert!(p.has_scope("customers:read"));
    assert!(!p.has_scope("tickets:write"));
}

#[tokio::test]
async fn scheme_is_case_insensitive() {
    let (store, token, _) = seeded().await;
    let a = Authenticator::new(store, Duration::from_secs(30));
    assert!(run(&a, Some(&format!("bearer {token}"))).await.is_ok());
}

#[tokio::test]
async fn missing_malformed_and_unknown_are_distinct() {
    let (store, token, _) = seeded().await;
    let a = Authenticator::new(store, Duration::from_secs(30));
    assert_eq!(run(&a, None).await, Err(AuthError::Missing));
    assert_eq!(run(&a, Some("Basic abc")).await, Err(AuthError::Malformed));
    assert_eq!(run(&a, Some("Bearer")).await, Err(AuthError::Malformed));
    assert_eq!(run(&a, Some("Bearer a b")).await, Err(AuthError::Malformed));
    assert_eq!(
        run(&a, Some("Bearer nope")).await,
        Err(AuthError::UnknownToken)
    );
    // Right key id, wrong secret: the digest comparison refuses it.
    let mut forged = token.clone();
    forged.replace_range(token.len() - 4.., "AAAA");
    assert_eq!(
        run(&a, Some(&format!("Bearer {forged}"))).await,
        Err(AuthError::UnknownToken)
    );
    let unknown = keys::issue().token;
    assert_eq!(
        run(&a, Some(&format!("Bearer {unknown}"))).await,
        Err(AuthError::UnknownToken)
    );
    let huge = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_LEN));
    assert_eq!(run(&a, Some(&huge)).await, Err(AuthError::Malformed));
}

#[tokio::test]
async fn revoked_key_is_refused_permanently_after_the_cache_ttl() {
    let (store, token, key_id) = seeded().await;
    let ttl = Duration::from_millis(200);
    let a = Authenticator::new(store.clone(), ttl);
    let header = format!("Bearer {token}");
    assert!(run(&a, Some(&header)).await.is_ok());
    store.revoke_key(&key_id).await.expect("revoke");
    // Within the TTL the cached record may still admit the key ...
    assert!(run(&a, Some(&header)).await.is_ok());
    assert_eq!(store.key_reads(), 1, "second call served from cache");
    // ... and once the TTL has passed it is refused, permanently.
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let err = run(&a, Some(&header)).await.expect_err("revoked");
    assert_eq!(err, AuthError::Revoked);
    assert!(err.is_permanent());
    let ev = event(Some(&header));
    let denied = a
        .authenticate(&Request::new(&ev))
        .await
        .expect_err("revoked");
    assert_eq!(
        denied.agent_id.as_deref(),
        Some("bot"),
        "denials name the key's agent for the audit"
    );
}

#[tokio::test]
async fn disabled_agent_and_expired_key() {
    let (store, token, _) = seeded().await;
    let mut agent = store.get_agent("bot").await.expect("get").expect("some");
    agent.status = AgentStatus::Disabled;
    store.update_agent(&agent).await.expect("disable");
    let a = Authenticator::new(store.clone(), Duration::from_secs(30));
    assert_eq!(
        run(&a, Some(&format!("Bearer {token}"))).await,
        Err(AuthError::AgentDisabled)
    );

    let k = keys::issue();
    agent.status = AgentStatus::Active;
    store.update_agent(&agent).await.expect("enable");
    store
        .create_key(&KeyRecord {
            key_id: k.key_id.clone(),
            agent_id: "bot".to_owned(),
            digest_hex: k.digest_hex.clone(),
            status: KeyStatus::Active,
            created_at_ms: 0,
            expires_at_ms: Some(1),
            agent_status: AgentStatus::Active,
            scopes: agent.scopes.clone(),
            budget: Default::default(),
        })
        .await
        .expect("key");
    let err = run(&a, Some(&format!("Bearer {}", k.token)))
        .await
        .expect_err("expired");
    assert_eq!(err, AuthError::Expired);
    assert!(!err.is_permanent());
}

mod arbitrary_headers {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn arbitrary_authorization_never_panics(value in proptest::collection::vec(any::<u8>(), 0..200)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            let store = Arc::new(MemoryStore::new());
            let a = Authenticator::new(store, Duration::from_secs(30));
            let mut ev = event(None);
            if let Ok(v) = http::HeaderValue::from_bytes(&value) {
                ev.headers.insert(http::header::AUTHORIZATION, v);
            }
            let result = rt.block_on(a.authenticate(&Request::new(&ev)));
            prop_assert!(result.is_err());
        }

        /// JWT-shaped and opaque tokens of arbitrary content through the OAuth path (issuer
        /// unreachable): refused, never a panic; client-certificate blocks of arbitrary content
        /// likewise.
        #[test]
        fn arbitrary_tokens_and_certificates_never_panic(
            parts in proptest::collection::vec("[A-Za-z0-9_\\-=+/.]{0,80}", 1..4),
            pem in "\\PC{0,300}",
            not_after in "\\PC{0,40}",
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            let a = oauth_authenticator();
            let token = parts.join(".");
            let ev = event(Some(&format!("Bearer {token}")));
            let mut cert = aws_lambda_events::apigw::ApiGatewayV2httpRequestContextAuthenticationClientCert::default();
            cert.client_cert_pem = Some(pem);
            cert.validity.not_after = Some(not_after);
            let mut auth = aws_lambda_events::apigw::ApiGatewayV2httpRequestContextAuthentication::default();
            auth.client_cert = Some(cert);
            let with_cert = {
                let mut e = ev.clone();
                e.request_context.authentication = Some(auth);
                e
            };
            prop_assert!(rt.block_on(a.authenticate(&Request::new(&ev))).is_err());
            prop_assert!(rt.block_on(a.authenticate(&Request::new(&with_cert))).is_err());
        }
    }
}

/// Keys, OAuth (issuer on a closed loopback port) and mTLS accepted.
fn oauth_authenticator() -> Authenticator {
    let config = crate::Config::from_lookup(|k| match k {
        "TOLLGATE_AUTH_METHODS" => Some("api_key,oauth,mtls".to_owned()),
        "TOLLGATE_OAUTH_ISSUER" => Some("http://127.0.0.1:9".to_owned()),
        "TOLLGATE_OAUTH_AUDIENCE" => Some("https://api.example/mcp".to_owned()),
        "TOLLGATE_OAUTH_INTROSPECTION_URL" => Some("http://127.0.0.1:9/introspect".to_owned()),
        "TOLLGATE_OAUTH_INTROSPECTION_SECRET" => Some("unused".to_owned()),
        _ => None,
    })
    .expect("config");
    let oauth = config.auth.oauth.clone().expect("oauth");
    let verifier = Arc::new(oauth::OAuthVerifier::new(
        oauth,
        crate::tls::Trust::default()
            .reqwest()
            .build()
            .expect("client"),
        None,
    ));
    Authenticator::new(Arc::new(MemoryStore::new()), Duration::from_secs(30)).with_config(
        &config.auth,
        Some(verifier),
        Some("https://api.example/mcp"),
    )
}

#[tokio::test]
async fn an_unreachable_issuer_is_503_and_a_key_still_works() {
    let a = oauth_authenticator();
    let jwt = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJ4In0.c2ln";
    let err = a
        .authenticate(&Request::new(&event(Some(&format!("Bearer {jwt}")))))
        .await
        .expect_err("refused");
    assert_eq!(err.error, AuthError::IssuerUnavailable);
    let hs = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
    let err = a
        .authenticate(&Request::new(&event(Some(&format!("Bearer {hs}")))))
        .await
        .expect_err("refused");
    assert_eq!(
        err.error,
        AuthError::InvalidToken,
        "HMAC is refused before any fetch"
    );
    let (store, token, _) = seeded().await;
    let a = Authenticator::new(store, Duration::from_secs(30)).with_config(
        &crate::Config::from_lookup(|k| {
            (k == "TOLLGATE_AUTH_METHODS").then(|| "api_key,mtls".to_owned())
        })
        .expect("config")
        .auth,
        None,
        None,
    );
    let p = a
        .authenticate(&Request::new(&event(Some(&format!("Bearer {token}")))))
        .await
        .expect("key");
    assert_eq!(p.method, AuthMethod::ApiKey);
    let err = a
        .authenticate(&Request::new(&event(Some("Bearer eyJ.a.b"))))
        .await
        .expect_err("no oauth");
    assert_eq!(err.error, AuthError::UnknownToken);
}

fn oauth_identity(subject: &str, sub: Option<&str>) -> oauth::TokenIdentity {
    oauth::TokenIdentity {
        subject: subject.to_owned(),
        scopes: BTreeSet::from(["account:read".to_owned()]),
        credential_id: "jti-1".to_owned(),
        expires_at: None,
        user: sub.map(str::to_owned),
    }
}

const ISS: &str = "https://as.example";

#[tokio::test]
async fn an_oauth_client_named_like_an_agent_does_not_become_it_without_a_binding() {
    let (store, _, _) = seeded().await;
    let a = Authenticator::new(store.clone(), Duration::ZERO);
    let p = a
        .oauth_principal(oauth_identity("bot", None), ISS)
        .await
        .expect("principal");
    assert_ne!(
        p.agent_id, "bot",
        "a client_id equal to an agent id is not that agent"
    );
    assert!(p.agent_id.starts_with("oauth-"), "{}", p.agent_id);
    assert_eq!(p.user(), format!("agent:{}", p.agent_id));
    // The operator's explicit binding maps it onto the pre-created agent.
    crate::admin::bind_oauth(store.as_ref(), "bot", ISS, "bot")
        .await
        .expect("bind");
    let p = a
        .oauth_principal(oauth_identity("bot", None), ISS)
        .await
        .expect("principal");
    assert_eq!(p.agent_id, "bot");
    // The binding is per issuer: the same name at another issuer is still its own agent.
    let other = a
        .oauth_principal(oauth_identity("bot", None), "https://other.example")
        .await
        .expect("principal");
    assert_ne!(other.agent_id, "bot");
}

#[tokio::test]
async fn oauth_users_and_agents_live_in_separate_namespaces() {
    let (store, token, _) = seeded().await;
    let a = Authenticator::new(store, Duration::ZERO);
    let by_key = run(&a, Some(&format!("Bearer {token}")))
        .await
        .expect("key");
    assert_eq!(by_key.user(), "agent:bot");
    // A token whose sub is the bearer agent's id names another user.
    let p = a
        .oauth_principal(oauth_identity("client-1", Some("bot")), ISS)
        .await
        .expect("principal");
    assert_eq!(p.user(), "oauth:https://as.example:bot");
    assert_ne!(p.user(), by_key.user());
    assert_ne!(
        crate::connect::user_of(&p),
        crate::connect::user_of(&by_key)
    );
}

/// Counts key reads and holds each 20 ms, so concurrent lookups overlap.
#[derive(Debug)]
struct SlowCountingStore {
    inner: MemoryStore,
    key_reads: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Store for SlowCountingStore {
    async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.key_reads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.inner.get_key(key_id).await
    }
    async fn create_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        self.inner.create_agent(agent).await
    }
    async fn get_agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.inner.get_agent(agent_id).await
    }
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.inner.list_agents().await
    }
    async fn update_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        self.inner.update_agent(agent).await
    }
    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.inner.create_key(key).await
    }
    async fn list_keys(&self, agent_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list_keys(agent_id).await
    }
    async fn revoke_key(&self, key_id: &str) -> Result<KeyRecord, StoreError> {
        self.inner.revoke_key(key_id).await
    }
    async fn get_tool_policy(
        &self,
        tool: &str,
    ) -> Result<Option<crate::store::ToolPolicy>, StoreError> {
        self.inner.get_tool_policy(tool).await
    }
    async fn put_tool_policy(
        &self,
        tool: &str,
        policy: Option<crate::store::ToolPolicy>,
    ) -> Result<(), StoreError> {
        self.inner.put_tool_policy(tool, policy).await
    }
    async fn bind_cert(&self, binding: &crate::store::CertBinding) -> Result<(), StoreError> {
        self.inner.bind_cert(binding).await
    }
    async fn get_cert(&self, id: &str) -> Result<Option<crate::store::CertBinding>, StoreError> {
        self.inner.get_cert(id).await
    }
    async fn unbind_cert(&self, id: &str) -> Result<(), StoreError> {
        self.inner.unbind_cert(id).await
    }
}

/// Many concurrent requests with distinct tokens of a few key ids (a guessing flood) cost one
/// store read per key id, not one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_of_one_key_id_read_the_store_once() {
    use std::sync::atomic::Ordering;
    let store = Arc::new(SlowCountingStore {
        inner: MemoryStore::new(),
        key_reads: std::sync::atomic::AtomicUsize::new(0),
    });
    let a = Arc::new(Authenticator::new(store.clone(), Duration::from_secs(30)));
    let ids = ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"];
    let calls = (0..60).map(|i| {
        let a = a.clone();
        let token = format!("tg_{}_{:0>43}", ids[i % ids.len()], i);
        tokio::spawn(async move {
            a.authenticate(&Request::new(&event(Some(&format!("Bearer {token}")))))
                .await
        })
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(
            r.expect("task").expect_err("unknown").error,
            AuthError::UnknownToken
        );
    }
    assert_eq!(store.key_reads.load(Ordering::SeqCst), ids.len());
}

fn counting_store() -> Arc<SlowCountingStore> {
    Arc::new(SlowCountingStore {
        inner: MemoryStore::new(),
        key_reads: std::sync::atomic::AtomicUsize::new(0),
    })
}

/// A token that fails its checksum (random, mistyped, forged) is refused without a store read;
/// one with a valid checksum but an unknown id costs exactly one (so the counter counts).
#[tokio::test]
async fn a_key_with_a_wrong_checksum_is_refused_without_a_store_read() {
    use std::sync::atomic::Ordering;
    let store = counting_store();
    let a = Authenticator::new(store.clone(), Duration::from_secs(30));
    let good = keys::issue().token;
    let mut forged = good.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(forged).expect("ascii");
    for token in [forged.as_str(), &good[..good.len() - 1], "tg_not-a-key"] {
        let err = run(&a, Some(&format!("Bearer {token}")))
            .await
            .expect_err("refused");
        assert_eq!(err, AuthError::UnknownToken);
    }
    assert_eq!(store.key_reads.load(Ordering::SeqCst), 0);
    let err = run(&a, Some(&format!("Bearer {good}")))
        .await
        .expect_err("unknown key");
    assert_eq!(err, AuthError::UnknownToken);
    assert_eq!(store.key_reads.load(Ordering::SeqCst), 1);
}

/// A key issued before the checksum (no check characters) keeps working by default and is
/// refused offline once `TOLLGATE_ACCEPT_LEGACY_KEYS=false`.
#[tokio::test]
async fn legacy_keys_work_until_the_operator_turns_them_off() {
    use std::sync::atomic::Ordering;
    let (memory, token, key_id) = seeded().await;
    let store = counting_store();
    let agent = memory.get_agent("bot").await.expect("read").expect("agent");
    store.inner.create_agent(&agent).await.expect("agent");
    let mut record = memory.get_key(&key_id).await.expect("read").expect("key");
    let legacy = format!("tg_prevkey23456_{}", &token[16..16 + 43]);
    assert_eq!(
        keys::shape(&legacy),
        keys::Shape::Key {
            id: "prevkey23456",
            checked: false
        }
    );
    record.key_id = "prevkey23456".to_owned();
    record.digest_hex = keys::digest_hex(&legacy);
    store.inner.create_key(&record).await.expect("legacy key");

    let on = Authenticator::new(store.clone(), Duration::from_secs(30));
    let p = run(&on, Some(&format!("Bearer {legacy}")))
        .await
        .expect("legacy key accepted by default");
    assert_eq!(p.credential_id, "prevkey23456");

    let config = crate::Config::from_lookup(|k| {
        (k == "TOLLGATE_ACCEPT_LEGACY_KEYS").then(|| "false".to_owned())
    })
    .expect("config");
    assert!(!config.auth.accept_legacy_keys);
    let off = Authenticator::new(store.clone(), Duration::from_secs(30)).with_config(
        &config.auth,
        None,
        None,
    );
    let reads = store.key_reads.load(Ordering::SeqCst);
    let err = run(&off, Some(&format!("Bearer {legacy}")))
        .await
        .expect_err("legacy key refused");
    assert_eq!(err, AuthError::UnknownToken);
    assert_eq!(store.key_reads.load(Ordering::SeqCst), reads);
    // A checksummed key still works with legacy keys off.
    store
        .inner
        .create_key(&memory.get_key(&key_id).await.expect("r").expect("k"))
        .await
        .expect("key");
    let p = run(&off, Some(&format!("Bearer {token}")))
        .await
        .expect("checked key");
    assert_eq!(p.credential_id, key_id);
}
