//! The real `custos` binary, started as a child process on port 0 with a
//! temporary data directory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A directory removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(label: &str) -> TempDir {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = std::env::temp_dir().join(format!(
        "custos-test-{label}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&path).unwrap();
    TempDir(path)
}

/// A running `custos serve`.
pub struct CustosProcess {
    child: Child,
    /// The gateway listener.
    pub gateway: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    stderr: Arc<Mutex<String>>,
    stdout_rest: Arc<Mutex<String>>,
}

impl CustosProcess {
    /// Runs `bin serve` with `args` after `serve` and the extra environment,
    /// on port 0 for both listeners, and waits for the ready line.
    pub fn serve(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> CustosProcess {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .args(args)
            .env("CUSTOS_LISTEN", "127.0.0.1:0")
            .env("CUSTOS_ADMIN_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().unwrap();
        let err_buf = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                let mut buf = err_buf.lock().unwrap();
                buf.push_str(&line);
                buf.push('\n');
            }
        });
        let out_pipe = child.stdout.take().unwrap();
        let stdout_rest = Arc::new(Mutex::new(String::new()));
        let rest = stdout_rest.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(out_pipe).lines().map_while(Result::ok) {
                if !sent && line.starts_with("custos ready") {
                    let _ = tx.send(line);
                    sent = true;
                } else {
                    let mut buf = rest.lock().unwrap();
                    buf.push_str(&line);
                    buf.push('\n');
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                // Give the reader thread a moment to drain what was printed.
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "custos did not print its ready line; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.strip_prefix("http://").unwrap_or(v).parse().ok())
                .unwrap_or_else(|| panic!("no {name} in ready line `{line}`"))
        };
        CustosProcess {
            gateway: field("gateway="),
            admin: field("admin="),
            child,
            stderr,
            stdout_rest,
        }
    }

    /// `http://ADDR/v1` of the gateway.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.gateway)
    }

    /// `http://ADDR` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// What the process wrote to stdout after the ready line.
    pub fn stdout(&self) -> String {
        self.stdout_rest.lock().unwrap().clone()
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, failing after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "custos did not exit within {within:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CustosProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates an API key with `custos keys create` in `data_dir` and returns
/// its secret.
pub fn create_key(bin: &str, data_dir: &Path, models: &str) -> String {
    let out = Command::new(bin)
        .args([
            "keys",
            "create",
            "--name",
            "test",
            "--models",
            models,
            "--json",
            "--data-dir",
        ])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "custos keys create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["secret"].as_str().unwrap().to_owned()
}
