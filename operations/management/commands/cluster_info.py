"""Print `make cluster`'s banner again: the URLs through nginx, console login and demo API key, and what runs where
(each process's port, each Valkey node's role now: a master killed and back is a replica)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import CommandError

from operations import cluster
from operations.management.commands import platform_info
from personalization import embedded_cluster


class Command(platform_info.Command):
    help = "Print the cluster's URLs, admin login, demo API key and processes (the banner of `make cluster`)."
    start_command = "make cluster"
    again_command = "cluster_info"

    def footer(self, data_dir: Path, *, running: bool) -> list[str]:
        stored = cluster.plan_read(data_dir)
        if stored is None:
            raise CommandError("No cluster started here yet: start it with `make cluster`.")
        plan, servers = stored
        nodes = embedded_cluster.valkey_cluster_nodes_running(data_dir / cluster.VALKEY_CLUSTER_FOLDER)
        roles = [(f"127.0.0.1:{node.port}", node.role) for node in nodes]
        return ["  Cluster", *cluster.processes_table(plan, valkey_nodes=roles, servers=servers)]
