//! The `wsreactor` binary from outside, as a child process: running out of file
//! descriptors, graceful shutdown on SIGTERM, and flags it refuses. It needs the
//! `cli` feature (`make test` turns it on), as the binary does.
#![cfg(feature = "cli")]

mod common;

use common::*;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The release binary, started as a child with `args`; prints its address on stderr.
fn spawn_binary(args: &[&str], nofile: Option<u64>) -> (Child, SocketAddr) {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_wsreactor"));
    command
        .args(["--listen", &listen])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(limit) = nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe and touches only the child's limits.
        unsafe {
            command.pre_exec(move || {
                let rl = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = command.spawn().expect("spawn wsreactor");
    let addr: SocketAddr = listen.parse().unwrap();
    wait_until("the child to listen", || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    (child, addr)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of stat(5), counted from the state field (3).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn running_out_of_file_descriptors_is_survived_without_spinning() {
    let (mut child, addr) = spawn_binary(&["--max-connections", "100000"], Some(48));
    // Far more connections than descriptors: the rest wait in the listen backlog.
    let mut open = Vec::new();
    let mut waiting = Vec::new();
    let clients: Vec<Raw> = (0..60)
        .map(|_| {
            let mut raw = Raw::connect(addr);
            raw.write(upgrade_request("/echo", RFC_KEY, "").as_bytes());
            raw
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for raw in clients {
        // Answered (101) or still waiting in the backlog?
        raw.stream.set_nonblocking(true).unwrap();
        let answered = raw.stream.peek(&mut [0u8; 1]).is_ok();
        raw.stream.set_nonblocking(false).unwrap();
        if answered {
            open.push(raw);
        } else {
            waiting.push(raw);
        }
    }
    assert!(
        !waiting.is_empty(),
        "the descriptor limit was never reached"
    );
    // While it cannot accept, the loop must not spin.
    let before = cpu_ticks(child.id());
    std::thread::sleep(Duration::from_millis(1000));
    let spent = cpu_ticks(child.id()) - before;
    assert!(
        spent < 30,
        "{spent} ticks of CPU in one second while out of descriptors"
    );
    // Free descriptors: the waiting clients are served.
    drop(open);
    for raw in &mut waiting {
        raw.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        assert_eq!(raw.read_http().status, 101);
        raw.send(true, TEXT, b"back");
        raw.expect_echo(TEXT, b"back");
    }
    child.kill().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    child.wait().unwrap();
    // Logged once per burst, not on each of the ~13 retries (every 100 ms) made while
    // out of descriptors; a burst ends when an accept succeeds (as when the probe
    // connection of `spawn_binary` frees its descriptor).
    let logged = stderr.matches("accept paused").count();
    assert!((1..=3).contains(&logged), "logged {logged} times: {stderr}");
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_cleanly() {
    let (mut child, addr) = spawn_binary(&[], None);
    let mut clients: Vec<Raw> = (0..3).map(|_| Raw::open(addr)).collect();
    clients[0].send(true, TEXT, b"hi");
    clients[0].expect_echo(TEXT, b"hi");
    // SAFETY: kill only signals the child we spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    for mut raw in clients.drain(..) {
        raw.expect_close(1001);
        raw.send(true, CLOSE, &close_payload(1001, b""));
        raw.expect_eof();
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait()));
    let status = rx.recv_timeout(IO_TIMEOUT).expect("exit").unwrap();
    assert!(status.success(), "{status:?}");
}

/// The binary checks its configuration before it listens: out-of-range flags are a
/// usage error (exit 2) with a message naming the field and the flag.
#[test]
fn the_binary_refuses_an_invalid_configuration_with_exit_code_2() {
    for (args, expected) in [
        (
            &["--read-buffer-size", "0"][..],
            "wsreactor: invalid configuration: read_buffer_size: must not be 0",
        ),
        (
            &["--deflate-level", "10"],
            "wsreactor: invalid configuration: deflate_level: 10 is above 9",
        ),
        (
            &["--pong-timeout", "NaN"],
            "wsreactor: --pong-timeout: not a number",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_wsreactor"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "off")
            .stdin(Stdio::null())
            .output()
            .expect("run wsreactor");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
    }
}
