"""The ray engine's own local Ray (``address=None``): started for a run with Ray's CLI, listening
on 127.0.0.1 only, shared by the runs alive at once in one process and stopped by the last of
them, leaving the caller's environment as it was.

Each test that runs a pipeline starts a local Ray of its own (a few seconds each); the tests of
the engine's options check them before any Ray starts. The /proc helpers and the example pipeline
come from cluster_helpers.py.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from cluster_helpers import (  # noqa: E402
    FAN_IN,
    alive,
    all_pids,
    bound_sockets,
    is_loopback,
    proc_stat,
    socket_inodes,
)

import madhatter  # noqa: E402
from madhatter import Pipeline, depends, parallel, preprocess  # noqa: E402
from madhatter.engines import Task, _ray_connection, _ray_start_options  # noqa: E402
from madhatter.engines.ray import RayEngine  # noqa: E402
from madhatter.events import ChunkDone, Event  # noqa: E402

# The workers cannot import this test module: its functions travel by value (see cluster_helpers.py).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

RAY_PACKAGE = os.path.dirname(ray.__file__)
BLACKHOLE = "http://127.0.0.1:9"


# -- Ray's processes, from /proc -------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        raw = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _comm(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = pathlib.Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (entry.decode(errors="replace").partition("=") for entry in raw.split(b"\0") if entry)
    return {name: value for name, _, value in pairs}


def _is_ray(pid: int) -> bool:
    """Whether a process is Ray's, or the engine's ``ray start`` and its guard."""
    text = _cmdline(pid)
    names = ("ray::", "raylet", "gcs_server", "ray.scripts.scripts", RAY_PACKAGE)
    return any(name in text for name in names)


def _ray_started_here() -> set[int]:
    """Live Ray processes (the engine's guard and ``ray start``, GCS, raylet, workers, agents)
    descending from this test process. Other Rays on the machine do not count.

    Zombies are left out: they have exited (in a container whose init does not reap orphans they
    stay in the process table once the raylet, their parent, has gone).
    """
    table = {pid: stat for pid in all_pids() if (stat := proc_stat(pid)) is not None}
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    stack = [os.getpid()]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return {pid for pid in found if table[pid][2] != "Z" and _is_ray(pid)}


def _holds(pid: int, folders: set[str]) -> bool:
    """Whether a process has a file open under one of ``folders`` (a Ray session's logs)."""
    try:
        targets = [os.readlink(fd) for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return False
    return any(target.startswith(folder) for target in targets for folder in folders)


# -- loopback only, and nothing left ---------------------------------------------------------


def test_a_local_ray_listens_on_loopback_only_and_is_gone_after_the_run(
    wait_until: Callable[..., bool],
) -> None:
    """``address=None``: a Ray for the run. While it runs, every socket its processes (and the
    driver's own Ray code) listen on is on 127.0.0.1; after the run, none of them is left, nor
    its folder."""
    assert not _ray_started_here()
    driver_sockets = socket_inodes(os.getpid())
    seen: dict[str, Any] = {}

    def look(event: Event) -> None:
        if isinstance(event, ChunkDone) and not seen:
            processes = _ray_started_here()
            seen["pids"] = processes
            seen["names"] = {pid: _comm(pid) for pid in processes}
            seen["environments"] = [(_cmdline(pid), _environ(pid)) for pid in processes]
            seen["sockets"] = bound_sockets({*processes, os.getpid()}, driver_sockets)

    result = FAN_IN.run(engine="ray", workers=2, inline=False, listeners=[look])
    assert result == FAN_IN.run(engine="serial")

    assert {"raylet", "gcs_server"} <= set(seen["names"].values()), seen["names"]
    assert seen["sockets"], "no Ray socket found"
    exposed = [(pid, address) for pid, address in seen["sockets"] if not is_loopback(address)]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"
    # Nothing it runs looks up an outward address; its dashboard process, which probes cloud
    # metadata services at start-up, has a proxy that sends such requests nowhere. (Processes
    # that retitle themselves "ray::..." overwrite the memory /proc shows as their environment;
    # the raylet starts them with its own.)
    checked = [(c, env) for c, env in seen["environments"] if not c.startswith("ray::")]
    assert any("ray.scripts.scripts start --head" in cmdline for cmdline, _ in checked)
    assert any("dashboard/dashboard.py" in cmdline for cmdline, _ in checked)
    assert any("raylet" in cmdline for cmdline, _ in checked)
    for cmdline, environ in checked:
        assert environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0", cmdline
        assert environ.get("HTTPS_PROXY") == environ.get("https_proxy") == BLACKHOLE, cmdline

    sessions = {m[0] for c, _ in checked if (m := re.search(r"/\S*?/session_[^/\s]+", c))}
    assert len(sessions) == 1, sessions

    def left_running() -> set[int]:
        orphans = {  # e.g. workers started after the look, whose raylet has gone
            pid for pid in all_pids() if alive(pid) and _is_ray(pid) and _holds(pid, sessions)
        }
        return {pid for pid in seen["pids"] if alive(pid)} | orphans | _ray_started_here()

    assert wait_until(lambda: not left_running(), timeout=20), f"left running: {left_running()}"
    assert not any(os.path.exists(session) for session in sessions)  # its folder is removed
    assert not ray.is_initialized()


# -- the caller's environment ----------------------------------------------------------------


@preprocess
def one_item() -> list[int]:
    return [0]


@depends(one_item)
@parallel.map
def proxies_seen(_: int) -> tuple[str | None, str | None]:
    return os.environ.get("HTTPS_PROXY"), os.environ.get("HTTP_PROXY")


def test_a_run_leaves_the_environment_as_it_was_and_gives_workers_the_caller_s_proxies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing of a run stays in ``os.environ`` (``ray.init`` sets ``PYTHONBREAKPOINT``; the
    engine puts it back). The workers see the caller's proxy settings, not the blackhole of
    Ray's own processes: the caller's HTTPS proxy, and no HTTP proxy where the caller has none."""
    monkeypatch.delenv("PYTHONBREAKPOINT", raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:8")  # never used: nothing is fetched
    before = dict(os.environ)

    seen = madhatter.run(Pipeline([one_item, proxies_seen]), engine="ray", workers=1, inline=False)

    assert dict(os.environ) == before
    assert seen == [("http://127.0.0.1:8", "")]
    assert not ray.is_initialized()


# -- runs at once ----------------------------------------------------------------------------


def _gated(name: str, folder: pathlib.Path) -> Pipeline:
    """A run whose one task says it has started (``<name>.started``), then waits for
    ``<name>.go`` before it returns ``[10, 20, 30]``."""
    started, go = folder / f"{name}.started", folder / f"{name}.go"

    @preprocess
    def items() -> list[int]:
        return [1, 2, 3]

    @depends(items)
    @parallel.map(chunk_by=3)  # one task, on one of the local Ray's two CPUs
    def gated(x: int) -> int:
        started.touch()
        deadline = time.monotonic() + 60
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return x * 10

    return Pipeline([items, gated])


def test_two_runs_at_once_share_one_local_ray_which_the_last_one_stops(
    tmp_path: pathlib.Path, wait_until: Callable[..., bool]
) -> None:
    """Two runs in two threads of one process: the first starts a local Ray, the second joins
    it, the first ends while the second still runs (and must not stop Ray under it), and the
    second, the last one, stops it."""
    pipelines = {name: _gated(name, tmp_path) for name in ("first", "second")}

    def run(name: str) -> Any:
        return pipelines[name].run(engine="ray", workers=2, inline=False)

    def running(name: str, future: Any) -> bool:
        return (tmp_path / f"{name}.started").exists() or future.done()

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(run, "first")
        assert wait_until(lambda: running("first", first), timeout=90)
        second = pool.submit(run, "second")
        assert wait_until(lambda: running("second", second), timeout=60)
        assert not first.done()
        assert not second.done()
        servers = [pid for pid in _ray_started_here() if _comm(pid) == "gcs_server"]
        assert len(servers) == 1, "one local Ray for both runs"

        (tmp_path / "first.go").touch()
        assert first.result(timeout=60) == [10, 20, 30]
        assert ray.is_initialized()  # the second run still uses it

        (tmp_path / "second.go").touch()
        assert second.result(timeout=60) == [10, 20, 30]
    assert not ray.is_initialized()
    assert wait_until(lambda: not _ray_started_here(), timeout=20), _ray_started_here()


# -- start-time options ----------------------------------------------------------------------


def test_start_time_options_become_ray_start_flags_and_the_rest_go_to_ray_init() -> None:
    start, connect = _ray_start_options.split_options(
        {
            "num_gpus": 0,
            "resources": '{"widget": 2}',  # as --engine-option resources={...} gives it
            "labels": {"zone": "here", "rack": "r1"},
            "object_store_memory": 2**27,
            "_system_config": {"object_timeout_milliseconds": 200},
            "_enable_object_reconstruction": True,
            "include_dashboard": False,  # what the local Ray does anyway: left out
            "runtime_env": {"env_vars": {"A": "1"}},
            "namespace": "ns",
        }
    )
    assert connect == {"runtime_env": {"env_vars": {"A": "1"}}, "namespace": "ns"}
    assert _ray_start_options.local_start_flags(2, start) == {
        "num_gpus": ["--num-gpus=0"],
        "resources": ['--resources={"widget": 2}'],
        "labels": ["--labels=zone=here,rack=r1"],
        "object_store_memory": ["--object-store-memory=134217728"],
        "_system_config": ['--system-config={"object_timeout_milliseconds": 200}'],
        "_enable_object_reconstruction": ["--enable-object-reconstruction"],
        "num_cpus": ["--num-cpus=2"],  # workers=
    }
    assert _ray_start_options.local_start_flags(None, {"num_cpus": 3.0}) == {
        "num_cpus": ["--num-cpus=3"]
    }
    assert _ray_start_options.local_start_flags(3, {"num_cpus": "3"}) == {"num_cpus": ["--num-cpus=3"]}
    default = _ray_start_options.local_start_flags(None, {})
    assert default == {"num_cpus": [f"--num-cpus={os.cpu_count() or 1}"]}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers": 2, "num_cpus": 4}, r"workers=2 and num_cpus=4 both set the CPUs"),
        ({"num_gpus": 0.5}, r"num_gpus=0\.5: `ray start` takes a whole number"),
        ({"resources": {"widget": "two"}}, r"the amount of 'widget' is not a number"),
        ({"include_dashboard": True}, r"include_dashboard=True: the local Ray .* runs no dashboard"),
        ({"_temp_dir": "/tmp/x"}, r"_temp_dir='/tmp/x': the local Ray .* cannot take it .*RAY_TMPDIR"),
        ({"num_tpus": 1}, r"the ray engine has no option 'num_tpus'"),
        (
            {"address": "127.0.0.1:9", "num_gpus": 1},
            r"start-time option num_gpus=1 cannot apply to the Ray cluster at 127\.0\.0\.1:9",
        ),
    ],
)
def test_options_a_ray_cannot_take_are_clear_errors_before_anything_starts(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(madhatter.EngineError, match=message):
        RayEngine(**options)
    assert not ray.is_initialized()
    assert not _ray_started_here()


def test_a_local_ray_that_cannot_start_leaves_no_folder(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_port() -> int:
        raise OSError("no free port")

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setattr(_ray_connection, "_free_port", no_port)
    with pytest.raises(madhatter.EngineError, match="the local Ray did not start: no free port"):
        RayEngine(workers=1)
    assert not list(tmp_path.iterdir())
    assert not ray.is_initialized()


@preprocess
def three_items() -> list[int]:
    return [1, 2, 3]


@depends(three_items)
@parallel.map(resources={"widget": 1}, chunk_by=1)
def with_a_widget(x: int) -> tuple[int, float]:
    return x * 10, ray.get_runtime_context().get_assigned_resources().get("widget", 0.0)


def test_start_time_options_start_the_local_ray_and_an_engine_joining_it_must_agree() -> None:
    """``num_gpus``, ``resources``, ``labels`` and ``object_store_memory`` go to ``ray start``
    (``ray.init`` refuses them when it joins a Ray): the local Ray has them, and runs a step that
    asks for a widget. A run alive at once that repeats them joins it; one that asks for other
    start-time options cannot, nor can a task ask for more widgets than there are."""
    options: dict[str, Any] = {
        "num_gpus": 0,
        "resources": {"widget": 2},
        "labels": {"zone": "here"},
        "object_store_memory": 100 * 2**20,
    }
    first = RayEngine(workers=1, **options)
    try:
        (node,) = [node for node in ray.nodes() if node["Alive"]]
        assert node["Resources"]["widget"] == 2
        assert node["Resources"]["CPU"] == 1
        assert node["Resources"].get("GPU", 0) == 0
        assert node["Resources"]["object_store_memory"] == 100 * 2**20
        assert node["Labels"]["zone"] == "here"

        pipeline = Pipeline([three_items, with_a_widget])
        result = madhatter.run(pipeline, engine="ray", inline=False, **options)  # joins it
        assert result == [(10, 1.0), (20, 1.0), (30, 1.0)]
        assert ray.is_initialized()  # the first engine still uses it

        with pytest.raises(
            madhatter.EngineError,
            match=r"start-time option resources=\{'widget': 3\} cannot apply: this process runs "
            r"the local Ray another run started \(ray start .*--resources=\{\"widget\": 2\}",
        ):
            RayEngine(resources={"widget": 3}, num_gpus=0)
        task = Task("t/w/0/0", abs, "t/w", (-1,), resources={"widget": 3})
        with pytest.raises(madhatter.EngineError, match="asks for 3 widget but the local Ray"):
            first.submit(task)
    finally:
        first.shutdown(cancel_pending=False)
    assert not ray.is_initialized()
