"""Which options of the ``ray`` engine start a local Ray, and which go to ``ray.init``.

``ray.init`` takes two kinds of options: start-time ones (CPUs, GPUs, custom resources, labels,
the object store, ...), which only a Ray being started can take (Ray 2.60 refuses or ignores them
when it joins a running cluster), and connect-time ones (``runtime_env``, ``namespace``, ...). The
local Ray madhatter starts is started by ``ray start`` in a process of its own, so the start-time
options become its flags here (:data:`START_FLAGS`); the rest go to ``ray.init``. A value
``ray start`` cannot take, or an option ``ray.init`` does not know, is an
:class:`~madhatter.EngineError` before any Ray starts.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from .._errors import EngineError
from ._registry import require_extra

ray = require_extra("ray", extra="ray")


def _whole(name: str, value: Any) -> str:
    """A whole number, as ``ray start`` takes it (an int, a float such as ``2.0``, or its text)."""
    if isinstance(value, str) and value.strip().isdigit():
        return value.strip()
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and value >= 0 and float(value).is_integer():
        return str(int(value))
    raise EngineError(f"{name}={value!r}: `ray start` takes a whole number, 0 or more")


def _amount(name: str, value: Any) -> str:
    """A number, 0 or more (or its text)."""
    try:
        number = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        number = -1.0
    if not number >= 0:  # also NaN
        raise EngineError(f"{name}={value!r}: `ray start` takes a number, 0 or more")
    return repr(number) if not number.is_integer() else str(int(number))


def _text(name: str, value: Any) -> str:
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise EngineError(f"{name}={value!r}: `ray start` takes a string here")


def _mapping(name: str, value: Any) -> dict[str, Any]:
    """A mapping with string keys, or its JSON text (as ``--engine-option name={...}`` gives it)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise EngineError(f"{name}={value!r}: give a dict with string keys (or its JSON text)")
    return dict(value)


def _resources(name: str, value: Any) -> str:
    amounts = _mapping(name, value)
    for resource, amount in amounts.items():
        if resource in ("CPU", "GPU"):
            raise EngineError(
                f"{name}={value!r}: give CPUs as workers= (or num_cpus=) and GPUs as num_gpus="
            )
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount >= 0:
            raise EngineError(f"{name}={value!r}: the amount of {resource!r} is not a number >= 0")
    return json.dumps(amounts)


def _labels(name: str, value: Any) -> str:
    """``--labels`` takes ``key=value,key=value`` (labels follow Kubernetes' syntax, in which
    neither character can appear; Ray checks the rest)."""
    labels = _mapping(name, value)
    for key, text in labels.items():
        if not isinstance(text, str) or any(c in key + text for c in ",="):
            raise EngineError(
                f"{name}={value!r}: labels are strings without ',' or '=' ({key!r}: {text!r})"
            )
    return ",".join(f"{key}={text}" for key, text in labels.items())


def _json(name: str, value: Any) -> str:
    try:
        return json.dumps(_mapping(name, value))
    except (TypeError, ValueError) as exc:
        raise EngineError(f"{name}={value!r} cannot be passed to `ray start` as JSON: {exc}") from None


def _no_dashboard(name: str, value: Any) -> str:
    raise EngineError(
        f"{name}={value!r}: the local Ray madhatter starts runs no dashboard (it listens on "
        f"127.0.0.1 only); for one, start Ray yourself (ray start --head --include-dashboard="
        f"true ...) and pass address="
    )


_Converter = Callable[[str, Any], str]

START_FLAGS: dict[str, tuple[str, _Converter | None]] = {
    "num_cpus": ("--num-cpus", _whole),
    "num_gpus": ("--num-gpus", _whole),
    "resources": ("--resources", _resources),
    "labels": ("--labels", _labels),
    "object_store_memory": ("--object-store-memory", _whole),
    "_memory": ("--memory", _whole),
    "_system_config": ("--system-config", _json),
    "_enable_object_reconstruction": ("--enable-object-reconstruction", None),
    "_node_name": ("--node-name", _text),
    "_plasma_directory": ("--plasma-directory", _text),
    "object_spilling_directory": ("--object-spilling-directory", _text),
    "_metrics_export_port": ("--metrics-export-port", _whole),
    "_tracing_startup_hook": ("--tracing-startup-hook", _text),
    "enable_resource_isolation": ("--enable-resource-isolation", None),
    "cgroup_path": ("--cgroup-path", _text),
    "system_reserved_cpu": ("--system-reserved-cpu", _amount),
    "system_reserved_memory": ("--system-reserved-memory", _whole),
    "include_dashboard": ("", _no_dashboard),
    "dashboard_host": ("", _no_dashboard),
    "dashboard_port": ("", _no_dashboard),
    "proxy_server_url": ("", _no_dashboard),
}
"""The start-time options of ``ray.init`` (Ray 2.60: those it refuses, or ignores, when it joins a
running cluster), by the ``ray start`` flag that gives each to a local Ray and how its value is
written (``None``: a switch, given when the option is true). The dashboard's are refused: the local
Ray has none."""


LOCAL_RAY_SETS = {
    "_temp_dir": "it has a temporary folder of its own, under RAY_TMPDIR (set that instead)",
    "_node_ip_address": "it listens on 127.0.0.1 only",
    "_redis_username": "it uses no Redis",
    "_redis_password": "it uses no Redis",
}
"""Options of ``ray.init`` that madhatter's local Ray sets itself, and why (to a cluster at an
address they go to ``ray.init``)."""


HIDDEN_CONNECT_OPTIONS = ("_driver_object_store_memory", "_skip_env_hook")
"""Options ``ray.init`` takes by ``**kwargs`` (not in its signature) that are not in
:data:`START_FLAGS` or :data:`LOCAL_RAY_SETS`."""


def split_options(init_options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine's options as (start-time, connect-time): the start-time options of
    :data:`START_FLAGS`, which only a Ray being started can take (one given as ``None``, ``False``
    or an empty dict is left out: that is Ray's default), and the others, which go to
    ``ray.init`` (``runtime_env``, ``namespace``, ``log_to_driver``, ``job_config``, ...).

    Raises:
        EngineError: an option ``ray.init`` does not take (a typo), before any Ray is started.
    """
    parameters = inspect.signature(ray.init).parameters.values()
    known = {p.name for p in parameters if p.kind is p.KEYWORD_ONLY}
    known.update(START_FLAGS, LOCAL_RAY_SETS, HIDDEN_CONNECT_OPTIONS)
    start: dict[str, Any] = {}
    connect: dict[str, Any] = {}
    for name, value in init_options.items():
        if name not in known:
            raise EngineError(
                f"the ray engine has no option {name!r}: it is neither the engine's own (workers, "
                f"address) nor one of ray.init's (Ray {ray.__version__})"
            )
        if name not in START_FLAGS:
            connect[name] = value
        elif not (value is None or value is False or (isinstance(value, Mapping) and not value)):
            start[name] = value
    return start, connect


def start_flags(start: Mapping[str, Any]) -> dict[str, list[str]]:
    """The ``ray start`` flags of start-time options (see :func:`split_options`), by option.

    Raises:
        EngineError: a value ``ray start`` cannot take, or an option the local Ray cannot take.
    """
    flags: dict[str, list[str]] = {}
    for name, value in start.items():
        flag, convert = START_FLAGS[name]
        flags[name] = [flag if convert is None else f"{flag}={convert(name, value)}"]
    return flags


def local_start_flags(workers: int | None, start: Mapping[str, Any]) -> dict[str, list[str]]:
    """:func:`start_flags` for a local Ray, whose CPUs are ``workers`` or ``num_cpus`` (both, if
    they differ, is an error; neither: every core)."""
    flags = start_flags(start)
    if workers:
        own = [f"--num-cpus={_whole('workers', workers)}"]
        if flags.get("num_cpus", own) != own:
            raise EngineError(
                f"workers={workers!r} and num_cpus={start['num_cpus']!r} both set the CPUs of the "
                f"local Ray: give one of them"
            )
        flags["num_cpus"] = own
    elif "num_cpus" not in flags:
        flags["num_cpus"] = [f"--num-cpus={os.cpu_count() or 1}"]
    return flags


def listed_options(options: Mapping[str, Any]) -> str:
    """``"start-time option num_gpus=1"``, for an error message."""
    listed = ", ".join(f"{name}={value!r}" for name, value in options.items())
    return f"start-time option{'s' if len(options) > 1 else ''} {listed}"
