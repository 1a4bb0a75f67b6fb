//! A bounded per-instance cache with a deadline per entry and least-recently-used eviction.
//!
//! When full, expired entries go first; if it is still full, the least recently used tenth is
//! evicted (one selection over the entries, so eviction costs O(1) per insert amortised). A
//! flood of distinct unknown credentials therefore pushes out only entries nobody used lately,
//! never the whole cache with the hot keys of legitimate agents in it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
struct Entry<V> {
    value: V,
    until: Instant,
    used: Instant,
}

/// A cache of at most `capacity` entries, each valid until its own deadline.
#[derive(Debug)]
pub(crate) struct BoundedCache<K, V> {
    map: Mutex<HashMap<K, Entry<V>>>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> BoundedCache<K, V> {
    /// An empty cache holding at most `capacity` entries (at least 10).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(10),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Entry<V>>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The value under `key` if its deadline has not passed (and marks it used).
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        let mut map = self.lock();
        let entry = map.get_mut(key).filter(|e| e.until > now)?;
        entry.used = now;
        Some(entry.value.clone())
    }

    /// Stores `value` under `key` until `until`, evicting as the module says when full.
    pub(crate) fn insert(&self, key: K, value: V, until: Instant) {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, e| e.until > now);
            if map.len() >= self.capacity {
                let evict = (self.capacity / 10).max(1);
                let mut used: Vec<(Instant, K)> =
                    map.iter().map(|(k, e)| (e.used, k.clone())).collect();
                used.select_nth_unstable_by_key(evict - 1, |(at, _)| *at);
                for (_, k) in used.into_iter().take(evict) {
                    map.remove(&k);
                }
            }
        }
        map.insert(
            key,
            Entry {
                value,
                until,
                used: now,
            },
        );
    }

    /// Entries held (expired ones included until evicted).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_evicts_the_least_recently_used_never_everything() {
        let cache = BoundedCache::new(100);
        let later = Instant::now() + Duration::from_secs(60);
        cache.insert("hot".to_owned(), 1, later);
        for i in 0..1_000 {
            // The legitimate key keeps being used while distinct unknown keys flood in.
            assert_eq!(cache.get(&"hot".to_owned()), Some(1), "evicted at {i}");
            cache.insert(format!("flood-{i}"), 0, later);
            assert!(cache.len() <= 100);
        }
        assert!(
            cache.len() >= 90,
            "evicts a tenth, not all: {}",
            cache.len()
        );
        assert_eq!(cache.get(&"flood-999".to_owned()), Some(0));
    }

    #[test]
    fn expired_entries_are_misses_and_go_first() {
        let cache = BoundedCache::new(10);
        let past = Instant::now();
        let later = past + Duration::from_secs(60);
        for i in 0..10 {
            cache.insert(i, i, if i < 5 { past } else { later });
        }
        assert_eq!(cache.get(&0), None);
        cache.insert(10, 10, later);
        assert_eq!(
            cache.len(),
            6,
            "the five expired entries went, nothing else"
        );
        for i in 5..=10 {
            assert_eq!(cache.get(&i), Some(i));
        }
    }
}
