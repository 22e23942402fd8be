//! `cluster-fanout`: one publisher, subscribers on two cluster nodes (`make bench-cluster`).
//!
//! Opens `--subs` subscribers to `/topic/T` on node A and as many on node B (the
//! `wsreactor` binary's topic rooms, linked by `--redis`), and one publisher on A. The
//! publisher sends `--rate` messages a second (open loop: on a clock, not waiting for
//! deliveries), each stamped with its sequence number and the time it was sent; every
//! subscriber reads every frame and the delivery's latency (publish → deliver, one
//! process, one clock) is recorded by node. After `--warmup`, for `--seconds`, it
//! counts: deliveries per second on each node, latency p50/p99/p99.9 on A (local) and
//! on B (through the broker), deliveries missing, and — given `--pids A,B,REDIS` — the
//! CPU time of each process over exactly the window. Prints one line of JSON.
//!
//! Bounded: connecting by `--connect-timeout`, the run by warm-up + window + 2 s of
//! drain.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wsreactor_bench::{
    check_upgrade_response, client_header, client_key, head_end, procfs, push_client_frame,
    upgrade_request, Args, Opcode, Rng,
};

const USAGE: &str = "\
cluster-fanout: one publisher, subscribers on two nodes (prints one JSON line)

  --a HOST:PORT          node A (the publisher's)          [127.0.0.1:9998]
  --b HOST:PORT          node B                            [127.0.0.1:9999]
  --topic NAME           topic                             [bench]
  --subs N               subscribers per node              [1000]
  --rate R               messages published per second     [100]
  --size BYTES           payload bytes (at least 16)       [64]
  --seconds S            measured time                     [5]
  --warmup S             publishing before measuring       [2]
  --pids A,B,REDIS       read these processes' CPU time from /proc
  --connect-timeout S    give up connecting after S        [60]
";

struct Sub {
    stream: TcpStream,
    node: usize,
    buf: Vec<u8>,
}

fn connect(
    addr: SocketAddr,
    path: &str,
    rng: &mut Rng,
    deadline: Instant,
) -> io::Result<TcpStream> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10)),
    ))?;
    let key = client_key(rng);
    stream.write_all(&upgrade_request(&addr.to_string(), path, &key))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::other("closed during the handshake"));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&head) {
            break end;
        }
    };
    check_upgrade_response(&head[..end], &key).map_err(io::Error::other)?;
    if head.len() > end {
        return Err(io::Error::other("data before the first message"));
    }
    stream.set_nonblocking(true)?;
    Ok(TcpStream::from_std(stream))
}

/// One complete server frame at the front of `buf`: (header length, payload length).
fn frame_at(buf: &[u8]) -> Option<(usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (header, len) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
        127 if buf.len() >= 10 => (
            10,
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
        ),
        126 | 127 => return None,
        n => (2, n as usize),
    };
    (buf.len() >= header + len).then_some((header, len))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> ExitCode {
    match run() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fanout: {e}\n\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<String, String> {
    let args = Args::parse(&[])?;
    args.only(&[
        "--a",
        "--b",
        "--topic",
        "--subs",
        "--rate",
        "--size",
        "--seconds",
        "--warmup",
        "--pids",
        "--connect-timeout",
    ])?;
    let a: SocketAddr = args.get("--a", "127.0.0.1:9998".parse().unwrap())?;
    let b: SocketAddr = args.get("--b", "127.0.0.1:9999".parse().unwrap())?;
    let topic: String = args.get("--topic", "bench".to_owned())?;
    let subs: usize = args.get("--subs", 1000)?;
    let rate: f64 = args.get("--rate", 100.0)?;
    let size: usize = args.get::<usize>("--size", 64)?.max(16);
    let seconds = args.seconds("--seconds", 5.0)?;
    let warmup = args.seconds("--warmup", 2.0)?;
    let connect_timeout = args.seconds("--connect-timeout", 60.0)?;
    let pids: Vec<u32> = args
        .get("--pids", String::new())?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("--pids: {s}")))
        .collect::<Result<_, _>>()?;

    let path = format!("/topic/{topic}");
    let mut rng = Rng::new(7);
    let deadline = Instant::now() + connect_timeout;
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut conns: Vec<Sub> = Vec::with_capacity(2 * subs + 1);
    for node in [0, 1] {
        for _ in 0..subs {
            let addr = [a, b][node];
            let mut stream = connect(addr, &path, &mut rng, deadline)
                .map_err(|e| format!("connect {addr}: {e}"))?;
            poll.registry()
                .register(&mut stream, Token(conns.len()), Interest::READABLE)
                .map_err(|e| e.to_string())?;
            conns.push(Sub {
                stream,
                node,
                buf: Vec::new(),
            });
        }
    }
    // The publisher, on A; it is in the room too (its own copies are read and ignored).
    let mut publisher =
        connect(a, &path, &mut rng, deadline).map_err(|e| format!("connect {a}: {e}"))?;
    let publisher_token = Token(conns.len());
    poll.registry()
        .register(&mut publisher, publisher_token, Interest::READABLE)
        .map_err(|e| e.to_string())?;

    let base = Instant::now();
    let window_start = base + warmup;
    let window_end = window_start + seconds;
    let stop = window_end + Duration::from_secs(2);
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut next_send = base;
    let mut seq: u64 = 0;
    let mut sent_in_window: u64 = 0;
    // Messages scheduled inside the window are the measured ones (from this number on).
    let mut first_in_window: Option<u64> = None;
    let mut latencies: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let mut delivered: [u64; 2] = [0, 0];
    let mut cpu_start: Vec<u64> = Vec::new();
    let mut cpu_end: Vec<u64> = Vec::new();
    let mut events = Events::with_capacity(4096);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    let mut payload = vec![0u8; size];
    let mut pub_sink = Vec::new();
    loop {
        let now = Instant::now();
        if cpu_start.is_empty() && now >= window_start {
            cpu_start = pids
                .iter()
                .map(|&p| procfs::cpu_us(p).unwrap_or(0))
                .collect();
        }
        if cpu_end.is_empty() && now >= window_end {
            cpu_end = pids
                .iter()
                .map(|&p| procfs::cpu_us(p).unwrap_or(0))
                .collect();
        }
        if now >= stop {
            break;
        }
        // Open loop: every message due by now goes out, on the clock.
        while next_send <= now && next_send < window_end {
            let sent_at = Instant::now().duration_since(base).as_nanos() as u64;
            payload[..8].copy_from_slice(&seq.to_be_bytes());
            payload[8..16].copy_from_slice(&sent_at.to_be_bytes());
            out.clear();
            let key = (rng.next_u64() as u32).to_ne_bytes();
            push_client_frame(
                &mut out,
                &client_header(true, 0, Opcode::Binary, size, key),
                &payload,
            );
            let mut at = 0;
            while at < out.len() {
                match publisher.write(&out[at..]) {
                    Ok(n) => at += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                    Err(e) => return Err(format!("publisher: {e}")),
                }
            }
            if next_send >= window_start {
                sent_in_window += 1;
                first_in_window.get_or_insert(seq);
            }
            seq += 1;
            next_send += interval;
        }
        let timeout = next_send
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        poll.poll(&mut events, Some(timeout))
            .map_err(|e| e.to_string())?;
        for event in events.iter() {
            if event.token() == publisher_token {
                loop {
                    match publisher.read(&mut chunk) {
                        Ok(0) => return Err("the publisher's connection closed".into()),
                        Ok(n) => pub_sink.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(format!("publisher: {e}")),
                    }
                }
                pub_sink.clear();
                continue;
            }
            let sub = &mut conns[event.token().0];
            loop {
                match sub.stream.read(&mut chunk) {
                    Ok(0) => return Err(format!("subscriber on node {} closed", sub.node)),
                    Ok(n) => {
                        sub.buf.extend_from_slice(&chunk[..n]);
                        // A short read emptied the socket (as loadgen's default): the
                        // read that would say WouldBlock is one syscall per delivery
                        // saved, and this client is the bottleneck on a small machine.
                        if n < chunk.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("subscriber: {e}")),
                }
            }
            let arrived = Instant::now().duration_since(base).as_nanos() as u64;
            let mut at = 0;
            while let Some((header, len)) = frame_at(&sub.buf[at..]) {
                let body = &sub.buf[at + header..at + header + len];
                if len >= 16 {
                    let number = u64::from_be_bytes(body[..8].try_into().unwrap());
                    let sent_at = u64::from_be_bytes(body[8..16].try_into().unwrap());
                    if first_in_window.is_some_and(|first| number >= first) {
                        delivered[sub.node] += 1;
                        latencies[sub.node].push((arrived - sent_at) / 1000);
                    }
                }
                at += header + len;
            }
            sub.buf.drain(..at);
        }
    }
    let expected = sent_in_window * subs as u64;
    let secs = seconds.as_secs_f64();
    let mut fields = vec![
        format!("\"subs_per_node\":{subs}"),
        format!("\"rate\":{rate}"),
        format!("\"size\":{size}"),
        format!("\"seconds\":{secs}"),
        format!("\"published\":{sent_in_window}"),
    ];
    for (node, name) in [(0, "a"), (1, "b")] {
        let lat = &mut latencies[node];
        lat.sort_unstable();
        fields.push(format!(
            "\"{name}_deliveries_per_s\":{:.0}",
            delivered[node] as f64 / secs
        ));
        fields.push(format!(
            "\"{name}_missing\":{}",
            expected.saturating_sub(delivered[node])
        ));
        fields.push(format!("\"{name}_p50_us\":{}", percentile(lat, 0.5)));
        fields.push(format!("\"{name}_p99_us\":{}", percentile(lat, 0.99)));
        fields.push(format!("\"{name}_p999_us\":{}", percentile(lat, 0.999)));
    }
    if cpu_start.len() == pids.len() && cpu_end.len() == pids.len() {
        for (i, name) in ["a", "b", "redis"].iter().enumerate().take(pids.len()) {
            let used = cpu_end[i].saturating_sub(cpu_start[i]);
            fields.push(format!(
                "\"{name}_cpu_pct\":{:.1}",
                used as f64 / 1e4 / secs
            ));
            if i < 2 && delivered[i] > 0 {
                fields.push(format!(
                    "\"{name}_cpu_ns_per_delivery\":{:.0}",
                    used as f64 * 1000.0 / delivered[i] as f64
                ));
            }
        }
    }
    Ok(format!("{{{}}}", fields.join(",")))
}
