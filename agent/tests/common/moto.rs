//! A moto S3 server on 127.0.0.1, for the S3 features Garage lacks
//! (conditional writes). moto checks no signatures, so it is never the only
//! S3 server a behaviour is tested against. Found at `CAIRN_MOTO_SERVER`, in
//! `target/test-tools/moto` (where `scripts/test` installs it), or on PATH;
//! without it the moto tests are skipped with a message.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub struct Moto {
    pub endpoint: String,
    pub port: u16,
    _child: Mutex<Child>,
}

fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CAIRN_MOTO_SERVER") {
        return Some(p.into());
    }
    let local =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/moto/bin/moto_server");
    if local.is_file() {
        return Some(local);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("moto_server"))
        .find(|p| p.is_file())
}

/// Send one unsigned HTTP request; returns the status code.
pub fn http(port: u16, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn start() -> Result<Moto, String> {
    let bin = find().ok_or("moto_server not found (scripts/test installs it)")?;
    let port = super::garage::free_port();
    let mut cmd = Command::new(&bin);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = super::spawn_server(cmd).map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(port, "GET", "/").is_none() {
        if Instant::now() > deadline {
            return Err("moto_server did not answer within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Moto {
        endpoint: format!("http://127.0.0.1:{port}"),
        port,
        _child: Mutex::new(child),
    })
}

pub fn moto() -> Option<&'static Moto> {
    static M: OnceLock<Option<Moto>> = OnceLock::new();
    M.get_or_init(|| match start() {
        Ok(m) => Some(m),
        Err(e) => {
            if std::env::var("CAIRN_REQUIRE_MOTO").as_deref() == Ok("1") {
                panic!("moto is required (CAIRN_REQUIRE_MOTO=1) but could not start: {e}");
            }
            eprintln!("SKIPPED: conditional-write tests need moto: {e}");
            None
        }
    })
    .as_ref()
}
