//! Reaching root-namespace services (the lease store, PostgreSQL) from
//! inside a node's namespace, with a switch that cuts them off.
//!
//! A listener is made on `127.0.0.1:<port>` *inside* the namespace (a thread
//! enters it with `setns` to bind, and sockets stay in the namespace they were
//! made in); connections are forwarded from the root namespace to the same
//! port on its loopback. A node's kubeconfig and database URL therefore work
//! unchanged, TLS names included. Cutting the relay stops moving bytes in
//! both directions while keeping the connections open: a blackhole, as a
//! dropped route looks to the client, not a refusal.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

const POLL: Duration = Duration::from_millis(20);

/// One namespace's forwarder for one port; stops on drop.
pub struct Relay {
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Listens on `127.0.0.1:port` inside namespace `netns` and forwards to
    /// `127.0.0.1:port` in this (the root) namespace.
    pub fn start(netns: &str, port: u16) -> Result<Self, String> {
        let path = format!("/var/run/netns/{netns}");
        let listener = std::thread::scope(|s| {
            s.spawn(|| -> Result<TcpListener, String> {
                let ns = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
                setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {path}: {e}"))?;
                TcpListener::bind(("127.0.0.1", port))
                    .map_err(|e| format!("bind 127.0.0.1:{port} in {netns}: {e}"))
            })
            .join()
            .map_err(|_| "the setns thread panicked".to_owned())?
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("nonblocking: {e}"))?;
        let relay = Relay {
            cut: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (cut, stop) = (relay.cut.clone(), relay.stop.clone());
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        let Ok(outside) = TcpStream::connect(target) else {
                            continue; // the client sees a reset, as from a dead server
                        };
                        pipe(&inside, &outside, &cut, &stop);
                        pipe(&outside, &inside, &cut, &stop);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
                    Err(_) => std::thread::sleep(POLL),
                }
            }
        });
        Ok(relay)
    }

    /// Cuts (`true`) or restores the path.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` on its own thread until EOF, an error or stop;
/// moves nothing while cut.
fn pipe(from: &TcpStream, to: &TcpStream, cut: &Arc<AtomicBool>, stop: &Arc<AtomicBool>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let (cut, stop) = (cut.clone(), stop.clone());
    std::thread::spawn(move || {
        let _ = from.set_read_timeout(Some(POLL));
        let mut buf = [0u8; 16 * 1024];
        while !stop.load(Ordering::Relaxed) {
            if cut.load(Ordering::Relaxed) {
                std::thread::sleep(POLL);
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        let _ = to.shutdown(Shutdown::Write);
        let _ = from.shutdown(Shutdown::Read);
    });
}
