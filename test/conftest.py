"""ROS test fixtures: real DDS, real node processes, one ROS domain per test.

* `ros_domain`: a ROS_DOMAIN_ID no other test of this run (or, very likely, of
  a concurrent run) uses, with discovery limited to localhost.
* `ros`: an rclpy context + node in that domain, with `spin_until(cond)`, and
  `reset_monitor()` for the stop a surprise monitor latches at start-up.
* `start_node(executable, params=..., overrides=...)`: starts scripts/<executable>
  as a separate process with `--ros-args --params-file config/...yaml -p k:=v`,
  stopped (SIGINT, then SIGKILL) at teardown; its output is kept for asserts.
* `tiny_checkpoint`: a small random-weight jepa_wm checkpoint with surprise
  calibration, for the nodes that need a model.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Headless rendering for every test: MuJoCo picks its GL backend when it is first imported,
# which a test module's importorskip("mujoco") may do before jepa_wm.sim.arm sets this.
os.environ.setdefault("MUJOCO_GL", "egl")

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
CONFIG = ROOT / "config"
_counter = itertools.count()


def _domain_id() -> int:
    # 120..229: inside the range DDS maps to valid ports; spread by pid so parallel runs rarely collide.
    return 120 + (os.getpid() * 7 + next(_counter)) % 110


def ros_env(domain: int) -> dict:
    env = dict(os.environ)
    prefixes = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    if sys.prefix not in prefixes:
        prefixes.insert(0, sys.prefix)
    env.update(
        ROS_DOMAIN_ID=str(domain),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        AMENT_PREFIX_PATH=os.pathsep.join(prefixes),
        PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]),
        PYTHONUNBUFFERED="1",
        RCUTILS_COLORIZED_OUTPUT="0",
        OMP_NUM_THREADS="1",
    )
    return env


@pytest.fixture
def ros_domain(monkeypatch):
    domain = _domain_id()
    for k, v in ros_env(domain).items():
        if os.environ.get(k) != v:
            monkeypatch.setenv(k, v)
    return domain


class RosHarness:
    """An rclpy node in the test's domain, spun by hand."""

    def __init__(self, domain: int):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(f"test_driver_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_for(self, seconds: float):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(0.02, max(0.0, end - time.monotonic())))

    def spin_until(self, cond, timeout: float, step: float = 0.02) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            self.executor.spin_once(timeout_sec=step)
        return bool(cond())

    def call(self, srv_type, name: str, request, timeout: float = 10.0):
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
        future = client.call_async(request)
        assert self.spin_until(future.done, timeout), f"service {name} did not answer"
        self.node.destroy_client(client)
        return future.result()

    def reset_monitor(self, timeout: float = 20.0, spin=None):
        """Clear the surprise monitor's stop, which it latches at start-up: ~/reset until it succeeds (it is
        refused until a camera frame has reached the monitor). `spin(seconds)` runs between tries, for a test
        that must keep publishing frames meanwhile; by default the executor is spun."""
        from std_srvs.srv import Trigger

        spin = spin or self.spin_for
        end = time.monotonic() + timeout
        while True:
            res = self.call(Trigger, "/surprise_monitor/reset", Trigger.Request(), timeout=max(1.0, end - time.monotonic()))
            if res.success or time.monotonic() > end:
                return res
            spin(0.2)

    def collect(self, msg_type, topic: str, qos=10):
        """Subscribe and append (receipt monotonic time, msg) to the returned list."""
        got = []
        self.node.create_subscription(msg_type, topic, lambda m: got.append((time.monotonic(), m)), qos)
        return got

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


@pytest.fixture
def ros(ros_domain):
    pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheels or a ROS 2 install) is needed for node tests")
    h = RosHarness(ros_domain)
    yield h
    h.close()


class NodeProcess:
    def __init__(self, executable: str, args: list, env: dict, log: Path):
        self.executable, self.log_path = executable, log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, str(SCRIPTS / executable), *args], env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=str(ROOT))

    @property
    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_output(self, text: str, timeout: float = 30.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.output:
                return True
            if self.proc.poll() is not None:
                return text in self.output
            time.sleep(0.05)
        return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


def _ros_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_ros_value(x) if not isinstance(x, str) else x for x in v) + "]"
    return str(v)


@pytest.fixture
def start_node(ros_domain, tmp_path):
    procs = []

    def start(executable: str, params: str | None = None, overrides: dict | None = None, extra=()):
        args = ["--ros-args"]
        if params:
            args += ["--params-file", str(CONFIG / params)]
        for k, v in (overrides or {}).items():
            args += ["-p", f"{k}:={_ros_value(v)}"]
        args += list(extra)
        p = NodeProcess(executable, args, ros_env(ros_domain), tmp_path / f"{executable}_{len(procs)}.log")
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random-weight checkpoint for three joints with surprise calibration."""
    torch = pytest.importorskip("torch")
    from jepa_wm.core.checkpoint import save_checkpoint
    from jepa_wm.core.config import ModelConfig
    from jepa_wm.core.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny")).eval()
    meta = {
        "joint_names": ["base_yaw", "shoulder", "elbow"],
        "action_low": [-1.5, -1.5, -1.5],
        "action_high": [1.5, 1.5, 1.5],
        "step_s": 0.1,
        "surprise": {"scale": 1e-3, "threshold": 5.0, "quantile": 0.999, "consecutive": 2,
                     "false_trip_rate": 0.0, "instant": 1000.0},
    }
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", model, meta)
