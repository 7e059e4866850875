"""The Kubernetes operator: Kopf handlers (thin I/O) around pure builders and the core planner."""
