//! wsreactor
pub mod proto;
