"""The executor options that `csipos experiment` and `csipos data simulate` share."""

from __future__ import annotations

from typing import Annotated

import typer

from training.cluster import EXECUTOR_KINDS, ExecutorConfig

ExecutorOption = Annotated[
    str,
    typer.Option(
        "--executor",
        metavar="local|ray",
        help="Where jobs run: 'local' (this machine's processes) or 'ray' (Ray tasks on a "
        "cluster; needs the 'cluster' extra). See docs/cluster.md.",
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        metavar="ADDR",
        help="With --executor ray: the cluster (host:6379, ray://host:10001 or auto). "
        "Default: $RAY_ADDRESS, else the cluster `ray start` last started on this machine, "
        "else a Ray started for this command.",
    ),
]
TaskCpusOption = Annotated[
    int,
    typer.Option(
        "--task-cpus",
        min=1,
        help="CPUs each job asks for (with ray: its num_cpus) and torch threads it runs with.",
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        help="Jobs at once: local worker processes (default 1); with --executor ray, tasks in "
        "flight (default: all, Ray queues them on the cluster's CPUs).",
    ),
]


def executor_config(
    executor: str, workers: int | None, address: str | None, task_cpus: int
) -> ExecutorConfig:
    """The options as an `ExecutorConfig`, or a usage error naming the option at fault."""
    if executor not in EXECUTOR_KINDS:
        raise typer.BadParameter(
            f"expected one of {', '.join(EXECUTOR_KINDS)}, got {executor!r}",
            param_hint="--executor",
        )
    if address is not None and executor != "ray":
        raise typer.BadParameter("only with --executor ray", param_hint="--address")
    return ExecutorConfig(
        "ray" if executor == "ray" else "local",
        workers=workers,
        address=address,
        task_cpus=task_cpus,
    )
