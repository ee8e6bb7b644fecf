"""Approvals: people deciding governed actions that policy says need them."""
