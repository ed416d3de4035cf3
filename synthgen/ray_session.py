"""The one place synthgen starts or joins Ray, and where Ray's own output goes.

    ray_session.configure(address=None, verbose=False)   # the CLI, once per command
    ray_session.ensure()                                  # fit / generate / tune / evaluate, before Ray work
    logs = ray_session.close("runs/demo/logs")            # the CLI, at the end: Ray's logs land there

Which Ray: the address the user named (`--address`, else `RAY_ADDRESS`), otherwise a private local
instance for this run alone (`address="local"`): `ray.init()` without an address would join whatever
cluster `ray start` left running on the machine, so two commands would share one Ray unasked.

Why the private instance has a dashboard: Ray Train (V2) starts a PlacementGroupCleaner beside every
run that asks the State API, once a second, whether the run's controller is still alive. Without a
dashboard there is no State API (275 "Failed to query Ray Train Controller actor state" warnings in
a demo), and with a second Ray on the machine the cleaner cannot tell which one to ask ("Found
multiple active Ray instances"), because it finds the API by scanning the machine's processes. So the
instance gets a dashboard on a port chosen here, and its processes inherit RAY_API_SERVER_ADDRESS
pointing at that port: each run's cleaner asks its own Ray, whatever else runs on the machine.

Where the output goes: unless `verbose`, nothing of Ray's reaches the terminal. Workers' output stays
in their log files (`log_to_driver=False`), Ray's Python loggers in this process (Ray Data, Train,
Tune) write to `driver.log`, and `close()` moves both, with the instance's own logs, into the run's
`logs/` folder. `verbose` leaves Ray's output as Ray prints it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Iterator

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air")
"""Ray's Python loggers in the driver; Ray Data's does not propagate to "ray", so each is handled."""


@dataclass
class _Session:
    address: str | None = None
    """What the user named (--address / RAY_ADDRESS); None = a private local instance."""
    verbose: bool = False
    num_cpus: int | None = None
    staging: str | None = None
    """Folder of driver.log while the command runs (moved into the run's logs/ by close())."""
    owned: bool = False
    """This process started the Ray instance (so close() stops it and collects its logs)."""
    session_dir: str | None = None
    handler: logging.Handler | None = None
    saved: dict = field(default_factory=dict)
    """Logger name -> (level, console handlers taken away), restored by close()."""


_session = _Session()


def configure(address: str | None = None, verbose: bool = False, num_cpus: int | None = None) -> None:
    """Settings for the Ray that `ensure()` starts or joins: the cluster address (None: RAY_ADDRESS,
    else a private local instance), whether Ray's output reaches the terminal, local CPUs (None: all)."""
    _session.address = address or os.environ.get("RAY_ADDRESS") or None
    _session.verbose, _session.num_cpus = verbose, num_cpus


def ensure() -> None:
    """Start or join Ray as configured, unless this process is connected already (tests, notebooks);
    either way route Ray's driver-side logs away from the terminal (unless verbose)."""
    import ray

    if not _session.verbose and _session.handler is None:
        _session.handler = _log_file_handler()
    if not ray.is_initialized():
        # ray.init() clears the "ray" logger's handlers, so what it logs itself (e.g. the notice
        # that token authentication is on) is caught one level down, in "ray._private".
        init_logger = logging.getLogger("ray._private")
        if _session.handler:
            init_logger.addHandler(_session.handler)
        try:
            if _session.address:
                ray.init(address=_session.address, log_to_driver=_session.verbose, configure_logging=False)
            else:
                start_local(_session.num_cpus, _session.verbose)
                _session.owned = True
        finally:
            if _session.handler:
                init_logger.removeHandler(_session.handler)
        node = ray._private.worker._global_node  # noqa: SLF001 - the only handle on the session folder
        _session.session_dir = node.get_session_dir_path() if node is not None else None
    _quiet_ray_data()
    if _session.handler and not _session.saved:
        _route_loggers(_session.handler)


def start_local(num_cpus: int | None = None, log_to_driver: bool = False) -> None:
    """Start a private local Ray for this process, with what Ray Train needs (see the module
    docstring); `ensure()` calls it, tests call it for a Ray shared by many commands."""
    import ray

    for attempt in range(3):
        port = dashboard_port()
        # Read by the PlacementGroupCleaner (see the module docstring): Ray's processes inherit the
        # environment of the process that starts them, so setting it for the start is enough.
        try:
            with env_var("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}"):
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                         dashboard_port=port, log_to_driver=log_to_driver, configure_logging=False)
            return
        except Exception as e:  # noqa: BLE001 - Ray reports a taken dashboard port as a bare Exception
            if not any(taken in str(e) for taken in ("already in use", "already occupied")) or attempt == 2:
                raise
            # taken after all: try another port (what the failed start left running is reaped at exit)


def dashboard_port() -> int:
    """A free port below the kernel's ephemeral range, where none of the ports that processes take
    at random (Ray's own bind to port 0 as they start) can land between this check and the
    dashboard's start: Ray gives a dashboard on a named port no second try."""
    import random
    import socket

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    for _ in range(100):
        port = random.randint(10000, max(10001, ephemeral - 1))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    from synthgen.local_cluster import free_port

    return free_port()


@contextlib.contextmanager
def env_var(name: str, value: str) -> Iterator[None]:
    """Set an environment variable for the duration of a block (for what Ray reads at start-up)."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _quiet_ray_data() -> None:
    """Ray Data's own progress bars and execution-plan lines: synthgen shows its own progress.

    Importing ray.data here, before the loggers are routed, matters: the import gives Ray Data's
    logger its own terminal handler, which an import after the routing would bring back."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = _session.verbose
    ctx.print_on_execution_start = _session.verbose


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def _log_file_handler() -> logging.Handler:
    """driver.log in a staging folder (the run's folder may not exist yet: see close())."""
    _session.staging = _session.staging or tempfile.mkdtemp(prefix="synthgen-logs-")
    handler = logging.FileHandler(os.path.join(_session.staging, "driver.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def _route_loggers(handler: logging.Handler) -> None:
    """Ray's driver-side loggers write to `handler`, not to the terminal (undone by close())."""
    for name in RAY_LOGGERS:
        _route(name, handler)
    logging.getLogger("ray").setLevel(logging.INFO)


def _route(name: str, handler: logging.Handler) -> None:
    logger = logging.getLogger(name)
    if name in _session.saved:
        return
    consoles = [h for h in logger.handlers if _is_console(h)]
    _session.saved[name] = (logger.level, consoles)
    for h in consoles:
        logger.removeHandler(h)
    if name == "ray" or not logger.propagate:
        logger.addHandler(handler)


def route_logger(name: str) -> None:
    """Send another library's logger to driver.log too (unless verbose), e.g. "optuna" once Tune's
    Optuna searcher is imported: a library's logger gets its terminal handler when it is imported."""
    if _session.handler is not None:
        _route(name, _session.handler)


def _unroute_loggers() -> None:
    handler, _session.handler = _session.handler, None
    if handler is None:
        return
    for name, (level, consoles) in _session.saved.items():
        logger = logging.getLogger(name)
        logger.removeHandler(handler)
        logger.setLevel(level)
        for h in consoles:
            logger.addHandler(h)
    _session.saved.clear()
    handler.close()


def close(log_dir: str | None = None) -> str | None:
    """End the command's Ray use: stop the instance if this process started it, and move the logs
    (driver.log, and the instance's own under ray/) into `log_dir` when its parent exists (the run's
    folder), replacing older ones. Returns where the logs are, or None when nothing was logged."""
    import ray

    _unroute_loggers()
    session_dir, owned = _session.session_dir, _session.owned
    if owned and ray.is_initialized():
        ray.shutdown()
    _session.owned, _session.session_dir = False, None
    staging, _session.staging = _session.staging, None
    if staging is None and not (owned and session_dir):
        return None
    staging = staging or tempfile.mkdtemp(prefix="synthgen-logs-")
    if owned and session_dir and os.path.isdir(os.path.join(session_dir, "logs")):
        try:
            shutil.copytree(os.path.join(session_dir, "logs"), os.path.join(staging, "ray"), dirs_exist_ok=True,
                            ignore_dangling_symlinks=True)
        except (OSError, shutil.Error):
            pass  # a log file that vanished while copying: keep what was copied, finish the command
    if not log_dir or not os.path.isdir(os.path.dirname(os.path.abspath(log_dir))):
        return staging  # e.g. a generation that failed: its output folder was never made
    log_dir = os.path.abspath(log_dir)
    shutil.rmtree(log_dir, ignore_errors=True)
    shutil.move(staging, log_dir)
    return log_dir


def describe_logs(path: str | None) -> str:
    """The line that tells where Ray's output went."""
    hint = "" if _session.verbose else " (--verbose shows it live)"
    return f"Ray logs   {path}{hint}" if path else ""

