"""A real Kubernetes control plane on loopback, with simulated GPU nodes, for tests and demos.

What is real: etcd, kube-apiserver, kube-controller-manager and kube-scheduler, built from
upstream sources by cluster/build.sh. What is simulated: the nodes. A Python node agent
(:mod:`localcluster.nodeagent`) registers Node objects with GPU capacity and runs each pod
bound to them as a local process in the project's own Python environment (images are
ignored). See docs/localcluster.md.

Entry points:
  - :class:`localcluster.controlplane.ControlPlane` (start/stop the processes),
  - :class:`localcluster.nodeagent.NodeAgent` and :func:`localcluster.nodeagent.default_nodes`,
  - ``python -m localcluster up|down|agent``,
  - the pytest plugin :mod:`localcluster.pytest_plugin` (fixtures ``local_cluster``,
    ``namespace``, ``local_cluster_nodes``).
"""
