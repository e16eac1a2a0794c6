//! The overview: a small live page (htmx polls a fragment every 2 s) with the
//! platform's counters for operators and the principal's subscriptions by status.

use std::collections::BTreeMap;

use axum::response::{Html, IntoResponse};
use maud::{Markup, html};

use crate::{
    error::PageResult,
    layout::{badge, s},
    session::Role,
    subscriptions::items,
    web::Console,
};

/// The sum of every sample of the counter `metric` whose labels contain `label` (all
/// when `None`), in the Prometheus text format; counters count whole things.
pub(crate) fn metric_sum(text: &str, metric: &str, label: Option<&str>) -> u64 {
    let sum: f64 = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest),
                None => (series, ""),
            };
            (name == metric && label.is_none_or(|l| labels.contains(l)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum();
    // An empty f64 sum is -0.0; a counter is never negative.
    sum.max(0.0).round() as u64
}

/// GET /console
pub async fn page(c: Console) -> PageResult {
    let live = live_markup(&c).await;
    Ok(c.page(
        "Overview",
        html! {
            div #live hx-get="/console/overview/live" hx-trigger="every 2s" hx-swap="innerHTML" aria-live="polite" {
                (live)
            }
        },
    ))
}

/// GET /console/overview/live: the fragment htmx swaps in.
pub async fn live(c: Console) -> impl IntoResponse {
    Html(live_markup(&c).await.into_string())
}

async fn live_markup(c: &Console) -> Markup {
    let counters = if c.session.who.role == Role::Operator {
        c.state.api.text("/metrics").await.ok()
    } else {
        None
    };
    let subs = c.get("/v1/subscriptions?limit=1000").await.ok();
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    if let Some(subs) = &subs {
        for sub in items(subs) {
            *by_status.entry(s(sub, "status").to_owned()).or_default() += 1;
        }
    }
    html! {
        @if let Some(text) = &counters {
            h2 { "This server since it started" }
            div.tiles {
                div.tile { span.value #accepted { (metric_sum(text, "anika_events_accepted_total", None)) } span.label { "events accepted" } }
                div.tile { span.value #delivered { (metric_sum(text, "anika_deliveries_total", Some("outcome=\"delivered\""))) } span.label { "deliveries succeeded" } }
                div.tile { span.value #failed { (metric_sum(text, "anika_deliveries_total", Some("outcome=\"failed\""))) } span.label { "attempts failed" } }
            }
        }
        h2 { "Subscriptions" }
        @match &subs {
            None => p { "The subscriptions could not be read (a publisher key sees none)." },
            Some(_) if by_status.is_empty() => p { "No subscriptions yet. " a href="/console/subscriptions/new" { "Create one" } },
            Some(_) => div.tiles {
                @for (status, n) in &by_status {
                    div.tile { span.value { (n) } span.label { (badge(status)) } }
                }
            },
        }
        p.hint { "Updates every 2 seconds. " a href="/console/subscriptions" { "All subscriptions, worst first" } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_across_their_labels() {
        let text = "# TYPE anika_deliveries_total counter\n\
            anika_deliveries_total{outcome=\"delivered\"} 7\n\
            anika_deliveries_total{outcome=\"failed\"} 2\n\
            anika_deliveries_total{outcome=\"delivered\",x=\"y\"} 1\n\
            anika_events_accepted_total 12\n";
        assert_eq!(metric_sum(text, "anika_events_accepted_total", None), 12);
        assert_eq!(
            metric_sum(
                text,
                "anika_deliveries_total",
                Some("outcome=\"delivered\"")
            ),
            8
        );
        assert_eq!(metric_sum(text, "anika_missing", None), 0);
    }
}
