//! Which profile is active at an instant (reference §1.2): fixed-date profiles first (the first
//! in list order whose `[start, end)` holds `now`), then recurring profiles (the one whose most
//! recent start is latest; a recurrence has no end and runs until another profile starts), then
//! the default profile.
//!
//! The portal's companion profiles (`{"name":"Auto created default scale condition","for":"X"}`)
//! are ordinary recurrences here: their start *is* the end of profile X, which is how the portal
//! implements end times. Among recurrences starting at the same instant the first in list order
//! wins (Azure does not document this tie).

use chrono::{DateTime, Datelike, Days, Utc};
use serde::{Deserialize, Serialize};

use crate::setting::{Profile, Schedule, Setting, local_to_utc};
use crate::zones::Zone;

/// Why a profile was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ProfileWhy {
    /// Inside a fixed-date window.
    FixedDate {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    /// The recurrence that started most recently.
    Recurrence { started: DateTime<Utc> },
    /// No fixed-date window holds now and no recurrence exists (or none has started).
    Default,
}

/// Index into `setting.profiles` of the active profile, and why; `None` when no profile applies
/// (only fixed-date profiles, none of them now).
pub fn active_profile(setting: &Setting, now: DateTime<Utc>) -> Option<(usize, ProfileWhy)> {
    for (i, p) in setting.profiles.iter().enumerate() {
        if let Schedule::Fixed { start, end, .. } = p.schedule
            && start <= now
            && now < end
        {
            return Some((i, ProfileWhy::FixedDate { start, end }));
        }
    }
    let mut best: Option<(usize, DateTime<Utc>)> = None;
    for (i, p) in setting.profiles.iter().enumerate() {
        if let Schedule::Weekly { zone, days, times } = &p.schedule
            && let Some(started) = last_start(*zone, days, times, now)
            && best.is_none_or(|(_, b)| started > b)
        {
            best = Some((i, started));
        }
    }
    if let Some((i, started)) = best {
        return Some((i, ProfileWhy::Recurrence { started }));
    }
    setting
        .profiles
        .iter()
        .position(|p: &Profile| p.schedule == Schedule::Always)
        .map(|i| (i, ProfileWhy::Default))
}

/// The most recent start of a weekly recurrence at or before `now` (looking back a week).
pub fn last_start(
    zone: Zone,
    days: &[bool; 7],
    times: &[(u32, u32)],
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let today = now.with_timezone(&zone.tz).date_naive();
    let mut best: Option<DateTime<Utc>> = None;
    for back in 0..=7u64 {
        let Some(date) = today.checked_sub_days(Days::new(back)) else {
            continue;
        };
        if !days[date.weekday().num_days_from_sunday() as usize] {
            continue;
        }
        for &(h, m) in times.iter().rev() {
            let Some(naive) = date.and_hms_opt(h, m, 0) else {
                continue;
            };
            let t = local_to_utc(zone, naive);
            if t <= now && best.is_none_or(|b| t > b) {
                best = Some(t);
            }
        }
        // Starts on an earlier local date are earlier instants (a gap or overlap shifts a start
        // by at most a few hours, never across a whole day), so the first day with a start wins.
        if best.is_some() {
            return best;
        }
    }
    best
}
