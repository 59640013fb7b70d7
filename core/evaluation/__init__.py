"""Evaluation: the one scored set per run and detector, metrics, curves, rules and the decision record."""
