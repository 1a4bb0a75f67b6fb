//! Two budget layers that compose: the agent layer (calls per minute AND per day, plus an
//! optional per-tool cap for that agent) and the tool layer (calls per minute across agents,
//! optionally sharded). A call must pass every bucket.
//!
//! All buckets of a call are taken in parallel (one round trip of latency, one write each);
//! when any bucket refuses, the tokens the others gave are refunded, so a refused call costs
//! no layer any budget. A per-instance "refused until" memory answers an agent that keeps
//! calling after a 429 without touching the store. When the store fails or is slow, the
//! tool's policy decides: fail closed (503) or admit on a per-instance local bucket.

pub mod buckets;
pub mod gcra;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buckets::{BucketStore, MemoryBuckets};
use gcra::{Decision, Rate};

use crate::auth::Principal;
use crate::store::{AgentBudget, Store, ToolPolicy, now_ms};
use crate::tool::{StoreFailure, ToolSpec};

/// Which layer a bucket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// The calling agent's budgets.
    Agent,
    /// The tool's budget across agents.
    Tool,
}

/// Which policy a bucket enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// The agent's calls per minute.
    AgentPerMinute,
    /// The agent's calls per day.
    AgentPerDay,
    /// The agent's calls per minute to this tool.
    AgentTool,
    /// The tool's calls per minute across agents.
    Tool,
}

impl PolicyName {
    /// Name in headers, bodies and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentPerMinute => "agent_per_minute",
            Self::AgentPerDay => "agent_per_day",
            Self::AgentTool => "agent_tool",
            Self::Tool => "tool",
        }
    }
}

/// One bucket a call must pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Store key.
    pub key: String,
    /// Layer.
    pub layer: Layer,
    /// Policy.
    pub policy: PolicyName,
    /// Calls allowed per window (as configured, before sharding).
    pub limit: u64,
    /// Window in seconds.
    pub window_s: u64,
    /// The bucket's rate (after sharding).
    pub rate: Rate,
}

/// Deployment-wide defaults for agents without their own budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentDefaults {
    /// Calls per minute (`TOLLGATE_AGENT_PER_MINUTE`, default 60).
    pub per_minute: u32,
    /// Calls per day (`TOLLGATE_AGENT_PER_DAY`, default 10000).
    pub per_day: u32,
}

impl Default for AgentDefaults {
    fn default() -> Self {
        Self {
            per_minute: 60,
            per_day: 10_000,
        }
    }
}

/// What an admitted call learns about its budget (for `RateLimit` headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Every policy that applied: `(policy, limit, window_s)`.
    pub policies: Vec<(PolicyName, u64, u64)>,
    /// The tightest bucket: `(policy, remaining, seconds until full)`.
    pub tightest: Option<(PolicyName, u64, u64)>,
    /// Admitted on a local bucket because the store failed (fail open).
    pub fail_open: bool,
    /// Store requests this decision made.
    pub requests: u32,
}

/// Why a call was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// A bucket is empty.
    OverBudget {
        /// The bucket that refused (the longest wait when several did).
        bucket: Bucket,
        /// Wait before a call can be admitted.
        retry_after_ms: u64,
        /// Every policy that applied, for `RateLimit-Policy`.
        policies: Vec<(PolicyName, u64, u64)>,
        /// Answered from the refused-until memory without a store request.
        from_memory: bool,
    },
    /// The store failed and the tool fails closed.
    StoreUnavailable,
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct BudgetCounters {
    /// Store requests made (takes, retries, refunds).
    pub store_requests: AtomicU64,
    /// Refunds issued.
    pub refunds: AtomicU64,
    /// Calls admitted on a local bucket because the store failed.
    pub fail_open_admissions: AtomicU64,
    /// Calls refused from the refused-until memory.
    pub memory_refusals: AtomicU64,
}

/// The clock budgets read (injectable for tests).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

struct CachedPolicy {
    policy: Option<ToolPolicy>,
    fetched: Instant,
}

/// Budget decisions for one process; shared by every request.
pub struct Budgets {
    buckets: Arc<dyn BucketStore>,
    policies: Arc<dyn Store>,
    local: MemoryBuckets,
    defaults: AgentDefaults,
    timeout: Duration,
    policy_ttl: Duration,
    clock: Clock,
    refused_until: Mutex<HashMap<String, u64>>,
    last_tat: Mutex<HashMap<String, u64>>,
    policy_cache: Mutex<HashMap<String, CachedPolicy>>,
    /// Counters.
    pub counters: BudgetCounters,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets")
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;
const MAX_MEMORY_ENTRIES: usize = 50_000;
/// How soon a failed tool-policy read is retried.
const POLICY_RETRY: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Budgets {
    /// Budgets over `buckets` (bucket state) and `policies` (tool overrides), with `timeout`
    /// for one decision and `policy_ttl` for cached tool overrides.
    pub fn new(
        buckets: Arc<dyn BucketStore>,
        policies: Arc<dyn Store>,
        defaults: AgentDefaults,
        timeout: Duration,
        policy_ttl: Duration,
    ) -> Self {
        Self {
            buckets,
            policies,
            local: MemoryBuckets::default(),
            defaults,
            timeout,
            policy_ttl,
            clock: Arc::new(now_ms),
            refused_until: Mutex::new(HashMap::new()),
            last_tat: Mutex::new(HashMap::new()),
            policy_cache: Mutex::new(HashMap::new()),
            counters: BudgetCounters::default(),
        }
    }

    /// The same budgets reading time from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The tool's effective policy: its override (cached per instance) over its default. A
    /// failed or slow read keeps the last known override and retries soon, rather than
    /// caching the built-in default over a known override for a whole TTL.
    async fn tool_policy(&self, spec: &ToolSpec, deadline: tokio::time::Instant) -> ToolPolicy {
        let default_fail_open = spec.budget.on_store_failure == StoreFailure::FailOpen;
        let resolve = |o: Option<ToolPolicy>| {
            let p = o.unwrap_or(ToolPolicy {
                per_minute: spec.budget.per_minute,
                burst: spec.budget.burst,
                shards: 1,
                fail_open: None,
            });
            ToolPolicy {
                fail_open: Some(p.fail_open.unwrap_or(default_fail_open)),
                ..p
            }
        };
        let previous = {
            let cache = lock(&self.policy_cache);
            match cache.get(spec.name) {
                Some(c) if c.fetched.elapsed() < self.policy_ttl => return resolve(c.policy),
                Some(c) => Some(c.policy),
                None => None,
            }
        };
        let fetched =
            tokio::time::timeout_at(deadline, self.policies.get_tool_policy(spec.name)).await;
        let (policy, fetched_at) = match fetched {
            Ok(Ok(p)) => (p, Instant::now()),
            failed => {
                let cause = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timeout".to_owned(),
                };
                tracing::warn!(
                    cause,
                    tool = spec.name,
                    "tool policy read failed; keeping the last known policy"
                );
                // Retry within POLICY_RETRY rather than a whole TTL.
                let retry_at = Instant::now()
                    .checked_sub(self.policy_ttl.saturating_sub(POLICY_RETRY))
                    .unwrap_or_else(Instant::now);
                (previous.flatten(), retry_at)
            }
        };
        lock(&self.policy_cache).insert(
            spec.name.to_owned(),
            CachedPolicy {
                policy,
                fetched: fetched_at,
            },
        );
        resolve(policy)
    }

    /// The buckets a call by `principal` to `spec` must pass, and the tool's policy.
    pub async fn plan(&self, principal: &Principal, spec: &ToolSpec) -> (Vec<Bucket>, ToolPolicy) {
        self.plan_by(principal, spec, tokio::time::Instant::now() + self.timeout)
            .await
    }

    async fn plan_by(
        &self,
        principal: &Principal,
        spec: &ToolSpec,
        deadline: tokio::time::Instant,
    ) -> (Vec<Bucket>, ToolPolicy) {
        let tool = self.tool_policy(spec, deadline).await;
        (
            plan_buckets(principal, spec.name, &principal.budget, self.defaults, tool),
            tool,
        )
    }

    /// Admits or refuses one call.
    #[tracing::instrument(name = "budget", skip_all, fields(budget.requests = tracing::field::Empty))]
    pub async fn admit(
        &self,
        principal: &Principal,
        spec: &ToolSpec,
    ) -> Result<Admission, Refusal> {
        // One deadline for the whole decision: the policy read and the bucket updates share it.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (buckets, tool) = self.plan_by(principal, spec, deadline).await;
        let policies: Vec<_> = buckets
            .iter()
            .map(|b| (b.policy, b.limit, b.window_s))
            .collect();
        let now = (self.clock)();
        if let Some(refusal) = self.remembered_refusal(&buckets, now, &policies) {
            self.counters
                .memory_refusals
                .fetch_add(1, Ordering::Relaxed);
            return Err(refusal);
        }
        let decided =
            tokio::time::timeout_at(deadline, self.take_all(&*self.buckets, &buckets, now)).await;
        let (takes, requests) = match decided {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return self
                    .store_failed(&buckets, tool, now, &policies, &e.to_string())
                    .await;
            }
            Err(_) => {
                return self
                    .store_failed(&buckets, tool, now, &policies, "timeout")
                    .await;
            }
        };
        tracing::Span::current().record("budget.requests", requests);
        self.settle(
            &*self.buckets,
            &buckets,
            &takes,
            now,
            policies,
            false,
            requests,
        )
        .await
    }

    async fn take_all(
        &self,
        store: &dyn BucketStore,
        buckets: &[Bucket],
        now: u64,
    ) -> Result<(Vec<Decision>, u32), crate::store::StoreError> {
        let hints: Vec<Option<u64>> = {
            let last = lock(&self.last_tat);
            buckets.iter().map(|b| last.get(&b.key).copied()).collect()
        };
        let takes = futures::future::join_all(
            buckets
                .iter()
                .zip(hints)
                .map(|(b, hint)| store.take(&b.key, now, b.rate, hint)),
        )
        .await;
        let mut decisions = Vec::with_capacity(takes.len());
        let mut requests = 0;
        let mut failure = None;
        for (bucket, take) in buckets.iter().zip(takes) {
            match take {
                Ok(t) => {
                    requests += t.requests;
                    if let Decision::Admit { new_tat, .. } = t.decision {
                        lock(&self.last_tat).insert(bucket.key.clone(), new_tat);
                    }
                    decisions.push(t.decision);
                }
                Err(e) => {
                    failure = Some(e);
                    decisions.push(Decision::Refuse { retry_after_ms: 0 });
                }
            }
        }
        self.counters
            .store_requests
            .fetch_add(u64::from(requests), Ordering::Relaxed);
        if let Some(e) = failure {
            // Give back what the other buckets gave before reporting the failure.
            self.refund(store, buckets, &decisions).await;
            return Err(e);
        }
        Ok((decisions, requests))
    }

    async fn refund(&self, store: &dyn BucketStore, buckets: &[Bucket], decisions: &[Decision]) {
        let refunds = buckets
            .iter()
            .zip(decisions)
            .filter(|(_, d)| matches!(d, Decision::Admit { .. }))
            .map(|(b, _)| async move {
                if let Err(e) = store.refund(&b.key, (self.clock)(), b.rate).await {
                    tracing::warn!(error = %e, bucket = %b.key, "budget refund failed");
                }
            });
        let n = futures::future::join_all(refunds).await.len() as u64;
        self.counters.refunds.fetch_add(n, Ordering::Relaxed);
        self.counters.store_requests.fetch_add(n, Ordering::Relaxed);
    }

    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        store: &dyn BucketStore,
        buckets: &[Bucket],
        decisions: &[Decision],
        now: u64,
        policies: Vec<(PolicyName, u64, u64)>,
        fail_open: bool,
        requests: u32,
    ) -> Result<Admission, Refusal> {
        let worst = buckets
            .iter()
            .zip(decisions)
            .filter_map(|(b, d)| match d {
                Decision::Refuse { retry_after_ms } => Some((b, *retry_after_ms)),
                Decision::Admit { .. } => None,
            })
            .max_by_key(|(_, wait)| *wait);
        if let Some((bucket, retry_after_ms)) = worst {
            self.refund(store, buckets, decisions).await;
            {
                let mut memory = lock(&self.refused_until);
                if memory.len() >= MAX_MEMORY_ENTRIES {
                    memory.retain(|_, until| *until > now);
                }
                memory.insert(bucket.key.clone(), now + retry_after_ms);
            }
            return Err(Refusal::OverBudget {
                bucket: bucket.clone(),
                retry_after_ms,
                policies,
                from_memory: false,
            });
        }
        let tightest = buckets
            .iter()
            .zip(decisions)
            .filter_map(|(b, d)| match d {
                Decision::Admit { new_tat, remaining } => Some((
                    b.policy,
                    *remaining,
                    new_tat.saturating_sub(now).div_ceil(1000),
                )),
                Decision::Refuse { .. } => None,
            })
            .min_by_key(|(_, remaining, _)| *remaining);
        Ok(Admission {
            policies,
            tightest,
            fail_open,
            requests,
        })
    }

    fn remembered_refusal(
        &self,
        buckets: &[Bucket],
        now: u64,
        policies: &[(PolicyName, u64, u64)],
    ) -> Option<Refusal> {
        let memory = lock(&self.refused_until);
        buckets
            .iter()
            .filter_map(|b| {
                memory
                    .get(&b.key)
                    .filter(|until| **until > now)
                    .map(|until| (b, until - now))
            })
            .max_by_key(|(_, wait)| *wait)
            .map(|(bucket, retry_after_ms)| Refusal::OverBudget {
                bucket: bucket.clone(),
                retry_after_ms,
                policies: policies.to_vec(),
                from_memory: true,
            })
    }

    async fn store_failed(
        &self,
        buckets: &[Bucket],
        tool: ToolPolicy,
        now: u64,
        policies: &[(PolicyName, u64, u64)],
        cause: &str,
    ) -> Result<Admission, Refusal> {
        if tool.fail_open != Some(true) {
            tracing::warn!(cause, "budget store unavailable; failing closed");
            return Err(Refusal::StoreUnavailable);
        }
        self.counters
            .fail_open_admissions
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            cause,
            "budget store unavailable; failing open on the local bucket"
        );
        let (decisions, _) = self
            .take_all(&self.local, buckets, now)
            .await
            .map_err(|_| Refusal::StoreUnavailable)?;
        self.settle(
            &self.local,
            buckets,
            &decisions,
            now,
            policies.to_vec(),
            true,
            0,
        )
        .await
    }
}

/// The buckets for one call (pure: no I/O).
pub fn plan_buckets(
    principal: &Principal,
    tool: &str,
    budget: &AgentBudget,
    defaults: AgentDefaults,
    policy: ToolPolicy,
) -> Vec<Bucket> {
    let agent = &principal.agent_id;
    let mut out = Vec::with_capacity(4);
    let per_minute = u64::from(budget.per_minute.unwrap_or(defaults.per_minute));
    let per_day = u64::from(budget.per_day.unwrap_or(defaults.per_day));
    let mut push =
        |key: String, layer, policy_name, limit: u64, window_ms: u64, burst: u64, shards: u64| {
            if let Some(rate) = Rate::per_window(limit, window_ms, burst) {
                out.push(Bucket {
                    key,
                    layer,
                    policy: policy_name,
                    limit,
                    window_s: window_ms / 1000,
                    rate: rate.sharded(shards),
                });
            }
        };
    push(
        format!("agent#{agent}#minute"),
        Layer::Agent,
        PolicyName::AgentPerMinute,
        per_minute,
        MINUTE_MS,
        per_minute,
        1,
    );
    push(
        format!("agent#{agent}#day"),
        Layer::Agent,
        PolicyName::AgentPerDay,
        per_day,
        DAY_MS,
        per_day,
        1,
    );
    if let Some(cap) = budget.tools.get(tool) {
        let cap = u64::from(*cap);
        push(
            format!("agent#{agent}#tool#{tool}"),
            Layer::Agent,
            PolicyName::AgentTool,
            cap,
            MINUTE_MS,
            cap,
            1,
        );
    }
    let shards = u64::from(policy.shards.max(1));
    let shard = if shards > 1 {
        rand::random_range(0..shards)
    } else {
        0
    };
    push(
        format!("tool#{tool}#{shard}"),
        Layer::Tool,
        PolicyName::Tool,
        u64::from(policy.per_minute),
        MINUTE_MS,
        u64::from(policy.burst),
        shards,
    );
    out
}

#[cfg(test)]
mod tests;
