"""Experiments that combine federated training, defenses and attacks (the paper's Sec. 6)."""
