//! The `anika.system` topic's bookkeeping: what anika has told each partner about its subscriptions.
