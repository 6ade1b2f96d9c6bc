//! Handler futures written into boxes that are used again.
//!
//! A shard polls every handler once as soon as it has one, and most finish
//! right there. Boxing each handler would cost a malloc and a free per
//! message (a handler's future type cannot be named on stable Rust, so it
//! cannot sit in a field of the shard). Instead the shard keeps a few boxes
//! of the one handler type and writes each new handler into a free one.
//! Only a handler that waits keeps its box, until it finishes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Free boxes kept at most; a burst of waiting handlers is not held forever.
const KEEP: usize = 16;

/// Boxes for futures of type `F`, each empty (`None`) while free.
pub(crate) struct Recycler<F> {
    free: Vec<Pin<Box<Option<F>>>>,
}

impl<F: Future> Recycler<F> {
    pub(crate) fn new() -> Self {
        Self { free: Vec::new() }
    }

    /// Polls `future` once from a free box: its output if it finished (the
    /// box is free again), else the box with the future in it, to be polled
    /// until it finishes.
    pub(crate) fn poll_once(
        &mut self,
        future: F,
        cx: &mut Context<'_>,
    ) -> Result<F::Output, InFlight<F>> {
        let mut slot = self.free.pop().unwrap_or_else(|| Box::pin(None));
        slot.set(Some(future));
        let Some(running) = slot.as_mut().as_pin_mut() else {
            unreachable!("the future was put in just above");
        };
        match running.poll(cx) {
            Poll::Ready(output) => {
                slot.set(None);
                if self.free.len() < KEEP {
                    self.free.push(slot);
                }
                Ok(output)
            }
            Poll::Pending => Err(InFlight(slot)),
        }
    }
}

/// A future that waited on its first poll, still in its box.
pub(crate) struct InFlight<F>(Pin<Box<Option<F>>>);

impl<F: Future> Future for InFlight<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let slot = &mut self.get_mut().0;
        let Some(running) = slot.as_mut().as_pin_mut() else {
            // Only reachable by polling after completion, which callers don't.
            return Poll::Pending;
        };
        let output = std::task::ready!(running.poll(cx));
        // Drop the finished future now, not with the box.
        slot.set(None);
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    /// Ready on the first poll, or pending once when `wait` is set.
    struct Maybe {
        wait: bool,
        value: u32,
    }

    impl Future for Maybe {
        type Output = u32;
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u32> {
            if std::mem::take(&mut self.wait) {
                Poll::Pending
            } else {
                Poll::Ready(self.value)
            }
        }
    }

    #[test]
    fn a_finished_future_frees_its_box_for_the_next() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut boxes = Recycler::new();
        let first = boxes.poll_once(
            Maybe {
                wait: false,
                value: 1,
            },
            &mut cx,
        );
        assert_eq!(first.ok(), Some(1));
        let reused: *const Option<Maybe> = &*boxes.free[0];
        let second = boxes.poll_once(
            Maybe {
                wait: false,
                value: 2,
            },
            &mut cx,
        );
        assert_eq!(second.ok(), Some(2));
        assert_eq!(boxes.free.len(), 1, "one box served both");
        assert!(std::ptr::eq(reused, &*boxes.free[0]), "the same box");
    }

    #[test]
    fn a_waiting_future_keeps_its_box_and_finishes_later() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut boxes = Recycler::new();
        let Err(mut waiting) = boxes.poll_once(
            Maybe {
                wait: true,
                value: 7,
            },
            &mut cx,
        ) else {
            panic!("the future waits on its first poll");
        };
        assert!(boxes.free.is_empty(), "its box is not free");
        assert_eq!(Pin::new(&mut waiting).poll(&mut cx), Poll::Ready(7));
    }
}
