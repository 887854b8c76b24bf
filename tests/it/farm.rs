//! A farm of many loopback backends for probe tests and the probe benchmark: one listener per
//! address on 127.1.0.0/16 (all on one port, as a check has one port), served by a tokio
//! runtime of its own (one thread). HTTP backends speak HTTP/1.1 with keep-alive and can fail a
//! share of requests at random (503) or stop answering (hang); TCP backends accept and close.
//!
//! Shared by `tests/it/scale.rs` and `examples/probe_bench.rs` (included with `#[path]`).

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the backends speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1 with keep-alive, 200 "ok".
    Http,
    /// Accept and close.
    Tcp,
}

/// Counters and switches shared with the serving tasks.
#[derive(Debug, Default)]
pub struct Shared {
    /// Requests answered (HTTP) or connections accepted (TCP).
    pub requests: AtomicU64,
    /// Connections accepted.
    pub accepts: AtomicU64,
    /// Share of HTTP requests answered 503, in millionths.
    pub loss_ppm: AtomicU32,
    /// Backends with an index below this stop answering (requests are read, never answered).
    pub hang_below: AtomicU32,
    /// Set to stop serving.
    pub stop: AtomicBool,
}

/// Many backends on one port of many loopback addresses.
pub struct Farm {
    /// The port every backend listens on.
    pub port: u16,
    /// The backends' addresses, in index order.
    pub addrs: Vec<IpAddr>,
    /// Counters and switches.
    pub shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// The address of backend `i`: 127.1.0.1, 127.1.0.2, … (250 per /24, never .0 or .255).
pub fn farm_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (i / 62_500) as u8,
        ((i / 250) % 250) as u8,
        (i % 250 + 1) as u8,
    ))
}

/// Raises this process's open-file limit to its hard limit (children inherit it).
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 0;
        }
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        l.rlim_cur
    }
}

impl Farm {
    /// Starts `count` backends of `kind`. Panics when no common port is free after a few tries.
    pub fn start(count: usize, kind: Kind) -> Farm {
        Self::start_at(0, count, kind, None)
    }

    /// Starts backends `first..first + count` of `kind`, on `port` when given (else on a free
    /// one). Panics when that fails (after a few tries for a free port).
    pub fn start_at(first: usize, count: usize, kind: Kind, port: Option<u16>) -> Farm {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("farm")
            .enable_all()
            .build()
            .expect("farm runtime");
        let addrs: Vec<IpAddr> = (first..first + count).map(farm_addr).collect();
        let shared = Arc::new(Shared::default());
        for _attempt in 0..20 {
            let first = bind(SocketAddr::new(addrs[0], port.unwrap_or(0))).unwrap();
            let port = first.local_addr().unwrap().port();
            let mut listeners = vec![first];
            let mut ok = true;
            for a in &addrs[1..] {
                match bind(SocketAddr::new(*a, port)) {
                    Ok(l) => listeners.push(l),
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                continue;
            }
            for (i, l) in listeners.into_iter().enumerate() {
                l.set_nonblocking(true).unwrap();
                let shared = shared.clone();
                runtime.spawn(async move {
                    let l = tokio::net::TcpListener::from_std(l).unwrap();
                    serve(l, i as u32, kind, shared).await;
                });
            }
            return Farm {
                port,
                addrs,
                shared,
                runtime: Some(runtime),
            };
        }
        panic!("no common free port for {count} farm backends");
    }

    /// Returns the requests served so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Returns the connections accepted so far.
    pub fn accepts(&self) -> u64 {
        self.shared.accepts.load(Ordering::Relaxed)
    }

    /// Fails this share (0.0–1.0) of HTTP requests with 503, at random.
    pub fn set_loss(&self, share: f64) {
        self.shared
            .loss_ppm
            .store((share * 1e6) as u32, Ordering::Relaxed);
    }

    /// Makes backends with an index below `n` stop answering.
    pub fn hang_below(&self, n: u32) {
        self.shared.hang_below.store(n, Ordering::Relaxed);
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

async fn serve(l: tokio::net::TcpListener, index: u32, kind: Kind, shared: Arc<Shared>) {
    loop {
        let Ok((mut sock, _)) = l.accept().await else {
            // Out of descriptors or similar: back off briefly.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        shared.accepts.fetch_add(1, Ordering::Relaxed);
        if kind == Kind::Tcp {
            shared.requests.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(512);
            let mut tmp = [0u8; 1024];
            loop {
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                };
                buf.drain(..end);
                if index < shared.hang_below.load(Ordering::Relaxed) {
                    // Read everything, answer nothing, until the prober gives up.
                    loop {
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                }
                shared.requests.fetch_add(1, Ordering::Relaxed);
                let loss = shared.loss_ppm.load(Ordering::Relaxed);
                let fail = loss > 0 && rand::random::<u32>() % 1_000_000 < loss;
                let response: &[u8] = if fail {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                };
                if sock.write_all(response).await.is_err() {
                    return;
                }
            }
        });
    }
}
