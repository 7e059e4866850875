"""Mounts this package leaves on the host (kubelets, containerd, dockerd), found and removed by directory."""

from __future__ import annotations

import subprocess
from pathlib import Path


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below directory, deepest first."""
    prefix = str(directory.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def unmount_under(directory: Path) -> None:
    for _ in range(3):  # a lazily unmounted parent can reveal mounts stacked below it
        points = mounts_under(directory)
        if not points:
            return
        for point in points:
            subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30, check=False)
