"""Data without ROS: image decoding (`images`), rosbag2 reading and writing (`bags`), episodes and clips (`dataset`).

`images` is imported by the ROS nodes too, so it depends on numpy and OpenCV only.
"""
