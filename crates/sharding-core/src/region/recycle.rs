//! Handler futures run in slots that are used again.
//!
//! A shard polls every handler as soon as it has one, and most finish right
//! there. Boxing each handler, and putting the ones that wait into a
//! `FuturesUnordered`, cost two or three allocations and frees per message
//! (a handler's future type cannot be named on stable Rust, so it cannot
//! sit in a field of the shard). Here a shard keeps boxes for the one
//! handler type, and slots for the handlers that wait: a box and a waker
//! that marks the slot ready, both made once and kept.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

/// Waiting futures polled per call of `poll_done` at most; then the shard
/// yields (a handler that wakes itself must not hold the thread).
const POLLS_PER_CALL: usize = 64;

/// Spare boxes kept at most.
const KEEP: usize = 16;

/// Futures of type `F`, each in its own reused slot.
pub(crate) struct Running<F> {
    /// Boxes for futures polled the first time (free, `None`).
    spare: Vec<Pin<Box<Option<F>>>>,
    /// Futures that waited, each with its waker; `None` while free.
    slots: Vec<Slot<F>>,
    free: Vec<usize>,
    ready: Arc<Ready>,
    /// Slots woken, taken from `ready`, not polled yet.
    taken: Vec<usize>,
    waiting: usize,
}

struct Slot<F> {
    /// `None` while the slot is free (its box went back to `spare`).
    future: Option<Pin<Box<Option<F>>>>,
    /// Marks this slot ready: made once, passed to every future it holds.
    waker: Waker,
}

/// Slots woken since the shard last looked, and the shard's task.
#[derive(Default)]
struct Ready {
    state: Mutex<ReadyState>,
}

#[derive(Default)]
struct ReadyState {
    slots: Vec<usize>,
    shard: Option<Waker>,
}

impl Ready {
    fn lock(&self) -> MutexGuard<'_, ReadyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct SlotWaker {
    slot: usize,
    ready: Arc<Ready>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.ready.lock();
        // A late wake meant for a slot's earlier future only costs its
        // current one a spurious poll.
        state.slots.push(self.slot);
        let shard = state.shard.take();
        drop(state);
        if let Some(shard) = shard {
            shard.wake();
        }
    }
}

impl<F: Future> Running<F> {
    pub(crate) fn new() -> Self {
        Self {
            spare: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            ready: Arc::default(),
            taken: Vec::new(),
            waiting: 0,
        }
    }

    /// Futures that waited and have not finished.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Runs `future` until it first waits: its output if it finished, else
    /// `None`, and `poll_done` gives its output once it finishes. Inlined:
    /// this is on every message's path.
    #[inline(always)]
    pub(crate) fn start(&mut self, future: F) -> Option<F::Output> {
        // First with no waker: most futures finish here, and need no slot.
        let mut boxed = self.spare.pop().unwrap_or_else(|| Box::pin(None));
        boxed.set(Some(future));
        if let Some(running) = boxed.as_mut().as_pin_mut() {
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(output) = running.poll(&mut cx) {
                boxed.set(None);
                if self.spare.len() < KEEP {
                    self.spare.push(boxed);
                }
                return Some(output);
            }
        }
        // It waits: into a slot, polled again with the slot's waker (the
        // one the first poll saw wakes nobody).
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index].future = Some(boxed);
                index
            }
            None => {
                let waker = Waker::from(Arc::new(SlotWaker {
                    slot: self.slots.len(),
                    ready: Arc::clone(&self.ready),
                }));
                self.slots.push(Slot {
                    future: Some(boxed),
                    waker,
                });
                self.slots.len() - 1
            }
        };
        match poll_slot(&mut self.slots[index]) {
            Poll::Ready(output) => {
                self.release(index);
                Some(output)
            }
            Poll::Pending => {
                self.waiting += 1;
                None
            }
        }
    }

    /// Frees slot `index` (its future finished), keeping its box as spare.
    fn release(&mut self, index: usize) {
        self.free.push(index);
        if let Some(empty) = self.slots[index].future.take()
            && self.spare.len() < KEEP
        {
            self.spare.push(empty);
        }
    }

    /// The output of a waiting future that finished, if one has; else
    /// arranges for `cx` to be woken when one is woken.
    pub(crate) fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<F::Output> {
        for _ in 0..POLLS_PER_CALL {
            let Some(index) = self.taken.pop() else {
                let mut state = self.ready.lock();
                if state.slots.is_empty() {
                    match &mut state.shard {
                        Some(shard) if shard.will_wake(cx.waker()) => {}
                        shard => *shard = Some(cx.waker().clone()),
                    }
                    return Poll::Pending;
                }
                std::mem::swap(&mut state.slots, &mut self.taken);
                continue;
            };
            let slot = &mut self.slots[index];
            if slot.future.is_none() {
                continue; // a late wake for a slot that is free now
            }
            if let Poll::Ready(output) = poll_slot(slot) {
                self.waiting -= 1;
                self.release(index);
                return Poll::Ready(output);
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Polls the future in `slot` with the slot's waker; a finished one is
/// dropped at once, so its box is empty when it goes back to `spare`.
fn poll_slot<F: Future>(slot: &mut Slot<F>) -> Poll<F::Output> {
    let Some(boxed) = &mut slot.future else {
        return Poll::Pending;
    };
    let Some(future) = boxed.as_mut().as_pin_mut() else {
        return Poll::Pending;
    };
    let mut cx = Context::from_waker(&slot.waker);
    let output = std::task::ready!(future.poll(&mut cx));
    boxed.set(None);
    Poll::Ready(output)
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    /// Ready at once, or after `waits` polls (waking itself each time when
    /// `wake` is set, else leaving the waker to the test).
    fn after(waits: u32, wake: bool, value: u32) -> impl Future<Output = u32> {
        let mut left = waits;
        poll_fn(move |cx| {
            if left == 0 {
                return Poll::Ready(value);
            }
            left -= 1;
            if wake {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        })
    }

    #[test]
    fn a_future_that_finishes_at_once_needs_no_slot_and_its_box_is_reused() {
        let mut running = Running::new();
        assert_eq!(running.start(after(0, false, 1)), Some(1));
        assert_eq!(running.start(after(0, false, 2)), Some(2));
        assert_eq!(running.spare.len(), 1, "one box served both");
        assert!(running.slots.is_empty());
        assert_eq!(running.waiting(), 0);
    }

    #[test]
    fn a_waiting_future_finishes_when_woken_and_its_slot_is_reused() {
        let mut running = Running::new();
        let mut cx = Context::from_waker(Waker::noop());
        // Waits on its first poll and on the second (with the slot's waker).
        assert_eq!(running.start(after(2, true, 7)), None);
        assert_eq!(running.start(after(0, false, 8)), Some(8), "needs no slot");
        assert_eq!(running.waiting(), 1);
        // Woke itself through the slot's waker: finishes on the next poll.
        assert_eq!(running.poll_done(&mut cx), Poll::Ready(7));
        assert_eq!(running.waiting(), 0);
        assert_eq!(running.spare.len(), 2, "the slot's box went back");
        assert_eq!(running.start(after(3, true, 9)), None);
        assert_eq!(running.slots.len(), 1, "the free slot is used again");
        assert_eq!(running.spare.len(), 1, "with a spare box, not a new one");
    }

    #[test]
    fn a_future_nobody_wakes_is_not_polled_and_the_shard_waits() {
        let mut running = Running::new();
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(running.start(after(2, false, 3)), None);
        assert_eq!(running.poll_done(&mut cx), Poll::Pending);
        assert_eq!(running.waiting(), 1);
        // Its waker fires: the next call finishes it.
        running.slots[0].waker.wake_by_ref();
        assert_eq!(running.poll_done(&mut cx), Poll::Ready(3));
    }

    #[test]
    fn a_future_that_keeps_waking_itself_does_not_hold_the_shard() {
        let mut running = Running::new();
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(running.start(after(u32::MAX, true, 0)), None);
        // Returns after a bounded number of polls instead of spinning.
        assert_eq!(running.poll_done(&mut cx), Poll::Pending);
    }
}
