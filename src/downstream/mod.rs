//! The app side: the local listener the app's SDK connects to as its "cloud" ([`listener`]),
//! and the reverse proxy that carries public traffic to the app server ([`proxy`]).

pub mod health;
pub mod listener;
pub mod proxy;
