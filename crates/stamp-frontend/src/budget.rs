//! The retry budget: how many never-sent requests may be retried on another instance, so that
//! retries cannot multiply the load on an app exactly when its instances are failing (the
//! Finagle/Linkerd rule: retries add at most 20 % to requests, plus 10 per second).
//!
//! A token bucket that costs nothing on the request path. Tokens accrue at 0.2 per request and
//! 10 per second and the bucket holds at most 100 (the floor's 10 s window); a retry takes one.
//! Instead of adding a token per request, the bucket is computed when a retry asks: deposits so
//! far are a function of the app's request count and the time, both passed in (so this is
//! tested without a clock), and one atomic, `spent`, records what retries took and what the cap
//! discarded. Between two withdrawals the balance only grows, so capping it when a withdrawal
//! looks at it gives the same result as capping it continuously.

use std::sync::atomic::{AtomicI64, Ordering};

/// A token is 1000 milli-tokens, so the 0.2 per request stays an integer.
const TOKEN: i64 = 1000;
/// Milli-tokens per request (20 %).
const PER_REQUEST: i64 = 200;
/// Milli-tokens per millisecond: 10 tokens per second.
const PER_MILLI: i64 = 10;
/// At most 100 tokens: 10 s of the floor.
const CAP: i64 = 100 * TOKEN;

#[derive(Debug)]
pub(crate) struct RetryBudget {
    /// Milli-tokens deposited that are no longer in the bucket: taken by retries or discarded
    /// above the cap. Starts at `-CAP` so a new bucket is full: a front end that starts while an
    /// instance is down still retries.
    spent: AtomicI64,
}

impl Default for RetryBudget {
    fn default() -> RetryBudget {
        RetryBudget {
            spent: AtomicI64::new(-CAP),
        }
    }
}

impl RetryBudget {
    /// Takes one retry from the budget if there is one. `requests` is the app's request count
    /// so far and `now_ms` the time since the front end started; both only grow.
    pub(crate) fn try_withdraw(&self, requests: u64, now_ms: u64) -> bool {
        let deposited = i64::try_from(requests)
            .unwrap_or(i64::MAX)
            .saturating_mul(PER_REQUEST)
            .saturating_add(
                i64::try_from(now_ms)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(PER_MILLI),
            );
        let mut spent = self.spent.load(Ordering::Relaxed);
        loop {
            // Tokens above the cap are discarded: count them as spent.
            let floor = spent.max(deposited.saturating_sub(CAP));
            if deposited.saturating_sub(floor) < TOKEN {
                return false;
            }
            match self.spent.compare_exchange_weak(
                spent,
                floor + TOKEN,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => spent = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retries granted out of `attempts` tries at (requests, now_ms).
    fn granted(budget: &RetryBudget, requests: u64, now_ms: u64, attempts: usize) -> usize {
        (0..attempts)
            .filter(|_| budget.try_withdraw(requests, now_ms))
            .count()
    }

    #[test]
    fn a_new_budget_is_full_and_then_refills_at_ten_per_second() {
        let budget = RetryBudget::default();
        assert_eq!(granted(&budget, 0, 0, 150), 100);
        assert_eq!(granted(&budget, 0, 0, 10), 0);
        assert_eq!(granted(&budget, 0, 99, 10), 0, "not a whole token yet");
        assert_eq!(granted(&budget, 0, 100, 10), 1);
        assert_eq!(granted(&budget, 0, 1_100, 20), 10);
    }

    #[test]
    fn retries_add_at_most_twenty_percent_of_requests() {
        let budget = RetryBudget::default();
        assert_eq!(granted(&budget, 0, 0, 100), 100);
        // 1000 requests in the same instant earn 200, but the bucket holds 100.
        assert_eq!(granted(&budget, 1_000, 0, 500), 100);
        // Over 10 s at 1000 requests per second, asking for a retry on every request: 20 % of
        // 10 000 requests plus 10 per second is 2100, plus the 100 banked at the start.
        let mut retries = 0;
        for second in 1..=10u64 {
            for request in 0..1_000u64 {
                let requests = 1_000 + second * 1_000 + request;
                let now = second * 1_000 + request;
                retries += usize::from(budget.try_withdraw(requests, now));
            }
        }
        assert!((2_190..=2_200).contains(&retries), "{retries}");
    }

    #[test]
    fn the_bucket_holds_at_most_a_hundred() {
        let budget = RetryBudget::default();
        // A quiet hour, then a burst: still only 100 at once.
        assert_eq!(granted(&budget, 50_000, 3_600_000, 1_000), 100);
        assert_eq!(granted(&budget, 50_000, 3_600_000, 10), 0);
    }

    #[test]
    fn concurrent_withdrawals_never_overdraw() {
        let budget = std::sync::Arc::new(RetryBudget::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = std::sync::Arc::clone(&budget);
                std::thread::spawn(move || granted(&budget, 0, 0, 100))
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert_eq!(total, 100);
    }
}
