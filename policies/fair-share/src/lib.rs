//! Policy `fair-share`: tenants share a channel fairly.
//!
//! A job's tenant is its registration field `tenant` (a string, default
//! `"default"`). Configuration: `policy_config = { max_running_per_tenant = N }`.
//!
//! - Cap: `before_grant` defers a job whose tenant already has N jobs
//!   running, so other tenants' jobs get the free slot. Running counts are
//!   kept from `on_event` (granted +1; finished, aborted, expired -1).
//! - Round-robin: `admit` gives priorities so that tenants alternate in the
//!   queue; see [`Rounds`].

use std::collections::HashMap;

use coordinosaur_policy::serde_json::Value;
use coordinosaur_policy::{
    export_policy, Admission, ChannelState, Decision, Event, EventKind, Job, Policy,
};

/// The registration field naming a job's tenant.
const TENANT_FIELD: &str = "tenant";
/// The tenant of a job without a `tenant` field.
const DEFAULT_TENANT: &str = "default";
/// The one key of `policy_config`.
const CAP_KEY: &str = "max_running_per_tenant";

/// The policy's state for one channel.
#[derive(Default)]
pub struct FairShare {
    /// `max_running_per_tenant`; 0 only before `init`, which then means "no cap".
    cap: u32,
    /// Running jobs per tenant; tenants with none are removed.
    running: HashMap<String, u32>,
    /// The round-robin bookkeeping behind `admit`'s priorities.
    rounds: Rounds,
}

/// Round-robin between tenants through queue priorities, O(1) per call.
///
/// The host's queue grants the highest priority first and is FIFO among
/// equal priorities. Each admitted job gets a *round* and the priority
/// `-round`: a tenant's k-th queued job is in round k (counting from the
/// current round), so it ranks together with the other tenants' k-th jobs,
/// and FIFO among them. The queue then reads A1 B1 C1 A2 B2 A3 ... whatever
/// order the jobs registered in: tenants alternate and a tenant that
/// registers 100 jobs at once does not starve one that registers 1.
///
/// Plain "rounds = jobs admitted so far per tenant" would punish history: a
/// tenant that ran 1000 jobs yesterday would queue behind a newcomer's 999
/// jobs today. So rounds are relative to a *current round* (the highest
/// round granted so far): a tenant's next job gets round
/// `max(its next round, current round)`, so an idle tenant rejoins at the
/// current round, neither ahead of nor behind the others.
#[derive(Default)]
pub struct Rounds {
    /// The round a tenant's next job gets, unless the current round is higher.
    next: HashMap<String, u64>,
    /// The round of each admitted job that has not been granted or cancelled yet.
    waiting: HashMap<String, u64>,
    /// The highest round granted so far.
    current: u64,
}

impl Rounds {
    /// The round of a newly admitted job of `tenant` with uid `uid`.
    pub fn admit(&mut self, tenant: &str, uid: &str) -> u64 {
        let next = self.next.entry(tenant.to_owned()).or_insert(0);
        let round = (*next).max(self.current);
        *next = round + 1;
        self.waiting.insert(uid.to_owned(), round);
        round
    }

    /// The job `uid` was granted: the current round catches up with it.
    pub fn granted(&mut self, uid: &str) {
        if let Some(round) = self.waiting.remove(uid) {
            self.current = self.current.max(round);
        }
    }

    /// The job `uid` left the queue without being granted.
    pub fn cancelled(&mut self, uid: &str) {
        self.waiting.remove(uid);
    }
}

/// The priority of a job in `round`: later rounds rank lower.
fn priority_of(round: u64) -> i64 {
    i64::try_from(round).map_or(i64::MIN, |r| -r)
}

/// `job`'s tenant, or the reason it has none.
fn tenant(job: &Job) -> Result<String, String> {
    match job.meta_str(TENANT_FIELD) {
        Ok(tenant) => Ok(tenant.unwrap_or_else(|| DEFAULT_TENANT.to_owned())),
        Err(err) => Err(err.to_string()),
    }
}

/// `job`'s tenant for the hooks after `admit`, which only see admitted jobs.
fn admitted_tenant(job: &Job) -> String {
    tenant(job).unwrap_or_else(|_| DEFAULT_TENANT.to_owned())
}

/// `max_running_per_tenant` from `policy_config`.
pub fn parse_config(config: &Value) -> Result<u32, String> {
    let Value::Object(map) = config else {
        return Err(format!("policy_config must be a table, got {config}"));
    };
    if let Some(key) = map.keys().find(|k| *k != CAP_KEY) {
        return Err(format!(
            "unknown key {key:?} in policy_config (expected {CAP_KEY})"
        ));
    }
    let value = map
        .get(CAP_KEY)
        .ok_or_else(|| format!("{CAP_KEY} is required"))?;
    value
        .as_u64()
        .filter(|n| *n > 0)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("{CAP_KEY} must be a positive integer, got {value}"))
}

impl FairShare {
    /// Jobs of `tenant` running now, as counted from events.
    pub fn running(&self, tenant: &str) -> u32 {
        self.running.get(tenant).copied().unwrap_or(0)
    }

    fn job_started(&mut self, tenant: String) {
        *self.running.entry(tenant).or_insert(0) += 1;
    }

    /// Saturating: an end whose start this instance never saw (it was
    /// reloaded meanwhile) must not underflow.
    fn job_ended(&mut self, tenant: &str) {
        if let Some(n) = self.running.get_mut(tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(tenant);
            }
        }
    }
}

impl Policy for FairShare {
    fn init(&mut self, config: &Value) -> Result<(), String> {
        self.cap = parse_config(config)?;
        coordinosaur_policy::info!("fair-share: at most {} running jobs per tenant", self.cap);
        Ok(())
    }

    fn admit(&mut self, job: &Job, _state: &ChannelState) -> Admission {
        match tenant(job) {
            Ok(tenant) => Admission::Accept(priority_of(self.rounds.admit(&tenant, &job.uid))),
            Err(reason) => Admission::Reject(reason),
        }
    }

    fn before_grant(&mut self, job: &Job, _state: &ChannelState) -> Decision {
        if self.cap > 0 && self.running(&admitted_tenant(job)) >= self.cap {
            Decision::Defer
        } else {
            Decision::Grant
        }
    }

    fn on_event(&mut self, event: &Event, _state: &ChannelState) {
        let job = &event.job;
        match event.kind {
            EventKind::Granted => {
                self.rounds.granted(&job.uid);
                self.job_started(admitted_tenant(job));
            }
            EventKind::Finished | EventKind::Aborted | EventKind::Expired => {
                self.job_ended(&admitted_tenant(job));
            }
            EventKind::Cancelled => self.rounds.cancelled(&job.uid),
        }
    }
}

export_policy!(FairShare);

#[cfg(test)]
mod tests;
