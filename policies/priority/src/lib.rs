//! Policy `priority`: a job's queue priority is its registration field
//! `priority` (an integer, default 0; higher is granted first, FIFO among
//! equals). A `priority` that is not an integer rejects the job.
//!
//! `{"uid":"a","timeout":30,"priority":5}` -> accepted at 5;
//! `{"uid":"b","timeout":30}` -> accepted at 0;
//! `{"uid":"c","timeout":30,"priority":"high"}` -> rejected:
//! `field "priority" must be an integer, got "high"`.

use coordinosaur_policy::{export_policy, Admission, ChannelState, Hooks, Job, Policy};

/// The registration field read by this policy.
const FIELD: &str = "priority";

/// Stateless: everything comes from the job.
#[derive(Default)]
pub struct PriorityField;

/// The admission for `job`: its `priority` field, 0 if absent.
pub fn admission(job: &Job) -> Admission {
    match job.meta_i64(FIELD) {
        Ok(priority) => Admission::Accept(priority.unwrap_or(0)),
        Err(err) => Admission::Reject(err.to_string()),
    }
}

impl Policy for PriorityField {
    /// Only `admit`: the host skips the other three calls per job.
    const HOOKS: Hooks = Hooks::ADMIT;

    fn admit(&mut self, job: &Job, _state: &ChannelState) -> Admission {
        admission(job)
    }
}

export_policy!(PriorityField);

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(meta: &str) -> Admission {
        PriorityField.admit(&Job::new("j", meta), &ChannelState::default())
    }

    #[test]
    fn integer_priority_is_the_queue_priority() {
        assert_eq!(admit(r#"{"priority":5}"#), Admission::Accept(5));
        assert_eq!(
            admit(r#"{"priority":-7,"tenant":"acme"}"#),
            Admission::Accept(-7)
        );
        assert_eq!(
            admit(&format!(r#"{{"priority":{}}}"#, i64::MAX)),
            Admission::Accept(i64::MAX)
        );
    }

    #[test]
    fn missing_or_null_priority_is_zero() {
        assert_eq!(admit("{}"), Admission::Accept(0));
        assert_eq!(admit(r#"{"tenant":"acme"}"#), Admission::Accept(0));
        assert_eq!(admit(r#"{"priority":null}"#), Admission::Accept(0));
    }

    #[test]
    fn non_integer_priority_is_rejected_naming_the_field() {
        for meta in [
            r#"{"priority":"high"}"#,
            r#"{"priority":1.5}"#,
            r#"{"priority":true}"#,
            r#"{"priority":[1]}"#,
            r#"{"priority":9223372036854775808}"#,
        ] {
            match admit(meta) {
                Admission::Reject(reason) => assert!(reason.contains("\"priority\""), "{reason}"),
                other => panic!("{meta}: expected a rejection, got {other:?}"),
            }
        }
    }
}
