"""A user's own robot for the tests: a small MJCF arm that is not the builtin one, and a tiny random-weight
checkpoint "trained" in it (its meta["sim"] names the scene, as `jepa-wm collect` + `train` record it)."""

from pathlib import Path

SCENE = """
<mujoco model="user_arm">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.002"/>
  <worldbody>
    <light pos="0 0 1.5" dir="0 0 -1"/>
    <geom name="tabletop" type="box" size="0.4 0.4 0.05" pos="0.2 0 -0.05" rgba="0.8 0.8 0.7 1" conaffinity="3"/>
    <camera name="front_cam" pos="0.2 -0.7 0.6" xyaxes="1 0 0 0 0.65 0.76" fovy="60"/>
    <body name="link1" pos="0 0 0.06">
      <joint name="j_yaw" type="hinge" axis="0 0 1" range="-1.5 1.5" damping="1"/>
      <geom type="cylinder" size="0.03 0.04" pos="0 0 0.04" mass="0.4" contype="2" conaffinity="0"/>
      <body name="link2" pos="0 0 0.08">
        <joint name="j_pitch" type="hinge" axis="0 1 0" range="-0.3 1.2" damping="1"/>
        <geom type="capsule" fromto="0 0 0 0.2 0 0" size="0.02" mass="0.3" rgba="0.9 0.2 0.2 1" contype="2" conaffinity="0"/>
        <body name="link3" pos="0.2 0 0">
          <joint name="j_wrist" type="hinge" axis="0 1 0" range="-1 1" damping="1"/>
          <geom type="capsule" fromto="0 0 0 0.08 0 0" size="0.015" mass="0.05" rgba="0.9 0.9 0.1 1" contype="2" conaffinity="0"/>
          <site name="tip" pos="0.08 0 0"/>
        </body>
      </body>
    </body>
    {object}
  </worldbody>
  <actuator>
    <position joint="j_yaw" kp="30"/>
    <position joint="j_pitch" kp="60"/>
    {wrist}
  </actuator>
</mujoco>
"""
BOX = '<body name="box" pos="0.3 0.05 0.03"><freejoint/><geom type="box" size="0.03 0.03 0.03" mass="0.1" conaffinity="3"/></body>'
WRIST = '<position joint="j_wrist" kp="10"/>'
JOINTS = ["j_yaw", "j_pitch", "j_wrist"]


def write_scene(path: Path, with_object: bool = True, wrist_actuated: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SCENE.format(object=BOX if with_object else "", wrist=WRIST if wrist_actuated else ""))
    return path


def write_checkpoint(path: Path, scene, joints=JOINTS) -> Path:
    """A tiny random-weight model for `joints`, with surprise calibration, whose meta["sim"] names `scene`."""
    import torch

    from jepa_wm.core.checkpoint import save_checkpoint
    from jepa_wm.core.config import ModelConfig
    from jepa_wm.core.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny", action_dim=len(joints))).eval()
    n = len(joints)
    meta = {
        "joint_names": list(joints), "action_low": [-1.0] * n, "action_high": [1.0] * n, "step_s": 0.1,
        "surprise": {"scale": 1e-3, "threshold": 5.0, "quantile": 0.999, "consecutive": 2,
                     "false_trip_rate": 0.0, "instant": 1000.0},
        "sim": {"scene": str(scene), "camera": "front_cam", "joint_names": [], "object_body": "", "width": 32,
                "height": 32, "control_dt": 0.1, "seed": 0, "ee_site": "tip"},
    }
    return save_checkpoint(path, model, meta)
