"""localcluster.mounts: which host directory a simulated pod's volume is, and how paths under a
mountPath reach the process."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcluster.mounts import VolumeError, container_mounts, resolve_volume, translate

PVCS = {
    "corpus": {"spec": {"volumeName": "pv-corpus"}, "status": {"phase": "Bound"}},
    "pending": {"spec": {}, "status": {"phase": "Pending"}},
    "nfs": {"spec": {"volumeName": "pv-nfs"}, "status": {"phase": "Bound"}},
}
PVS = {
    "pv-corpus": {"spec": {"hostPath": {"path": "/srv/corpus"}}},
    "pv-nfs": {"spec": {"nfs": {"server": "x", "path": "/export"}}},
}


def lookup(table, kind):
    def get(name):
        if name not in table:
            raise VolumeError(f"cannot read {kind} {name!r}: 404")
        return table[name]

    return get


VOLUMES = {
    "hostPath": ({"name": "v", "hostPath": {"path": "/srv/data"}}, "/srv/data"),
    "pvc bound to a hostPath PV": ({"name": "v", "persistentVolumeClaim": {"claimName": "corpus"}}, "/srv/corpus"),
    "emptyDir": ({"name": "v", "emptyDir": {}}, "{scratch}/volumes/v"),
    "emptyDir in memory": ({"name": "dshm", "emptyDir": {"medium": "Memory"}}, "{shm}/dshm"),
    "projected token: not mounted": ({"name": "kube-api-access-x", "projected": {"sources": []}}, None),
    "configMap: not mounted": ({"name": "v", "configMap": {"name": "c"}}, None),
}


@pytest.mark.parametrize("case", VOLUMES, ids=list(VOLUMES))
def test_resolve_volume(case, tmp_path):
    volume, want = VOLUMES[case]
    scratch, shm = tmp_path / "scratch", tmp_path / "shm"
    got = resolve_volume(
        volume,
        scratch=scratch,
        shm_dir=shm,
        read_pvc=lookup(PVCS, "PersistentVolumeClaim"),
        read_pv=lookup(PVS, "PersistentVolume"),
    )
    if want is None:
        assert got is None
    else:
        assert got == Path(want.format(scratch=scratch, shm=shm))
        if "{" in want:
            assert got.is_dir()  # emptyDirs exist before the process starts


REFUSED = {
    "unbound claim": ({"name": "v", "persistentVolumeClaim": {"claimName": "pending"}}, "is not bound (phase Pending)"),
    "missing claim": (
        {"name": "v", "persistentVolumeClaim": {"claimName": "nope"}},
        "cannot read PersistentVolumeClaim 'nope'",
    ),
    "PV of another kind": ({"name": "v", "persistentVolumeClaim": {"claimName": "nfs"}}, "neither hostPath nor local"),
    "hostPath Directory missing": (
        {"name": "v", "hostPath": {"path": "/nonexistent/x", "type": "Directory"}},
        "is not a directory",
    ),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_resolve_volume_refused(case, tmp_path):
    volume, message = REFUSED[case]
    with pytest.raises(VolumeError, match="volume 'v'|PersistentVolumeClaim") as exc:
        resolve_volume(
            volume,
            scratch=tmp_path,
            shm_dir=tmp_path,
            read_pvc=lookup(PVCS, "PersistentVolumeClaim"),
            read_pv=lookup(PVS, "PersistentVolume"),
        )
    assert message in str(exc.value)


def test_downward_api_volume_writes_its_items(tmp_path):
    """How a cell's config file reaches the trainer (an annotation projected by the downward API)."""
    fields = {"metadata.annotations['ladder.promotion.dev/config']": '{"depth":4}', "metadata.name": "p"}

    def field_ref(path):
        if path not in fields:
            raise ValueError(f"fieldRef {path!r} is not supported")
        return fields[path]

    volume = {
        "name": "cfg",
        "downwardAPI": {
            "items": [
                {
                    "path": "config.json",
                    "fieldRef": {"fieldPath": "metadata.annotations['ladder.promotion.dev/config']"},
                },
                {"path": "meta/name", "fieldRef": {"fieldPath": "metadata.name"}},
            ]
        },
    }
    got = resolve_volume(
        volume,
        scratch=tmp_path,
        shm_dir=tmp_path,
        read_pvc=lookup(PVCS, "x"),
        read_pv=lookup(PVS, "x"),
        field_ref=field_ref,
    )
    assert (got / "config.json").read_text() == '{"depth":4}' and (got / "meta/name").read_text() == "p"
    bad = {"name": "v", "downwardAPI": {"items": [{"path": "x", "fieldRef": {"fieldPath": "status.phase"}}]}}
    with pytest.raises(VolumeError, match="volume 'v': fieldRef 'status.phase'"):
        resolve_volume(
            bad,
            scratch=tmp_path,
            shm_dir=tmp_path,
            read_pvc=lookup(PVCS, "x"),
            read_pv=lookup(PVS, "x"),
            field_ref=field_ref,
        )


def test_container_mounts_subpath_and_unresolved():
    ctr = {
        "volumeMounts": [
            {"name": "corpus", "mountPath": "/data/"},
            {"name": "c", "mountPath": "/cache", "subPath": "inductor"},
            {"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
        ]
    }
    assert container_mounts(ctr, {"corpus": Path("/srv/corpus"), "c": Path("/srv/c"), "token": None}) == {
        "/data": "/srv/corpus",
        "/cache": "/srv/c/inductor",
    }


MOUNTS = {"/data": "/srv/corpus", "/data/extra": "/srv/extra", "/dev/shm": "/dev/shm/lc/p/dshm"}
TRANSLATE = {
    "the mountPath itself": ("/data", "/srv/corpus"),
    "a path under it": ("/data/corpus/a.txt", "/srv/corpus/corpus/a.txt"),
    "the longest mountPath wins": ("/data/extra/b", "/srv/extra/b"),
    "a --flag=value": ("--data=/data/corpus", "--data=/srv/corpus/corpus"),
    "a prefix that is not a path component": ("/database", "/database"),
    "relative paths stay": ("data/corpus", "data/corpus"),
    "/dev/shm is the host's already": ("/dev/shm/x", "/dev/shm/x"),
    "not a path": ("--seed", "--seed"),
}


@pytest.mark.parametrize("case", TRANSLATE, ids=list(TRANSLATE))
def test_translate(case):
    value, want = TRANSLATE[case]
    assert translate(value, MOUNTS) == want
