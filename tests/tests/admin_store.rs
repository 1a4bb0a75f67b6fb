//! Key lifecycles against a real DynamoDB-protocol server (single-threaded moto).
//!
//! - `keys create` racing `agents disable`: the key is written only while its agent still has
//!   the status, scopes and budget the key copies, so a disable landing between the agent read
//!   and the key write can never leave a working key for a disabled agent.
//! - `make dev`'s demo key: it expires, a restart reuses the previous token while it works,
//!   and a restart that cannot reuse it revokes the key it named.

use tollgate::admin;
use tollgate::auth::keys;
use tollgate::store::{AgentStatus, DynamoStore, KeyRecord, KeyStatus, Store, StoreError, now_ms};
use tollgate_tests::moto::Moto;

/// A key record as `keys create` builds it from the agent it read.
fn key_from(agent: &tollgate::store::AgentRecord) -> KeyRecord {
    let issued = keys::issue();
    KeyRecord {
        key_id: issued.key_id,
        agent_id: agent.agent_id.clone(),
        digest_hex: issued.digest_hex,
        status: KeyStatus::Active,
        created_at_ms: now_ms(),
        expires_at_ms: None,
        agent_status: agent.status,
        scopes: agent.scopes.clone(),
        budget: agent.budget.clone(),
    }
}

#[tokio::test]
async fn a_key_read_before_a_disable_is_not_written_after_it() -> anyhow::Result<()> {
    let moto = Moto::start()?;
    let client = tollgate::deps::aws_sdk_dynamodb::Client::new(&moto.sdk_config());
    let store = DynamoStore::new(client, "tollgate-key-race-test");
    store.create_table().await?;
    admin::create_agent(&store, "bot", "", &["customers:read".to_owned()]).await?;

    // `keys create` read the agent (active) ...
    let read = store.get_agent("bot").await?.expect("agent");
    // ... then `agents disable` landed ...
    admin::set_agent_status(&store, "bot", AgentStatus::Disabled).await?;
    // ... so the key built from the stale read is refused, and nothing is stored.
    let stale = key_from(&read);
    assert!(matches!(
        store.create_key(&stale).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.get_key(&stale.key_id).await?.is_none());

    // A scope removed in between is caught the same way.
    admin::set_agent_status(&store, "bot", AgentStatus::Active).await?;
    let read = store.get_agent("bot").await?.expect("agent");
    admin::change_scopes(&store, "bot", admin::ScopeChange::Set, &[]).await?;
    assert!(matches!(
        store.create_key(&key_from(&read)).await,
        Err(StoreError::NotFound(_))
    ));

    // `keys create` reads again: the key it makes carries the agent's current state.
    admin::set_agent_status(&store, "bot", AgentStatus::Disabled).await?;
    let created = admin::create_key(&store, "bot", None).await?;
    let stored = store.get_key(&created.record.key_id).await?.expect("key");
    assert_eq!(stored.agent_status, AgentStatus::Disabled);
    assert!(stored.scopes.is_empty());

    // A missing agent is still "not found".
    let mut ghost = key_from(&read);
    ghost.agent_id = "ghost".to_owned();
    assert!(matches!(
        store.create_key(&ghost).await,
        Err(StoreError::NotFound(_))
    ));
    Ok(())
}

#[tokio::test]
async fn make_dev_reuses_or_revokes_the_previous_demo_key() -> anyhow::Result<()> {
    use tollgate_tests::devstack::{DEMO_AGENT, DEMO_KEY_TTL, seed_demo_agent};
    let moto = Moto::start()?;
    let client = tollgate::deps::aws_sdk_dynamodb::Client::new(&moto.sdk_config());
    let store = DynamoStore::new(client, "tollgate-demo-key-test");
    store.create_table().await?;
    let catalog = tollgate::Catalog::new();
    let active = |keys: Vec<KeyRecord>| {
        keys.into_iter()
            .filter(|k| k.status == KeyStatus::Active)
            .collect::<Vec<_>>()
    };

    let first = seed_demo_agent(&store, &catalog, None).await?;
    let keys = active(store.list_keys(DEMO_AGENT).await?);
    assert_eq!(keys.len(), 1);
    let expires = keys[0].expires_at_ms.expect("the demo key expires");
    let ttl_ms = u64::try_from(DEMO_KEY_TTL.as_millis())?;
    assert!(expires <= now_ms() + ttl_ms && expires > now_ms() + ttl_ms / 2);

    // A restart with the token the last start wrote: the same key, nothing new.
    let again = seed_demo_agent(&store, &catalog, Some(&first)).await?;
    assert_eq!(again, first);
    assert_eq!(store.list_keys(DEMO_AGENT).await?.len(), 1);

    // A token file whose secret was altered: not reused; a new key, and the key the file
    // named is revoked.
    let altered = |token: &str| {
        let mut t = token.to_owned();
        let last = t.pop().expect("token");
        t.push(if last == 'A' { 'B' } else { 'A' });
        t
    };
    let second = seed_demo_agent(&store, &catalog, Some(&altered(&first))).await?;
    assert_ne!(second, first);
    let now_active = active(store.list_keys(DEMO_AGENT).await?);
    assert_eq!(
        now_active.len(),
        1,
        "the key the altered file named was revoked"
    );
    assert!(second.contains(&now_active[0].key_id));

    // A token whose key no longer works (revoked here; expired alike): a new key.
    admin::revoke_key(&store, &now_active[0].key_id).await?;
    let third = seed_demo_agent(&store, &catalog, Some(&second)).await?;
    assert_ne!(third, second);
    let now_active = active(store.list_keys(DEMO_AGENT).await?);
    assert_eq!(now_active.len(), 1);
    assert!(third.contains(&now_active[0].key_id));

    // No token file (another instance on a shared store): a new key, others left alone.
    let other = seed_demo_agent(&store, &catalog, None).await?;
    assert_eq!(active(store.list_keys(DEMO_AGENT).await?).len(), 2);
    assert_eq!(
        seed_demo_agent(&store, &catalog, Some(&other)).await?,
        other
    );
    Ok(())
}
