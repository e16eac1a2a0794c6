//! The tracker's business rules, as pure functions: who gets a task, what it costs, what it pays.
//!
//! Everything is derived from the task id (and the round of assignment), never from a
//! random source, so that two runs of the scripted day book the same amounts and can be
//! compared line by line.

/// FNV-1a, 64 bit: a stable hash (std's `DefaultHasher` may change between releases).
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What assigning `task_id` costs the assignee: 10 to 20.
pub fn assign_cost(task_id: &str) -> i64 {
    10 + (fnv(&format!("{task_id}:cost")) % 11) as i64
}

/// What closing `task_id` pays its assignee: 20 to 40.
pub fn close_reward(task_id: &str) -> i64 {
    20 + (fnv(&format!("{task_id}:reward")) % 21) as i64
}

/// The index (into the user list) of the user who gets `task_id` in assignment `round`
/// (0 at creation, 1 in the first bulk reassignment, …).
pub fn assignee(task_id: &str, round: u32, users: usize) -> usize {
    (fnv(&format!("{task_id}#{round}")) % users.max(1) as u64) as usize
}

/// The id of the `n`-th task of the day (1-based), e.g. `POPUG-07`.
pub fn task_id(n: usize) -> String {
    format!("POPUG-{n:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_lie_between_10_and_20_and_rewards_between_20_and_40() {
        for n in 1..=500 {
            let id = task_id(n);
            assert!((10..=20).contains(&assign_cost(&id)), "{id}");
            assert!((20..=40).contains(&close_reward(&id)), "{id}");
        }
    }

    #[test]
    fn the_amounts_and_assignees_depend_on_the_task_id_alone() {
        assert_eq!(assign_cost("POPUG-01"), assign_cost("POPUG-01"));
        assert_eq!(close_reward("POPUG-01"), close_reward("POPUG-01"));
        assert_eq!(assignee("POPUG-01", 1, 5), assignee("POPUG-01", 1, 5));
        // Pinned, so that a change of the hash (and thereby of every run's numbers) is seen.
        assert_eq!(fnv("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn every_user_gets_tasks_over_a_day() {
        let mut got = [0; 5];
        for n in 1..=40 {
            got[assignee(&task_id(n), 0, 5)] += 1;
        }
        assert!(got.iter().all(|&count| count > 0), "{got:?}");
    }
}
