//! `make run`: a WebSocket echo server on ws://127.0.0.1:9998/echo, with a demo page at
//! http://127.0.0.1:9998/. Everything real lives in the library; this is flags, logging
//! and the echo handler.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wsreactor::{Config, Ctx, Decision, Handler, HttpResponse, Message, Request, StatusCode};

const DEMO_PAGE: &str = include_str!("demo.html");

const USAGE: &str = "\
wsreactor: a single-threaded WebSocket (RFC 6455) echo server

USAGE: wsreactor [OPTIONS]

OPTIONS:
  --listen ADDR              address to listen on            [default: 127.0.0.1:9998]
  --path PATH                WebSocket echo path             [default: /echo]
  --max-message-size BYTES   largest message accepted (1009) [default: 16777216]
  --max-header-bytes BYTES   largest upgrade request head    [default: 16384]
  --read-buffer-size BYTES   the loop's shared read buffer   [default: 131072]
  --write-high-water BYTES   stop reading a peer whose send queue is over this
                                                             [default: 1048576]
  --max-send-queue BYTES     refuse sends past this queue    [default: 20971520]
  --max-connections N        503 past this many connections  [default: open-file limit - 64]
  --handshake-timeout SECS   drop clients that take longer to upgrade        [default: 10]
  --close-timeout SECS       drop peers that do not finish the close         [default: 5]
  --idle-timeout SECS        ping after this much silence, 0 = no keepalive  [default: 30]
  --deflate                  negotiate permessage-deflate (RFC 7692) with clients
  --deflate-takeover         keep compression context between messages (more
                             memory per connection, better ratio)
  --deflate-threshold BYTES  send shorter messages uncompressed   [default: 128]
  --deflate-level N          zlib level 0-9 (lower: less CPU)    [default: 6]
  --stats-interval SECS      log a one-line summary this often, 0 = never    [default: 60]
  -h, --help                 print this help

Open http://ADDR/ for a demo page. RUST_LOG=debug logs every connection.
Ctrl-C or SIGTERM shuts down gracefully (every client gets close 1001); twice, at once.
";

/// Echoes every message on one path (and `/`); serves the demo page on `/`.
struct Echo {
    path: String,
    page: String,
}

impl Handler for Echo {
    type Session = ();

    /// Upgrades on the echo path, and on `/` too: load generators and clients that
    /// are given a bare `host:port` (tcpkali, kosoku) request `/`, and a GET of `/`
    /// that is not an upgrade still gets the demo page.
    fn on_request(&mut self, request: &Request<'_>, _peer: SocketAddr) -> Decision<()> {
        if request.path() == self.path || request.path() == "/" {
            Decision::accept()
        } else {
            Decision::Reject(HttpResponse::not_found())
        }
    }

    fn on_http(&mut self, request: &Request<'_>) -> HttpResponse {
        match request.path() {
            "/" => HttpResponse::html(&self.page),
            path if path == self.path => HttpResponse::text(
                StatusCode::UPGRADE_REQUIRED,
                "this is a WebSocket endpoint\n",
            )
            .with_header("Upgrade", "websocket"),
            _ => HttpResponse::not_found(),
        }
    }

    fn on_message(&mut self, cx: &mut Ctx<'_>, message: Message<'_>) {
        // Queued bytes are bounded by the reactor's read backpressure; a refusal here
        // can only mean the connection is closing.
        let _ = cx.send(message);
    }
}

struct Options {
    listen: SocketAddr,
    path: String,
    config: Config,
    stats_interval: Duration,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        listen: "127.0.0.1:9998".parse().expect("valid default address"),
        path: "/echo".to_owned(),
        config: Config::default(),
        stats_interval: Duration::from_secs(60),
    };
    let mut args = args;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--deflate" => {
                options.config.deflate = true;
                continue;
            }
            "--deflate-takeover" => {
                options.config.deflate = true;
                options.config.deflate_context_takeover = true;
                continue;
            }
            _ => {}
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || -> Result<usize, String> {
            value
                .parse()
                .map_err(|_| format!("{flag}: not a number: {value}"))
        };
        let seconds = || number().map(|n| Duration::from_secs(n as u64));
        match flag.as_str() {
            "--listen" => {
                options.listen = value
                    .parse()
                    .map_err(|_| format!("--listen: not an address: {value}"))?
            }
            "--path" if value.starts_with('/') => options.path = value,
            "--path" => return Err(format!("--path must start with '/': {value}")),
            "--max-message-size" => options.config.max_message_size = number()?,
            "--max-header-bytes" => options.config.max_header_bytes = number()?,
            "--read-buffer-size" => options.config.read_buffer_size = number()?,
            "--write-high-water" => options.config.write_high_water = number()?,
            "--max-send-queue" => options.config.max_send_queue = number()?,
            "--max-connections" => options.config.max_connections = number()?,
            "--handshake-timeout" => options.config.handshake_timeout = seconds()?,
            "--close-timeout" => options.config.close_timeout = seconds()?,
            "--idle-timeout" => options.config.idle_timeout = seconds()?,
            "--stats-interval" => options.stats_interval = seconds()?,
            "--deflate-threshold" => options.config.deflate_threshold = number()?,
            "--deflate-level" => options.config.deflate_level = number()?.min(9) as u32,
            _ => return Err(format!("unknown option: {flag}")),
        }
    }
    Ok(Some(options))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    // Before the Config is made: its default connection limit follows the fd limit.
    match wsreactor::config::raise_open_file_limit() {
        Ok(limit) => log::debug!("open file limit: {limit}"),
        Err(e) => log::warn!("cannot raise the open file limit: {e}"),
    }
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("wsreactor: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Handlers go in before the port opens: a supervisor that sees the port accept and
    // sends SIGTERM at once must get a graceful shutdown, not the default action (death
    // by signal). Signals that arrive before the thread below starts wait for it.
    let signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => Some(signals),
        Err(e) => {
            log::warn!("cannot install signal handlers: {e}");
            None
        }
    };
    let page = DEMO_PAGE.replace("__ECHO_PATH__", &options.path);
    let handler = Echo {
        path: options.path.clone(),
        page,
    };
    let mut server = match wsreactor::Server::bind(options.listen, options.config, handler) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("wsreactor: cannot listen on {}: {e}", options.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = server.local_addr();
    if let Some(signals) = signals {
        shut_down_on(signals, server.handle());
    }
    log::info!(
        "echo on ws://{addr}{}, demo page on http://{addr}/",
        options.path
    );
    let mut next_stats = Instant::now() + options.stats_interval;
    while !server.is_finished() {
        let wait = (!options.stats_interval.is_zero())
            .then(|| next_stats.saturating_duration_since(Instant::now()));
        if let Err(e) = server.turn(wait) {
            eprintln!("wsreactor: event loop failed: {e}");
            return ExitCode::FAILURE;
        }
        if !options.stats_interval.is_zero() && Instant::now() >= next_stats {
            log::info!("{}", server.stats());
            next_stats = Instant::now() + options.stats_interval;
        }
    }
    log::info!("{}", server.stats());
    ExitCode::SUCCESS
}

/// SIGINT/SIGTERM start a graceful shutdown through the server's handle; a second
/// signal exits at once (130), for when a peer never finishes closing.
fn shut_down_on(mut signals: Signals, handle: wsreactor::Handle) {
    std::thread::spawn(move || {
        let mut received = 0;
        for signal in signals.forever() {
            received += 1;
            if received > 1 {
                std::process::exit(130);
            }
            log::info!("signal {signal}: shutting down (again to force)");
            let _ = handle.shutdown();
        }
    });
}
