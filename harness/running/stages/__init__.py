"""Obtaining artifacts: each module trains (or loads from the store) one kind and computes what it produces."""
