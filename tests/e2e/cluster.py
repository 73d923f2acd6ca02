"""A local Switchyard cluster for the end-to-end tests: a coordinator and N workers on 127.0.0.1.

Every port is 0 (the kernel picks); the bound ports come from each process's --port_file JSON,
or from its "listening: grpc=HOST:PORT control=... http=..." log line. Each server runs in its own
session (process group), and stop() ends them all, so a failing test leaves no orphans.
"""

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

_LISTENING = re.compile(r"listening:(.*)")
_ENDPOINT = re.compile(r"(\w+)=(\S+)")


class ClusterError(Exception):
    pass


def _port(value):
    if isinstance(value, int):
        return value
    return int(str(value).rsplit(":", 1)[-1])


def read_ports(port_file, log_file):
    """{'grpc': port, 'control': port, 'http': port} of one process, or None if not listening yet."""
    ports = {}
    try:
        with open(port_file, encoding="utf-8") as f:
            data = json.load(f)
        for key, value in data.items():
            name = key[:-5] if key.endswith("_port") else key
            try:
                ports[name] = _port(value)
            except ValueError:
                pass
    except (OSError, ValueError):
        pass
    if "http" not in ports:
        try:
            with open(log_file, encoding="utf-8", errors="replace") as f:
                for line in f:
                    m = _LISTENING.search(line)
                    if m:
                        for name, value in _ENDPOINT.findall(m.group(1)):
                            ports.setdefault(name, _port(value))
        except OSError:
            pass
    return ports if "http" in ports else None


def http_get(url, timeout=5):
    """(status, body); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError):
        return 0, ""


class Process:
    def __init__(self, name, argv, log_dir):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.port_file = os.path.join(log_dir, f"{name}.ports")
        if os.path.exists(self.port_file):
            os.remove(self.port_file)
        self.argv = argv + ["--port_file", self.port_file]
        self.log = open(self.log_path, "w", encoding="utf-8")
        self.popen = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self.ports = None

    def poll_ports(self):
        if self.ports is None:
            self.ports = read_ports(self.port_file, self.log_path)
        return self.ports

    def alive(self):
        return self.popen.poll() is None

    def signal(self, sig):
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout):
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_s=10):
        if self.alive():
            self.signal(signal.SIGTERM)
            if self.wait(grace_s) is None:
                self.signal(signal.SIGKILL)
                self.wait(10)
        self.log.close()

    def tail(self, lines=40):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


class Cluster:
    """Coordinator + num_workers workers. Use as a context manager."""

    def __init__(self, bin_dir, model_dir, log_dir, num_workers, coordinator_flags=(),
                 worker_flags=(), start_timeout_s=120):
        self.bin_dir = bin_dir
        self.model_dir = model_dir
        self.log_dir = log_dir
        self.num_workers = num_workers
        self.coordinator_flags = list(coordinator_flags)
        self.worker_flags = list(worker_flags)
        self.start_timeout_s = start_timeout_s
        self.coordinator = None
        self.workers = []
        os.makedirs(log_dir, exist_ok=True)

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def address(self):
        return f"127.0.0.1:{self.coordinator.ports['grpc']}"

    @property
    def http_urls(self):
        """[coordinator, worker 0, ...] base URLs."""
        procs = [self.coordinator] + self.workers
        return [f"http://127.0.0.1:{p.ports['http']}" for p in procs]

    def _fail(self, message):
        logs = "\n".join(f"---- {p.name} ({p.log_path})\n{p.tail()}"
                         for p in [self.coordinator] + self.workers if p)
        raise ClusterError(f"{message}\n{logs}")

    def _wait_ports(self, proc, deadline):
        while proc.poll_ports() is None:
            if not proc.alive():
                self._fail(f"{proc.name} exited ({proc.popen.returncode}) before listening")
            if time.monotonic() > deadline:
                self._fail(f"{proc.name} did not report its ports")
            time.sleep(0.1)

    def start(self):
        deadline = time.monotonic() + self.start_timeout_s
        self.coordinator = Process("coordinator", [
            os.path.join(self.bin_dir, "switchyard-coordinator"), "--model", self.model_dir,
            "--num_workers", str(self.num_workers), "--grpc_port", "0", "--control_port", "0",
            "--http_port", "0"] + self.coordinator_flags, self.log_dir)
        self._wait_ports(self.coordinator, deadline)
        control = self.coordinator.ports.get("control")
        if control is None:
            self._fail("the coordinator did not report its control port")
        for rank in range(self.num_workers):
            self.workers.append(Process(f"worker{rank}", [
                os.path.join(self.bin_dir, "switchyard-worker"), "--model", self.model_dir,
                "--coordinator_address", f"127.0.0.1:{control}", "--advertise_host", "127.0.0.1",
                "--control_port", "0", "--http_port", "0", "--backend", "cpu"]
                + self.worker_flags, self.log_dir))
        for w in self.workers:
            self._wait_ports(w, deadline)
        self.wait_healthy(deadline)

    def wait_healthy(self, deadline):
        urls = self.http_urls
        while True:
            codes = [http_get(u + "/health", timeout=2)[0] for u in urls]
            if all(c == 200 for c in codes):
                return
            for p in [self.coordinator] + self.workers:
                if not p.alive():
                    self._fail(f"{p.name} exited ({p.popen.returncode}) while the cluster loaded")
            if time.monotonic() > deadline:
                self._fail(f"not healthy within {self.start_timeout_s}s: /health codes {codes}")
            time.sleep(0.25)

    def stop(self, grace_s=15):
        """SIGTERM to every process (coordinator first: it drains), SIGKILL after the grace."""
        procs = ([self.coordinator] if self.coordinator else []) + self.workers
        for p in procs:
            p.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in procs:
            if p.wait(max(0.1, deadline - time.monotonic())) is None:
                p.signal(signal.SIGKILL)
                p.wait(10)
            p.log.close()
