"""Surprise monitor: an independent process that latches a protective stop.

It does not trust the planner: it loads its own copy of the checkpoint's
encoder and encodes the camera frames itself, so a planner that crashes,
hangs or publishes garbage cannot hide a surprise. The planner only supplies
its prediction of the next frame's latent, stamped with the stamp of the frame
it planned from; the monitor scores that prediction against its own latent of
the frame `prediction_dt` seconds later (within `match_tolerance`).

Scores are normalised by the checkpoint's calibration (`meta["surprise"]`:
scale, threshold, consecutive, and the whitening that makes the score a
Mahalanobis distance), or the parameters when set; a
SurpriseDetector trips after `consecutive` frames over the threshold. A trip,
a camera silent for `camera_timeout`, a camera that repeats its frame while
the joints move (`frozen_frame_motion`, core.checks.FrozenFrameCheck), or
`prediction_timeout` seconds of the gate forwarding autonomy without a single
prediction scored latch a protective stop: True on the stop topic
(std_msgs/Bool, reliable, transient local). Only `~/reset` (std_srvs/Trigger)
clears it, and only when the camera is live again. The monitor also starts
latched, like a safety controller after power-up: a restarted monitor knows
nothing of the stop its predecessor latched, nor whether its cause is gone, so
only an operator's reset lets the arm move again. A fault found before that
reset replaces the start-up reason, so that the operator sees it. The stop
state is also republished on every 20 Hz check, so the stop topic is the
monitor's heartbeat: the gate holds when it goes quiet.

With `score_only_in_autonomy`, scoring follows the gate's `engaged` flag, not
its mode: an engaged gate holds whenever the planner is late and forwards again
on its next command, and restarting the scoring window on each of those would
never score a slow planner. Predictions from frames taken before the gate
engaged are not scored. A backward clock jump (sim reset, NTP step) drops what
is keyed by frame stamps and restarts the camera watchdog from the jump; a last-seen
time in the future of the clock counts as stale.
"""

from __future__ import annotations

import collections
import json
import math

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from jepa_wm.nodes.common import (
    DEFAULT_STOP_TOPIC,
    IMAGE_TRANSPORTS,
    LATCHED_QOS,
    RELIABLE_QOS,
    Encoder,
    ParameterError,
    check_model_step,
    check_overrides,
    declare,
    main_for,
    require,
    resolve_model,
    rgb_from_compressed,
    rgb_from_image,
    stamp_msg,
    stamp_ns,
    subscribe_camera,
    vector_from_msg,
    vector_msg,
)


# The stop latched at start-up: not a fault, the operator's cue to check the scene and reset.
STARTED = "monitor started: call ~/reset once the camera is live"


class SurpriseMonitor(Node):
    def __init__(self, **kwargs):
        super().__init__("surprise_monitor", **kwargs)
        p = self._params()
        self._load(p)
        self.stopped = True  # fail-safe start: a false here would clear a stop a previous monitor latched
        self.stop_reason = STARTED
        self.trips = 0
        self.observed = collections.OrderedDict()  # frame stamp ns -> latent
        self.predictions = collections.OrderedDict()  # source frame stamp ns -> predicted latent
        self.start_ns = self._now()
        self.last_frame_ns: int | None = None  # receipt time
        self.engaged_since_ns: int | None = None  # scoring window (gate engaged) open since
        self.engaged_after_frame = -1  # stamp of the newest frame when the window opened
        self.gate_mode = ""  # the gate's last reported mode
        self.unscored_ns = 0  # time the gate forwarded autonomy since the last scored prediction
        self.last_tick_ns: int | None = None
        self.last_score = float("nan")
        self.scored = 0
        self.bad_frames = 0
        self.spacing = ""  # why the camera's frame rate leaves predictions unmatched ("" = it does not)
        self.joints: dict = {}  # name -> latest measured position

        self.stop_pub = self.create_publisher(Bool, p["stop_topic"], LATCHED_QOS)
        self.score_pub = self.create_publisher(Image, "~/score", RELIABLE_QOS)
        self.observed_pub = self.create_publisher(Image, "~/observed_latent", RELIABLE_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_QOS)
        subscribe_camera(self, p["camera_topic"], p["image_transport"], self._on_image, self._on_compressed)
        self.create_subscription(Image, p["predicted_topic"], self._on_prediction, RELIABLE_QOS)
        self.create_subscription(String, p["gate_state_topic"], self._on_gate_state, LATCHED_QOS)
        if self.frozen is not None:
            self.create_subscription(JointState, p["joint_states_topic"], self._on_joint_states, RELIABLE_QOS)
        self.create_service(Trigger, "~/reset", self._on_reset)
        # Any backward jump: sim time restarting at 0 (a restarted simulator), or the clock switching source.
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-1), on_clock_change=True),
            post_callback=self._on_time_jump)
        self.create_timer(0.05, self._check_stale)
        self.create_timer(1.0, self._diagnostics)
        self.stop_pub.publish(Bool(data=True))
        self.get_logger().info(
            f"monitor up: camera '{p['camera_topic']}' ({p['image_transport']}), predictions '{p['predicted_topic']}', "
            f"threshold {self.threshold:.3g} x{self.consecutive} frames (instant {self.instant:g}x), scale {self.scale:.3g}, "
            f"{'whitened' if self.whitening is not None else 'plain squared'} error, frozen-frame check "
            + (f"at {p['frozen_frame_motion']:g} rad of '{p['joint_states_topic']}'" if self.frozen else "off")
            + f", stop latch '{p['stop_topic']}'"
        )
        self.get_logger().warning(f"PROTECTIVE STOP latched: {STARTED}")

    # ------------------------------------------------------------------ set-up

    def _params(self) -> dict:
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        p = {
            "model": d("model", None, "path to the jepa_wm checkpoint (.safetensors) whose encoder the monitor runs"),
            "camera_topic": d("camera_topic", "/camera/image_raw", "camera topic (raw Image; image_transport: compressed reads <topic>/compressed)"),
            "image_transport": d("image_transport", "raw", "'raw': Image on camera_topic, 'compressed': CompressedImage on <camera_topic>/compressed"),
            "predicted_topic": d("predicted_topic", "/planner/predicted_latent",
                                 "planner's predicted next latent (Image 32FC1 1xD, stamped with its source frame)"),
            "gate_state_topic": d("gate_state_topic", "/command_gate/state",
                                  "gate state (JSON String): scoring while it is engaged, scored predictions required while it forwards autonomy"),
            "stop_topic": d("stop_topic", DEFAULT_STOP_TOPIC,
                            "latched protective stop output (Bool, transient local; true from start-up until ~/reset), "
                            "republished at 20 Hz as the monitor's heartbeat"),
            "threshold": d("threshold", 0.0, "surprise threshold on the normalised score; 0 = checkpoint calibration"),
            "consecutive": d("consecutive", 0, "frames over threshold in a row that trip the stop; 0 = checkpoint calibration"),
            "scale": d("scale", 0.0, "nominal prediction error the score is divided by; 0 = checkpoint calibration"),
            "instant": d("instant", 0.0, "one score above instant x threshold trips at once; 0 = checkpoint calibration (or 3)"),
            "score_only_in_autonomy": d("score_only_in_autonomy", True,
                                        "score only while the gate is engaged (teleop moves are not what the planner predicted)"),
            "prediction_dt": d("prediction_dt", 0.1, "seconds between a prediction's source frame and the frame it predicts"),
            "match_tolerance": d("match_tolerance", 0.03, "seconds a frame stamp may differ from the predicted frame time"),
            "camera_timeout": d("camera_timeout", 1.0, "seconds without a camera frame that latch a stop"),
            "startup_grace": d("startup_grace", 10.0, "seconds after start before a missing camera is the stop's reason"),
            "prediction_timeout": d("prediction_timeout", 1.0,
                                    "seconds of the gate forwarding autonomy without a scored prediction that latch a stop; 0 disables"),
            "joint_states_topic": d("joint_states_topic", "/joint_states", "measured joint positions (JointState), for the frozen-frame check"),
            "frozen_frame_motion": d("frozen_frame_motion", 0.02,
                                     "rad the joints may move while the camera repeats a frame before a stop latches; 0 disables"),
            "torch_threads": d("torch_threads", 1, "torch CPU threads for the encoder"),
        }
        for k in ("prediction_dt", "match_tolerance", "camera_timeout", "startup_grace"):
            require(p[k] > 0 and math.isfinite(p[k]), k, f"is {p[k]}; it must be a positive number of seconds")
        require(p["image_transport"] in IMAGE_TRANSPORTS, "image_transport",
                f"is {p['image_transport']!r}; set one of {list(IMAGE_TRANSPORTS)}")
        require(p["prediction_timeout"] >= 0, "prediction_timeout", "must be >= 0 (0 disables the check)")
        require(p["frozen_frame_motion"] >= 0 and math.isfinite(p["frozen_frame_motion"]), "frozen_frame_motion",
                f"is {p['frozen_frame_motion']}; it must be >= 0 rad (0 disables the check)")
        for k in ("threshold", "scale", "consecutive", "instant"):
            require(p[k] >= 0, k, f"is {p[k]}; it must be >= 0 (0 = use the checkpoint's calibration)")
        # An infinite threshold or scale would never trip, an infinite timeout never fire: a stop silently off.
        for k in ("threshold", "scale", "instant", "prediction_timeout"):
            require(math.isfinite(p[k]), k, f"is {p[k]}; it must be a finite number")
        require(p["torch_threads"] >= 1, "torch_threads", "must be >= 1")
        check_overrides(self)  # before loading the model: a misspelt name is refused at once
        self.p = p
        return p

    def _load(self, p):
        import torch

        from jepa_wm.core.checkpoint import CheckpointError, load_checkpoint

        torch.set_num_threads(p["torch_threads"])
        try:
            model, meta = load_checkpoint(resolve_model(p["model"]))
        except CheckpointError as e:
            raise ParameterError(f"parameter 'model': {e}") from None
        check_model_step("prediction_dt", p["prediction_dt"], meta, p["model"])
        self.encode = Encoder(model)
        cal = (meta or {}).get("surprise") or {}
        self.scale = p["scale"] or float(cal.get("scale", 0.0))
        self.threshold = p["threshold"] or float(cal.get("threshold", 0.0))
        self.consecutive = p["consecutive"] or int(cal.get("consecutive", 2))
        self.instant = p["instant"] or float(cal.get("instant", 3.0))
        # The score's metric comes with the checkpoint's calibration.
        self.whitening = None if cal.get("whitening") is None else np.asarray(cal["whitening"], np.float32)
        d = model.cfg.latent_dim
        require(self.whitening is None or self.whitening.shape == (d, d), "model",
                f"checkpoint {p['model']} has a surprise whitening matrix of shape "
                f"{getattr(self.whitening, 'shape', None)} for a {d}-dim latent: recalibrate it (jepa-wm calibrate)")
        require(self.instant >= 1, "instant", f"is {self.instant}; it must be >= 1")
        require(self.scale > 0, "scale", f"is unset and checkpoint {p['model']} has no surprise calibration: set scale")
        require(self.threshold > 0, "threshold",
                f"is unset and checkpoint {p['model']} has no surprise calibration: set threshold")
        from jepa_wm.core.checks import FrozenFrameCheck
        from jepa_wm.core.surprise import SurpriseDetector

        self.detector = SurpriseDetector(self.threshold, self.consecutive, self.instant)
        self.frozen = FrozenFrameCheck(p["frozen_frame_motion"]) if p["frozen_frame_motion"] > 0 else None
        self.latent_dim = model.cfg.latent_dim

    # ------------------------------------------------------------------ inputs

    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_image(self, msg: Image):
        self._on_frame(msg, rgb_from_image)

    def _on_compressed(self, msg: CompressedImage):
        self._on_frame(msg, rgb_from_compressed)

    def _on_frame(self, msg, decode):
        try:
            rgb = decode(msg)
        except Exception as e:  # not only ImageFormatError: one frame OpenCV chokes on must not kill the monitor
            self.bad_frames += 1
            why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            self.get_logger().warning(f"dropping camera frame: {why}", throttle_duration_sec=2.0)
            return
        self.last_frame_ns = self._now()
        if self.frozen is not None and self.frozen.update(msg.data, self.joints):
            self._latch(f"camera '{self.p['camera_topic']}' repeated a frame while the joints moved "
                        f"{self.frozen.moved:.3f} rad: is its driver frozen?")
        z = self.encode(rgb)
        t = stamp_ns(msg.header.stamp)
        if self.observed and t < next(reversed(self.observed)):
            # Frame stamps went back (the camera's clock jumped): what is keyed by the old stamps would never
            # match again, and the window's start frame would hold every newer prediction back.
            self.get_logger().warning(f"camera stamps jumped back {(next(reversed(self.observed)) - t) / 1e9:.3f} s: "
                                      "dropping buffered latents and predictions", throttle_duration_sec=2.0)
            self._forget_stamps()
        self.observed[t] = z
        while len(self.observed) > 64:
            self.observed.popitem(last=False)
        self._check_spacing()
        self.observed_pub.publish(vector_msg(z, header=msg.header))
        self._match()

    def _check_spacing(self):
        """Say once when the camera's frame rate leaves every prediction unmatched: the prediction watchdog's stop
        would otherwise blame the planner."""
        from jepa_wm.core.surprise import frame_spacing_problem

        spacing = frame_spacing_problem(list(self.observed)[-20:], self.p["prediction_dt"], self.p["match_tolerance"])
        if spacing and not self.spacing:  # once per spell: a jittery period would re-word it every frame
            self.get_logger().warning(spacing)
        self.spacing = spacing

    def _on_prediction(self, msg: Image):
        try:
            z = vector_from_msg(msg)
        except ValueError as e:
            self.get_logger().warning(f"bad prediction message: {e}", throttle_duration_sec=2.0)
            z = np.full(self.latent_dim, np.nan, dtype=np.float32)  # unusable counts as surprising
        self.predictions[stamp_ns(msg.header.stamp)] = z
        while len(self.predictions) > 64:
            self.predictions.popitem(last=False)
        self._match()

    def _on_joint_states(self, msg: JointState):
        # Per joint: an arm and a gripper may publish separately, and each message must not hide the other's.
        for name, q in zip(msg.name, msg.position):
            if math.isfinite(q):  # a joint without a position reading must not poison the motion measure
                self.joints[name] = float(q)

    def _on_gate_state(self, msg: String):
        try:
            state = json.loads(msg.data)
            mode = state.get("mode")
        except (ValueError, AttributeError):
            return
        self.gate_mode = mode
        # The window follows `engaged`: an engaged gate flips to hold whenever the planner is late. A gate that
        # does not report `engaged` is taken as engaged while it forwards autonomy.
        engaged = bool(state.get("engaged", mode == "autonomy")) and mode not in ("teleop", "stopped")
        if engaged and self.engaged_since_ns is None:
            self.engaged_since_ns = self._now()
            # What followed older frames was a hold or teleop, not the planner's command: do not score it.
            self.engaged_after_frame = next(reversed(self.observed)) if self.observed else -1
        elif not engaged:
            self.engaged_since_ns = None
        if state.get("engaged") is False:
            self.unscored_ns = 0  # disengaged: the next engagement starts afresh

    def _on_time_jump(self, jump):
        """The clock went back (or changed source): times and stamps from before it compare with nothing now."""
        now = self._now()
        self.get_logger().warning(f"clock jumped {jump.delta.nanoseconds / 1e9:+.3f} s: dropping buffered latents "
                                  "and predictions; the camera watchdog restarts from now")
        self._forget_stamps()
        self.start_ns = now
        if self.last_frame_ns is not None:
            self.last_frame_ns = now
        self.last_tick_ns = now

    def _forget_stamps(self):
        self.observed.clear()
        self.predictions.clear()
        self.detector.reset()
        self.engaged_after_frame = -1  # frames from now on are newer than any before the jump

    # ------------------------------------------------------------------ scoring

    def _match(self):
        """Score every prediction whose target frame has been observed."""
        dt = int(self.p["prediction_dt"] * 1e9)
        tol = int(self.p["match_tolerance"] * 1e9)
        newest = next(reversed(self.observed)) if self.observed else None
        for src in list(self.predictions):
            target = src + dt
            frame = min(self.observed, key=lambda t: abs(t - target), default=None)
            if frame is not None and abs(frame - target) <= tol:
                self._score(frame, src, self.predictions.pop(src), self.observed[frame])
            elif newest is not None and newest > target + tol:
                self.predictions.pop(src)  # its frame never came (dropped): not scored

    def _score(self, stamp: int, source: int, predicted, observed):
        from jepa_wm.core.surprise import surprise_score

        if self.p["score_only_in_autonomy"]:
            if self.engaged_since_ns is None:
                self.detector.reset()
                return
            if source <= self.engaged_after_frame:
                return
        if predicted.shape != observed.shape:
            score = float("inf")
        else:
            score = float(surprise_score(predicted, observed, self.scale, self.whitening))
        self.last_score, self.scored = score, self.scored + 1
        self.unscored_ns = 0
        tripped = self.detector.update(score)
        self.score_pub.publish(vector_msg([score, self.threshold, float(tripped)], stamp=stamp_msg(stamp)))
        if tripped:
            self.trips += 1
            self._latch(f"surprise {score:.3g} > threshold {self.threshold:.3g} for "
                        f"{self.detector.run} frame(s) (frame stamp {stamp / 1e9:.3f})")

    def _check_stale(self):
        now = self._now()
        if self.start_ns == 0:  # sim time before the first /clock: the start-up grace begins with the clock
            self.start_ns = now
        since = self.last_frame_ns if self.last_frame_ns is not None else self.start_ns
        limit = self.p["camera_timeout"] if self.last_frame_ns is not None else self.p["startup_grace"]
        if now < since:  # the clock jumped back unnoticed (an NTP step): liveness is unknown, so stale
            self._latch(f"the clock jumped back {(since - now) / 1e9:.3f} s behind the last camera frame: "
                        f"camera '{self.p['camera_topic']}' cannot be told live")
        elif now - since > limit * 1e9:
            self._latch(f"camera '{self.p['camera_topic']}' silent for more than {limit} s")
        # Only autonomy time counts (a gate holding moves nothing unchecked), summed over the holds of a late
        # planner, and only scored predictions reset it: skipped ones check nothing.
        if self.gate_mode == "autonomy" and self.last_tick_ns is not None and now > self.last_tick_ns:
            self.unscored_ns += now - self.last_tick_ns
        self.last_tick_ns = now
        pt = self.p["prediction_timeout"]
        if pt > 0 and self.unscored_ns > pt * 1e9:
            self._latch(f"no prediction on '{self.p['predicted_topic']}' scored for {pt} s of autonomy: "
                        + (self.spacing or "none came, or none matched a frame taken while the gate was engaged "
                                           "(a planner slower than the gate's timeouts?)"))
        self.stop_pub.publish(Bool(data=self.stopped))  # heartbeat: the gate holds when it stops coming

    def _latch(self, reason: str):
        if self.stopped and self.stop_reason != STARTED:  # the first fault stays the reason until ~/reset
            return
        self.stopped, self.stop_reason = True, reason
        self.stop_pub.publish(Bool(data=True))
        self.get_logger().error(f"PROTECTIVE STOP latched: {reason}; call ~/reset to clear")
        self._diagnostics()

    def _on_reset(self, req, res: Trigger.Response):
        now = self._now()
        if (self.last_frame_ns is None or now < self.last_frame_ns
                or now - self.last_frame_ns > self.p["camera_timeout"] * 1e9):
            res.success, res.message = False, f"not reset: camera '{self.p['camera_topic']}' is not live"
            return res
        was, latched = self.stop_reason, self.stopped
        self.stopped, self.stop_reason = False, ""
        self.detector.reset()
        self.predictions.clear()
        if latched:  # the stop disengaged the gate, which re-announces autonomy when it is re-engaged
            self.engaged_since_ns = None
        self.unscored_ns = 0
        self.stop_pub.publish(Bool(data=False))
        self.get_logger().warning(f"protective stop reset (was: {was or 'not latched'})")
        res.success, res.message = True, f"reset; was: {was or 'not latched'}"
        return res

    def _diagnostics(self):
        st = DiagnosticStatus(name="jepa_wm: surprise_monitor", hardware_id="jepa_wm")
        if self.stopped:
            st.level, st.message = DiagnosticStatus.ERROR, f"protective stop: {self.stop_reason}"
        elif self.bad_frames:  # a missing camera needs no case: until a frame has come, the start-up stop is on
            st.level, st.message = DiagnosticStatus.WARN, f"{self.bad_frames} malformed camera frames dropped"
        else:
            st.level, st.message = DiagnosticStatus.OK, "monitoring"
        st.values = [KeyValue(key=k, value=str(v)) for k, v in (
            ("stopped", self.stopped), ("last_score", f"{self.last_score:.4g}"), ("threshold", self.threshold),
            ("consecutive", self.consecutive), ("scale", self.scale),
            ("whitened", self.whitening is not None), ("scored_frames", self.scored),
            ("trips", self.trips), ("malformed_frames", self.bad_frames),
        )]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)


def main(args=None) -> int:
    return main_for(SurpriseMonitor, args)
