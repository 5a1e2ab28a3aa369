//! Broadcast Claims ingest node.
//!
//! The library half is what another ingest server can embed without the
//! RTMP front end:
//! - [`registry`]: the live `(broadcast, track)` broadcasters, reporting
//!   created / closed;
//! - [`bridge`]: one claim-service session fed by the registry, exposing the
//!   claim state of each broadcast;
//! - [`gate`]: whether a publisher may start and what it is told, for every
//!   front end.
//!
//! The rest is this node's own front end: [`rtmp`] ingest, [`relay`] of an
//! owner's stream into a media server, [`media`] fan-out
//! and [`flv`] muxing, [`http`] playback and redirects, assembled by [`node`].

pub mod bridge;
pub mod config;
pub mod error;
pub mod flv;
pub mod gate;
pub mod hooks;
pub mod http;
pub mod layers;
pub mod lookup;
pub mod media;
pub mod metrics;
pub mod node;
pub mod owners;
pub mod registry;
pub mod relay;
pub mod rtmp;
