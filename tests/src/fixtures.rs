//! The agents and bearer keys the event fixtures in `events/` authenticate with.
//!
//! TEST-ONLY CREDENTIALS. These tokens are public (they sit in this file and in every fixture),
//! so they must never be seeded into a deployed table: only the fixture test
//! (`tests/tests/fixtures.rs`, an in-memory store) and `make invoke` (`seed-fixtures` against a
//! local DynamoDB-protocol server) call [`seed`]. Nothing in `functions/` or `infra/` does.
//!
//! Each token has the real shape (`tg_<12-char key id>_<43 base64url chars>`, see
//! `tollgate::auth::keys`) so it reaches the store lookup; the secrets are fixed strings
//! (base64url of SHA-256 of `tollgate-fixture-<key id>`), not random, so fixtures never change.

use std::collections::BTreeSet;

use tollgate::auth::keys;
use tollgate::store::{
    AgentBudget, AgentRecord, AgentStatus, CertBinding, KeyRecord, KeyStatus, Store, StoreError,
};

/// Agent holding every scope any tool requires.
pub const AGENT_FULL: &str = "fixture-full";
/// Agent holding only `customers:read`.
pub const AGENT_READER: &str = "fixture-reader";
/// Agent switched off by an operator.
pub const AGENT_DISABLED: &str = "fixture-disabled";
/// Agent with every scope and a budget of one call per minute.
pub const AGENT_THROTTLED: &str = "fixture-throttled";

/// Active key of [`AGENT_FULL`].
pub const TOKEN_FULL: &str = "tg_fxactivekey2_5qwYda5Hxh_vbYrQnbRFxeuYk2b-zqfFFKrl7WJF7Ts";
/// Revoked key of [`AGENT_FULL`].
pub const TOKEN_REVOKED: &str = "tg_fxrevkdkey22_WZgTN-fQl9Jzi4fAwK_VmCRD3YLERdidwkmSC_Yyc9E";
/// Key of [`AGENT_FULL`] that expired in 2001.
pub const TOKEN_EXPIRED: &str = "tg_fxexpiredkey_UId1Q1jarHRrV4E7Rq3SE0lAwPEERPClLBzCIiqcXP8";
/// Active key of [`AGENT_READER`].
pub const TOKEN_READER: &str = "tg_fxreadrkey22_ZgdinQfBx5AaVveeA8L5OC9H5Ql5x6_oAAFfsANxWBU";
/// Active key of [`AGENT_DISABLED`].
pub const TOKEN_DISABLED_AGENT: &str =
    "tg_fxdisabdkey2_31F1vRvt47yzLb_QB60GN8wlD8j4HOt_pw30v_C1ZQM";
/// Active key of [`AGENT_THROTTLED`].
pub const TOKEN_THROTTLED: &str = "tg_fxthrtdkey22_u19LT-BH5-xk_4fzENgz8PKklKD7oy-3ZcbSEWguG5w";
/// Well-formed, but never seeded: the store does not know its key id.
pub const TOKEN_UNKNOWN: &str = "tg_fxunknwnkey2_W2GF7gkSiFx41a4EBucdZ9DNkeoUBTpzc0fNgDat5EQ";

/// Client certificate (PEM) bound by fingerprint to [`AGENT_FULL`] (mTLS fixtures).
pub const CERT_KNOWN_PEM: &str = include_str!("../../events/certs/known.pem");
/// Client certificate bound by fingerprint to [`AGENT_FULL`], whose validity ended in 2020.
pub const CERT_EXPIRED_PEM: &str = include_str!("../../events/certs/expired.pem");
/// Subject DN bound to [`AGENT_READER`]: any truststore certificate with it authenticates.
pub const CERT_READER_SUBJECT: &str = "O=Tollgate Fixtures,CN=fixture-reader-client";

/// Every scope the example tools require (`customers:read`, `tickets:write`,
/// `shipments:read`), as the gateway's catalog declares them.
pub fn all_scopes() -> BTreeSet<String> {
    gateway::catalog()
        .map(|c| c.scopes().into_iter().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// 2026-01-01T00:00:00Z: a fixed creation time, so seeded records never vary.
const CREATED_AT_MS: u64 = 1_767_225_600_000;
/// 2001-09-09T01:46:40Z: long past.
const EXPIRED_AT_MS: u64 = 1_000_000_000_000;

/// Creates the fixture agents and keys in `store`: one agent with every scope (keys active,
/// revoked and expired), one with `customers:read` only, one disabled, one allowed a single
/// call a minute; client-certificate bindings for the mTLS fixtures. Idempotent: records that exist already are left as they are.
pub async fn seed(store: &dyn Store) -> Result<(), StoreError> {
    let all = all_scopes();
    let reader = BTreeSet::from(["customers:read".to_owned()]);
    let one_a_minute = AgentBudget {
        per_minute: Some(1),
        ..AgentBudget::default()
    };
    let agent = |agent_id: &str, description: &str, status, scopes: &BTreeSet<String>, budget| {
        AgentRecord {
            agent_id: agent_id.to_owned(),
            description: description.to_owned(),
            status,
            scopes: scopes.clone(),
            budget,
            created_at_ms: CREATED_AT_MS,
        }
    };
    let agents = [
        agent(
            AGENT_FULL,
            "Fixture agent with every scope",
            AgentStatus::Active,
            &all,
            AgentBudget::default(),
        ),
        agent(
            AGENT_READER,
            "Fixture agent with customers:read only",
            AgentStatus::Active,
            &reader,
            AgentBudget::default(),
        ),
        agent(
            AGENT_DISABLED,
            "Fixture agent switched off",
            AgentStatus::Disabled,
            &all,
            AgentBudget::default(),
        ),
        agent(
            AGENT_THROTTLED,
            "Fixture agent allowed one call a minute",
            AgentStatus::Active,
            &all,
            one_a_minute,
        ),
    ];
    for a in &agents {
        ignore_existing(store.create_agent(a).await)?;
    }
    // (token, owner, key status, expiry)
    let fixture_keys = [
        (TOKEN_FULL, AGENT_FULL, KeyStatus::Active, None),
        (TOKEN_REVOKED, AGENT_FULL, KeyStatus::Revoked, None),
        (
            TOKEN_EXPIRED,
            AGENT_FULL,
            KeyStatus::Active,
            Some(EXPIRED_AT_MS),
        ),
        (TOKEN_READER, AGENT_READER, KeyStatus::Active, None),
        (
            TOKEN_DISABLED_AGENT,
            AGENT_DISABLED,
            KeyStatus::Active,
            None,
        ),
        (TOKEN_THROTTLED, AGENT_THROTTLED, KeyStatus::Active, None),
    ];
    for (token, agent_id, status, expires_at_ms) in fixture_keys {
        let malformed = || StoreError::Corrupt(format!("fixture key of {agent_id}"));
        let owner = agents
            .iter()
            .find(|a| a.agent_id == agent_id)
            .ok_or_else(malformed)?;
        let key = KeyRecord {
            key_id: keys::key_id(token).ok_or_else(malformed)?.to_owned(),
            agent_id: agent_id.to_owned(),
            digest_hex: keys::digest_hex(token),
            status,
            created_at_ms: CREATED_AT_MS,
            expires_at_ms,
            // A key carries a copy of its agent's status, scopes and budget (see
            // `tollgate::store`).
            agent_status: owner.status,
            scopes: owner.scopes.clone(),
            budget: owner.budget.clone(),
        };
        ignore_existing(store.create_key(&key).await)?;
    }
    let cert_id = |pem: &str| {
        tollgate::auth::mtls::pem_to_der(pem)
            .map(|der| tollgate::auth::mtls::fingerprint(&der))
            .ok_or_else(|| StoreError::Corrupt("fixture certificate".to_owned()))
    };
    let bindings = [
        (cert_id(CERT_KNOWN_PEM)?, AGENT_FULL),
        (cert_id(CERT_EXPIRED_PEM)?, AGENT_FULL),
        (
            tollgate::auth::mtls::subject_binding(CERT_READER_SUBJECT),
            AGENT_READER,
        ),
    ];
    for (id, agent_id) in bindings {
        let binding = CertBinding {
            id,
            agent_id: agent_id.to_owned(),
            created_at_ms: CREATED_AT_MS,
        };
        ignore_existing(store.bind_cert(&binding).await)?;
    }
    Ok(())
}

/// `seed-fixtures` (for `make invoke`): creates the tollgate table and the app table on the
/// DynamoDB endpoint the environment names, then seeds the demo customers and the fixture
/// agents and keys. Idempotent.
pub async fn seed_local() -> anyhow::Result<()> {
    let config = tollgate::Config::from_env()?;
    let sdk = tollgate::lambda::sdk_config_from_env(&tollgate::tls::Trust::process()?);
    let db = aws_sdk_dynamodb::Client::new(&sdk);
    let store = crate::devstack::prepare_tables(&db, &config).await?;
    seed(&store).await?;
    eprintln!(
        "seeded {} and the app table (fixture agents {AGENT_FULL}, {AGENT_READER}, {AGENT_DISABLED}, {AGENT_THROTTLED})",
        config.table
    );
    Ok(())
}

fn ignore_existing(result: Result<(), StoreError>) -> Result<(), StoreError> {
    match result {
        Err(StoreError::AlreadyExists(_)) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_tollgate_shape() {
        for token in [
            TOKEN_FULL,
            TOKEN_REVOKED,
            TOKEN_EXPIRED,
            TOKEN_READER,
            TOKEN_DISABLED_AGENT,
            TOKEN_THROTTLED,
            TOKEN_UNKNOWN,
        ] {
            assert!(keys::key_id(token).is_some(), "{token}");
        }
    }

    #[tokio::test]
    async fn seed_is_idempotent_and_authenticates() {
        let store = tollgate::store::MemoryStore::new();
        seed(&store).await.expect("seed");
        seed(&store).await.expect("seed again");
        let full = store
            .get_key("fxactivekey2")
            .await
            .expect("read")
            .expect("seeded");
        assert_eq!(full.scopes, all_scopes());
        assert!(keys::digest_matches(TOKEN_FULL, &full.digest_hex));
        assert!(store.get_key("fxunknwnkey2").await.expect("read").is_none());
    }
}
