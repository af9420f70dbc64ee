"""Experiments: A/B tests per placement, their assignment and their statistics."""
