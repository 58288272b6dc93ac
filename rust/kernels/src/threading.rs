//! Thread pools (rayon), one per thread count, built on first use and kept.
//!
//! Work is split over output tiles and K is never split, so each output element is computed
//! by the same operations in the same order whatever the thread count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rayon::ThreadPool;

/// Below this many multiply-accumulates a call stays on the calling thread.
pub const PARALLEL_MIN_MACS: usize = 1 << 21;

pub(crate) fn pool(threads: usize) -> Arc<ThreadPool> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<ThreadPool>>>> = OnceLock::new();
    let map = POOLS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(threads)
        .or_insert_with(|| {
            Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("ferroquant-{i}"))
                    .build()
                    .expect("failed to start ferroquant's worker threads"),
            )
        })
        .clone()
}
