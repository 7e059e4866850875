"""The project's two images, built here from the unchanged Dockerfiles, and the image store the
real nodes start from (`python -m localcluster images`).

No image registry is reachable from these machines, so the Dockerfiles' public bases
(python:3.11-slim-bookworm, pytorch/pytorch:...-cuda) are replaced, through their own ARGs, by
bases made here:

- localcluster.local/python:3.11-bookworm: a Debian bookworm root made by debootstrap from
  Debian's packages (python3, python3-venv, python-is-python3, ca-certificates), with this
  machine's CA bundle (pip behind this network's TLS proxy needs it) and PIP_CERT pointing at it;
- localcluster.local/torch:<torch version>-py3.11-bookworm: the same root with a venv at
  /opt/torch, first on PATH (as conda's is in the PyTorch image), holding the torch this
  project's environment installed from PyPI (the CUDA build, with its nvidia-* libraries) and
  its requirements, hard-linked from that environment's files instead of downloaded again.

dockerd (Debian's docker.io, legacy builder: BuildKit would fetch its Dockerfile frontend from a
registry) builds both images with `--network host` and without touching iptables or bridges,
then stops. The built images are imported into the image store, a containerd root under the
cache; every real node's containerd root is a hard-link clone of it (localcluster.containerd),
so a node starts with the images already unpacked.

The build is skipped while nothing it reads has changed: a hash of each Dockerfile, the files
its COPY lines take (the operator's: pyproject.toml, README.md, operator/; the trainer's also
trainer/ and cluster/) and its base.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Self

from . import binaries
from .containerd import SNAPSHOTTER, RuntimeClient, clone_root
from .hostmounts import unmount_under
from .processes import spawn, stop_group

log = logging.getLogger("localcluster.images")

REPO = Path(__file__).resolve().parents[2]
DEBIAN_MIRROR = os.environ.get("LOCALCLUSTER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PYTHON_BASE = "localcluster.local/python:3.11-bookworm"
PAUSE_IMAGE = "localcluster.local/pause:busybox-1"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
DOCKER = "/usr/bin/docker"  # Debian's docker.io client (20.10, the daemon's version)


class ImageError(RuntimeError):
    """A step of the image build failed; the message names the step and where its log is."""


@dataclass(frozen=True)
class Image:
    """One of the project's images: its Dockerfile, the build arg that names its base, the reference."""

    name: str
    dockerfile: str
    base_arg: str

    @property
    def reference(self) -> str:
        return f"ghcr.io/promotion-ladder/{self.name}:{app_version()}"


OPERATOR = Image("operator", "Dockerfile.operator", "PYTHON_IMAGE")
TRAINER = Image("trainer", "Dockerfile.trainer", "TORCH_IMAGE")
IMAGES = (OPERATOR, TRAINER)


def app_version() -> str:
    """The chart's appVersion: the tag the chart and examples use, so both run unchanged."""
    text = (REPO / "charts" / "promotion-ladder" / "Chart.yaml").read_text()
    match = re.search(r'^appVersion:\s*"?([^"\s]+)"?\s*$', text, re.MULTILINE)
    if not match:
        raise ImageError("charts/promotion-ladder/Chart.yaml has no appVersion")
    return match.group(1)


IMAGE_TOOLS = {"dockerd": "docker.io", "debootstrap": "debootstrap", "chroot": "coreutils"}


def images_missing_reason() -> str | None:
    """One line naming the Debian packages the image build lacks, or None."""
    missing = sorted({pkg for tool, pkg in IMAGE_TOOLS.items() if shutil.which(tool) is None})
    if not BUSYBOX.exists():
        missing.append("busybox-static")
    if missing:
        return f"the image build needs Debian packages: apt-get install {' '.join(missing)}"
    return None


def images_dir() -> Path:
    return binaries.cache_dir() / "images"


def store_dir() -> Path:
    return images_dir() / "store"


@contextlib.contextmanager
def _locked(shared: bool) -> Iterator[None]:
    """One build at a time per cache; clones (shared) wait while the store changes."""
    images_dir().mkdir(parents=True, exist_ok=True)
    with open(images_dir() / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield


def clone_store(root: Path) -> bool:
    """A node's containerd root cloned from the image store; False when there is no store yet."""
    with _locked(shared=True):
        if not (store_dir() / "io.containerd.metadata.v1.bolt").is_dir():
            return False
        clone_root(store_dir(), root)
        return True


# --- the pause image ------------------------------------------------------------------------


def pause_archive() -> Path:
    """A docker-archive of the pod sandbox image: a static busybox sleeping until killed (the CRI
    kills the sandbox with SIGKILL). Deterministic, so its digest is the same on every run."""
    path = images_dir() / "pause.tar"
    if path.exists():
        return path
    if not BUSYBOX.exists():
        raise ImageError(f"{BUSYBOX} missing: install Debian's busybox-static (the pod sandbox image is made from it)")
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin",):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        data = BUSYBOX.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    diff_id = hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [PAUSE_IMAGE], "Layers": [f"{diff_id}/layer.tar"]}]
    ).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, blob in ((f"{diff_id}/layer.tar", layer_bytes), (config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(blob), 0o644
            tar.addfile(info, io.BytesIO(blob))
    os.replace(tmp, path)
    return path


# --- base images ----------------------------------------------------------------------------


def debian_root() -> Path:
    """The debootstrap root both bases start from (made once; about 2 minutes)."""
    root = images_dir() / f"rootfs-{DEBIAN_SUITE}"
    if (root / ".complete").exists():
        return root
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap missing: install Debian's debootstrap (the base images are made with it)")
    tmp = images_dir() / f"rootfs-{DEBIAN_SUITE}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("debootstrap %s into %s (%s)", DEBIAN_SUITE, tmp, DEBIAN_MIRROR)
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=" + ",".join(BASE_PACKAGES),
            DEBIAN_SUITE,
            str(tmp),
            DEBIAN_MIRROR,
        ],
        what="debootstrap the base root",
        log_path=images_dir() / "debootstrap.log",
        timeout=1800,
    )
    shutil.copy(HOST_CA_BUNDLE, tmp / "etc/ssl/certs/ca-certificates.crt")
    (tmp / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    return root


BASE_ENV = {"PIP_CERT": str(HOST_CA_BUNDLE), "SSL_CERT_FILE": str(HOST_CA_BUNDLE)}
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def torch_base() -> str:
    return f"localcluster.local/torch:{metadata.version('torch').split('+')[0]}-py3.11-{DEBIAN_SUITE}"


def torch_closure() -> list[metadata.Distribution]:
    """torch and every distribution it requires (extras followed), as installed in this environment."""
    from packaging.requirements import Requirement

    def key(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    found: dict[str, metadata.Distribution] = {}
    todo: list[tuple[str, frozenset[str]]] = [("torch", frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (key(name), extras) in seen:
            continue
        seen.add((key(name), extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[key(name)] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append((req.name, frozenset(req.extras)))
    return list(found.values())


class Docker:
    """A dockerd of our own for the builds: data in the cache, socket in a temporary directory,
    no iptables rules, no bridge (builds use the host's network)."""

    def __init__(self) -> None:
        self.exec_root = Path(tempfile.mkdtemp(prefix="lc-docker-"))
        self.socket = self.exec_root / "docker.sock"
        self.log_path = images_dir() / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        if shutil.which("dockerd") is None or not Path(DOCKER).exists():
            raise ImageError("dockerd missing: install Debian's docker.io (it builds the images)")
        self.proc = spawn(
            [
                "dockerd",
                "--data-root",
                str(images_dir() / "docker"),
                "--exec-root",
                str(self.exec_root),
                "--host",
                f"unix://{self.socket}",
                "--pidfile",
                str(self.exec_root / "dockerd.pid"),
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--bridge=none",
                "--storage-driver=overlay2",
            ],
            log_path=self.log_path,
            die_with_parent=True,
        )
        deadline = time.monotonic() + 60
        while self.docker("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ImageError(f"dockerd did not start; log {self.log_path}")
            time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_group(self.proc.pid, grace=20.0, proc=self.proc)
        unmount_under(self.exec_root)  # dockerd bind-mounts its network namespace there
        shutil.rmtree(self.exec_root, ignore_errors=True)

    def docker(
        self, *args: str, check: bool = True, timeout: float = 3600, stdin: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}
        proc = subprocess.run(
            [DOCKER, *args], capture_output=True, text=True, env=env, timeout=timeout, stdin=stdin, check=False
        )
        if check and proc.returncode != 0:
            raise ImageError(f"docker {' '.join(args[:3])}...: {proc.stderr.strip()[-2000:]}")
        return proc

    def has(self, ref: str) -> bool:
        return self.docker("image", "inspect", ref, check=False).returncode == 0

    def import_root(self, tar_cmd: list[str], ref: str, env: dict[str, str]) -> None:
        """`docker import` of a root filesystem streamed by tar_cmd, with ENV set."""
        change = "ENV " + " ".join(f"{k}={v}" for k, v in env.items())
        denv = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        with subprocess.Popen(tar_cmd, stdout=subprocess.PIPE) as tar:
            proc = subprocess.run(
                [DOCKER, "import", "--change", change, "--change", 'CMD ["python3"]', "-", ref],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                env=denv,
                timeout=3600,
                check=False,
            )
        if proc.returncode != 0 or tar.returncode != 0:
            raise ImageError(f"docker import {ref}: {proc.stderr.strip()}")

    def build(self, image: Image, base: str) -> None:
        log_path = images_dir() / f"build-{image.name}.log"
        t0 = time.monotonic()
        proc = self.docker(
            "build",
            "--network",
            "host",
            "--build-arg",
            f"{image.base_arg}={base}",
            "-f",
            str(REPO / image.dockerfile),
            "-t",
            image.reference,
            str(REPO),
            check=False,
        )
        log_path.write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise ImageError(f"docker build -f {image.dockerfile} failed; log {log_path}:\n{proc.stderr[-2000:]}")
        log.info("built %s in %.0fs", image.reference, time.monotonic() - t0)

    def save_into(self, store: RuntimeClient, refs: list[str]) -> None:
        """`docker save` streamed into the store's `ctr images import -`: no archive on disk."""
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        with subprocess.Popen([DOCKER, "save", *refs], stdout=subprocess.PIPE, env=env) as save:
            imported = store.ctr(
                "images", "import", "--snapshotter", SNAPSHOTTER, "-", timeout=3600, check=False, stdin=save.stdout
            )
        if save.returncode != 0 or imported.returncode != 0:
            raise ImageError(f"docker save | ctr images import: {imported.stderr.strip()}")


def make_python_base(docker: Docker) -> str:
    if not docker.has(PYTHON_BASE):
        root = debian_root()
        docker.import_root(["tar", "-C", str(root), "--exclude=./.complete", "-c", "."], PYTHON_BASE, BASE_ENV)
    return PYTHON_BASE


def make_torch_base(docker: Docker) -> str:
    ref = torch_base()
    if docker.has(ref):
        return ref
    root = debian_root()
    stage = Path(tempfile.mkdtemp(prefix="torch-base-", dir=images_dir()))
    try:
        # Hard links, never written to: the venv is made by the image's own python (new files),
        # and the torch files are linked from this environment as pip installed them.
        subprocess.run(["cp", "-a", "--link", f"{root}/.", str(stage)], check=True, timeout=600)
        _run(
            ["chroot", str(stage), "/usr/bin/python3", "-m", "venv", "/opt/torch"],
            what="create /opt/torch",
            log_path=images_dir() / "torch-base.log",
            timeout=600,
        )
        site = stage / "opt/torch/lib/python3.11/site-packages"
        for dist in torch_closure():
            for rel in dist.files or []:
                src = Path(str(dist.locate_file(rel)))
                if str(rel).startswith("..") or not src.is_file():
                    continue  # console scripts name this environment's python; the trainer needs none
                dest = site / str(rel)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.exists():
                    dest.unlink()
                os.link(src, dest)
        docker.import_root(
            ["tar", "-C", str(stage), "--exclude=./.complete", "-c", "."],
            ref,
            {**BASE_ENV, "PATH": f"/opt/torch/bin:{SYSTEM_PATH}"},
        )
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ref


# --- build, store, load ---------------------------------------------------------------------


def copied_paths(dockerfile: Path) -> list[str]:
    """The sources of the Dockerfile's COPY lines from the build context (not --from a stage)."""
    sources: list[str] = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w.rstrip("/") for w in words[1:-1] if not w.startswith("--")]
    return sources


def input_hash(image: Image, base: str) -> str:
    """What a build of `image` reads: its Dockerfile, the files its COPY lines take, and its base."""
    dockerfile = REPO / image.dockerfile
    h = hashlib.sha256(f"{image.dockerfile}\0{base}\0".encode())
    h.update(dockerfile.read_bytes())
    for top in copied_paths(dockerfile):
        paths = [REPO / top] if (REPO / top).is_file() else sorted((REPO / top).rglob("*"))
        for path in paths:
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _built_record() -> dict[str, dict[str, str]]:
    path = images_dir() / "built.json"
    return json.loads(path.read_text()) if path.exists() else {}


def build_all() -> dict[str, str]:
    """Builds what changed and refreshes the image store; returns reference -> manifest digest."""
    with _locked(shared=False):
        record = _built_record()
        bases = {OPERATOR.name: PYTHON_BASE, TRAINER.name: torch_base()}
        wanted = {i.name: input_hash(i, bases[i.name]) for i in IMAGES}
        stale = [i for i in IMAGES if record.get(i.name, {}).get("hash") != wanted[i.name]]
        if stale:
            with Docker() as docker:
                made = {OPERATOR.name: make_python_base, TRAINER.name: make_torch_base}
                for image in stale:
                    docker.build(image, made[image.name](docker))
                with store_runtime() as store:
                    t0 = time.monotonic()
                    docker.save_into(store, [i.reference for i in stale])
                    store.import_image(pause_archive())
                    log.info("image store: %s imported in %.0fs", [i.name for i in stale], time.monotonic() - t0)
                    digests = store.image_digests()
            for image in stale:
                record[image.name] = {
                    "hash": wanted[image.name],
                    "reference": image.reference,
                    "digest": digests[image.reference],
                }
            (images_dir() / "built.json").write_text(json.dumps(record, indent=2))
        return {r["reference"]: r["digest"] for r in record.values()}


@contextlib.contextmanager
def store_runtime() -> Iterator[RuntimeClient]:
    """The image store's containerd, running only while it is used (its startup GC drops images
    whose tag moved to a new build)."""
    state = Path(tempfile.mkdtemp(prefix="lc-store-"))
    client = RuntimeClient(state / "state" / "containerd.sock")
    config = state / "config.toml"
    config.write_text(f'''version = 2
root = "{store_dir()}"
state = "{state / "state"}"
[grpc]
  address = "{client.socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{store_dir() / "opt"}"
''')
    proc = spawn(
        ["containerd", "--config", str(config)], log_path=images_dir() / "store-containerd.log", die_with_parent=True
    )
    try:
        deadline = time.monotonic() + 60
        while not (client.socket.exists() and client.ctr("version", check=False).returncode == 0):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ImageError(
                    f"the image store's containerd did not start; log {images_dir() / 'store-containerd.log'}"
                )
            time.sleep(0.2)
        yield client
    finally:
        stop_group(proc.pid, grace=20.0, proc=proc)
        shutil.rmtree(state, ignore_errors=True)


def load_into(sockets: list[Path], digests: dict[str, str]) -> None:
    """Gives running nodes what they lack (nodes started from the store already have it)."""
    missing = {
        s: [ref for ref, d in digests.items() if RuntimeClient(s).image_digests().get(ref) != d] for s in sockets
    }
    refs = sorted({ref for refs in missing.values() for ref in refs})
    if not refs:
        return
    with tempfile.TemporaryDirectory(prefix="lc-export-", dir=images_dir()) as tmp, store_runtime() as store:
        archive = Path(tmp) / "images.tar"
        store.ctr("images", "export", str(archive), *refs, timeout=3600)
        for socket, lacking in missing.items():
            if lacking:
                RuntimeClient(socket).import_image(archive)


def _run(argv: list[str], *, what: str, log_path: Path, timeout: float) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise ImageError(f"{what}: `{' '.join(argv[:3])} ...` failed ({proc.returncode}); log {log_path}")


def main_images(cluster_dir: Path | None) -> int:
    """`python -m localcluster images`: build (cached), load into the cluster's nodes, print the references."""
    try:
        digests = build_all()
        if cluster_dir is not None:
            state = json.loads((cluster_dir / "state.json").read_text())
            sockets = [Path(s) for s in state.get("real_nodes", {}).get("sockets", [])]
            load_into(sockets, digests)
    except ImageError as exc:
        print(f"localcluster images: {exc}", file=sys.stderr)
        return 1
    for image in IMAGES:
        print(image.reference)
    return 0
