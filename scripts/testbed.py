#!/usr/bin/env python3
"""Local test bed for kafka-handler: real Kafka (KRaft), Redis and PostgreSQL
processes on 127.0.0.1, random ports, data in a fresh temp dir under /tmp.

  testbed.py up [--brokers N] [--cluster3] [--redis-cluster] [--no-redis] [--no-postgres] --state DIR
  testbed.py down --state DIR
  testbed.py node stop|start|kill NAME --state DIR
  testbed.py status --state DIR
  testbed.py fetch-kafka      (cache the Kafka jars + class-data archive; print the libs dir)
  testbed.py packages [--also PROGRAM=PACKAGE ...] [--dry-run]

`up` and `fetch-kafka` first install the Debian packages they need when they are
missing (Java, Maven while Kafka is not cached, Redis, PostgreSQL; see
testbed_packages.py), with sudo when not root; `packages` does that for the whole
test bed (plus PACKAGE wherever PROGRAM is not on PATH), and with --dry-run only
prints what is missing and the commands it would run.

Component names: kafka (or kafka-1..N with --brokers N), cluster3-1..3, redis,
redis-cluster-1..3, postgres.  --redis-cluster adds a 3-node Redis Cluster (3 masters,
no replicas, all 16384 slots covered; REDIS_CLUSTER_URLS in DIR/env): `up` forms it
and waits for cluster_state:ok on every node; `node start redis-cluster-N` waits for
that again once all three nodes are running (up to ~10 s after a node was down).
Redis keeps an append-only file (fsync every second), as a dedup store in production
would: `node stop|start` keeps a Redis node's port, keys (and a cluster node's
identity and slots); `node kill` may lose the last second of writes.
--state defaults to $KH_TESTBED, so a test running under scripts/test can do
`python3 "$KH_TESTBED_PY" node kill cluster3-2`.  `up` writes DIR/env (shell
exports) and DIR/state.json (components, ports, PIDs).  Python 3 stdlib only;
helpers live in testbed_core.py, testbed_kafka.py and testbed_packages.py next to
this file.

`up --owner-pid PID` also starts a watcher that runs `down` once PID is gone, so
even a SIGKILLed scripts/test leaves no processes behind.

Environment: KH_CACHE (jar cache, default ~/.cache/kafka-handler), KH_TESTBED_KEEP=1
(`down` keeps data + logs), KH_TESTBED_NO_CDS=1 (no JVM class-data archive),
KH_KAFKA_LOG_LEVEL (Kafka's server.log level, default WARN).
"""
import argparse
import concurrent.futures
import contextlib
import fcntl
import functools
import glob
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the repo's scripts/ dir
import testbed_core as core  # noqa: E402
import testbed_kafka as kafka  # noqa: E402
import testbed_packages as packages  # noqa: E402
from testbed_core import TestbedError, log  # noqa: E402

DB_NAME = "kafka_handler"


# ---------------------------------------------------------------- Redis

def redis_node(data, taken, name="redis", cluster=False):
    exe = shutil.which("redis-server")
    if not exe:
        raise TestbedError("redis-server not found (apt-get install redis-server)")
    d = os.path.join(data, name)
    os.makedirs(d)
    port = core.free_port(taken)
    comp = {"kind": "redis", "dir": d, "port": port, "logs": [os.path.join(d, "stdout.log")],
            "cmd": [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no", "--dir", d]}
    if cluster:
        # The cluster bus port gets its own free port: the default (port + 10000) could
        # land in the ephemeral range or on another component.  nodes.conf keeps the
        # node's identity and slots across `node stop|kill|start`.
        bus = core.free_port(taken)
        comp.update(kind="redis-cluster", bus_port=bus)
        comp["cmd"] += ["--cluster-enabled", "yes", "--cluster-port", str(bus),
                        "--cluster-config-file", os.path.join(d, "nodes.conf"),
                        "--cluster-node-timeout", "5000"]
    return comp


def redis_ready(comp):
    with socket.create_connection(("127.0.0.1", comp["port"]), timeout=2) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        return s.recv(64).startswith(b"+PONG")


def redis_cli():
    exe = shutil.which("redis-cli")
    if not exe:
        raise TestbedError("redis-cli not found (apt-get install redis-tools)")
    return exe


def redis_cluster_info(comp):
    try:
        return subprocess.run([redis_cli(), "-h", "127.0.0.1", "-p", str(comp["port"]), "cluster", "info"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=5).stdout
    except subprocess.TimeoutExpired:
        return "(CLUSTER INFO timed out)"


def redis_cluster_wait(nodes, timeout=60):
    """Until every node in `nodes` reports cluster_state:ok."""
    deadline = time.monotonic() + timeout
    while True:
        if core.ABORT.is_set():
            raise TestbedError("interrupted")
        bad = {c["name"]: redis_cluster_info(c) for c in nodes}
        bad = {n: info for n, info in bad.items() if "cluster_state:ok" not in info.split()}
        if not bad:
            return
        if time.monotonic() > deadline:
            raise TestbedError(f"Redis Cluster not ok after {timeout} s (no cluster_state:ok on "
                               f"{', '.join(bad)}); CLUSTER INFO of {next(iter(bad))}:\n"
                               f"{next(iter(bad.values())).strip()}")
        time.sleep(0.2)


def redis_cluster_form(nodes):
    """Join the (running, empty) nodes into one cluster: all masters, slots split evenly."""
    core.run([redis_cli(), "--cluster", "create", *(f"127.0.0.1:{c['port']}" for c in nodes),
              "--cluster-replicas", "0", "--cluster-yes"], "creating the Redis Cluster", timeout=60)
    redis_cluster_wait(nodes)


# ---------------------------------------------------------------- PostgreSQL

def pg_bindir():
    def version(path):  # /usr/lib/postgresql/<version>/bin/postgres
        v = path.split("/")[4]
        return int(v) if v.isdigit() else 0

    found = sorted(glob.glob(packages.PG_SERVERS), key=version)
    if found:
        return os.path.dirname(found[-1])
    if shutil.which("postgres"):
        return os.path.dirname(shutil.which("postgres"))
    raise TestbedError("PostgreSQL server not found (apt-get install postgresql)")


def pg_node(data, taken):
    bindir = pg_bindir()
    user = "postgres" if os.geteuid() == 0 else None  # postgres refuses to run as root
    d = os.path.join(data, "postgres")
    os.makedirs(d, mode=0o700)
    if user:
        shutil.chown(d, user, user)
    port = core.free_port(taken)
    pgdata = os.path.join(d, "data")
    return {
        "kind": "postgres", "dir": d, "port": port, "user": user, "bindir": bindir,
        "logs": [os.path.join(d, "stdout.log")],
        # --no-sync only skips initdb's own final flush; the server runs with fsync=on
        "init": [os.path.join(bindir, "initdb"), "-D", pgdata, "-U", "postgres", "--auth=trust",
                 "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
        "cmd": [os.path.join(bindir, "postgres"), "-D", pgdata, "-p", str(port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={d}",
                "-c", "max_connections=200", "-c", "fsync=on"],
    }


def pg_ready(comp):
    return subprocess.run([os.path.join(comp["bindir"], "pg_isready"), "-q", "-h", "127.0.0.1",
                           "-p", str(comp["port"]), "-U", "postgres", "-t", "2"]).returncode == 0


def pg_create_db(comp):
    core.run([os.path.join(comp["bindir"], "psql"), "-q", "-h", "127.0.0.1", "-p", str(comp["port"]),
              "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
              "-c", f"CREATE DATABASE {DB_NAME}"], "creating the database")


def pg_remove_shm(comp):
    """After a crash/kill, postmaster.pid is left behind and so is the postmaster's
    small SysV shared memory segment (its id is on line 7): remove it."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        with open(os.path.join(comp["dir"], "data", "postmaster.pid")) as f:
            shmid = int(f.read().splitlines()[6].split()[1])
        subprocess.run(["ipcrm", "-m", str(shmid)], stderr=subprocess.DEVNULL)


PROBES = {"kafka": kafka.ready, "redis": redis_ready, "redis-cluster": redis_ready, "postgres": pg_ready}
STOP_SIGNALS = {"postgres": signal.SIGINT}  # "fast" shutdown; SIGTERM waits for clients


def stop(comp, hard=False, final=False):
    core.stop(comp, STOP_SIGNALS.get(comp["kind"], signal.SIGTERM), hard)
    if final and comp["kind"] == "postgres":  # final: the data dir goes away next
        pg_remove_shm(comp)


# ---------------------------------------------------------------- state dir

@contextlib.contextmanager
def locked(state_dir):
    """flock on the state dir itself: no lock file to leave behind."""
    fd = os.open(state_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load(state_dir):
    with contextlib.suppress(FileNotFoundError), open(os.path.join(state_dir, "state.json")) as f:
        return json.load(f)
    return None


def save(state_dir, st):
    tmp = os.path.join(state_dir, ".state.json.tmp")
    core.write(tmp, json.dumps(st, indent=2) + "\n")
    os.rename(tmp, os.path.join(state_dir, "state.json"))


def timed_stop(comp):
    t = time.monotonic()
    stop(comp, final=True)
    if time.monotonic() - t > 5:
        log(f"{comp['name']} took {time.monotonic() - t:.1f} s to stop")


def teardown(state_dir, st):
    comps = list(st["components"].values())
    watcher = st.get("watcher")
    if watcher and watcher["pid"] != os.getpid():
        comps.append(watcher)
    with concurrent.futures.ThreadPoolExecutor(max(1, len(comps))) as ex:
        list(ex.map(timed_stop, comps))
    if os.environ.get("KH_TESTBED_KEEP"):
        log(f"KH_TESTBED_KEEP is set: keeping data and logs in {st['data_dir']}")
    else:
        shutil.rmtree(st["data_dir"], ignore_errors=True)
    for f in ("state.json", "env", ".state.json.tmp"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(state_dir, f))


def env_file(state_dir, st):
    comps = st["components"]

    def addrs(cluster):
        return ",".join(f"127.0.0.1:{c['port']}" for c in comps.values() if c.get("cluster") == cluster)

    env = {"KAFKA_BOOTSTRAP_SERVERS": addrs("kafka")}
    if addrs("cluster3"):  # the i-th address is node `cluster3-i` (node.id i)
        env["KH_TEST_KAFKA_CLUSTER3"] = addrs("cluster3")
        env["KH_TEST_KAFKA_CLUSTER3_STATE"] = state_dir  # for: testbed.py node ... --state
    if "redis" in comps:
        env["REDIS_URL"] = f"redis://127.0.0.1:{comps['redis']['port']}"
    cluster_urls = [f"redis://127.0.0.1:{c['port']}" for c in comps.values() if c["kind"] == "redis-cluster"]
    if cluster_urls:  # the i-th URL is node `redis-cluster-i`
        env["REDIS_CLUSTER_URLS"] = ",".join(cluster_urls)
    if "postgres" in comps:
        env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:{comps['postgres']['port']}/{DB_NAME}"
    env["KH_TESTBED"] = state_dir
    env["KH_TESTBED_PY"] = os.path.abspath(__file__)
    env["KH_KAFKA_LIBS"] = st["kafka_libs"]  # for `java -cp "$KH_KAFKA_LIBS/*" ...`
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


# ---------------------------------------------------------------- commands

def cmd_up(a):
    packages.ensure(packages.missing(redis=not a.no_redis, redis_cluster=a.redis_cluster,
                                     postgres=not a.no_postgres, maven=not kafka.cached()))
    state_dir = os.path.abspath(a.state)
    os.makedirs(state_dir, exist_ok=True)
    with locked(state_dir):
        old = load(state_dir)
        if old:
            log(f"tearing down the previous test bed recorded in {state_dir}")
            teardown(state_dir, old)
        t0 = time.monotonic()
        libs = kafka.fetch_jars()
        cds = kafka.ensure_cds(libs, kafka.java_bin())
        data = tempfile.mkdtemp(prefix="kh-testbed.", dir="/tmp")
        os.chmod(data, 0o755)  # postgres runs as another user and must get through
        taken = set()
        heap = ["-Xms256m", "-Xmx1g" if a.brokers == 1 else "-Xmx512m"]
        comps = kafka.nodes(data, libs, "kafka", a.brokers, heap, taken, cds)
        if a.cluster3:
            comps.update(kafka.nodes(data, libs, "cluster3", 3, ["-Xms256m", "-Xmx512m"], taken, cds))
        if not a.no_redis:
            comps["redis"] = redis_node(data, taken)
        if a.redis_cluster:
            for i in (1, 2, 3):
                comps[f"redis-cluster-{i}"] = redis_node(data, taken, f"redis-cluster-{i}", cluster=True)
        if not a.no_postgres:
            comps["postgres"] = pg_node(data, taken)
        for name, c in comps.items():
            c["name"] = name
        st = {"data_dir": data, "kafka_libs": libs, "components": comps}
        save(state_dir, st)  # from here on `down` can clean up whatever got started
        save_lock = threading.Lock()

        def bring_up(c):
            t = time.monotonic()
            if c.get("init"):  # kafka: format the KRaft storage; postgres: initdb
                core.run(c["init"], f"initializing {c['name']}", cwd=c["dir"], **core.as_user(c.get("user")))
            core.spawn(c)
            with save_lock:
                save(state_dir, st)
            whole_cluster = functools.partial(kafka.ready, whole_cluster=True)
            core.wait_ready(c, whole_cluster if c["kind"] == "kafka" else PROBES[c["kind"]])
            if c["kind"] == "postgres":
                pg_create_db(c)
            log(f"{c['name']} up at 127.0.0.1:{c['port']} (pid {c['pid']}, {time.monotonic() - t:.1f} s)")

        cluster_nodes = [c for c in comps.values() if c["kind"] == "redis-cluster"]

        def form_redis_cluster(node_jobs):  # once its nodes answer; the rest keeps starting
            concurrent.futures.wait(node_jobs)
            if any(f.exception() for f in node_jobs):
                return  # reported for the node itself
            t = time.monotonic()
            redis_cluster_form(cluster_nodes)
            log(f"redis cluster formed, cluster_state:ok ({time.monotonic() - t:.1f} s)")

        with concurrent.futures.ThreadPoolExecutor(len(comps) + 1) as ex:
            jobs = {name: ex.submit(bring_up, c) for name, c in comps.items()}
            if cluster_nodes:
                jobs["redis-cluster"] = ex.submit(form_redis_cluster, [jobs[c["name"]] for c in cluster_nodes])
            try:
                concurrent.futures.wait(jobs.values())
            except KeyboardInterrupt:  # Ctrl-C / SIGTERM: stop waiting, clean up
                core.ABORT.set()
                concurrent.futures.wait(jobs.values())
            errors = [f"{n}: {f.exception()}" for n, f in jobs.items() if f.exception()]
        save(state_dir, st)
        if errors:
            log("startup failed:\n" + "\n\n".join(errors))
            teardown(state_dir, st)
            return 130 if core.ABORT.is_set() else 1
        if a.owner_pid:
            st["watcher"] = start_watcher(state_dir, data, a.owner_pid)
            save(state_dir, st)
        core.write(os.path.join(state_dir, "env"), env_file(state_dir, st))
        log(f"all up in {time.monotonic() - t0:.1f} s; env: {state_dir}/env, data: {data}")
    return 0


def start_watcher(state_dir, data_dir, owner_pid):
    """A detached `watch` process, so that the test bed goes away even when its
    owner (scripts/test) is SIGKILLed and never gets to run `down`."""
    w = {"name": "watcher", "kind": "watcher", "dir": "/", "port": 0,
         "logs": [os.path.join(data_dir, "watcher.log")],
         "cmd": [sys.executable, os.path.abspath(__file__), "watch", "--state", state_dir,
                 "--data-dir", data_dir, "--pid", str(owner_pid),
                 "--start-time", str(core.proc_start_time(owner_pid))]}
    core.spawn(w)
    return w


def cmd_watch(a):
    while True:
        time.sleep(1)
        st = load(os.path.abspath(a.state))
        if not st or st["data_dir"] != a.data_dir:
            return 0  # taken down already
        if str(core.proc_start_time(a.pid)) != a.start_time:
            log(f"owner process {a.pid} is gone: taking the test bed down")
            return cmd_down(a)


def cmd_down(a):
    state_dir = os.path.abspath(a.state)
    if not os.path.isdir(state_dir):
        return 0
    with locked(state_dir):
        st = load(state_dir)
        if st:
            t = time.monotonic()
            teardown(state_dir, st)
            log(f"down ({time.monotonic() - t:.1f} s)")
    with contextlib.suppress(OSError):
        os.rmdir(state_dir)  # only if empty: never delete files we did not write
    return 0


def cmd_node(a):
    state_dir = os.path.abspath(a.state)
    with locked(state_dir):
        st = load(state_dir) or {"components": {}}
    comp = st["components"].get(a.name)
    if comp is None:
        raise TestbedError(f"no component {a.name!r}; have: {', '.join(st['components']) or 'none'}")
    t = time.monotonic()
    if a.action != "start":
        stop(comp, hard=(a.action == "kill"))
    elif core.alive(comp):
        log(f"{a.name} is already running (pid {comp['pid']})")
    else:
        core.spawn(comp)
    with locked(state_dir):  # re-read: other components may have changed meanwhile
        st = load(state_dir)
        if not st:
            raise TestbedError("the test bed was taken down meanwhile")
        st["components"][a.name].update(pid=comp["pid"], start_time=comp.get("start_time"))
        save(state_dir, st)
    if a.action == "start":
        core.wait_ready(comp, PROBES[comp["kind"]])
        cluster = [c for c in st["components"].values() if c["kind"] == "redis-cluster"]
        if comp["kind"] == "redis-cluster" and all(core.alive(c) for c in cluster):
            # every node must see the rejoined one (the others lag behind it by up to
            # 2 x cluster-node-timeout); with a node still down the state stays "fail"
            redis_cluster_wait(cluster)
        log(f"{a.name} up at 127.0.0.1:{comp['port']} ({time.monotonic() - t:.1f} s)")
    else:
        log(f"{a.name} {'killed' if a.action == 'kill' else 'stopped'} ({time.monotonic() - t:.1f} s)")
    return 0


def cmd_status(a):
    st = load(os.path.abspath(a.state))
    if not st:
        print("no test bed")
        return 3
    print(f"data dir: {st['data_dir']}")
    stopped = 0
    for name, c in st["components"].items():
        up = core.alive(c)
        stopped += not up
        state = f"pid {c['pid']}" if up else "STOPPED"
        print(f"{name:15} {c['kind']:13} 127.0.0.1:{c['port']:<6} {state}")
    return 3 if stopped else 0


def cmd_packages(a):
    also = [tuple(pair.split("=", 1)) for pair in a.also]
    if any(len(pair) != 2 or not all(pair) for pair in also):
        raise TestbedError("--also wants PROGRAM=PACKAGE")
    missing = packages.missing(maven=not kafka.cached(), also=also)
    if a.dry_run:
        print("missing: " + (" ".join(missing) or "nothing"))
    packages.ensure(missing, dry_run=a.dry_run)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    default_state = os.environ.get("KH_TESTBED")

    def with_state(p):
        p.add_argument("--state", default=default_state, required=not default_state,
                       help="state directory (default: $KH_TESTBED)")
        return p

    up = with_state(sub.add_parser("up", help="start the test bed"))
    up.add_argument("--brokers", type=int, default=1, help="nodes of the main Kafka cluster")
    up.add_argument("--cluster3", action="store_true", help="also start a separate 3-node cluster")
    up.add_argument("--redis-cluster", action="store_true",
                    help="also start a 3-node Redis Cluster (REDIS_CLUSTER_URLS)")
    up.add_argument("--no-redis", action="store_true")
    up.add_argument("--no-postgres", action="store_true")
    up.add_argument("--owner-pid", type=int, help="take the test bed down when this process exits")
    with_state(sub.add_parser("down", help="stop everything, delete the data"))
    with_state(sub.add_parser("status", help="list components (exit 3 if any is stopped)"))
    node = with_state(sub.add_parser("node", help="stop/start/kill one component, keeping data + port"))
    node.add_argument("action", choices=["stop", "start", "kill"])
    node.add_argument("name")
    watch = with_state(sub.add_parser("watch", help=argparse.SUPPRESS))  # started by up --owner-pid
    watch.add_argument("--pid", type=int, required=True)
    watch.add_argument("--start-time", required=True)
    watch.add_argument("--data-dir", required=True)
    sub.add_parser("fetch-kafka", help="cache the Kafka jars (+ class-data archive), print the libs dir")
    pkgs = sub.add_parser("packages", help="install the Debian packages the test bed needs")
    pkgs.add_argument("--also", action="append", default=[], metavar="PROGRAM=PACKAGE",
                      help="also install PACKAGE if PROGRAM is not on PATH")
    pkgs.add_argument("--dry-run", action="store_true",
                      help="only print the missing packages and the commands that would install them")
    a = ap.parse_args()
    if a.cmd == "up":  # SIGTERM during startup: clean up like on Ctrl-C
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    if a.cmd == "up" and a.brokers < 1:
        ap.error("--brokers must be at least 1")
    try:
        if a.cmd == "fetch-kafka":
            packages.ensure(packages.missing(redis=False, redis_cluster=False, postgres=False,
                                             maven=not kafka.cached()))
            libs = kafka.fetch_jars()
            kafka.ensure_cds(libs, kafka.java_bin())
            print(libs)
            return 0
        return {"up": cmd_up, "down": cmd_down, "node": cmd_node, "status": cmd_status,
                "watch": cmd_watch, "packages": cmd_packages}[a.cmd](a)
    except TestbedError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
