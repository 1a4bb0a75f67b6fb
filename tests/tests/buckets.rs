//! The bucket store against a real DynamoDB-protocol server (single-threaded moto): several
//! buckets on one item taken by one conditional write (all or none, the refusing bucket named,
//! a lease cut to what every bucket holds), stale branch hints corrected from `ALL_OLD`, and
//! give-backs that never take a TAT below `now`; then leases across instances sharing the
//! store: no over-admission, the unused rest given back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tollgate::budget::buckets::{BucketStore, Grant, Slot};
use tollgate::budget::gcra::Rate;
use tollgate::budget::lease::LeaseConfig;
use tollgate::budget::{AgentDefaults, Budgets, Layer, PolicyName, Refusal};
use tollgate::store::{AgentBudget, DynamoStore};
use tollgate_tests::moto::Moto;

async fn store(moto: &Moto) -> anyhow::Result<Arc<DynamoStore>> {
    let client = tollgate::deps::aws_sdk_dynamodb::Client::new(&moto.sdk_config());
    let store = DynamoStore::new(client, "tollgate-buckets-test");
    store.create_table().await?;
    Ok(Arc::new(store))
}

fn slot(attr: &str, per_minute: u64, burst: u64) -> Slot {
    Slot {
        attr: attr.to_owned(),
        rate: Rate::per_window(per_minute, 60_000, burst).expect("rate"),
    }
}

#[tokio::test]
async fn one_write_takes_every_bucket_of_an_item_or_none() -> anyhow::Result<()> {
    let moto = Moto::start()?;
    let s = store(&moto).await?;
    let now = 1_800_000_000_000u64;
    // minute: 60/min (1 s), burst 60; cap: 60/min, burst 3.
    let slots = [slot("minute", 60, 60), slot("tool:t", 60, 3)];

    // A lease of 10 is cut to the 3 the cap holds, on both buckets.
    let t = s.take("agent#a", &slots, 10, now, &[]).await?;
    assert_eq!(
        t.grant,
        Grant::Granted {
            n: 3,
            tats: vec![now + 3_000, now + 3_000]
        }
    );
    assert_eq!(t.requests, 1, "cut to the smallest burst before any write");

    // The cap is empty: refused, naming it, with its exact wait; the minute bucket untouched.
    let t = s
        .take(
            "agent#a",
            &slots,
            1,
            now,
            &[Some(now + 3_000), Some(now + 3_000)],
        )
        .await?;
    assert_eq!(
        t.grant,
        Grant::Refused {
            slot: 1,
            retry_after_ms: 1_000
        }
    );
    assert_eq!(s.peek("agent#a", "minute").await?, Some(now + 3_000));

    // Stale hints (the instance thinks the item is idle): corrected from ALL_OLD.
    let later = now + 1_000;
    let t = s.take("agent#a", &slots, 1, later, &[None, None]).await?;
    assert_eq!(
        t.grant,
        Grant::Granted {
            n: 1,
            tats: vec![now + 4_000, now + 4_000]
        }
    );
    assert_eq!(t.requests, 2);

    // Give back 2: subtracted on both buckets.
    s.give_back("agent#a", &slots, 2, later).await?;
    assert_eq!(s.peek("agent#a", "minute").await?, Some(now + 2_000));
    assert_eq!(s.peek("agent#a", "tool:t").await?, Some(now + 2_000));
    // Give back more than is ahead of `now`: each bucket stops at `now` (one more write).
    let requests = s.give_back("agent#a", &slots, 50, later).await?;
    assert_eq!(requests, 2);
    assert_eq!(s.peek("agent#a", "minute").await?, Some(later));
    assert_eq!(s.peek("agent#a", "tool:t").await?, Some(later));
    // A bucket that was never taken is not created by a give-back.
    s.give_back("agent#b", &slots, 1, later).await?;
    assert_eq!(s.peek("agent#b", "minute").await?, None);
    Ok(())
}

fn principal(agent: &str, per_minute: u32) -> tollgate::auth::Principal {
    tollgate::auth::Principal {
        agent_id: agent.to_owned(),
        scopes: Default::default(),
        method: tollgate::auth::AuthMethod::ApiKey,
        credential_id: "k".to_owned(),
        budget: AgentBudget {
            per_minute: Some(per_minute),
            per_day: Some(1_000_000),
            ..AgentBudget::default()
        },
        user: None,
    }
}

fn spec(per_minute: u32, burst: u32) -> tollgate::ToolSpec {
    tollgate::ToolSpec {
        name: "leased_tool",
        title: "t",
        description: "t",
        scope: "s",
        annotations: Default::default(),
        budget: tollgate::DefaultBudget::per_minute(per_minute, burst),
        log_fields: &[],
    }
}

/// Three instances with leases share one agent on the real store, each calling as fast as it
/// can for 3 s against 120/min (burst 120, then one per 500 ms): admitted within the GCRA bound
/// and short of it by at most the tokens the instances held, far fewer writes than calls, and
/// once the windows end the minute bucket was charged exactly the admitted calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_across_instances_never_over_admit_on_the_real_store() -> anyhow::Result<()> {
    let moto = Moto::start()?;
    let s = store(&moto).await?;
    let window = Duration::from_millis(1_000);
    let config = LeaseConfig {
        enabled: true,
        window,
        max_fraction: 0.1,
    };
    let instances: Vec<Arc<Budgets>> = (0..3)
        .map(|_| {
            Arc::new(
                Budgets::new(
                    s.clone(),
                    s.clone(),
                    AgentDefaults::default(),
                    Duration::from_secs(10),
                    Duration::from_secs(600),
                )
                .with_leases(config),
            )
        })
        .collect();
    let p = principal("lease-agent", 120);
    let interval = 500u64;
    let tool = spec(1_000_000, 1_000_000);
    let start = tollgate::store::now_ms();
    // The first call opens the bucket (idle branch at some t0 in [start, first]).
    instances[0]
        .admit(&p, &tool)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let first = tollgate::store::now_ms();
    let run_for = Duration::from_secs(3);
    let began = std::time::Instant::now();
    let mut tasks = Vec::new();
    for b in &instances {
        let (b, p, tool) = (b.clone(), p.clone(), tool.clone());
        tasks.push(tokio::spawn(async move {
            let (mut admitted, mut calls) = (1u64, 0u64);
            let mut wrong = Vec::new();
            while began.elapsed() < run_for {
                calls += 1;
                match b.admit(&p, &tool).await {
                    Ok(_) => admitted += 1,
                    Err(Refusal::OverBudget { bucket, .. })
                        if bucket.layer == Layer::Agent
                            && bucket.policy == PolicyName::AgentPerMinute =>
                    {
                        tokio::task::yield_now().await;
                    }
                    Err(other) => wrong.push(format!("{other:?}")),
                }
            }
            (admitted - 1, calls, wrong)
        }));
    }
    let (mut admitted, mut calls) = (1u64, 1u64);
    for t in tasks {
        let (a, c, wrong) = t.await?;
        anyhow::ensure!(wrong.is_empty(), "unexpected refusals: {wrong:?}");
        admitted += a;
        calls += c;
    }
    let end = tollgate::store::now_ms();
    let bound = 120 + (end - start) / interval;
    let held_at_most = 3 * 12; // instances x the largest lease (a tenth of the burst)
    let writes: u64 = instances
        .iter()
        .map(|b| b.counters.store_requests.load(Ordering::Relaxed))
        .sum();
    let leases: u64 = instances
        .iter()
        .map(|b| b.counters.leases.load(Ordering::Relaxed))
        .sum();
    eprintln!(
        "{admitted} admitted of {calls} calls, bound {bound}, {writes} store requests, {leases} leases"
    );
    assert!(admitted <= bound, "{admitted} admitted, bound {bound}");
    assert!(
        calls > bound,
        "the run must ask for more than the bucket holds"
    );
    assert!(
        admitted + held_at_most >= bound,
        "{admitted} admitted, bound {bound}"
    );
    assert!(leases > 0, "no lease taken");
    assert!(
        writes * 3 < calls,
        "{writes} store requests for {calls} calls"
    );

    // After the windows no token is held, and the bucket holds exactly what was admitted: it
    // never went idle (120 tokens at once keep its TAT a minute ahead), so its TAT is
    // t0 + admitted * interval.
    let mut held = u64::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        held = instances.iter().map(|b| b.leased_tokens()).sum();
        if held == 0 {
            break;
        }
    }
    assert_eq!(held, 0, "tokens still held after the window");
    // The last give-back's write may still be on its way: read until it landed (bounded).
    let charged_from = |tat: u64, t0: u64| tat.saturating_sub(t0) / interval;
    let mut tat = 0;
    for _ in 0..100 {
        tat = s.peek("agent#lease-agent", "minute").await?.expect("taken");
        if (charged_from(tat, first)..=charged_from(tat, start)).contains(&admitted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        (charged_from(tat, first)..=charged_from(tat, start)).contains(&admitted),
        "charged between {} and {} for {admitted} admitted",
        charged_from(tat, first),
        charged_from(tat, start)
    );
    Ok(())
}

/// Exact mode, many instances at once: calls the tool layer refuses cost the agent nothing,
/// however the parallel takes and give-backs on the agent item interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tool_refusals_cost_the_agent_nothing() -> anyhow::Result<()> {
    let moto = Moto::start()?;
    let s = store(&moto).await?;
    let instances: Vec<Arc<Budgets>> = (0..4)
        .map(|_| {
            Arc::new(Budgets::new(
                s.clone(),
                s.clone(),
                AgentDefaults::default(),
                Duration::from_secs(10),
                Duration::from_secs(600),
            ))
        })
        .collect();
    let p = principal("refused-agent", 600);
    let tool = tollgate::ToolSpec {
        name: "closed_tool",
        ..spec(1, 1)
    };
    // The one token of the tool bucket goes to another agent.
    instances[0]
        .admit(&principal("other", 600), &tool)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (b, p, tool) = (instances[i % 4].clone(), p.clone(), tool.clone());
        tasks.push(tokio::spawn(async move { b.admit(&p, &tool).await }));
    }
    for t in tasks {
        match t.await? {
            Err(Refusal::OverBudget { bucket, .. }) => assert_eq!(bucket.layer, Layer::Tool),
            other => anyhow::bail!("expected a tool refusal, got {other:?}"),
        }
    }
    let now = tollgate::store::now_ms();
    for attr in ["minute", "day"] {
        let tat = s.peek("agent#refused-agent", attr).await?;
        assert!(
            tat.is_some_and(|t| t <= now),
            "{attr}: TAT {tat:?} ahead of now {now}: charged for refused calls"
        );
    }
    Ok(())
}
