//! What a node has to write to one peer: frames already length-prefixed
//! and laid end to end in one buffer.
//!
//! Senders encode straight into the buffer (no per-message copy or queue
//! slot); the connection's writer takes everything there in one go and
//! writes it with one call, so a burst costs a syscall, not one per frame.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::Notify;

use super::{PayloadWriter, SendError};
use crate::envelope::put_header;
use crate::{Channel, NodeId};

/// Bytes of the length prefix of a frame on a connection.
const LENGTH_PREFIX: usize = 4;

/// The frames waiting for one peer's connection.
pub(crate) struct Outbox {
    pending: Mutex<Pending>,
    /// Woken when the buffer goes from empty to not empty.
    ready: Notify,
    /// Frames that may wait at most.
    capacity: usize,
    /// Largest frame, prefix excluded.
    max_frame: usize,
}

#[derive(Default)]
struct Pending {
    bytes: BytesMut,
    frames: usize,
    /// Frames ever accepted: counted under the lock already held, so a
    /// send costs no separate atomic add for the transport's counter.
    accepted: u64,
    /// Set when the transport stops writing from here (see `retire`).
    retired: bool,
}

/// Frames taken out of an outbox to be written.
pub(crate) struct Batch {
    pub(crate) bytes: Bytes,
    pub(crate) frames: usize,
}

impl Outbox {
    pub(crate) fn new(capacity: usize, max_frame: usize) -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            ready: Notify::new(),
            capacity: capacity.max(1),
            max_frame,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one frame from `from` to `to`, its payload written by
    /// `payload`; refused whole when the outbox is full, the payload fails
    /// to encode or the frame is too large.
    pub(crate) fn push(
        &self,
        from: NodeId,
        to: NodeId,
        channel: Channel,
        payload: &mut PayloadWriter<'_>,
    ) -> Result<(), SendError> {
        let mut pending = self.lock();
        if pending.retired {
            return Err(SendError::Closed(to));
        }
        if pending.frames >= self.capacity {
            return Err(SendError::QueueFull {
                peer: to,
                capacity: self.capacity,
            });
        }
        let start = pending.bytes.len();
        pending.bytes.put_u32(0); // patched below, once the length is known
        put_header(&mut pending.bytes, from, to, channel);
        if let Err(error) = payload(&mut pending.bytes) {
            pending.bytes.truncate(start);
            return Err(SendError::Encode(error));
        }
        let size = pending.bytes.len() - start - LENGTH_PREFIX;
        let Some(len) = u32::try_from(size).ok().filter(|_| size <= self.max_frame) else {
            pending.bytes.truncate(start);
            return Err(SendError::TooLarge {
                size,
                max: self.max_frame,
            });
        };
        pending.bytes[start..start + LENGTH_PREFIX].copy_from_slice(&len.to_be_bytes());
        pending.frames += 1;
        pending.accepted += 1;
        let first = pending.frames == 1;
        drop(pending);
        if first {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Refuses every later push: the transport no longer writes from here
    /// (a peer line still pointing here then goes through the transport).
    pub(crate) fn retire(&self) {
        self.lock().retired = true;
    }

    /// Frames accepted by `push` so far.
    pub(crate) fn accepted(&self) -> u64 {
        self.lock().accepted
    }

    /// Takes every frame waiting now, if any.
    pub(crate) fn take(&self) -> Option<Batch> {
        let mut pending = self.lock();
        if pending.frames == 0 {
            return None;
        }
        let frames = std::mem::take(&mut pending.frames);
        // `split` leaves the spare capacity here; once the writer drops the
        // batch, the next push reuses the allocation.
        let bytes = pending.bytes.split().freeze();
        Some(Batch { bytes, frames })
    }

    /// Takes over frames another outbox accepted but did not hand to its
    /// writer (the peer was re-pointed to a new address), after any here.
    pub(crate) fn adopt(&self, batch: Batch) {
        let mut pending = self.lock();
        pending.bytes.extend_from_slice(&batch.bytes);
        pending.frames += batch.frames;
        drop(pending);
        self.ready.notify_one();
    }

    /// Waits up to `quiet` for frames and takes them; `None` if none came.
    pub(crate) async fn next(&self, quiet: Duration) -> Option<Batch> {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            if let Some(batch) = self.take() {
                return Some(batch);
            }
            // A push between `take` and here left a permit: no lost wake-up.
            tokio::time::timeout_at(deadline, self.ready.notified())
                .await
                .ok()?;
        }
    }

    /// Waits as long as it takes for frames and takes them.
    pub(crate) async fn wait(&self) -> Batch {
        loop {
            if let Some(batch) = self.take() {
                return batch;
            }
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Buf;

    use super::*;
    use crate::Envelope;

    fn push(outbox: &Outbox, payload: &'static [u8]) -> Result<(), SendError> {
        outbox.push(
            NodeId(1),
            NodeId(2),
            Channel(7),
            &mut |buf: &mut BytesMut| {
                buf.extend_from_slice(payload);
                Ok(())
            },
        )
    }

    fn frames(mut bytes: Bytes) -> Vec<Envelope> {
        let mut out = Vec::new();
        while bytes.has_remaining() {
            let len = bytes.get_u32() as usize;
            out.push(Envelope::decode(bytes.split_to(len)).expect("a valid frame"));
        }
        out
    }

    #[test]
    fn frames_are_laid_end_to_end_and_taken_together() {
        let outbox = Outbox::new(10, 1024);
        push(&outbox, b"one").expect("queued");
        push(&outbox, b"").expect("queued");
        push(&outbox, b"three").expect("queued");
        let batch = outbox.take().expect("three frames");
        assert_eq!(batch.frames, 3);
        let payloads: Vec<_> = frames(batch.bytes)
            .into_iter()
            .map(|e| {
                assert_eq!(
                    (e.from, e.to, e.channel),
                    (NodeId(1), NodeId(2), Channel(7))
                );
                e.payload
            })
            .collect();
        assert_eq!(payloads, [&b"one"[..], b"", b"three"]);
        assert!(outbox.take().is_none());
    }

    #[test]
    fn a_full_outbox_refuses_with_its_capacity() {
        let outbox = Outbox::new(2, 1024);
        push(&outbox, b"a").expect("queued");
        push(&outbox, b"b").expect("queued");
        assert_eq!(
            push(&outbox, b"c"),
            Err(SendError::QueueFull {
                peer: NodeId(2),
                capacity: 2
            })
        );
        assert_eq!(outbox.take().expect("two").frames, 2);
        push(&outbox, b"c").expect("room again");
    }

    #[test]
    fn a_refused_frame_leaves_nothing_behind() {
        let outbox = Outbox::new(10, 16);
        push(&outbox, b"kept").expect("queued");
        let error = outbox
            .push(
                NodeId(1),
                NodeId(2),
                Channel(7),
                &mut |buf: &mut BytesMut| {
                    buf.extend_from_slice(b"half");
                    Err(postcard::Error::SerializeBufferFull)
                },
            )
            .expect_err("the payload failed");
        assert_eq!(
            error,
            SendError::Encode(postcard::Error::SerializeBufferFull)
        );
        let error = push(&outbox, b"far too long for sixteen").expect_err("too large");
        assert!(
            matches!(error, SendError::TooLarge { max: 16, .. }),
            "{error}"
        );
        let batch = outbox.take().expect("one frame");
        assert_eq!(batch.frames, 1);
        let only = frames(batch.bytes);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].payload, &b"kept"[..]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_wakes_for_a_push_and_gives_up_when_quiet() {
        let outbox = std::sync::Arc::new(Outbox::new(10, 1024));
        assert!(outbox.next(Duration::from_secs(1)).await.is_none());
        let pusher = std::sync::Arc::clone(&outbox);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            push(&pusher, b"late").expect("queued");
        });
        let batch = outbox.wait().await;
        assert_eq!(batch.frames, 1);
    }
}
