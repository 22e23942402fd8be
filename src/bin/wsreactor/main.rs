//! `make run`: a WebSocket echo server on ws://127.0.0.1:9998/echo, with a demo page at
//! http://127.0.0.1:9998/, and topic rooms on ws://127.0.0.1:9998/topic/NAME (linked
//! across nodes with `--redis`). Everything real lives in the library; this is the
//! handler (`app`), the flags (`options`), logging, signals and start-up.

mod app;
mod options;

use app::{json, Echo, STATS_STREAM_PATH, STATS_TOPIC};
use options::{check, parse_args, Options, USAGE};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use wsreactor::Stats;

const DEMO_PAGE: &str = include_str!("demo.html");

/// How often the stats stream (`/stats/ws`) gets a sample.
const STATS_STREAM_PERIOD: Duration = Duration::from_secs(1);

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
