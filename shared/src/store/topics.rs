//! Topics and grants.
