//! Memory a stranger can make a node hold: frames announced but never sent
//! reserve nothing. Alone in its binary, so the counted heap is this test's.
//! The heap is counted by the allocator: the resident set alone misses a
//! reservation whose pages were never touched.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::Duration;

use cluster::{NodeId, TcpSettings, TcpTransport};
use tokio::io::AsyncWriteExt;

mod common;

#[global_allocator]
static HEAP: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_announced_large_frames_keep_memory_bounded() {
    let mut settings = TcpSettings::new("memory", NodeId(1), "127.0.0.1:0".parse().unwrap());
    settings.max_frame_size = 4 * 1024 * 1024;
    settings.max_inbound_connections = 1000;
    let a = TcpTransport::bind(settings).await.unwrap();
    let (heap_before, rss_before) = (HEAP.allocated(), common::rss_bytes());
    let mut held = Vec::new();
    // Handshaken peers (the full 4 MiB limit applies to them) each announce
    // a 4 MiB frame and send 1 KiB of it.
    for i in 0..200 {
        let raw = common::join(a.local_addr(), "memory", 100 + i)
            .await
            .expect("accepted");
        let mut stream = raw.into_inner();
        stream.write_all(&(4u32 << 20).to_be_bytes()).await.unwrap();
        stream.write_all(&[0u8; 1024]).await.unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Reserving on the prefix would be 800 MiB; what arrived is 200 KiB
    // (plus both ends' buffers and tasks).
    let heap = HEAP.allocated().saturating_sub(heap_before);
    assert!(heap < 32 << 20, "heap grew by {} MiB", heap >> 20);
    let rss = common::rss_bytes().saturating_sub(rss_before);
    assert!(rss < 64 << 20, "resident set grew by {} MiB", rss >> 20);
    assert_eq!(a.inbound_connections(), 200);
}
