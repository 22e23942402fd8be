//! Application timers end to end: a per-connection timer fires with its token on its
//! connection, cancel works, a connection's timers go with it (also when its slot is
//! taken by the next connection), server-level timers, the caps on pending timers
//! (errors, not panics, and room comes back), and panics in timer callbacks.

mod common;

use common::*;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;
use wsreactor::{Config, ConnId, Ctx, Handler, Loop, Message, TimerId};

/// A token whose timer panics when it fires.
const PANIC: u64 = 666;

/// Text commands: `in:<ms>:<token>` sets a timer for this connection, `loop:<ms>:<token>`
/// a server-level one, `cancel` cancels this connection's last timer, `flood` sets
/// timers until it is refused, `pending` answers with the server's count. Every
/// firing is reported to the test and told to the client (`timer:<token>` to the
/// connection, `loop:<token>` to everyone).
struct Clock {
    fired: Sender<(Option<ConnId>, u64)>,
}

impl Handler for Clock {
    type Session = Vec<TimerId>;

    fn on_message(&mut self, cx: &mut Ctx<'_, Vec<TimerId>>, message: Message<'_>) {
        let Message::Text(text) = message else {
            return;
        };
        let parts: Vec<&str> = text.split(':').collect();
        let reply = match parts[..] {
            ["in", ms, token] => {
                let after = Duration::from_millis(ms.parse().unwrap());
                match cx.set_timer(after, token.parse().unwrap()) {
                    Ok(id) => {
                        cx.session().push(id);
                        "set".to_owned()
                    }
                    Err(e) => format!("error: {e:?}"),
                }
            }
            ["loop", ms, token] => {
                let after = Duration::from_millis(ms.parse().unwrap());
                match cx.set_loop_timer(after, token.parse().unwrap()) {
                    Ok(_) => "loop set".to_owned(),
                    Err(e) => format!("error: {e:?}"),
                }
            }
            ["cancel"] => {
                let id = *cx.session().last().unwrap();
                format!("cancelled:{}", cx.cancel_timer(id))
            }
            ["flood"] => {
                let mut set = 0;
                loop {
                    match cx.set_timer(Duration::from_secs(60), 1) {
                        Ok(id) => {
                            cx.session().push(id);
                            set += 1;
                        }
                        Err(e) => break format!("{set} then {e:?}"),
                    }
                }
            }
            ["pending"] => format!("pending:{}", cx.timers_pending()),
            // The Stats gauge, as of the end of the previous turn.
            ["gauge"] => format!("gauge:{}", cx.stats().timers_pending),
            _ => "?".to_owned(),
        };
        let _ = cx.send_text(&reply);
    }

    fn on_timer(&mut self, cx: &mut Ctx<'_, Vec<TimerId>>, token: u64) {
        let _ = self.fired.send((Some(cx.id()), token));
        if token == PANIC {
            panic!("a handler bug in on_timer");
        }
        let _ = cx.send_text(&format!("timer:{token}"));
    }

    fn on_loop_timer(&mut self, lp: &mut Loop<Vec<TimerId>>, token: u64) {
        let _ = self.fired.send((None, token));
        if token == PANIC {
            panic!("a handler bug in on_loop_timer");
        }
        lp.broadcast(Message::Text(&format!("loop:{token}")));
    }
}

fn start(config: Config) -> (Running, Receiver<(Option<ConnId>, u64)>) {
    let (fired, fired_rx) = mpsc::channel();
    (spawn_server(config, Clock { fired }), fired_rx)
}

fn ask(client: &mut Raw, command: &str, reply: &str) {
    client.send(true, TEXT, command.as_bytes());
    client.expect_echo(TEXT, reply.as_bytes());
}

#[test]
fn a_connection_timer_fires_with_its_token_on_its_connection() {
    let (server, fired) = start(Config::default());
    let mut ada = Raw::open(server.addr);
    let mut bob = Raw::open(server.addr);
    ask(&mut ada, "in:30:7", "set");
    ask(&mut bob, "in:10:8", "set");
    bob.expect_echo(TEXT, b"timer:8");
    ada.expect_echo(TEXT, b"timer:7");
    let mut reports: Vec<u64> = (0..2)
        .map(|_| fired.recv_timeout(IO_TIMEOUT).unwrap().1)
        .collect();
    reports.sort();
    assert_eq!(reports, [7, 8]);
    // Each fired once: nothing more.
    ada.expect_silence(Duration::from_millis(100));
    ask(&mut ada, "pending", "pending:0");
}

#[test]
fn a_cancelled_timer_never_fires() {
    let (server, fired) = start(Config::default());
    let mut ada = Raw::open(server.addr);
    ask(&mut ada, "in:100:8", "set");
    ask(&mut ada, "pending", "pending:1");
    ask(&mut ada, "cancel", "cancelled:true");
    ask(&mut ada, "cancel", "cancelled:false");
    ask(&mut ada, "pending", "pending:0");
    ask(&mut ada, "in:150:9", "set");
    ada.expect_echo(TEXT, b"timer:9");
    assert_eq!(fired.recv_timeout(IO_TIMEOUT).unwrap().1, 9);
    // Past the cancelled timer's moment (100 ms) long ago: it did not fire.
    assert!(fired.try_recv().is_err());
    ada.expect_silence(Duration::from_millis(50));
    // A fired timer cannot be cancelled.
    ask(&mut ada, "cancel", "cancelled:false");
}

#[test]
fn timers_go_with_their_connection_even_when_its_slot_is_reused() {
    let (server, fired) = start(Config::default());
    let mut ada = Raw::open(server.addr);
    ask(&mut ada, "in:150:5", "set");
    ask(&mut ada, "in:60000:6", "set");
    ask(&mut ada, "pending", "pending:2");
    ask(&mut ada, "gauge", "gauge:2");
    ada.close_cleanly();
    drop(ada);
    // The next connection most likely takes ada's slot: her timers must not reach it.
    let mut bob = Raw::open(server.addr);
    wait_until("ada's connection to be gone", || {
        bob.send(true, TEXT, b"pending");
        let reply = bob.read_frame().payload;
        reply == b"pending:0"
    });
    ask(&mut bob, "gauge", "gauge:0");
    ask(&mut bob, "in:300:1", "set");
    bob.expect_echo(TEXT, b"timer:1");
    let (_, token) = fired.recv_timeout(IO_TIMEOUT).unwrap();
    assert_eq!(token, 1, "ada's timer fired after she left");
    assert!(fired.try_recv().is_err());
}

#[test]
fn a_server_level_timer_fires_once_for_the_loop() {
    let (server, fired) = start(Config::default());
    let mut ada = Raw::open(server.addr);
    let mut bob = Raw::open(server.addr);
    ask(&mut ada, "loop:20:3", "loop set");
    // It belongs to the loop, not to ada: it fires even after she has gone.
    ask(&mut ada, "loop:120:4", "loop set");
    ada.expect_echo(TEXT, b"loop:3");
    bob.expect_echo(TEXT, b"loop:3");
    ada.close_cleanly();
    bob.expect_echo(TEXT, b"loop:4");
    assert_eq!(fired.recv_timeout(IO_TIMEOUT).unwrap(), (None, 3));
    assert_eq!(fired.recv_timeout(IO_TIMEOUT).unwrap(), (None, 4));
    ask(&mut bob, "pending", "pending:0");
}

#[test]
fn the_caps_on_pending_timers_are_errors_and_room_comes_back() {
    let config = Config {
        max_timers: 5,
        max_timers_per_connection: 3,
        ..Config::default()
    };
    let (server, _fired) = start(config);
    let mut ada = Raw::open(server.addr);
    let mut bob = Raw::open(server.addr);
    ask(&mut ada, "flood", "3 then TooManyForConnection");
    ask(&mut bob, "flood", "2 then TooMany");
    ask(&mut bob, "loop:10:1", "error: TooMany");
    ask(&mut ada, "cancel", "cancelled:true");
    ask(&mut bob, "in:10:2", "set");
    bob.expect_echo(TEXT, b"timer:2");
    // ada leaving gives back her two.
    ada.close_cleanly();
    drop(ada);
    wait_until("ada's timers to be released", || {
        bob.send(true, TEXT, b"pending");
        bob.read_frame().payload == b"pending:2"
    });
    ask(&mut bob, "loop:10:3", "loop set");
    bob.expect_echo(TEXT, b"loop:3");
}

#[test]
fn a_panicking_timer_closes_its_connection_and_a_server_level_one_is_logged() {
    let (server, fired) = start(Config::default());
    let mut ada = Raw::open(server.addr);
    let mut bob = Raw::open(server.addr);
    ask(&mut ada, &format!("in:10:{PANIC}"), "set");
    ada.expect_close(1011);
    ask(&mut bob, &format!("loop:10:{PANIC}"), "loop set");
    ask(&mut bob, "loop:40:2", "loop set");
    // The loop went on past the panic: the next timer fires.
    bob.expect_echo(TEXT, b"loop:2");
    let reports: Vec<_> = (0..3)
        .map(|_| fired.recv_timeout(IO_TIMEOUT).unwrap().1)
        .collect();
    assert_eq!(reports, [PANIC, PANIC, 2]);
    ask(&mut bob, "in:10:3", "set");
    bob.expect_echo(TEXT, b"timer:3");
}
