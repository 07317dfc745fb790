//! The one reconcile path: from desired instance specs and observed instances, the actions that
//! close the gap. Startup (nothing observed), deploys, setting changes, scaling and repair all go
//! through [`reconcile`].
//!
//! Rolling replacement falls out of one rule: an instance whose spec is no longer desired, but
//! whose key still is, stops only once an instance with the desired spec is ready on that key.
//! Until then the old one keeps serving, so a release that never becomes ready never takes the
//! app down. An outdated instance that is not ready (starting, crash-looping) serves nobody and
//! stops at once.

use std::collections::BTreeSet;

use crate::names::InstanceId;
use crate::spec::{InstanceKey, InstanceSpec, InstanceState, ObservedInstance};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a new instance of this spec.
    Start(Box<InstanceSpec>),
    /// Take the instance out of rotation, drain it, then stop it.
    Stop(InstanceId),
}

pub fn reconcile(desired: &[InstanceSpec], observed: &[ObservedInstance]) -> Vec<Action> {
    let live: Vec<&ObservedInstance> = observed.iter().filter(|o| !o.state.is_leaving()).collect();
    let desired_keys: BTreeSet<&InstanceKey> = desired.iter().map(|d| &d.key).collect();
    let mut actions = Vec::new();
    let mut kept: BTreeSet<&InstanceId> = BTreeSet::new();

    for d in desired {
        // Prefer a ready instance when several match (only after an agent restart race).
        let mut matching: Vec<&&ObservedInstance> = live.iter().filter(|o| o.spec == *d).collect();
        matching.sort_by_key(|o| o.state != InstanceState::Ready);
        match matching.first() {
            Some(o) => {
                kept.insert(&o.id);
            }
            None => actions.push(Action::Start(Box::new(d.clone()))),
        }
    }

    for o in &live {
        if kept.contains(&o.id) {
            continue;
        }
        let replacement_ready = desired.iter().any(|d| {
            d.key == o.spec.key
                && live
                    .iter()
                    .any(|n| n.spec == *d && n.state == InstanceState::Ready)
        });
        let orphan = !desired_keys.contains(&o.spec.key);
        let duplicate = desired.contains(&o.spec);
        // An outdated instance is worth keeping only while it serves; one that is starting or
        // crash-looping would otherwise pile up with every deploy that never becomes ready.
        let outdated_idle = o.state != InstanceState::Ready;
        if orphan || replacement_ready || duplicate || outdated_idle {
            actions.push(Action::Stop(o.id.clone()));
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::spec;

    fn obs(id: &str, spec: InstanceSpec, state: InstanceState) -> ObservedInstance {
        crate::fixtures::observed(id, spec, state, 1)
    }

    fn show(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Start(s) => {
                    format!("start {}@{} v{}", s.key.app, s.key.worker.index, s.release)
                }
                Action::Stop(id) => format!("stop {id}"),
            })
            .collect()
    }

    use InstanceState::*;

    #[track_caller]
    fn check(desired: &[InstanceSpec], observed: &[ObservedInstance], expect: &[&str]) {
        assert_eq!(show(&reconcile(desired, observed)), expect);
    }

    #[test]
    fn starts_everything_from_empty() {
        check(
            &[spec("a", 0, 1), spec("a", 1, 1), spec("b", 0, 3)],
            &[],
            &["start a@0 v1", "start a@1 v1", "start b@0 v3"],
        );
    }

    #[test]
    fn steady_state_does_nothing() {
        let d = [spec("a", 0, 1)];
        check(&d, &[obs("i1", spec("a", 0, 1), Ready)], &[]);
        check(&d, &[obs("i1", spec("a", 0, 1), Crashed)], &[]);
        check(&d, &[obs("i1", spec("a", 0, 1), Starting)], &[]);
    }

    #[test]
    fn rolls_a_new_release_only_when_it_is_ready() {
        let d = [spec("a", 0, 2)];
        check(&d, &[obs("old", spec("a", 0, 1), Ready)], &["start a@0 v2"]);
        check(
            &d,
            &[
                obs("old", spec("a", 0, 1), Ready),
                obs("new", spec("a", 0, 2), Starting),
            ],
            &[],
        );
        check(
            &d,
            &[
                obs("old", spec("a", 0, 1), Ready),
                obs("new", spec("a", 0, 2), Crashed),
            ],
            &[],
        );
        check(
            &d,
            &[
                obs("old", spec("a", 0, 1), Ready),
                obs("new", spec("a", 0, 2), Ready),
            ],
            &["stop old"],
        );
        // Once the old one is draining it is no longer counted.
        check(
            &d,
            &[
                obs("old", spec("a", 0, 1), Draining),
                obs("new", spec("a", 0, 2), Ready),
            ],
            &[],
        );
    }

    #[test]
    fn scale_in_and_delete_stop_orphans() {
        check(
            &[spec("a", 0, 1)],
            &[
                obs("i0", spec("a", 0, 1), Ready),
                obs("i1", spec("a", 1, 1), Ready),
            ],
            &["stop i1"],
        );
        check(&[], &[obs("i0", spec("a", 0, 1), Starting)], &["stop i0"]);
    }

    #[test]
    fn a_leaving_instance_does_not_satisfy_desire() {
        check(
            &[spec("a", 0, 1)],
            &[obs("i0", spec("a", 0, 1), Stopping)],
            &["start a@0 v1"],
        );
    }

    #[test]
    fn duplicates_keep_the_ready_one() {
        check(
            &[spec("a", 0, 1)],
            &[
                obs("i0", spec("a", 0, 1), Starting),
                obs("i1", spec("a", 0, 1), Ready),
            ],
            &["stop i0"],
        );
    }
}
