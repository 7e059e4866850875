"""List-then-watch of Kubernetes objects: `ListWatch` (one kind, one namespace or all, one
thread), and on it `Informer`/`Cache`, the operator's index of its ladders' Jobs and Pods as
small summaries. The simulated kubelet (cluster/localcluster/nodeagent.py) watches its Pods
with the same `ListWatch`.

Why not Kopf for the Jobs and Pods (Kopf watches the ladders, of which there are few): Kopf
runs one asyncio task per watched object and, until the initial listing is indexed, every
one of them re-checks every object whenever one is added; with 4,000 Jobs and 4,000 Pods
after a restart that is quadratic work with every full body held at once (23 minutes before
the first reconcile, 1.36 GB). The kubernetes client has a watch but no informer; this is
the part of client-go's reflector the operator needs:
  * list with pagination (`limit`/`continue`), server-side label selection, raw JSON (no
    client models): one page of bodies is alive at a time, each becomes a summary;
  * watch from the list's resourceVersion with bookmarks, so a quiet watch stays resumable;
  * on an error (a dropped connection, a 5xx) resume from the last resourceVersion after a
    short backoff; on 410 Gone (that version is too old) list again, and report what changed
    meanwhile, deletions included;
  * `stop()` ends the thread: it interrupts the read in progress (urllib3's
    `HTTPResponse.shutdown`) and joins, so no thread is left reading a socket or writing a
    log while the interpreter finalizes (a thread still writing there aborts the process).
An informer is `synced` once its first list is complete; nothing is reconciled before every
informer is synced, so a reconcile never mistakes "not listed yet" for "missing".
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from urllib3.response import BaseHTTPResponse

log = logging.getLogger("promotion_ladder.operator")
Key = tuple[str, str]  # (namespace, ladder name)

PAGE_SIZE = 500
WATCH_SECONDS = 300  # the server ends a watch after this; it is resumed from the last resourceVersion
# A read timeout a minute past the watch's own end notices a connection that died silently (no
# FIN), which would otherwise block the thread forever; a list page gets the same bound.
CONNECT_SECONDS = 10
READ_SECONDS = WATCH_SECONDS + 60
BACKOFF_SECONDS = (0.5, 1, 2, 5, 10)
JOIN_SECONDS = 5.0  # stop() waits this long for the thread


class _Stopped(Exception):
    """Raised in the thread when stop() came while a request was on its way."""


class ListWatch:
    """List, then watch, `list_fn` (a namespaced list called with `namespace`, or a
    cluster-wide one when it is None) from one thread until `stop()`.

    `on_list(items)` after every complete list (the first and each relist after 410): `items`
    yields the bodies page by page and must be consumed. `on_event(type, body)` for every
    ADDED, MODIFIED or DELETED of the watch. Both are called from the thread."""

    def __init__(
        self,
        name: str,
        list_fn: Callable[..., Any],
        namespace: str | None,
        *,
        on_list: Callable[[Iterator[dict[str, Any]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> None:
        self.name, self.namespace = name, namespace
        self._list_fn = list_fn
        self._selectors = {
            k: v for k, v in (("label_selector", label_selector), ("field_selector", field_selector)) if v
        }
        self._on_list, self._on_event = on_list, on_event
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._resp: BaseHTTPResponse | None = None  # the response being read, for stop() to interrupt
        self._thread: threading.Thread | None = None
        self.lists = 0  # complete lists (1 + relists): visible in tests and logs

    @property
    def where(self) -> str:
        return self.namespace or "all namespaces"

    def start(self) -> ListWatch:
        # A daemon only as a last resort: stop() joins it.
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.name}-{self.where}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = JOIN_SECONDS) -> bool:
        """End the thread: no callback runs after this returns True (False: it did not end in
        `timeout` seconds, which is logged)."""
        self._stop.set()
        with self._lock:
            resp = self._resp
        if resp is not None:
            # Already released or closed (these errors): nothing is being read.
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError, OSError):
                resp.shutdown()  # the blocked read returns at once; closing would wait for it
        if self._thread is None or self._thread is threading.current_thread():
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s watch (%s) did not stop within %g s", self.name, self.where, timeout)
            return False
        return True

    def _run(self) -> None:
        failures = 0
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self.list_once()
                rv = self._watch(rv)
                failures = 0
            except _Stopped:
                return
            except ApiException as exc:
                if exc.status == 410:  # too old to resume: list again, at once
                    rv = None
                    continue
                if self._stop.is_set():
                    return
                failures += 1
                log.warning("%s watch (%s): %s %s; retrying", self.name, self.where, exc.status, exc.reason)
            except Exception as exc:  # noqa: BLE001 - a dropped connection: resume (or list), never give up
                if self._stop.is_set():
                    return
                failures += 1
                log.warning("%s watch (%s): %s; retrying", self.name, self.where, exc)
            if failures:
                self._stop.wait(BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS)) - 1])

    def _open(self, **kwargs: Any) -> BaseHTTPResponse:
        args = (self.namespace,) if self.namespace else ()
        resp: BaseHTTPResponse = self._list_fn(
            *args, _preload_content=False, _request_timeout=(CONNECT_SECONDS, READ_SECONDS), **self._selectors, **kwargs
        )
        with self._lock:
            self._resp = resp
        if self._stop.is_set():  # stop() came while the request was on its way: it could not interrupt it
            resp.release_conn()
            raise _Stopped()
        return resp

    def _done(self, resp: BaseHTTPResponse) -> None:
        with self._lock:
            self._resp = None
        resp.release_conn()

    def _pages(self, rv: list[str]) -> Iterator[dict[str, Any]]:
        token = None
        while True:
            resp = self._open(limit=PAGE_SIZE, **({"_continue": token} if token else {}))
            try:
                page = json.loads(resp.data)
            finally:
                self._done(resp)
            rv[0] = (page.get("metadata") or {}).get("resourceVersion") or rv[0]
            yield from page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    def list_once(self) -> str:
        """One complete list, handed to `on_list`; the resourceVersion to watch from."""
        rv = [""]
        items = self._pages(rv)
        self._on_list(items)
        for _ in items:  # whatever on_list left unread: the resourceVersion is the last page's
            pass
        self.lists += 1
        return rv[0]

    def _watch(self, rv: str) -> str:
        """Apply watch events until the server ends the watch; the resourceVersion to resume
        from. Raises ApiException(410) when the version is too old."""
        resp = self._open(watch=True, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS)
        try:
            for line in iter_resp_lines(resp):
                if self._stop.is_set():
                    break
                if not line or line.isspace():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise ApiException(status=obj.get("code"), reason=f"{obj.get('reason')}: {obj.get('message')}")
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._on_event(kind, obj)
        finally:
            self._done(resp)
        return rv


class Summary(Protocol):
    """What an informer keeps of an object: its ladder (None: not a ladder's object)."""

    @property
    def ladder(self) -> str | None: ...


S = TypeVar("S", bound=Summary)
EventFn = Callable[[str, str, str, str, Any], None]  # (type, uid, ladder, namespace, summary)


class Informer(Generic[S]):
    """The summaries of one kind's ladder objects in one namespace (or all), kept by a ListWatch.

    `on_event(type, uid, ladder, namespace, summary)` is called from the watch thread for every
    change of a summary after the first list (type ADDED, MODIFIED or DELETED); a change the
    summary does not show (a progress annotation, a resourceVersion) is not an event."""

    def __init__(
        self,
        kind: str,
        list_fn: Callable[..., Any],
        namespace: str | None,
        label_selector: str,
        summarize: Callable[[dict[str, Any]], S],
        on_event: EventFn,
    ) -> None:
        self.kind, self.namespace = kind, namespace
        self._summarize = summarize
        self._on_event = on_event
        self._lock = threading.Lock()
        self._by_uid: dict[str, tuple[Key, S]] = {}
        self._by_key: dict[Key, dict[str, S]] = {}
        self.synced = threading.Event()
        self.source = ListWatch(
            kind, list_fn, namespace, label_selector=label_selector, on_list=self._listed, on_event=self._apply
        )

    def get(self, key: Key) -> list[S]:
        """The summaries of one ladder's objects (a copy)."""
        with self._lock:
            objs = self._by_key.get(key)
            return list(objs.values()) if objs else []

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_uid)

    @property
    def lists(self) -> int:
        return self.source.lists

    def start(self) -> Informer[S]:
        self.source.start()
        return self

    def stop(self) -> bool:
        return self.source.stop()

    def _entry(self, body: dict[str, Any]) -> tuple[Key, S] | None:
        summary = self._summarize(body)
        if not summary.ladder:
            return None
        return (body["metadata"].get("namespace", ""), summary.ladder), summary

    def _listed(self, items: Iterator[dict[str, Any]]) -> None:
        seen: dict[str, tuple[Key, S]] = {}
        for body in items:
            entry = self._entry(body)
            if entry is not None:
                seen[body["metadata"]["uid"]] = entry
        with self._lock:
            before, self._by_uid, self._by_key = self._by_uid, seen, {}
            for uid, (key, summary) in seen.items():
                self._by_key.setdefault(key, {})[uid] = summary
        if not self.synced.is_set():
            log.info("%s informer (%s): %d objects listed", self.kind, self.source.where, len(seen))
            self.synced.set()
            return
        # A relist: report what changed while the watch was down.
        for uid in before.keys() | seen.keys():
            self._report("MODIFIED" if uid in before else "ADDED", uid, before.get(uid), seen.get(uid))

    def _apply(self, kind: str, body: dict[str, Any]) -> None:
        uid = body["metadata"]["uid"]
        entry = None if kind == "DELETED" else self._entry(body)
        with self._lock:
            old = self._by_uid.pop(uid, None)
            if old is not None:
                objs = self._by_key.get(old[0])
                if objs is not None:
                    objs.pop(uid, None)
                    if not objs:
                        del self._by_key[old[0]]
            if entry is not None:
                self._by_uid[uid] = entry
                self._by_key.setdefault(entry[0], {})[uid] = entry[1]
        self._report(kind, uid, old, entry)

    def _report(self, kind: str, uid: str, old: tuple[Key, S] | None, new: tuple[Key, S] | None) -> None:
        """The events of one object's change, from the watch or a relist: `kind` for its new
        entry; a DELETED for the ladder it left (deleted, or relabelled away: a label-selected
        watch reports an object that stops matching as DELETED); none when no summary changed."""
        if new == old:
            return
        if old is not None and (new is None or new[0] != old[0]):
            self._on_event("DELETED", uid, old[0][1], old[0][0], old[1])
        if new is not None:
            self._on_event(kind, uid, new[0][1], new[0][0], new[1])


class Cache(Generic[S]):
    """One kind's informers over the watched namespaces (or one for all), read as one index:
    `get((namespace, ladder))` -> the summaries of that ladder's objects."""

    def __init__(self, informers: list[Informer[S]]) -> None:
        self.informers = informers

    def get(self, key: Key) -> list[S]:
        for inf in self.informers:
            if inf.namespace is None or inf.namespace == key[0]:
                return inf.get(key)
        return []

    def synced(self) -> bool:
        return all(inf.synced.is_set() for inf in self.informers)

    def wait_synced(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        return all(
            inf.synced.wait(None if deadline is None else max(deadline - time.monotonic(), 0)) for inf in self.informers
        )

    def stop(self) -> bool:
        """Stop every informer's thread; True when all ended."""
        ended = [inf.stop() for inf in self.informers]  # every one, not up to the first that hangs
        return all(ended)
