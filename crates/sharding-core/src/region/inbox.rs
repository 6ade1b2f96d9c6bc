//! A shard's inbox: a bounded queue under a lock, taken a batch at a time.
//!
//! Every local message crosses it, so it is built for that one job. A send
//! is one lock and unlock; the shard's task is woken only when it waits.
//! The shard takes up to a batch per lock. (A tokio mpsc send costs four
//! atomic read-modify-writes: permit, slot, ready bit and wake-up; the
//! profile of a local `tell` showed them as its largest cost.)
//!
//! The shard learns that its region is gone when every sender has been
//! dropped and the queue is empty, as with a channel.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

/// Why a message was not queued; the message comes back.
#[derive(Debug)]
pub(crate) enum TrySendError<T> {
    /// The queue holds its capacity.
    Full(T),
    /// The shard has stopped taking messages.
    Closed(T),
}

/// A new inbox holding at most `capacity` items (at least one).
pub(crate) fn inbox<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            waker: None,
            senders: 1,
            closed: false,
        }),
        capacity: capacity.max(1),
    });
    let sender = Sender {
        shared: Arc::clone(&shared),
    };
    (sender, Receiver { shared })
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
}

struct State<T> {
    queue: VecDeque<T>,
    /// The shard's task, while it waits for an empty queue to fill.
    waker: Option<Waker>,
    senders: usize,
    closed: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Queues items for the shard.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `item` if there is room.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.push(item, true)
    }

    /// Queues `item` even beyond the capacity: for the one control command
    /// a region sends a shard (a handoff must not be refused for a full queue).
    pub(crate) fn send_over_capacity(&self, item: T) -> Result<(), TrySendError<T>> {
        self.push(item, false)
    }

    /// Queues `items` in order under one lock, each wrapped by `wrap`, as
    /// many as there is room for: the rest stay in `items` (`Full`), or
    /// all of them when the shard stopped taking messages (`Closed`).
    pub(crate) fn send_all<U>(
        &self,
        items: &mut Vec<U>,
        wrap: impl Fn(U) -> T,
    ) -> Result<(), TrySendError<()>> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(TrySendError::Closed(()));
        }
        let room = self.shared.capacity.saturating_sub(state.queue.len());
        let n = room.min(items.len());
        state.queue.extend(items.drain(..n).map(wrap));
        let waker = if n > 0 { state.waker.take() } else { None };
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        if items.is_empty() {
            Ok(())
        } else {
            Err(TrySendError::Full(()))
        }
    }

    fn push(&self, item: T, bounded: bool) -> Result<(), TrySendError<T>> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(TrySendError::Closed(item));
        }
        if bounded && state.queue.len() >= self.shared.capacity {
            return Err(TrySendError::Full(item));
        }
        state.queue.push_back(item);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        // The last sender gone: a waiting shard must learn it.
        let waker = if state.senders == 0 {
            state.waker.take()
        } else {
            None
        };
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The shard's end.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// Moves up to `limit` items to the end of `out`; waits while the queue
    /// is empty. Returns how many it moved: 0 once every sender is gone (or
    /// the inbox is closed) and nothing is left. When everything queued
    /// fits and `out` is empty, the two queues are swapped: nothing is
    /// copied while senders wait for the lock.
    pub(crate) async fn recv_many(&mut self, out: &mut VecDeque<T>, limit: usize) -> usize {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            let queued = state.queue.len();
            if queued > 0 {
                let n = limit.max(1).min(queued);
                if n == queued && out.is_empty() {
                    std::mem::swap(&mut state.queue, out);
                } else {
                    out.extend(state.queue.drain(..n));
                }
                return Poll::Ready(n);
            }
            if state.senders == 0 || state.closed {
                return Poll::Ready(0);
            }
            match &mut state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Refuses every later send; what is queued stays for `try_recv`.
    pub(crate) fn close(&mut self) {
        self.shared.lock().closed = true;
    }

    /// The oldest queued item, if any.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        self.shared.lock().queue.pop_front()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // Later sends fail as Closed and hand their message back.
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn items_come_in_order_a_batch_at_a_time() {
        let (tx, mut rx) = inbox(10);
        for n in 0..5 {
            assert!(tx.try_send(n).is_ok());
        }
        let mut got = VecDeque::new();
        assert_eq!(rx.recv_many(&mut got, 3).await, 3);
        assert_eq!(rx.recv_many(&mut got, 3).await, 2);
        assert_eq!(got, [0, 1, 2, 3, 4]);
        // All of it at once, into an empty queue.
        for n in 5..8 {
            assert!(tx.try_send(n).is_ok());
        }
        let mut all = VecDeque::new();
        assert_eq!(rx.recv_many(&mut all, 64).await, 3);
        assert_eq!(all, [5, 6, 7]);
        assert!(tx.try_send(8).is_ok(), "the swapped-in queue takes more");
        assert_eq!(rx.recv_many(&mut all, 64).await, 1);
        assert_eq!(all, [5, 6, 7, 8]);
    }

    #[tokio::test]
    async fn a_full_inbox_refuses_with_the_item_but_takes_control_commands() {
        let (tx, mut rx) = inbox(2);
        assert!(tx.try_send(1).is_ok());
        assert!(tx.try_send(2).is_ok());
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert!(tx.send_over_capacity(4).is_ok());
        let mut got = VecDeque::new();
        rx.recv_many(&mut got, 10).await;
        assert_eq!(got, [1, 2, 4]);
    }

    #[tokio::test]
    async fn many_at_once_take_what_room_there_is_in_order() {
        let (tx, mut rx) = inbox(4);
        assert!(tx.try_send(0).is_ok());
        let mut items = vec![1, 2, 3, 4, 5];
        assert!(matches!(
            tx.send_all(&mut items, |n| n * 10),
            Err(TrySendError::Full(()))
        ));
        assert_eq!(items, vec![4, 5], "what did not fit stays, in order");
        let mut got = VecDeque::new();
        rx.recv_many(&mut got, 10).await;
        assert_eq!(got, [0, 10, 20, 30]);
        assert!(tx.send_all(&mut items, |n| n).is_ok());
        assert!(items.is_empty());
        rx.close();
        let mut more = vec![6];
        assert!(matches!(
            tx.send_all(&mut more, |n| n),
            Err(TrySendError::Closed(()))
        ));
        assert_eq!(more, vec![6], "a closed inbox takes nothing");
    }

    #[tokio::test]
    async fn a_closed_inbox_refuses_and_keeps_what_it_holds() {
        let (tx, mut rx) = inbox(10);
        assert!(tx.try_send(1).is_ok());
        rx.close();
        assert!(matches!(tx.try_send(2), Err(TrySendError::Closed(2))));
        assert!(matches!(
            tx.send_over_capacity(3),
            Err(TrySendError::Closed(3))
        ));
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(rx.try_recv(), None);
        drop(rx);
        assert!(matches!(tx.try_send(4), Err(TrySendError::Closed(4))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_shard_wakes_for_an_item_and_for_the_last_sender_leaving() {
        let (tx, mut rx) = inbox::<u32>(10);
        let second = tx.clone();
        let waiting = tokio::spawn(async move {
            let mut got = VecDeque::new();
            let first = rx.recv_many(&mut got, 10).await;
            let end = rx.recv_many(&mut got, 10).await;
            (first, end, got)
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(tx.try_send(7).is_ok());
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(tx);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "one sender is left");
        drop(second);
        let (first, end, got) = waiting.await.expect("the task ends");
        assert_eq!((first, end, Vec::from(got)), (1, 0, vec![7]));
    }
}
