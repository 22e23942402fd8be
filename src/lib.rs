//! wsreactor
pub mod config;
mod conn;
pub mod handler;
pub mod proto;
mod reactor;

pub use config::Config;
pub use handler::{CloseReason, ConnId, Ctx, Decision, Handler, SendStatus};
pub use proto::handshake::Request;
pub use proto::http::{HttpResponse, StatusCode};
pub use proto::{CloseCode, Message};
pub use reactor::{serve, Server};
