//! Policy `deny`: reject the jobs of listed tenants.
//!
//! Configuration: `policy_config = { tenants = ["evil", ...] }`. A job whose
//! registration field `tenant` is listed is rejected with
//! `tenant "evil" is denied by policy`; every other job is accepted at
//! priority 0 (plain FIFO), including jobs without a `tenant`.

use std::collections::HashSet;

use coordinosaur_policy::serde_json::Value;
use coordinosaur_policy::{export_policy, Admission, ChannelState, Hooks, Job, Policy};

/// The one key of `policy_config`.
const TENANTS_KEY: &str = "tenants";

/// The denied tenants of one channel.
#[derive(Default)]
pub struct Deny {
    /// Tenants whose jobs are rejected; empty before `init`.
    denied: HashSet<String>,
}

/// The denied tenants listed in `policy_config`.
pub fn parse_config(config: &Value) -> Result<HashSet<String>, String> {
    let Value::Object(map) = config else {
        return Err(format!("policy_config must be a table, got {config}"));
    };
    if let Some(key) = map.keys().find(|k| *k != TENANTS_KEY) {
        return Err(format!(
            "unknown key {key:?} in policy_config (expected {TENANTS_KEY})"
        ));
    }
    let list = map
        .get(TENANTS_KEY)
        .ok_or_else(|| format!("{TENANTS_KEY} is required"))?;
    let not_strings = || format!("{TENANTS_KEY} must be a list of strings, got {list}");
    list.as_array()
        .ok_or_else(not_strings)?
        .iter()
        .map(|t| t.as_str().map(str::to_owned).ok_or_else(not_strings))
        .collect()
}

impl Policy for Deny {
    /// Only `admit` decides; the host skips the other calls.
    const HOOKS: Hooks = Hooks::ADMIT;

    fn init(&mut self, config: &Value) -> Result<(), String> {
        self.denied = parse_config(config)?;
        Ok(())
    }

    fn admit(&mut self, job: &Job, _state: &ChannelState) -> Admission {
        match job.meta_str("tenant") {
            Ok(Some(tenant)) if self.denied.contains(&tenant) => {
                coordinosaur_policy::debug!("deny: rejecting {} of tenant {tenant:?}", job.uid);
                Admission::Reject(format!("tenant {tenant:?} is denied by policy"))
            }
            _ => Admission::Accept(0),
        }
    }
}

export_policy!(Deny);

#[cfg(test)]
mod tests {
    use coordinosaur_policy::serde_json::json;

    use super::*;

    fn configured(config: Value) -> Deny {
        let mut policy = Deny::default();
        policy.init(&config).unwrap();
        policy
    }

    fn admit(policy: &mut Deny, meta: &str) -> Admission {
        policy.admit(&Job::new("j", meta), &ChannelState::default())
    }

    #[test]
    fn listed_tenants_are_rejected_with_their_name() {
        let mut policy = configured(json!({ "tenants": ["evil", "worse"] }));
        assert_eq!(
            admit(&mut policy, r#"{"tenant":"evil"}"#),
            Admission::Reject(r#"tenant "evil" is denied by policy"#.to_owned())
        );
        assert!(matches!(
            admit(&mut policy, r#"{"tenant":"worse"}"#),
            Admission::Reject(_)
        ));
    }

    #[test]
    fn everyone_else_is_accepted_at_zero() {
        let mut policy = configured(json!({ "tenants": ["evil"] }));
        for meta in [
            r#"{"tenant":"acme"}"#,
            "{}",
            r#"{"tenant":7}"#,
            r#"{"tenant":"Evil"}"#,
        ] {
            assert_eq!(admit(&mut policy, meta), Admission::Accept(0), "{meta}");
        }
        let mut empty = configured(json!({ "tenants": [] }));
        assert_eq!(
            admit(&mut empty, r#"{"tenant":"evil"}"#),
            Admission::Accept(0)
        );
    }

    #[test]
    fn config_needs_a_list_of_strings() {
        assert_eq!(
            parse_config(&json!({})),
            Err("tenants is required".to_owned())
        );
        assert!(parse_config(&json!({ "tenants": "evil" })).is_err());
        assert!(parse_config(&json!({ "tenants": ["evil", 1] })).is_err());
        assert!(parse_config(&json!({ "tenants": [], "typo": 1 })).is_err());
    }
}
