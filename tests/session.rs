//! Sessions end to end: a session type without `Default` (built from the request,
//! handed back by value to `on_close`), the default `on_request` refusing when it has
//! no session to accept with, and `Ctx::with_session`, the split borrow that lets a
//! handler use a session field while it calls the `Ctx` (subscribe to the topic a
//! session names, without a clone).

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Sender};
use tungstenite::Message as WsMessage;
use wsreactor::{CloseReason, Config, ConnId, Ctx, Decision, Handler, Message, Request};

/// A session with no sensible default: a player exists only with a name.
#[derive(Debug, PartialEq)]
struct Player {
    name: String,
    room: String,
    said: u32,
}

impl wsreactor::Session for Player {}

/// Builds each `Player` from the query (`?ada`); `join:<room>` moves it to a room
/// (a topic), `say:<text>` publishes to its room, `boom` panics inside
/// `with_session`; any other text is answered with the player's name.
struct Game {
    closes: Sender<(Player, CloseReason)>,
}

impl Handler for Game {
    type Session = Player;

    fn on_request(&mut self, request: &Request<'_>, _peer: SocketAddr) -> Decision<Player> {
        Decision::accept_with(Player {
            name: request.query().unwrap_or("nobody").to_owned(),
            room: String::new(),
            said: 0,
        })
    }

    fn on_message(&mut self, cx: &mut Ctx<'_, Player>, message: Message<'_>) {
        let Message::Text(text) = message else {
            return;
        };
        cx.session().said += 1;
        if let Some(room) = text.strip_prefix("join:") {
            // The split borrow: the room's name lives in the session, and is used
            // (twice) while the Ctx is borrowed for subscribe/unsubscribe.
            cx.with_session(|player, cx| {
                if !player.room.is_empty() {
                    assert!(cx.unsubscribe(&player.room));
                }
                player.room = room.to_owned();
                assert!(cx.subscribe(&player.room));
                let _ = cx.send_text(&format!("{} joined {}", player.name, player.room));
            });
        } else if let Some(said) = text.strip_prefix("say:") {
            let said = cx.with_session(|player, cx| {
                let line = format!("{}: {said}", player.name);
                cx.publish(&player.room, Message::Text(&line))
            });
            assert_eq!(said.refused, 0);
        } else if text == "boom" {
            cx.with_session(|player, _cx| {
                player.name.push_str(" (panicked)");
                panic!("a handler bug inside with_session");
            });
        } else {
            let name = cx.session().name.clone();
            let _ = cx.send_text(&name);
        }
    }

    fn on_close(&mut self, _id: ConnId, session: Player, reason: &CloseReason) {
        let _ = self.closes.send((session, reason.clone()));
    }
}

fn text(reply: WsMessage) -> String {
    match reply {
        WsMessage::Text(text) => text.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

#[test]
fn a_session_without_default_is_built_at_the_upgrade_and_handed_back_at_close() {
    let (closes, closed) = mpsc::channel();
    let server = spawn_server(Config::default(), Game { closes });
    let (mut ada, _) = tungstenite::connect(format!("ws://{}/?ada", server.addr)).unwrap();
    ada.send(WsMessage::text("who")).unwrap();
    assert_eq!(text(ada.read().unwrap()), "ada");
    ada.send(WsMessage::text("who")).unwrap();
    assert_eq!(text(ada.read().unwrap()), "ada");
    ada.close(None).unwrap();
    let (player, reason) = closed.recv_timeout(IO_TIMEOUT).unwrap();
    assert_eq!(
        player,
        Player {
            name: "ada".into(),
            room: String::new(),
            said: 2
        }
    );
    assert!(matches!(reason, CloseReason::Peer { .. }), "{reason:?}");
}

#[test]
fn with_session_subscribes_to_the_room_a_session_names() {
    let (closes, _closed) = mpsc::channel();
    let server = spawn_server(Config::default(), Game { closes });
    let connect = |name: &str| {
        let (socket, _) = tungstenite::connect(format!("ws://{}/?{name}", server.addr)).unwrap();
        socket
    };
    let (mut ada, mut bob, mut eve) = (connect("ada"), connect("bob"), connect("eve"));
    for (client, name, room) in [
        (&mut ada, "ada", "red"),
        (&mut bob, "bob", "blue"),
        (&mut eve, "eve", "red"),
    ] {
        client
            .send(WsMessage::text(format!("join:{room}")))
            .unwrap();
        assert_eq!(
            text(client.read().unwrap()),
            format!("{name} joined {room}")
        );
    }
    ada.send(WsMessage::text("say:hi")).unwrap();
    assert_eq!(text(ada.read().unwrap()), "ada: hi");
    assert_eq!(text(eve.read().unwrap()), "ada: hi");
    // bob is in another room; moving him unsubscribes him from it.
    bob.send(WsMessage::text("join:red")).unwrap();
    assert_eq!(text(bob.read().unwrap()), "bob joined red");
    bob.send(WsMessage::text("say:here")).unwrap();
    for client in [&mut ada, &mut bob, &mut eve] {
        assert_eq!(text(client.read().unwrap()), "bob: here");
    }
    eve.send(WsMessage::text("join:blue")).unwrap();
    assert_eq!(text(eve.read().unwrap()), "eve joined blue");
    ada.send(WsMessage::text("say:bye")).unwrap();
    assert_eq!(text(ada.read().unwrap()), "ada: bye");
    assert_eq!(text(bob.read().unwrap()), "ada: bye");
    // eve left red: what reaches her next is her own room's traffic, not ada's.
    eve.send(WsMessage::text("say:blue only")).unwrap();
    assert_eq!(text(eve.read().unwrap()), "eve: blue only");
}

#[test]
fn a_panic_inside_with_session_closes_1011_and_the_session_comes_back() {
    let (closes, closed) = mpsc::channel();
    let server = spawn_server(Config::default(), Game { closes });
    let mut raw = Raw::connect(server.addr);
    raw.write(upgrade_request("/?ada", RFC_KEY, "").as_bytes());
    assert_eq!(raw.read_http().status, 101);
    raw.send(true, TEXT, b"boom");
    raw.expect_close(1011);
    let (player, reason) = closed.recv_timeout(IO_TIMEOUT).unwrap();
    assert_eq!(reason, CloseReason::HandlerPanic);
    // What the closure did to the session before it panicked is kept.
    assert_eq!(player.name, "ada (panicked)");
    assert_eq!(player.said, 1);
    // The loop goes on.
    let (mut bob, _) = tungstenite::connect(format!("ws://{}/?bob", server.addr)).unwrap();
    bob.send(WsMessage::text("who")).unwrap();
    assert_eq!(text(bob.read().unwrap()), "bob");
}

/// A handler whose session has no default and that does not build one.
struct Forgetful;

impl Handler for Forgetful {
    type Session = Player;
    fn on_message(&mut self, _cx: &mut Ctx<'_, Player>, _message: Message<'_>) {}
}

#[test]
fn the_default_on_request_refuses_with_500_when_the_session_has_no_default() {
    let server = spawn_server(Config::default(), Forgetful);
    let mut raw = Raw::connect(server.addr);
    raw.write(upgrade_request("/", RFC_KEY, "").as_bytes());
    assert_eq!(raw.read_http().status, 500);
}
