//! The rows that hold sealed secrets, as a whole: sealing, checking, re-wrapping and erasing.
