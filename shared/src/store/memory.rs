//! In-memory [`Store`] for unit tests of pure logic. Not used by any function.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{AgentRecord, CertBinding, KeyRecord, KeyStatus, Store, StoreError, ToolPolicy};

/// A [`Store`] in a mutex; counts key reads so cache tests can see them.
#[derive(Debug, Default)]
pub struct MemoryStore {
    agents: Mutex<BTreeMap<String, AgentRecord>>,
    keys: Mutex<BTreeMap<String, KeyRecord>>,
    tool_policies: Mutex<BTreeMap<String, ToolPolicy>>,
    certs: Mutex<BTreeMap<String, CertBinding>>,
    key_reads: AtomicU64,
    policy_reads_fail: AtomicBool,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times `get_key` was called.
    pub fn key_reads(&self) -> u64 {
        self.key_reads.load(Ordering::Relaxed)
    }

    /// Makes `get_tool_policy` fail (`true`) or answer again (`false`), as during an outage.
    pub fn fail_tool_policy_reads(&self, fail: bool) {
        self.policy_reads_fail.store(fail, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.key_reads.fetch_add(1, Ordering::Relaxed);
        Ok(lock(&self.keys).get(key_id).cloned())
    }

    async fn create_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        let mut agents = lock(&self.agents);
        if agents.contains_key(&agent.agent_id) {
            return Err(StoreError::AlreadyExists(format!(
                "agent {}",
                agent.agent_id
            )));
        }
        agents.insert(agent.agent_id.clone(), agent.clone());
        Ok(())
    }

    async fn get_agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        Ok(lock(&self.agents).get(agent_id).cloned())
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        Ok(lock(&self.agents).values().cloned().collect())
    }

    async fn update_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        let mut agents = lock(&self.agents);
        let slot = agents
            .get_mut(&agent.agent_id)
            .ok_or_else(|| StoreError::NotFound(format!("agent {}", agent.agent_id)))?;
        *slot = agent.clone();
        for key in lock(&self.keys)
            .values_mut()
            .filter(|k| k.agent_id == agent.agent_id)
        {
            key.agent_status = agent.status;
            key.scopes = agent.scopes.clone();
            key.budget = agent.budget.clone();
        }
        Ok(())
    }

    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let agents = lock(&self.agents);
        let current = agents.get(&key.agent_id).is_some_and(|a| {
            a.status == key.agent_status && a.scopes == key.scopes && a.budget == key.budget
        });
        if !current {
            return Err(StoreError::NotFound(format!("agent {}", key.agent_id)));
        }
        let mut keys = lock(&self.keys);
        if keys.contains_key(&key.key_id) {
            return Err(StoreError::AlreadyExists(format!("key {}", key.key_id)));
        }
        keys.insert(key.key_id.clone(), key.clone());
        Ok(())
    }

    async fn list_keys(&self, agent_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(lock(&self.keys)
            .values()
            .filter(|k| k.agent_id == agent_id)
            .cloned()
            .collect())
    }

    async fn revoke_key(&self, key_id: &str) -> Result<KeyRecord, StoreError> {
        let mut keys = lock(&self.keys);
        let key = keys
            .get_mut(key_id)
            .ok_or_else(|| StoreError::NotFound(format!("key {key_id}")))?;
        key.status = KeyStatus::Revoked;
        Ok(key.clone())
    }

    async fn get_tool_policy(&self, tool: &str) -> Result<Option<ToolPolicy>, StoreError> {
        if self.policy_reads_fail.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable("tool policy read failed".into()));
        }
        Ok(lock(&self.tool_policies).get(tool).copied())
    }

    async fn put_tool_policy(
        &self,
        tool: &str,
        policy: Option<ToolPolicy>,
    ) -> Result<(), StoreError> {
        let mut policies = lock(&self.tool_policies);
        match policy {
            Some(p) => policies.insert(tool.to_owned(), p),
            None => policies.remove(tool),
        };
        Ok(())
    }

    async fn bind_cert(&self, binding: &CertBinding) -> Result<(), StoreError> {
        if !lock(&self.agents).contains_key(&binding.agent_id) {
            return Err(StoreError::NotFound(format!("agent {}", binding.agent_id)));
        }
        let mut certs = lock(&self.certs);
        if certs.contains_key(&binding.id) {
            return Err(StoreError::AlreadyExists(format!(
                "certificate {}",
                binding.id
            )));
        }
        certs.insert(binding.id.clone(), binding.clone());
        Ok(())
    }

    async fn get_cert(&self, id: &str) -> Result<Option<CertBinding>, StoreError> {
        Ok(lock(&self.certs).get(id).cloned())
    }

    async fn unbind_cert(&self, id: &str) -> Result<(), StoreError> {
        lock(&self.certs)
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| StoreError::NotFound(format!("certificate {id}")))
    }
}
