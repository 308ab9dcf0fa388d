"""The Debian packages the test bed runs, installed with apt-get when missing.

`testbed.py up` and `fetch-kafka` install what their components need, and
`testbed.py packages` what the whole test bed needs (scripts/lib.sh calls it),
so there is one list and one way to install: non-interactively, with sudo when
not root, and without starting the packages' own system services (a
policy-rc.d that answers 101 while apt-get runs): the test bed runs private
instances on random ports."""
import glob
import os
import shlex
import shutil

from testbed_core import TestbedError, log, run

POLICY_RC_D = "/usr/sbin/policy-rc.d"
# Debian puts the PostgreSQL server here, not on PATH.
PG_SERVERS = "/usr/lib/postgresql/*/bin/postgres"


def on_path(program):
    return shutil.which(program) is not None


def java_found():
    home = os.environ.get("JAVA_HOME")
    return (bool(home) and os.path.exists(os.path.join(home, "bin", "java"))) or on_path("java")


def postgres_found():
    return bool(glob.glob(PG_SERVERS)) or on_path("postgres")


def missing(redis=True, redis_cluster=True, postgres=True, maven=True, also=()):
    """The packages to install for these components, in a stable order.

    maven: Kafka is not cached yet (it is downloaded with Maven).
    also: extra (program, package) pairs, e.g. ("promtool", "prometheus")."""
    wants = [(java_found, "default-jre-headless")]
    if maven:
        wants.append((lambda: on_path("mvn"), "maven"))
    if redis or redis_cluster:
        wants.append((lambda: on_path("redis-server"), "redis-server"))
    if redis_cluster:  # forms the cluster and asks it for its state
        wants.append((lambda: on_path("redis-cli"), "redis-tools"))
    if postgres:
        wants.append((postgres_found, "postgresql"))
    wants += [(lambda p=program: on_path(p), package) for program, package in also]
    out = []
    for found, package in wants:
        if package not in out and not found():
            out.append(package)
    return out


def install_steps(packages, root):
    """The commands that install `packages`, as (command, what) pairs; root:
    whether we are root (else every command goes through sudo)."""
    sudo = [] if root else ["sudo"]
    apt = [*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-o", "DPkg::Lock::Timeout=300"]
    steps = []
    # apt-get runs policy-rc.d (if there is one) before it starts a service:
    # "exit 101" = not now.  Ours goes away again; an existing one is left alone.
    created = not os.path.exists(POLICY_RC_D)
    if created:
        steps.append(([*sudo, "sh", "-c", f"printf '#!/bin/sh\\nexit 101\\n' > {POLICY_RC_D} && "
                                          f"chmod 755 {POLICY_RC_D}"], "writing " + POLICY_RC_D))
    steps.append(([*apt, "update", "-qq"], "apt-get update"))
    steps.append(([*apt, "install", "-y", "-qq", "--no-install-recommends", *packages],
                  "installing " + " ".join(packages)))
    cleanup = [([*sudo, "rm", "-f", POLICY_RC_D], "removing " + POLICY_RC_D)] if created else []
    return steps, cleanup


def ensure(packages, dry_run=False):
    """Installs `packages` (from missing()); dry_run: only says how."""
    if not packages:
        return
    root = os.geteuid() == 0
    if not root and not on_path("sudo") and not dry_run:
        raise TestbedError(f"missing {' '.join(packages)}, and neither root nor sudo to install them")
    steps, cleanup = install_steps(packages, root)
    if dry_run:
        for cmd, _ in steps + cleanup:
            print(shlex.join(cmd))
        return
    log(f"installing {' '.join(packages)} (apt-get)")
    try:
        for cmd, what in steps:
            run(cmd, what, timeout=1800)
    finally:
        for cmd, what in cleanup:
            run(cmd, what)
