"""Scoring over a Ray cluster: chunks of benchmark indices go to Ray tasks, rows come back.

The scan loop (:func:`nwot_fast.scan.scan` with ``ray=...``) stays the only writer of its
SQLite database: it sends only indices the database does not hold, and writes each chunk's
rows as the chunk comes back, with the same keys as a local scan. A task's result reaches the
driver once, when the task has finished, so a chunk that Ray retries after losing its worker
can never give a duplicate row; a killed driver leaves every chunk it already wrote, and the
same command run again sends only the rest.

Each worker process is single-threaded (one per core measured faster than one multi-threaded
process, see bench/RESULTS.md) and builds its :class:`~nwot_fast.scoring.ArchScorer` (the
data, the batch sampler) once per configuration, then scores its chunks with the same entry
a local scan uses, so its scores equal a local single-threaded scan's bit for bit.

Ray is optional (``pip install .[ray]``): this module imports it only when a cluster is used,
and imports neither Ray nor torch at import (the CLI imports it for its messages).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from .errors import MissingDependencyError, ResourceError

if TYPE_CHECKING:  # torch-free at import: the scoring types are imported where they are used
    from .scoring import ArchScore, ArchScorer, ScoreConfig

__all__ = ["score_on_ray", "ClusterError", "RayNotInstalledError", "check_ray_target", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'nwot_fast[ray]' (from a checkout: pip install .[ray])"
CONNECT_TIMEOUT_S = 5.0  # to decide that nothing listens at an address; ray.init itself would wait minutes
MAX_CHUNK = 16  # archs per task: a lost worker costs at most this much work, and progress moves per chunk
TASK_RETRIES = 3  # re-runs of a chunk whose worker process or node died
WAIT_SLICE_S = 0.25  # longest wait inside Ray between two chances to act on SIGINT / SIGTERM

# ``ray`` argument: True (or "local") starts a local instance; a string joins that cluster.
RayTarget = Union[bool, str]


class RayNotInstalledError(MissingDependencyError):
    """``ray=...`` was asked for but Ray is not importable (the CLI exits 2)."""


class ClusterError(ResourceError):
    """The Ray cluster cannot be reached or lost the work (the CLI exits 3)."""


def check_ray_target(ray) -> RayTarget:
    """Validate the ``ray`` argument of ``scan`` / ``evaluate`` before any work (and that Ray
    is installed: :class:`RayNotInstalledError` if not): ``True`` or
    ``"local"`` (a local Ray instance for this run), ``"auto"`` (the cluster ``ray start`` left
    on this machine, or ``RAY_ADDRESS``), ``"HOST:PORT"`` or ``"ray://HOST:PORT"``."""
    if ray is True:
        _import_ray()
        return True
    if not isinstance(ray, str):
        raise TypeError(
            f"ray must be True (a local Ray instance) or an address string ('auto', 'HOST:PORT', "
            f"'ray://HOST:10001'), got {type(ray).__name__} {ray!r}"
        )
    text = ray.strip()
    if text in ("", "local"):
        _import_ray()
        return True
    if text != "auto":
        _host_port(text)  # raises ValueError for a malformed address
    _import_ray()
    return text


def _host_port(address: str) -> Tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` or ``ray://HOST:PORT``."""
    what = (
        f"Ray address {address!r}: use 'auto', HOST:PORT (the head node's GCS port, 6379 by default) "
        "or ray://HOST:PORT (Ray Client, 10001 by default)"
    )
    parts = urlsplit(address if "://" in address else "//" + address)
    if parts.scheme not in ("", "ray") or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"bad {what}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in {what}") from None
    if not parts.hostname or port is None:
        raise ValueError(f"bad {what}")
    return parts.hostname, port


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise RayNotInstalledError(f"--ray needs Ray, which is not installed ({e}); install it with: {INSTALL_HINT}") from e
    return ray


def _resolve_auto() -> Optional[str]:
    """The address ``ray.init(address='auto')`` would join, to probe it first; None if unknown."""
    try:
        from ray._private.services import get_ray_address_from_environment
    except ImportError:  # a private helper; without it ray.init does the lookup unprobed
        return None
    try:
        found = get_ray_address_from_environment("auto", None)
    except ConnectionError as e:
        raise ClusterError(
            f"--ray auto: no running Ray cluster found on this machine ({e}); start one with "
            "'ray start --head' or give its address (HOST:PORT)"
        ) from None
    return None if found in (None, "auto") else found


def _probe(address: str, shown: str) -> None:
    """Fail fast, naming the address, when nothing accepts a TCP connection there."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise ClusterError(
            f"cannot reach a Ray cluster at {shown} ({host}:{port}: {reason} within {CONNECT_TIMEOUT_S:g} s); "
            "is 'ray start --head' running there, and is the port open?"
        ) from None


class _Connection:
    """A Ray session for one run: joins the cluster, or starts a local instance that it stops.

    While connected, this process's ``sys.stdout`` is its stderr: Ray prints cluster events
    ("a worker died ...") to stdout from a thread of its own, which would corrupt ``--json``.

    The driver's signal handling wins over Ray's: ``ray.init`` replaces the SIGTERM handler by
    one that calls ``sys.exit`` (an abort with a native stack dump when it lands in Ray's C++
    code); the handlers in place before it come back once it returns. Starting and stopping
    Ray are never cut in two by SIGINT / SIGTERM (:func:`nwot_fast.process.deferred_signals`):
    a signal in between is delivered when they are done, so a local instance this process
    started is always stopped, its agents included."""

    def __init__(self, target: RayTarget):
        from .process import deferred_signals

        self.ray = _import_ray()
        self.owned = False
        self._stdout = None
        if self.ray.is_initialized():  # the caller already connected (a notebook, a Ray job)
            return
        self._stdout, sys.stdout = sys.stdout, sys.stderr
        try:
            with deferred_signals(), _ray_keeps_off_sigterm(self.ray):
                self._connect(target)
        except BaseException:
            self.owned = True  # whatever a failed ray.init left behind is ours to stop
            self.close()
            raise

    def _connect(self, target: RayTarget) -> None:
        if target is True and os.environ.get("RAY_ADDRESS", "").strip():
            # Ray's own convention: inside a Ray job RAY_ADDRESS names the cluster to join.
            target = check_ray_target(os.environ["RAY_ADDRESS"])
        if target is True:
            # One worker per local core; each task is single-threaded.
            self.ray.init(num_cpus=os.cpu_count() or 1, log_to_driver=False, configure_logging=False,
                          include_dashboard=False)
            self.owned = True
            return
        probe = _resolve_auto() if target == "auto" else target
        if probe is not None:
            _probe(probe, repr(target))
        join = dict(log_to_driver=False) if target.startswith("ray://") else dict(log_to_driver=False, configure_logging=False)
        try:
            self.ray.init(address=target, **join)
        except ConnectionError as e:
            raise ClusterError(
                f"cannot join the Ray cluster at {target!r}: {e}; if the cluster uses token authentication "
                "(Ray's default), set RAY_AUTH_MODE=token here and give its token (RAY_AUTH_TOKEN or "
                "~/.ray/auth_token)"
            ) from e
        self.owned = True

    def cpus(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def close(self) -> None:
        from .process import deferred_signals

        try:
            if self.owned:
                self.owned = False
                with deferred_signals():
                    self.ray.shutdown()
        finally:
            if self._stdout is not None:
                sys.stdout, self._stdout = self._stdout, None


@contextlib.contextmanager
def _ray_keeps_off_sigterm(ray_module):
    """While ``ray.init`` runs, its call that installs a SIGTERM handler does nothing (the
    handler in place stays; a private name of Ray: where it is gone, the handler Ray installs
    lasts only until the block ends, see :class:`_Connection`)."""
    utils = getattr(getattr(ray_module, "_private", None), "utils", None)
    if utils is None or not hasattr(utils, "set_sigterm_handler"):
        yield
        return
    real = utils.set_sigterm_handler
    utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        utils.set_sigterm_handler = real


# ---------------------------------------------------------------------------------------------
# the worker side


_SCORERS: Dict[str, ArchScorer] = {}  # per worker process: one scorer (data, sampler) per configuration


def _scorer_for(config: ScoreConfig) -> ArchScorer:
    from .scoring import ArchScorer

    key = config.config_hash() + "/" + str(config.device)
    scorer = _SCORERS.get(key)
    if scorer is None:
        scorer = _SCORERS[key] = ArchScorer(config)
    return scorer


def score_chunk(config: ScoreConfig, indices: Sequence[int]) -> List[Tuple[int, float, float]]:
    """Score ``indices`` in this (worker) process, single-threaded: ``[(index, score, seconds)]``."""
    import torch

    torch.set_num_threads(1)
    scorer = _scorer_for(config)
    return [(s.index, s.score, s.seconds) for s in scorer.score_indices(indices)]


# ---------------------------------------------------------------------------------------------
# the driver side


def chunk_size(n: int, cpus: int) -> int:
    """About four chunks per core (so that the cores stay busy to the end), at most MAX_CHUNK."""
    return max(1, min(MAX_CHUNK, math.ceil(n / (4 * max(cpus, 1)))))


def score_on_ray(config: ScoreConfig, indices: Sequence[int], *, ray: RayTarget = True,
                 chunk: Optional[int] = None) -> Iterator[ArchScore]:
    """Score the benchmark ``indices`` under ``config`` on a Ray cluster and yield an
    :class:`~nwot_fast.scoring.ArchScore` per index as the chunks come back (in completion
    order, each index once). ``ray``: see :func:`check_ray_target`. ``chunk``: indices per task
    (default: :func:`chunk_size`). Closing the generator cancels what is still running and
    stops a Ray instance it started."""
    from .nb201 import arch_at
    from .scoring import ArchScore

    target = check_ray_target(ray)
    indices = [int(i) for i in indices]
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be an int >= 1 (indices per Ray task), got {chunk!r}")
    if not indices:
        return
    from .process import deferred_signals

    conn = _Connection(target)
    ray_mod = conn.ray
    pending: Dict[object, List[int]] = {}
    # Every call into Ray runs under deferred_signals: a Python exception raised by a signal
    # handler inside Ray's C++ code comes back as a SystemError (and could leave Ray's state
    # half-changed); delivered between the calls, SIGINT / SIGTERM stop the scan as anywhere else.
    # ray.wait returns every WAIT_SLICE_S so that a signal waits at most that long.
    try:
        with deferred_signals():
            cpus = conn.cpus()
            size = chunk or chunk_size(len(indices), cpus)
            chunks = [indices[k:k + size] for k in range(0, len(indices), size)]
            # Each task holds one CPU: one single-threaded worker process per core. A task whose
            # worker dies is re-run (max_retries); a Python error in it is not (it would fail again).
            remote = ray_mod.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False)(score_chunk)
            config_ref = ray_mod.put(config)
        window = 2 * cpus  # tasks in flight: the cluster stays busy, results arrive roughly in order
        queue = iter(chunks)

        def submit() -> None:
            with deferred_signals():
                for part in queue:
                    pending[remote.remote(config_ref, part)] = part
                    if len(pending) >= window:
                        return

        submit()
        while pending:
            with deferred_signals():
                ready, _ = ray_mod.wait(list(pending), num_returns=1, timeout=WAIT_SLICE_S)
            if not ready:
                continue
            ref = ready[0]
            part = pending.pop(ref)
            try:
                with deferred_signals():
                    rows = ray_mod.get(ref)
            except ray_mod.exceptions.RayTaskError as e:
                # The task's own exception (ValueError, MemoryError, ...), as a local scan raises it.
                cause = getattr(e, "cause", None)
                if isinstance(cause, Exception):
                    raise cause from None
                raise
            except ray_mod.exceptions.RayError as e:
                raise ClusterError(
                    f"Ray lost the chunk of indices {part[0]}..{part[-1]} after {TASK_RETRIES} retries "
                    f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); results written "
                    "so far are kept: run the same command again to resume"
                ) from e
            submit()
            for index, score, seconds in rows:
                yield ArchScore(index, arch_at(index), score, seconds)
    finally:
        with deferred_signals():  # a second Ctrl-C must not leave the instance running
            if not conn.owned:
                # The caller's Ray session goes on: stop what it would still compute for nothing.
                # A session of this run ends with it instead, and Ray stops the job's tasks; a
                # force-cancel racing a task that is finishing can make Ray's core worker fail
                # its own check ("Tried to complete task that was not pending") and kill the
                # process (seen on Ray 2.60 when a scan was interrupted).
                for ref in pending:
                    try:
                        ray_mod.cancel(ref)
                    except Exception:  # best effort: the results are not waited for
                        pass
            conn.close()
