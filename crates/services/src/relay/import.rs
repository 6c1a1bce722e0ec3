//! The relay's import thread: the chain imports of relayed blocks run on a thread of lower CPU
//! priority than the owner, which hands each import over and waits for its verdict.
//!
//! ```text
//!   owner thread (nice 0)                       import thread (nice IMPORT_NICENESS)
//!   relay on the header ─▶ rebuild ─▶ submit_block ──job──▶ Blockchain::import_block
//!                                     (waits)      ◀─verdict─┘
//! ```
//!
//! By the time a block is imported it has left on every link: what remains (signature checks,
//! state, one durable store commit) is the heaviest work a block causes, and nothing but this
//! node's own chain waits on it. Where relays share a CPU (a devnet, several nodes on one host)
//! the kernel then runs the others' relaying before this import, and the other programs of a
//! busy machine (its owner's AI work) go before it too; on an idle machine it runs at full
//! speed. The owner waits for the import exactly as when it imported itself, so the engine's
//! order of events does not change; the cost is that on a busy machine the items that reach the
//! owner during an import wait longer for it (an owner that went on while the import runs is
//! the way past that). The priority is only ever lowered, never raised, and only under a normal
//! (not real-time) policy; where it cannot be set, imports run at the thread's own priority.

use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{SendError, Sender, sync_channel};
use std::thread;

use thread_priority::{
    ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy, set_current_thread_priority,
    thread_schedule_policy,
};

/// Niceness of the import thread: weight 110 against 1,024 for a thread at niceness 0, so it
/// gets about a tenth of a contended CPU while anything else wants it, and all of an idle one.
pub const IMPORT_NICENESS: i8 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// A thread that runs jobs one at a time at [`IMPORT_NICENESS`]; ends when dropped.
#[derive(Debug)]
pub(crate) struct ImportThread {
    /// `None` when the thread could not be started: jobs run on the caller.
    jobs: Option<Sender<Job>>,
}

impl ImportThread {
    pub(crate) fn spawn() -> ImportThread {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let started = thread::Builder::new()
            .name("relay-import".to_owned())
            .spawn(move || {
                if let Err(e) = lower_current_thread_priority(IMPORT_NICENESS) {
                    tracing::debug!(error = %e, "block imports run at normal priority");
                }
                for job in queue {
                    job();
                }
            });
        match started {
            Ok(_) => ImportThread { jobs: Some(jobs) },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the relay's import thread; imports run on the relay's own thread");
                ImportThread { jobs: None }
            }
        }
    }

    /// Runs `f` on the import thread and waits for its result (on this thread if the import
    /// thread could not be started). A panic in `f` is raised again here, as if `f` had run
    /// here, and the import thread lives on. `None` only if the job was lost unrun.
    pub(crate) fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let (reply, result) = sync_channel(1);
        let job: Job = Box::new(move || {
            // The caller waits on `result` until this is sent or dropped.
            let _ = reply.send(panic::catch_unwind(AssertUnwindSafe(f)));
        });
        match &self.jobs {
            Some(jobs) => {
                if let Err(SendError(job)) = jobs.send(job) {
                    job();
                }
            }
            None => job(),
        }
        match result.recv() {
            Ok(Ok(value)) => Some(value),
            Ok(Err(payload)) => panic::resume_unwind(payload),
            Err(_) => None,
        }
    }
}

/// Lowers this thread's CPU priority to `niceness` (Linux's per-thread nice value, -20..=19):
/// left as it is if the thread already runs at that niceness or lower, or under a real-time
/// policy. Lowering needs no privilege.
pub fn lower_current_thread_priority(niceness: i8) -> Result<(), String> {
    let value = crossplatform_for_niceness(niceness)
        .ok_or_else(|| format!("niceness {niceness} is outside -20..=19"))?;
    match thread_schedule_policy() {
        Ok(ThreadSchedulePolicy::Normal(_)) => {}
        Ok(policy) => return Err(format!("the thread runs under {policy:?}: left as it is")),
        Err(e) => return Err(format!("cannot read the thread's scheduling policy: {e:?}")),
    }
    if current_niceness()? >= i64::from(niceness) {
        return Ok(());
    }
    set_current_thread_priority(ThreadPriority::Crossplatform(value))
        .map_err(|e| format!("cannot set the thread's niceness to {niceness}: {e:?}"))
}

/// This thread's nice value as the kernel reports it (field 19 of `/proc/thread-self/stat`).
fn current_niceness() -> Result<i64, String> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")
        .map_err(|e| format!("cannot read the thread's nice value: {e}"))?;
    // The command name (field 2) may hold spaces; the fields after its ')' are plain.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(16))
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| "no nice value in /proc/thread-self/stat".to_owned())
}

/// The `thread-priority` value that its Linux mapping turns into `niceness` for a normal
/// (`SCHED_OTHER`) thread: niceness = ⌊39 × (1 − p / 99)⌋ − 20. Checked against the kernel's
/// own reading of the thread's nice value in the tests.
fn crossplatform_for_niceness(niceness: i8) -> Option<ThreadPriorityValue> {
    let max = u8::from(ThreadPriorityValue::MAX);
    (u8::from(ThreadPriorityValue::MIN)..=max)
        .find(|p| {
            let ratio = 1f32 - (f32::from(*p) / f32::from(max));
            (39f32 * ratio) as i8 - 20 == niceness
        })
        .and_then(|p| ThreadPriorityValue::try_from(p).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_niceness() -> i64 {
        current_niceness().expect("procfs")
    }

    #[test]
    fn the_import_thread_runs_at_the_import_niceness() {
        let ours = kernel_niceness();
        let imports = ImportThread::spawn();
        let (niceness, name) = imports
            .run(|| {
                (
                    kernel_niceness(),
                    thread::current().name().map(str::to_owned),
                )
            })
            .expect("the job ran");
        assert_eq!(name.as_deref(), Some("relay-import"));
        // Lower than ours, never higher (a test run under `nice` may already be lower).
        assert_eq!(niceness, ours.max(i64::from(IMPORT_NICENESS)));
        // The caller's own priority is untouched.
        assert_eq!(kernel_niceness(), ours);
    }

    #[test]
    fn every_niceness_has_a_value_and_nothing_outside_the_range() {
        for n in -20..=19 {
            assert!(crossplatform_for_niceness(n).is_some(), "niceness {n}");
        }
        assert!(crossplatform_for_niceness(20).is_none());
        assert!(crossplatform_for_niceness(-21).is_none());
    }

    #[test]
    fn a_thread_already_lower_is_left_as_it_is() {
        let lowest = std::thread::spawn(|| {
            lower_current_thread_priority(19).expect("lowering needs no privilege");
            lower_current_thread_priority(IMPORT_NICENESS).expect("nothing to do");
            kernel_niceness()
        })
        .join()
        .expect("thread");
        assert_eq!(lowest, 19);
    }

    #[test]
    fn a_panicking_job_panics_the_caller_and_the_thread_lives_on() {
        let imports = ImportThread::spawn();
        let caught = panic::catch_unwind(AssertUnwindSafe(|| {
            imports.run(|| -> u8 { panic!("a failing import") })
        }));
        assert!(caught.is_err(), "the panic reached the caller");
        let name = imports.run(|| thread::current().name().map(str::to_owned));
        assert_eq!(name.flatten().as_deref(), Some("relay-import"));
    }
}
