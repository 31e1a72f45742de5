//! Sessions: the pure state machine ([`machine`]), the registry of live sessions and recent
//! webhooks ([`registry`]), and the task that drives one session's two sockets ([`task`]).

pub mod buffer;
pub mod cache;
pub mod machine;
pub mod registry;
pub mod task;
