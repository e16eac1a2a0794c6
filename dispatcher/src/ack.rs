//! Settling messages: one `multiple` ack for a run of settled deliveries instead of one ack each.
//!
//! Every ack is a frame through lapin's I/O thread and, on a quorum queue, a
//! command through RabbitMQ's Raft log; under load they were the broker's
//! largest cost per delivery. Each consumer channel keeps the delivery tags it
//! has not settled yet. When the writer settles a batch, the acks that form
//! the channel's oldest unsettled tags, with no gap, go out as one
//! `basic.ack(multiple)`; the rest are acked one by one. A tag still in flight,
//! kept for a retry publish or being requeued blocks the run, so a `multiple`
//! ack never covers a message whose outcome is not durable.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use futures::future::join_all;
use lapin::{
    Acker,
    options::{BasicAckOptions, BasicNackOptions},
};

/// The delivery tags one consumer channel holds unsettled.
#[derive(Debug, Default)]
pub struct Unsettled {
    tags: Mutex<BTreeSet<u64>>,
}

impl Unsettled {
    /// Starts tracking a delivery received on this channel.
    pub fn track(self: &Arc<Self>, tag: u64, acker: Acker) -> Ticket {
        self.tags.lock().expect("unsettled tags").insert(tag);
        Ticket {
            acker,
            tag,
            channel: Arc::clone(self),
        }
    }
}

/// One unsettled message: the right to ack or requeue it, once.
#[derive(Clone, Debug)]
pub struct Ticket {
    acker: Acker,
    tag: u64,
    channel: Arc<Unsettled>,
}

/// How one channel's share of a batch goes out (`A` is an acker; tests use plain values).
#[derive(Debug, PartialEq)]
struct Plan<A> {
    /// Acks its tag and every unsettled tag below it.
    multiple: Option<A>,
    acks: Vec<A>,
    requeues: Vec<A>,
}

/// Acks `acks` and requeues `requeues`, coalescing acks per channel; waits until all are sent.
pub async fn settle(acks: Vec<Ticket>, requeues: Vec<Ticket>) {
    type Share = (Arc<Unsettled>, Vec<(u64, Acker)>, Vec<(u64, Acker)>);
    let mut channels: HashMap<usize, Share> = HashMap::new();
    for (ticket, ack) in acks
        .into_iter()
        .map(|t| (t, true))
        .chain(requeues.into_iter().map(|t| (t, false)))
    {
        let entry = channels
            // The address names the channel: tickets of one channel share one `Unsettled`.
            .entry(Arc::as_ptr(&ticket.channel) as usize)
            .or_insert_with(|| (Arc::clone(&ticket.channel), Vec::new(), Vec::new()));
        let settlement = (ticket.tag, ticket.acker);
        if ack {
            entry.1.push(settlement);
        } else {
            entry.2.push(settlement);
        }
    }
    let mut sends = Vec::new();
    for (channel, acks, requeues) in channels.into_values() {
        let plan = plan(
            &mut channel.tags.lock().expect("unsettled tags"),
            acks,
            requeues,
        );
        if let Some(acker) = plan.multiple {
            // multiple: also acknowledges every lower tag still unacked on this channel,
            // which `plan` made sure are exactly the ones settled in this batch.
            sends.push(send(acker, Some(true)));
        }
        sends.extend(plan.acks.into_iter().map(|a| send(a, Some(false))));
        sends.extend(plan.requeues.into_iter().map(|a| send(a, None)));
    }
    join_all(sends).await;
}

/// Splits one channel's settlements into a `multiple` ack, single acks and requeues,
/// and forgets their tags.
fn plan<A>(tags: &mut BTreeSet<u64>, mut acks: Vec<(u64, A)>, requeues: Vec<(u64, A)>) -> Plan<A> {
    acks.sort_unstable_by_key(|(tag, _)| *tag);
    acks.dedup_by_key(|(tag, _)| *tag);
    // The run: the oldest unsettled tags, each acked in this batch.
    let run = tags
        .iter()
        .zip(&acks)
        .take_while(|(unsettled, (tag, _))| *unsettled == tag)
        .count();
    let mut plan = Plan {
        multiple: None,
        acks: Vec::new(),
        requeues: Vec::new(),
    };
    for (i, (tag, acker)) in acks.into_iter().enumerate() {
        // A tag no longer tracked was settled before (or covered by a `multiple` ack):
        // acking it again would name an unknown tag, which closes the channel.
        if !tags.remove(&tag) {
            continue;
        }
        if run < 2 || i >= run {
            plan.acks.push(acker);
        } else if i + 1 == run {
            plan.multiple = Some(acker);
        }
    }
    for (tag, acker) in requeues {
        if tags.remove(&tag) {
            plan.requeues.push(acker);
        }
    }
    plan
}

/// `Some(multiple)` acks; `None` requeues.
async fn send(acker: Acker, ack: Option<bool>) {
    let settling = async {
        match ack {
            Some(multiple) => acker.ack(BasicAckOptions { multiple }).await,
            // requeue: the message goes back to the head of its queue for a later delivery.
            None => {
                acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
        }
    };
    // Bounded: the writer settles every consumer's messages, so one stuck on a dead
    // connection would stall them all.
    if let Err(e) = anika_shared::amqp::bounded("basic.ack", settling).await {
        // The channel died after the outcome was recorded: the broker redelivers
        // the message and the subscriber sees a duplicate with the same webhook-id.
        tracing::debug!(error = %e, "could not settle a message; it will be redelivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(tags: &[u64]) -> BTreeSet<u64> {
        tags.iter().copied().collect()
    }

    fn settled(tags: &[u64]) -> Vec<(u64, u64)> {
        tags.iter().map(|t| (*t, *t)).collect()
    }

    #[test]
    fn the_oldest_settled_run_goes_out_as_one_multiple_ack() {
        let mut tags = tracked(&[1, 2, 3, 4, 5]);
        let plan = plan(&mut tags, settled(&[3, 1, 2]), vec![]);
        assert_eq!(
            plan,
            Plan {
                multiple: Some(3),
                acks: vec![],
                requeues: vec![]
            }
        );
        assert_eq!(tags, tracked(&[4, 5]));
    }

    #[test]
    fn a_message_still_in_flight_stops_the_run() {
        let mut tags = tracked(&[1, 2, 3, 4, 5]);
        let plan = plan(&mut tags, settled(&[1, 2, 4, 5]), vec![]);
        assert_eq!(plan.multiple, Some(2));
        assert_eq!(
            plan.acks,
            vec![4, 5],
            "3 is still in flight: 4 and 5 one by one"
        );
        assert_eq!(tags, tracked(&[3]));
    }

    #[test]
    fn a_requeued_message_is_never_covered_by_a_multiple_ack() {
        let mut tags = tracked(&[1, 2, 3, 4]);
        let plan = plan(&mut tags, settled(&[1, 3, 4]), settled(&[2]));
        assert_eq!(plan.multiple, None);
        assert_eq!(plan.acks, vec![1, 3, 4]);
        assert_eq!(plan.requeues, vec![2]);
        assert!(tags.is_empty());
    }

    #[test]
    fn a_single_settled_message_is_acked_alone() {
        let mut tags = tracked(&[7, 8]);
        let plan = plan(&mut tags, settled(&[7]), vec![]);
        assert_eq!(plan.multiple, None);
        assert_eq!(plan.acks, vec![7]);
    }

    #[test]
    fn a_message_settled_twice_is_acked_once() {
        let mut tags = tracked(&[1, 2, 3]);
        let first = plan(&mut tags, settled(&[1, 2]), vec![]);
        assert_eq!(first.multiple, Some(2));
        let again = plan(&mut tags, settled(&[2, 2, 3]), settled(&[1]));
        assert_eq!(again.multiple, None);
        assert_eq!(
            again.acks,
            vec![3],
            "2 was covered already; acking it again closes the channel"
        );
        assert_eq!(again.requeues, Vec::<u64>::new());
    }
}
