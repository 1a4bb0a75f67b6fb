//! Bucket state: one TAT per bucket, several buckets per item, taken with one conditional write.
//!
//! An item holds the TATs of buckets that are always taken together: the agent item holds the
//! agent's per-minute, per-day and per-tool caps (one attribute each), a tool item the tool's
//! (shard's) bucket. [`BucketStore::take`] takes up to `want` tokens from every bucket of an
//! item with one conditional `UpdateItem`. Each bucket's part of the update is on one of two
//! branches, since DynamoDB update expressions have no `max()`:
//! - idle (`tat` absent or `<= now`): `SET tat = now + n * interval`;
//! - busy (`now < tat <= now + tolerance + interval - n * interval`): `SET tat = tat + n * interval`.
//!
//! Every bucket's condition is in the one expression, so the write takes all of them or none.
//! The branches are chosen from the last TATs this instance saw. A failed condition returns the
//! item (`ReturnValuesOnConditionCheckFailure = ALL_OLD`): a bucket with no token left refuses
//! the call (nothing was consumed), otherwise the grant shrinks to what every bucket has and the
//! next attempt uses the right branches, without a read. Attempts are bounded.
//!
//! [`BucketStore::give_back`] returns `n` tokens to every bucket of an item (a refund, or the
//! unused rest of a lease): `max(tat - n * interval, now)`, since at `now` a bucket is already
//! full and letting the TAT dip below `now` would flip concurrent takers between branches. It
//! too is one conditional write per attempt, each bucket on a branch that needs no exact value
//! (subtract when far ahead, set to `now` when near), so concurrent takes on the same item do
//! not void it.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_sdk_dynamodb::error::ProvideErrorMetadata as _;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::gcra::{Decision, Rate, available, decide};
use crate::store::{DynamoStore, StoreError};

/// Most conditional writes one decision may take before giving up.
pub const MAX_ATTEMPTS: u32 = 6;

/// One bucket inside an item: the attribute holding its TAT, and its rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Attribute name of the TAT.
    pub attr: String,
    /// The bucket's rate.
    pub rate: Rate,
}

/// What a take decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// `n` tokens (1 <= n <= want) were taken from every bucket; `tats` are the new TATs, one
    /// per slot.
    Granted {
        /// Tokens taken.
        n: u64,
        /// Each slot's TAT after the take.
        tats: Vec<u64>,
    },
    /// A bucket had no token; nothing was taken.
    Refused {
        /// Index of the slot that refused (the longest wait when several did).
        slot: usize,
        /// Wait before that bucket has a token.
        retry_after_ms: u64,
    },
}

/// The result of taking tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    /// Granted or refused.
    pub grant: Grant,
    /// Requests sent to the store for this decision.
    pub requests: u32,
}

/// Where bucket state lives.
#[async_trait::async_trait]
pub trait BucketStore: Send + Sync + std::fmt::Debug {
    /// Takes between 1 and `want` tokens from every slot of `item` at `now` (as many as every
    /// slot has, up to `want`), or refuses without taking any. `hints` are the last TATs this
    /// instance saw, one per slot.
    async fn take(
        &self,
        item: &str,
        slots: &[Slot],
        want: u64,
        now: u64,
        hints: &[Option<u64>],
    ) -> Result<Take, StoreError>;
    /// Gives `n` tokens back to every slot of `item`; no TAT goes below `now` (a full bucket has
    /// nothing more to give back). Returns the requests sent.
    async fn give_back(
        &self,
        item: &str,
        slots: &[Slot],
        n: u64,
        now: u64,
    ) -> Result<u32, StoreError>;
    /// Reads one bucket's TAT (admin status; never on the request path).
    async fn peek(&self, item: &str, attr: &str) -> Result<Option<u64>, StoreError>;
}

fn bucket_key(item: &str) -> (AttributeValue, AttributeValue) {
    (
        AttributeValue::S(format!("BUCKET#{item}")),
        AttributeValue::S("BUCKET".to_owned()),
    )
}

/// Seconds-since-epoch after which an idle bucket item may be deleted by TTL.
fn ttl_after(max_tat_ms: u64) -> AttributeValue {
    AttributeValue::N((max_tat_ms / 1000 + 60).to_string())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn tat_of(item: Option<&HashMap<String, AttributeValue>>, attr: &str) -> Option<u64> {
    item?.get(attr)?.as_n().ok()?.parse().ok()
}

/// The largest TAT any slot can reach: the item's TTL must not fall before it.
fn horizon(slots: &[Slot], now: u64) -> u64 {
    slots
        .iter()
        .map(|s| now + s.rate.tolerance_ms() + s.rate.interval_ms)
        .max()
        .unwrap_or(now)
}

/// What the old TATs allow: refuse (slot with the longest wait) or at most `cap` tokens.
fn decide_from_old(olds: &[Option<u64>], slots: &[Slot], now: u64, cap: u64) -> Grant {
    let refused = slots
        .iter()
        .zip(olds)
        .enumerate()
        .filter_map(|(i, (s, old))| match decide(*old, now, s.rate) {
            Decision::Refuse { retry_after_ms } => Some((i, retry_after_ms)),
            Decision::Admit { .. } => None,
        })
        .max_by_key(|(_, wait)| *wait);
    if let Some((slot, retry_after_ms)) = refused {
        return Grant::Refused {
            slot,
            retry_after_ms,
        };
    }
    let n = slots
        .iter()
        .zip(olds)
        .map(|(s, old)| available(*old, now, s.rate))
        .fold(cap, u64::min);
    Grant::Granted {
        n,
        tats: Vec::new(),
    }
}

fn unavailable(op: &str, code: Option<&str>) -> StoreError {
    StoreError::Unavailable(format!("{op}: {}", code.unwrap_or("request failed")))
}

#[async_trait::async_trait]
impl BucketStore for DynamoStore {
    async fn take(
        &self,
        item: &str,
        slots: &[Slot],
        want: u64,
        now: u64,
        hints: &[Option<u64>],
    ) -> Result<Take, StoreError> {
        let (pk, sk) = bucket_key(item);
        let mut seen: Vec<Option<u64>> = hints.to_vec();
        seen.resize(slots.len(), None);
        // Never more than any bucket holds when full.
        let mut want = slots
            .iter()
            .map(|s| s.rate.burst)
            .fold(want.max(1), u64::min);
        for attempt in 1..=MAX_ATTEMPTS {
            let mut request = self
                .client()
                .update_item()
                .table_name(self.table())
                .key("pk", pk.clone())
                .key("sk", sk.clone())
                .expression_attribute_values(":now", n(now))
                .expression_attribute_names("#ttl", crate::store::TTL_ATTRIBUTE)
                .expression_attribute_values(":ttl", ttl_after(horizon(slots, now)))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .return_values(ReturnValue::UpdatedNew);
            let mut sets = Vec::with_capacity(slots.len() + 1);
            let mut conditions = Vec::with_capacity(slots.len());
            for (i, (slot, seen)) in slots.iter().zip(&seen).enumerate() {
                let interval = slot.rate.interval_ms;
                request = request.expression_attribute_names(format!("#a{i}"), slot.attr.clone());
                if seen.is_none_or(|t| t <= now) {
                    request = request
                        .expression_attribute_values(format!(":n{i}"), n(now + want * interval));
                    sets.push(format!("#a{i} = :n{i}"));
                    conditions.push(format!("(attribute_not_exists(#a{i}) OR #a{i} <= :now)"));
                } else {
                    let max = now + slot.rate.tolerance_ms() + interval - want * interval;
                    request = request
                        .expression_attribute_values(format!(":m{i}"), n(max))
                        .expression_attribute_values(format!(":v{i}"), n(want * interval));
                    sets.push(format!("#a{i} = #a{i} + :v{i}"));
                    conditions.push(format!("(#a{i} > :now AND #a{i} <= :m{i})"));
                }
            }
            sets.push("#ttl = :ttl".to_owned());
            let result = request
                .update_expression(format!("SET {}", sets.join(", ")))
                .condition_expression(conditions.join(" AND "))
                .send()
                .await;
            match result {
                Ok(out) => {
                    let tats = slots
                        .iter()
                        .map(|s| {
                            tat_of(out.attributes.as_ref(), &s.attr)
                                .unwrap_or(now + want * s.rate.interval_ms)
                        })
                        .collect();
                    return Ok(Take {
                        grant: Grant::Granted { n: want, tats },
                        requests: attempt,
                    });
                }
                Err(err) => {
                    let service = err.into_service_error();
                    let UpdateItemError::ConditionalCheckFailedException(failed) = service else {
                        return Err(unavailable("UpdateItem", service.code()));
                    };
                    seen = slots
                        .iter()
                        .map(|s| tat_of(failed.item.as_ref(), &s.attr))
                        .collect();
                    match decide_from_old(&seen, slots, now, want) {
                        Grant::Granted { n, .. } => want = n,
                        refused => {
                            return Ok(Take {
                                grant: refused,
                                requests: attempt,
                            });
                        }
                    }
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "bucket {item}: contention after {MAX_ATTEMPTS} attempts"
        )))
    }

    async fn give_back(
        &self,
        item: &str,
        slots: &[Slot],
        count: u64,
        now: u64,
    ) -> Result<u32, StoreError> {
        // `max(tat - back, now)` without a read, per bucket on one of two branches that need
        // no exact value (so concurrent takes do not void them): far ahead (`tat >= now +
        // back`): subtract; near (`tat < now + back`): the bucket becomes full, `tat = now`.
        // A failed condition returns the item and the next attempt takes the right branches;
        // a bucket that does not exist is left alone.
        let (pk, sk) = bucket_key(item);
        // None: absent, skip; Some(true): far ahead; Some(false): near.
        let mut far: Vec<Option<bool>> = vec![Some(true); slots.len()];
        for attempt in 1..=MAX_ATTEMPTS {
            let mut request = self
                .client()
                .update_item()
                .table_name(self.table())
                .key("pk", pk.clone())
                .key("sk", sk.clone())
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            let mut sets = Vec::with_capacity(slots.len());
            let mut conditions = Vec::with_capacity(slots.len());
            for (i, (slot, far)) in slots.iter().zip(&far).enumerate() {
                let Some(far) = far else { continue };
                let back = count * slot.rate.interval_ms;
                request = request
                    .expression_attribute_names(format!("#a{i}"), slot.attr.clone())
                    .expression_attribute_values(format!(":f{i}"), n(now + back));
                if *far {
                    request = request.expression_attribute_values(format!(":d{i}"), n(back));
                    sets.push(format!("#a{i} = #a{i} - :d{i}"));
                    conditions.push(format!("#a{i} >= :f{i}"));
                } else {
                    request = request.expression_attribute_values(format!(":n{i}"), n(now));
                    sets.push(format!("#a{i} = :n{i}"));
                    conditions.push(format!("#a{i} < :f{i}"));
                }
            }
            if sets.is_empty() {
                return Ok(attempt - 1);
            }
            let result = request
                .update_expression(format!("SET {}", sets.join(", ")))
                .condition_expression(conditions.join(" AND "))
                .send()
                .await;
            match result {
                Ok(_) => return Ok(attempt),
                Err(err) => match err.into_service_error() {
                    UpdateItemError::ConditionalCheckFailedException(failed) => {
                        far = slots
                            .iter()
                            .map(|s| {
                                tat_of(failed.item.as_ref(), &s.attr)
                                    .map(|t| t >= now + count * s.rate.interval_ms)
                            })
                            .collect();
                    }
                    other => return Err(unavailable("UpdateItem", other.code())),
                },
            }
        }
        // Still moving after every attempt: keep the tokens (errs toward refusing).
        tracing::warn!(bucket = %item, "give-back abandoned under contention");
        Ok(MAX_ATTEMPTS)
    }

    async fn peek(&self, item: &str, attr: &str) -> Result<Option<u64>, StoreError> {
        let (pk, sk) = bucket_key(item);
        let out = self
            .client()
            .get_item()
            .table_name(self.table())
            .key("pk", pk)
            .key("sk", sk)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e.code()))?;
        Ok(tat_of(out.item.as_ref(), attr))
    }
}

/// Buckets in process memory: the per-instance fallback when a tool fails open, and unit tests.
#[derive(Debug, Default)]
pub struct MemoryBuckets {
    tats: Mutex<HashMap<(String, String), u64>>,
}

impl MemoryBuckets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u64>> {
        self.tats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl BucketStore for MemoryBuckets {
    async fn take(
        &self,
        item: &str,
        slots: &[Slot],
        want: u64,
        now: u64,
        _hints: &[Option<u64>],
    ) -> Result<Take, StoreError> {
        let mut tats = self.lock();
        let key = |s: &Slot| (item.to_owned(), s.attr.clone());
        let olds: Vec<Option<u64>> = slots.iter().map(|s| tats.get(&key(s)).copied()).collect();
        let cap = slots
            .iter()
            .map(|s| s.rate.burst)
            .fold(want.max(1), u64::min);
        let grant = match decide_from_old(&olds, slots, now, cap) {
            Grant::Granted { n, .. } => {
                let new: Vec<u64> = slots
                    .iter()
                    .zip(&olds)
                    .map(|(s, old)| old.unwrap_or(0).max(now) + n * s.rate.interval_ms)
                    .collect();
                for (s, tat) in slots.iter().zip(&new) {
                    tats.insert(key(s), *tat);
                }
                Grant::Granted { n, tats: new }
            }
            refused => refused,
        };
        Ok(Take { grant, requests: 0 })
    }

    async fn give_back(
        &self,
        item: &str,
        slots: &[Slot],
        count: u64,
        now: u64,
    ) -> Result<u32, StoreError> {
        let mut tats = self.lock();
        for s in slots {
            if let Some(t) = tats.get_mut(&(item.to_owned(), s.attr.clone()))
                && *t > now
            {
                *t = t.saturating_sub(count * s.rate.interval_ms).max(now);
            }
        }
        Ok(0)
    }

    async fn peek(&self, item: &str, attr: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .lock()
            .get(&(item.to_owned(), attr.to_owned()))
            .copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(attr: &str, per_minute: u64, burst: u64) -> Slot {
        Slot {
            attr: attr.to_owned(),
            rate: Rate::per_window(per_minute, 60_000, burst).expect("rate"),
        }
    }

    #[tokio::test]
    async fn a_take_is_all_buckets_or_none_and_names_the_empty_one() {
        let store = MemoryBuckets::default();
        let slots = [slot("minute", 60, 60), slot("cap", 60, 2)];
        let now = 1_000_000;
        for _ in 0..2 {
            let t = store
                .take("agent#a", &slots, 1, now, &[])
                .await
                .expect("take");
            assert!(matches!(t.grant, Grant::Granted { n: 1, .. }), "{t:?}");
        }
        let t = store
            .take("agent#a", &slots, 1, now, &[])
            .await
            .expect("take");
        assert_eq!(
            t.grant,
            Grant::Refused {
                slot: 1,
                retry_after_ms: 1_000
            }
        );
        // The refused take consumed nothing from the minute bucket.
        assert_eq!(
            store.peek("agent#a", "minute").await.expect("peek"),
            Some(now + 2_000)
        );
    }

    #[tokio::test]
    async fn a_lease_is_cut_to_what_every_bucket_holds() {
        let store = MemoryBuckets::default();
        let slots = [slot("minute", 60, 60), slot("day", 60, 5)];
        let now = 1_000_000;
        let t = store
            .take("agent#a", &slots, 20, now, &[])
            .await
            .expect("take");
        assert_eq!(
            t.grant,
            Grant::Granted {
                n: 5,
                tats: vec![now + 5_000, now + 5_000]
            }
        );
        store
            .give_back("agent#a", &slots, 3, now)
            .await
            .expect("give back");
        assert_eq!(
            store.peek("agent#a", "day").await.expect("peek"),
            Some(now + 2_000)
        );
        // Never below `now`.
        store
            .give_back("agent#a", &slots, 10, now)
            .await
            .expect("give back");
        assert_eq!(
            store.peek("agent#a", "minute").await.expect("peek"),
            Some(now)
        );
    }
}
