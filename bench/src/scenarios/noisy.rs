//! `anika bench noisy`: one partner's healthy subscriptions beside another partner's
//! subscriptions to an endpoint that answers after 2 s. Reports the healthy partner's
//! end-to-end p99 alone and beside the noisy neighbour, in the same run, and their ratio
//! (target ≤ 2×: the fair delivery slots of `dispatcher/src/fair.rs` at work).
//!
//! The noisy partner's events are posted as a backlog before the healthy partner's
//! measured phase, not alongside: what is measured is the slow endpoint's hold on the
//! delivery slots, not the cost of ingesting its events on the same cores (which the
//! per-partner ingest limits are for).

use std::time::Duration;

use super::{Bench, Matched, ingest_latencies};
use crate::{
    CliError,
    api::Fixture,
    load::{self, Load, Until},
    report::{Percentiles, Run},
};

/// The healthy partner's subscriptions.
const CALM_SUBSCRIPTIONS: usize = 10;
/// The noisy partner's subscriptions.
const NOISY_SUBSCRIPTIONS: usize = 8;
/// How long the noisy partner's endpoint takes to answer.
const NOISY_DELAY: Duration = Duration::from_secs(2);
/// The scenario's name in the report.
const SCENARIO: &str = "noisy";

impl Bench<'_> {
    /// The healthy partner alone, then beside the noisy one; p99s and their ratio.
    pub async fn noisy(&mut self, run: &mut Run) -> Result<(), CliError> {
        let calm = self.fixture("noisy.calm", CALM_SUBSCRIPTIONS).await?;
        let noisy = self.fixture("noisy.noisy", NOISY_SUBSCRIPTIONS).await?;
        noisy
            .repoint(
                &self.api,
                &self.receiver.slow_url(NOISY_DELAY),
                self.args.noisy_max_in_flight,
            )
            .await?;
        // Warm-up (not reported): connection pools, token and topic caches, the consumers.
        let baseline = self.receiver.count();
        let warm = load::closed_loop(&self.poster(&calm), 8, 1, Until::Accepted(300)).await;
        let matched = self.drain("noisy warm-up", &calm, &warm, baseline).await;
        run.checks.push(matched.check);

        let alone = self.calm_phase(&calm, None).await;
        let beside = self.calm_phase(&calm, Some(&noisy)).await;
        let (alone, beside) = (
            record(run, "calm_alone", alone),
            record(run, "calm_beside_noisy", beside),
        );
        run.checks.push(alone.check);
        run.checks.push(beside.check);
        run.notes.push(format!(
            "noisy: {NOISY_SUBSCRIPTIONS} subscriptions (max_in_flight {}) to an endpoint answering \
             after {NOISY_DELAY:?}, a backlog of {} events each; deleted at the end, not drained",
            self.args.noisy_max_in_flight, self.args.noisy_events
        ));
        noisy.delete(&self.api).await?;
        calm.delete(&self.api).await
    }

    /// Posts to the healthy partner at `--calm-rate` for `--duration` (after the noisy
    /// partner, if given, has posted its backlog) and matches the healthy deliveries.
    async fn calm_phase(&self, calm: &Fixture, noisy: Option<&Fixture>) -> (Load, Matched) {
        let label = match noisy {
            None => "noisy: healthy partner alone",
            Some(_) => "noisy: healthy partner beside the noisy one",
        };
        eprintln!("{label} …");
        if let Some(noisy) = noisy {
            let flood = self.poster(noisy);
            let events = self.args.noisy_events;
            load::closed_loop(&flood, 8, 1, Until::Accepted(events)).await;
            // Long enough for the backlog to be on the wire, short of the first answers.
            tokio::time::sleep(NOISY_DELAY / 2).await;
        }
        let baseline = self.receiver.count();
        let load =
            load::open_loop(&self.poster(calm), self.args.calm_rate, self.args.duration).await;
        let matched = self.drain(label, calm, &load, baseline).await;
        (load, matched)
    }
}

/// Adds a phase's percentiles; ingest apart, to tell a slower ingest (shared cores) from
/// deliveries waiting for slots.
fn record(run: &mut Run, phase: &str, (load, matched): (Load, Matched)) -> Matched {
    if let Some(p) = Percentiles::of(matched.e2e.clone()) {
        run.add(SCENARIO, &format!("{phase}_e2e_p50_ms"), p.p50);
        run.add(SCENARIO, &format!("{phase}_e2e_p99_ms"), p.p99);
    }
    if let Some(p) = Percentiles::of(ingest_latencies(&load.accepted)) {
        run.add(SCENARIO, &format!("{phase}_ingest_p99_ms"), p.p99);
    }
    matched
}

/// The p99 beside the noisy partner over the p99 alone, and a note when it misses the target.
pub fn ratio(run: &mut Run) {
    let name = "noisy_p99/alone_p99";
    run.ratio(
        name,
        (SCENARIO, "calm_beside_noisy_e2e_p99_ms"),
        (SCENARIO, "calm_alone_e2e_p99_ms"),
    );
    if let Some(ratio) = run.get("ratio", name)
        && ratio > 2.0
    {
        run.notes.push(format!(
            "noisy: the healthy partner's p99 grew {ratio:.1}× beside the noisy one (target ≤ 2×)"
        ));
    }
}
