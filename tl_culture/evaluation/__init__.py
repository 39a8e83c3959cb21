"""Evaluation: Δ NLL of interventions on held-out text, with controls and bootstrap CIs."""
