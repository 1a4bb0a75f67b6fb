//! Composition logic over in-memory buckets (pure logic). The same behaviours run against a
//! real DynamoDB-protocol server in `tests/` (concurrency, restarts, the 429 contract).

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;

use super::*;
use crate::auth::AuthMethod;
use crate::budget::lease::LeaseConfig;
use crate::store::{MemoryStore, StoreError};
use crate::tool::{Annotations, DefaultBudget};

fn principal(agent: &str, budget: AgentBudget) -> Principal {
    Principal {
        agent_id: agent.to_owned(),
        scopes: BTreeSet::new(),
        method: AuthMethod::ApiKey,
        credential_id: "k".to_owned(),
        budget,
        user: None,
    }
}

fn spec(per_minute: u32, burst: u32, fail_open: bool) -> ToolSpec {
    named("t", per_minute, burst, fail_open)
}

fn named(name: &'static str, per_minute: u32, burst: u32, fail_open: bool) -> ToolSpec {
    let budget = DefaultBudget::per_minute(per_minute, burst);
    ToolSpec {
        name,
        title: "t",
        description: "t",
        scope: "s",
        annotations: Annotations::default(),
        budget: if fail_open {
            budget.fail_open()
        } else {
            budget
        },
        log_fields: &[],
    }
}

fn budgets(store: Arc<dyn BucketStore>, now: Arc<AtomicU64>) -> Budgets {
    Budgets::new(
        store,
        Arc::new(MemoryStore::new()),
        AgentDefaults {
            per_minute: 5,
            per_day: 100,
        },
        Duration::from_millis(200),
        Duration::from_secs(60),
    )
    .with_clock(Arc::new(move || now.load(Ordering::Relaxed)))
}

#[tokio::test]
async fn agent_minute_bucket_refuses_with_the_exact_wait() {
    let now = Arc::new(AtomicU64::new(1_000_000));
    let b = budgets(Arc::new(MemoryBuckets::default()), now.clone());
    let p = principal("a", AgentBudget::default());
    for _ in 0..5 {
        b.admit(&p, &spec(100, 100, false)).await.expect("admitted");
    }
    let Err(Refusal::OverBudget {
        bucket,
        retry_after_ms,
        ..
    }) = b.admit(&p, &spec(100, 100, false)).await
    else {
        panic!("sixth call in the minute must be refused");
    };
    assert_eq!(bucket.policy, PolicyName::AgentPerMinute);
    assert_eq!(bucket.layer, Layer::Agent);
    assert_eq!(retry_after_ms, 12_000);
    now.fetch_add(12_000, Ordering::Relaxed);
    assert!(
        b.admit(&p, &spec(100, 100, false)).await.is_ok(),
        "admitted once the wait is over"
    );
}

#[tokio::test]
async fn a_tool_refusal_leaves_the_agent_budget_untouched() {
    let now = Arc::new(AtomicU64::new(1_000_000));
    let store = Arc::new(MemoryBuckets::default());
    let b = budgets(store.clone(), now.clone());
    let p = principal("a", AgentBudget::default());
    let tool = spec(1, 1, false);
    b.admit(&p, &tool).await.expect("first call");
    let before = store.peek("agent#a", "minute").await.expect("peek");
    let Err(Refusal::OverBudget { bucket, .. }) = b
        .admit(&principal("b", AgentBudget::default()), &tool)
        .await
    else {
        panic!("tool bucket is empty");
    };
    assert_eq!(bucket.layer, Layer::Tool);
    // Agent b's buckets were taken then refunded: nothing consumed.
    let (remaining, _) = gcra::status(
        store.peek("agent#b", "minute").await.expect("peek"),
        1_000_000,
        Rate::per_window(5, MINUTE_MS, 5).expect("rate"),
    );
    assert_eq!(remaining, 5);
    assert_eq!(store.peek("agent#a", "minute").await.expect("peek"), before);
}

#[tokio::test]
async fn refusals_are_remembered_without_store_requests() {
    let now = Arc::new(AtomicU64::new(1_000_000));
    let b = budgets(Arc::new(MemoryBuckets::default()), now);
    let p = principal(
        "a",
        AgentBudget {
            per_minute: Some(1),
            ..AgentBudget::default()
        },
    );
    b.admit(&p, &spec(100, 100, false)).await.expect("first");
    assert!(matches!(
        b.admit(&p, &spec(100, 100, false)).await,
        Err(Refusal::OverBudget {
            from_memory: false,
            ..
        })
    ));
    assert!(matches!(
        b.admit(&p, &spec(100, 100, false)).await,
        Err(Refusal::OverBudget {
            from_memory: true,
            ..
        })
    ));
    assert_eq!(b.counters.memory_refusals.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn per_day_and_per_tool_caps_apply() {
    let now = Arc::new(AtomicU64::new(1_000_000));
    let b = budgets(Arc::new(MemoryBuckets::default()), now.clone());
    let day = principal(
        "d",
        AgentBudget {
            per_minute: Some(100),
            per_day: Some(2),
            ..AgentBudget::default()
        },
    );
    b.admit(&day, &spec(100, 100, false)).await.expect("1");
    b.admit(&day, &spec(100, 100, false)).await.expect("2");
    let Err(Refusal::OverBudget {
        bucket,
        retry_after_ms,
        ..
    }) = b.admit(&day, &spec(100, 100, false)).await
    else {
        panic!("day budget spent");
    };
    assert_eq!(bucket.policy, PolicyName::AgentPerDay);
    assert_eq!(retry_after_ms, DAY_MS / 2);

    let capped = principal(
        "c",
        AgentBudget {
            tools: [("t".to_owned(), 1)].into(),
            ..AgentBudget::default()
        },
    );
    b.admit(&capped, &spec(100, 100, false)).await.expect("1");
    let Err(Refusal::OverBudget { bucket, .. }) = b.admit(&capped, &spec(100, 100, false)).await
    else {
        panic!("per-agent tool cap");
    };
    assert_eq!(bucket.policy, PolicyName::AgentTool);
}

#[derive(Debug)]
struct Down;

#[async_trait::async_trait]
impl BucketStore for Down {
    async fn take(
        &self,
        _: &str,
        _: &[Slot],
        _: u64,
        _: u64,
        _: &[Option<u64>],
    ) -> Result<buckets::Take, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn give_back(&self, _: &str, _: &[Slot], _: u64, _: u64) -> Result<u32, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn peek(&self, _: &str, _: &str) -> Result<Option<u64>, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
}

#[derive(Debug)]
struct Slow;

#[async_trait::async_trait]
impl BucketStore for Slow {
    async fn take(
        &self,
        _: &str,
        _: &[Slot],
        _: u64,
        _: u64,
        _: &[Option<u64>],
    ) -> Result<buckets::Take, StoreError> {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Err(StoreError::Unavailable("slow".into()))
    }
    async fn give_back(&self, _: &str, _: &[Slot], _: u64, _: u64) -> Result<u32, StoreError> {
        Ok(0)
    }
    async fn peek(&self, _: &str, _: &str) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
}

#[tokio::test]
async fn store_failure_follows_the_tool_policy() {
    let now = Arc::new(AtomicU64::new(1_000_000));
    let p = principal("a", AgentBudget::default());
    let down = budgets(Arc::new(Down), now.clone());
    assert_eq!(
        down.admit(&p, &spec(10, 2, false)).await,
        Err(Refusal::StoreUnavailable)
    );
    let open = down
        .admit(&p, &spec(10, 2, true))
        .await
        .expect("fail open admits");
    assert!(open.fail_open);
    assert_eq!(
        down.counters.fail_open_admissions.load(Ordering::Relaxed),
        1
    );
    // The local bucket still limits: burst 2, then refused.
    down.admit(&p, &spec(10, 2, true)).await.expect("second");
    assert!(matches!(
        down.admit(&p, &spec(10, 2, true)).await,
        Err(Refusal::OverBudget { .. })
    ));

    let slow = budgets(Arc::new(Slow), now);
    let started = Instant::now();
    assert_eq!(
        slow.admit(&p, &spec(10, 2, false)).await,
        Err(Refusal::StoreUnavailable)
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "never waits past the decision timeout"
    );
}

/// An outage that starts before this instance ever read the tool's override: the operator may
/// have set the tool fail-closed, so a tool whose built-in default is fail-open fails closed.
/// Once a read said "no override", the built-in default applies again; a known override
/// outlives later failed reads.
#[tokio::test]
async fn an_unknown_override_fails_closed_during_an_outage() {
    let now = Arc::new(AtomicU64::new(1_000_000));
    let p = principal("a", AgentBudget::default());
    let policies = Arc::new(MemoryStore::new());
    let make = |policies: Arc<MemoryStore>| {
        let now = now.clone();
        Budgets::new(
            Arc::new(Down),
            policies,
            AgentDefaults::default(),
            Duration::from_millis(200),
            // A zero TTL: every call reads the override again.
            Duration::ZERO,
        )
        .with_clock(Arc::new(move || now.load(Ordering::Relaxed)))
    };
    let open_by_default = spec(10, 2, true);

    policies.fail_tool_policy_reads(true);
    let cold = make(policies.clone());
    assert_eq!(
        cold.admit(&p, &open_by_default).await,
        Err(Refusal::StoreUnavailable),
        "unknown override: fail closed"
    );
    assert_eq!(
        cold.counters.fail_open_admissions.load(Ordering::Relaxed),
        0
    );

    // A read that found no override: the built-in fail-open applies, also after reads fail.
    policies.fail_tool_policy_reads(false);
    let warm = make(policies.clone());
    assert!(
        warm.admit(&p, &open_by_default)
            .await
            .expect("admitted")
            .fail_open
    );
    policies.fail_tool_policy_reads(true);
    assert!(
        warm.admit(&p, &open_by_default)
            .await
            .expect("admitted")
            .fail_open
    );

    // The operator's fail-closed override, once read, holds through failed reads.
    policies.fail_tool_policy_reads(false);
    policies
        .put_tool_policy(
            "t",
            Some(ToolPolicy {
                per_minute: 10,
                burst: 2,
                shards: 1,
                fail_open: Some(false),
            }),
        )
        .await
        .expect("put");
    let overridden = make(policies.clone());
    assert_eq!(
        overridden.admit(&p, &open_by_default).await,
        Err(Refusal::StoreUnavailable)
    );
    policies.fail_tool_policy_reads(true);
    assert_eq!(
        overridden.admit(&p, &open_by_default).await,
        Err(Refusal::StoreUnavailable)
    );
}

/// A 0 limit read from the table (agent budget, per-tool cap or tool override) denies every
/// call with a permanent refusal; it never makes the bucket unlimited.
#[tokio::test]
async fn a_zero_limit_denies_all_and_never_means_unlimited() {
    let now = Arc::new(AtomicU64::new(1_000_000));
    let b = budgets(Arc::new(MemoryBuckets::default()), now.clone());
    let zero_minute = principal(
        "a",
        AgentBudget {
            per_minute: Some(0),
            ..AgentBudget::default()
        },
    );
    let zero_cap = principal(
        "b",
        AgentBudget {
            tools: [("t".to_owned(), 0)].into_iter().collect(),
            ..AgentBudget::default()
        },
    );
    for (p, policy) in [
        (&zero_minute, PolicyName::AgentPerMinute),
        (&zero_cap, PolicyName::AgentTool),
    ] {
        match b.admit(p, &spec(10, 2, false)).await {
            Err(Refusal::Denied { bucket }) => assert_eq!(bucket.policy, policy),
            other => panic!("{policy:?} 0 admitted: {other:?}"),
        }
    }
    let policies = Arc::new(MemoryStore::new());
    for (per_minute, burst) in [(0, 5), (10, 0)] {
        policies
            .put_tool_policy(
                "t",
                Some(ToolPolicy {
                    per_minute,
                    burst,
                    shards: 1,
                    fail_open: None,
                }),
            )
            .await
            .expect("put");
        let b = Budgets::new(
            Arc::new(MemoryBuckets::default()),
            policies.clone(),
            AgentDefaults::default(),
            Duration::from_millis(200),
            Duration::ZERO,
        );
        match b
            .admit(&principal("c", AgentBudget::default()), &spec(10, 2, false))
            .await
        {
            Err(Refusal::Denied { bucket }) => assert_eq!(bucket.layer, Layer::Tool),
            other => panic!("tool {per_minute}/{burst} admitted: {other:?}"),
        }
    }
}

/// An override with more shards than burst tokens (written before the CLI refused it) is
/// planned with at most `burst` shards, so the shards together hold at most the burst.
#[test]
fn more_shards_than_burst_never_raise_the_burst() {
    let p = principal("a", AgentBudget::default());
    let policy = ToolPolicy {
        per_minute: 60,
        burst: 2,
        shards: 8,
        fail_open: None,
    };
    for _ in 0..50 {
        let plan = plan_buckets(&p, "t", &p.budget, AgentDefaults::default(), policy);
        let tool = plan
            .iter()
            .find(|b| b.layer == Layer::Tool)
            .expect("tool bucket");
        let shard: u64 = tool
            .item
            .rsplit('#')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("shard");
        assert!(shard < 2, "{}", tool.item);
        assert_eq!(tool.rate.burst, 1);
        assert_eq!(tool.rate.interval_ms, 2_000);
    }
}

#[test]
fn plan_shards_the_tool_bucket() {
    let p = principal("a", AgentBudget::default());
    let policy = ToolPolicy {
        per_minute: 6_000,
        burst: 100,
        shards: 4,
        fail_open: None,
    };
    let plan = plan_buckets(&p, "t", &p.budget, AgentDefaults::default(), policy);
    let tool = plan
        .iter()
        .find(|b| b.layer == Layer::Tool)
        .expect("tool bucket");
    assert!(tool.item.starts_with("tool#t#"));
    assert_eq!(tool.attr, TOOL_ATTR);
    // The agent's buckets share one item.
    let agent: Vec<_> = plan.iter().filter(|b| b.layer == Layer::Agent).collect();
    assert_eq!(agent.len(), 2);
    assert!(agent.iter().all(|b| b.item == "agent#a"));
    assert_eq!(tool.rate.interval_ms, 40);
    assert_eq!(tool.rate.burst, 25);
    assert_eq!(tool.limit, 6_000);
}

/// Two instances sharing one bucket, one clock `skew_ms` ahead: the over-admission this causes
/// is at most `ceil(skew / interval)` calls over any run (README "Clock skew").
#[tokio::test]
async fn clock_skew_over_admission_is_bounded_by_skew_over_interval() {
    for skew_ms in [0u64, 50, 250, 1_000, 3_000] {
        let shared: Arc<dyn BucketStore> = Arc::new(MemoryBuckets::default());
        let t = Arc::new(AtomicU64::new(10_000_000));
        let ahead = {
            let t = t.clone();
            budgets(shared.clone(), Arc::new(AtomicU64::new(0)))
                .with_clock(Arc::new(move || t.load(Ordering::Relaxed) + skew_ms))
        };
        let behind = budgets(shared, t.clone());
        let p = principal(
            "skew",
            AgentBudget {
                per_minute: Some(60),
                per_day: Some(1_000_000),
                ..AgentBudget::default()
            },
        );
        let tool = spec(1_000_000, 1_000_000, false);
        let mut admitted = 0u64;
        let start = t.load(Ordering::Relaxed);
        // Both instances call every 100 ms for 30 s of simulated time.
        for step in 0..300u64 {
            t.store(start + step * 100, Ordering::Relaxed);
            for b in [&behind, &ahead] {
                // Bypass the refused-until memory: each call goes to the shared store.
                b.refused_until
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clear();
                if b.admit(&p, &tool).await.is_ok() {
                    admitted += 1;
                }
            }
        }
        let elapsed = 299 * 100;
        let interval = 1_000;
        let bound = 60 + elapsed / interval;
        let extra = admitted.saturating_sub(bound);
        eprintln!(
            "clock skew {skew_ms} ms: {admitted} admitted, bound {bound}, over-admission {extra}"
        );
        assert!(
            extra <= skew_ms.div_ceil(interval),
            "skew {skew_ms} ms: {admitted} admitted, bound {bound}"
        );
    }
}

#[tokio::test]
async fn a_refund_never_takes_a_bucket_below_now() {
    let store = MemoryBuckets::default();
    let slots = [Slot {
        attr: "tat".to_owned(),
        rate: Rate {
            interval_ms: 100,
            burst: 3,
        },
    }];
    // Two takes at t=1000: TAT 1200. A refund at t=1000 gives one back (TAT 1100).
    for _ in 0..2 {
        store.take("b", &slots, 1, 1000, &[]).await.expect("take");
    }
    store.give_back("b", &slots, 1, 1000).await.expect("refund");
    assert_eq!(store.peek("b", "tat").await.expect("peek"), Some(1100));
    // At t=1050 a second refund stops at now (a full bucket), not at 1000.
    store.give_back("b", &slots, 1, 1050).await.expect("refund");
    assert_eq!(store.peek("b", "tat").await.expect("peek"), Some(1050));
    // A full bucket has nothing to give back.
    store.give_back("b", &slots, 1, 1080).await.expect("refund");
    assert_eq!(store.peek("b", "tat").await.expect("peek"), Some(1050));
}

fn leased(store: Arc<dyn BucketStore>, now: Arc<AtomicU64>, window_ms: u64) -> Budgets {
    budgets(store, now).with_leases(LeaseConfig {
        enabled: true,
        window: Duration::from_millis(window_ms),
        max_fraction: 0.1,
    })
}

/// Four instances with leases share one agent and one tool bucket, calling far faster than
/// the buckets allow for 60 s of simulated time: never more admitted than the GCRA bound, far
/// fewer store requests than calls, and once the leases' windows end every unused token is
/// back (what the buckets were charged is exactly what was admitted).
#[tokio::test]
async fn leases_never_over_admit_and_give_back_what_they_did_not_use() {
    let shared: Arc<dyn BucketStore> = Arc::new(MemoryBuckets::default());
    let now = Arc::new(AtomicU64::new(10_000_000));
    let instances: Vec<Budgets> = (0..4)
        .map(|_| leased(shared.clone(), now.clone(), 200))
        .collect();
    let p = principal(
        "busy",
        AgentBudget {
            per_minute: Some(6_000),
            per_day: Some(1_000_000),
            ..AgentBudget::default()
        },
    );
    // The tool: 1,200 a minute (interval 50 ms), burst 200.
    let tool = spec(1_200, 200, false);
    let start = now.load(Ordering::Relaxed);
    let mut admitted = 0u64;
    let mut calls = 0u64;
    // Each instance calls every 10 ms: 400 calls/s against a 20/s tool bucket.
    for step in 0..6_000u64 {
        now.store(start + step * 10, Ordering::Relaxed);
        for b in &instances {
            calls += 1;
            if b.admit(&p, &tool).await.is_ok() {
                admitted += 1;
            }
        }
    }
    let elapsed = 5_999 * 10;
    let bound = 200 + elapsed / 50;
    assert!(admitted <= bound, "{admitted} admitted, bound {bound}");
    assert!(
        admitted * 100 >= bound * 95,
        "{admitted} admitted, bound {bound}"
    );
    let requests: u64 = instances
        .iter()
        .map(|b| b.counters.store_requests.load(Ordering::Relaxed))
        .sum();
    assert!(
        requests * 2 < calls,
        "{requests} store requests for {calls} calls"
    );
    // Let every lease window end (real time: the give-back is a timer): the rest goes back.
    let mut held = u64::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        held = instances.iter().map(Budgets::leased_tokens).sum();
        if held == 0 {
            break;
        }
    }
    assert_eq!(held, 0, "tokens still held after the window");
    let returned: u64 = instances
        .iter()
        .map(|b| b.counters.lease_returns.load(Ordering::Relaxed))
        .sum();
    assert!(
        instances
            .iter()
            .map(|b| b.counters.leases.load(Ordering::Relaxed))
            .sum::<u64>()
            > 0,
        "no lease was taken ({returned} tokens returned)"
    );
}

/// A quiet agent stays exact: every call is one store decision, nothing is held.
#[tokio::test]
async fn a_quiet_bucket_is_decided_call_by_call_with_leases_on() {
    let now = Arc::new(AtomicU64::new(1_000_000));
    let store = Arc::new(MemoryBuckets::default());
    let b = leased(store.clone(), now.clone(), 2_000);
    let p = principal("quiet", AgentBudget::default());
    for i in 1..=5u64 {
        now.store(1_000_000 + i * 5_000, Ordering::Relaxed);
        b.admit(&p, &spec(100, 100, false)).await.expect("admitted");
        assert_eq!(b.leased_tokens(), 0);
    }
    assert_eq!(b.counters.leases.load(Ordering::Relaxed), 0);
}

/// With leases, a call the tool layer refuses puts the agent's token back into the lease (no
/// write), and a refusal still names the right bucket.
#[tokio::test]
async fn a_refused_call_returns_its_leased_token() {
    let now = Arc::new(AtomicU64::new(1_000_000));
    let store = Arc::new(MemoryBuckets::default());
    let b = leased(store.clone(), now.clone(), 60_000);
    let p = principal(
        "hot",
        AgentBudget {
            per_minute: Some(6_000),
            per_day: Some(1_000_000),
            ..AgentBudget::default()
        },
    );
    // Warm the demand estimate on a generous tool so the agent item is leased.
    let open = named("open", 60_000, 1_000, false);
    for i in 0..200u64 {
        now.store(1_000_000 + i * 10, Ordering::Relaxed);
        b.admit(&p, &open).await.expect("admitted");
    }
    let held = b.leased_tokens();
    assert!(held > 0, "no lease was taken");
    // A tool whose bucket is empty for this instance: refused by the tool layer.
    let closed = named("closed", 1, 1, false);
    b.admit(&p, &closed).await.expect("the one token");
    let held_before = b.leased_tokens();
    let Err(Refusal::OverBudget { bucket, .. }) = b.admit(&p, &closed).await else {
        panic!("tool bucket is empty");
    };
    assert_eq!(bucket.layer, Layer::Tool);
    assert_eq!(b.leased_tokens(), held_before, "the agent token went back");
}

/// Counts the writes a [`BucketStore`] is asked for.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryBuckets,
    writes: AtomicU64,
}

#[async_trait::async_trait]
impl BucketStore for Counting {
    async fn take(
        &self,
        item: &str,
        slots: &[Slot],
        want: u64,
        now: u64,
        hints: &[Option<u64>],
    ) -> Result<buckets::Take, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.take(item, slots, want, now, hints).await
    }
    async fn give_back(
        &self,
        item: &str,
        slots: &[Slot],
        n: u64,
        now: u64,
    ) -> Result<u32, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.give_back(item, slots, n, now).await
    }
    async fn peek(&self, item: &str, attr: &str) -> Result<Option<u64>, StoreError> {
        self.inner.peek(item, attr).await
    }
}

/// One instance at a steady 5 calls/s for 30 s with the default 2 s window: the rest of each
/// lease rolls into the next, so the store sees about one write per item per window, not a
/// take and a give-back: at most a quarter of a write per admitted call, warm-up included.
#[tokio::test]
async fn a_steady_demand_costs_about_one_write_per_item_per_window() {
    let now = Arc::new(AtomicU64::new(10_000_000));
    let store = Arc::new(Counting::default());
    let b = budgets(store.clone(), now.clone()).with_leases(LeaseConfig::DEFAULT);
    let p = principal(
        "steady",
        AgentBudget {
            per_minute: Some(1_200),
            per_day: Some(1_000_000),
            ..AgentBudget::default()
        },
    );
    let tool = spec(1_200, 300, false);
    for i in 0..150u64 {
        now.store(10_000_000 + i * 200, Ordering::Relaxed);
        b.admit(&p, &tool).await.expect("within budget");
    }
    let writes = store.writes.load(Ordering::Relaxed);
    assert!(
        writes * 4 <= 150,
        "{writes} writes for 150 admitted calls ({} leases)",
        b.counters.leases.load(Ordering::Relaxed)
    );
}
