"""Volumes for simulated pods, which are processes, not containers.

A process shares the host's filesystem, so nothing can be mounted at a container path such
as /data without changing the host. Instead every volume mount resolves to a host directory
(`resolve_volume`), and the pod's command, args and env values that name a path under a
mountPath are rewritten to the same path under that directory (`translate`), before the
process starts. The mapping is also handed to the process as LOCALCLUSTER_MOUNTS
(JSON: mountPath -> host directory) for code that builds paths itself.

What a volume becomes:
  hostPath                      its path (type DirectoryOrCreate creates it; Directory must exist)
  persistentVolumeClaim         the bound PersistentVolume's hostPath or local path (read through the API)
  emptyDir                      <pod scratch>/volumes/<name>
  emptyDir medium: Memory       <shm root>/<pod>/<name>, a directory on the host's /dev/shm (a tmpfs)
  downwardAPI                   <pod scratch>/volumes/<name>, its items' fieldRef values written as
                                files when the pod starts (not refreshed when an annotation changes)
  anything else (projected service-account token, configMap, secret, ...): not mounted

Not simulated: readOnly, mount propagation, sizeLimit, per-pod isolation of hostPath and PVC
data (pods share the host directory, as pods on one node share a hostPath), and paths a
program computes at run time from a mountPath it did not get through command, args or env.
A mount at /dev/shm itself is the host's /dev/shm (already a tmpfs) and is not rewritten.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

MOUNTS_ENV = "LOCALCLUSTER_MOUNTS"
SHM_PATH = "/dev/shm"


class VolumeError(Exception):
    """A volume that cannot be provided (reported as the pod's StartError)."""


def resolve_volume(
    volume: dict[str, Any],
    *,
    scratch: Path,
    shm_dir: Path,
    read_pvc: Callable[[str], dict[str, Any]],
    read_pv: Callable[[str], dict[str, Any]],
    field_ref: Callable[[str], str] = lambda path: "",
) -> Path | None:
    """The host directory behind one pod volume, or None for a type that is not simulated.
    read_pvc / read_pv: name -> the object as a dict (raising VolumeError when absent);
    field_ref: a downward-API fieldPath -> its value for this pod (raising ValueError when the
    path is not supported)."""
    name = volume["name"]
    if volume.get("hostPath") is not None:
        hp = volume["hostPath"]
        path = Path(hp["path"])
        kind = hp.get("type") or ""
        if kind == "DirectoryOrCreate":
            path.mkdir(parents=True, exist_ok=True)
        elif kind == "Directory" and not path.is_dir():
            raise VolumeError(f"volume {name!r}: hostPath {path} is not a directory (type Directory)")
        elif kind == "File" and not path.is_file():
            raise VolumeError(f"volume {name!r}: hostPath {path} is not a file (type File)")
        return path
    if volume.get("emptyDir") is not None:
        medium = (volume["emptyDir"] or {}).get("medium") or ""
        path = (shm_dir if medium == "Memory" else scratch / "volumes") / name
        path.mkdir(parents=True, exist_ok=True)
        return path
    if volume.get("downwardAPI") is not None:
        path = scratch / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        for item in (volume["downwardAPI"] or {}).get("items") or []:
            if "fieldRef" not in item:
                raise VolumeError(f"volume {name!r}: item {item.get('path')!r}: only fieldRef items are simulated")
            try:
                value = field_ref(item["fieldRef"]["fieldPath"])
            except ValueError as exc:
                raise VolumeError(f"volume {name!r}: {exc}") from None
            target = path / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(value, encoding="utf-8")
        return path
    if volume.get("persistentVolumeClaim") is not None:
        claim = volume["persistentVolumeClaim"]["claimName"]
        pvc = read_pvc(claim)
        pv_name = (pvc.get("spec") or {}).get("volumeName")
        phase = (pvc.get("status") or {}).get("phase")
        if phase != "Bound" or not pv_name:
            raise VolumeError(f"volume {name!r}: PersistentVolumeClaim {claim!r} is not bound (phase {phase})")
        pv_spec = read_pv(pv_name).get("spec") or {}
        source = pv_spec.get("hostPath") or pv_spec.get("local")
        if not source:
            raise VolumeError(
                f"volume {name!r}: PersistentVolume {pv_name!r} is neither hostPath nor local; "
                "the localcluster node agent can only provide those"
            )
        return Path(source["path"])
    return None


def container_mounts(container: dict[str, Any], volume_dirs: dict[str, Path | None]) -> dict[str, str]:
    """mountPath -> host directory for each of the container's mounts whose volume resolved."""
    out = {}
    for m in container.get("volumeMounts") or []:
        src = volume_dirs.get(m.get("name"))
        if src is None:
            continue
        if m.get("subPath"):
            src = src / m["subPath"]
        out[m["mountPath"].rstrip("/") or "/"] = str(src)
    return out


def translate(value: str, mounts: dict[str, str]) -> str:
    """`value` with a leading mountPath (the whole value, or after `--flag=`) replaced by its
    host directory; the longest mountPath wins. Anything else is returned as it is."""

    def one(text: str) -> str | None:
        for mount_path in sorted(mounts, key=len, reverse=True):
            if mount_path in (SHM_PATH, "/"):
                continue
            if text == mount_path or text.startswith(mount_path + "/"):
                return mounts[mount_path] + text[len(mount_path) :]
        return None

    whole = one(value)
    if whole is not None:
        return whole
    key, eq, rest = value.partition("=")
    if eq and key.startswith("-"):
        tail = one(rest)
        if tail is not None:
            return f"{key}={tail}"
    return value


def mounts_env(mounts: dict[str, str]) -> str:
    return json.dumps(mounts, sort_keys=True)
