//! `make run`: a WebSocket echo server on ws://127.0.0.1:9998/echo, with a demo page at
//! http://127.0.0.1:9998/, and topic rooms on ws://127.0.0.1:9998/topic/NAME (linked
//! across nodes with `--redis`). Everything real lives in the library; this is flags,
//! logging and the handler.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use wsreactor::{
    CloseCode, Config, Ctx, Decision, Handle, Handler, HttpResponse, Message, Part, Request,
    SendStatus, Stats, StatusCode,
};

const DEMO_PAGE: &str = include_str!("demo.html");

/// Where the demo page's live panel gets the stats: a WebSocket, sent the JSON of
/// `/stats` on open and then once a second (by the main loop, through the topic).
const STATS_STREAM_PATH: &str = "/stats/ws";
const STATS_TOPIC: &str = "wsreactor:stats";
const STATS_STREAM_PERIOD: Duration = Duration::from_secs(1);

/// Topic rooms: a WebSocket to `/topic/NAME` is subscribed to NAME, and each message it
/// sends is published to NAME — the sender included, as in a chat room: its own copy
/// comes back in the order everyone sees, which tells it the message went out.
const TOPIC_PREFIX: &str = "/topic/";
/// Longest topic name in `/topic/NAME`.
const MAX_TOPIC_LEN: usize = 64;

const USAGE: &str = "\
wsreactor: a single-threaded WebSocket (RFC 6455) echo server

USAGE: wsreactor [OPTIONS]

OPTIONS:
  --listen ADDR              address to listen on            [default: 127.0.0.1:9998]
  --path PATH                WebSocket echo path             [default: /echo]
  --allowed-origin ORIGIN    403 for browser pages from any other origin; repeat
                             for more                        [default: any origin]
  --max-message-size BYTES   largest message accepted (1009); echoed in parts as it
                             arrives, never held whole      [default: 16777216]
  --max-header-bytes BYTES   largest upgrade request head    [default: 16384]
  --read-buffer-size BYTES   the loop's shared read buffer   [default: 131072]
  --write-high-water BYTES   stop reading a peer whose send queue is over this
                                                             [default: 1048576]
  --max-send-queue BYTES     refuse sends past this queue    [default: 20971520]
  --max-connections N        503 past this many connections  [default: open-file limit - 64]
  --max-handshakes N         503 past this many clients still upgrading      [default: 4096]
  --handle-queue-capacity N  commands other threads may queue for the loop
                                                             [default: 65536]
  --handshake-timeout SECS   drop clients that take longer to upgrade        [default: 10]
  --close-timeout SECS       drop peers that do not finish the close; 0 = wait for
                             them, also at shutdown                          [default: 5]
  --idle-timeout SECS        ping after this much silence, 0 = no keepalive  [default: 30]
  --pong-timeout SECS        close (1011) peers that do not answer the ping  [default: 30]
  --send-stall-timeout SECS  close (1008) peers whose send queue stays full  [default: 30]
  --message-timeout SECS     close (1008) a half-received message that stops
                             growing, 0 = never                              [default: 30]
  --incoming-budget BYTES    all connections' incomplete messages together; past
                             it, stalled and largest holders get 1013 [default: 268435456]
  --outgoing-budget BYTES    all connections' send queues together; past it, the
                             stalest readers are dropped             [default: 268435456]
  --max-accepts-per-turn N   accepts per loop turn (fairness in a connect flood)
                                                             [default: 64]
  --stall-threshold SECS     warn when a handler callback or loop turn holds the
                             loop longer, 0 = never                          [default: 0.05]
  --deflate                  negotiate permessage-deflate (RFC 7692) with clients
  --deflate-takeover         keep compression context between messages (more
                             memory per connection, better ratio)
  --deflate-threshold BYTES  send shorter messages uncompressed   [default: 128]
  --deflate-level N          zlib level 0-9 (lower: less CPU)    [default: 6]
  --deflate-window-bits N    largest compression window, 9-15    [default: 15]
  --tls-cert FILE            serve wss:// and https:// with this PEM certificate
                             chain (with --tls-key); SIGHUP reloads both files
  --tls-key FILE             the certificate's PEM private key
  --stats-interval SECS      log a one-line summary this often, 0 = never    [default: 60]
  --no-stats-endpoints       404 for GET /metrics (Prometheus) and /stats (JSON),
                             and no /stats/ws stream (the demo page's live panel)
  --redis URL                link /topic/NAME rooms across servers through Redis
                             pub/sub, e.g. redis://127.0.0.1:6379   [default: off]
                             (with one loop only: --threads 1)
  --threads N                event loops, one thread each, all on --listen; the
                             rooms and the stats span them; 0 = one per core  [default: 1]
  --pin                      pin loop i to CPU i
  -h, --help                 print this help

SECS is seconds, fractional too (0.5), or `never`: 0 turns a timeout off as `never`
does. Values out of range are refused (exit 2), not clamped.

ws://ADDR/topic/NAME joins topic NAME: each message is published to everyone in it
(the sender too), on every server sharing the --redis broker.
Open http://ADDR/ for a demo page with a live panel; http://ADDR/metrics and /stats
show the counters, ws://ADDR/stats/ws streams them once a second
(unauthenticated: keep ADDR on loopback or a private network). RUST_LOG=debug logs every connection.
Ctrl-C or SIGTERM shuts down gracefully (every client gets close 1001); twice, at once.
";

/// Echoes every message on one path (and `/`); serves the demo page on `/`, and the
/// server's stats on `/metrics` (Prometheus), `/stats` (JSON) and `/stats/ws` (the
/// JSON once a second, for the page's live panel) unless turned off.
#[derive(Clone)]
struct Echo {
    path: String,
    page: String,
    stats_endpoints: bool,
    /// For its Origin allow-list, which the stats endpoints honour too.
    config: Config,
    /// With several loops, a handle on them: the stats endpoints read every loop's
    /// stats through it (set once the loops are bound).
    loops: Arc<OnceLock<Handle>>,
}

impl Echo {
    /// The stats the endpoints show: every loop's, or the one loop's own.
    fn loop_stats(&self, own: &Stats) -> Vec<Stats> {
        match self.loops.get() {
            Some(handle) => handle.loop_stats(),
            None => vec![own.clone()],
        }
    }
}

/// `/metrics`: the exposition of the stats summed over the loops; with several loops,
/// then each counter and gauge per loop, as `wsreactor_loop_<name>{loop="i"}`
/// families (kept apart from the sums, so that `sum()` over a family does not count
/// twice).
fn prometheus(loops: &[Stats]) -> String {
    use std::fmt::Write as _;
    let mut out = Stats::sum(loops).to_prometheus();
    if loops.len() > 1 {
        for metric in Stats::METRICS {
            let name = metric
                .exposed_name()
                .replacen("wsreactor_", "wsreactor_loop_", 1);
            let kind = match metric.kind {
                wsreactor::MetricKind::Counter => "counter",
                wsreactor::MetricKind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {} (per loop)", metric.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (i, stats) in loops.iter().enumerate() {
                let _ = writeln!(out, "{name}{{loop=\"{i}\"}} {}", (metric.get)(stats));
            }
        }
    }
    out
}

/// `/stats` and the stats stream: the JSON of the stats summed over the loops; with
/// several loops, a `loops` array of each loop's own.
fn json(loops: &[Stats]) -> String {
    let mut out = Stats::sum(loops).to_json();
    if loops.len() > 1 {
        out.pop(); // the closing brace
        let each: Vec<String> = loops.iter().map(Stats::to_json).collect();
        out.push_str(",\"loops\":[");
        out.push_str(&each.join(","));
        out.push_str("]}");
    }
    out
}

/// What a connection is for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum Role {
    #[default]
    Echo,
    /// A `/stats/ws` viewer: sent the stats, its own messages ignored.
    StatsViewer,
    /// In topic room NAME (`/topic/NAME`): its messages are published to NAME.
    Topic(Box<str>),
}

/// NAME in `/topic/NAME`, if it is one: 1 to 64 of `A-Z a-z 0-9 . _ -`.
fn topic_of(path: &str) -> Option<&str> {
    let name = path.strip_prefix(TOPIC_PREFIX)?;
    let valid = (1..=MAX_TOPIC_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    valid.then_some(name)
}

impl Handler for Echo {
    type Session = Role;

    /// Upgrades on the echo path, and on `/` too: load generators and clients that
    /// are given a bare `host:port` (tcpkali, kosoku) request `/`, and a GET of `/`
    /// that is not an upgrade still gets the demo page. `/stats/ws` is the stats
    /// stream (a foreign Origin was refused already by the server's allow-list).
    fn on_request(&mut self, request: &Request<'_>, _peer: SocketAddr) -> Decision<Role> {
        match request.path() {
            path if path == self.path || path == "/" => Decision::accept(),
            STATS_STREAM_PATH if self.stats_endpoints => {
                // Stats are text that compresses well, but once a second is not worth
                // a compressor's memory.
                Decision::accept_with(Role::StatsViewer).without_compression()
            }
            path => match topic_of(path) {
                Some(topic) => Decision::accept_with(Role::Topic(topic.into())),
                None => Decision::Reject(HttpResponse::not_found()),
            },
        }
    }

    fn on_open(&mut self, cx: &mut Ctx<'_, Role>) {
        cx.with_session(|role, cx| match role {
            // The echo streams (see `on_part`); the others take whole messages. With
            // permessage-deflate it takes whole messages too, so that its echoes go out
            // compressed as they came: parts are sent uncompressed, which RFC 7692
            // allows but some clients (the Autobahn suite's kosoku) do not expect.
            Role::Echo => {
                let compressed = cx.is_compressed();
                cx.receive_in_parts(!compressed);
            }
            Role::Topic(topic) => {
                cx.subscribe(topic);
            }
            Role::StatsViewer => {
                cx.subscribe(STATS_TOPIC);
                // The first sample at once: the panel shows numbers before the first
                // tick.
                let json = json(&cx.loop_stats());
                let _ = cx.send_text(&json);
            }
        });
    }

    /// The stats endpoints are unauthenticated (meant for loopback or a private
    /// network); a browser page from an origin outside `--allowed-origin` gets 403.
    fn on_http_with(&mut self, request: &Request<'_>, stats: &Stats) -> HttpResponse {
        match request.path() {
            "/" => HttpResponse::html(&self.page),
            "/metrics" | "/stats" if self.stats_endpoints => {
                if !self.config.origin_allowed(request.origin()) {
                    return HttpResponse::text(StatusCode::FORBIDDEN, "origin not allowed\n");
                }
                let loops = self.loop_stats(stats);
                let (content_type, body) = if request.path() == "/metrics" {
                    (
                        "text/plain; version=0.0.4; charset=utf-8",
                        prometheus(&loops),
                    )
                } else {
                    ("application/json", json(&loops))
                };
                HttpResponse::new(StatusCode::OK)
                    .with_header("Content-Type", content_type)
                    .with_header("Cache-Control", "no-store")
                    .with_body(body.into_bytes())
            }
            path if path == self.path => HttpResponse::text(
                StatusCode::UPGRADE_REQUIRED,
                "this is a WebSocket endpoint\n",
            )
            .with_header("Upgrade", "websocket"),
            _ => HttpResponse::not_found(),
        }
    }

    /// Topic rooms and stats viewers (echo connections take their messages in parts).
    fn on_message(&mut self, cx: &mut Ctx<'_, Role>, message: Message<'_>) {
        cx.with_session(|role, cx| match role {
            // To everyone in the room, here and (with --redis) on every other node.
            Role::Topic(topic) => {
                cx.publish(topic, message);
            }
            Role::StatsViewer => {}
            // Queued bytes are bounded by the reactor's read backpressure; a refusal
            // here can only mean the connection is closing.
            Role::Echo => {
                let _ = cx.send(message);
            }
        });
    }

    /// Streams: each part goes back out as it arrives, so a connection costs no
    /// memory for the size of its messages, and the echo of a large message starts
    /// before its last byte is in. Reading pauses while more than `write_high_water`
    /// waits to be sent, which bounds what a peer that does not read makes us queue.
    fn on_part(&mut self, cx: &mut Ctx<'_, Role>, part: Part<'_>) {
        if part.first && part.last {
            // A message in one piece goes out as one (compressed if negotiated).
            let _ = cx.send(part.data);
            return;
        }
        match cx.send_part(part) {
            Ok(SendStatus::Written | SendStatus::Queued(_)) => {}
            // Closing already, or the queue over its cap (which backpressure keeps
            // from happening): the echo would be missing a piece, so end it.
            Ok(_) | Err(_) => {
                let _ = cx.close(CloseCode::POLICY_VIOLATION, "echo could not keep up");
            }
        }
    }
}

struct Options {
    listen: SocketAddr,
    path: String,
    config: Config,
    stats_interval: Duration,
    stats_endpoints: bool,
    /// `--redis`: the broker that links the topic rooms across nodes.
    redis: Option<String>,
    /// `--tls-cert` and `--tls-key`: both or neither.
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// `--pin`: loop i on CPU i.
    pin: bool,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        listen: "127.0.0.1:9998".parse().expect("valid default address"),
        path: "/echo".to_owned(),
        config: Config::default(),
        stats_interval: Duration::from_secs(60),
        stats_endpoints: true,
        redis: None,
        tls: None,
        pin: false,
    };
    let (mut tls_cert, mut tls_key) = (None, None);
    let mut args = args;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--deflate" => {
                options.config.deflate = true;
                continue;
            }
            "--pin" => {
                options.pin = true;
                continue;
            }
            "--no-stats-endpoints" => {
                options.stats_endpoints = false;
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
        // For fields narrower than usize: a value that does not fit is out of range,
        // not cut to fit.
        let out_of_range = |_| format!("{flag}: out of range: {value}");
        let seconds = || parse_seconds(&flag, &value);
        match flag.as_str() {
            "--listen" => {
                options.listen = value
                    .parse()
                    .map_err(|_| format!("--listen: not an address: {value}"))?
            }
            "--tls-cert" => tls_cert = Some(value.into()),
            "--tls-key" => tls_key = Some(value.into()),
            "--path" if value.starts_with('/') => options.path = value,
            "--path" => return Err(format!("--path must start with '/': {value}")),
            "--allowed-origin" if value.is_empty() => {
                return Err("--allowed-origin needs an origin, e.g. https://example.com".into())
            }
            "--allowed-origin" => options.config.allowed_origins.push(value),
            "--max-message-size" => options.config.max_message_size = number()?,
            "--max-header-bytes" => options.config.max_header_bytes = number()?,
            "--read-buffer-size" => options.config.read_buffer_size = number()?,
            "--write-high-water" => options.config.write_high_water = number()?,
            "--max-send-queue" => options.config.max_send_queue = number()?,
            "--max-connections" => options.config.max_connections = number()?,
            "--max-handshakes" => options.config.max_handshakes = number()?,
            "--handle-queue-capacity" => options.config.handle_queue_capacity = number()?,
            "--handshake-timeout" => options.config.handshake_timeout = seconds()?,
            "--close-timeout" => options.config.close_timeout = seconds()?,
            "--idle-timeout" => options.config.idle_timeout = seconds()?,
            "--pong-timeout" => options.config.pong_timeout = seconds()?,
            "--send-stall-timeout" => options.config.send_stall_timeout = seconds()?,
            "--message-timeout" => options.config.message_timeout = seconds()?,
            "--incoming-budget" => options.config.incoming_budget = number()?,
            "--outgoing-budget" => options.config.outgoing_budget = number()?,
            "--max-accepts-per-turn" => options.config.max_accepts_per_turn = number()?,
            "--stall-threshold" => options.config.stall_threshold = seconds()?,
            "--stats-interval" => options.stats_interval = seconds()?,
            "--threads" => options.config.threads = number()?,
            "--redis" if cfg!(feature = "cluster") => options.redis = Some(value),
            "--redis" => {
                return Err(
                    "--redis: this binary was built without the cluster feature \
                            (cargo build --features cli,cluster)"
                        .into(),
                )
            }
            "--deflate-threshold" => options.config.deflate_threshold = number()?,
            "--deflate-level" => {
                options.config.deflate_level = u32::try_from(number()?).map_err(out_of_range)?
            }
            "--deflate-window-bits" => {
                options.config.deflate_window_bits =
                    u8::try_from(number()?).map_err(out_of_range)?
            }
            _ => return Err(format!("unknown option: {flag}")),
        }
    }
    options.tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => return Err("--tls-cert needs --tls-key".into()),
        (None, Some(_)) => return Err("--tls-key needs --tls-cert".into()),
    };
    if options.tls.is_some() && cfg!(not(feature = "tls")) {
        return Err("--tls-cert: built without TLS (cargo feature `tls`)".into());
    }
    Ok(Some(options))
}

/// A duration in seconds, fractional too (`0.5`), or `never` (`Duration::MAX`, which
/// the server reads as no timeout). Negative, NaN, infinite and absurdly large values
/// are errors rather than guesses.
fn parse_seconds(flag: &str, value: &str) -> Result<Duration, String> {
    if value == "never" {
        return Ok(Duration::MAX);
    }
    let seconds = value
        .parse::<f64>()
        .ok()
        .filter(|seconds| seconds.is_finite())
        .ok_or_else(|| format!("{flag}: not a number of seconds (or never): {value}"))?;
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        if seconds < 0.0 {
            format!("{flag}: must not be negative: {value}")
        } else {
            format!("{flag}: too large (use never for no timeout): {value}")
        }
    })
}

/// [`Config::validate`], naming the flag as well as the field, plus the one rule an
/// echo server adds: the echo of a largest message must fit the send queue, or every
/// such message would be dropped (the library allows it, for servers that send less
/// than they receive).
fn check(config: &Config) -> Result<(), String> {
    config
        .validate()
        .map_err(|e| format!("{e} (--{})", e.field().replace('_', "-")))?;
    if !config.largest_message_fits_send_queue() {
        return Err(format!(
            "max_send_queue: {} is smaller than max_message_size ({}) plus a frame \
             header (14): the echo of a largest message would always be refused \
             (--max-send-queue)",
            config.max_send_queue, config.max_message_size
        ));
    }
    Ok(())
}

/// Links the topic rooms with other nodes through the broker at `url`; the stats
/// stream's topic stays on this node (its numbers are this node's).
#[cfg(feature = "cluster")]
fn join_cluster(
    server: &mut wsreactor::Server<Echo>,
    url: String,
) -> Result<wsreactor::cluster::Cluster, String> {
    use wsreactor::cluster::ClusterConfig;
    let config = ClusterConfig {
        local_topic_prefixes: vec![STATS_TOPIC.to_owned()],
        ..ClusterConfig::new(url.clone())
    };
    let cluster = server.attach_cluster(config).map_err(|e| e.to_string())?;
    log::info!(
        "topic rooms linked through {url} as node {:016x}",
        cluster.node_id()
    );
    Ok(cluster)
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
    if let Err(message) = check(&options.config) {
        eprintln!("wsreactor: invalid configuration: {message}");
        return ExitCode::from(2);
    }
    // Handlers go in before the port opens: a supervisor that sees the port accept and
    // sends SIGTERM at once must get a graceful shutdown, not the default action (death
    // by signal). Signals that arrive before the thread below starts wait for it.
    let signals = match wsreactor::signals::ShutdownSignals::install() {
        Ok(signals) => Some(signals),
        Err(e) => {
            log::warn!("cannot install signal handlers: {e}");
            None
        }
    };
    let mut options = options;
    // The echo streams (see `Echo::on_part`); --max-message-size keeps its meaning as
    // the largest message echoed.
    options.config.max_streamed_message_size = options.config.max_message_size as u64;
    let page = DEMO_PAGE.replace("__ECHO_PATH__", &options.path).replace(
        "__STATS_STREAM_PATH__",
        if options.stats_endpoints {
            STATS_STREAM_PATH
        } else {
            ""
        },
    );
    let handler = Echo {
        path: options.path.clone(),
        page,
        stats_endpoints: options.stats_endpoints,
        config: options.config.clone(),
        loops: Arc::new(OnceLock::new()),
    };
    #[cfg(feature = "tls")]
    let tls = match load_tls(&options) {
        Ok(tls) => tls,
        Err(code) => return code,
    };
    if options.config.loops() > 1 {
        #[cfg(feature = "tls")]
        return run_loops(options, handler, signals, tls);
        #[cfg(not(feature = "tls"))]
        return run_loops(options, handler, signals);
    }
    let (ws, http) = schemes(&options);
    let mut server = match wsreactor::Server::bind(options.listen, options.config, handler) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("wsreactor: cannot listen on {}: {e}", options.listen);
            return ExitCode::FAILURE;
        }
    };
    #[cfg(feature = "tls")]
    if let Some(tls) = tls {
        server = server.with_tls(tls);
    }
    let addr = server.local_addr();
    // Kept to the end of main: dropping it takes the node out of the cluster.
    #[cfg(feature = "cluster")]
    let _cluster = match options
        .redis
        .clone()
        .map(|url| join_cluster(&mut server, url))
    {
        Some(Err(message)) => {
            eprintln!("wsreactor: --redis: {message}");
            return ExitCode::from(2);
        }
        Some(Ok(cluster)) => Some(cluster),
        None => None,
    };
    if let Some(signals) = signals {
        signals.forward_to(server.handle());
    }
    log::info!(
        "echo on {ws}://{addr}{}, demo page on {http}://{addr}/",
        options.path
    );
    // Zero, or too far off to represent (`never`), means no periodic summary.
    let interval = options.stats_interval;
    let next_after = |from: Instant| {
        if interval.is_zero() {
            None
        } else {
            from.checked_add(interval)
        }
    };
    let mut next_stats = next_after(Instant::now());
    // The stats stream's tick. Published through the handle, as from any thread; the
    // loop carries it out in the turn that follows.
    let stream = options.stats_endpoints.then(|| server.handle());
    let mut next_stream = stream
        .as_ref()
        .map(|_| Instant::now() + STATS_STREAM_PERIOD);
    while !server.is_finished() {
        let wait = [next_stats, next_stream]
            .into_iter()
            .flatten()
            .min()
            .map(|at| at.saturating_duration_since(Instant::now()));
        if let Err(e) = server.turn(wait) {
            eprintln!("wsreactor: event loop failed: {e}");
            return ExitCode::FAILURE;
        }
        if next_stats.is_some_and(|at| Instant::now() >= at) {
            log::info!("{}", server.stats());
            next_stats = next_after(Instant::now());
        }
        if let (Some(at), Some(handle)) = (next_stream, &stream) {
            if Instant::now() >= at {
                // A full command queue skips one tick; the next one carries on.
                let _ = handle.publish_text(STATS_TOPIC, server.stats().to_json());
                next_stream = Some(Instant::now() + STATS_STREAM_PERIOD);
            }
        }
    }
    log::info!("{}", server.stats());
    ExitCode::SUCCESS
}

/// The WebSocket and page schemes the server answers on.
fn schemes(options: &Options) -> (&'static str, &'static str) {
    if options.tls.is_some() {
        ("wss", "https")
    } else {
        ("ws", "http")
    }
}

/// `--tls-cert`/`--tls-key` loaded (with SIGHUP reloading them), or the exit code of a
/// certificate that does not load.
#[cfg(feature = "tls")]
fn load_tls(options: &Options) -> Result<Option<wsreactor::tls::TlsConfig>, ExitCode> {
    let Some((cert, key)) = &options.tls else {
        return Ok(None);
    };
    let tls = match wsreactor::tls::TlsConfig::from_pem_files(cert, key) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("wsreactor: cannot load the TLS certificate: {e}");
            return Err(ExitCode::from(2));
        }
    };
    if let Err(e) = wsreactor::tls::reload_on_sighup(tls.clone(), cert.clone(), key.clone()) {
        log::warn!("cannot catch SIGHUP (no certificate reload): {e}");
    }
    Ok(Some(tls))
}

/// `--threads N` (N > 1): N loops on one address, the stats summed over them. The
/// periodic summary and the stats stream come from a thread of their own, through
/// a handle, as the single loop's `main` does from between its turns.
fn run_loops(
    options: Options,
    handler: Echo,
    signals: Option<wsreactor::signals::ShutdownSignals>,
    #[cfg(feature = "tls")] tls: Option<wsreactor::tls::TlsConfig>,
) -> ExitCode {
    if options.redis.is_some() {
        eprintln!(
            "wsreactor: --redis links one loop's rooms only: use it with --threads 1 \
             (the cluster bridge is single-loop for now)"
        );
        return ExitCode::from(2);
    }
    let handle_slot = Arc::clone(&handler.loops);
    let (ws, http) = schemes(&options);
    let mut reactor =
        match wsreactor::Reactor::bind(options.listen, options.config, |_| handler.clone()) {
            Ok(reactor) => reactor,
            Err(e) => {
                eprintln!("wsreactor: cannot listen on {}: {e}", options.listen);
                return ExitCode::FAILURE;
            }
        };
    #[cfg(feature = "tls")]
    if let Some(tls) = tls {
        reactor = reactor.with_tls(tls);
    }
    reactor.pin_to_cores(options.pin);
    let handle = reactor.handle();
    let _ = handle_slot.set(handle.clone());
    if let Some(signals) = signals {
        signals.forward_to(handle.clone());
    }
    let addr = reactor.local_addr();
    log::info!(
        "echo on {ws}://{addr}{}, demo page on {http}://{addr}/, {} loops",
        options.path,
        reactor.loops()
    );
    let interval = options.stats_interval;
    let stream = options.stats_endpoints;
    let ticker = handle.clone();
    let _ = std::thread::Builder::new()
        .name("wsreactor-stats".into())
        .spawn(move || {
            let mut next_stats = (!interval.is_zero()).then(|| Instant::now() + interval);
            while stream || next_stats.is_some() {
                std::thread::sleep(STATS_STREAM_PERIOD);
                if next_stats.is_some_and(|at| Instant::now() >= at) {
                    log::info!("{}", Stats::sum(&ticker.loop_stats()));
                    next_stats = Instant::now().checked_add(interval);
                }
                if stream {
                    match ticker.publish_text(STATS_TOPIC, json(&ticker.loop_stats())) {
                        // A full command queue skips one tick.
                        Ok(()) | Err(wsreactor::HandleError::Full) => {}
                        Err(_) => return,
                    }
                }
            }
        });
    if let Err(e) = reactor.run() {
        eprintln!("wsreactor: event loop failed: {e}");
        return ExitCode::FAILURE;
    }
    log::info!("{}", Stats::sum(&reactor.stats()));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        parse_args(args.iter().map(|a| a.to_string())).map(|o| o.expect("not --help"))
    }

    fn parse_err(args: &[&str]) -> String {
        match parse(args) {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(message) => message,
        }
    }

    #[test]
    fn no_flags_give_the_default_config_which_passes_the_check() {
        let options = parse(&[]).unwrap();
        assert_eq!(options.config, Config::default());
        assert_eq!(options.stats_interval, Duration::from_secs(60));
        assert_eq!(check(&options.config), Ok(()));
        assert!(parse_args(["--help".to_owned()].into_iter())
            .unwrap()
            .is_none());
    }

    #[test]
    fn timeouts_take_fractional_seconds() {
        let options = parse(&[
            "--close-timeout",
            "0.5",
            "--idle-timeout",
            "1.25",
            "--pong-timeout",
            "3",
            "--send-stall-timeout",
            "0.001",
            "--handshake-timeout",
            "0",
            "--stats-interval",
            "2.5",
        ])
        .unwrap();
        let config = &options.config;
        assert_eq!(config.close_timeout, Duration::from_millis(500));
        assert_eq!(config.idle_timeout, Duration::from_millis(1250));
        assert_eq!(config.pong_timeout, Duration::from_secs(3));
        assert_eq!(config.send_stall_timeout, Duration::from_millis(1));
        assert_eq!(config.handshake_timeout, Duration::ZERO);
        assert_eq!(options.stats_interval, Duration::from_millis(2500));
    }

    #[test]
    fn never_is_duration_max() {
        let flags = [
            "--handshake-timeout",
            "--close-timeout",
            "--idle-timeout",
            "--pong-timeout",
            "--send-stall-timeout",
            "--stats-interval",
        ];
        let args: Vec<&str> = flags.iter().flat_map(|flag| [*flag, "never"]).collect();
        let options = parse(&args).unwrap();
        let config = &options.config;
        for timeout in [
            config.handshake_timeout,
            config.close_timeout,
            config.idle_timeout,
            config.pong_timeout,
            config.send_stall_timeout,
            options.stats_interval,
        ] {
            assert_eq!(timeout, Duration::MAX);
        }
        assert_eq!(check(config), Ok(()));
    }

    #[test]
    fn bad_seconds_are_errors() {
        for (value, expected) in [
            ("-1", "must not be negative"),
            ("-0.5", "must not be negative"),
            ("NaN", "not a number of seconds"),
            ("inf", "not a number of seconds"),
            ("-inf", "not a number of seconds"),
            ("ten", "not a number of seconds"),
            ("", "not a number of seconds"),
            ("Never", "not a number of seconds"),
            ("1e300", "too large"),
        ] {
            let message = parse_err(&["--pong-timeout", value]);
            assert!(
                message.starts_with("--pong-timeout: ") && message.contains(expected),
                "{value:?}: {message}"
            );
        }
    }

    #[test]
    fn allowed_origin_repeats() {
        let options = parse(&[
            "--allowed-origin",
            "https://a.example",
            "--allowed-origin",
            "https://b.example",
        ])
        .unwrap();
        assert_eq!(
            options.config.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert!(parse_err(&["--allowed-origin", ""]).contains("needs an origin"));
    }

    #[test]
    fn new_bounds_reach_their_fields() {
        let options = parse(&[
            "--max-handshakes",
            "7",
            "--handle-queue-capacity",
            "9",
            "--deflate-window-bits",
            "10",
            "--deflate-level",
            "1",
        ])
        .unwrap();
        let config = &options.config;
        assert_eq!(config.max_handshakes, 7);
        assert_eq!(config.handle_queue_capacity, 9);
        assert_eq!(config.deflate_window_bits, 10);
        assert_eq!(config.deflate_level, 1);
        assert_eq!(check(config), Ok(()));
    }

    #[test]
    fn values_that_do_not_parse_are_errors() {
        for (args, expected) in [
            (&["--max-handshakes", "-3"][..], "not a number"),
            (&["--max-handshakes", "1.5"], "not a number"),
            (&["--deflate-window-bits", "300"], "out of range"),
            (&["--deflate-level", "99999999999"], "out of range"),
            (&["--max-connections"], "needs a value"),
            (&["--listen", "localhost"], "not an address"),
            (&["--path", "echo"], "must start with '/'"),
            (&["--no-such-flag", "1"], "unknown option"),
        ] {
            let message = parse_err(args);
            assert!(message.contains(expected), "{args:?}: {message}");
        }
    }

    #[test]
    fn values_out_of_range_are_refused_not_clamped() {
        for (args, expected) in [
            (
                &["--deflate-level", "10"][..],
                "deflate_level: 10 is above 9",
            ),
            (
                &["--deflate-window-bits", "8"],
                "deflate_window_bits: 8 is outside",
            ),
            (
                &["--deflate-window-bits", "16"],
                "deflate_window_bits: 16 is outside",
            ),
            (
                &["--read-buffer-size", "0"],
                "read_buffer_size: must not be 0",
            ),
            (&["--max-handshakes", "0"], "max_handshakes: must not be 0"),
            (&["--handle-queue-capacity", "0"], "handle_queue_capacity"),
            (&["--max-connections", "0"], "max_connections"),
            (
                &["--write-high-water", "30000000"],
                "write_high_water: 30000000 is above max_send_queue",
            ),
        ] {
            let options = parse(args).unwrap();
            let message = check(&options.config).unwrap_err();
            assert!(message.starts_with(expected), "{args:?}: {message}");
            // The message names the flag to change.
            assert!(message.contains(&format!("({})", args[0])), "{message}");
        }
        // Kept as given, so the check sees it.
        assert_eq!(
            parse(&["--deflate-level", "10"])
                .unwrap()
                .config
                .deflate_level,
            10
        );
    }

    #[test]
    fn an_echo_must_fit_the_send_queue() {
        let options =
            parse(&["--max-send-queue", "1000000", "--write-high-water", "1000"]).unwrap();
        let message = check(&options.config).unwrap_err();
        assert!(message.contains("echo of a largest message"), "{message}");
        assert!(message.ends_with("(--max-send-queue)"), "{message}");
        let options = parse(&[
            "--max-send-queue",
            "1000014",
            "--write-high-water",
            "1000",
            "--max-message-size",
            "1000000",
        ])
        .unwrap();
        assert_eq!(check(&options.config), Ok(()));
    }

    fn get(echo: &mut Echo, path: &str, origin: Option<&str>) -> HttpResponse {
        let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{origin}\r\n");
        let request = Request::parse(head.as_bytes()).unwrap();
        let mut stats = Stats {
            messages_in: 7,
            ..Stats::default()
        };
        stats.handshakes = 2;
        echo.on_http_with(&request, &stats)
    }

    fn echo(args: &[&str]) -> Echo {
        let options = parse(args).unwrap();
        Echo {
            path: options.path,
            page: String::new(),
            stats_endpoints: options.stats_endpoints,
            config: options.config,
            loops: Arc::new(OnceLock::new()),
        }
    }

    fn content_type(response: &HttpResponse) -> &str {
        let (_, value) = response
            .headers
            .iter()
            .find(|(name, _)| name == "Content-Type")
            .unwrap();
        value
    }

    #[test]
    fn stats_endpoints_serve_the_stats_unless_turned_off() {
        let mut on = echo(&[]);
        let metrics = get(&mut on, "/metrics", None);
        assert_eq!(metrics.status, StatusCode::OK);
        assert!(content_type(&metrics).starts_with("text/plain; version=0.0.4"));
        let body = String::from_utf8(metrics.body).unwrap();
        assert!(body.contains("\nwsreactor_messages_in_total 7\n"), "{body}");
        let stats = get(&mut on, "/stats", None);
        assert_eq!(stats.status, StatusCode::OK);
        assert_eq!(content_type(&stats), "application/json");
        assert!(String::from_utf8(stats.body)
            .unwrap()
            .contains("\"handshakes\":2,"));
        let mut off = echo(&["--no-stats-endpoints"]);
        for path in ["/metrics", "/stats"] {
            assert_eq!(get(&mut off, path, None).status, StatusCode::NOT_FOUND);
        }
    }

    #[test]
    fn stats_endpoints_honour_the_origin_allow_list() {
        let mut any = echo(&[]);
        assert_eq!(
            get(&mut any, "/stats", Some("https://evil.example")).status,
            StatusCode::OK
        );
        let mut listed = echo(&["--allowed-origin", "https://ok.example"]);
        for path in ["/metrics", "/stats"] {
            let foreign = get(&mut listed, path, Some("https://evil.example"));
            assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{path}");
            let allowed = get(&mut listed, path, Some("https://ok.example"));
            assert_eq!(allowed.status, StatusCode::OK, "{path}");
            // No Origin: not a browser page (a scraper, curl).
            assert_eq!(
                get(&mut listed, path, None).status,
                StatusCode::OK,
                "{path}"
            );
        }
    }

    #[test]
    fn topic_names_are_short_and_plain() {
        assert_eq!(topic_of("/topic/lobby"), Some("lobby"));
        assert_eq!(topic_of("/topic/a.b_c-9"), Some("a.b_c-9"));
        assert_eq!(
            topic_of(&format!("/topic/{}", "x".repeat(64))).map(str::len),
            Some(64)
        );
        for path in [
            "/topic/",
            "/topic/a b",
            "/topic/a/b",
            "/topic/é",
            "/topics/a",
            "/echo",
        ] {
            assert_eq!(topic_of(path), None, "{path}");
        }
        assert_eq!(topic_of(&format!("/topic/{}", "x".repeat(65))), None);
    }

    /// The flags block in README.md is a copy of this help text: keep them one.
    #[test]
    fn the_readme_lists_the_flags_of_the_help_text() {
        let readme = include_str!("../README.md");
        let options = USAGE
            .split_once("OPTIONS:\n")
            .and_then(|(_, rest)| rest.split_once("  -h, --help"))
            .map(|(block, _)| block)
            .expect("an OPTIONS block ending in --help");
        assert!(
            readme.contains(&format!("```\n{options}```\n")),
            "README.md's flags block differs from the help text:\n{options}"
        );
    }
}
