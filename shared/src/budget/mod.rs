//! Two budget layers that compose: the agent layer (calls per minute AND per day, plus an
//! optional per-tool cap for that agent) and the tool layer (calls per minute across agents,
//! optionally sharded). A call must pass every bucket.
//!
//! The agent's buckets live on one store item and are taken with one conditional write; the
//! tool's bucket is another item. Both are taken in parallel (one round trip of latency); when
//! either refuses, the token the other gave goes back, so a refused call costs no layer any
//! budget. A busy instance takes several tokens at once (a lease, see [`lease`]) and admits
//! from them without a write. A per-instance "refused until" memory answers an agent that keeps
//! calling after a 429 without touching the store. When the store fails or is slow, the tool's
//! policy decides: fail closed (503) or admit on a per-instance local bucket.

pub mod buckets;
pub mod gcra;
pub mod lease;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buckets::{BucketStore, Grant, MemoryBuckets, Slot};
use gcra::{Rate, status};
use lease::{Lease, LeaseConfig, Leases, Local};

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
    /// The store item holding it (`agent#<id>`, `tool#<tool>#<shard>`).
    pub item: String,
    /// The item's attribute holding its TAT.
    pub attr: String,
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
    /// The limit or burst read is 0: the bucket admits nothing, ever (an operator's "deny
    /// all", never "unlimited").
    pub deny_all: bool,
}

impl Bucket {
    /// Identifies the bucket within this process (item and attribute).
    pub fn key(&self) -> String {
        format!("{}/{}", self.item, self.attr)
    }
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
    /// A bucket's limit is 0: nothing is admitted, retrying does not help.
    Denied {
        /// The bucket whose limit is 0.
        bucket: Bucket,
    },
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
    /// Leases taken (a take of more than one token).
    pub leases: AtomicU64,
    /// Group decisions answered from a lease without a store request.
    pub lease_hits: AtomicU64,
    /// Unused leased tokens given back to the store.
    pub lease_returns: AtomicU64,
}

/// The clock budgets read (injectable for tests).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

struct CachedPolicy {
    /// The tool's override as last read (`Some(None)`: read, there is none); `None` when no
    /// read has succeeded yet, so whether the operator overrode the tool is unknown.
    policy: Option<Option<ToolPolicy>>,
    fetched: Instant,
}

/// Budget decisions for one process; shared by every request.
pub struct Budgets {
    buckets: Arc<dyn BucketStore>,
    policies: Arc<dyn Store>,
    local: Arc<dyn BucketStore>,
    leases: Arc<Leases>,
    defaults: AgentDefaults,
    timeout: Duration,
    policy_ttl: Duration,
    clock: Clock,
    refused_until: Mutex<HashMap<String, u64>>,
    /// Per bucket: the last TAT this instance saw, and whether the last take found the bucket
    /// busy (TAT ahead of its clock).
    last_tat: Mutex<HashMap<(String, String), (u64, bool)>>,
    policy_cache: Mutex<HashMap<String, CachedPolicy>>,
    /// Counters.
    pub counters: Arc<BudgetCounters>,
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
            local: Arc::new(MemoryBuckets::default()),
            leases: Arc::new(Leases::new(LeaseConfig::EXACT)),
            defaults,
            timeout,
            policy_ttl,
            clock: Arc::new(now_ms),
            refused_until: Mutex::new(HashMap::new()),
            last_tat: Mutex::new(HashMap::new()),
            policy_cache: Mutex::new(HashMap::new()),
            counters: Arc::default(),
        }
    }

    /// The same budgets with quota leases as `config` says (exact mode without).
    pub fn with_leases(mut self, config: LeaseConfig) -> Self {
        self.leases = Arc::new(Leases::new(config));
        self
    }

    /// The same budgets reading time from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The tool's effective policy: its override (cached per instance) over its default. A
    /// failed or slow read keeps the last known override and retries soon, rather than
    /// caching the built-in default over a known override for a whole TTL. While no read has
    /// succeeded, the override is unknown and the tool fails closed whatever its built-in
    /// default says: the operator may have set it fail-closed, and admitting on a local bucket
    /// would break that.
    async fn tool_policy(&self, spec: &ToolSpec, deadline: tokio::time::Instant) -> ToolPolicy {
        let default_fail_open = spec.budget.on_store_failure == StoreFailure::FailOpen;
        let resolve = |known: Option<Option<ToolPolicy>>| {
            let default = ToolPolicy {
                per_minute: spec.budget.per_minute,
                burst: spec.budget.burst,
                shards: 1,
                fail_open: None,
            };
            match known {
                Some(o) => {
                    let p = o.unwrap_or(default);
                    ToolPolicy {
                        fail_open: Some(p.fail_open.unwrap_or(default_fail_open)),
                        ..p
                    }
                }
                None => ToolPolicy {
                    fail_open: Some(false),
                    ..default
                },
            }
        };
        let previous = {
            let cache = lock(&self.policy_cache);
            match cache.get(spec.name) {
                Some(c) if c.fetched.elapsed() < self.policy_ttl => return resolve(c.policy),
                Some(c) => c.policy,
                None => None,
            }
        };
        let fetched =
            tokio::time::timeout_at(deadline, self.policies.get_tool_policy(spec.name)).await;
        let (policy, fetched_at) = match fetched {
            Ok(Ok(p)) => (Some(p), Instant::now()),
            failed => {
                let cause = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timeout".to_owned(),
                };
                tracing::warn!(
                    cause,
                    tool = spec.name,
                    known = previous.is_some(),
                    "tool policy read failed; keeping the last known policy (fail closed if none)"
                );
                // Retry within POLICY_RETRY rather than a whole TTL.
                let retry_at = Instant::now()
                    .checked_sub(self.policy_ttl.saturating_sub(POLICY_RETRY))
                    .unwrap_or_else(Instant::now);
                (previous, retry_at)
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
        if let Some(bucket) = buckets.iter().find(|b| b.deny_all) {
            return Err(Refusal::Denied {
                bucket: bucket.clone(),
            });
        }
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
        let groups = groups_of(&buckets, spec.name);
        let store = self.buckets.clone();
        let decided =
            tokio::time::timeout_at(deadline, self.take_all(&store, &groups, now, true)).await;
        let (takes, requests) = match decided {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return self
                    .store_failed(&buckets, &groups, tool, now, &policies, &e.to_string())
                    .await;
            }
            Err(_) => {
                return self
                    .store_failed(&buckets, &groups, tool, now, &policies, "timeout")
                    .await;
            }
        };
        tracing::Span::current().record("budget.requests", requests);
        self.settle(
            &store, &buckets, &groups, &takes, now, policies, false, requests,
        )
        .await
    }

    /// Takes a token from every group in parallel (one round trip); on a store failure the
    /// tokens already taken go back before the error is reported.
    async fn take_all(
        &self,
        store: &Arc<dyn BucketStore>,
        groups: &[Group],
        now: u64,
        leases: bool,
    ) -> Result<(Vec<GroupTake>, u32), crate::store::StoreError> {
        let takes = futures::future::join_all(
            groups
                .iter()
                .map(|g| self.take_group(store, g, now, leases)),
        )
        .await;
        let mut out = Vec::with_capacity(takes.len());
        let mut requests = 0;
        let mut failure = None;
        for take in takes {
            match take {
                Ok(t) => {
                    requests += t.requests;
                    out.push(t);
                }
                Err(e) => {
                    failure = Some(e);
                    out.push(GroupTake::refused(0, 0));
                }
            }
        }
        if let Some(e) = failure {
            self.refund(store, groups, &out, now).await;
            return Err(e);
        }
        Ok((out, requests))
    }

    async fn take_group(
        &self,
        store: &Arc<dyn BucketStore>,
        group: &Group,
        now: u64,
        leases: bool,
    ) -> Result<GroupTake, crate::store::StoreError> {
        let (want, carry) = if leases {
            match self.leases.local(&group.key, &group.slots, now) {
                Local::Hit { tats, held } => {
                    self.counters.lease_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(GroupTake {
                        outcome: GroupOutcome::Admit { tats, held },
                        requests: 0,
                        leased: true,
                    });
                }
                Local::Miss { want, expired } => match expired {
                    // The rest of a lease whose window ended rolls into the next one: no
                    // give-back write while the demand goes on.
                    Some(lease) if lease.item == group.item => (want, Some(lease)),
                    other => {
                        if let Some(lease) = other {
                            self.give_back_later(lease);
                        }
                        (want, None)
                    }
                },
            }
        } else {
            (1, None)
        };
        let carried = carry.as_ref().map_or(0, |l| l.tokens);
        if carried >= want
            && let Some(rest) = carry
        {
            // Enough in hand: no store request. All of it is kept (never more than the last
            // lease, so within the cap): a give-back for a dip in the measured rate would cost
            // a write the next lease pays again.
            return Ok(self.hold(group, carried, rest.tats, now, 0));
        }
        // The branch each bucket's condition takes comes from the hint. A TAT seen long ago is
        // usually behind `now`; if the last take found the bucket busy (other instances keep
        // it ahead of the clock, as on a shared item), guess busy again rather than idle: a
        // wrong guess costs one more conditional write.
        let hints: Vec<Option<u64>> = {
            let last = lock(&self.last_tat);
            group
                .slots
                .iter()
                .map(|s| {
                    last.get(&(group.item.clone(), s.attr.clone()))
                        .map(|&(tat, busy)| if busy { tat.max(now + 1) } else { tat })
                })
                .collect()
        };
        let take = store
            .take(&group.item, &group.slots, want - carried, now, &hints)
            .await?;
        self.counters
            .store_requests
            .fetch_add(u64::from(take.requests), Ordering::Relaxed);
        match take.grant {
            Grant::Granted { n, tats } => {
                {
                    let mut last = lock(&self.last_tat);
                    if last.len() >= MAX_MEMORY_ENTRIES {
                        last.clear();
                    }
                    for (s, tat) in group.slots.iter().zip(&tats) {
                        // An idle take leaves exactly `now + n * interval`.
                        let busy = *tat != now + n * s.rate.interval_ms;
                        last.insert((group.item.clone(), s.attr.clone()), (*tat, busy));
                    }
                }
                Ok(self.hold(group, n + carried, tats, now, take.requests))
            }
            // The bucket is empty now, but tokens debited earlier are still this instance's.
            Grant::Refused { .. } if carried > 0 => {
                let tats = carry.map(|l| l.tats).unwrap_or_default();
                Ok(self.hold(group, carried, tats, now, take.requests))
            }
            Grant::Refused {
                slot,
                retry_after_ms,
            } => Ok(GroupTake {
                requests: take.requests,
                ..GroupTake::refused(slot, retry_after_ms)
            }),
        }
    }

    /// Admits one call from `tokens` debited tokens and holds the rest as a lease.
    fn hold(
        &self,
        group: &Group,
        tokens: u64,
        tats: Vec<u64>,
        now: u64,
        requests: u32,
    ) -> GroupTake {
        let held = tokens - 1;
        if held > 0 {
            self.counters.leases.fetch_add(1, Ordering::Relaxed);
            let (generation, replaced) = self.leases.install(
                &group.key,
                &group.item,
                &group.slots,
                held,
                tats.clone(),
                now,
            );
            if let Some(lease) = replaced {
                self.give_back_later(lease);
            }
            self.return_at_window_end(group.key.clone(), generation);
        }
        GroupTake {
            outcome: GroupOutcome::Admit { tats, held },
            requests,
            leased: held > 0,
        }
    }

    /// Gives the unused tokens of the lease `generation` back half a window after its window
    /// ends, unless a call rolled them into a new lease meanwhile (if the process is frozen, as a
    /// Lambda environment between invocations is, at thaw).
    fn return_at_window_end(&self, group: String, generation: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let leases = self.leases.clone();
        let store = self.buckets.clone();
        let counters = self.counters.clone();
        let clock = self.clock.clone();
        // Half a window of grace: a call in it rolls the rest into the next lease instead.
        let after = leases.config.window + leases.config.window / 2;
        runtime.spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(lease) = leases.reclaim(&group, generation) {
                give_back(&*store, &lease, &counters, clock()).await;
            }
        });
    }

    /// Gives a lease's unused tokens back without holding up the call.
    fn give_back_later(&self, lease: Lease) {
        let store = self.buckets.clone();
        let counters = self.counters.clone();
        let now = (self.clock)();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { give_back(&*store, &lease, &counters, now).await });
            }
            Err(_) => tracing::warn!("no runtime to give a lease back on"),
        }
    }

    /// Returns the token each admitted group gave for a call that is not going ahead: into the
    /// group's lease when one is held, else to the store.
    async fn refund(
        &self,
        store: &Arc<dyn BucketStore>,
        groups: &[Group],
        takes: &[GroupTake],
        now: u64,
    ) {
        let refunds = groups
            .iter()
            .zip(takes)
            .filter(|(_, t)| matches!(t.outcome, GroupOutcome::Admit { .. }))
            .filter(|(g, t)| !(t.leased && self.leases.put_back(&g.key, now)))
            .map(|(g, _)| async move {
                match store.give_back(&g.item, &g.slots, 1, (self.clock)()).await {
                    Ok(requests) => {
                        self.counters
                            .store_requests
                            .fetch_add(u64::from(requests), Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, bucket = %g.item, "budget refund failed"),
                }
            });
        let n = futures::future::join_all(refunds).await.len() as u64;
        self.counters.refunds.fetch_add(n, Ordering::Relaxed);
    }

    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        store: &Arc<dyn BucketStore>,
        buckets: &[Bucket],
        groups: &[Group],
        takes: &[GroupTake],
        now: u64,
        policies: Vec<(PolicyName, u64, u64)>,
        fail_open: bool,
        requests: u32,
    ) -> Result<Admission, Refusal> {
        let worst = groups
            .iter()
            .zip(takes)
            .filter_map(|(g, t)| match t.outcome {
                GroupOutcome::Refuse {
                    slot,
                    retry_after_ms,
                } => Some((&buckets[g.buckets[slot]], retry_after_ms)),
                GroupOutcome::Admit { .. } => None,
            })
            .max_by_key(|(_, wait)| *wait);
        if let Some((bucket, retry_after_ms)) = worst {
            self.refund(store, groups, takes, now).await;
            {
                let mut memory = lock(&self.refused_until);
                if memory.len() >= MAX_MEMORY_ENTRIES {
                    memory.retain(|_, until| *until > now);
                }
                memory.insert(bucket.key(), now + retry_after_ms);
            }
            return Err(Refusal::OverBudget {
                bucket: bucket.clone(),
                retry_after_ms,
                policies,
                from_memory: false,
            });
        }
        let tightest = groups
            .iter()
            .zip(takes)
            .flat_map(|(g, t)| {
                let GroupOutcome::Admit { tats, held } = &t.outcome else {
                    return Vec::new();
                };
                g.buckets
                    .iter()
                    .zip(tats)
                    .map(|(&b, &tat)| {
                        let b = &buckets[b];
                        (
                            b.policy,
                            status(Some(tat), now, b.rate).0 + held,
                            tat.saturating_sub(now).div_ceil(1000),
                        )
                    })
                    .collect()
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
                    .get(&b.key())
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
        groups: &[Group],
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
        let local = self.local.clone();
        let (takes, _) = self
            .take_all(&local, groups, now, false)
            .await
            .map_err(|_| Refusal::StoreUnavailable)?;
        self.settle(
            &local,
            buckets,
            groups,
            &takes,
            now,
            policies.to_vec(),
            true,
            0,
        )
        .await
    }

    /// Tokens this instance holds in leases right now.
    pub fn leased_tokens(&self) -> u64 {
        self.leases.held()
    }
}

async fn give_back(store: &dyn BucketStore, lease: &Lease, counters: &BudgetCounters, now: u64) {
    match store
        .give_back(&lease.item, &lease.slots, lease.tokens, now)
        .await
    {
        Ok(requests) => {
            counters
                .store_requests
                .fetch_add(u64::from(requests), Ordering::Relaxed);
            counters
                .lease_returns
                .fetch_add(lease.tokens, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, bucket = %lease.item, "lease give-back failed"),
    }
}

/// The buckets of one store item, taken together.
#[derive(Debug)]
struct Group {
    /// Lease key: the item, plus the tool when the agent item carries a cap for it (a lease
    /// holds tokens of exactly these buckets).
    key: String,
    item: String,
    slots: Vec<Slot>,
    /// Indexes into the call's buckets, one per slot.
    buckets: Vec<usize>,
}

fn groups_of(buckets: &[Bucket], tool: &str) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, b) in buckets.iter().enumerate() {
        let slot = Slot {
            attr: b.attr.clone(),
            rate: b.rate,
        };
        match groups.iter_mut().find(|g| g.item == b.item) {
            Some(g) => {
                g.slots.push(slot);
                g.buckets.push(i);
            }
            None => groups.push(Group {
                key: b.item.clone(),
                item: b.item.clone(),
                slots: vec![slot],
                buckets: vec![i],
            }),
        }
    }
    for g in &mut groups {
        if buckets[g.buckets[0]].layer == Layer::Tool {
            // Shards are one lease group: a lease comes from whichever shard was drawn.
            g.key = format!("tool#{tool}");
        } else if g.slots.iter().any(|s| s.attr.starts_with(TOOL_CAP_PREFIX)) {
            g.key = format!("{}|{tool}", g.item);
        }
    }
    groups
}

#[derive(Debug)]
enum GroupOutcome {
    Admit { tats: Vec<u64>, held: u64 },
    Refuse { slot: usize, retry_after_ms: u64 },
}

#[derive(Debug)]
struct GroupTake {
    outcome: GroupOutcome,
    requests: u32,
    /// The token came from (or its lease was installed for) this instance's lease.
    leased: bool,
}

impl GroupTake {
    fn refused(slot: usize, retry_after_ms: u64) -> Self {
        Self {
            outcome: GroupOutcome::Refuse {
                slot,
                retry_after_ms,
            },
            requests: 0,
            leased: false,
        }
    }
}

/// Attribute name prefix of an agent's per-tool caps on the agent item.
pub const TOOL_CAP_PREFIX: &str = "tool:";

/// The buckets for one call (pure: no I/O).
pub fn plan_buckets(
    principal: &Principal,
    tool: &str,
    budget: &AgentBudget,
    defaults: AgentDefaults,
    policy: ToolPolicy,
) -> Vec<Bucket> {
    let agent_item = format!("agent#{}", principal.agent_id);
    let mut out = Vec::with_capacity(4);
    let per_minute = u64::from(budget.per_minute.unwrap_or(defaults.per_minute));
    let per_day = u64::from(budget.per_day.unwrap_or(defaults.per_day));
    let mut push = |item: &str,
                    attr: String,
                    layer,
                    policy_name,
                    limit: u64,
                    window_ms: u64,
                    burst: u64,
                    shards: u64| {
        let (rate, deny_all) = match Rate::per_window(limit, window_ms, burst) {
            Some(rate) => (rate.sharded(shards), false),
            // A 0 limit or burst read from the table: deny everything rather than skip the
            // bucket (which would make it unlimited).
            None => (
                Rate {
                    interval_ms: window_ms,
                    burst: 0,
                },
                true,
            ),
        };
        out.push(Bucket {
            item: item.to_owned(),
            attr,
            layer,
            policy: policy_name,
            limit,
            window_s: window_ms / 1000,
            rate,
            deny_all,
        });
    };
    push(
        &agent_item,
        "minute".to_owned(),
        Layer::Agent,
        PolicyName::AgentPerMinute,
        per_minute,
        MINUTE_MS,
        per_minute,
        1,
    );
    push(
        &agent_item,
        "day".to_owned(),
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
            &agent_item,
            format!("{TOOL_CAP_PREFIX}{tool}"),
            Layer::Agent,
            PolicyName::AgentTool,
            cap,
            MINUTE_MS,
            cap,
            1,
        );
    }
    // Never more shards than burst tokens (each shard holds at least one token), whatever the
    // table says.
    let shards = u64::from(policy.shards.clamp(1, policy.burst.max(1)));
    let shard = if shards > 1 {
        rand::random_range(0..shards)
    } else {
        0
    };
    push(
        &format!("tool#{tool}#{shard}"),
        TOOL_ATTR.to_owned(),
        Layer::Tool,
        PolicyName::Tool,
        u64::from(policy.per_minute),
        MINUTE_MS,
        u64::from(policy.burst),
        shards,
    );
    out
}

/// The attribute of a tool (shard) item holding its TAT.
pub const TOOL_ATTR: &str = "tat";

#[cfg(test)]
mod tests;
