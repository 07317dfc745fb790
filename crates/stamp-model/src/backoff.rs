//! Restart backoff for crashed instances: the first crash restarts at once, then 1 s, 2 s, 4 s ...
//! up to 60 s. A process that ran for [`STABLE_AFTER`] before crashing starts the sequence over.

use crate::time::Millis;

pub const MAX_DELAY: Millis = Millis::from_secs(60);
pub const STABLE_AFTER: Millis = Millis::from_secs(60);

/// Delay before restarting after the `consecutive`-th consecutive crash (1-based).
pub fn restart_delay(consecutive: u32) -> Millis {
    match consecutive {
        0 | 1 => Millis::ZERO,
        n => {
            let secs = 1u64.checked_shl(n - 2).unwrap_or(u64::MAX);
            Millis::from_secs(secs.min(MAX_DELAY.0 / 1000))
        }
    }
}

/// The consecutive-crash count after a crash of a process that ran `ran_for`.
pub fn next_consecutive(previous: u32, ran_for: Millis) -> u32 {
    if ran_for >= STABLE_AFTER {
        1
    } else {
        previous.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_a_minute() {
        let got: Vec<u64> = (1..=9).map(|n| restart_delay(n).0 / 1000).collect();
        assert_eq!(got, [0, 1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(restart_delay(200), MAX_DELAY);
    }

    #[test]
    fn resets_after_a_stable_run() {
        assert_eq!(next_consecutive(5, Millis::from_secs(1)), 6);
        assert_eq!(next_consecutive(5, Millis::from_secs(61)), 1);
    }
}
