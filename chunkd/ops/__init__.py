"""Operator tasks behind the CLI: verify, gc, doctor."""
