//! Summed durations for the per-render timing log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A sum of durations that tasks and threads add to concurrently.
#[derive(Debug, Default)]
pub struct Elapsed(AtomicU64);

impl Elapsed {
    pub fn add_since(&self, start: Instant) {
        self.0
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn millis(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sums_what_every_thread_adds() {
        let total = std::sync::Arc::new(Elapsed::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let total = total.clone();
                std::thread::spawn(move || {
                    // Something that began 20 ms ago, without waiting for it.
                    let start = Instant::now() - Duration::from_millis(20);
                    total.add_since(start);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(total.millis() >= 80.0, "{}", total.millis());
    }
}
