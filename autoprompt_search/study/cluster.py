"""Where a study runs: a local Ray started here (dashboard on 127.0.0.1) or an existing cluster."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprompt_search.errors import ConfigError
from autoprompt_search.option_fields import declared, option
from autoprompt_search.study.options import StudyOptions


@dataclass
class ClusterInfo:
    address: str  # "local" or the address joined
    dashboard_url: str | None
    cpus: float
    gpus: float
    started_here: bool


RAY_COMMANDS = ("search", "compare")


@dataclass
class RaySettings:
    """Which Ray a study runs on: `address` joins a cluster, None starts a local one here."""

    address: str | None = option(
        None, "join this Ray cluster (e.g. 127.0.0.1:6379) instead of starting one", "Ray", commands=RAY_COMMANDS
    )
    num_cpus: int | None = option(None, "local mode: CPUs Ray may use (default: all)", "Ray", commands=RAY_COMMANDS)
    num_gpus: int | None = None
    dashboard_port: int = option(8265, "local mode: dashboard port on 127.0.0.1 (the next free one when taken)",
                                 "Ray", commands=("search",))  # fmt: skip
    dashboard_host: str = option(
        "127.0.0.1", "local mode: expose the dashboard on this address (risky: it runs code for anyone)", "Ray",
        commands=("search",),
    )  # fmt: skip
    preload_modules: tuple[str, ...] = ()  # local mode: imported by every Ray worker process at start


def ray_settings_from(options: dict[str, Any], command: str = "search") -> RaySettings:
    """The RaySettings that `command`'s options name, popped from `options` (the rest stay)."""
    return RaySettings(**{f.name: options.pop(f.name) for f, _ in declared(RaySettings, command) if f.name in options})


def connect(settings: RaySettings | None = None) -> ClusterInfo:
    """Start a local Ray bound to loopback, or join `settings.address`; reuses a Ray already initialised here."""
    import ray

    settings = settings or RaySettings()
    address = settings.address
    started = False
    if not ray.is_initialized():
        try:
            if address:
                prepare_environment(address)
                env = {"env_vars": trial_environment()}
                context = ray.init(address=address, log_to_driver=False, runtime_env=env)
            else:
                context = start_local(
                    settings.num_cpus,
                    settings.num_gpus,
                    settings.dashboard_port,
                    settings.preload_modules,
                    settings.dashboard_host,
                )
        except ConnectionError as exc:
            raise ConfigError(
                f"--address {address}: no Ray cluster answers there ({exc}); start one with `ray start --head` or drop --address"
            ) from exc
        started, url = not address, context.dashboard_url
    else:
        url = None  # a Ray this process already started (tests, notebooks)
    resources = ray.cluster_resources()
    dashboard_url = f"http://{url}" if url and not url.startswith("http") else url
    return ClusterInfo(address or "local", dashboard_url, resources.get("CPU", 0.0), resources.get("GPU", 0.0), started)


API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"


def start_local(
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    dashboard_port: int = 8265,
    preload_modules: tuple[str, ...] = (),
    dashboard_host: str = "127.0.0.1",
) -> Any:
    """`ray.init` a new local Ray with every port and the dashboard on 127.0.0.1 (the dashboard on
    `dashboard_host` only when the user asks for it: see `ray_dashboard_warning`).

    The dashboard is required, not optional: when ASHA (or Ctrl-C) stops a trial, its Train
    controller dies and Ray Train's detached PlacementGroupCleaner frees the workers' placement
    group, but it finds the controller's state through the dashboard's API server, located via
    `/tmp/ray/ray_current_cluster` unless told otherwise. A stale file there (left by any earlier
    `ray start`) made the cleaner crash, the placement group leak, and the study hang once the
    leaked groups held every CPU. So the processes get the API server's address explicitly.
    """
    import ray

    prepare_environment(None)
    port = free_port(dashboard_port)
    env = {**trial_environment(), API_SERVER_ENV: f"http://127.0.0.1:{port}"}
    context = ray.init(
        address="local",  # a new Ray here, never a stale `ray start` recorded in /tmp/ray
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=True,
        dashboard_host=dashboard_host,
        dashboard_port=port,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        runtime_env={"env_vars": env},
        _system_config={"preload_python_modules": list(preload_modules)} if preload_modules else None,
    )
    if not str(context.dashboard_url).endswith(f":{port}"):
        ray.shutdown()
        raise ConfigError(
            f"the Ray dashboard did not start on {dashboard_host}:{port} (got {context.dashboard_url!r}); "
            "pass a free --dashboard-port"
        )
    return context


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def ray_dashboard_warning(dashboard_host: str) -> str | None:
    """The risk of a dashboard reachable beyond this machine, or None when it stays on loopback."""
    if dashboard_host in LOOPBACK_HOSTS:
        return None
    return (
        f"warning: the Ray dashboard listens on {dashboard_host}: anyone who can reach that port can "
        "submit jobs and run code on this machine (the dashboard has no login). Keep it behind a "
        "firewall or an SSH tunnel (ssh -L 8265:127.0.0.1:8265), or drop --dashboard-host."
    )


def free_port(preferred: int) -> int:
    """`preferred` if nothing listens on 127.0.0.1 there, else a port the OS says is free."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise ConfigError("no free TCP port on 127.0.0.1 for the Ray dashboard")


HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
FAST_HEALTH_CHECK_S = "0.25"  # Ray's default 2 s poll adds up to 2 s at each Train-run start and end
PASSED_TO_TRIALS = ("AUTOPROMPT_CACHE", "AUTOPROMPT_LOGICAL_GPUS", "HF_HOME", "TOKENIZERS_PARALLELISM")


def trial_environment() -> dict[str, str]:
    """Environment every trial process gets (job-level runtime env: works on remote nodes too)."""
    env = {k: os.environ[k] for k in PASSED_TO_TRIALS if k in os.environ}
    env[HEALTH_CHECK_ENV] = os.environ.get(HEALTH_CHECK_ENV, FAST_HEALTH_CHECK_S)
    return env


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray takes 127.0.0.1 as this node's address


def prepare_environment(address: str | None) -> None:
    """Loopback-only Ray when local, and token auth when joining a cluster that uses it.

    Ray 2.60 binds its ports to the machine's main address unless told the node is 127.0.0.1
    (which `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` does for every process it starts); and a
    driver joining a `ray start` cluster only sends the token in `~/.ray/auth_token` when
    `RAY_AUTH_MODE=token`. Values the user set are kept.
    """
    host = (address or "127.0.0.1").rsplit(":", 1)[0].removeprefix("ray://")
    if host in ("127.0.0.1", "localhost") and os.environ.setdefault(LOOPBACK_ENV, "0") == "0":
        # Ray reads the variable once, at import; the processes it starts read the environment.
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if address and "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()):
        # Sets RAY_AUTH_MODE=token and refreshes Ray's cached config, which read it at import.
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def check_before_connecting(options: StudyOptions, settings: RaySettings | None) -> None:
    """What can fail fast before Ray: an --address nobody answers at (ray.init would wait on it
    for minutes), and, when a local Ray is to be started, resources this machine does not have."""
    import ray

    settings = settings or RaySettings()
    if ray.is_initialized():
        return
    address = settings.address
    if address and address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"--address {address}: expected HOST:PORT, e.g. 127.0.0.1:6379")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except OSError as exc:
            raise ConfigError(
                f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one with "
                f"`ray start --head --port={port}` or drop --address to start a local Ray"
            ) from exc
    if not address:
        import torch

        gpus = settings.num_gpus if settings.num_gpus is not None else torch.cuda.device_count()
        cpus = settings.num_cpus or os.cpu_count() or 1
        check_resources(options, ClusterInfo("local", None, float(cpus), float(gpus), False))


def check_resources(options: StudyOptions, cluster: ClusterInfo) -> None:
    """Fail before any trial starts if one trial cannot ever be placed (it would pend forever)."""
    workers = options.workers_per_trial
    if options.gpus_per_worker and cluster.gpus == 0:
        raise ConfigError(
            f"--gpus-per-worker {options.gpus_per_worker}: the Ray cluster ({cluster.address}) has no GPU"
            f"{' (torch sees no CUDA device on this machine)' if cluster.address == 'local' else ''}; "
            "use --gpus-per-worker 0 to train on CPUs"
        )
    if options.gpus_per_worker * workers > cluster.gpus:
        raise ConfigError(
            f"--gpus-per-worker {options.gpus_per_worker} x {workers} workers needs {options.gpus_per_worker * workers} "
            f"GPUs but the cluster has {cluster.gpus:g}; lower --gpus-per-worker or --workers-per-trial"
        )
    need_cpus = options.cpus_per_worker * workers
    if need_cpus > cluster.cpus:
        raise ConfigError(
            f"--cpus-per-worker {options.cpus_per_worker:g} x {workers} workers needs {need_cpus:g} CPUs but the "
            f"cluster has {cluster.cpus:g}; lower --cpus-per-worker"
        )


def shutdown(cluster: ClusterInfo) -> None:
    import ray

    if cluster.started_here:
        ray.shutdown()


def remove_leaked_placement_groups(wait_s: float = 10.0) -> int:
    """Remove this driver's placement groups that outlived their runs; call once every trial of a
    phase has ended. Returns how many it removed.

    When ASHA (or Ctrl-C) stops a trial, its Ray Train controller dies with it; if a worker's health
    check fails first, the controller can start a new worker group whose placement group its
    detached cleaner never hears of (seen a few times in ten on a loaded 2-CPU machine). Such a group
    keeps its CPUs for the life of the cluster, and on a small cluster the next trials wait on them
    forever. Ray's cleaner gets `wait_s` to finish its own work; then every group still alive that
    this job created (a placement group id ends with its job id) is removed: no trial is running.
    """
    import ray
    from ray.util import placement_group_table, remove_placement_group
    from ray.util.placement_group import PlacementGroup

    job = ray.get_runtime_context().get_job_id()

    def alive() -> list[str]:
        return [pid for pid, g in placement_group_table().items() if g["state"] != "REMOVED" and pid.endswith(job)]

    deadline = time.monotonic() + wait_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    leaked = alive()
    for pid in leaked:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pid))))
    return len(leaked)
