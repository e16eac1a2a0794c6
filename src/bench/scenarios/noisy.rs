//! `anika bench noisy`: one partner's healthy subscriptions beside another partner's
//! subscriptions to an endpoint that answers after 2 s. Reports the healthy partner's
//! end-to-end p99 alone and beside the noisy neighbour, in the same run, and their ratio
//! (target ≤ 2×: the fair delivery slots of `dispatcher/src/fair.rs` at work).

use std::time::Duration;

use super::{Bench, Matched};
use crate::{
    bench::{
        api::Fixture,
        load::{self, Until},
        report::{Percentiles, Run},
    },
    cli::CliError,
};

/// The healthy partner's subscriptions.
const CALM_SUBSCRIPTIONS: usize = 10;
/// The noisy partner's subscriptions.
const NOISY_SUBSCRIPTIONS: usize = 8;
/// How long the noisy partner's endpoint takes to answer.
const NOISY_DELAY: Duration = Duration::from_secs(2);
/// The noisy partner asks for the most API.md allows, so only the fair share holds it back.
const NOISY_MAX_IN_FLIGHT: u32 = 1000;
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
                NOISY_MAX_IN_FLIGHT,
            )
            .await?;
        // Warm-up (not reported): connection pools, token and topic caches, the consumers.
        let baseline = self.receiver.count();
        let warm = load::closed_loop(&self.poster(&calm), 8, 1, Until::Accepted(300)).await;
        let matched = self.drain("noisy warm-up", &calm, &warm, baseline).await;
        run.checks.push(matched.check);

        let alone = self.calm_phase(&calm, None).await;
        let beside = self.calm_phase(&calm, Some(&noisy)).await;
        record(run, "calm_alone", &alone);
        record(run, "calm_beside_noisy", &beside);
        run.checks.push(alone.check);
        run.checks.push(beside.check);
        run.notes.push(format!(
            "noisy: {NOISY_SUBSCRIPTIONS} subscriptions (max_in_flight {NOISY_MAX_IN_FLIGHT}) to an \
             endpoint answering after {NOISY_DELAY:?}, fed {}/s; their backlog is deleted, not drained",
            self.args.noisy_rate
        ));
        noisy.delete(&self.api).await?;
        calm.delete(&self.api).await
    }

    /// Posts to the healthy partner at `--calm-rate` for `--duration` (while the noisy
    /// partner, if given, posts at `--noisy-rate`) and matches the healthy deliveries.
    async fn calm_phase(&self, calm: &Fixture, noisy: Option<&Fixture>) -> Matched {
        let label = match noisy {
            None => "noisy: healthy partner alone",
            Some(_) => "noisy: healthy partner beside the noisy one",
        };
        eprintln!("{label} …");
        let baseline = self.receiver.count();
        let calm_poster = self.poster(calm);
        let calm_load = load::open_loop(&calm_poster, self.args.calm_rate, self.args.duration);
        let load = match noisy {
            None => calm_load.await,
            Some(noisy) => {
                let flood = self.poster(noisy);
                let flooding = load::open_loop(&flood, self.args.noisy_rate, self.args.duration);
                tokio::join!(calm_load, flooding).0
            }
        };
        self.drain(label, calm, &load, baseline).await
    }
}

fn record(run: &mut Run, phase: &str, matched: &Matched) {
    if let Some(p) = Percentiles::of(matched.e2e.clone()) {
        run.add(SCENARIO, &format!("{phase}_e2e_p50_ms"), p.p50);
        run.add(SCENARIO, &format!("{phase}_e2e_p99_ms"), p.p99);
    }
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
