"""The embedded MuJoCo simulator (ArmSim) and the exploration policy: real physics and real rendering, tiny images."""

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("mujoco", reason="the embedded simulator needs mujoco")

from jepa_wm.sim.arm import ArmSim, SimConfig  # noqa: E402
from jepa_wm.sim.explore import ExplorationPolicy, solve_ik  # noqa: E402

# Collision-free configurations of the builtin arm (upper arm raised, clear of table and puck).
START = np.array([0.0, -0.2, 0.6])
TARGET = np.array([0.6, -0.3, 0.5])
OBJECT_XY = np.array([0.35, 0.1])


@pytest.fixture(scope="module")
def sim():
    return ArmSim(SimConfig(width=32, height=32))


def _start(sim, **kw):
    return sim.reset(seed=0, joint_pos=START, object_xy=OBJECT_XY, **kw)


def _drive(sim, target, steps):
    obs = None
    for _ in range(steps):
        obs = sim.step(target)
    return obs


# ---------------------------------------------------------------------- the builtin scene


def test_builtin_scene_joints_limits_and_observation(sim):
    assert sim.joint_names == ["base_yaw", "shoulder", "elbow"]
    assert sim.n_joints == 3 and sim.has_object
    np.testing.assert_allclose(sim.joint_limits, [[-1.6, 1.6], [-1.0, 1.4], [-0.3, 2.4]])
    obs = _start(sim)
    assert obs.image.shape == (32, 32, 3) and obs.image.dtype == np.uint8
    np.testing.assert_allclose(obs.joint_pos, START)
    np.testing.assert_allclose(obs.joint_vel, 0.0)
    np.testing.assert_allclose(obs.object_xy, OBJECT_XY)
    assert obs.time == 0.0
    assert sim.collision_free(START) and sim.collision_free(TARGET)


def test_image_size_from_config_non_square():
    s = ArmSim(SimConfig(width=48, height=24))
    assert s.render().shape == (24, 48, 3)
    assert s.reset(seed=1).image.shape == (24, 48, 3)


def test_step_tracks_commands_and_advances_control_dt(sim):
    _start(sim)
    obs = sim.step(TARGET)
    assert obs.time == pytest.approx(0.1)
    err_after_one = np.abs(obs.joint_pos - TARGET).max()
    assert err_after_one < np.abs(START - TARGET).max()
    obs = _drive(sim, TARGET, 9)
    assert obs.time == pytest.approx(1.0)
    # A position servo under gravity: close to the target, well inside what one step achieved.
    np.testing.assert_allclose(obs.joint_pos, TARGET, atol=0.03)
    assert np.abs(obs.joint_pos - TARGET).max() < err_after_one
    pos, vel = sim.joint_state()
    np.testing.assert_array_equal(pos, obs.joint_pos)
    assert np.abs(vel).max() < 0.1  # settled


def test_control_dt_sets_simulated_time_per_step():
    s = ArmSim(SimConfig(width=16, height=16, control_dt=0.05))
    s.reset(seed=0, joint_pos=START)
    assert s.step(START).time == pytest.approx(0.05)


def test_step_rejects_wrong_shape_and_non_finite_actions(sim):
    _start(sim)
    with pytest.raises(ValueError, match="expected 3"):
        sim.step([0.1, 0.2])
    with pytest.raises(ValueError, match="not finite"):
        sim.step([0.0, np.nan, 0.0])
    with pytest.raises(ValueError, match="shape"):
        sim.reset(joint_pos=[0.0, 0.0])
    assert sim.time == 0.0  # nothing was stepped


def test_position_control_respects_joint_limits(sim):
    _start(sim)
    lo, hi = sim.joint_limits[:, 0], sim.joint_limits[:, 1]
    seen = []
    for _ in range(15):  # far beyond: yaw left, shoulder up, elbow folded (all in free space)
        seen.append(sim.step([5.0, -5.0, 5.0]).joint_pos)
    end_high = seen[-1]
    for _ in range(15):
        seen.append(sim.step([-5.0, -5.0, -5.0]).joint_pos)
    end_low = seen[-1]
    seen = np.array(seen)
    assert np.all(seen <= hi + 0.02) and np.all(seen >= lo - 0.02)
    # The clipped targets are the limits, so the arm ends there.
    np.testing.assert_allclose(end_high[[0, 2]], hi[[0, 2]], atol=0.02)
    np.testing.assert_allclose(end_low, [lo[0], lo[1], lo[2]], atol=0.03)


def test_reset_clips_given_joint_positions_to_the_limits(sim):
    obs = sim.reset(seed=0, joint_pos=[9.0, -9.0, 0.5], object_xy=OBJECT_XY)
    np.testing.assert_allclose(obs.joint_pos, [1.6, -1.0, 0.5])


def test_reset_with_the_same_seed_is_deterministic(sim):
    a = sim.reset(seed=7)
    a_steps = [sim.step(a.joint_pos + 0.2) for _ in range(3)]
    b = sim.reset(seed=7)
    b_steps = [sim.step(b.joint_pos + 0.2) for _ in range(3)]
    np.testing.assert_array_equal(a.joint_pos, b.joint_pos)
    np.testing.assert_array_equal(a.object_xy, b.object_xy)
    np.testing.assert_array_equal(a.image, b.image)
    for x, y in zip(a_steps, b_steps):
        np.testing.assert_array_equal(x.joint_pos, y.joint_pos)
        np.testing.assert_array_equal(x.image, y.image)
    c = sim.reset(seed=8)
    assert not np.allclose(c.joint_pos, a.joint_pos)
    assert not np.allclose(c.object_xy, a.object_xy)
    # Another simulator built with the same seed starts identically.
    other = ArmSim(SimConfig(width=32, height=32, seed=7))
    np.testing.assert_array_equal(other.joint_state()[0], a.joint_pos)
    np.testing.assert_array_equal(other.object_xy(), a.object_xy)


def test_random_starts_are_valid(sim):
    lo, hi = sim.joint_limits[:, 0], sim.joint_limits[:, 1]
    home = sim.model.body("object").pos[:2]  # where the scene puts the puck
    for seed in range(5):
        obs = sim.reset(seed=seed)
        assert np.all(obs.joint_pos >= lo) and np.all(obs.joint_pos <= hi)
        assert np.abs(obs.object_xy - home).max() <= sim.cfg.object_jitter + 1e-9
        assert sim.collision_free(obs.joint_pos)
        assert np.linalg.norm(sim.ee_pos()[:2] - obs.object_xy) > 0.1  # not on top of the object


def test_ee_pos_is_forward_kinematics_of_the_joint_state(sim):
    _start(sim)
    p0 = sim.ee_pos()
    np.testing.assert_allclose(p0, sim.ee_at(START), atol=1e-9)
    _drive(sim, TARGET, 5)
    p1 = sim.ee_pos()
    # After step() MuJoCo's kinematics lag the integrated state by one 2 ms substep: sub-millimetre.
    np.testing.assert_allclose(p1, sim.ee_at(sim.joint_state()[0]), atol=1e-4)
    assert np.linalg.norm(p1 - p0) > 0.05
    # Base yaw turns the end effector about the z axis: radius and height are unchanged.
    a, b = sim.ee_at([0.0, 0.1, 0.9]), sim.ee_at([1.0, 0.1, 0.9])
    assert np.hypot(*a[:2]) == pytest.approx(np.hypot(*b[:2]))
    assert a[2] == pytest.approx(b[2])
    assert np.arctan2(b[1], b[0]) - np.arctan2(a[1], a[0]) == pytest.approx(1.0)


def test_collision_free_detects_the_arm_inside_the_table(sim):
    _start(sim)
    assert not sim.collision_free([0.0, 1.4, 0.0])  # shoulder fully down: through the tabletop
    assert sim.ee_at([0.0, 1.4, 0.0])[2] < 0
    assert sim.joint_state()[0] == pytest.approx(START)  # the simulation was not touched


def test_render_state_renders_a_configuration_without_touching_the_simulation(sim):
    _start(sim)
    obs = _drive(sim, TARGET, 2)
    before = sim.joint_state()[0], sim.object_xy(), sim.time
    goal = sim.render_state(START)
    assert goal.shape == (32, 32, 3)
    np.testing.assert_array_equal(sim.joint_state()[0], before[0])
    np.testing.assert_array_equal(sim.object_xy(), before[1])
    assert sim.time == before[2]
    np.testing.assert_array_equal(sim.render(), obs.image)  # the camera still shows the real state
    # The clean image of the start configuration is what the camera showed at the start.
    np.testing.assert_array_equal(goal, _start(sim).image)
    assert not np.array_equal(goal, obs.image)
    moved = sim.render_state(START, object_xy=[0.2, -0.2])
    assert not np.array_equal(moved, goal)


# ---------------------------------------------------------------------- perturbations


def test_teleport_object_moves_it_and_it_stays_at_rest(sim):
    obs = _start(sim)
    sim.teleport_object([0.22, -0.15])
    np.testing.assert_allclose(sim.object_xy(), [0.22, -0.15])
    assert np.abs(sim.render().astype(int) - obs.image).sum() > 1000  # the camera sees it
    after = sim.step(START)
    np.testing.assert_allclose(after.object_xy, [0.22, -0.15], atol=1e-3)
    assert sim.object_pos()[2] == pytest.approx(0.025, abs=2e-3)  # still on the table


def test_blocked_joint_does_not_follow_commands(sim):
    _start(sim)
    sim.block_joint(0)
    obs = _drive(sim, TARGET, 5)
    assert obs.joint_pos[0] == pytest.approx(START[0], abs=1e-9)
    assert obs.joint_vel[0] == 0.0
    np.testing.assert_allclose(obs.joint_pos[1:], TARGET[1:], atol=0.03)  # the others still do
    sim.block_joint(0, False)
    obs = _drive(sim, TARGET, 5)
    assert obs.joint_pos[0] == pytest.approx(TARGET[0], abs=0.03)
    with pytest.raises(IndexError):
        sim.block_joint(3)


def test_frozen_camera_repeats_the_frame_while_the_arm_moves(sim):
    first = _start(sim).image
    sim.freeze_camera()
    frames, joints = [], []
    for _ in range(3):
        obs = sim.step(TARGET)
        frames.append(obs.image)
        joints.append(obs.joint_pos)
    assert np.abs(joints[-1] - START).max() > 0.3
    for f in frames:
        np.testing.assert_array_equal(f, first)
    sim.freeze_camera(False)
    live = sim.render()
    assert np.abs(live.astype(int) - first).sum() > 1000
    # (up to one grey level: the rendered kinematics lag the integrated state by one substep)
    assert np.abs(live.astype(int) - sim.render_state(sim.joint_state()[0])).max() <= 2


def test_occluded_camera_covers_the_centre_only(sim):
    clean = _start(sim).image
    sim.occlude_camera()
    img = sim.render()
    assert np.all(img[8:24, 8:24] == 40)
    assert not np.all(clean[8:24, 8:24] == 40)
    mask = np.ones((32, 32), bool)
    mask[8:24, 8:24] = False
    np.testing.assert_array_equal(img[mask], clean[mask])
    sim.occlude_camera(False)
    np.testing.assert_array_equal(sim.render(), clean)


def test_set_joint_gain_slows_tracking(sim):
    def error_after(steps, gain=None):
        _start(sim)
        if gain is not None:
            sim.set_joint_gain(0, gain)
        return abs(_drive(sim, TARGET, steps).joint_pos[0] - TARGET[0])

    normal, weak = error_after(3), error_after(3, 0.1)
    assert normal < 0.01
    assert weak > 0.2 and weak > 10 * normal
    assert error_after(3, 1.0) == pytest.approx(normal, abs=1e-9)  # scale 1 is the scene's gain
    # Still a position servo to the same target, only a weaker one: it gets there, later.
    assert error_after(12, 0.3) < 0.005
    with pytest.raises(IndexError):
        sim.set_joint_gain(-1, 2.0)


def test_set_link_mass_changes_the_dynamics(sim):
    def after(setup=None):
        _start(sim)
        if setup:
            setup()
        return _drive(sim, TARGET, 3).joint_pos

    base = after()
    heavy = after(lambda: sim.set_link_mass("forearm", 2.0))
    assert np.abs(heavy - base).max() > 0.05
    forearm = sim.model.body("forearm").id
    assert sim.model.body_mass[forearm] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="not found"):
        sim.set_link_mass("no_such_link", 1.0)
    with pytest.raises(ValueError, match="positive"):
        sim.set_link_mass("forearm", 0.0)


def test_reset_clears_every_perturbation(sim):
    _start(sim)
    reference = [sim.step(TARGET) for _ in range(3)]
    _start(sim)
    sim.set_link_mass("forearm", 3.0)
    sim.set_joint_gain(1, 0.2)
    sim.block_joint(2)
    sim.freeze_camera()
    sim.occlude_camera()
    sim.step(TARGET)
    first = _start(sim)
    assert sim.model.body_mass[sim.model.body("forearm").id] == pytest.approx(0.2)
    replay = [sim.step(TARGET) for _ in range(3)]
    for a, b in zip(reference, replay):
        np.testing.assert_allclose(b.joint_pos, a.joint_pos, atol=1e-9)
        np.testing.assert_array_equal(b.image, a.image)
    assert not np.array_equal(replay[-1].image, first.image)  # camera live again


# ---------------------------------------------------------------------- a user's own MJCF

SCENE = """
<mujoco model="user_arm">
  <compiler angle="radian"/>
  <option timestep="0.002"/>
  <worldbody>
    <light pos="0 0 2" dir="0 0 -1"/>
    <geom name="ground" type="plane" size="1 1 0.1" rgba="0.8 0.8 0.8 1"/>
    <camera name="side_cam" pos="0 -1.2 0.6" xyaxes="1 0 0 0 0.45 0.9" fovy="60"/>
    <body name="link1" pos="0 0 0.3">
      <joint name="j_a" type="hinge" axis="0 0 1" damping="2" {limit_a}/>
      <geom type="capsule" fromto="0 0 0 0.2 0 0" size="0.02" rgba="0 0 1 1" mass="0.2" contype="0" conaffinity="0"/>
      <body name="link2" pos="0.2 0 0">
        <joint name="j_b" type="hinge" axis="0 0 1" damping="2"/>
        <geom type="capsule" fromto="0 0 0 0.15 0 0" size="0.02" rgba="0 1 0 1" mass="0.1" contype="0" conaffinity="0"/>
        <body name="tip" pos="0.15 0 0">
          <joint name="passive" type="hinge" axis="0 0 1" damping="1"/>
          <geom type="sphere" size="0.02" mass="0.01" contype="0" conaffinity="0"/>
        </body>
      </body>
    </body>
    {object}
  </worldbody>
  <actuator>
    <position name="act_a" joint="j_a" kp="20"/>
    <position name="act_b" joint="j_b" kp="20"/>
    <motor name="spin_tip" joint="passive" gear="1"/>
  </actuator>
</mujoco>
"""

BALL = """
    <body name="shelf" pos="-0.4 0 0.05"><geom type="box" size="0.05 0.05 0.05"/></body>
    <body name="ball" pos="0.3 0.3 0.05"><freejoint/><geom type="sphere" size="0.05" rgba="1 0 0 1"/></body>
"""


def _scene(tmp_path, limit_a="", obj=BALL, name="user.xml"):
    path = tmp_path / name
    path.write_text(SCENE.format(limit_a=limit_a, object=obj))
    return str(path)


def test_user_scene_camera_and_joint_names_from_config(tmp_path):
    scene = _scene(tmp_path, limit_a='range="-1 1"')
    s = ArmSim(SimConfig(scene=scene, camera="side_cam", joint_names=["j_b", "j_a"], width=32, height=32))
    assert s.joint_names == ["j_b", "j_a"]
    # j_a is limited by its range; j_b has no range and no ctrlrange: one turn either way.
    np.testing.assert_allclose(s.joint_limits, [[-np.pi, np.pi], [-1.0, 1.0]])
    assert s.has_object
    np.testing.assert_allclose(s.object_xy(), [0.3, 0.3], atol=s.cfg.object_jitter)
    obs = s.reset(seed=0, joint_pos=[0.0, 0.0])
    obs = _drive(s, [0.5, -0.4], 10)  # actions in the configured joint order
    np.testing.assert_allclose(obs.joint_pos, [0.5, -0.4], atol=0.02)
    assert s.data.qpos[s.model.joint("j_a").qposadr[0]] == pytest.approx(-0.4, abs=0.02)
    # The default joints: every position-actuated hinge, in actuator order; the motor-driven tip is not one (a
    # command in radians would be applied to it as a torque), and is named as left out.
    with pytest.warns(UserWarning, match=r"joints \['passive'\] have no <position> actuator"):
        d = ArmSim(SimConfig(scene=scene, camera="side_cam", width=16, height=16))
    assert d.joint_names == ["j_a", "j_b"]


@pytest.mark.filterwarnings("ignore:scene .* have no <position> actuator:UserWarning")  # the tip
def test_user_scene_without_limits_clips_commands_to_one_turn(tmp_path):
    s = ArmSim(SimConfig(scene=_scene(tmp_path), camera="side_cam", width=16, height=16))
    s.reset(seed=0, joint_pos=[0.0, 0.0])
    obs = _drive(s, [5.0, -5.0], 20)
    np.testing.assert_allclose(obs.joint_pos, [np.pi, -np.pi], atol=0.05)


@pytest.mark.filterwarnings("ignore:scene .* have no <position> actuator:UserWarning")  # the tip
def test_user_scene_without_object(tmp_path):
    s = ArmSim(SimConfig(scene=_scene(tmp_path, obj=""), camera="side_cam", width=16, height=16))
    assert not s.has_object
    np.testing.assert_array_equal(s.reset(seed=0).object_xy, [0.0, 0.0])
    np.testing.assert_array_equal(s.object_pos(), [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="no object"):
        s.teleport_object([0.1, 0.1])
    p = ExplorationPolicy(s, push_fraction=1.0, seed=0)
    assert not p.push  # nothing to push
    assert p.act(s.reset(seed=0)).shape == (2,)
    # Without an "ee" site, the end effector is the last arm joint's body.
    np.testing.assert_allclose(s.ee_pos(), s.data.xpos[s.model.body("link2").id])


@pytest.mark.parametrize("cfg, message", [
    (dict(camera="overhead"), "camera 'overhead' not found.*side_cam"),
    (dict(joint_names=["j_a", "wrist"]), "joint 'wrist' not found"),
    (dict(joint_names=["j_a", "passive"]), r"joint 'passive' .* has no position actuator \(a <motor>"),
    (dict(control_dt=0.033), r"control_dt 0.033 s is not a whole number of scene .*physics steps \(0.002 s\)"),
    (dict(object_body="tray"), "object body 'tray' not found"),
    (dict(object_body="shelf"), "'shelf' .* needs a free joint"),
    (dict(ee_site="gripper"), "end-effector site 'gripper' not found"),
])
@pytest.mark.filterwarnings("ignore:scene .* have no <position> actuator:UserWarning")
def test_user_scene_configuration_errors_name_what_is_missing(tmp_path, cfg, message):
    scene = _scene(tmp_path)
    base = dict(scene=scene, camera="side_cam", width=16, height=16)
    with pytest.raises(ValueError, match=message) as e:
        ArmSim(SimConfig(**{**base, **cfg}))
    assert scene in str(e.value)
    # The setting at fault, which the sim node names as its parameter (not always "scene").
    assert e.value.setting == next(iter(cfg))


def test_missing_or_broken_scene_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.xml"):
        ArmSim(SimConfig(scene=str(tmp_path / "nowhere.xml")))
    broken = tmp_path / "broken.xml"
    broken.write_text("<mujoco><worldbody><body></mujoco>")
    with pytest.raises(ValueError, match="cannot load scene"):
        ArmSim(SimConfig(scene=str(broken)))


def test_scene_errors_are_one_line_and_say_what_is_wrong(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"scene {tmp_path} is a directory"):
        ArmSim(SimConfig(scene=str(tmp_path)))
    broken = tmp_path / "broken.xml"  # MuJoCo's error on this spans three lines
    broken.write_text("<mujoco><worldbody><body></worldbdy></mujoco>")
    with pytest.raises(ValueError, match="MuJoCo cannot load scene .*XML_ERROR_MISMATCHED_ELEMENT") as e:
        ArmSim(SimConfig(scene=str(broken)))
    assert "\n" not in str(e.value)
    assert e.value.setting == "scene"  # the SimConfig field, which the sim node names as its parameter


URDF = """<robot name="arm2">
  <link name="base_link"><inertial><mass value="1"/><inertia ixx="0.01" iyy="0.01" izz="0.01" ixy="0" ixz="0" iyz="0"/></inertial></link>
  <link name="l1">
    <visual><origin xyz="0.1 0 0" rpy="0 1.5708 0"/><geometry><cylinder radius="0.02" length="0.2"/></geometry></visual>
    <inertial><origin xyz="0.1 0 0"/><mass value="0.3"/><inertia ixx="0.001" iyy="0.001" izz="0.001" ixy="0" ixz="0" iyz="0"/></inertial>
  </link>
  <joint name="shoulder" type="revolute"><parent link="base_link"/><child link="l1"/><origin xyz="0 0 0.1"/>
    <axis xyz="0 0 1"/><limit lower="-1.5" upper="1.5" effort="10" velocity="2"/><dynamics damping="1"/></joint>
</robot>"""
# The README's wrapper: MuJoCo's <include> takes no URDF; <model> + <attach> does, and adds camera and actuator.
URDF_WRAPPER = """<mujoco>
  <asset><model name="arm" file="arm2.urdf"/></asset>
  <worldbody>
    <light pos="0 0 1.5" dir="0 0 -1"/>
    <camera name="front_cam" pos="0 -0.7 0.6" xyaxes="1 0 0 0 0.65 0.76"/>
    <body name="mount"><attach model="arm" body="base_link" prefix=""/></body>
  </worldbody>
  <actuator><position joint="shoulder" kp="30"/></actuator>
</mujoco>"""


def test_a_urdf_runs_in_the_readme_wrapper_and_alone_is_told_to_use_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo logs its warning on prefix="" to MUJOCO_LOG.TXT in the current directory
    (tmp_path / "arm2.urdf").write_text(URDF)
    with pytest.raises(ValueError, match="a URDF has no cameras: wrap it in an MJCF") as e:
        ArmSim(SimConfig(scene=str(tmp_path / "arm2.urdf"), camera="front_cam"))
    assert e.value.setting == "camera"
    (tmp_path / "arm.xml").write_text(URDF_WRAPPER)
    s = ArmSim(SimConfig(scene=str(tmp_path / "arm.xml"), camera="front_cam", width=16, height=16))
    assert s.joint_names == ["shoulder"] and not s.has_object
    np.testing.assert_allclose(s.joint_limits, [[-1.5, 1.5]])
    s.reset(seed=0, joint_pos=[0.0])
    np.testing.assert_allclose(_drive(s, [0.8], 20).joint_pos, [0.8], atol=0.02)


def test_a_joint_without_a_position_actuator_is_left_out_with_a_warning(tmp_path):
    from user_robot import write_scene

    scene = str(write_scene(tmp_path / "arm.xml", wrist_actuated=False))
    with pytest.warns(UserWarning, match=r"joints \['j_wrist'\] have no <position> actuator.*still move in the images"):
        s = ArmSim(SimConfig(scene=scene, camera="front_cam", width=16, height=16))
    assert s.joint_names == ["j_yaw", "j_pitch"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the joints named: nothing is left out unsaid
        assert ArmSim(SimConfig(scene=scene, camera="front_cam", joint_names=["j_pitch"], width=16, height=16)).n_joints == 1


def test_collect_records_the_scene_joints_and_site_for_eval_from_anywhere(tmp_path, monkeypatch):
    import yaml

    from jepa_wm.cli import main
    from jepa_wm.eval.common import make_sim
    from user_robot import write_scene

    scene = write_scene(tmp_path / "scenes" / "arm.xml")
    monkeypatch.chdir(tmp_path)
    assert main(["collect", "--out", "data", "--episodes", "1", "--steps", "2", "--scene", "scenes/arm.xml",
                 "--camera", "front_cam", "--joint-names", "j_wrist,j_yaw", "--ee-site", "tip",
                 "--width", "16", "--height", "16"]) == 0
    sim = yaml.safe_load((tmp_path / "data" / "collect_00000.yaml").read_text())["sim"]
    assert sim["scene"] == str(scene.resolve()) and sim["joint_names"] == ["j_wrist", "j_yaw"] and sim["ee_site"] == "tip"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # eval, calibrate and demo run from anywhere
    assert make_sim({"sim": sim}).joint_names == ["j_wrist", "j_yaw"]


@pytest.mark.parametrize("flags, message", [
    (["--ee-site", "gripper"], "jepa-wm collect: error: end-effector site 'gripper' not found in scene"),
    (["--joint-names", "j_yaw,,j_pitch"], "argument --joint-names: 'j_yaw,,j_pitch' is not a comma-separated list"),
])
def test_collect_refuses_a_bad_site_or_joint_list(tmp_path, capsys, flags, message):
    from jepa_wm.cli import main
    from user_robot import write_scene

    scene = str(write_scene(tmp_path / "arm.xml"))
    argv = ["collect", "--out", str(tmp_path / "data"), "--episodes", "1", "--steps", "2", "--scene", scene,
            "--camera", "front_cam", "--width", "16", "--height", "16", *flags]
    try:
        assert main(argv) == 2
    except SystemExit as e:  # argparse: a usage error
        assert e.code == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------- exploration policy and IK


def test_solve_ik_reaches_a_reachable_point_within_limits(sim):
    _start(sim)
    goal_q = np.array([0.4, 0.1, 0.9])
    target = sim.ee_at(goal_q)
    q, residual = solve_ik(sim, target, START)
    assert residual < 0.005
    np.testing.assert_allclose(sim.ee_at(q), target, atol=0.005)
    lo, hi = sim.joint_limits[:, 0], sim.joint_limits[:, 1]
    assert np.all(q >= lo) and np.all(q <= hi)
    # Out of reach: the best effort stays within limits and says how far it is.
    q, residual = solve_ik(sim, [2.0, 0.0, 0.0], START)
    assert residual > 1.0
    assert np.all(q >= lo) and np.all(q <= hi)
    np.testing.assert_array_equal(sim.joint_state()[0], START)  # IK does not move the arm


def _rollout(sim, seed, steps, push_fraction=0.0, max_step=0.15):
    obs = sim.reset(seed=seed)
    policy = ExplorationPolicy(sim, push_fraction=push_fraction, max_step=max_step, seed=seed)
    start_xy = obs.object_xy.copy()
    commands = [obs.joint_pos]
    for _ in range(steps):
        a = policy.act(obs)
        commands.append(a)
        obs = sim.step(a)
    return np.array(commands), obs, start_xy, policy


def test_exploration_is_smooth_within_limits_and_deterministic(sim):
    cmds, _, _, _ = _rollout(sim, seed=3, steps=25, max_step=0.1)
    steps = np.abs(np.diff(cmds, axis=0))
    assert steps.max() <= 0.1 + 1e-9
    assert steps.max() > 0.09  # it does move
    lo, hi = sim.joint_limits[:, 0], sim.joint_limits[:, 1]
    assert np.all(cmds >= lo) and np.all(cmds <= hi)
    assert np.ptp(cmds, axis=0).max() > 0.5  # explores, not jitter
    again, _, _, _ = _rollout(sim, seed=3, steps=25, max_step=0.1)
    np.testing.assert_array_equal(again, cmds)
    other, _, _, _ = _rollout(sim, seed=4, steps=25, max_step=0.1)
    assert not np.allclose(other, cmds)


def test_exploration_does_not_drag_the_arm_over_the_table(sim):
    # Commands along a path through the table are not followed: the data would show
    # joints that ignore their commands (9% of steps did before paths were checked).
    cmds = np.concatenate([_rollout(sim, seed=s, steps=60)[0][1:] for s in range(4)])
    in_contact = np.mean([not sim.collision_free(q) for q in cmds])
    assert in_contact <= 0.02, f"{in_contact:.1%} of exploration commands put the arm into the table"


def test_push_episodes_move_the_object(sim):
    _, obs, start_xy, policy = _rollout(sim, seed=0, steps=30, push_fraction=1.0)
    assert policy.push
    assert np.linalg.norm(obs.object_xy - start_xy) > 0.05
    assert not ExplorationPolicy(sim, push_fraction=0.0, seed=0).push


def test_a_changed_robot_persists_across_resets():
    changed = ArmSim(SimConfig(width=32, height=32, joint_offset=[0.0, 0.25, -0.25], joint_gain_scale=[0.5, 1.0, 1.0],
                               added_mass={"pusher": 0.2}))
    for _ in range(2):  # the change survives reset(), unlike a perturbation
        changed.reset(seed=0, joint_pos=START, object_xy=OBJECT_XY)
        q = _drive(changed, START, 10).joint_pos
        np.testing.assert_allclose(q[1:], START[1:] + [0.25, -0.25], atol=0.04)  # settles at command + offset
    nominal = ArmSim(SimConfig(width=32, height=32))
    pusher = nominal.model.body("pusher").id
    assert changed.model.body_mass[pusher] == pytest.approx(nominal.model.body_mass[pusher] + 0.2)
    with pytest.raises(ValueError, match="joint_offset has 2 values"):
        ArmSim(SimConfig(joint_offset=[0.1, 0.2]))
    with pytest.raises(ValueError, match="not in the scene"):
        ArmSim(SimConfig(added_mass={"gripper": 1.0}))
