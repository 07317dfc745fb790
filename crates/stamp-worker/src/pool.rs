//! Workers and warm pools.
//!
//! A worker here is a sandbox of one size: a cgroup (see [`crate::cgroup`]) with the size's CPU
//! quota and memory limit, under which each instance gets its own group. A plan's worker
//! ([`WorkerId`]) is bound to one such sandbox when its first instance starts and released when
//! its last instance is gone.
//!
//! Per size the node keeps a target number of **warm** workers: sandboxes created and limited
//! ahead of time with nothing app-specific in them (Azure's pre-provisioned workers). Binding
//! takes a warm worker when there is one, so a scale-out only has to start the app; otherwise it
//! creates one on the spot (a cold start). [`Pools::refill`] tops the pools up after every
//! round of starts, off the scale-out's path. A released worker is destroyed, never returned to
//! the pool: what an app left behind does not reach the next one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use stamp_model::{PoolStatus, PoolTarget, WorkerId, WorkerLimits};

use crate::cgroup::{Cgroups, Limits, WorkerGroup};
use crate::netlimit::NetLimits;

/// One sandbox of a size.
pub(crate) struct Worker {
    /// `small-7`: the size and a number unique in this agent.
    pub name: String,
    pub limits: WorkerLimits,
    pub group: WorkerGroup,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.group.remove();
    }
}

/// How many Free/Shared plans' workers one shared worker hosts: Azure runs Free and Shared apps
/// of many customers on shared VMs. A shared worker has this many times the `shared` size's CPU
/// and memory, so together its plans get what the node reserves for them (a quarter core and
/// 1 GiB each); each app's use is further bounded by its daily CPU quota.
pub(crate) const PLANS_PER_SHARED_WORKER: u32 = 4;

/// Which plan worker a sandbox serves: the plan's worker and its size (a plan changing SKU
/// moves to sandboxes of the new size while the old ones drain).
pub(crate) type Binding = (WorkerId, String);

pub(crate) struct Pools {
    cgroups: Cgroups,
    /// Torn down with the groups at shutdown.
    netlimits: NetLimits,
    targets: BTreeMap<String, PoolTarget>,
    warm: BTreeMap<String, VecDeque<Arc<Worker>>>,
    bound: BTreeMap<Binding, Arc<Worker>>,
    created: u64,
    /// The last refill failure logged, so a lasting one is logged once, not every round.
    refill_error: Option<String>,
}

impl Pools {
    pub fn new(cgroups: Cgroups, netlimits: NetLimits) -> Pools {
        Pools {
            cgroups,
            netlimits,
            targets: BTreeMap::new(),
            warm: BTreeMap::new(),
            bound: BTreeMap::new(),
            created: 0,
            refill_error: None,
        }
    }

    /// Destroys every sandbox, warm or bound, and this agent's groups: at shutdown, once every
    /// instance is gone.
    pub fn destroy_all(&mut self) {
        self.targets.clear();
        self.warm.clear();
        self.bound.clear();
        self.cgroups.remove_all();
        self.netlimits.remove_all();
    }

    pub fn set_targets(&mut self, targets: Vec<PoolTarget>) {
        self.targets = targets
            .into_iter()
            .map(|t| (t.limits.size.clone(), t))
            .collect();
    }

    /// The sandbox for `worker`: the one bound to it, else a warm one, else a new one. The flag
    /// says whether a warm worker was taken.
    pub fn acquire(
        &mut self,
        worker: &WorkerId,
        limits: &WorkerLimits,
    ) -> std::io::Result<(Arc<Worker>, bool)> {
        let key = (worker.clone(), limits.size.clone());
        if let Some(w) = self.bound.get(&key) {
            return Ok((w.clone(), false));
        }
        if limits.size == SHARED {
            // Join a shared worker that hosts fewer plans than it may.
            let mut hosted: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for ((id, size), w) in &self.bound {
                if size == SHARED {
                    hosted.entry(&w.name).or_default().insert(id.plan.as_str());
                }
            }
            let room = self.bound.iter().find(|((_, size), w)| {
                size == SHARED
                    && w.limits == shared_limits(limits)
                    && (hosted[w.name.as_str()].contains(worker.plan.as_str())
                        || hosted[w.name.as_str()].len() < PLANS_PER_SHARED_WORKER as usize)
            });
            if let Some((_, w)) = room {
                let w = w.clone();
                self.bound.insert(key, w.clone());
                return Ok((w, false));
            }
        }
        let limits = &shared_limits(limits);
        let warm = self.warm.get_mut(&limits.size).and_then(|q| {
            let at = q.iter().position(|w| &w.limits == limits)?;
            q.remove(at)
        });
        let (w, was_warm) = match warm {
            Some(w) => (w, true),
            None => (self.create(limits)?, false),
        };
        self.bound.insert(key, w.clone());
        Ok((w, was_warm))
    }

    /// Destroys the sandboxes of bindings no instance uses any more.
    pub fn release_unused(&mut self, in_use: &BTreeSet<Binding>) {
        self.bound.retain(|key, _| in_use.contains(key));
    }

    /// Creates warm workers up to each size's target and destroys any above it.
    pub fn refill(&mut self) {
        for (size, target) in &self.targets {
            let have = self.warm.get(size).map_or(0, VecDeque::len);
            let want = target.warm as usize;
            if have > want {
                if let Some(q) = self.warm.get_mut(size) {
                    q.truncate(want);
                }
                continue;
            }
            for _ in have..want {
                let limits = shared_limits(&target.limits);
                match create(&self.cgroups, &mut self.created, &limits) {
                    Ok(w) => {
                        self.warm.entry(size.clone()).or_default().push_back(w);
                        self.refill_error = None;
                    }
                    Err(e) => {
                        let error = format!("failed to prepare a warm {size} worker: {e}");
                        if self.refill_error.as_ref() != Some(&error) {
                            tracing::warn!("{error}");
                            self.refill_error = Some(error);
                        }
                        break;
                    }
                }
            }
        }
        // Sizes no longer targeted keep no warm workers.
        let targets = &self.targets;
        self.warm.retain(|size, _| targets.contains_key(size));
    }

    pub fn status(&self) -> Vec<PoolStatus> {
        let mut sizes: BTreeSet<&String> = self.targets.keys().collect();
        sizes.extend(self.warm.keys());
        sizes.extend(self.bound.keys().map(|(_, size)| size));
        sizes
            .into_iter()
            .map(|size| PoolStatus {
                size: size.clone(),
                available: self.warm.get(size).map_or(0, |q| q.len() as u32),
                in_use: self
                    .bound
                    .iter()
                    .filter(|((_, s), _)| s == size)
                    .map(|(_, w)| w.name.as_str())
                    .collect::<BTreeSet<_>>()
                    .len() as u32,
            })
            .collect()
    }

    fn create(&mut self, limits: &WorkerLimits) -> std::io::Result<Arc<Worker>> {
        create(&self.cgroups, &mut self.created, limits)
    }
}

const SHARED: &str = "shared";

/// The limits of the sandbox that hosts workers of `limits`: the same, except for the shared
/// size, whose sandboxes host [`PLANS_PER_SHARED_WORKER`] plans.
fn shared_limits(limits: &WorkerLimits) -> WorkerLimits {
    if limits.size != SHARED {
        return limits.clone();
    }
    WorkerLimits {
        millicores: limits.millicores * PLANS_PER_SHARED_WORKER,
        memory_mib: limits.memory_mib * PLANS_PER_SHARED_WORKER,
        ..limits.clone()
    }
}

fn create(
    cgroups: &Cgroups,
    created: &mut u64,
    limits: &WorkerLimits,
) -> std::io::Result<Arc<Worker>> {
    *created += 1;
    let name = format!("{}-{}", limits.size, created);
    let group = cgroups.create_worker(
        &name,
        &Limits {
            millicores: limits.millicores,
            memory_mib: limits.memory_mib,
        },
    )?;
    Ok(Arc::new(Worker {
        name,
        limits: limits.clone(),
        group,
    }))
}

#[cfg(test)]
mod tests {
    use stamp_model::{PlanName, Sku};

    use super::*;

    fn worker(plan: &str) -> WorkerId {
        WorkerId {
            plan: PlanName::parse(plan).unwrap(),
            index: 0,
        }
    }

    #[test]
    fn free_plans_share_workers_and_dedicated_ones_do_not() {
        let mut pools = Pools::new(Cgroups::disabled("test"), NetLimits::off("test"));
        let f1 = WorkerLimits::of(&Sku::find("F1").unwrap());
        let b1 = WorkerLimits::of(&Sku::find("B1").unwrap());
        pools.set_targets(vec![PoolTarget {
            limits: f1.clone(),
            warm: 1,
        }]);
        pools.refill();
        let names: Vec<(String, bool)> = (0..6)
            .map(|i| {
                let (w, warm) = pools.acquire(&worker(&format!("free{i}")), &f1).unwrap();
                assert_eq!(w.limits.millicores, 250 * PLANS_PER_SHARED_WORKER);
                (w.name.clone(), warm)
            })
            .collect();
        // The first plan takes the warm shared worker; three more join it; the fifth needs
        // another.
        assert!(names[0].1);
        assert!(names[1..4].iter().all(|(n, _)| *n == names[0].0));
        assert_ne!(names[4].0, names[0].0);
        assert_eq!(names[5].0, names[4].0);
        let (a, _) = pools.acquire(&worker("basic"), &b1).unwrap();
        let (b, _) = pools
            .acquire(
                &WorkerId {
                    index: 1,
                    ..worker("basic")
                },
                &b1,
            )
            .unwrap();
        assert_ne!(a.name, b.name);
        let shared = pools
            .status()
            .into_iter()
            .find(|s| s.size == "shared")
            .unwrap();
        assert_eq!(shared.in_use, 2, "two shared workers for six plans");
        // Releasing every binding of the first shared worker but one keeps it.
        let keep: BTreeSet<Binding> = [(worker("free3"), "shared".to_string())].into();
        pools.release_unused(&keep);
        let shared = pools
            .status()
            .into_iter()
            .find(|s| s.size == "shared")
            .unwrap();
        assert_eq!(shared.in_use, 1);
    }
}
