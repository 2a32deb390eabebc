//! The holdfast binary as a child process: started on a config file, its addresses read
//! from its JSON `holdfast listening` line, signalled like an operator would.

use std::net::SocketAddr;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{TestUpstream, within};

pub struct Running {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// Every stderr line after the listening line, when started with `start_capturing`.
    captured: Option<tokio::task::JoinHandle<String>>,
}

impl Running {
    /// The captured log lines (once the process has exited).
    pub async fn logs(&mut self) -> String {
        match self.captured.take() {
            Some(task) => within("the log reader", task).await.unwrap(),
            None => String::new(),
        }
    }
}

pub fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Starts the binary on `config` and reads its addresses from the `holdfast listening` line.
pub async fn start(config: &std::path::Path) -> Running {
    start_with(config, "info", false).await
}

/// Like `start`, at `level`, keeping every later log line for `Running::logs`.
pub async fn start_capturing(config: &std::path::Path, level: &str) -> Running {
    start_with(config, level, true).await
}

async fn start_with(config: &std::path::Path, level: &str, capture: bool) -> Running {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_holdfast"));
    let path = config.to_str().unwrap();
    cmd.args([
        "--config",
        path,
        "--log-format",
        "json",
        "--log-level",
        level,
    ])
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .kill_on_drop(true);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HOLDFAST_")) {
        cmd.env_remove(k);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (proxy, admin) = within("the listening log line", async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("holdfast exited early");
            if line.contains("holdfast listening") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let addr = |k: &str| v[k].as_str().unwrap().parse::<SocketAddr>().unwrap();
                return (addr("address"), addr("admin"));
            }
        }
    })
    .await;
    // Keep draining stderr so the child never blocks on a full pipe.
    let reader = tokio::spawn(async move {
        let mut kept = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if capture {
                kept.push_str(&line);
                kept.push('\n');
            }
        }
        kept
    });
    Running {
        child,
        proxy,
        admin,
        captured: Some(reader),
    }
}

pub fn write_config(path: &std::path::Path, upstream: &TestUpstream, extra: &str) {
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[upstream]\nendpoints = [\"{}\"]\n{extra}",
        upstream.url()
    );
    std::fs::write(path, text).unwrap();
}
