//! Fair shares of the process's delivery slots (`ANIKA_DISPATCH_CONCURRENCY`) across partners.
//!
//! A webhook request holds one global slot while it is on the wire. Slots are
//! not first come, first served: a partner with many subscriptions to a slow
//! endpoint would otherwise hold them all and every other partner would wait
//! out that endpoint's response time. The [`Ledger`] decides who gets a free
//! slot; [`FairSlots`] is the async waiting around it.
//!
//! The rules (see `docs/architecture.md`, *Fair delivery slots*):
//! - a partner is *active* while it holds slots or waits for one; its fair
//!   share is `ceil(total / active)`;
//! - a partner below its share may take a free slot; partners are served
//!   round-robin, each waiting partner's deliveries first come, first served;
//! - when no waiting partner is below its share, a partner may take more
//!   (work-conserving), but never the last `reserve` free slots: a request
//!   cannot be taken back, so those are kept for a partner that shows up
//!   while others hold every slot with slow requests;
//! - the reserve itself goes to a partner holding less than the share it
//!   would have with one more partner active (a newcomer, typically).

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    sync::Mutex,
};

use anika_shared::domain::PartnerId;
use tokio::sync::oneshot;

/// Names one waiting delivery.
pub type WaiterId = u64;

/// Slots kept free for newcomers: a sixteenth of the total (none below 16 slots).
pub fn reserve_for(total: usize) -> usize {
    total / 16
}

#[derive(Debug, Default)]
struct Account {
    held: usize,
    waiting: VecDeque<WaiterId>,
}

/// Who holds how many slots, who waits, and whose turn it is. No I/O, no clock.
#[derive(Debug)]
pub struct Ledger<P> {
    total: usize,
    reserve: usize,
    held: usize,
    /// Active partners only: those holding or waiting.
    accounts: HashMap<P, Account>,
    /// Partners with waiters, next in turn first.
    turn: VecDeque<P>,
}

impl<P: Copy + Eq + Hash> Ledger<P> {
    /// A ledger of `total` slots, keeping [`reserve_for`] of them for newcomers.
    pub fn new(total: usize) -> Self {
        Self {
            total,
            reserve: reserve_for(total),
            held: 0,
            accounts: HashMap::new(),
            turn: VecDeque::new(),
        }
    }

    /// `waiter` of `partner` wants a slot; call [`Ledger::grant`] next.
    pub fn enqueue(&mut self, partner: P, waiter: WaiterId) {
        let account = self.accounts.entry(partner).or_default();
        if account.waiting.is_empty() {
            self.turn.push_back(partner);
        }
        account.waiting.push_back(waiter);
    }

    /// Takes a slot for `partner` at once if nobody waits and the rules allow it: what
    /// [`Ledger::enqueue`] and [`Ledger::grant`] would decide, without a waiter to track.
    pub fn take_now(&mut self, partner: P) -> bool {
        if !self.turn.is_empty() {
            // Others wait: they come first, in turn.
            return false;
        }
        let free = self.total - self.held;
        if free == 0 {
            return false;
        }
        let held = self.accounts.get(&partner).map_or(0, |a| a.held);
        let active = self.accounts.len() + usize::from(!self.accounts.contains_key(&partner));
        let share = self.total.div_ceil(active);
        let newcomer_share = self.total.div_ceil(active + 1);
        // `grant`'s rules with this partner alone in turn: below its share it may take the
        // reserve only while under a newcomer's share (never more than its share), and anyone
        // may take a slot beyond the reserve (work-conserving).
        let allowed = free > self.reserve || held < newcomer_share.min(share);
        if allowed {
            self.accounts.entry(partner).or_default().held += 1;
            self.held += 1;
        }
        allowed
    }

    /// Withdraws a waiter; false if it is not waiting (it was granted a slot already).
    pub fn cancel(&mut self, partner: P, waiter: WaiterId) -> bool {
        let Some(account) = self.accounts.get_mut(&partner) else {
            return false;
        };
        let Some(at) = account.waiting.iter().position(|w| *w == waiter) else {
            return false;
        };
        account.waiting.remove(at);
        if account.waiting.is_empty() {
            self.turn.retain(|p| *p != partner);
        }
        self.forget_if_idle(partner);
        true
    }

    /// A slot of `partner` is free again; call [`Ledger::grant`] next.
    pub fn release(&mut self, partner: P) {
        if let Some(account) = self.accounts.get_mut(&partner)
            && account.held > 0
        {
            account.held -= 1;
            self.held -= 1;
            self.forget_if_idle(partner);
        }
    }

    fn forget_if_idle(&mut self, partner: P) {
        if self
            .accounts
            .get(&partner)
            .is_some_and(|a| a.held == 0 && a.waiting.is_empty())
        {
            self.accounts.remove(&partner);
        }
    }

    /// Slots `partner` holds now.
    #[cfg(test)]
    pub fn held_by(&self, partner: P) -> usize {
        self.accounts.get(&partner).map_or(0, |a| a.held)
    }

    /// Hands out what the rules allow now; each waiter returned holds a slot from here on.
    pub fn grant(&mut self) -> Vec<(P, WaiterId)> {
        let mut granted = Vec::new();
        while let Some(at) = self.next_in_turn() {
            let partner = self.turn.remove(at).expect("a position in the turn");
            let account = self.accounts.get_mut(&partner).expect("a waiting partner");
            let waiter = account.waiting.pop_front().expect("a waiting partner");
            account.held += 1;
            self.held += 1;
            if !account.waiting.is_empty() {
                // To the back of the turn: round-robin across partners.
                self.turn.push_back(partner);
            }
            granted.push((partner, waiter));
        }
        granted
    }

    /// The position in the turn of the partner that gets the next free slot, if any does.
    fn next_in_turn(&self) -> Option<usize> {
        let free = self.total - self.held;
        if free == 0 || self.turn.is_empty() {
            return None;
        }
        let active = self.accounts.len();
        let share = self.total.div_ceil(active);
        let newcomer_share = self.total.div_ceil(active + 1);
        let held = |p: &P| self.accounts.get(p).map_or(0, |a| a.held);
        let below_share = self
            .turn
            .iter()
            .position(|p| held(p) < share && (free > self.reserve || held(p) < newcomer_share));
        // Nobody below its share waits: work-conserving, short of the reserve.
        below_share.or_else(|| (free > self.reserve).then_some(0))
    }
}

struct Waiting {
    ledger: Ledger<PartnerId>,
    wakers: HashMap<WaiterId, oneshot::Sender<()>>,
    next: WaiterId,
}

impl Waiting {
    /// Grants what the ledger allows and wakes those waiters.
    fn hand_out(&mut self) {
        loop {
            let granted = self.ledger.grant();
            if granted.is_empty() {
                return;
            }
            for (partner, waiter) in granted {
                let woken = self
                    .wakers
                    .remove(&waiter)
                    .is_some_and(|waker| waker.send(()).is_ok());
                if !woken {
                    // The waiter is gone (it cancels under this lock, so this is a safety net):
                    // the slot goes to the next one.
                    self.ledger.release(partner);
                }
            }
        }
    }
}

/// The process's delivery slots, shared fairly across partners.
pub struct FairSlots {
    state: Mutex<Waiting>,
}

impl std::fmt::Debug for FairSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FairSlots").finish_non_exhaustive()
    }
}

/// One slot, held until dropped.
#[derive(Debug)]
pub struct Slot<'a> {
    slots: &'a FairSlots,
    partner: PartnerId,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        state.ledger.release(self.partner);
        state.hand_out();
    }
}

/// A delivery waiting for its slot; withdraws it if the wait is abandoned.
struct Waiter<'a> {
    slots: &'a FairSlots,
    partner: PartnerId,
    id: WaiterId,
    armed: bool,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.slots.lock();
        state.wakers.remove(&self.id);
        if !state.ledger.cancel(self.partner, self.id) {
            // Granted, but nobody will use it.
            state.ledger.release(self.partner);
        }
        // One partner fewer may raise everyone else's share.
        state.hand_out();
    }
}

impl FairSlots {
    /// `total` slots.
    pub fn new(total: usize) -> Self {
        Self {
            state: Mutex::new(Waiting {
                ledger: Ledger::new(total),
                wakers: HashMap::new(),
                next: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.state.lock().expect("fair slots lock")
    }

    /// Waits for a slot for one of `partner`'s deliveries.
    pub async fn acquire(&self, partner: PartnerId) -> Slot<'_> {
        let (waker, woken) = oneshot::channel();
        let id = {
            let mut state = self.lock();
            // Nobody waits (the usual case): no waiter, no waker, no wake-up.
            if state.ledger.take_now(partner) {
                return Slot {
                    slots: self,
                    partner,
                };
            }
            let id = state.next;
            state.next += 1;
            state.wakers.insert(id, waker);
            state.ledger.enqueue(partner, id);
            state.hand_out();
            id
        };
        let mut waiter = Waiter {
            slots: self,
            partner,
            id,
            armed: true,
        };
        if woken.await.is_err() {
            // Unreachable: a waker is dropped unsent only by `Waiter::drop`, which is this.
            tracing::error!("a delivery slot waiter lost its waker; taking the slot anyway");
        }
        waiter.armed = false;
        Slot {
            slots: self,
            partner,
        }
    }

    /// Slots `partner` holds now.
    #[cfg(test)]
    pub fn held_by(&self, partner: PartnerId) -> usize {
        self.lock().ledger.held_by(partner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: char = 'a';
    const B: char = 'b';
    const C: char = 'c';

    /// Enqueues `n` waiters of `partner` (ids continue from `next`) and grants.
    fn wait(ledger: &mut Ledger<char>, partner: char, n: u64, next: &mut u64) -> Vec<(char, u64)> {
        for _ in 0..n {
            ledger.enqueue(partner, *next);
            *next += 1;
        }
        ledger.grant()
    }

    fn count(granted: &[(char, u64)], partner: char) -> usize {
        granted.iter().filter(|(p, _)| *p == partner).count()
    }

    proptest::proptest! {
        /// Whatever the partners hold while nobody waits, taking at once decides exactly as
        /// enqueueing and granting.
        #[test]
        fn taking_at_once_decides_as_enqueueing_and_granting(
            total in 1usize..80,
            holdings in proptest::collection::vec(0usize..80, 0..4),
            partner in 0u8..5,
        ) {
            let mut ledger = Ledger::new(total);
            for (i, wanted) in holdings.into_iter().enumerate() {
                let held = wanted.min(total - ledger.held);
                if held > 0 {
                    let who = char::from(b'a' + i as u8);
                    ledger.accounts.insert(who, Account { held, waiting: VecDeque::new() });
                    ledger.held += held;
                }
            }
            let mut waited = Ledger {
                total: ledger.total,
                reserve: ledger.reserve,
                held: ledger.held,
                accounts: ledger.accounts.iter().map(|(p, a)| (*p, Account { held: a.held, waiting: VecDeque::new() })).collect(),
                turn: VecDeque::new(),
            };
            let partner = char::from(b'a' + partner);
            waited.enqueue(partner, u64::MAX);
            let granted = waited.grant().contains(&(partner, u64::MAX));
            proptest::prop_assert_eq!(ledger.take_now(partner), granted);
            proptest::prop_assert_eq!(ledger.held_by(partner), waited.held_by(partner));
            proptest::prop_assert_eq!(ledger.held, waited.held);
        }
    }

    #[test]
    fn a_lone_partner_takes_every_slot_but_the_reserve() {
        let mut ledger = Ledger::new(64);
        let mut next = 0;
        let granted = wait(&mut ledger, A, 100, &mut next);
        assert_eq!(granted.len(), 64 - reserve_for(64));
        assert_eq!(ledger.held_by(A), 60);
        // Releasing one lets exactly one more through, first come first served.
        ledger.release(A);
        assert_eq!(ledger.grant(), vec![(A, 60)]);
    }

    #[test]
    fn below_sixteen_slots_nothing_is_reserved() {
        let mut ledger = Ledger::new(8);
        let mut next = 0;
        assert_eq!(wait(&mut ledger, A, 20, &mut next).len(), 8);
    }

    #[test]
    fn a_newcomer_gets_the_reserve_at_once_and_then_freed_slots_up_to_its_share() {
        let mut ledger = Ledger::new(64);
        let mut next = 0;
        wait(&mut ledger, A, 1000, &mut next);
        let granted = wait(&mut ledger, B, 100, &mut next);
        assert_eq!(count(&granted, B), 4, "the reserve, without waiting for A");
        // While A is above its share of 32, nothing A frees goes back to A: B gets it
        // (up to a newcomer's share at once, then as the reserve refills).
        for _ in 0..28 {
            ledger.release(A);
            assert_eq!(count(&ledger.grant(), A), 0);
        }
        assert_eq!(ledger.held_by(A), 32);
        assert_eq!(ledger.held_by(B), 28);
        assert_eq!(ledger.held, 60, "the reserve is free again");
        // Both below their share: what either frees goes to the one whose turn it is.
        ledger.release(A);
        ledger.release(B);
        let granted = ledger.grant();
        assert_eq!((count(&granted, A), count(&granted, B)), (1, 1));
    }

    #[test]
    fn many_waiting_subscriptions_of_one_partner_do_not_outweigh_another() {
        let mut ledger = Ledger::new(64);
        let mut next = 0;
        // Both arrive at once; A with ten times as many deliveries.
        for _ in 0..10 {
            ledger.enqueue(A, next);
            next += 1;
        }
        ledger.enqueue(B, next);
        next += 1;
        for _ in 0..1000 {
            ledger.enqueue(A, next);
            next += 1;
        }
        for _ in 0..100 {
            ledger.enqueue(B, next);
            next += 1;
        }
        let granted = ledger.grant();
        assert_eq!(count(&granted, A), 30);
        assert_eq!(
            count(&granted, B),
            30,
            "equal halves, the reserve kept for a third"
        );
    }

    #[test]
    fn turns_alternate_between_waiting_partners() {
        let mut ledger = Ledger::new(1);
        for (id, partner) in [A, A, A, B, B, B].into_iter().enumerate() {
            ledger.enqueue(partner, id as u64);
        }
        let mut order: Vec<char> = ledger.grant().into_iter().map(|(p, _)| p).collect();
        for _ in 0..5 {
            let holder = if ledger.held_by(A) > 0 { A } else { B };
            ledger.release(holder);
            order.extend(ledger.grant().into_iter().map(|(p, _)| p));
        }
        assert_eq!(order, vec![A, B, A, B, A, B]);
    }

    #[test]
    fn a_cancelled_waiter_is_never_granted_and_its_partner_stops_counting() {
        let mut ledger = Ledger::new(4);
        let mut next = 0;
        wait(&mut ledger, A, 4, &mut next);
        ledger.enqueue(B, 100);
        assert!(ledger.cancel(B, 100));
        assert!(!ledger.cancel(B, 100), "only once");
        ledger.release(A);
        assert_eq!(ledger.grant(), Vec::new(), "A's waiting list is empty");
        ledger.enqueue(A, 5);
        assert_eq!(
            ledger.grant(),
            vec![(A, 5)],
            "B is no longer active: A's share is all"
        );
    }

    /// A deterministic pseudo-random sequence (no test dependency needed).
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *seed >> 33
    }

    #[test]
    fn random_traffic_keeps_shares_fair_and_leaves_no_slot_idle_but_the_reserve() {
        let partners = [A, B, C];
        let total = 32;
        let reserve = reserve_for(total);
        let mut ledger = Ledger::new(total);
        let mut seed = 7;
        let mut next = 0;
        for _ in 0..20_000 {
            let partner = partners[(lcg(&mut seed) % 3) as usize];
            if lcg(&mut seed).is_multiple_of(2) {
                ledger.enqueue(partner, next);
                next += 1;
            } else {
                ledger.release(partner);
            }
            let granted = ledger.grant();
            let share = total.div_ceil(ledger.accounts.len().max(1));
            let newcomer_share = total.div_ceil(ledger.accounts.len() + 1);
            let free = total - ledger.held;
            // Above its share only by a grant made while nobody waiting was below theirs.
            for (p, _) in &granted {
                if ledger.held_by(*p) > share {
                    assert!(
                        ledger.turn.iter().all(|q| ledger.held_by(*q) >= share),
                        "{p} went above its share {share} while another waited below"
                    );
                }
            }
            // Work-conserving: a waiter is left waiting only for the reserve.
            if !ledger.turn.is_empty() {
                assert!(free <= reserve, "{free} slots idle while deliveries wait");
                if free > 0 {
                    assert!(
                        ledger
                            .turn
                            .iter()
                            .all(|q| ledger.held_by(*q) >= newcomer_share),
                        "the reserve withheld from a partner below a newcomer's share"
                    );
                }
            }
            assert_eq!(
                ledger.held,
                partners.iter().map(|p| ledger.held_by(*p)).sum::<usize>()
            );
        }
    }

    #[tokio::test]
    async fn an_abandoned_wait_gives_its_slot_to_the_next_waiter() {
        let slots = std::sync::Arc::new(FairSlots::new(1));
        let (a, b) = (PartnerId::new(), PartnerId::new());
        let held = slots.acquire(a).await;
        let abandoned = tokio::spawn({
            let slots = std::sync::Arc::clone(&slots);
            async move {
                let _slot = slots.acquire(b).await;
            }
        });
        tokio::task::yield_now().await;
        abandoned.abort();
        let _ = abandoned.await;
        let next = tokio::spawn({
            let slots = std::sync::Arc::clone(&slots);
            async move {
                let _slot = slots.acquire(a).await;
            }
        });
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(5), next)
            .await
            .expect("the slot went to the live waiter")
            .expect("task");
        assert_eq!(slots.held_by(a) + slots.held_by(b), 0);
    }
}
