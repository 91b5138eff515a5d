//! A loopback TCP forwarder that can be switched off and on, to simulate an
//! outage of a server without losing the server's state (moto keeps its
//! buckets in memory, so restarting moto itself would also drop the bucket,
//! and a request landing between the restart and re-creating the bucket
//! would see `NoSuchBucket`, a non-retryable error: that race made the retry
//! test flaky).
//!
//! While down, the listening socket is closed, so clients get "connection
//! refused" (exactly what a stopped server gives), and open connections are
//! shut down.
#![allow(dead_code)]

use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A forwarder from `127.0.0.1:port` to `upstream`.
pub struct OutageProxy {
    /// Address clients connect to.
    pub addr: SocketAddr,
    upstream: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl OutageProxy {
    /// Starts forwarding at once.
    pub fn start(upstream: SocketAddr) -> OutageProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let mut p = OutageProxy {
            addr,
            upstream,
            up: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            acceptor: None,
        };
        p.serve(listener);
        p
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        self.up.store(true, Ordering::SeqCst);
        let up = self.up.clone();
        let conns = self.conns.clone();
        let upstream = self.upstream;
        self.acceptor = Some(std::thread::spawn(move || {
            while up.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        let mut guard = conns.lock().expect("conns");
                        for s in [&client, &server] {
                            if let Ok(c) = s.try_clone() {
                                guard.push(c);
                            }
                        }
                        drop(guard);
                        pipe(&client, &server);
                        pipe(&server, &client);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // `listener` is dropped here: the port refuses connections.
        }));
    }

    /// Closes the port and every open connection.
    pub fn down(&mut self) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Listens again on the same port.
    pub fn up(&mut self) {
        let mut last = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addr) {
                Ok(l) => {
                    self.serve(l);
                    return;
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        panic!("could not listen on {} again: {last:?}", self.addr);
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        self.down();
    }
}

fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
