"""Corral package."""
