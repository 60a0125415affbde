//! `firetower dev` as a person runs it: the whole local cluster comes up, prints what
//! scripts need before `ready`, and the printed key and CA file publish through the CLI.
//! It uses the dev cluster's fixed ports (7101-7103, 6667/6668, 9998/9999).

// A test of processes, on the wall clock.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

const BIN: &str = env!("CARGO_BIN_EXE_firetower");

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dev_starts_a_cluster_whose_printed_credentials_publish() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("dev.stderr");
    let mut child = Command::new(BIN)
        .args(["dev", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let stdout = child.stdout.take().context("dev's stdout")?;
    let _dev = Dev(child);
    // Read dev's lines on a thread, so the wait for `ready` has a deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut key_file, mut ca_file, mut token) = (None, None, None);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                bail!("dev printed no `ready` within 120 s")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => bail!(
                "dev exited before `ready` (its fixed ports taken by another dev?): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        };
        if let Some(v) = line.strip_prefix("api key file: ") {
            key_file = Some(v.to_string());
        }
        if let Some(v) = line.strip_prefix("ca file: ") {
            ca_file = Some(v.to_string());
        }
        if let Some(v) = line.strip_prefix("client token: ") {
            token = Some(v.to_string());
        }
        if line == "ready" {
            break;
        }
    }
    let (Some(key_file), Some(ca_file), Some(token)) = (key_file, ca_file, token) else {
        bail!("dev did not print its api key file, ca file and client token before ready");
    };
    ensure!(token.split('.').count() == 3, "not a JWT: {token}");
    let publish = |extra: &[&str]| {
        Command::new(BIN)
            .args(["publish", "--distributor", "127.0.0.1:6667"])
            .args(["--topic", "chat/lobby", "--data", r#"{"text":"hi"}"#])
            .args(extra)
            .env_remove("FIRETOWER_CA_FILE")
            .output()
    };
    let out = publish(&["--api-key-file", &key_file, "--ca-file", &ca_file])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.starts_with("epoch="),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The key file alone does too: the CA is found beside its `auth/` directory, as `dev`
    // and `certs` lay them out (the issue's "scripts use `--api-key-file`").
    let out = publish(&["--api-key-file", &key_file])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `publish --stream` (the Rust client's PublishStream): one answer per line, in any
    // order; a line that is not `topic<TAB>json` is reported and fails the command.
    let mut stream = Command::new(BIN)
        .args(["publish", "--stream", "--distributor", "127.0.0.1:6667"])
        .args(["--api-key-file", &key_file])
        .env_remove("FIRETOWER_CA_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = stream.stdin.take() {
        use std::io::Write;
        stdin.write_all(b"chat/a\t1\nchat/b\t{\"x\":2}\nnot a line\n")?;
    }
    let out = stream.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    ensure!(lines.len() == 3, "{stdout}");
    ensure!(lines[0].starts_with("line=1 epoch="), "{stdout}");
    ensure!(lines[1].starts_with("line=2 epoch="), "{stdout}");
    ensure!(
        lines[2] == "line=3 error=bad_line: expected topic<TAB>json",
        "{stdout}"
    );
    ensure!(!out.status.success(), "a bad line must fail the command");
    // The secure default, as an outsider finds it: no key, no publish; no key, no status;
    // no token, no WebSocket.
    let out = publish(&["--ca-file", &ca_file])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("missing API key"),
        "a publish without a key: {stderr}"
    );
    let out = Command::new(BIN)
        .args([
            "status",
            "--metastore",
            "127.0.0.1:7101",
            "--ca-file",
            &ca_file,
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("missing API key"),
        "status without a key: {stderr}"
    );
    let status_line = upgrade_status("127.0.0.1:9999", "/ws")?;
    ensure!(status_line.contains(" 401 "), "{status_line}");
    let status_line = upgrade_status("127.0.0.1:9999", &format!("/ws?token={token}"))?;
    ensure!(status_line.contains(" 101 "), "{status_line}");
    // Neither: the call is plaintext, which the TLS port does not answer; the error says
    // what to give.
    let out = publish(&[])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "a plaintext publish succeeded");
    ensure!(stderr.contains("--ca-file"), "{stderr}");
    Ok(())
}

/// The status line the edge at `addr` answers a WebSocket upgrade of `path` with.
fn upgrade_status(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf)?;
    let text = String::from_utf8_lossy(&buf[..n]);
    Ok(text.lines().next().unwrap_or_default().to_string())
}
