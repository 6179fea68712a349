"""The embedded MuJoCo simulator (`arm`) and the exploration policy that collects training data (`explore`).

ROS-free: the simulator node in jepa_wm.nodes wraps it in topics.
"""
