"""The audit trail: the HMAC hash chain with its signed anchor, and request correlation ids."""
