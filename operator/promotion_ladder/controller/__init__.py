"""The Kubernetes operator: Kopf runs it; thin I/O parts around pure builders and the core's ladder step
(docs/architecture.md shows the parts)."""
