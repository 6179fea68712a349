"""Planner: a lifecycle node that plans joint commands in the world model's latent space.

configure: loads the checkpoint, builds the CEM planner and the goal (from
`goal_image` when set). activate: plans every `control_period` on the newest
camera frame, warm-started (receding horizon), and publishes to the gate's
autonomy input. deactivate: stops planning and publishing (the gate then holds
within its autonomy_timeout). With `autostart` (default) the node configures
and activates itself, so it also runs without a lifecycle manager.

Per plan it publishes, all stamped with the camera frame's header:
`~/predicted_latent` (the latent expected for the next frame if the first
action is executed) and `~/observed_latent` (Image 32FC1 1xD, see
jepa_wm.nodes.common), plus `~/debug_image` (current | goal, status bar).
The JointTrajectory command carries the same frame stamp, so the gate can
drop a plan made from a frame that is too old by the time it arrives
(a Float64MultiArray command has no header to carry it).
Goal: `~/goal_image` (Image topic), the `goal_image` file, or
`~/capture_goal` (std_srvs/Trigger: the newest frame becomes the goal). A goal
image that fails to decode is refused with a warning of its own, never
throttled (an operator sent it and waits for the goal to change), and the
goal stays what it was.
Planning starts once the latent history holds the model's `history` frames:
the first history-1 frames after each activate only fill it (an exported ONNX
rollout has a fixed history length, and a history from before a deactivate is
dropped, since its frames were not one control step apart).
Engaging is bumpless: when the gate's state turns to engaged the warm start
is dropped, and an action counts as executed only if the gate was forwarding
autonomy (`"mode": "autonomy"`) when it was sent, so the first command after an
engage is rate-limited from the measured position, not from a plan the gate never
forwarded. A gate state that is not a JSON object is logged (throttled) and
ignored. A frame that fails to
decode (malformed, or anything OpenCV rejects) is logged (throttled) with its
reason and dropped.
"""

from __future__ import annotations

import collections
import json
import math
import time
import traceback
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from jepa_wm.nodes.common import (
    IMAGE_TRANSPORTS,
    LATCHED_QOS,
    RELIABLE_QOS,
    ParameterError,
    check_limits,
    check_model_step,
    check_overrides,
    declare,
    destroy,
    image_msg_from_rgb,
    main_for,
    require,
    resolve_model,
    rgb_from_compressed,
    rgb_from_image,
    seconds,
    subscribe_camera,
    vector_from_msg,
    vector_msg,
)

OUTPUT_TYPES = ("joint_trajectory", "forward_command")


class Planner(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__("planner", **kwargs)
        self.p = self._params()
        self.active = False
        self.model = None
        self.frame = None  # (header, rgb) newest decoded frame
        self.frame_seq = 0
        self.planned_seq = 0
        self.goal_latent = None
        self.goal_rgb = None
        self.measured = None
        self.gate = {}
        self.last_forwarded = False  # the gate was forwarding autonomy when the last plan was sent
        self.bad_frames = 0
        self.goals_rejected = 0
        self.goal_rejection = ""  # why the last goal image was refused; "" once a goal is set
        self.configure_error = ""
        self.autostarting = False  # main_for reports a failed autostart configure: on_configure does not
        self.last_score = None
        self.status = "unconfigured"
        self.plan_ms = collections.deque(maxlen=50)
        self.plans = 0
        self._owned = []  # publishers, subscriptions, service and timers made by configure

    def _params(self) -> dict:
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        p = {
            "model": d("model", None, "path to the jepa_wm checkpoint (.safetensors)"),
            "joint_names": d("joint_names", None, "joints the model's actions command, in its action order", kind="str[]"),
            "joint_lower_limits": d("joint_lower_limits", [], "lower position limits (rad); [] = the checkpoint's action range", kind="float[]"),
            "joint_upper_limits": d("joint_upper_limits", [], "upper position limits (rad); [] = the checkpoint's action range", kind="float[]"),
            "camera_topic": d("camera_topic", "/camera/image_raw", "camera topic (raw Image; image_transport: compressed reads <topic>/compressed)"),
            "image_transport": d("image_transport", "raw", "'raw': Image on camera_topic, 'compressed': CompressedImage on <camera_topic>/compressed"),
            "joint_states_topic": d("joint_states_topic", "/joint_states", "measured joint positions"),
            "goal_topic": d("goal_topic", "~/goal_image", "goal Image topic"),
            "goal_image": d("goal_image", "", "goal image file (png/jpg) loaded at configure; '' = none"),
            "output_type": d("output_type", "joint_trajectory", "'joint_trajectory' or 'forward_command' (Float64MultiArray)"),
            "command_topic": d("command_topic", "/command_gate/autonomy",
                               "gate autonomy input namespace (<ns>/joint_trajectory or <ns>/commands)"),
            "gate_state_topic": d("gate_state_topic", "/command_gate/state", "gate state (JSON String) for bumpless engage"),
            "score_topic": d("score_topic", "/surprise_monitor/score", "monitor score, shown on the debug image"),
            "control_period": d("control_period", 0.1, "seconds between plans (the sim's/camera's control step)"),
            "samples": d("samples", 64, "CEM samples per iteration"),
            "iterations": d("iterations", 8, "CEM iterations from a cold start"),
            "warm_iterations": d("warm_iterations", 3, "CEM iterations when warm-started"),
            "elites": d("elites", 8, "CEM elites"),
            "horizon": d("horizon", 1, "planning horizon (latent steps)"),
            "cost": d("cost", "l2", "goal cost: 'l2' or 'l1'"),
            "joint_weight": d("joint_weight", 3.0, "weight of the checkpoint's joint-probe term in the goal cost (0 = off)"),
            "seed": d("seed", 0, "planner random seed"),
            "torch_threads": d("torch_threads", 1, "torch CPU threads"),
            "backends": d("backends", ["tensorrt", "onnxruntime", "torch"], "inference backends to try in order: tensorrt, onnxruntime, torch", kind="str[]"),
            "precision": d("precision", "float32", "torch backend precision: float32, bfloat16 or auto (bfloat16 where the CPU/GPU has it)"),
            "onnx_dir": d("onnx_dir", "", "exported ONNX directory for onnxruntime/tensorrt ('' = config/backends.yaml's)"),
            "debug_image": d("debug_image", True, "publish ~/debug_image"),
            "autostart": d("autostart", True, "configure and activate at start-up (no lifecycle manager needed)"),
        }
        require(p["image_transport"] in IMAGE_TRANSPORTS, "image_transport",
                f"is {p['image_transport']!r}; set one of {list(IMAGE_TRANSPORTS)}")
        require(p["output_type"] in OUTPUT_TYPES, "output_type", f"is {p['output_type']!r}; set one of {list(OUTPUT_TYPES)}")
        require(len(p["joint_names"]) > 0 and all(p["joint_names"]), "joint_names", "is empty: set the arm's joint names")
        require(p["control_period"] > 0 and math.isfinite(p["control_period"]), "control_period", "must be a positive number of seconds")
        require(p["cost"] in ("l2", "l1"), "cost", f"is {p['cost']!r}; set 'l2' or 'l1'")
        require(p["joint_weight"] >= 0, "joint_weight", f"is {p['joint_weight']}; it must be >= 0")
        known = ("tensorrt", "onnxruntime", "torch")
        require(p["backends"] and set(p["backends"]) <= set(known), "backends", f"is {p['backends']}; choose from {list(known)}")
        require(p["precision"] in ("float32", "bfloat16", "auto"), "precision",
                f"is {p['precision']!r}; set float32, bfloat16 or auto")
        for k in ("samples", "iterations", "warm_iterations", "horizon", "torch_threads"):
            require(p[k] >= 1, k, f"is {p[k]}; it must be >= 1")
        require(2 <= p["elites"] <= p["samples"], "elites", f"is {p['elites']}; it must be in 2..samples ({p['samples']})")
        self.limits = check_limits(p["joint_names"], p["joint_lower_limits"], p["joint_upper_limits"])
        if p["goal_image"]:
            require(Path(p["goal_image"]).is_file(), "goal_image", f"names {p['goal_image']!r}, which is not a file")
        check_overrides(self)
        return p

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state):
        try:
            self._configure()
        except Exception as e:  # rclpy drops the text of an exception a transition raises: keep it for the refusal
            self.configure_error = str(e) if isinstance(e, ParameterError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, ParameterError):  # not a setting to fix: a bug report needs the traceback
                self.get_logger().error(traceback.format_exc())
            if not self.autostarting:  # a lifecycle manager's configure: nobody else says why it failed
                self.get_logger().error(f"configure failed: {e}")
            return TransitionCallbackReturn.FAILURE
        self.status = "configured"
        return TransitionCallbackReturn.SUCCESS

    def _configure(self):
        import torch

        from jepa_wm.core.checkpoint import CheckpointError, load_checkpoint, require_position_actions
        from jepa_wm.core.config import PlannerConfig
        from jepa_wm.core.planner import CEMPlanner, JointMetric, normalised_bounds

        p = self.p
        torch.set_num_threads(p["torch_threads"])
        try:
            model, meta = load_checkpoint(resolve_model(p["model"]))
            require_position_actions(meta, p["model"])
        except CheckpointError as e:
            raise ParameterError(f"parameter 'model': {e}") from None
        cfg = model.cfg
        names = list(p["joint_names"])
        ck_names = list(meta.get("joint_names") or [])
        require(not ck_names or ck_names == names, "joint_names",
                f"is {names} but checkpoint {p['model']} was trained on {ck_names}: set them in that order")
        require(cfg.action_dim == len(names), "joint_names",
                f"has {len(names)} joints but the checkpoint's actions have {cfg.action_dim} dimensions")
        require(cfg.frameskip == 1, "model",
                f"checkpoint {p['model']} has frameskip {cfg.frameskip}; this node plans one control step per latent step (frameskip 1)")
        check_model_step("control_period", p["control_period"], meta, p["model"])
        lo, hi = self.limits
        if lo is None:
            lo = np.asarray(meta.get("action_low") or [-math.pi] * cfg.action_dim, dtype=float)
            hi = np.asarray(meta.get("action_high") or [math.pi] * cfg.action_dim, dtype=float)
        self.lo, self.hi = lo, hi
        pcfg = PlannerConfig(samples=p["samples"], iterations=p["iterations"], elites=p["elites"],
                             horizon=p["horizon"], cost=p["cost"], warm_iterations=p["warm_iterations"],
                             joint_weight=p["joint_weight"])
        metric = JointMetric.from_dict(meta["joint_metric"]) if "joint_metric" in meta else None
        if metric is None and p["joint_weight"] > 0:
            self.get_logger().warning(f"checkpoint {p['model']} has no joint probe (jepa-wm finetune adds one): "
                                      "the goal cost is the latent distance alone")
        low, high, max_step = normalised_bounds(model, lo, hi, meta.get("action_max_step"))
        self.model, self.torch = model, torch
        from jepa_wm.backends import BackendUnavailable, load_backend_config, select_backend
        from jepa_wm.core.config import ConfigError

        try:
            bcfg = load_backend_config()
            bcfg["torch"].update(precision=p["precision"], split_batch=1)
            # ONNX Runtime's default takes every core: the node's CPU budget is torch_threads for every backend.
            bcfg["onnxruntime"]["intra_op_num_threads"] = p["torch_threads"]
            onnx_dir = resolve_model(p["onnx_dir"] or bcfg["onnx_dir"])  # relative: here, else the share dir
            # An export from another checkpoint (a fine-tune's parent), for another horizon, or damaged is skipped
            # with the reason, so selection falls back to the next backend instead of planning with it.
            sel = select_backend(p["backends"], model=model, onnx_dir=onnx_dir, config=bcfg,
                                 logger=self.get_logger(), checkpoint=resolve_model(p["model"]), horizon=p["horizon"],
                                 samples=p["samples"])
        except (BackendUnavailable, ConfigError) as e:
            raise ParameterError(f"parameter 'backends': {e}") from None
        self.backend = sel.name
        self.encode = lambda rgb: sel.encoder.encode(np.array(rgb, dtype=np.uint8)[None])[0].float().numpy()
        self.cem = CEMPlanner(sel.predictor, pcfg, low, high, seed=p["seed"], max_step=max_step, metric=metric)
        self.history = collections.deque(maxlen=cfg.history)  # (latent tensor, executed action tensor or None)
        if p["goal_image"]:
            self._set_goal(self._read_goal_file(p["goal_image"]), f"file {p['goal_image']}")

        own = self._owned.append  # what configure creates, cleanup destroys
        self.cmd_pub = (self.create_publisher(JointTrajectory, f"{p['command_topic']}/joint_trajectory", RELIABLE_QOS)
                        if p["output_type"] == "joint_trajectory" else
                        self.create_publisher(Float64MultiArray, f"{p['command_topic']}/commands", RELIABLE_QOS))
        self.pred_pub = self.create_publisher(Image, "~/predicted_latent", RELIABLE_QOS)
        self.obs_pub = self.create_publisher(Image, "~/observed_latent", RELIABLE_QOS)
        self.debug_pub = self.create_publisher(Image, "~/debug_image", RELIABLE_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_QOS)
        for pub in (self.cmd_pub, self.pred_pub, self.obs_pub, self.debug_pub, self.diag_pub):
            own(pub)
        own(subscribe_camera(self, p["camera_topic"], p["image_transport"], self._on_image, self._on_compressed))
        self.goal_sub = self.create_subscription(Image, p["goal_topic"], self._on_goal_image, LATCHED_QOS)
        own(self.goal_sub)
        own(self.create_subscription(JointState, p["joint_states_topic"], self._on_joint_states, RELIABLE_QOS))
        own(self.create_subscription(String, p["gate_state_topic"], self._on_gate_state, LATCHED_QOS))
        own(self.create_subscription(Image, p["score_topic"], self._on_score, RELIABLE_QOS))
        own(self.create_service(Trigger, "~/capture_goal", self._on_capture_goal))
        own(self.create_timer(p["control_period"], self._step))
        own(self.create_timer(1.0, self._diagnostics))
        self.get_logger().info(
            f"configured: {p['model']} (latent {cfg.latent_dim}, history {cfg.history}), joints {names}, "
            f"limits {np.round(lo, 3).tolist()}..{np.round(hi, 3).tolist()}, output {p['output_type']} -> {p['command_topic']}"
        )

    def on_activate(self, state):
        self.active, self.status = True, "active"
        self.cem.reset()
        # Latents from before a deactivate are not one control step before the next frame: refill.
        self.history.clear()
        self.last_forwarded = False
        self.get_logger().info("active: planning" + ("" if self.goal_latent is not None else " once a goal is set"))
        return super().on_activate(state)

    def on_deactivate(self, state):
        self.active, self.status = False, "inactive"
        self.get_logger().info("inactive: not planning")
        return super().on_deactivate(state)

    def on_cleanup(self, state):
        # Configuring again must not stack a second control timer and duplicate topics on the first, nor plan
        # towards a goal latent or from a history encoded before.
        for entity in self._owned:
            destroy(self, entity)
        self._owned.clear()
        self.model = self.frame = self.goal_latent = self.goal_rgb = self.measured = None
        self.goal_rejection = ""
        self.status = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ inputs

    def _decode(self, msg, fn):
        try:
            return fn(msg)
        except Exception as e:  # not only ImageFormatError: one frame OpenCV chokes on must not kill the planner
            self.bad_frames += 1
            why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            self.get_logger().warning(f"dropping frame: {why}", throttle_duration_sec=2.0)
            return None

    def _on_image(self, msg):
        rgb = self._decode(msg, rgb_from_image)
        if rgb is not None:
            self.frame, self.frame_seq = (msg.header, rgb), self.frame_seq + 1

    def _on_compressed(self, msg):
        rgb = self._decode(msg, rgb_from_compressed)
        if rgb is not None:
            self.frame, self.frame_seq = (msg.header, rgb), self.frame_seq + 1

    def _on_goal_image(self, msg):
        try:
            rgb = rgb_from_image(msg)
        except Exception as e:  # as for camera frames: whatever the decoder raises must not kill the planner
            self.goals_rejected += 1
            self.goal_rejection = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            # Not throttled, unlike camera frames: each goal image is an operator's request.
            self.get_logger().warning(f"goal image on {self.goal_sub.topic_name} rejected: {self.goal_rejection}; "
                                      f"goal unchanged")
            return
        self._set_goal(rgb, f"topic {self.goal_sub.topic_name}")

    def _on_capture_goal(self, req, res):
        if self.frame is None:
            res.success, res.message = False, f"no camera frame received on {self.p['camera_topic']} yet"
            return res
        self._set_goal(self.frame[1].copy(), "captured camera frame")
        res.success, res.message = True, "goal set to the current camera frame"
        return res

    def _read_goal_file(self, path):
        from PIL import Image as PILImage

        try:
            with PILImage.open(path) as im:
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
        except OSError as e:
            raise ParameterError(f"parameter 'goal_image': cannot read {path}: {e}") from None

    def _set_goal(self, rgb, source: str):
        self.goal_rgb = rgb
        self.goal_latent = self.torch.as_tensor(self.encode(rgb))
        self.goal_rejection = ""
        self.cem.reset()
        self.get_logger().info(f"goal set from {source}")

    def _on_joint_states(self, msg):
        try:
            self.measured = np.asarray([msg.position[list(msg.name).index(j)] for j in self.p["joint_names"]], dtype=float)
        except (ValueError, IndexError):
            self.get_logger().warning(f"joint_states {list(msg.name)} lack some of {self.p['joint_names']}", throttle_duration_sec=5.0)

    def _on_gate_state(self, msg):
        try:
            state = json.loads(msg.data)
        except ValueError:
            state = None
        if not isinstance(state, dict):  # "null", "[1, 2]", not JSON: someone else's message, not the gate's
            self.get_logger().warning(f"ignoring a gate state on {self.p['gate_state_topic']} that is no JSON object: "
                                      f"{msg.data[:80]!r}", throttle_duration_sec=5.0)
            return
        if state.get("engaged") and not self.gate.get("engaged"):
            self.cem.reset()  # bumpless: restart from the measured state, not an old plan
            self.last_forwarded = False
            self.get_logger().info("gate engaged autonomy: planning from the measured state")
        self.gate = state

    def _on_score(self, msg):
        try:
            self.last_score = vector_from_msg(msg)
        except ValueError:
            pass

    # ------------------------------------------------------------------ control step

    def _step(self):
        try:
            self._plan_once()
        except Exception as e:  # one failed step must not kill the node: the gate holds meanwhile
            self.status = f"planning failed: {type(e).__name__}: {e}"
            self.get_logger().error(self.status, throttle_duration_sec=2.0)

    def _plan_once(self):
        if not self.active or self.frame is None or self.frame_seq == self.planned_seq:
            return
        if self.goal_latent is None:
            self.status = "waiting for a goal"
            return
        self.planned_seq = self.frame_seq
        header, rgb = self.frame
        t0 = time.perf_counter()
        torch = self.torch
        z = torch.as_tensor(self.encode(rgb))
        # The action executed since the previous frame: our command while the gate forwards it,
        # otherwise the hold at (about) the measured position.
        if self.history:
            self.history[-1] = (self.history[-1][0], self._executed())
        self.history.append((z, None))
        if len(self.history) < self.history.maxlen:
            # The ONNX/TensorRT rollout takes exactly `history` latents: plan only from a full history.
            self.status = f"filling the latent history ({len(self.history)}/{self.history.maxlen} frames)"
            return
        latents = torch.stack([h[0] for h in self.history])
        acts = [h[1] for h in list(self.history)[:-1]]
        hist_actions = torch.stack(acts) if acts else torch.zeros(0, self.model.cfg.action_block)
        current = None  # before any executed action, the rate limit starts from the measured joints
        if not acts and self.measured is not None:
            current = self.model.normalize_actions(torch.as_tensor(self.measured, dtype=torch.float32))
        result = self.cem.plan(latents, hist_actions, self.goal_latent, current)
        self.last_action = result.actions[0]
        # Executed only if the gate forwards it: a plan made while it holds (not engaged yet, or engaged
        # but not yet in autonomy) must not anchor the next plan's rate limit.
        self.last_forwarded = self.gate.get("mode") == "autonomy" and not self.gate.get("stopped")
        targets = np.clip(self.model.denormalize_actions(result.actions).numpy().astype(float), self.lo, self.hi)
        self.last_target = targets[0]
        self.plan_ms.append(1000 * (time.perf_counter() - t0))
        self.plans += 1
        self._publish_command(targets, header)
        self.pred_pub.publish(vector_msg(result.predicted_latents[0].numpy(), header=header))
        self.obs_pub.publish(vector_msg(z.numpy(), header=header))
        self.status = f"planning: cost {result.cost:.3g}, {self.plan_ms[-1]:.0f} ms"
        if self.p["debug_image"]:
            self._publish_debug(header, rgb, result.cost)

    def _executed(self):
        torch = self.torch
        if self.last_forwarded and not self.gate.get("stopped") and hasattr(self, "last_action"):
            return self.last_action
        if self.measured is not None:
            return self.model.normalize_actions(torch.as_tensor(self.measured, dtype=torch.float32))
        return self.last_action if hasattr(self, "last_action") else torch.zeros(self.model.cfg.action_block)

    def _publish_command(self, targets, header):
        names = list(self.p["joint_names"])
        if self.p["output_type"] == "forward_command":
            self.cmd_pub.publish(Float64MultiArray(data=targets[0].tolist()))
            return
        msg = JointTrajectory(joint_names=names)
        # The frame's stamp, not now: the gate drops plans older than its autonomy_max_age, and sends
        # what it forwards to the controller with a zero stamp (start on receipt).
        msg.header.stamp = header.stamp
        for i, q in enumerate(targets):
            msg.points.append(JointTrajectoryPoint(positions=q.tolist(),
                                                   time_from_start=seconds((i + 1) * self.p["control_period"]).to_msg()))
        self.cmd_pub.publish(msg)

    def _publish_debug(self, header, rgb, cost):
        import cv2

        from jepa_wm.data.images import resize_rgb

        h = max(rgb.shape[0], 96)
        cur, goal = resize_rgb(rgb, h), resize_rgb(self.goal_rgb, h)
        bar = np.zeros((24, 2 * h, 3), np.uint8)
        score = "-" if self.last_score is None or not len(self.last_score) else f"{self.last_score[0]:.2f}"
        stopped = bool(self.gate.get("stopped"))
        bar[:] = (120, 0, 0) if stopped else (0, 70, 0)
        text = f"{self.gate.get('mode', '?')} cost {cost:.2f} surprise {score}"
        cv2.putText(bar, text, (3, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        img = np.concatenate([np.concatenate([cur, goal], axis=1), bar], axis=0)
        self.debug_pub.publish(image_msg_from_rgb(img, stamp=header.stamp, frame_id=header.frame_id))

    def _diagnostics(self):
        st = DiagnosticStatus(name="jepa_wm: planner", hardware_id="jepa_wm", message=self.status)
        if self.status.startswith("planning failed"):
            st.level = DiagnosticStatus.ERROR
        elif self.status.startswith("planning") and not self.goal_rejection:
            st.level = DiagnosticStatus.OK
        else:  # not planning, or planning towards a goal the operator tried to replace
            st.level = DiagnosticStatus.WARN
        if self.bad_frames:
            st.message += f"; {self.bad_frames} malformed frames dropped"
        if self.goal_rejection:
            st.message += f"; goal image rejected: {self.goal_rejection}; goal unchanged"
        ms = np.asarray(self.plan_ms) if self.plan_ms else np.zeros(1)
        st.values = [KeyValue(key=k, value=str(v)) for k, v in (
            ("plans", self.plans), ("plan_ms_mean", f"{ms.mean():.1f}"), ("plan_ms_max", f"{ms.max():.1f}"),
            ("malformed_frames", self.bad_frames), ("backend", getattr(self, "backend", "-")), ("goal_set", self.goal_latent is not None),
            ("goal_images_rejected", self.goals_rejected),
        )]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)


def _autostart(node: Planner):
    """Configure and activate; a failed configure refuses to start (main_for logs its reason, once)."""
    if not node.p["autostart"]:
        return
    from lifecycle_msgs.msg import State

    node.autostarting = True
    node.trigger_configure()
    node.autostarting = False
    if node._state_machine.current_state[0] != State.PRIMARY_STATE_INACTIVE:
        raise ParameterError(node.configure_error or "configure failed")
    node.trigger_activate()


def main(args=None) -> int:
    return main_for(Planner, args, after_create=_autostart)
