//! Bucket state: one TAT per bucket, taken with a conditional write.
//!
//! [`BucketStore::take`] is one conditional `UpdateItem` on one of two branches, since
//! DynamoDB update expressions have no `max()`:
//! - idle (`tat` absent or `<= now`): `SET tat = now + interval`;
//! - busy (`now < tat <= now + tolerance`): `SET tat = tat + interval`.
//!
//! The branch is chosen from the last TAT this instance saw. A failed condition returns the
//! item (`ReturnValuesOnConditionCheckFailure = ALL_OLD`), so the next branch or the refusal is
//! decided without a read. Attempts are bounded.
//!
//! A refund sets the TAT to `max(tat - interval, now)`: at `now` a bucket is already full,
//! and letting the TAT dip below `now` would flip concurrent takers between the two branches.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_sdk_dynamodb::error::ProvideErrorMetadata as _;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use super::gcra::{Decision, Rate, decide};
use crate::store::{DynamoStore, StoreError};

/// Most conditional writes one decision may take before giving up.
pub const MAX_ATTEMPTS: u32 = 6;

/// The result of taking a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    /// Admitted or refused.
    pub decision: Decision,
    /// Requests sent to the store for this decision.
    pub requests: u32,
}

/// Where bucket state lives.
#[async_trait::async_trait]
pub trait BucketStore: Send + Sync + std::fmt::Debug {
    /// Takes one token from `bucket` at `now`; `hint` is the last TAT this instance saw.
    async fn take(
        &self,
        bucket: &str,
        now: u64,
        rate: Rate,
        hint: Option<u64>,
    ) -> Result<Take, StoreError>;
    /// Gives back one token taken by a call another layer refused; the TAT never goes below
    /// `now` (a full bucket has nothing more to give back).
    async fn refund(&self, bucket: &str, now: u64, rate: Rate) -> Result<(), StoreError>;
    /// Reads a bucket's TAT (admin status; never on the request path).
    async fn peek(&self, bucket: &str) -> Result<Option<u64>, StoreError>;
}

fn bucket_key(bucket: &str) -> (AttributeValue, AttributeValue) {
    (
        AttributeValue::S(format!("BUCKET#{bucket}")),
        AttributeValue::S("BUCKET".to_owned()),
    )
}

/// Seconds-since-epoch after which an idle bucket item may be deleted by TTL.
fn ttl_after(max_tat_ms: u64) -> AttributeValue {
    AttributeValue::N((max_tat_ms / 1000 + 60).to_string())
}

fn tat_of(item: Option<&HashMap<String, AttributeValue>>) -> Option<u64> {
    item?.get("tat")?.as_n().ok()?.parse().ok()
}

#[async_trait::async_trait]
impl BucketStore for DynamoStore {
    async fn take(
        &self,
        bucket: &str,
        now: u64,
        rate: Rate,
        hint: Option<u64>,
    ) -> Result<Take, StoreError> {
        let (pk, sk) = bucket_key(bucket);
        let tolerance = rate.tolerance_ms();
        let mut seen = hint;
        for attempt in 1..=MAX_ATTEMPTS {
            let idle = seen.is_none_or(|t| t <= now);
            let request = self
                .client()
                .update_item()
                .table_name(self.table())
                .key("pk", pk.clone())
                .key("sk", sk.clone())
                .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .expression_attribute_names("#ttl", crate::store::TTL_ATTRIBUTE);
            let request = if idle {
                request
                    .update_expression("SET tat = :new, #ttl = :ttl")
                    .condition_expression("attribute_not_exists(tat) OR tat <= :now")
                    .expression_attribute_values(
                        ":new",
                        AttributeValue::N((now + rate.interval_ms).to_string()),
                    )
                    .expression_attribute_values(":ttl", ttl_after(now + rate.interval_ms))
            } else {
                request
                    .update_expression("SET tat = tat + :interval, #ttl = :ttl")
                    .condition_expression("tat > :now AND tat <= :max")
                    .expression_attribute_values(
                        ":interval",
                        AttributeValue::N(rate.interval_ms.to_string()),
                    )
                    .expression_attribute_values(
                        ":max",
                        AttributeValue::N((now + tolerance).to_string()),
                    )
                    .expression_attribute_values(
                        ":ttl",
                        ttl_after(now + tolerance + rate.interval_ms),
                    )
            };
            match request
                .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
                .send()
                .await
            {
                Ok(out) => {
                    let new_tat = tat_of(out.attributes.as_ref()).unwrap_or(now + rate.interval_ms);
                    let remaining = super::gcra::status(Some(new_tat), now, rate).0;
                    return Ok(Take {
                        decision: Decision::Admit { new_tat, remaining },
                        requests: attempt,
                    });
                }
                Err(err) => {
                    let service = err.into_service_error();
                    let UpdateItemError::ConditionalCheckFailedException(failed) = service else {
                        return Err(StoreError::Unavailable(format!(
                            "UpdateItem: {}",
                            service.code().unwrap_or("request failed")
                        )));
                    };
                    let old = tat_of(failed.item.as_ref());
                    if let Decision::Refuse { retry_after_ms } = decide(old, now, rate) {
                        return Ok(Take {
                            decision: Decision::Refuse { retry_after_ms },
                            requests: attempt,
                        });
                    }
                    seen = old;
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "bucket {bucket}: contention after {MAX_ATTEMPTS} attempts"
        )))
    }

    async fn refund(&self, bucket: &str, now: u64, rate: Rate) -> Result<(), StoreError> {
        // The TAT after a refund is max(tat - interval, now): one branch per side of `now`,
        // the second only when the first's condition fails (rare: refunds follow refusals).
        let (pk, sk) = bucket_key(bucket);
        let unavailable = |code: Option<&str>| {
            StoreError::Unavailable(format!("UpdateItem: {}", code.unwrap_or("request failed")))
        };
        let result = self
            .client()
            .update_item()
            .table_name(self.table())
            .key("pk", pk.clone())
            .key("sk", sk.clone())
            .update_expression("SET tat = tat - :interval")
            .condition_expression("tat >= :floor")
            .expression_attribute_values(
                ":interval",
                AttributeValue::N(rate.interval_ms.to_string()),
            )
            .expression_attribute_values(
                ":floor",
                AttributeValue::N((now + rate.interval_ms).to_string()),
            )
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let old = match result {
            Ok(_) => return Ok(()),
            Err(err) => match err.into_service_error() {
                UpdateItemError::ConditionalCheckFailedException(failed) => {
                    tat_of(failed.item.as_ref())
                }
                other => return Err(unavailable(other.code())),
            },
        };
        // Less than one interval ahead of `now`: the bucket becomes full. Already full or
        // gone: nothing to give back.
        let Some(old) = old.filter(|&t| t > now) else {
            return Ok(());
        };
        let result = self
            .client()
            .update_item()
            .table_name(self.table())
            .key("pk", pk)
            .key("sk", sk)
            .update_expression("SET tat = :now")
            .condition_expression("tat = :old")
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(":old", AttributeValue::N(old.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) => match err.into_service_error() {
                // Moved meanwhile: keep the token (errs toward refusing).
                UpdateItemError::ConditionalCheckFailedException(_) => Ok(()),
                other => Err(unavailable(other.code())),
            },
        }
    }

    async fn peek(&self, bucket: &str) -> Result<Option<u64>, StoreError> {
        let (pk, sk) = bucket_key(bucket);
        let out = self
            .client()
            .get_item()
            .table_name(self.table())
            .key("pk", pk)
            .key("sk", sk)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "GetItem: {}",
                    e.code().unwrap_or("request failed")
                ))
            })?;
        Ok(tat_of(out.item.as_ref()))
    }
}

/// Buckets in process memory: the per-instance fallback when a tool fails open, and unit tests.
#[derive(Debug, Default)]
pub struct MemoryBuckets {
    tats: Mutex<HashMap<String, u64>>,
}

impl MemoryBuckets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.tats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl BucketStore for MemoryBuckets {
    async fn take(
        &self,
        bucket: &str,
        now: u64,
        rate: Rate,
        _hint: Option<u64>,
    ) -> Result<Take, StoreError> {
        let mut tats = self.lock();
        let decision = decide(tats.get(bucket).copied(), now, rate);
        if let Decision::Admit { new_tat, .. } = decision {
            tats.insert(bucket.to_owned(), new_tat);
        }
        Ok(Take {
            decision,
            requests: 0,
        })
    }

    async fn refund(&self, bucket: &str, now: u64, rate: Rate) -> Result<(), StoreError> {
        if let Some(t) = self.lock().get_mut(bucket)
            && *t > now
        {
            *t = t.saturating_sub(rate.interval_ms).max(now);
        }
        Ok(())
    }

    async fn peek(&self, bucket: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.lock().get(bucket).copied())
    }
}
