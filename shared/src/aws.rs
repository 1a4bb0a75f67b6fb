//! AWS service clients made when first used.
//!
//! Making an AWS SDK client is not free: each service crate parses its own copy of the AWS
//! partition table and compiles the region patterns in it (about 0.2 ms of a cold start per
//! client, measured with `perf` on `lookup_customer`). A function makes at init only the
//! clients its first request needs (DynamoDB, the HTTP client); Secrets Manager (the hashing
//! key, OAuth introspection credentials, provider client secrets) and KMS (the connection
//! vault) are [`Lazy`]: made by the first call that uses them, once per process, and shared
//! by every clone.

use std::sync::{Arc, OnceLock};

/// A client made by its first [`Lazy::get`]; clones share it.
pub struct Lazy<C> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    cell: OnceLock<C>,
    make: Box<dyn Fn() -> C + Send + Sync>,
}

impl<C> Lazy<C> {
    /// A client `make` makes when it is first needed.
    pub fn new(make: impl Fn() -> C + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::new(Inner {
                cell: OnceLock::new(),
                make: Box::new(make),
            }),
        }
    }

    /// A client made already.
    pub fn ready(client: C) -> Self {
        Self {
            inner: Arc::new(Inner {
                cell: OnceLock::from(client),
                make: Box::new(|| unreachable!("a ready client is never made again")),
            }),
        }
    }

    /// The client, made now if no call has needed it before.
    pub fn get(&self) -> &C {
        self.inner.cell.get_or_init(|| (self.inner.make)())
    }

    /// Whether the client has been made.
    pub fn is_made(&self) -> bool {
        self.inner.cell.get().is_some()
    }
}

impl<C> Clone for Lazy<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C> From<C> for Lazy<C> {
    fn from(client: C) -> Self {
        Self::ready(client)
    }
}

impl<C> std::fmt::Debug for Lazy<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("made", &self.is_made())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn made_once_by_the_first_get_and_shared_by_clones() {
        let made = Arc::new(AtomicUsize::new(0));
        let counter = made.clone();
        let lazy = Lazy::new(move || counter.fetch_add(1, Ordering::SeqCst) + 100);
        let clone = lazy.clone();
        assert!(!lazy.is_made());
        assert_eq!(
            made.load(Ordering::SeqCst),
            0,
            "nothing is made before it is needed"
        );
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = clone.clone();
                std::thread::spawn(move || *l.get())
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().expect("the thread ran"), 100);
        }
        assert_eq!(*lazy.get(), 100);
        assert!(lazy.is_made() && clone.is_made());
        assert_eq!(
            made.load(Ordering::SeqCst),
            1,
            "made once for every clone and thread"
        );
    }

    #[test]
    fn a_ready_client_is_the_one_given() {
        let lazy: Lazy<String> = "given".to_owned().into();
        assert!(lazy.is_made());
        assert_eq!(lazy.get(), "given");
        assert_eq!(format!("{lazy:?}"), "Lazy { made: true }");
    }
}
