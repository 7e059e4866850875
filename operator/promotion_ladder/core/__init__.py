"""The pure core: API models, planner, rules and GPU-hour accounting. No Kubernetes, no torch."""
