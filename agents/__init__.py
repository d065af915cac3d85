"""What acts in an environment: sampling backends, the policy and the rollout engine."""
