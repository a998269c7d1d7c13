//! A throwaway single-node Garage S3 server for the tests: one per test
//! process and address, started on first use, killed when the process exits
//! (PR_SET_PDEATHSIG), with its data under the system temp directory. Its
//! S3 API listens on 127.0.0.1 ([`garage`]) or on another local address
//! ([`garage_on`]: the e2e tests use the local Kubernetes node's address, so
//! that pods reach it).
//!
//! Without a `garage` binary (PATH, `GARAGE_BIN` or `~/.cargo/bin`) the S3
//! tests are skipped with a message, unless `CAIRN_REQUIRE_GARAGE=1`
//! (set by `scripts/test`, which installs Garage), where they fail.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running Garage with one key and one bucket.
pub struct Garage {
    pub endpoint: String,
    pub s3_port: u16,
    pub key_id: String,
    pub secret: String,
    pub bucket: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub bin: PathBuf,
    _child: Mutex<Child>,
}

fn hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GARAGE_BIN") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join("garage");
        if p.is_file() {
            return Some(p);
        }
    }
    let p = Path::new(&std::env::var_os("HOME")?).join(".cargo/bin/garage");
    p.is_file().then_some(p)
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Remove data directories of earlier test processes that are gone.
fn clean_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("pid-")
            .and_then(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill with signal 0 only checks for existence.
            if unsafe { libc::kill(pid, 0) } != 0 {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn start(bind: &str) -> Result<Garage, String> {
    let bin =
        find_binary().ok_or("no garage binary (cargo install garage --version 2.5.0 --locked)")?;
    let parent = std::env::temp_dir().join("cairn-test-garage");
    clean_stale(&parent);
    let dir = parent
        .join(format!("pid-{}", std::process::id()))
        .join(bind);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("meta")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
    let (s3_port, rpc_port, admin_port) = (free_port(), free_port(), free_port());
    let config = dir.join("garage.toml");
    std::fs::write(
        &config,
        format!(
            r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "lmdb"
replication_factor = 1
consistency_mode = "consistent"
compression_level = "none"
metadata_fsync = false
data_fsync = false
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "{bind}:{s3_port}"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
"#,
            d = dir.display(),
            secret = hex(32)
        ),
    )
    .map_err(|e| e.to_string())?;
    let key_id = format!("GK{}", hex(12));
    let secret = hex(32);
    let bucket = "cairn-test".to_string();
    let log = std::fs::File::create(dir.join("garage.log")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&bin);
    cmd.arg("-c")
        .arg(&config)
        .args(["server", "--single-node", "--default-bucket"])
        .env("GARAGE_DEFAULT_ACCESS_KEY", &key_id)
        .env("GARAGE_DEFAULT_SECRET_KEY", &secret)
        .env("GARAGE_DEFAULT_BUCKET", &bucket)
        .env("RUST_LOG", "garage=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    let mut child =
        crate::spawn_server(cmd).map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("garage.log")).unwrap_or_default();
            return Err(format!("garage exited with {st}: {log}"));
        }
        if http_status(admin_port, "/health") == Some(200) {
            let ok = Command::new(&bin)
                .arg("-c")
                .arg(&config)
                .args(["bucket", "info", &bucket])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                break;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("garage did not become ready within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Garage {
        endpoint: format!("http://{bind}:{s3_port}"),
        s3_port,
        key_id,
        secret,
        bucket,
        dir,
        config,
        bin,
        _child: Mutex::new(child),
    })
}

/// The shared Garage on 127.0.0.1, or `None` (with a message) when it cannot
/// run here.
pub fn garage() -> Option<&'static Garage> {
    static G: OnceLock<Option<Garage>> = OnceLock::new();
    G.get_or_init(|| started("127.0.0.1")).as_ref()
}

/// A Garage whose S3 API listens on `bind` (a local address), started once
/// per process and address; `None` (with a message) when it cannot run.
pub fn garage_on(bind: &str) -> Option<&'static Garage> {
    static G: Mutex<Vec<(String, &'static Garage)>> = Mutex::new(Vec::new());
    let mut all = G.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, g)) = all.iter().find(|(b, _)| b == bind) {
        return Some(g);
    }
    let g: &'static Garage = Box::leak(Box::new(started(bind)?));
    all.push((bind.to_string(), g));
    Some(g)
}

fn started(bind: &str) -> Option<Garage> {
    match start(bind) {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var("CAIRN_REQUIRE_GARAGE").as_deref() == Ok("1") {
                panic!("Garage is required (CAIRN_REQUIRE_GARAGE=1) but could not start: {e}");
            }
            eprintln!("SKIPPED: S3 tests need Garage, which could not start: {e}");
            None
        }
    }
}

impl Garage {
    /// A repository location with a fresh prefix in the test bucket.
    pub fn repo_url(&self, name: &str) -> String {
        format!("s3:{}/{}/{name}-{}", self.endpoint, self.bucket, hex(4))
    }

    /// Environment for a cairn process using this Garage.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret.clone()),
            ("AWS_REGION".into(), "garage".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }
}
