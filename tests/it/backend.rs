//! Real local backends for health checks: HTTP servers and TCP listeners on 127.0.0.x that a
//! test can stop, restart, slow down, or switch to a failing status or a wrong body, and that
//! can fail only the probes coming from some source addresses (one instance of a fleet).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a backend answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// 200 with body "ok".
    Healthy,
    /// This status with body "ok".
    Status(u16),
    /// 200 with another body.
    WrongBody,
    /// Waits this long before answering 200.
    Slow(Duration),
}

/// One HTTP backend on a fixed address; requests are counted.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    hits: Arc<AtomicUsize>,
    refused: Arc<Mutex<HashSet<IpAddr>>>,
    running: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Backend {
    /// Starts a healthy backend on `addr`.
    pub fn start(addr: SocketAddr) -> std::io::Result<Backend> {
        let mut b = Backend {
            addr,
            mode: Arc::new(Mutex::new(Mode::Healthy)),
            hits: Arc::new(AtomicUsize::new(0)),
            refused: Arc::new(Mutex::new(HashSet::new())),
            running: None,
        };
        b.up()?;
        Ok(b)
    }

    /// Switches what it answers.
    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Answers 503 to requests from these source addresses (and as `mode` says to the rest).
    pub fn refuse_from(&self, sources: &[&str]) {
        *self.refused.lock().unwrap() = sources.iter().map(|s| s.parse().unwrap()).collect();
    }

    /// Returns the number of requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops listening: new connections are refused.
    pub fn down(&mut self) {
        if let Some((stop, handle)) = self.running.take() {
            stop.store(true, Ordering::SeqCst);
            // Wake the accept loop so it sees the flag and drops the listener.
            let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
            let _ = handle.join();
        }
    }

    /// Listens again on the same address.
    pub fn up(&mut self) -> std::io::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (mode, hits, flag) = (self.mode.clone(), self.hits.clone(), stop.clone());
        let refused = self.refused.clone();
        let handle = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let (mode, hits) = (mode.clone(), hits.clone());
                let refuse = conn
                    .peer_addr()
                    .is_ok_and(|p| refused.lock().unwrap().contains(&p.ip()));
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 2048];
                    let mut req = Vec::new();
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let mode = mode.lock().unwrap().clone();
                    let (status, body) = match mode {
                        _ if refuse => (503, "refused"),
                        Mode::Healthy => (200, "ok"),
                        Mode::Status(s) => (s, "ok"),
                        Mode::WrongBody => (200, "maintenance"),
                        Mode::Slow(d) => {
                            std::thread::sleep(d);
                            (200, "ok")
                        }
                    };
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        self.running = Some((stop, handle));
        Ok(())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.down();
    }
}

/// Starts one backend per address in `ips` (127.0.0.x), all on one free port (a check has one
/// port for every target). Retries with another port if one is taken.
pub fn backends(ips: &[&str]) -> (u16, Vec<Backend>) {
    for _ in 0..20 {
        let probe = TcpListener::bind(format!("{}:0", ips[0])).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let started: Result<Vec<_>, _> = ips
            .iter()
            .map(|ip| Backend::start(format!("{ip}:{port}").parse().unwrap()))
            .collect();
        if let Ok(b) = started {
            return (port, b);
        }
    }
    panic!("no common free port for {ips:?}");
}
