//! Delivery attempts, dead letters and the endpoint health derived from them.
