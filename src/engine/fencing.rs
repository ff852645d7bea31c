//! Fencing tokens: every grant gets a number, strictly increasing per channel (also across
//! restarts), that the worker can hand to whatever it writes to. A downstream store that keeps the
//! highest token it has seen refuses a write carrying a lower one, so a holder whose lease already
//! ended cannot overwrite its successor's work. The engine also uses the token itself: a
//! `finished`, `aborted` or `renew` carrying a token other than the live grant's is ignored.

use serde::{Deserialize, Serialize};

/// How a job's `go` is published. Chosen at `register` (`"reply": "json"`), kept with the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Reply {
    /// As the original protocol: the payload is the uid.
    #[default]
    Plain,
    /// A JSON object with the uid, the fencing token and the lease.
    Json,
}

/// The request a stale token came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleAction {
    /// `finished`.
    Finished,
    /// `aborted`.
    Aborted,
    /// `renew` (also answered with `rejected/{uid}`).
    Renew,
}

impl StaleAction {
    /// The topic's action level.
    pub fn as_str(self) -> &'static str {
        match self {
            StaleAction::Finished => "finished",
            StaleAction::Aborted => "aborted",
            StaleAction::Renew => "renew",
        }
    }
}

/// A running job as listed in `state` (`running_jobs`), in lease order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunningJob {
    /// Job id.
    pub uid: String,
    /// The grant's fencing token (0 for a grant journaled before tokens existed).
    pub token: u64,
    /// When the lease ends (ms since the Unix epoch).
    pub deadline: u64,
    /// The units it holds ([job cost](crate::engine::Registration::cost)); left out of the
    /// JSON when 1.
    #[serde(skip_serializing_if = "is_one")]
    pub cost: u32,
}

fn is_one(cost: &u32) -> bool {
    *cost == 1
}
