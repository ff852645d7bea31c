//! The daemon's clock: the only place that reads the time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::engine::Time;

/// Engine time: the wall clock at start-up plus monotonic time elapsed since, so leases mean
/// the same after a restart and paused-time tests still drive it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_at_start: u64,
    start: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            wall_at_start: u64::try_from(wall.as_millis()).unwrap_or(u64::MAX),
            start: Instant::now(),
        }
    }

    /// The current engine time.
    pub fn now(&self) -> Time {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        Time(self.wall_at_start.saturating_add(elapsed))
    }

    /// The current instant (the runtime's clock, paused in tests), for deadlines kept outside
    /// engine time (the journal's).
    pub fn instant(&self) -> Instant {
        Instant::now()
    }

    /// The instant at which engine time reaches `t`.
    pub fn instant_of(&self, t: Time) -> Instant {
        self.start + Duration::from_millis(t.0.saturating_sub(self.wall_at_start))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
