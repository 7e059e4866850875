"""Local adapters: run a ladder on this machine without Kubernetes."""
