//! What the scale examples share: the operator as its own process, its readiness and its memory.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use teb_testkit::kube::KubeEnv;

/// Starts the operator's release `binary` with the RBAC-limited identity, /readyz on `health_port`
/// and `args` added.
pub fn start_operator(binary: &str, env: &KubeEnv, health_port: u16, args: &[&str]) -> anyhow::Result<Child> {
    Ok(Command::new(binary)
        .arg("operator")
        .arg("--kubeconfig")
        .arg(env.kubeconfig_path("operator"))
        .args(["--health-addr", &format!("127.0.0.1:{health_port}")])
        .args(args)
        .env("RUST_LOG", "warn")
        .spawn()?)
}

/// Waits until the operator answers /readyz with 200; how long that took.
pub async fn wait_ready(operator: &mut Child, health_port: u16) -> anyhow::Result<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    loop {
        anyhow::ensure!(operator.try_wait()?.is_none(), "operator exited");
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", health_port)).await {
            stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            if answer.starts_with("HTTP/1.1 200") {
                return Ok(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn stop(operator: &mut Child) {
    let _ = operator.kill();
    let _ = operator.wait();
}

/// A memory line of the process's /proc status in bytes: `"VmRSS:"` (now) or `"VmHWM:"` (peak).
pub fn memory(pid: u32, line: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(line)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .map_or(0, |kib: u64| kib * 1024)
}
