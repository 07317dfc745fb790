//! Putting demands on workers: which worker indexes run each app's process type. The algorithm
//! and its choices are described in the crate docs.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use stamp_model::{AppName, Placement, ProcessType};

use crate::Demand;

type Key = (AppName, ProcessType);

/// Places `demands` on workers `0..workers`, starting from `previous`, which was made for
/// `previous_workers` workers.
///
/// - Every demanded (app, type) gets exactly `count` distinct workers (`count` is clipped to
///   `workers`; a pair listed twice takes its last count). Nothing else is placed.
/// - While the worker count is unchanged, every still-valid assignment of `previous` stays where
///   it is: a lower count removes instances from the most loaded of the app's workers, a higher
///   count (or a new app) adds them on the least loaded workers not yet running that type. No
///   other app moves.
/// - When the count changed, assignments on removed workers are dropped, counts are adjusted as
///   above, then instances move one at a time from the most loaded worker to the least loaded
///   until the loads differ by at most one.
///
/// Deterministic: ties go to the lowest worker index when adding or moving to a worker, to the
/// highest when removing (high indexes are the first to go on scale-in), and pairs are handled
/// in (app, process type) order.
pub fn place(
    previous_workers: u32,
    workers: u32,
    demands: &[Demand],
    previous: &Placement,
) -> Placement {
    let mut wanted: BTreeMap<Key, u32> = BTreeMap::new();
    for demand in demands {
        wanted.insert(
            (demand.app.clone(), demand.process_type.clone()),
            demand.count.min(workers),
        );
    }

    let mut state = State::new(workers);
    for (key, &count) in &wanted {
        if count == 0 {
            continue;
        }
        let kept = previous
            .0
            .get(&key.0)
            .and_then(|types| types.get(&key.1))
            .into_iter()
            .flatten()
            .copied()
            .filter(|&w| w < workers);
        for worker in kept {
            state.add(key, worker);
        }
    }
    // Shrink everything before growing anything, so growth sees the freed room.
    for (key, &count) in &wanted {
        while state.count(key) > count {
            let worker = state.most_loaded_of(key);
            state.remove(key, worker);
        }
    }
    for (key, &count) in &wanted {
        while state.count(key) < count {
            let Some(worker) = state.least_loaded_without(key) else {
                break; // unreachable: count <= workers
            };
            state.add(key, worker);
        }
    }
    if previous_workers != workers {
        state.rebalance();
    }
    state.into_placement()
}

/// Assignments under construction, with each worker's load (instances of any app and type).
struct State {
    load: Vec<u32>,
    sets: BTreeMap<Key, BTreeSet<u32>>,
}

impl State {
    fn new(workers: u32) -> State {
        State {
            load: vec![0; workers as usize],
            sets: BTreeMap::new(),
        }
    }

    fn count(&self, key: &Key) -> u32 {
        self.sets.get(key).map_or(0, |set| set.len() as u32)
    }

    fn add(&mut self, key: &Key, worker: u32) {
        if self.sets.entry(key.clone()).or_default().insert(worker) {
            self.load[worker as usize] += 1;
        }
    }

    fn remove(&mut self, key: &Key, worker: u32) {
        if let Some(set) = self.sets.get_mut(key)
            && set.remove(&worker)
        {
            self.load[worker as usize] -= 1;
        }
    }

    /// The most loaded worker running `key` (ties: highest index). Only called when `key` runs
    /// somewhere.
    fn most_loaded_of(&self, key: &Key) -> u32 {
        self.sets[key]
            .iter()
            .copied()
            .max_by_key(|&w| (self.load[w as usize], w))
            .unwrap_or(0)
    }

    /// The least loaded worker not running `key` (ties: lowest index).
    fn least_loaded_without(&self, key: &Key) -> Option<u32> {
        let set = self.sets.get(key);
        (0..self.load.len() as u32)
            .filter(|w| set.is_none_or(|s| !s.contains(w)))
            .min_by_key(|&w| (self.load[w as usize], w))
    }

    /// Moves instances from the most loaded worker to the least loaded until their loads differ
    /// by at most one. A legal move always exists while they differ by two or more: a worker's
    /// load is the number of pairs it runs, so the busier worker runs some pair the idler one
    /// does not. Every move lowers the sum of squared loads, so the loop ends, after the fewest
    /// moves that even the loads out.
    fn rebalance(&mut self) {
        let workers = self.load.len() as u32;
        loop {
            let (Some(from), Some(to)) = (
                (0..workers).max_by_key(|&w| (self.load[w as usize], Reverse(w))),
                (0..workers).min_by_key(|&w| (self.load[w as usize], w)),
            ) else {
                return;
            };
            if self.load[from as usize] <= self.load[to as usize] + 1 {
                return;
            }
            let Some(key) = self
                .sets
                .iter()
                .find(|(_, set)| set.contains(&from) && !set.contains(&to))
                .map(|(key, _)| key.clone())
            else {
                return; // unreachable, see above
            };
            self.remove(&key, from);
            self.add(&key, to);
        }
    }

    fn into_placement(self) -> Placement {
        let mut out = Placement::default();
        for ((app, process_type), set) in self.sets {
            if !set.is_empty() {
                out.0.entry(app).or_default().insert(process_type, set);
            }
        }
        out
    }
}
