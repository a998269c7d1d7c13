//! A TCP proxy on 127.0.0.1 that sits between cairn and an S3 server and
//! injects faults per connection: HTTP 503 SlowDown answers, connection
//! resets, stalls, and pass-through connections cut off mid-transfer.
//! Decisions follow a fixed pattern over connection numbers, so runs repeat.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the proxy does to connections.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Every connection answers 503 (persistent failure).
    pub always_503: bool,
    /// Connection n with n % every == offset gets the fault (0 = never).
    pub every_503: usize,
    pub every_reset: usize,
    pub every_stall: usize,
    /// How long a stalled connection is held before it is closed.
    pub stall: Duration,
    /// Cut every `every_cut`-th pass-through connection after
    /// `cut_after_bytes` request bytes (0 = never).
    pub every_cut: usize,
    pub cut_after_bytes: usize,
}

/// Counts of what was injected.
#[derive(Default)]
pub struct Counts {
    pub connections: AtomicUsize,
    pub slowdowns: AtomicUsize,
    pub resets: AtomicUsize,
    pub stalls: AtomicUsize,
    pub cuts: AtomicUsize,
}

pub struct FaultProxy {
    pub port: u16,
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wake the accept loop
    }
}

fn read_head(s: &mut TcpStream) -> Option<(String, usize)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_lowercase();
    let len = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Some((text, len))
}

fn slowdown(mut s: TcpStream) {
    let Some((head, len)) = read_head(&mut s) else {
        return;
    };
    if !head.contains("expect: 100-continue") {
        let mut left = len;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            match s.read(&mut buf[..left.min(64 * 1024)]) {
                Ok(0) | Err(_) => return,
                Ok(n) => left -= n,
            }
        }
    }
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
    let _ = write!(
        s,
        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.flush();
}

fn reset(s: TcpStream) {
    let mut s = s;
    let mut buf = [0u8; 512];
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = s.read(&mut buf);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket and a correctly sized linger struct; makes close() send RST.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, limit: usize, counts: Arc<Counts>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n;
                if limit > 0 && total > limit {
                    counts.cuts.fetch_add(1, Ordering::Relaxed);
                    let _ = to.write_all(&buf[..n / 2]);
                    break;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl FaultProxy {
    /// Start a proxy to `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16, faults: Faults) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st) = (counts.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let n = c.connections.fetch_add(1, Ordering::Relaxed);
                let hit =
                    move |every: usize, offset: usize| every > 0 && n % every == offset % every;
                let (f, c) = (faults.clone(), c.clone());
                std::thread::spawn(move || {
                    if f.always_503 || hit(f.every_503, 1) {
                        c.slowdowns.fetch_add(1, Ordering::Relaxed);
                        slowdown(client);
                    } else if hit(f.every_reset, 2) {
                        c.resets.fetch_add(1, Ordering::Relaxed);
                        reset(client);
                    } else if hit(f.every_stall, 3) {
                        c.stalls.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(f.stall);
                    } else if let Ok(up) = TcpStream::connect(("127.0.0.1", upstream_port)) {
                        let (c2, up2, client2) = (c.clone(), up.try_clone(), client.try_clone());
                        if let (Ok(up2), Ok(client2)) = (up2, client2) {
                            let limit = if hit(f.every_cut, 0) {
                                f.cut_after_bytes
                            } else {
                                0
                            };
                            let t = std::thread::spawn(move || pipe(client2, up2, limit, c2));
                            pipe(up, client, 0, c);
                            let _ = t.join();
                        }
                    }
                });
            }
        });
        FaultProxy { port, counts, stop }
    }
}
