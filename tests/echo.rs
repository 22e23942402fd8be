//! Echo behaviour as seen by a real third-party client (tungstenite, blocking, over a
//! std `TcpStream`): message sizes at every length-encoding boundary up to the default
//! `max_message_size`, fragmentation, ping/pong, the close handshake, subprotocols and
//! many concurrent connections.

mod common;

use common::{start_default, tcp, text_of_len};
use std::borrow::Cow;
use std::net::{SocketAddr, TcpStream};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Response;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Error, Message, WebSocket};

/// The default `Config::max_message_size`.
const MAX_MESSAGE: usize = 16 << 20;

/// Boundary sizes: the 7-bit, 16-bit and 64-bit length encodings and the limit itself.
const SIZES: [usize; 7] = [0, 125, 126, 65535, 65536, 1 << 20, MAX_MESSAGE];

type Ws = WebSocket<TcpStream>;

fn connect_with(addr: SocketAddr, protocols: Option<&str>) -> (Ws, Response) {
    let mut request = format!("ws://{addr}/echo").into_client_request().unwrap();
    if let Some(protocols) = protocols {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    }
    let config = WebSocketConfig {
        max_message_size: Some(64 << 20),
        max_frame_size: Some(64 << 20),
        ..WebSocketConfig::default()
    };
    tungstenite::client::client_with_config(request, tcp(addr), Some(config))
        .unwrap_or_else(|e| panic!("handshake failed: {e}"))
}

fn connect(addr: SocketAddr) -> Ws {
    connect_with(addr, None).0
}

/// Reads the next message, skipping nothing: the server must send only what we expect.
fn read(ws: &mut Ws) -> Message {
    ws.read().unwrap_or_else(|e| panic!("read failed: {e}"))
}

/// Closes with 1000 and checks the server's echoed close and the end of the TCP stream.
fn close_normally(mut ws: Ws) {
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: Cow::Borrowed("done"),
    }))
    .unwrap();
    match read(&mut ws) {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the server's close, got {other:?}"),
    }
    match ws.read() {
        Err(Error::ConnectionClosed) => {}
        other => panic!("expected the server to end TCP after the close, got {other:?}"),
    }
}

#[test]
fn text_echo_at_boundary_sizes() {
    let (addr, _) = start_default();
    let mut ws = connect(addr);
    for size in SIZES {
        let text = text_of_len(size);
        ws.send(Message::Text(text.clone())).unwrap();
        match read(&mut ws) {
            Message::Text(echo) => {
                assert_eq!(echo.len(), size, "echo length for {size}");
                assert!(echo == text, "text echo of {size} bytes differs");
            }
            other => panic!("size {size}: expected text, got {:?}", short(&other)),
        }
    }
    close_normally(ws);
}

#[test]
fn binary_echo_at_boundary_sizes() {
    let (addr, _) = start_default();
    let mut ws = connect(addr);
    for size in SIZES {
        let bytes = common::pattern(size as u64, size);
        ws.send(Message::Binary(bytes.clone())).unwrap();
        match read(&mut ws) {
            Message::Binary(echo) => {
                assert_eq!(echo.len(), size, "echo length for {size}");
                assert!(echo == bytes, "binary echo of {size} bytes differs");
            }
            other => panic!("size {size}: expected binary, got {:?}", short(&other)),
        }
    }
    close_normally(ws);
}

#[test]
fn message_of_exactly_max_message_size_in_fragments_is_echoed_whole() {
    let (addr, _) = start_default();
    let mut ws = connect(addr);
    let bytes = common::pattern(7, MAX_MESSAGE);
    let pieces: Vec<&[u8]> = bytes.chunks(MAX_MESSAGE / 3 + 1).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(piece.to_vec(), opcode, i == pieces.len() - 1);
        ws.write(Message::Frame(frame)).unwrap();
    }
    ws.flush().unwrap();
    match read(&mut ws) {
        Message::Binary(echo) => assert!(echo == bytes, "fragmented 16 MiB echo differs"),
        other => panic!("expected binary, got {:?}", short(&other)),
    }
    close_normally(ws);
}

#[test]
fn fragmented_text_with_interleaved_ping_is_echoed_whole() {
    let (addr, _) = start_default();
    let mut ws = connect(addr);
    // "κόσμε" split inside a two-byte code point, then an empty fragment, then the rest;
    // a ping between fragments is answered without disturbing the message.
    let text = "hello κόσμε 𝄞 world";
    let bytes = text.as_bytes();
    let cut = "hello κ".len() - 1;
    let frames = [
        Frame::message(bytes[..cut].to_vec(), OpCode::Data(Data::Text), false),
        Frame::message(Vec::new(), OpCode::Data(Data::Continue), false),
        Frame::ping(b"between".to_vec()),
        Frame::message(bytes[cut..].to_vec(), OpCode::Data(Data::Continue), true),
    ];
    for frame in frames {
        ws.write(Message::Frame(frame)).unwrap();
    }
    ws.flush().unwrap();
    match read(&mut ws) {
        Message::Pong(payload) => assert_eq!(payload, b"between"),
        other => panic!("expected the pong first, got {other:?}"),
    }
    match read(&mut ws) {
        Message::Text(echo) => assert_eq!(echo, text),
        other => panic!("expected the whole text, got {other:?}"),
    }
    close_normally(ws);
}

#[test]
fn ping_is_answered_with_pong_carrying_the_same_payload() {
    let (addr, _) = start_default();
    let mut ws = connect(addr);
    for payload in [Vec::new(), b"are you there?".to_vec(), vec![0xA5; 125]] {
        ws.send(Message::Ping(payload.clone())).unwrap();
        match read(&mut ws) {
            Message::Pong(echo) => assert_eq!(echo, payload),
            other => panic!("expected pong, got {other:?}"),
        }
    }
    // Unsolicited pongs are ignored: the next thing back is the echo, nothing else.
    ws.send(Message::Pong(b"heartbeat".to_vec())).unwrap();
    ws.send(Message::Text("after pong".into())).unwrap();
    assert_eq!(read(&mut ws), Message::Text("after pong".into()));
    close_normally(ws);
}

#[test]
fn close_1000_with_reason_is_answered_with_1000_and_tcp_ends() {
    let (addr, seen) = start_default();
    let mut ws = connect(addr);
    ws.send(Message::Text("before close".into())).unwrap();
    assert_eq!(read(&mut ws), Message::Text("before close".into()));
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: Cow::Borrowed("bye now"),
    }))
    .unwrap();
    match read(&mut ws) {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected close 1000, got {other:?}"),
    }
    match ws.read() {
        Err(Error::ConnectionClosed) => {}
        other => panic!("expected the server to end TCP, got {other:?}"),
    }
    let closes = seen.wait_for_closes(1);
    assert_eq!(
        closes,
        [wsreactor::CloseReason::Peer {
            code: wsreactor::CloseCode::NORMAL,
            reason: "bye now".into()
        }]
    );
}

#[test]
fn close_without_code_is_answered_with_empty_close() {
    let (addr, seen) = start_default();
    let mut ws = connect(addr);
    ws.close(None).unwrap();
    match read(&mut ws) {
        Message::Close(None) => {}
        other => panic!("expected an empty close, got {other:?}"),
    }
    match ws.read() {
        Err(Error::ConnectionClosed) => {}
        other => panic!("expected the server to end TCP, got {other:?}"),
    }
    let closes = seen.wait_for_closes(1);
    assert_eq!(closes[0].code(), wsreactor::CloseCode::NO_STATUS);
}

#[test]
fn subprotocol_chat_is_selected_when_offered() {
    let (addr, seen) = start_default();
    let (mut ws, response) = connect_with(addr, Some("superchat,chat"));
    assert_eq!(response.status(), 101);
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap()),
        Some("chat")
    );
    ws.send(Message::Text("hi".into())).unwrap();
    assert_eq!(read(&mut ws), Message::Text("hi".into()));
    assert_eq!(
        *seen.protocols.lock().unwrap(),
        [Some("chat".to_owned())],
        "Ctx::protocol() in on_open"
    );
    close_normally(ws);
}

#[test]
fn no_subprotocol_header_when_none_offered() {
    let (addr, seen) = start_default();
    let (mut ws, response) = connect_with(addr, None);
    assert!(response.headers().get("Sec-WebSocket-Protocol").is_none());
    ws.send(Message::Text("hi".into())).unwrap();
    assert_eq!(read(&mut ws), Message::Text("hi".into()));
    assert_eq!(*seen.protocols.lock().unwrap(), [None]);
    close_normally(ws);
}

#[test]
fn many_concurrent_connections_each_get_their_own_echoes() {
    const CLIENTS: usize = 48;
    const ROUNDS: usize = 20;
    let (addr, seen) = start_default();
    // Every connection is open before any of them sends: the server juggles them all.
    let sockets: Vec<Ws> = (0..CLIENTS).map(|_| connect(addr)).collect();
    let threads: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(client, mut ws)| {
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    let text = format!("client {client} round {round}");
                    let bytes = common::pattern((client * 1000 + round) as u64, 100 + round * 700);
                    ws.write(Message::Text(text.clone())).unwrap();
                    ws.write(Message::Binary(bytes.clone())).unwrap();
                    ws.flush().unwrap();
                    assert_eq!(read(&mut ws), Message::Text(text));
                    assert_eq!(read(&mut ws), Message::Binary(bytes));
                }
                close_normally(ws);
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread failed");
    }
    assert_eq!(
        seen.messages.load(std::sync::atomic::Ordering::SeqCst),
        CLIENTS * ROUNDS * 2
    );
    assert_eq!(seen.wait_for_closes(CLIENTS).len(), CLIENTS);
}

/// A message described without dumping megabytes into a panic message.
fn short(message: &Message) -> String {
    match message {
        Message::Text(t) => format!("Text({} bytes)", t.len()),
        Message::Binary(b) => format!("Binary({} bytes)", b.len()),
        other => format!("{other:?}"),
    }
}
