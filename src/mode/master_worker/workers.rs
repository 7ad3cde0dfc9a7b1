//! The master's workers: the lists kept (serving, draining) and how they are learnt from the
//! kernel, when the master says READY=1 (a walk of /proc that fails is tried again, then given up
//! on, never taken for an empty list) and at each drain check.

use super::{MasterWorker, WALK_TRIES};
use crate::procs;

/// The pids of `list` that are not in `exclude`, in `list`'s order.
pub(super) fn without(list: &[i32], exclude: &[i32]) -> Vec<i32> {
    list.iter().copied().filter(|pid| !exclude.contains(pid)).collect()
}

impl MasterWorker {
    /// The master's children are known: its workers are those that are not draining.
    pub(super) fn learn_workers(&mut self, children: &[i32]) {
        self.generations.workers = without(children, &self.generations.old_workers);
        self.workers_unknown = false;
    }

    /// What a drain check found: the master's live children. True when STATUS changes.
    pub(super) fn drain_checked(&mut self, alive: &[i32]) -> bool {
        let before = self.generations.old_workers.len();
        self.generations.old_workers.retain(|w| alive.contains(w));
        self.generations.workers.retain(|w| alive.contains(w));
        let mut changed = self.generations.old_workers.len() != before;
        if changed {
            info!("old workers still draining: {}", self.generations.old_workers.len());
        }
        if self.workers_unknown {
            self.learn_workers(alive);
            info!("workers of the serving generation: {:?}", self.generations.workers);
            changed = true;
        }
        changed
    }
}

pub(super) fn held_back(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({} similar lines not logged)", n)
    }
}

/// The master's children when it says READY=1. A walk of /proc that fails (out of descriptors)
/// is tried again; if it keeps failing, None: the verdict then trusts the master's READY=1
/// without a worker list, and says so. The kernel's children list may skip an entry while a
/// sibling exits (proc(5): reliable only for stopped children), and the old worker exits right
/// then: the list is read twice and the two are joined (seen once in CI: the new worker missing).
pub(super) fn master_children_at_ready(master: i32) -> Option<Vec<i32>> {
    let mut tries = 0;
    loop {
        tries += 1;
        match procs::children_of(master).and_then(|first| procs::children_of(master).map(|second| (first, second))) {
            Ok((mut children, second)) => {
                children.extend(second);
                children.sort_unstable();
                children.dedup();
                return Some(children);
            }
            Err(e) if tries >= WALK_TRIES => {
                warning!(
                    "cannot list the children of master {} ({}, {} tries): trusting its READY=1 without a worker list",
                    master,
                    e,
                    tries
                );
                return None;
            }
            Err(_) => {}
        }
    }
}
