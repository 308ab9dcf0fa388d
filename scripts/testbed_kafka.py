"""Kafka for the test bed: jars from Maven Central (cached), a JVM class-data
archive for faster starts, KRaft node configs, and a readiness probe speaking
just enough of the Kafka wire protocol."""
import base64
import contextlib
import glob
import hashlib
import os
import random
import shutil
import socket
import struct
import tempfile
import time
import xml.etree.ElementTree as ET

from testbed_core import TestbedError, log, run, write
import testbed_core as core

POM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kafka", "pom.xml")


# ---------------------------------------------------------------- jars

def kafka_version():
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    return ET.parse(POM).getroot().find("m:properties/m:kafka.version", ns).text.strip()


def cache_dir():
    """$KH_CACHE/kafka-<version>: libs/ and pom.sha256, the pom they came from."""
    cache = os.environ.get("KH_CACHE") or os.path.expanduser("~/.cache/kafka-handler")
    return os.path.join(cache, f"kafka-{kafka_version()}")


def pom_digest():
    with open(POM, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def valid(d):
    """d holds all the jars of the current pom."""
    with contextlib.suppress(OSError), open(os.path.join(d, "pom.sha256")) as f:
        return f.read().strip() == pom_digest()
    return False


def cached():
    """Whether the jars are cached (else fetch_jars() needs Maven)."""
    return valid(cache_dir())


def fetch_jars():
    """Cached libs dir ($KH_CACHE/kafka-<version>/libs); downloads with Maven into a
    temp dir that is renamed into place, so an interrupted download leaves nothing."""
    version = kafka_version()
    final = cache_dir()
    cache, digest = os.path.dirname(final), pom_digest()
    if valid(final):
        return os.path.join(final, "libs")
    if not shutil.which("mvn"):
        raise TestbedError("Kafka jars not cached and `mvn` not found (apt-get install maven)")
    os.makedirs(cache, exist_ok=True)
    for stale in glob.glob(os.path.join(cache, ".kafka-*")):  # left by a killed download
        if time.time() - os.path.getmtime(stale) > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=f".kafka-{version}.", dir=cache)
    try:
        log(f"downloading Kafka {version} jars from Maven Central into {final}")
        shutil.copy(POM, os.path.join(tmp, "pom.xml"))
        run(["mvn", "-q", "-B", "-Dstyle.color=never", "-f", os.path.join(tmp, "pom.xml"),
             "dependency:copy-dependencies", "-DincludeScope=runtime",
             "-DoutputDirectory=" + os.path.join(tmp, "libs")], "the maven download", timeout=900)
        if not os.path.exists(os.path.join(tmp, "libs", f"kafka_2.13-{version}.jar")):
            raise TestbedError("maven finished but the kafka jar is missing")
        write(os.path.join(tmp, "pom.sha256"), digest + "\n")
        os.chmod(tmp, 0o755)
        if os.path.exists(final):  # stale (the pom changed): move it aside, then swap
            old = tempfile.mkdtemp(prefix=f".kafka-{version}.old.", dir=cache)
            os.rename(final, os.path.join(old, "x"))
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not valid(final):  # only fine if a concurrent download won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(final, "libs")


def java_bin():
    home = os.environ.get("JAVA_HOME")
    exe = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not exe or not os.path.exists(exe):
        raise TestbedError("java not found (apt-get install default-jre-headless)")
    return exe


# ---------------------------------------------------------------- CDS archive

def cds_path(libs, java):
    """Per Kafka version and JVM build (the JVM also checks this itself)."""
    java = os.path.realpath(java)
    libjvm = os.path.join(os.path.dirname(os.path.dirname(java)), "lib", "server", "libjvm.so")
    st = os.stat(libjvm if os.path.exists(libjvm) else java)
    key = hashlib.sha256(f"{java}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return os.path.join(os.path.dirname(libs), f"cds-{key}.jsa")


def ensure_cds(libs, java):
    """A dynamic AppCDS archive roughly halves Kafka's start time (6 s -> 3 s here).
    Made once by starting and stopping a throw-away broker; None if disabled/failed."""
    if os.environ.get("KH_TESTBED_NO_CDS"):
        return None
    path = cds_path(libs, java)
    if os.path.exists(path):
        return path
    if os.path.exists(path + ".failed"):  # do not pay for a failing training run every time
        return None
    t = time.monotonic()
    log("creating a JVM class-data archive for faster Kafka starts (once per Kafka/JVM version)")
    tmp = f"{path}.tmp{os.getpid()}"
    scratch = tempfile.mkdtemp(prefix="kh-testbed-cds.", dir="/tmp")
    node = None
    try:
        node = nodes(scratch, libs, "cds-training", 1, ["-Xmx512m", f"-XX:ArchiveClassesAtExit={tmp}"],
                     set(), cds=None)["cds-training"]
        node["name"] = "cds-training"
        run(node["init"], "formatting the training broker", cwd=node["dir"])
        core.spawn(node)
        core.wait_ready(node, ready)
        core.stop(node)  # the archive is written when the JVM exits
        run([java, f"-XX:SharedArchiveFile={tmp}", "-Xshare:on", "-cp", os.path.join(libs, "*"),
             "-version"], "checking the class-data archive")
        os.rename(tmp, path)
        log(f"class-data archive ready ({time.monotonic() - t:.1f} s)")
        return path
    except TestbedError as e:
        log(f"warning: no class-data archive, Kafka will start slower: {e}")
        write(path + ".failed", str(e))
        return None
    finally:
        if node and core.alive(node):  # failed or interrupted
            core.stop(node, hard=True)
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# ---------------------------------------------------------------- nodes

LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = FILE
"""


def cluster_id():
    while True:  # like Kafka's Uuid: 16 random bytes, url-safe base64 without padding
        cid = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def nodes(data, libs, prefix, n, jvm_opts, taken, cds):
    """Components for an n-node KRaft cluster, every node broker+controller.
    Names: `prefix` if n == 1, else prefix-1..prefix-n (node.id = the suffix)."""
    names = [prefix] if n == 1 else [f"{prefix}-{i}" for i in range(1, n + 1)]
    ports = [(core.free_port(taken), core.free_port(taken)) for _ in names]  # client, controller
    voters = ",".join(f"{i}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports, 1))
    cid, rf = cluster_id(), min(n, 3)
    isr = max(1, rf - 1)
    java = java_bin()
    cds_opts = [f"-XX:SharedArchiveFile={cds}"] if cds else []
    out = {}
    for i, (name, (port, cport)) in enumerate(zip(names, ports), 1):
        d = os.path.join(data, name)
        os.makedirs(d)
        props = {
            "process.roles": "broker,controller", "node.id": i,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER", "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": os.path.join(d, "data"),
            "num.partitions": 3, "auto.create.topics.enable": "true",
            "default.replication.factor": rf, "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf, "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "group.initial.rebalance.delay.ms": 0,
            # Only the lower *bounds* are relaxed (defaults unchanged), so a test may ask
            # for short session timeouts / heartbeat intervals, e.g. per group (KIP-848).
            "group.min.session.timeout.ms": 1000,
            "group.consumer.min.session.timeout.ms": 1000,
            "group.consumer.min.heartbeat.interval.ms": 500,
        }
        write(os.path.join(d, "server.properties"), "".join(f"{k}={v}\n" for k, v in props.items()))
        write(os.path.join(d, "log4j2.properties"),
              LOG4J2.format(log=os.path.join(d, "server.log"),
                            level=os.environ.get("KH_KAFKA_LOG_LEVEL", "WARN")))
        common = [*cds_opts, "-Dlog4j2.configurationFile=" + os.path.join(d, "log4j2.properties"),
                  "-Djava.io.tmpdir=" + d,  # e.g. lz4/snappy/zstd unpack native libs there
                  "-XX:-UsePerfData",  # no /tmp/hsperfdata_* files
                  "-cp", os.path.join(libs, "*")]
        out[name] = {
            "kind": "kafka", "cluster": prefix, "dir": d, "port": port, "controller_port": cport,
            "node_id": i, "cluster_size": n,
            "logs": [os.path.join(d, "stdout.log"), os.path.join(d, "server.log")],
            "init": [java, "-Xmx256m", *common, "kafka.tools.StorageTool", "format",
                     "-t", cid, "-c", "server.properties"],
            "cmd": [java, *jvm_opts, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                    "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
                    "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true", *common,
                    "kafka.Kafka", "server.properties"],
        }
    return out


def ready(comp, whole_cluster=False):
    """The node serves Metadata and lists itself (registered + unfenced); with
    whole_cluster, it also lists every node of its cluster."""
    brokers = alive_brokers(comp["port"])
    return comp["node_id"] in brokers and (not whole_cluster or len(brokers) >= comp["cluster_size"])


# ---------------------------------------------------------------- wire protocol
# ApiVersions v0 to pick a Metadata version, then Metadata v4..v8 (non-flexible
# versions; Kafka 4.0 removed v0-v3).  Request header v1, response header v0.

class ProtocolError(Exception):
    pass


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProtocolError("connection closed by broker")
        buf += chunk
    return buf


def request(port, api_key, version, body, timeout=3.0):
    corr, client_id = random.randint(1, 2**31 - 1), b"kh-testbed"
    msg = struct.pack(">hhih", api_key, version, corr, len(client_id)) + client_id + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(struct.pack(">i", len(msg)) + msg)
        (size,) = struct.unpack(">i", _recv_exact(s, 4))
        resp = _recv_exact(s, size)
    if struct.unpack_from(">i", resp)[0] != corr:
        raise ProtocolError("correlation id mismatch")
    return resp[4:]


def metadata_version(port):
    resp = request(port, 18, 0, b"")  # ApiVersions v0
    err, n = struct.unpack_from(">hi", resp)
    if err:
        raise ProtocolError(f"ApiVersions error code {err}")
    for i in range(n):
        key, lo, hi = struct.unpack_from(">hhh", resp, 6 + 6 * i)
        if key == 3:
            if lo > 8 or hi < 4:
                raise ProtocolError(f"broker supports only Metadata v{lo}..v{hi}")
            return min(hi, 8)
    raise ProtocolError("broker does not list the Metadata API")


def alive_brokers(port):
    """Ids of the brokers that the broker at 127.0.0.1:port reports as alive."""
    version = metadata_version(port)
    body = struct.pack(">i", 0) + b"\x00"  # no topics, allow_auto_topic_creation=false
    if version >= 8:
        body += b"\x00\x00"  # include cluster/topic authorized operations = false
    resp = request(port, 3, version, body)
    (n,) = struct.unpack_from(">i", resp, 4)  # after throttle_time_ms
    off, ids = 8, set()
    for _ in range(n):
        node_id, host_len = struct.unpack_from(">ih", resp, off)
        off += 6 + host_len + 4  # node_id, host, port
        (rack_len,) = struct.unpack_from(">h", resp, off)
        off += 2 + max(rack_len, 0)
        ids.add(node_id)
    return ids
