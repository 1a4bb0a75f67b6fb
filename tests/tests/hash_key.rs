//! The argument-hashing key against a real Secrets Manager protocol server (moto): fetched and
//! cached; kept when Secrets Manager goes down after warm-up; absent on a cold instance with
//! Secrets Manager down, which is counted and leaves hashed fields as summaries.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tollgate::audit::hash_key::HashKeys;
use tollgate::deps::aws_sdk_secretsmanager::Client;
use tollgate_tests::moto::Moto;

#[tokio::test]
async fn cached_key_survives_an_outage_and_a_cold_instance_degrades_to_summaries()
-> anyhow::Result<()> {
    let mut moto = Moto::start()?;
    let client = Client::new(&moto.sdk_config());
    let key = [7u8; 32];
    client
        .create_secret()
        .name("tollgate/test-hash-key")
        .secret_string(base64::engine::general_purpose::STANDARD.encode(key))
        .send()
        .await?;

    let warm = Arc::new(HashKeys::secrets_manager(
        client.clone(),
        "tollgate/test-hash-key",
        Duration::ZERO,
    ));
    warm.ensure().await;
    let first = warm.current().expect("key fetched");
    let hash = first.hash(&serde_json::json!("ada@example.com"));
    assert!(hash.starts_with("hmac-sha256:"));
    assert_eq!(
        hash,
        first.hash(&serde_json::json!("ada@example.com")),
        "stable for a key"
    );

    moto.stop();
    warm.refresh().await;
    let kept = warm.current().expect("cached key kept through the outage");
    assert_eq!(kept.hash(&serde_json::json!("ada@example.com")), hash);
    assert_eq!(
        warm.failures.load(Ordering::Relaxed),
        1,
        "the failed refresh is counted"
    );

    let cold = Arc::new(HashKeys::secrets_manager(
        client,
        "tollgate/test-hash-key",
        Duration::from_secs(300),
    ));
    let started = Instant::now();
    cold.ensure().await;
    assert!(
        cold.current().is_none(),
        "no key on a cold instance with Secrets Manager down"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the cold fetch is bounded"
    );
    assert!(cold.failures.load(Ordering::Relaxed) <= 1);
    let summary = tollgate::audit::redact_arguments(
        None,
        &serde_json::json!({"email": "ada@example.com"}),
        cold.current().as_ref(),
        true,
    );
    assert!(!summary.to_string().contains("ada@example.com"));
    Ok(())
}

#[tokio::test]
async fn rotating_the_secret_changes_the_key_version_and_the_hash() -> anyhow::Result<()> {
    let moto = Moto::start()?;
    let client = Client::new(&moto.sdk_config());
    let encode = |b: [u8; 32]| base64::engine::general_purpose::STANDARD.encode(b);
    client
        .create_secret()
        .name("rotating")
        .secret_string(encode([1; 32]))
        .send()
        .await?;
    let keys = Arc::new(HashKeys::secrets_manager(
        client.clone(),
        "rotating",
        Duration::ZERO,
    ));
    keys.refresh().await;
    let before = keys.current().expect("key");
    client
        .put_secret_value()
        .secret_id("rotating")
        .secret_string(encode([2; 32]))
        .send()
        .await?;
    keys.refresh().await;
    let after = keys.current().expect("key");
    assert_ne!(
        before.version, after.version,
        "each hash names the key version"
    );
    let v = serde_json::json!("C-1001");
    assert_ne!(before.hash(&v), after.hash(&v));
    Ok(())
}

/// Concurrent first calls of a cold instance (Lambda Managed Instances: many at once) make one
/// Secrets Manager request between them, not one each: a slow, failing Secrets Manager on
/// loopback counts the requests it gets while 32 calls start together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cold_calls_share_one_fetch() -> anyhow::Result<()> {
    use std::sync::atomic::AtomicUsize;
    use tollgate::deps::aws_sdk_secretsmanager::config::{
        BehaviorVersion, Credentials, Region, retry::RetryConfig,
    };
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let app = axum::Router::new().fallback(move || {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            axum::http::StatusCode::INTERNAL_SERVER_ERROR
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::from_conf(
        tollgate::deps::aws_sdk_secretsmanager::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(&endpoint)
            .retry_config(RetryConfig::disabled())
            .build(),
    );
    let keys = Arc::new(HashKeys::secrets_manager(
        client,
        "tollgate/test-hash-key",
        Duration::from_secs(300),
    ));
    let start = Arc::new(tokio::sync::Barrier::new(32));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (keys, start) = (keys.clone(), start.clone());
        calls.spawn(async move {
            start.wait().await;
            keys.ensure().await;
        });
    }
    while let Some(done) = calls.join_next().await {
        done?;
    }
    assert!(keys.current().is_none());
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "32 concurrent cold calls, one request"
    );
    server.abort();
    Ok(())
}
