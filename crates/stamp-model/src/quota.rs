//! The daily CPU quota of Free and Shared apps (Azure: 60 CPU-minutes a day on Free, 240 on
//! Shared). PURE: the caller books the CPU each app used and passes the time in.
//!
//! The day is the UTC day, as Azure's quota period. An app that has used its day's quota is
//! stopped (its instances stop and the front end answers 403 "app stopped") until the next UTC
//! day begins; then every app's count starts again from zero and stopped apps start again.

use std::collections::{BTreeMap, BTreeSet};

use crate::names::AppName;
use crate::time::Millis;

const DAY_MS: u64 = 86_400_000;

/// The UTC day `at` falls in (days since 1970-01-01).
pub fn day_of(at: Millis) -> u64 {
    at.0 / DAY_MS
}

/// When the day after `day` begins.
pub fn next_reset(day: u64) -> Millis {
    Millis((day + 1) * DAY_MS)
}

/// What booking changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaEvent {
    /// The app reached its quota and is stopped until `until`.
    Stopped {
        app: AppName,
        used_ms: u64,
        quota_ms: u64,
        until: Millis,
    },
    /// A new day began: every count is zero again and these apps start again.
    Reset { day: u64, restarted: Vec<AppName> },
}

/// CPU booked per app for one UTC day, and the apps stopped for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuQuota {
    day: u64,
    used_ms: BTreeMap<AppName, u64>,
    stopped: BTreeSet<AppName>,
}

impl CpuQuota {
    /// Today's state at `now`, from what was already booked today (`used_ms`, e.g. read back
    /// from the store after a restart) and each quota-bound app's quota (`quotas_ms`).
    pub fn resume(
        now: Millis,
        used_ms: BTreeMap<AppName, u64>,
        quotas_ms: &BTreeMap<AppName, u64>,
    ) -> CpuQuota {
        let stopped = used_ms
            .iter()
            .filter(|(app, used)| quotas_ms.get(*app).is_some_and(|q| **used >= *q))
            .map(|(app, _)| app.clone())
            .collect();
        CpuQuota {
            day: day_of(now),
            used_ms,
            stopped,
        }
    }

    pub fn day(&self) -> u64 {
        self.day
    }

    pub fn is_stopped(&self, app: &AppName) -> bool {
        self.stopped.contains(app)
    }

    pub fn stopped(&self) -> &BTreeSet<AppName> {
        &self.stopped
    }

    /// CPU booked today, in ms.
    pub fn used_ms(&self, app: &AppName) -> u64 {
        self.used_ms.get(app).copied().unwrap_or(0)
    }

    /// Books `cpu_ms` of CPU to each app at `now`, each with its quota (apps without a quota are
    /// not passed). A new day first resets everything; CPU booked in the same call counts for
    /// the new day.
    pub fn book(&mut self, now: Millis, usage: &[(AppName, u64, u64)]) -> Vec<QuotaEvent> {
        let mut events = Vec::new();
        let today = day_of(now);
        if today != self.day {
            let restarted: Vec<AppName> = std::mem::take(&mut self.stopped).into_iter().collect();
            self.used_ms.clear();
            self.day = today;
            events.push(QuotaEvent::Reset {
                day: today,
                restarted,
            });
        }
        for (app, cpu_ms, quota_ms) in usage {
            let used = self.used_ms.entry(app.clone()).or_insert(0);
            *used = used.saturating_add(*cpu_ms);
            if *used >= *quota_ms && self.stopped.insert(app.clone()) {
                events.push(QuotaEvent::Stopped {
                    app: app.clone(),
                    used_ms: *used,
                    quota_ms: *quota_ms,
                    until: next_reset(today),
                });
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> AppName {
        AppName::parse(name).unwrap()
    }

    #[test]
    fn apps_stop_at_their_quota_and_start_again_the_next_day() {
        let day = 20_000 * DAY_MS;
        let at = |ms: u64| Millis(day + ms);
        let mut q = CpuQuota::resume(at(0), BTreeMap::new(), &BTreeMap::new());
        let (free, shared) = (app("free"), app("shared"));
        let minute = 60_000;
        assert!(
            q.book(
                at(1000),
                &[
                    (free.clone(), 59 * minute, 60 * minute),
                    (shared.clone(), 100 * minute, 240 * minute)
                ]
            )
            .is_empty()
        );
        let events = q.book(at(2000), &[(free.clone(), minute, 60 * minute)]);
        assert_eq!(
            events,
            [QuotaEvent::Stopped {
                app: free.clone(),
                used_ms: 60 * minute,
                quota_ms: 60 * minute,
                until: Millis(day + DAY_MS),
            }]
        );
        assert!(q.is_stopped(&free) && !q.is_stopped(&shared));
        // Stopped once: more CPU (a last sample) makes no second event.
        assert!(
            q.book(at(3000), &[(free.clone(), 10, 60 * minute)])
                .is_empty()
        );
        // The next UTC day: reset first, then today's booking.
        let events = q.book(
            Millis(day + DAY_MS + 5),
            &[(shared.clone(), minute, 240 * minute)],
        );
        assert_eq!(
            events,
            [QuotaEvent::Reset {
                day: 20_001,
                restarted: vec![free.clone()],
            }]
        );
        assert!(!q.is_stopped(&free));
        assert_eq!((q.used_ms(&free), q.used_ms(&shared)), (0, minute));
    }

    #[test]
    fn a_restart_resumes_the_day_with_its_stopped_apps() {
        let now = Millis(20_000 * DAY_MS + 1);
        let used = BTreeMap::from([(app("a"), 3_600_000), (app("b"), 10), (app("c"), 99)]);
        let quotas = BTreeMap::from([(app("a"), 3_600_000), (app("b"), 3_600_000)]);
        let q = CpuQuota::resume(now, used, &quotas);
        assert!(q.is_stopped(&app("a")));
        assert!(!q.is_stopped(&app("b")));
        assert!(
            !q.is_stopped(&app("c")),
            "no quota (moved to Basic): not stopped"
        );
        assert_eq!(q.day(), 20_000);
    }
}
