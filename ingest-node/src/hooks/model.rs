//! What a media server's hook means to the sidecar, whatever server sent
//! it, and what the sidecar answers; each server's module translates its
//! own requests and answers to and from these.

/// One hook call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// A publisher wants to start `broadcast`: allow only once claimed.
    Publish { broadcast: String, client: String },
    /// The media server's own relay (pulling from the owner) publishes
    /// `broadcast` locally: allowed, never claimed.
    Relay { broadcast: String },
    /// A publish naming the sidecar's relay parameter (`query`): the
    /// sidecar's own relay if the token in it is this sidecar's, else an
    /// ordinary publish.
    Relayed {
        broadcast: String,
        client: String,
        query: String,
    },
    /// A player waits for `broadcast`, which nobody publishes here
    /// (MediaMTX's `runOnDemand`).
    Demand { broadcast: String },
    /// The publisher is still there (a periodic update).
    Update { broadcast: String, client: String },
    /// The publisher ended.
    PublishDone { broadcast: String, client: String },
    /// A viewer wants to play `broadcast`.
    Play { broadcast: String },
    /// A notice the server does not wait on (a viewer leaving): nothing to
    /// decide, answered yes.
    Notice { what: String },
    /// A question the sidecar does not decide (MediaMTX's `api`,
    /// `metrics`, `pprof`, `playback`, a connect, an action it does not
    /// know): refused, never waved through. The README says which actions
    /// to leave out of each server's hooks.
    Undecided { what: String },
}

/// The sidecar's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Allow,
    /// Refused, saying why (for a broadcast owned elsewhere: the owner).
    Refuse {
        reason: String,
    },
    /// Play it from the owner: its RTMP URL of the broadcast.
    Redirect {
        location: String,
    },
    /// Nobody owns it.
    NotFound {
        reason: String,
    },
    /// The request itself is wrong (unparsable, a bad name, a bad
    /// signature): nothing changed.
    Bad {
        reason: String,
    },
}
