//! Quota leases: an instance that admits many calls on a bucket takes several tokens with one
//! conditional write and admits from them locally.
//!
//! Invariants:
//! - **Debit before use.** A lease's tokens are taken from the shared bucket (its TAT advanced
//!   by `n * interval` under the same GCRA condition as one call) before any call uses them, so
//!   the calls a bucket admits across every instance never exceed what the bucket granted: no
//!   over-admission.
//! - **Bounded hold.** A lease is usable for `window` after it was taken. The next call after
//!   that rolls its unused tokens into the next lease (asking the store only for the
//!   difference); with no such call within half a window they are given back with one write
//!   (`max(tat - unused * interval, now)`). A lease never
//!   holds more than `max_fraction` of any of its buckets' burst. An instance that is frozen or
//!   killed strands at most its lease until the bucket's time catches up: the price of leases is
//!   bounded under-admission, at most `instances * lease` tokens per window.
//! - **Sized by demand.** The lease size is this instance's observed call rate on the bucket
//!   times the window, so a lease lasts about one window. A bucket that sees fewer than two calls
//!   per window on this instance is taken one call at a time (exact mode), so quiet agents and
//!   small budgets behave exactly as without leases. The rate is measured over bins of at least
//!   250 ms, averaged with the previous measurement.
//!
//! This module holds the per-instance state only; the writes are made by [`super::Budgets`].

pub use crate::config::LeaseConfig;
use std::collections::HashMap;
use std::sync::Mutex;

use super::buckets::Slot;

/// Tokens held locally for one group of buckets (the buckets of one store item).
#[derive(Debug, Clone)]
pub(super) struct Lease {
    /// Identifies this lease: a late give-back of an older lease never touches a newer one.
    pub generation: u64,
    /// The store item the tokens came from.
    pub item: String,
    /// Its buckets.
    pub slots: Vec<Slot>,
    /// Tokens left.
    pub tokens: u64,
    /// Usable until (Unix ms).
    pub expires: u64,
    /// The buckets' TATs right after the lease was taken (for `RateLimit` headers).
    pub tats: Vec<u64>,
}

/// Calls per second on one group, measured over bins of at least [`BIN_MS`].
#[derive(Debug, Default)]
struct Demand {
    bin_start: u64,
    bin_count: u64,
    per_s: f64,
}

impl Demand {
    fn record(&mut self, now: u64) {
        if self.bin_start == 0 {
            self.bin_start = now;
        }
        let elapsed = now.saturating_sub(self.bin_start);
        if elapsed >= BIN_MS {
            let measured = self.bin_count as f64 * 1_000.0 / elapsed as f64;
            self.per_s = if self.per_s == 0.0 {
                measured
            } else {
                (self.per_s + measured) / 2.0
            };
            self.bin_start = now;
            self.bin_count = 0;
        }
        self.bin_count += 1;
    }
}

#[derive(Debug, Default)]
struct Group {
    lease: Option<Lease>,
    demand: Demand,
}

/// What the local lease answered for one call.
#[derive(Debug)]
pub(super) enum Local {
    /// A token from the lease: the lease's TATs at grant, and tokens still held.
    Hit { tats: Vec<u64>, held: u64 },
    /// Ask the store for `want` tokens (1: exact). `expired` is a lease whose window ended
    /// with tokens left: the caller rolls them into the next lease or gives them back.
    Miss { want: u64, expired: Option<Lease> },
}

/// Per-instance lease state, keyed by group.
#[derive(Debug)]
pub(super) struct Leases {
    pub config: LeaseConfig,
    groups: Mutex<HashMap<String, Group>>,
    generation: std::sync::atomic::AtomicU64,
}

/// Shortest span a demand measurement covers: short enough that a busy instance leases within a
/// fraction of a second, long enough to count several calls.
const BIN_MS: u64 = 250;

/// Groups tracked at most; past it, groups holding no lease are forgotten.
const MAX_GROUPS: usize = 50_000;

impl Leases {
    pub fn new(config: LeaseConfig) -> Self {
        Self {
            config,
            groups: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        self.groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The lease size for `slots` at this demand: rate x window, capped by the bursts; 1 when
    /// that is under 2 (exact).
    fn want(&self, demand: &Demand, slots: &[Slot]) -> u64 {
        if !self.config.enabled {
            return 1;
        }
        let by_rate = (demand.per_s * self.config.window.as_secs_f64()).floor() as u64;
        let cap = slots
            .iter()
            .map(|s| (s.rate.burst as f64 * self.config.max_fraction).floor() as u64)
            .min()
            .unwrap_or(0);
        let want = by_rate.min(cap);
        if want < 2 { 1 } else { want }
    }

    /// Records a call on `group` and serves it from the lease when one is held.
    pub fn local(&self, group: &str, slots: &[Slot], now: u64) -> Local {
        let mut groups = self.lock();
        if !groups.contains_key(group) && groups.len() >= MAX_GROUPS {
            groups.retain(|_, g| g.lease.is_some());
        }
        let g = groups.entry(group.to_owned()).or_default();
        g.demand.record(now);
        let mut expired = None;
        if let Some(lease) = &mut g.lease {
            if now < lease.expires && lease.tokens > 0 {
                lease.tokens -= 1;
                return Local::Hit {
                    tats: lease.tats.clone(),
                    held: lease.tokens,
                };
            }
            expired = g.lease.take().filter(|l| l.tokens > 0);
        }
        Local::Miss {
            want: self.want(&g.demand, slots),
            expired,
        }
    }

    /// Holds `tokens` taken from `item` until `now + window`; returns the lease's generation.
    /// A lease still held for the group (raced by a concurrent call) is returned for giving
    /// back.
    pub fn install(
        &self,
        group: &str,
        item: &str,
        slots: &[Slot],
        tokens: u64,
        tats: Vec<u64>,
        now: u64,
    ) -> (u64, Option<Lease>) {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lease = Lease {
            generation,
            item: item.to_owned(),
            slots: slots.to_vec(),
            tokens,
            expires: now + self.config.window.as_millis() as u64,
            tats,
        };
        let mut groups = self.lock();
        let replaced = groups
            .entry(group.to_owned())
            .or_default()
            .lease
            .replace(lease)
            .filter(|l| l.tokens > 0);
        (generation, replaced)
    }

    /// Puts one token back into the group's lease (a call another layer refused); false when
    /// no usable lease is held, and the token must go back to the store.
    pub fn put_back(&self, group: &str, now: u64) -> bool {
        let mut groups = self.lock();
        match groups.get_mut(group).and_then(|g| g.lease.as_mut()) {
            Some(lease) if now < lease.expires => {
                lease.tokens += 1;
                true
            }
            _ => false,
        }
    }

    /// Takes the lease `generation` of `group` out, if it is still held (its window ended).
    pub fn reclaim(&self, group: &str, generation: u64) -> Option<Lease> {
        let mut groups = self.lock();
        let g = groups.get_mut(group)?;
        if g.lease.as_ref().is_some_and(|l| l.generation == generation) {
            return g.lease.take().filter(|l| l.tokens > 0);
        }
        None
    }

    /// Tokens held across every group (for tests and metrics).
    pub fn held(&self) -> u64 {
        self.lock()
            .values()
            .filter_map(|g| g.lease.as_ref())
            .map(|l| l.tokens)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::gcra::Rate;

    fn slots(burst: u64) -> Vec<Slot> {
        vec![Slot {
            attr: "tat".to_owned(),
            rate: Rate::per_window(6_000, 60_000, burst).expect("rate"),
        }]
    }

    fn want(local: Local) -> u64 {
        match local {
            Local::Miss { want, .. } => want,
            Local::Hit { .. } => panic!("unexpected hit"),
        }
    }

    #[test]
    fn a_quiet_bucket_stays_exact_and_a_busy_one_is_leased_by_rate() {
        let leases = Leases::new(LeaseConfig::DEFAULT);
        let s = slots(1_000);
        // One call every 1.5 s: under two per 2 s window: exact.
        for i in 0..5 {
            assert_eq!(want(leases.local("g", &s, 1_000 + i * 1_500)), 1);
        }
        // Twenty a second on another group: leases of 2 s worth once a second was measured.
        let mut last = 0;
        for i in 0..60 {
            last = want(leases.local("busy", &s, 1_000 + i * 50));
        }
        assert!((30..=40).contains(&last), "lease size {last}");
    }

    #[test]
    fn a_lease_never_exceeds_the_burst_fraction_and_exact_mode_never_leases() {
        let leases = Leases::new(LeaseConfig::DEFAULT);
        let s = slots(50); // a tenth: 5
        let mut last = 0;
        for i in 0..200 {
            last = want(leases.local("g", &s, 1_000 + i * 10));
        }
        assert_eq!(last, 5);
        let exact = Leases::new(LeaseConfig::EXACT);
        for i in 0..100 {
            assert_eq!(want(exact.local("g", &s, 1_000 + i * 10)), 1);
        }
    }

    #[test]
    fn tokens_are_served_until_the_window_ends_then_handed_back() {
        let leases = Leases::new(LeaseConfig::DEFAULT);
        let s = slots(100);
        let (generation, replaced) = leases.install("g", "tool#t#0", &s, 2, vec![5_000], 1_000);
        assert!(replaced.is_none());
        assert!(matches!(
            leases.local("g", &s, 1_100),
            Local::Hit { held: 1, .. }
        ));
        // A refused call's token goes back into the lease while it is usable.
        assert!(leases.put_back("g", 1_200));
        assert_eq!(leases.held(), 2);
        // After the window: not served, and the rest comes back for giving back.
        match leases.local("g", &s, 3_001) {
            Local::Miss {
                expired: Some(l), ..
            } => assert_eq!((l.generation, l.tokens), (generation, 2)),
            other => panic!("{other:?}"),
        }
        assert!(!leases.put_back("g", 3_002));
        assert!(leases.reclaim("g", generation).is_none());
    }

    #[test]
    fn reclaim_takes_only_its_own_generation() {
        let leases = Leases::new(LeaseConfig::DEFAULT);
        let s = slots(100);
        let (old, _) = leases.install("g", "i", &s, 3, vec![0], 1_000);
        let (new, replaced) = leases.install("g", "i", &s, 4, vec![0], 1_500);
        assert_eq!(replaced.map(|l| l.tokens), Some(3));
        assert!(leases.reclaim("g", old).is_none());
        assert_eq!(leases.reclaim("g", new).map(|l| l.tokens), Some(4));
    }
}
