//! Broadcast Claims coordinator.
//!
//! Ingest nodes attach over `ClaimSessions.Attach` and stream the lifecycle of
//! their broadcasters; this service turns it into etcd claims (one lease per
//! node session, carrying its record and every claim it makes) and answers
//! who owns what through `Ownership`.
//!
//! - [`claims`]: the claim rules, a pure state machine per node session;
//! - [`store`]: the one door to etcd (layout, claim transaction, release,
//!   revoke, keep-alive, watch);
//! - [`intake`]: what one node message means (event, refusal, or protocol
//!   error), decided without I/O;
//! - [`attach`]: `ClaimSessions.Attach` and its handshake; [`session`]: the
//!   async shell that drives a session's state machine; [`sessions`]: what
//!   every session shares, and the registry of attached sessions;
//! - [`view`]: the watch-fed in-memory view of every claim and node;
//! - [`ownership`]: the read API, mostly over that view; [`watchers`]: its
//!   `WatchClaims` streams and their limits; [`admin`]: the operators' API;
//! - [`server`]: the gRPC server, reflection, metrics and shutdown;
//!   [`health`]: liveness and readiness, and who hears them; [`ui`]: the
//!   live ownership page;
//!   [`rpc`]: the layer every RPC goes through (metrics, time limit);
//! - [`access`]: who may do what (node identity from mTLS, admin and read
//!   credentials);
//! - [`config`], [`names`], [`metrics`], [`error`], [`wire`],
//!   [`log_budget`], [`retry`]: the edges.

pub mod access;
pub mod admin;
pub mod attach;
pub mod claims;
pub mod config;
pub mod error;
pub mod health;
pub mod intake;
pub mod log_budget;
pub mod metrics;
pub use claims_proto::names;
pub mod ownership;
pub mod replica;
pub mod retry;
pub mod rpc;
pub mod server;
pub mod session;
pub mod sessions;
pub mod spread;
pub mod store;
pub mod ui;
pub mod view;
pub mod watchers;
pub mod wire;
