//! Spreading node sessions over the replicas, and draining a replica: the
//! flags, checked.

use std::time::Duration;

use super::duration;

const HEADING: &str = "Spreading sessions and draining";

/// Whether a replica moves sessions to less loaded replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Spread {
    On,
    Off,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SpreadConfig {
    /// Move node sessions from this replica to a less loaded one (the node
    /// attaches there and its claims are adopted: tokens kept, nothing
    /// released). Off: sessions stay where they attach; draining still
    /// moves them.
    #[arg(long, env = "CLAIMS_SPREAD", help_heading = HEADING, value_enum, default_value = "on")]
    pub spread: Spread,

    /// Sessions this replica may hold beyond the least loaded live replica
    /// before it moves one there. At least 1: a move then always narrows
    /// the gap, so no node is moved back and forth.
    #[arg(long, env = "CLAIMS_SPREAD_SLACK", help_heading = HEADING, default_value_t = 2)]
    pub spread_slack: usize,

    /// Sessions moved away per --spread-interval at most, so that a
    /// replica that just started is not flooded.
    #[arg(long, env = "CLAIMS_SPREAD_MOVES", help_heading = HEADING, default_value_t = 2)]
    pub spread_moves: usize,

    /// How often the replicas' loads are compared.
    #[arg(long, env = "CLAIMS_SPREAD_INTERVAL", help_heading = HEADING, default_value = "1s", value_parser = duration)]
    pub spread_interval: Duration,

    /// A session attached more recently than this is never moved to
    /// spread the load (draining moves every session).
    #[arg(long, env = "CLAIMS_SPREAD_MIN_AGE", help_heading = HEADING, default_value = "30s", value_parser = duration)]
    pub spread_min_age: Duration,

    /// The address nodes reach this replica at (one of their
    /// --claim-service URLs): replicas moving a session send its node here.
    /// Unset: a moved node attaches to the next address it knows.
    #[arg(long, env = "CLAIMS_ADVERTISE", help_heading = HEADING, default_value = "")]
    pub advertise: String,

    /// On SIGTERM, how long the replica moves its sessions away before it
    /// stops anyway (what is left is adopted as after a crash).
    #[arg(long, env = "CLAIMS_DRAIN_TIMEOUT", help_heading = HEADING, default_value = "15s", value_parser = duration)]
    pub drain_timeout: Duration,
}

impl SpreadConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.spread_slack == 0 {
            return Err(
                "--spread-slack 0 would move a node back and forth between two replicas; use 1 or more"
                    .into(),
            );
        }
        if self.spread_moves == 0 || self.spread_interval.is_zero() {
            return Err(
                "--spread-moves and --spread-interval must be above zero (turn spreading off with --spread off)"
                    .into(),
            );
        }
        let url = self.advertise.starts_with("http://") || self.advertise.starts_with("https://");
        if !(self.advertise.is_empty() || url) {
            return Err(format!(
                "--advertise {:?} must be a URL nodes use, like http://claims-a:50051",
                self.advertise
            ));
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.spread == Spread::On
    }
}
