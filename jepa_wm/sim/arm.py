"""The embedded simulator: a MuJoCo arm driven like a ros2_control position interface.

`ArmSim` loads any MJCF whose arm joints carry position actuators, and
exposes what a real arm offers: joint states, a camera, and absolute joint
position commands held for `control_dt`. A robot's URDF needs a small MJCF
wrapper that adds the camera and a `<position>` actuator per joint (MuJoCo's
URDF import makes neither): `<asset><model name="arm" file="arm.urdf"/></asset>`
and, in a body of its `<worldbody>`, `<attach model="arm" body="BASE_LINK" prefix=""/>`
(MuJoCo's `<include>` takes MJCF files only, not a URDF). Scene,
camera, joints and object all come from `SimConfig`, so a user's own model
works without code changes. Perturbation hooks (blocked joint, frozen or
occluded camera, teleported object, changed mass or gain) exist so that
surprise detection can be tested against known events.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede the mujoco import

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from jepa_wm.core.config import ConfigError  # noqa: E402

BUILTIN_SCENE = Path(__file__).resolve().parent / "assets" / "arm_push.xml"
# How far (m) the surface under a teleport target may lie from the one the object starts on: on the table.
SURFACE_TOLERANCE = 0.01
# Seeded directions a random jump tries before it gives up (an object by an edge, a jump longer than the table).
JUMP_TRIES = 16


class SimConfigError(ConfigError):
    """A SimConfig setting that no scene, or not this scene, can take; `setting` names the field, so that the
    sim node can name its parameter of that name instead of blaming the scene."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


def _release_gl_context():
    """Make no EGL context current in this thread, so that another thread can render next."""
    if os.environ.get("MUJOCO_GL") == "egl":
        from mujoco import egl

        egl.EGL.eglMakeCurrent(egl.EGL_DISPLAY, egl.EGL.EGL_NO_SURFACE, egl.EGL.EGL_NO_SURFACE, egl.EGL.EGL_NO_CONTEXT)


@dataclass
class SimConfig:
    scene: str = "builtin"  # "builtin" or a path to an MJCF file (with a camera and <position> actuators)
    camera: str = "overhead"
    joint_names: list[str] = field(default_factory=list)  # empty: every actuated hinge/slide joint, actuator order
    object_body: str = ""  # empty: the first body with a free joint (none: a scene without an object)
    width: int = 64
    height: int = 64
    control_dt: float = 0.1  # seconds of simulated time per step()
    seed: int = 0
    ee_site: str = ""  # empty: site "ee" if the scene has one, else the last arm joint's body
    object_jitter: float = 0.1  # reset() places the object uniformly within this many metres of its default xy
    # A changed robot that persists across resets (the fine-tuning experiment): per-joint servo gain
    # factors, per-joint zero offsets (rad: the joint settles at command + offset, as after re-mounting
    # a link or replacing an encoder), and extra mass in kg per body name. Empty: the scene as written.
    joint_gain_scale: list[float] = field(default_factory=list)
    joint_offset: list[float] = field(default_factory=list)
    added_mass: dict[str, float] = field(default_factory=dict)


@dataclass
class Observation:
    image: np.ndarray  # uint8 (H, W, 3) RGB
    joint_pos: np.ndarray  # (n_joints,) rad or m
    joint_vel: np.ndarray
    object_xy: np.ndarray  # (2,) world frame; zeros when the scene has no object
    time: float  # seconds of simulated time


def _name(model, kind, i) -> str:
    return mujoco.mj_id2name(model, kind, i) or ""


def _names(model, kind, count) -> list[str]:
    return [_name(model, kind, i) for i in range(count)]


def scene_path(scene: str) -> Path:
    """The MJCF file that SimConfig.scene names ("builtin" or "": the shipped scene); refused unless it is a file."""
    if scene in ("", "builtin"):
        return BUILTIN_SCENE
    path = Path(scene).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"scene {path} is a directory; give the MJCF file in it (or 'builtin')")
    if not path.is_file():
        raise FileNotFoundError(f"scene file {path} does not exist (use 'builtin' or an MJCF path)")
    return path


def _one_line(error) -> str:
    """An error's text on one line: MuJoCo's XML errors span several, and a node or CLI error is one line."""
    text = re.sub(r":\s*\n\s*", ": ", str(error).strip())  # "XML parse error 14:\nError=..." reads on
    return re.sub(r"\s*\n\s*", "; ", text)


def _load(path: Path):
    try:
        return mujoco.MjModel.from_xml_path(str(path))
    except ValueError as e:
        raise SimConfigError("scene", f"MuJoCo cannot load scene {path}: {_one_line(e)}") from None


def _check_numbers(cfg: SimConfig):
    """Refuse SimConfig numbers no scene can take, before loading one (the scene-dependent checks come later)."""
    if not (isinstance(cfg.control_dt, (int, float, np.number)) and 0 < cfg.control_dt < np.inf):
        raise SimConfigError("control_dt", f"control_dt is {cfg.control_dt!r}; it must be a finite number of seconds > 0")
    for name in ("width", "height"):
        v = getattr(cfg, name)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise SimConfigError(name, f"image {name} is {v!r}; it must be an integer >= 1")
    if not 0 <= cfg.object_jitter < np.inf:
        raise SimConfigError("object_jitter",
                             f"object_jitter is {cfg.object_jitter!r}; it must be a finite number of metres >= 0")
    # A negative gain turns the servo into positive feedback; non-finite values poison the physics.
    if not all(0 <= v < np.inf for v in cfg.joint_gain_scale):
        raise SimConfigError("joint_gain_scale",
                             f"joint_gain_scale {list(cfg.joint_gain_scale)} must hold finite numbers >= 0")
    if not all(np.isfinite(v) for v in cfg.joint_offset):
        raise SimConfigError("joint_offset", f"joint_offset {list(cfg.joint_offset)} must hold finite numbers")
    if not all(np.isfinite(v) for v in cfg.added_mass.values()):
        raise SimConfigError("added_mass", f"added_mass {dict(cfg.added_mass)} must hold finite masses in kg")


def _warn_left_out(path, joints: list[str]):
    """Say which hinge and slide joints the default joint choice leaves out (Python's default filter shows a
    warning once per text and calling line: once per scene in collect, eval or a node)."""
    if joints:
        # A warning, not an error: a passive joint (a free-swinging tool) is a valid scene. But nothing commands it,
        # and the images still show it move, so the model sees motion no action explains.
        warnings.warn(f"scene {path}: joints {joints} have no <position> actuator, so they are not arm joints and are "
                      "left out of the joint states and commands, yet they still move in the images; add a "
                      "<position> actuator for each joint the arm should command", stacklevel=4)


class ArmSim:
    def __init__(self, cfg: SimConfig | None = None):
        self.cfg = cfg = cfg or SimConfig()
        _check_numbers(cfg)
        path = scene_path(cfg.scene)
        self.model = _load(path)
        self.data = mujoco.MjData(self.model)
        self._scratch = mujoco.MjData(self.model)  # for render_state and IK, never stepped
        self._resolve_names(path)
        dt = self.model.opt.timestep
        self._substeps = round(cfg.control_dt / dt)
        if self._substeps < 1 or abs(self._substeps * dt - cfg.control_dt) > 1e-6 * cfg.control_dt:
            # Else a step simulates another time than control_dt, and /clock and the bags' stamps drift from it.
            raise SimConfigError("control_dt", f"control_dt {cfg.control_dt} s is not a whole number of scene {path}'s "
                                 f"physics steps ({dt} s): use a multiple of {dt} s, or change the scene's <option timestep>")
        self._defaults = (self.model.body_mass.copy(), self.model.body_inertia.copy(),
                          self.model.actuator_gainprm.copy(), self.model.actuator_biasprm.copy())
        self._default_armature = self.model.dof_armature.copy()
        try:
            self._renderer = mujoco.Renderer(self.model, cfg.height, cfg.width)
        except ValueError as e:  # an image larger than the scene's offscreen framebuffer
            too_big = "width" if cfg.width > self.model.vis.global_.offwidth else "height"
            raise SimConfigError(too_big, f"image size {cfg.width}x{cfg.height} does not fit scene {path}: "
                                          f"{_one_line(e)}") from None
        self._render_lock = threading.Lock()
        self._rng = np.random.default_rng(cfg.seed)
        self._blocked: dict[int, float] = {}
        self._frozen = self._occluded = False
        self._last_image = None
        self.reset(seed=cfg.seed)

    # ------------------------------------------------------------------ scene lookup

    def _resolve_names(self, path):
        m, cfg = self.model, self.cfg
        cameras = _names(m, mujoco.mjtObj.mjOBJ_CAMERA, m.ncam)
        if cfg.camera not in cameras:
            hint = ""
            if path.suffix.lower() == ".urdf":  # a URDF cannot hold a camera (nor a <position> actuator)
                hint = ("; a URDF has no cameras: wrap it in an MJCF that adds the camera and a <position> actuator "
                        "per joint (<asset><model file=\"arm.urdf\"/></asset> + <attach>, see README)")
            raise SimConfigError("camera", f"camera {cfg.camera!r} not found in scene {path}; it has cameras "
                                           f"{cameras}{hint}")
        self._camera = cfg.camera
        # Each arm joint is driven by the position actuator whose transmission targets it. Only a position servo
        # (force = kp (ctrl - q) ...) takes a command in radians, as ros2_control's position interface does: a
        # <motor> would apply it as a torque.
        actuated = {}
        for a in range(m.nu):
            servo = (m.actuator_biastype[a] == int(mujoco.mjtBias.mjBIAS_AFFINE) and m.actuator_gainprm[a, 0] > 0
                     and np.isclose(m.actuator_biasprm[a, 1], -m.actuator_gainprm[a, 0]))
            if servo and m.actuator_trntype[a] == int(mujoco.mjtTrn.mjTRN_JOINT):
                j = int(m.actuator_trnid[a, 0])
                if m.jnt_type[j] in (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE)):
                    actuated.setdefault(_name(m, mujoco.mjtObj.mjOBJ_JOINT, j), (j, a))
        joints = _names(m, mujoco.mjtObj.mjOBJ_JOINT, m.njnt)
        names = list(cfg.joint_names)
        if not names:
            names = list(actuated)
            _warn_left_out(path, [n or f"#{j}" for j, n in enumerate(joints)
                                  if m.jnt_type[j] in (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
                                  and n not in actuated])
        for n in names:
            if n not in joints:
                raise SimConfigError("joint_names", f"joint {n!r} not found in scene {path}; it has joints {joints}")
            if n not in actuated:
                raise SimConfigError("joint_names", f"joint {n!r} in scene {path} has no position actuator (a <motor> "
                                                    "or <velocity> does not take positions); add a <position> actuator for it")
        if not names:
            raise SimConfigError("scene", f"scene {path} has no hinge or slide joints driven by <position> actuators")
        self._joint_names = names
        jids = [actuated[n][0] for n in names]
        self._act = np.array([actuated[n][1] for n in names])
        self._qpos = np.array([m.jnt_qposadr[j] for j in jids])
        self._dof = np.array([m.jnt_dofadr[j] for j in jids])
        self._limits = np.array([self._joint_range(j, a) for j, a in zip(jids, self._act)])

        bodies = _names(m, mujoco.mjtObj.mjOBJ_BODY, m.nbody)
        self._obj_qpos = None
        if cfg.object_body:
            if cfg.object_body not in bodies:
                raise SimConfigError("object_body", f"object body {cfg.object_body!r} not found in scene {path}; "
                                                    f"it has bodies {bodies}")
            self._obj_body = bodies.index(cfg.object_body)
        else:
            free = [j for j in range(m.njnt) if m.jnt_type[j] == int(mujoco.mjtJoint.mjJNT_FREE)]
            self._obj_body = int(m.jnt_bodyid[free[0]]) if free else None
        if self._obj_body is not None:
            j = m.body_jntadr[self._obj_body]
            if j < 0 or m.jnt_type[j] != int(mujoco.mjtJoint.mjJNT_FREE):
                raise SimConfigError("object_body", f"object body {bodies[self._obj_body]!r} in scene {path} needs a "
                                                    "free joint to move")
            self._obj_qpos, self._obj_dof = int(m.jnt_qposadr[j]), int(m.jnt_dofadr[j])

        sites = _names(m, mujoco.mjtObj.mjOBJ_SITE, m.nsite)
        site = cfg.ee_site or ("ee" if "ee" in sites else "")
        if site and site not in sites:
            raise SimConfigError("ee_site", f"end-effector site {site!r} not found in scene {path}; it has sites {sites}")
        self._ee_site = sites.index(site) if site else None
        self._ee_body = int(m.jnt_bodyid[jids[-1]])
        moved = {int(m.jnt_bodyid[j]) for j in jids}
        arm_bodies = [b for b in range(m.nbody) if self._ancestors(b) & moved]
        self._arm_geom = np.isin(m.geom_bodyid, arm_bodies)  # per geom: part of the arm

    def _ancestors(self, b) -> set[int]:
        chain = {b}
        while b > 0:
            b = int(self.model.body_parentid[b])
            chain.add(b)
        return chain

    def _joint_range(self, j, a):
        m = self.model
        if m.jnt_limited[j]:
            return m.jnt_range[j].copy()
        if m.actuator_ctrllimited[a]:
            return m.actuator_ctrlrange[a].copy()
        return np.array([-np.pi, np.pi])

    # ------------------------------------------------------------------ properties

    @property
    def joint_names(self) -> list[str]:
        return list(self._joint_names)

    @property
    def joint_limits(self) -> np.ndarray:
        """(n_joints, 2) lower, upper."""
        return self._limits.copy()

    @property
    def n_joints(self) -> int:
        return len(self._joint_names)

    @property
    def time(self) -> float:
        return float(self.data.time)

    @property
    def has_object(self) -> bool:
        return self._obj_qpos is not None

    # ------------------------------------------------------------------ episode

    def reset(self, seed: int | None = None, joint_pos=None, object_xy=None) -> Observation:
        """A fresh episode: model defaults restored, perturbations cleared, random (or given) start.

        Random starts come from `seed` (or continue the simulator's own seeded
        stream); the arm is placed away from the object so that nothing is
        knocked over at t = 0.
        """
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        m = self.model
        if not np.array_equal(m.body_mass, self._defaults[0]):
            m.body_mass[:], m.body_inertia[:] = self._defaults[0], self._defaults[1]
            mujoco.mj_setConst(m, self._scratch)
        m.actuator_gainprm[:], m.actuator_biasprm[:] = self._defaults[2], self._defaults[3]
        self._apply_robot_change()
        m.dof_armature[:] = self._default_armature
        self._blocked.clear()
        self._frozen = self._occluded = False
        mujoco.mj_resetData(m, self.data)
        xy = self._sample_object_xy() if object_xy is None else np.asarray(object_xy, float)
        q = self._sample_joints(xy) if joint_pos is None else self._check_joints(joint_pos)
        self._set_state(self.data, q, xy)
        self.data.ctrl[self._act] = q
        mujoco.mj_forward(m, self.data)
        # Where the object rests and the height of what it rests on (the table's top): what table_problem keeps to.
        self._rest_z = float(self.object_pos()[2])
        self._table_z = self.surface_z(xy, self._rest_z) if self.has_object else None
        return self._observe()

    def _apply_robot_change(self):
        scales = self.cfg.joint_gain_scale
        if scales and len(scales) != self.n_joints:
            raise SimConfigError("joint_gain_scale",
                                 f"joint_gain_scale has {len(scales)} values; the arm has {self.n_joints} joints")
        for i, scale in enumerate(scales):
            if scale != 1.0:
                self.set_joint_gain(i, scale)
        offsets = self.cfg.joint_offset
        if offsets and len(offsets) != self.n_joints:
            raise SimConfigError("joint_offset", f"joint_offset has {len(offsets)} values; the arm has {self.n_joints} joints")
        for a, off in zip(self._act, offsets):  # force = kp * (command + offset - q)
            self.model.actuator_biasprm[a, 0] = self.model.actuator_gainprm[a, 0] * off
        for body, kg in self.cfg.added_mass.items():
            b = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, body)
            if b < 0:
                bodies = _names(self.model, mujoco.mjtObj.mjOBJ_BODY, self.model.nbody)
                raise SimConfigError("added_mass", f"added_mass names body {body!r}, which is not in the scene; it has "
                                                   f"bodies {bodies}")
            mass = float(self._defaults[0][b]) + kg
            if not mass > 0:
                raise SimConfigError("added_mass", f"added_mass {body}={kg} leaves body {body!r} with mass {mass:g} kg; "
                                                   "it must stay > 0")
            self.set_link_mass(body, mass)

    def _check_joints(self, joint_pos) -> np.ndarray:
        q = np.asarray(joint_pos, float)
        if q.shape != (self.n_joints,):
            raise ValueError(f"joint_pos has shape {q.shape}; expected ({self.n_joints},) for {self._joint_names}")
        return np.clip(q, self._limits[:, 0], self._limits[:, 1])

    def _sample_object_xy(self) -> np.ndarray:
        if not self.has_object:
            return np.zeros(2)
        home = self.model.qpos0[self._obj_qpos:self._obj_qpos + 2]
        return home + self._rng.uniform(-1, 1, 2) * self.cfg.object_jitter

    def _sample_joints(self, object_xy) -> np.ndarray:
        lo, hi = self._limits[:, 0], self._limits[:, 1]
        mid, half = (lo + hi) / 2, 0.8 * (hi - lo) / 2
        for _ in range(100):
            q = mid + self._rng.uniform(-1, 1, self.n_joints) * half
            if self.collision_free(q, object_xy) and (
                    not self.has_object or np.linalg.norm(self.ee_at(q)[:2] - object_xy) > 0.1):
                break
        return q

    def collision_free(self, joint_pos, object_xy=None) -> bool:
        """Whether the arm at `joint_pos` touches nothing (table, object, walls); the simulation is untouched."""
        d = self._scratch
        d.qpos[:] = self.data.qpos
        xy = self.object_xy() if object_xy is None else np.asarray(object_xy, float)
        self._set_state(d, np.asarray(joint_pos, float), xy)
        # Geometry only (no dynamics): exploration calls this for every command of a candidate path.
        mujoco.mj_kinematics(self.model, d)
        mujoco.mj_collision(self.model, d)
        return not self._arm_geom[d.contact.geom[:d.ncon]].any()

    def _set_state(self, data, q, object_xy):
        data.qpos[self._qpos] = q
        data.qvel[self._dof] = 0.0
        if self.has_object:
            data.qpos[self._obj_qpos:self._obj_qpos + 2] = object_xy
            data.qvel[self._obj_dof:self._obj_dof + 6] = 0.0

    def step(self, action) -> Observation:
        """Command absolute joint targets (clipped to the limits) and advance control_dt."""
        target = np.asarray(action, float).reshape(-1)
        if target.shape != (self.n_joints,):
            raise ValueError(f"action has {target.size} values; expected {self.n_joints} for {self._joint_names}")
        if not np.all(np.isfinite(target)):
            raise ValueError(f"action {target.tolist()} is not finite")
        self.data.ctrl[self._act] = np.clip(target, self._limits[:, 0], self._limits[:, 1])
        for _ in range(self._substeps):
            mujoco.mj_step(self.model, self.data)
            for i, hold in self._blocked.items():  # a brake: the joint stays where it was blocked
                self.data.qpos[self._qpos[i]] = hold
                self.data.qvel[self._dof[i]] = 0.0
        return self._observe()

    def _observe(self) -> Observation:
        pos, vel = self.joint_state()
        return Observation(self.render(), pos, vel, self.object_xy(), self.time)

    # ------------------------------------------------------------------ state

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.qpos[self._qpos].copy(), self.data.qvel[self._dof].copy()

    def object_xy(self) -> np.ndarray:
        return self.object_pos()[:2]

    def object_pos(self) -> np.ndarray:
        """The object's position (world frame, x y z); zeros when the scene has no object."""
        return self.object_pose()[0]

    def object_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """The object's position (x y z) and orientation (quaternion w x y z), world frame; zeros and the identity
        when the scene has no object."""
        if not self.has_object:
            return np.zeros(3), np.array([1.0, 0.0, 0.0, 0.0])
        q = self.data.qpos[self._obj_qpos:self._obj_qpos + 7]
        return q[:3].copy(), q[3:].copy()

    def ee_pos(self) -> np.ndarray:
        """End-effector position (world frame) now."""
        return self._ee_of(self.data)

    def _ee_of(self, data) -> np.ndarray:
        if self._ee_site is not None:
            return data.site_xpos[self._ee_site].copy()
        return data.xpos[self._ee_body].copy()

    def ee_at(self, joint_pos) -> np.ndarray:
        """End-effector position at a joint configuration (forward kinematics; the simulation is untouched)."""
        self._scratch.qpos[:] = self.data.qpos
        self._scratch.qpos[self._qpos] = joint_pos
        mujoco.mj_kinematics(self.model, self._scratch)
        mujoco.mj_comPos(self.model, self._scratch)
        return self._ee_of(self._scratch)

    def ee_jacobian(self, joint_pos) -> tuple[np.ndarray, np.ndarray]:
        """(ee position, 3 x n_joints positional Jacobian) at a configuration, for IK."""
        p = self.ee_at(joint_pos)
        jacp = np.zeros((3, self.model.nv))
        if self._ee_site is not None:
            mujoco.mj_jacSite(self.model, self._scratch, jacp, None, self._ee_site)
        else:
            mujoco.mj_jacBody(self.model, self._scratch, jacp, None, self._ee_body)
        return p, jacp[:, self._dof]

    # ------------------------------------------------------------------ camera

    def camera_matrix(self) -> np.ndarray:
        """The pinhole intrinsics K (3, 3) of the camera at the rendered size, for CameraInfo: MuJoCo's fovy is the
        vertical field of view, and its pixels are square."""
        fovy = float(self.model.cam_fovy[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, self._camera)])
        f = 0.5 * self.cfg.height / np.tan(np.radians(fovy) / 2)
        return np.array([[f, 0.0, self.cfg.width / 2], [0.0, f, self.cfg.height / 2], [0.0, 0.0, 1.0]])

    def render(self) -> np.ndarray:
        """The camera image, uint8 (H, W, 3) RGB, with the camera perturbations applied."""
        if self._frozen and self._last_image is not None:
            return self._last_image.copy()
        img = self._draw(self.data)
        if self._occluded:
            h, w = img.shape[:2]
            img[h // 4:3 * h // 4, w // 4:3 * w // 4] = 40
        self._last_image = img
        return img.copy()

    def render_state(self, joint_pos, object_xy=None) -> np.ndarray:
        """The clean camera image at a configuration (goal images); the simulation state is untouched."""
        d = self._scratch
        d.qpos[:], d.qvel[:] = self.data.qpos, 0.0
        xy = self.object_xy() if object_xy is None else np.asarray(object_xy, float)
        self._set_state(d, self._check_joints(joint_pos), xy)
        mujoco.mj_forward(self.model, d)
        return self._draw(d)

    def _draw(self, data) -> np.ndarray:
        # One thread at a time, and the GL context released afterwards: an EGL context is current in
        # one thread only, and a simulator node may render from an executor thread after the main
        # thread drew a goal image.
        with self._render_lock:
            self._renderer.update_scene(data, camera=self._camera)
            img = self._renderer.render().copy()
            _release_gl_context()
        return img

    # ------------------------------------------------------------------ perturbations (cleared by reset)

    def teleport_object(self, xy):
        """The object jumps to `xy` (at rest), as if someone moved it by hand."""
        if not self.has_object:
            raise ValueError("this scene has no object body to teleport")
        self.data.qpos[self._obj_qpos:self._obj_qpos + 2] = np.asarray(xy, float)
        self.data.qvel[self._obj_dof:self._obj_dof + 6] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def surface_z(self, xy, from_z: float) -> float | None:
        """Height of the static scene (the table, the floor) under `xy`, looking down from height `from_z`; None over
        nothing. What moves (the arm, the object) is looked through."""
        m, d = self.model, self.data
        pnt, down = np.array([xy[0], xy[1], from_z], dtype=float), np.array([0.0, 0.0, -1.0])
        geom = np.zeros(1, np.int32)
        for _ in range(8):
            dist = mujoco.mj_ray(m, d, pnt, down, None, 1, -1, geom)
            if dist < 0:
                return None
            pnt[2] -= dist
            if m.body_weldid[m.geom_bodyid[geom[0]]] == 0:  # welded to the world: static
                return float(pnt[2])
            pnt[2] -= 1e-6  # on down, through the arm or the object
        return None

    def table_problem(self, xy) -> str:
        """Why the object cannot be put at `xy` ("" if it can): it would not stand on the static surface it stood on
        at the last reset (the table). "" also without an object, or for one that started over nothing static."""
        if self._table_z is None:
            return ""
        z = self.surface_z(xy, self._rest_z)
        if z is not None and abs(z - self._table_z) <= SURFACE_TOLERANCE:
            return ""
        below = "nothing" if z is None else f"a surface at z {z:.3f} m"
        return f"off the table ({below} under it; the object started on a surface at z {self._table_z:.3f} m)"

    def random_jump(self, distance: float, rng) -> np.ndarray | None:
        """The object's position now, moved `distance` in a random direction (drawn from `rng`) that keeps it on the
        table; None if none of JUMP_TRIES directions does (an object by an edge, a jump longer than the table)."""
        here = self.object_xy()
        for _ in range(JUMP_TRIES):
            angle = rng.uniform(0, 2 * np.pi)
            new = here + distance * np.array([np.cos(angle), np.sin(angle)])
            if not self.table_problem(new):
                return new
        return None

    def block_joint(self, i: int, blocked: bool = True):
        """Joint i stops where it is, whatever the command (a jammed joint or an engaged brake)."""
        if not 0 <= i < self.n_joints:
            raise IndexError(f"joint index {i} out of range 0..{self.n_joints - 1}")
        dof = self._dof[i]
        if blocked:
            self._blocked[i] = float(self.data.qpos[self._qpos[i]])
            # A brake, not only a position reset: the huge armature makes the joint take the
            # reaction of the others' motion, as a real brake does, instead of soaking it up.
            self.model.dof_armature[dof] = 1e6
        else:
            self._blocked.pop(i, None)
            self.model.dof_armature[dof] = self._default_armature[dof]

    def freeze_camera(self, frozen: bool = True):
        """render() keeps returning the last frame (a stuck camera driver)."""
        self._frozen = bool(frozen)

    def occlude_camera(self, occluded: bool = True):
        """A dark patch covers the centre of the image (something in front of the lens)."""
        self._occluded = bool(occluded)

    def set_link_mass(self, body: str, mass: float):
        """Change a body's mass; its inertia scales with it (a heavier payload or link)."""
        bid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, body)
        if bid < 0:
            bodies = _names(self.model, mujoco.mjtObj.mjOBJ_BODY, self.model.nbody)
            raise ValueError(f"body {body!r} not found; the scene has bodies {bodies}")
        if not mass > 0:
            raise ValueError(f"mass must be positive, got {mass}")
        scale = mass / self.model.body_mass[bid]
        self.model.body_mass[bid] = mass
        self.model.body_inertia[bid] *= scale
        mujoco.mj_setConst(self.model, self._scratch)  # derived masses and solver weights

    def set_joint_gain(self, i: int, scale: float):
        """Scale joint i's servo stiffness kp relative to the scene's (a weak or strong drive)."""
        if not 0 <= i < self.n_joints:
            raise IndexError(f"joint index {i} out of range 0..{self.n_joints - 1}")
        a = self._act[i]
        gain, bias = self._defaults[2], self._defaults[3]
        # Both terms, so the actuator stays a position servo: force = kp * (target - q).
        self.model.actuator_gainprm[a, 0] = gain[a, 0] * scale
        self.model.actuator_biasprm[a, 1] = bias[a, 1] * scale
