//! API keys, refresh tokens and the signing keys: issuing, rotating, revoking and resolving a caller.
