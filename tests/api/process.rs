//! The exporter binary as a child process, with its JSON logs read line by line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub(crate) fn exporter() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sfb-exporter"));
    cmd.env_clear().stdin(Stdio::null());
    cmd
}

/// The exporter in demo mode on a free loopback port, logging JSON.
pub(crate) fn demo_json() -> Command {
    let mut cmd = exporter();
    cmd.args([
        "--demo",
        "--web.listen-address",
        "127.0.0.1:0",
        "--log.format",
        "json",
    ]);
    cmd
}

/// Runs to completion and returns (exit code, stderr).
pub(crate) fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn assert_one_line(stderr: &str, needles: &[&str]) {
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr:?}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{needle:?} missing from {stderr:?}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A running exporter process, killed if the test fails before it stops it.
pub(crate) struct Process {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    pub(crate) fn spawn(cmd: &mut Command) -> Process {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pipe = child.stderr.take().unwrap();
        let (tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process { child, stderr }
    }

    /// The first log line (JSON) that `matches`, or a panic after a generous deadline.
    pub(crate) fn log_line(
        &self,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        loop {
            let line = self
                .stderr
                .recv_timeout(Duration::from_secs(15))
                .expect("expected log line within 15s");
            let json: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if matches(&json) {
                return json;
            }
        }
    }

    /// Raw log lines up to and including the one after which `done` holds for all so far.
    pub(crate) fn log_until(&self, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<String> {
        let (mut raw, mut parsed) = (Vec::new(), Vec::new());
        while !done(&parsed) {
            let line = self
                .stderr
                .recv_timeout(Duration::from_secs(15))
                .unwrap_or_else(|_| panic!("log incomplete after 15s: {raw:#?}"));
            let json =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            parsed.push(json);
            raw.push(line);
        }
        raw
    }

    /// Every log line until the process has exited and closed stderr.
    pub(crate) fn rest_of_log(&self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(15)) {
            lines.push(line);
        }
        lines
    }

    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub(crate) fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no exit within 10s of the signal"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The exporter pointed at a fake Graph and identity platform at `base`, with JSON logs.
pub(crate) fn exporter_against(base: &str, args: &[&str]) -> Command {
    use crate::helpers::{CLIENT_ID, CLIENT_SECRET, TENANT};
    let mut cmd = exporter();
    cmd.env("AZURE_TENANT_ID", TENANT)
        .env("AZURE_CLIENT_ID", CLIENT_ID)
        .env("AZURE_CLIENT_SECRET", CLIENT_SECRET)
        .env("AZURE_AUTHORITY_HOST", base)
        .args([
            "--graph.url",
            base,
            "--web.listen-address",
            "127.0.0.1:0",
            "--log.format",
            "json",
        ])
        .args(args);
    cmd
}
