//! What happens to a message, decided from facts alone: no I/O, no clock, no locks.
//!
//! `job` gathers the facts (the cached standing, the outcome of an attempt, the endpoint's
//! health) and carries out what these functions answer; keeping the two apart lets every
//! branch be tested here without a broker, a database or an endpoint.

use std::time::{Duration, Instant};

use anika_shared::config::RetrySchedule;
use chrono::{DateTime, Utc};

use crate::{deliver::Outcome, subscription::Verdict};

/// Why a message is not sent now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Never: acknowledge it with this reason recorded.
    Skip(&'static str),
    /// Not now: back to the queue.
    Requeue,
}

/// Why a message whose event's data does not contain the subscription's filter is skipped.
pub const FILTERED: &str = "the event does not match the subscription's filter";

/// What the cached standing allows for a message received at `received`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Allowed and active.
    Send,
    /// Not sent: skipped or requeued.
    Refuse(Refusal),
    /// The cache says no but may predate the message: PostgreSQL decides.
    AskCatalog,
}

/// A cached "yes" is trusted; a cached "no" only if it was read after the message arrived.
pub fn judge(verdict: Verdict, read_at: Instant, received: Instant) -> Judgement {
    match verdict {
        Verdict::Send => Judgement::Send,
        _ if read_at < received => Judgement::AskCatalog,
        verdict => Judgement::Refuse(refusal(verdict)),
    }
}

/// What a standing read fresh from the catalog says (it cannot predate the message).
pub fn admission(verdict: Verdict) -> Result<(), Refusal> {
    match verdict {
        Verdict::Send => Ok(()),
        verdict => Err(refusal(verdict)),
    }
}

fn refusal(verdict: Verdict) -> Refusal {
    match verdict {
        Verdict::Skip(reason) => Refusal::Skip(reason),
        // `Send` is handled by the callers; requeueing is the safe reading of anything else.
        Verdict::Send | Verdict::Requeue => Refusal::Requeue,
    }
}

/// The attempt number of a message: one more than its header says, or, for an ordered
/// subscription's redelivered message (whose retries in place leave no trace in it), one
/// more than the attempt log has if that is more.
pub fn attempt_number(header_attempts: u32, recorded: Option<u32>) -> u32 {
    let next = header_attempts + 1;
    recorded.map_or(next, |recorded| next.max(recorded + 1))
}

/// What applies to a failed attempt: the subscription's settings and the server's.
#[derive(Clone, Copy, Debug)]
pub struct Rules<'a> {
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// One at a time, retrying in place.
    pub ordered: bool,
    /// The delays between attempts, and the retry tiers.
    pub schedule: &'a RetrySchedule,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
    /// How long an endpoint may fail every attempt before it is disabled.
    pub disable_after: Duration,
}

/// The endpoint's health when the attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    /// Since when every attempt failed, as it was before this attempt.
    pub failing_since: Option<DateTime<Utc>>,
    /// Now.
    pub now: DateTime<Utc>,
}

/// What to do after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A 2xx: record the attempt, acknowledge, note the endpoint healthy.
    Delivered,
    /// Disable the subscription for this reason, record the attempt, requeue the message
    /// (it waits for the subscription to be re-enabled).
    Disable(String),
    /// Record the attempt, then do `next`.
    Failed {
        /// The first failure while healthy: PostgreSQL and the partner hear of it.
        newly_failing: bool,
        /// What becomes of the message.
        next: Next,
    },
}

/// What becomes of a message whose attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Its attempts are spent: to the dead-letter queue.
    DeadLetter,
    /// Through the retry queue of this delay (unordered subscriptions).
    Retry {
        /// The tier.
        tier: Duration,
    },
    /// Try again after this wait, holding the message (ordered subscriptions).
    RetryInPlace {
        /// The wait.
        wait: Duration,
    },
}

/// Why a subscription is disabled when its endpoint answers 410.
pub const GONE: &str = "the endpoint answered 410 Gone";

/// Decides what follows attempt number `attempt`, which ended with `outcome`.
pub fn after_attempt(
    outcome: &Outcome,
    attempt: u32,
    rules: &Rules<'_>,
    health: Health,
) -> Decision {
    let retry_after = match outcome {
        Outcome::Delivered { .. } => return Decision::Delivered,
        _ if outcome.gone() => return Decision::Disable(GONE.to_owned()),
        Outcome::Failed { retry_after, .. } => *retry_after,
    };
    let newly_failing = match health.failing_since {
        None => true,
        Some(since) if (health.now - since).to_std().unwrap_or_default() >= rules.disable_after => {
            return Decision::Disable(format!(
                "every delivery failed since {}",
                anika_shared::envelope::format_time(since)
            ));
        }
        Some(_) => false,
    };
    let next = if attempt >= rules.max_attempts {
        Next::DeadLetter
    } else {
        let scheduled = rules.schedule.delay_before(attempt + 1);
        let wanted = retry_delay(scheduled, retry_after, rules.max_retry_after);
        if rules.ordered {
            Next::RetryInPlace { wait: wanted }
        } else {
            Next::Retry {
                tier: rules.schedule.tier_at_least(wanted),
            }
        }
    };
    Decision::Failed {
        newly_failing,
        next,
    }
}

/// The wait before the next attempt: the schedule's, or longer if the endpoint asked
/// (`Retry-After`), but never longer than `cap` for the asking.
fn retry_delay(scheduled: Duration, retry_after: Option<Duration>, cap: Duration) -> Duration {
    retry_after.map_or(scheduled, |asked| asked.min(cap).max(scheduled))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::REVOKED;

    #[test]
    fn a_cached_no_older_than_the_message_is_checked_with_the_catalog_a_yes_never() {
        let earlier = Instant::now();
        let later = earlier + Duration::from_millis(1);
        let revoked = Verdict::Skip(REVOKED);
        assert_eq!(judge(Verdict::Send, earlier, later), Judgement::Send);
        assert_eq!(judge(Verdict::Send, later, earlier), Judgement::Send);
        assert_eq!(judge(revoked, earlier, later), Judgement::AskCatalog);
        assert_eq!(
            judge(Verdict::Requeue, earlier, later),
            Judgement::AskCatalog
        );
        assert_eq!(
            judge(revoked, later, earlier),
            Judgement::Refuse(Refusal::Skip(REVOKED)),
            "read after the message arrived: it already saw every grant made before"
        );
        assert_eq!(
            judge(Verdict::Requeue, later, earlier),
            Judgement::Refuse(Refusal::Requeue)
        );
    }

    #[test]
    fn a_fresh_standing_sends_skips_a_revoked_grant_and_requeues_a_pause() {
        assert_eq!(admission(Verdict::Send), Ok(()));
        assert_eq!(
            admission(Verdict::Skip(REVOKED)),
            Err(Refusal::Skip(REVOKED))
        );
        assert_eq!(admission(Verdict::Requeue), Err(Refusal::Requeue));
    }

    #[test]
    fn the_attempt_number_comes_from_the_header_or_for_ordered_redeliveries_the_log() {
        assert_eq!(attempt_number(0, None), 1);
        assert_eq!(attempt_number(2, None), 3);
        // Retried in place three times before a restart: the header still says 0.
        assert_eq!(attempt_number(0, Some(3)), 4);
        // The log lags the header (a record not written yet): the header wins.
        assert_eq!(attempt_number(4, Some(1)), 5);
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap_and_never_shortens_the_schedule() {
        let (scheduled, cap) = (Duration::from_secs(5), Duration::from_secs(3600));
        assert_eq!(retry_delay(scheduled, None, cap), scheduled);
        assert_eq!(
            retry_delay(scheduled, Some(Duration::from_secs(60)), cap),
            Duration::from_secs(60)
        );
        assert_eq!(
            retry_delay(scheduled, Some(Duration::from_secs(86_400)), cap),
            cap
        );
        assert_eq!(retry_delay(scheduled, Some(Duration::ZERO), cap), scheduled);
        // A cap below the schedule does not shorten the schedule.
        assert_eq!(
            retry_delay(
                scheduled,
                Some(Duration::from_secs(60)),
                Duration::from_secs(1)
            ),
            scheduled
        );
    }

    fn schedule() -> RetrySchedule {
        "5s,30s,2m,10m".parse().unwrap()
    }

    fn rules(schedule: &RetrySchedule, ordered: bool) -> Rules<'_> {
        Rules {
            max_attempts: 3,
            ordered,
            schedule,
            max_retry_after: Duration::from_secs(3600),
            disable_after: Duration::from_secs(3 * 86_400),
        }
    }

    fn healthy() -> Health {
        Health {
            failing_since: None,
            now: Utc::now(),
        }
    }

    fn failing_for(how_long: chrono::Duration) -> Health {
        let now = Utc::now();
        Health {
            failing_since: Some(now - how_long),
            now,
        }
    }

    fn status(code: u16) -> Outcome {
        Outcome::Failed {
            status: Some(code),
            error: format!("the endpoint answered {code}"),
            excerpt: None,
            retry_after: None,
        }
    }

    #[test]
    fn a_2xx_is_delivered_whatever_the_attempt_and_the_health() {
        let schedule = schedule();
        let ok = Outcome::Delivered {
            status: 200,
            excerpt: String::new(),
        };
        for health in [healthy(), failing_for(chrono::Duration::days(30))] {
            assert_eq!(
                after_attempt(&ok, 99, &rules(&schedule, false), health),
                Decision::Delivered
            );
        }
    }

    #[test]
    fn a_410_disables_at_once_even_on_the_first_attempt() {
        let schedule = schedule();
        assert_eq!(
            after_attempt(&status(410), 1, &rules(&schedule, false), healthy()),
            Decision::Disable(GONE.to_owned())
        );
    }

    #[test]
    fn an_endpoint_failing_for_disable_after_is_disabled_and_says_since_when() {
        let schedule = schedule();
        let health = failing_for(chrono::Duration::days(3));
        let Decision::Disable(reason) =
            after_attempt(&status(500), 1, &rules(&schedule, false), health)
        else {
            panic!("not disabled");
        };
        let since = anika_shared::envelope::format_time(health.failing_since.unwrap());
        assert_eq!(reason, format!("every delivery failed since {since}"));
        // Just short of it: retried, not disabled.
        let health = failing_for(chrono::Duration::days(3) - chrono::Duration::seconds(1));
        assert_eq!(
            after_attempt(&status(500), 1, &rules(&schedule, false), health),
            Decision::Failed {
                newly_failing: false,
                next: Next::Retry {
                    tier: Duration::from_secs(5)
                },
            }
        );
    }

    #[test]
    fn the_first_failure_while_healthy_is_announced_and_retried_after_the_first_delay() {
        let schedule = schedule();
        assert_eq!(
            after_attempt(&status(500), 1, &rules(&schedule, false), healthy()),
            Decision::Failed {
                newly_failing: true,
                next: Next::Retry {
                    tier: Duration::from_secs(5)
                },
            }
        );
    }

    #[test]
    fn a_retry_after_picks_the_smallest_tier_at_least_that_long_or_the_longest() {
        let schedule = schedule();
        let asking = |seconds| Outcome::Failed {
            status: Some(503),
            error: "the endpoint answered 503".into(),
            excerpt: None,
            retry_after: Some(Duration::from_secs(seconds)),
        };
        let tier = |outcome: &Outcome| match after_attempt(
            outcome,
            1,
            &rules(&schedule, false),
            healthy(),
        ) {
            Decision::Failed {
                next: Next::Retry { tier },
                ..
            } => tier,
            other => panic!("{other:?}"),
        };
        assert_eq!(tier(&asking(90)), Duration::from_secs(120));
        assert_eq!(tier(&asking(86_400)), Duration::from_secs(600));
    }

    #[test]
    fn an_ordered_subscription_retries_in_place_for_the_scheduled_or_asked_wait() {
        let schedule = schedule();
        assert_eq!(
            after_attempt(&status(500), 2, &rules(&schedule, true), healthy()),
            Decision::Failed {
                newly_failing: true,
                next: Next::RetryInPlace {
                    wait: Duration::from_secs(30)
                },
            }
        );
        let asking = Outcome::Failed {
            status: Some(429),
            error: "the endpoint answered 429".into(),
            excerpt: None,
            retry_after: Some(Duration::from_secs(7200)),
        };
        assert_eq!(
            after_attempt(&asking, 1, &rules(&schedule, true), healthy()),
            Decision::Failed {
                newly_failing: true,
                next: Next::RetryInPlace {
                    wait: Duration::from_secs(3600)
                },
            },
            "capped at max_retry_after"
        );
    }

    #[test]
    fn the_last_attempt_is_dead_lettered_ordered_or_not() {
        let schedule = schedule();
        let timed_out = Outcome::Failed {
            status: None,
            error: "timed out".into(),
            excerpt: None,
            retry_after: None,
        };
        for ordered in [false, true] {
            for attempt in [3, 4] {
                assert_eq!(
                    after_attempt(&timed_out, attempt, &rules(&schedule, ordered), healthy()),
                    Decision::Failed {
                        newly_failing: true,
                        next: Next::DeadLetter,
                    }
                );
            }
        }
    }
}
