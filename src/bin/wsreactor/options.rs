//! The command line: `--help`'s text, the flags, and the checks on their values.

use std::net::SocketAddr;
use std::time::Duration;
use wsreactor::Config;

pub(crate) const USAGE: &str = "\
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

pub(crate) struct Options {
    pub(crate) listen: SocketAddr,
    pub(crate) path: String,
    pub(crate) config: Config,
    pub(crate) stats_interval: Duration,
    pub(crate) stats_endpoints: bool,
    /// `--redis`: the broker that links the topic rooms across nodes.
    pub(crate) redis: Option<String>,
    /// `--tls-cert` and `--tls-key`: both or neither.
    pub(crate) tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// `--pin`: loop i on CPU i.
    pub(crate) pin: bool,
}

pub(crate) fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
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
pub(crate) fn check(config: &Config) -> Result<(), String> {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn parse(args: &[&str]) -> Result<Options, String> {
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

    /// The flags block in README.md is a copy of this help text: keep them one.
    #[test]
    fn the_readme_lists_the_flags_of_the_help_text() {
        let readme = include_str!("../../../README.md");
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
