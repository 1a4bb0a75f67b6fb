//! GCRA arithmetic: a token bucket stored as one number, the theoretical arrival time (TAT).
//!
//! A bucket admits one call every `interval_ms` on average and up to `burst` calls at once when
//! idle. A call at `now` is admitted when `max(tat, now) - now <= interval * (burst - 1)`, and
//! then moves the TAT to `max(tat, now) + interval`. All times are integer Unix milliseconds.

/// A bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rate {
    /// Milliseconds per token.
    pub interval_ms: u64,
    /// Tokens available at once on an idle bucket (>= 1).
    pub burst: u64,
}

impl Rate {
    /// `limit` calls per `window_ms`, with `burst` at once. `None` when `limit` or `burst` is 0.
    pub fn per_window(limit: u64, window_ms: u64, burst: u64) -> Option<Self> {
        if limit == 0 || burst == 0 || window_ms == 0 {
            return None;
        }
        Some(Self {
            interval_ms: (window_ms / limit).max(1),
            burst,
        })
    }

    /// How far ahead of `now` the TAT may be for a call to be admitted.
    pub fn tolerance_ms(&self) -> u64 {
        self.interval_ms
            .saturating_mul(self.burst.saturating_sub(1))
    }

    /// This rate split over `shards` buckets (each gets `1/shards` of the rate and burst,
    /// rounded down, so the shards together never allow more than the whole burst). `shards`
    /// is capped at the burst: a shard holds at least one token, so more shards than tokens
    /// would raise the effective burst.
    pub fn sharded(&self, shards: u64) -> Self {
        let shards = shards.clamp(1, self.burst.max(1));
        Self {
            interval_ms: self.interval_ms.saturating_mul(shards),
            burst: (self.burst / shards).max(1),
        }
    }
}

/// The outcome of one admission decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admit: store `new_tat`; `remaining` calls could still be admitted right now.
    Admit {
        /// The TAT to store.
        new_tat: u64,
        /// Calls left at this instant.
        remaining: u64,
    },
    /// Refuse: the first admission is possible `retry_after_ms` from now.
    Refuse {
        /// Wait before the next admissible call.
        retry_after_ms: u64,
    },
}

/// Decides one call at `now` against a bucket whose stored TAT is `tat` (`None`: never used).
pub fn decide(tat: Option<u64>, now: u64, rate: Rate) -> Decision {
    let base = tat.unwrap_or(0).max(now);
    let ahead = base - now;
    let tolerance = rate.tolerance_ms();
    if ahead > tolerance {
        return Decision::Refuse {
            retry_after_ms: ahead - tolerance,
        };
    }
    Decision::Admit {
        new_tat: base + rate.interval_ms,
        remaining: (tolerance - ahead) / rate.interval_ms,
    }
}

/// Tokens that can be taken at once at `now` (a lease of that many, or one call): the largest
/// `k` with `max(tat, now) + k * interval <= now + tolerance + interval`. 0 means refused;
/// [`decide`] then gives the wait.
pub fn available(tat: Option<u64>, now: u64, rate: Rate) -> u64 {
    let ahead = tat.unwrap_or(0).max(now) - now;
    let tolerance = rate.tolerance_ms();
    if ahead > tolerance {
        0
    } else {
        (tolerance - ahead) / rate.interval_ms + 1
    }
}

/// Calls that could be admitted at `now`, and when the bucket is full again (ms from now).
pub fn status(tat: Option<u64>, now: u64, rate: Rate) -> (u64, u64) {
    let base = tat.unwrap_or(0).max(now);
    let ahead = base - now;
    let capacity = rate.interval_ms.saturating_mul(rate.burst);
    let remaining = capacity.saturating_sub(ahead) / rate.interval_ms;
    (remaining, ahead)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn idle_bucket_admits_a_burst_then_one_per_interval() {
        let rate = Rate::per_window(60, 60_000, 3).expect("rate");
        assert_eq!(rate.interval_ms, 1_000);
        let mut tat = None;
        let now = 1_000_000;
        for left in [2, 1, 0] {
            match decide(tat, now, rate) {
                Decision::Admit { new_tat, remaining } => {
                    assert_eq!(remaining, left);
                    tat = Some(new_tat);
                }
                Decision::Refuse { .. } => panic!("burst should be admitted"),
            }
        }
        assert_eq!(
            decide(tat, now, rate),
            Decision::Refuse {
                retry_after_ms: 1_000
            }
        );
        assert!(matches!(
            decide(tat, now + 1_000, rate),
            Decision::Admit { .. }
        ));
    }

    #[test]
    fn zero_limits_are_not_rates() {
        assert!(Rate::per_window(0, 60_000, 1).is_none());
        assert!(Rate::per_window(1, 60_000, 0).is_none());
    }

    #[test]
    fn shards_split_rate_and_burst() {
        let r = Rate::per_window(1_000, 1_000, 100)
            .expect("rate")
            .sharded(4);
        assert_eq!((r.interval_ms, r.burst), (4, 25));
    }

    /// Shards together never hold more tokens than the configured burst, whatever the split.
    #[test]
    fn shards_never_raise_the_burst() {
        for burst in 1..=20u64 {
            for shards in 1..=64u64 {
                let r = Rate::per_window(600, 60_000, burst)
                    .expect("rate")
                    .sharded(shards);
                let used = shards.min(burst);
                assert!(
                    r.burst * used <= burst,
                    "burst {burst} over {shards} shards: {} each",
                    r.burst
                );
                assert_eq!(r.interval_ms, 100 * used, "the rate stays whole");
            }
        }
    }

    /// Reference token bucket with fractional tokens, refilled continuously.
    struct Reference {
        tokens: f64,
        last: u64,
        rate: Rate,
    }

    impl Reference {
        fn take(&mut self, now: u64) -> bool {
            let refill = (now - self.last) as f64 / self.rate.interval_ms as f64;
            self.tokens = (self.tokens + refill).min(self.rate.burst as f64);
            self.last = now;
            if self.tokens >= 1.0 - 1e-9 {
                self.tokens -= 1.0;
                true
            } else {
                false
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// GCRA admits exactly what a continuously refilled token bucket admits.
        #[test]
        fn gcra_matches_a_reference_token_bucket(
            interval in 1u64..5_000,
            burst in 1u64..20,
            gaps in proptest::collection::vec(0u64..3_000, 1..200),
        ) {
            let rate = Rate { interval_ms: interval, burst };
            let mut reference = Reference { tokens: burst as f64, last: 0, rate };
            let mut tat = None;
            let mut now = 0u64;
            for gap in gaps {
                now += gap;
                let expected = reference.take(now);
                let got = match decide(tat, now, rate) {
                    Decision::Admit { new_tat, .. } => { tat = Some(new_tat); true }
                    Decision::Refuse { retry_after_ms } => {
                        // The wait is exact: admissible then, not a millisecond before.
                        let at_wait = matches!(decide(tat, now + retry_after_ms, rate), Decision::Admit { .. });
                        let just_before = matches!(decide(tat, now + retry_after_ms - 1, rate), Decision::Refuse { .. });
                        prop_assert!(at_wait && just_before, "wait {} not exact", retry_after_ms);
                        false
                    }
                };
                prop_assert_eq!(got, expected);
            }
        }

        /// Taking `available` tokens at once is what `available` calls one by one admit.
        #[test]
        fn available_matches_one_by_one_decisions(
            interval in 1u64..5_000,
            burst in 1u64..50,
            ahead in 0u64..200_000,
        ) {
            let rate = Rate { interval_ms: interval, burst };
            let now = 1_000_000u64;
            let mut tat = Some(now + ahead);
            let mut one_by_one = 0u64;
            while let Decision::Admit { new_tat, .. } = decide(tat, now, rate) {
                tat = Some(new_tat);
                one_by_one += 1;
            }
            prop_assert_eq!(available(Some(now + ahead), now, rate), one_by_one);
        }

        /// Over any window, admissions never exceed burst + elapsed / interval.
        #[test]
        fn admissions_are_bounded(
            interval in 1u64..1_000,
            burst in 1u64..50,
            gaps in proptest::collection::vec(0u64..500, 1..400),
        ) {
            let rate = Rate { interval_ms: interval, burst };
            let mut tat = None;
            let mut now = 0u64;
            let mut admitted = 0u64;
            for gap in gaps {
                now += gap;
                if let Decision::Admit { new_tat, .. } = decide(tat, now, rate) {
                    tat = Some(new_tat);
                    admitted += 1;
                }
            }
            prop_assert!(admitted <= burst + now / interval);
        }
    }
}
