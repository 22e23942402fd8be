//! The binary's handler: the echo (streamed in parts), the demo page, the stats
//! endpoints and stream, and the topic rooms.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use wsreactor::{
    CloseCode, Config, Ctx, Decision, Handle, Handler, HttpResponse, Message, Part, Request,
    SendStatus, Stats, StatusCode,
};

/// Where the demo page's live panel gets the stats: a WebSocket, sent the JSON of
/// `/stats` on open and then once a second (by the main loop, through the topic).
pub(crate) const STATS_STREAM_PATH: &str = "/stats/ws";
pub(crate) const STATS_TOPIC: &str = "wsreactor:stats";

/// Topic rooms: a WebSocket to `/topic/NAME` is subscribed to NAME, and each message it
/// sends is published to NAME — the sender included, as in a chat room: its own copy
/// comes back in the order everyone sees, which tells it the message went out.
const TOPIC_PREFIX: &str = "/topic/";
/// Longest topic name in `/topic/NAME`.
const MAX_TOPIC_LEN: usize = 64;

/// Echoes every message on one path (and `/`); serves the demo page on `/`, and the
/// server's stats on `/metrics` (Prometheus), `/stats` (JSON) and `/stats/ws` (the
/// JSON once a second, for the page's live panel) unless turned off.
#[derive(Clone)]
pub(crate) struct Echo {
    pub(crate) path: String,
    pub(crate) page: String,
    pub(crate) stats_endpoints: bool,
    /// For its Origin allow-list, which the stats endpoints honour too.
    pub(crate) config: Config,
    /// With several loops, a handle on them: the stats endpoints read every loop's
    /// stats through it (set once the loops are bound).
    pub(crate) loops: Arc<OnceLock<Handle>>,
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
pub(crate) fn json(loops: &[Stats]) -> String {
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
pub(crate) enum Role {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::tests::parse;

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
}
