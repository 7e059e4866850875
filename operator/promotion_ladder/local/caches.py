"""What the cells of one `ladder run` share on disk besides the corpus: torch.compile's caches.

Every cell of a ladder compiles the same few model shapes (a candidate is one shape, and a
stage re-runs it on more seeds and host blocks), and on a GPU the first compilation of a d12
model took 35 s of a 48.5 s set-up (benchmarks/trainer-results.md, H200, 2026-11-29). Inductor
keeps what it compiled in a directory keyed by the graph's content: the FX graph cache
(TORCHINDUCTOR_FX_GRAPH_CACHE), the AOTAutograd cache (TORCHINDUCTOR_AUTOGRAD_CACHE) and the
Triton kernels (TRITON_CACHE_DIR, by default under the same directory). A cell that finds
its shape there skips code generation and kernel compilation; Dynamo's tracing still runs.

torch's default directory (/tmp/torchinductor_<user>) is already shared by processes of one
user on one machine, but it is emptied with /tmp and says nothing about which ladder filled it.
`ladder run` therefore points every cell at `<work dir>/compile-cache/`, one per ladder,
kept with the cells' results (a resumed run finds it warm). A value the user set in the
environment or in trainer.env wins. On Kubernetes a Pod's /tmp is its own, so the same
sharing needs a volume (docs/operator.md, "Compile cache").
"""

from __future__ import annotations

from pathlib import Path

COMPILE_CACHE_DIR = "compile-cache"


def compile_cache_env(workdir: Path) -> dict[str, str]:
    """Environment that makes a cell use the ladder's shared compile cache (caches forced on,
    since torch before 2.5 left the FX graph cache off by default)."""
    return {
        "TORCHINDUCTOR_CACHE_DIR": str((workdir / COMPILE_CACHE_DIR).resolve()),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
    }
