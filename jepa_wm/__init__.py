"""jepa_wm: a JEPA + SIGReg latent world model that plans for ROS 2 arms.

`jepa_wm.core` (model, SIGReg, planner, surprise, checkpoints), `jepa_wm.sim`,
`jepa_wm.data`, `jepa_wm.train` and `jepa_wm.backends` never import rclpy;
only `jepa_wm.nodes` does.
"""

__version__ = "0.1.0"
