"""regionlock.service: the decision domain (decision, policy, snapshot, errors, overrides) and its rooms."""
