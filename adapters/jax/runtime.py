"""The JAX trainer's runtime: the process layout (jax.distributed, with a rendezvous that turns a missing
peer into one line), the device mesh, and the compile clock and persistent compilation cache."""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import numpy as np

DEFAULT_CACHE = Path("~/.cache/effv2/jax")
_COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration", "/jax/compilation_cache/cache_retrieval_time_sec")

_CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}


class TrainSetupError(ValueError):
    """A run that cannot start as asked (devices, process layout, precision); one line for the user."""


# ---- compile time and the persistent cache -------------------------------------------------
class _CompileClock:
    """Seconds jax spent tracing, lowering and compiling (or loading from the persistent cache)."""

    def __init__(self):
        self.seconds = 0.0
        self.cache = {"hits": 0, "misses": 0}  # persistent compilation cache lookups
        self._lock = threading.Lock()
        import jax

        jax.monitoring.register_event_duration_secs_listener(self._listen)
        jax.monitoring.register_event_listener(self._count)

    def _listen(self, event: str, duration: float, **_):
        if event in _COMPILE_EVENTS:
            with self._lock:
                self.seconds += float(duration)

    def _count(self, event: str, **_):
        kind = _CACHE_EVENTS.get(event)
        if kind is not None:
            with self._lock:
                self.cache[kind] += 1


@functools.lru_cache(maxsize=1)
def compile_clock() -> _CompileClock:
    return _CompileClock()


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str | None:
    """Point jax's persistent compilation cache at `path` (default $EFFV2_JAX_CACHE or ~/.cache/effv2/jax;
    'off' disables it). A resumed run then loads each stage's compiled step instead of compiling it."""
    import jax

    where = path if path is not None else os.environ.get("EFFV2_JAX_CACHE", str(DEFAULT_CACHE))
    if str(where).lower() in ("", "off", "none", "0"):
        return None
    folder = Path(where).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a cache that cannot be written only costs compile time
    if jax.config.jax_compilation_cache_dir != str(folder):
        jax.config.update("jax_compilation_cache_dir", str(folder))
        try:  # jax opens its cache once per process, at the first compile: open it again at the new place
            from jax._src import compilation_cache

            compilation_cache.reset_cache()
        except (ImportError, AttributeError):
            pass
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return str(folder)


# ---- processes and devices ------------------------------------------------------------------
class Processes:
    """The process layout (jax.distributed) and the device mesh over every process's devices."""

    def __init__(self, platform: str | None = None, initialized: bool = False):
        import jax
        from jax.sharding import AxisType, Mesh

        self.initialized = initialized
        try:
            devices = jax.devices(platform) if platform else jax.devices()
        except RuntimeError as exc:
            raise TrainSetupError(f"--device {platform}: no such jax backend here ({_first_line(exc)})") from None
        self.devices = sorted(devices, key=lambda d: (d.process_index, d.id))
        self.rank, self.world = jax.process_index(), jax.process_count()
        self.local_devices = [d for d in self.devices if d.process_index == self.rank]
        self.mesh = Mesh(np.array(self.devices), ("data",), axis_types=(AxisType.Auto,))

    @classmethod
    def start(cls, device: str | None = None, *, coordinator: str | None = None, num_processes: int | None = None,
              process_id: int | None = None, timeout_s: float = 600.0) -> "Processes":
        """One process, or several through `jax.distributed.initialize` (the options, else JAX_COORDINATOR_ADDRESS,
        JAX_NUM_PROCESSES, JAX_PROCESS_ID from the environment). A coordinator that does not answer within
        `timeout_s` is a TrainSetupError, not a hang."""
        import jax

        env = os.environ
        coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
        if coordinator is None and (num_processes or process_id is not None):
            raise TrainSetupError("--num-processes / --process-id need --coordinator ADDR:PORT")
        initialized = False
        if coordinator is not None:
            try:
                n = int(num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES", "0"))
                i = int(process_id if process_id is not None else env.get("JAX_PROCESS_ID", "-1"))
            except ValueError:
                raise TrainSetupError("JAX_NUM_PROCESSES / JAX_PROCESS_ID: expected integers") from None
            if n < 1 or not 0 <= i < n:
                raise TrainSetupError(f"--coordinator {coordinator}: needs --num-processes N >= 1 and "
                                      f"--process-id in [0, N) (got {n} and {i})")
            platform = _platform(device)
            if platform == "cpu":
                try:  # before the backends start: then only the CPU client joins the service
                    jax.config.update("jax_platforms", "cpu")
                except RuntimeError:
                    pass
            host, port = _address(coordinator)
            # jax's coordination client ends the process (a C++ fatal error) when the service does not answer in
            # time; meet on the coordinator's port first, where a missing peer is a clean one-line error
            _rendezvous(host, port, n, i, timeout_s)
            loopback = host in ("127.0.0.1", "localhost", "::1")
            try:
                jax.distributed.initialize(coordinator, n, i, initialization_timeout=max(1, int(timeout_s)),
                                           heartbeat_timeout_seconds=max(10, int(timeout_s)),
                                           shutdown_timeout_seconds=max(10, int(min(timeout_s, 60))),
                                           coordinator_bind_address=coordinator if loopback else None)
            except (RuntimeError, ValueError) as exc:
                raise TrainSetupError(f"--coordinator {coordinator}: process {i} of {n} could not join within "
                                      f"{timeout_s:.0f} s ({_first_line(exc)})") from None
            initialized = True
        return cls(_platform(device), initialized)

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        if self.world == 1:
            return values
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(np.asarray(values))).sum(axis=0).astype(
            np.asarray(values).dtype)

    def close(self) -> None:
        if self.initialized:
            import jax

            try:
                jax.distributed.shutdown()
            except RuntimeError:
                pass
            self.initialized = False


def _address(coordinator: str) -> tuple[str, int]:
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TrainSetupError(f"--coordinator: expected HOST:PORT (got {coordinator!r})")
    return host.strip("[]"), int(port)


def _rendezvous(host: str, port: int, n: int, i: int, timeout_s: float) -> None:
    """Every process checks in on the coordinator's port before jax.distributed starts there.

    Process 0 listens on HOST:PORT until the other n - 1 processes have sent their index, answers each
    'go' and closes the port (jax's coordination service binds it next); the others connect (retrying
    until the deadline) and wait for 'go'. Nothing arriving within `timeout_s` is a TrainSetupError."""
    import socket
    import time

    if n == 1:
        return
    deadline = time.monotonic() + timeout_s
    where = f"{host}:{port}"
    if i == 0:
        _serve_rendezvous(host, port, n, deadline, timeout_s)
        return
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TrainSetupError(f"--coordinator {where}: no answer from process 0 within {timeout_s:.0f} s")
        try:
            with socket.create_connection((host, port), timeout=min(left, 5.0)) as conn:
                conn.sendall(f"{i}\n".encode())
                conn.settimeout(max(0.1, deadline - time.monotonic()))
                if conn.recv(16).startswith(b"go"):
                    return
        except (OSError, socket.timeout):
            pass
        time.sleep(0.2)


def _serve_rendezvous(host: str, port: int, n: int, deadline: float, timeout_s: float) -> None:
    """Process 0's side of `_rendezvous`: wait for processes 1..n-1 on HOST:PORT, then answer each 'go'."""
    import socket
    import time

    where = f"{host}:{port}"
    try:
        server = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        raise TrainSetupError(f"--coordinator {where}: process 0 cannot listen there ({exc.strerror or exc})") \
            from None
    peers: dict[int, socket.socket] = {}
    try:
        while len(peers) < n - 1:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(1, n)) - set(peers))
                raise TrainSetupError(f"--coordinator {where}: process(es) {', '.join(map(str, missing))} of {n} "
                                      f"did not join within {timeout_s:.0f} s")
            server.settimeout(left)
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                peer = int(conn.recv(64).decode().strip() or -1)
            except (OSError, ValueError):
                conn.close()
                continue
            if not 0 < peer < n or peer in peers:
                conn.close()
                raise TrainSetupError(f"--coordinator {where}: a process announced index {peer} (expected "
                                      f"1..{n - 1}, each once)")
            peers[peer] = conn
        for conn in peers.values():
            conn.sendall(b"go\n")
    finally:
        for conn in peers.values():
            conn.close()
        server.close()


def _platform(device: str | None) -> str | None:
    if device is None:
        return None
    name = device.split(":")[0].lower()
    name = {"cuda": "gpu", "rocm": "gpu"}.get(name, name)
    if name not in ("cpu", "gpu", "tpu"):
        raise TrainSetupError(f"--device: expected cpu, gpu (cuda) or tpu for jax (got {device!r})")
    return name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
