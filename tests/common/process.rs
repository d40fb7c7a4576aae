//! The real broker binary as a child process, for tests that kill it or limit its resources.

use std::process::{Child, Command, Stdio};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The broker child process; killed when dropped, so a failing test leaves nothing behind.
pub struct BrokerProcess(pub Child);

impl BrokerProcess {
    /// SIGKILL (what `Child::kill` sends on Unix); a no-op once the child is reaped.
    pub fn kill9(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `warrenmq serve` with AMQP on `port`, HTTP and metrics on any free port, the given data
/// dir and log level; stdout discarded, stderr inherited (callers may change that).
pub fn broker_command(dir: &std::path::Path, port: u16, log_level: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warrenmq"));
    cmd.args(["serve", "--amqp-addr", &format!("127.0.0.1:{port}")])
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(["--log-level", log_level])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}
