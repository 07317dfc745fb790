//! The health of one instance as its health check sees it: a count of consecutive failed probes
//! and the verdict derived from it. Unhealthy after `unhealthy_after` failures in a row, healthy
//! again after a single success (Azure's rule). The worker agent probes and feeds results in;
//! whether an unhealthy instance actually leaves rotation is the routing table's decision.
//!
//! No time here: the prober decides when to probe; this only counts.

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The path answered 200–299 in time.
    Passed,
    /// Anything else: another status (redirects included), no answer, a timeout.
    Failed,
}

/// A change of verdict, for the caller to report (and log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The instance just became unhealthy after this many consecutive failures.
    Unhealthy { failures: u32 },
    /// An unhealthy instance passed a probe.
    Healthy,
}

/// The health state of one instance process. A fresh process starts healthy: it is in rotation
/// as soon as it is ready, until its health check proves otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    unhealthy_after: u32,
    failures: u32,
    healthy: bool,
}

impl HealthState {
    /// `unhealthy_after` is the check's threshold (validated to 2–10; 0 is taken as 1, so a
    /// failure always counts).
    pub fn new(unhealthy_after: u32) -> HealthState {
        HealthState {
            unhealthy_after: unhealthy_after.max(1),
            failures: 0,
            healthy: true,
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Consecutive failed probes so far (0 after a success).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a probe's result; returns the change of verdict it caused, if any.
    pub fn record(&mut self, probe: Probe) -> Option<Transition> {
        match probe {
            Probe::Passed => {
                self.failures = 0;
                if self.healthy {
                    None
                } else {
                    self.healthy = true;
                    Some(Transition::Healthy)
                }
            }
            Probe::Failed => {
                self.failures = self.failures.saturating_add(1);
                if self.healthy && self.failures >= self.unhealthy_after {
                    self.healthy = false;
                    Some(Transition::Unhealthy {
                        failures: self.failures,
                    })
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `probes` (`p` passed, `f` failed) to a fresh state with threshold `after` and
    /// checks the transition after each (`.` none, `U` unhealthy, `H` healthy) and the final
    /// verdict.
    fn check(after: u32, probes: &str, transitions: &str, healthy: bool) {
        let mut state = HealthState::new(after);
        let got: String = probes
            .chars()
            .map(|c| {
                let probe = match c {
                    'p' => Probe::Passed,
                    'f' => Probe::Failed,
                    other => panic!("bad probe {other:?}"),
                };
                match state.record(probe) {
                    None => '.',
                    Some(Transition::Unhealthy { failures }) => {
                        assert_eq!(failures, state.failures());
                        'U'
                    }
                    Some(Transition::Healthy) => 'H',
                }
            })
            .collect();
        assert_eq!(got, transitions, "threshold {after}, probes {probes}");
        assert_eq!(
            state.healthy(),
            healthy,
            "threshold {after}, probes {probes}"
        );
    }

    #[test]
    fn transitions() {
        check(2, "", "", true);
        check(2, "ppp", "...", true);
        check(2, "f", ".", true);
        check(2, "ff", ".U", false);
        // Only consecutive failures count.
        check(2, "fpfpf", ".....", true);
        // Still failing: no second transition.
        check(2, "ffff", ".U..", false);
        // One success brings it back; the count starts over.
        check(2, "ffp", ".UH", true);
        check(2, "ffpf", ".UH.", true);
        check(2, "ffpff", ".UH.U", false);
        check(3, "ff", "..", true);
        check(3, "fff", "..U", false);
        check(10, "fffffffff", ".........", true);
        check(10, "ffffffffff", ".........U", false);
        // A degenerate threshold: every failure counts.
        check(0, "f", "U", false);
        check(1, "fpf", "UHU", false);
    }

    #[test]
    fn unhealthy_reports_the_failure_count_and_counting_goes_on() {
        let mut state = HealthState::new(3);
        assert_eq!(state.record(Probe::Failed), None);
        assert_eq!(state.record(Probe::Failed), None);
        assert_eq!(
            state.record(Probe::Failed),
            Some(Transition::Unhealthy { failures: 3 })
        );
        assert_eq!(state.record(Probe::Failed), None);
        assert_eq!(state.failures(), 4);
        assert_eq!(state.record(Probe::Passed), Some(Transition::Healthy));
        assert_eq!(state.failures(), 0);
    }
}
