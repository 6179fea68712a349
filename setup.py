from glob import glob

from setuptools import find_packages, setup

PACKAGE = "jepa_wm"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="JEPA + SIGReg latent world model that plans joint commands for ROS 2 arms",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["sim/assets/*.xml"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",  # on a CPU-only machine install torch==2.13.0 first (README)
        "numpy",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "safetensors",
        "mujoco>=3.1",
        "rosbags>=0.10",
        "onnx",
        "onnxruntime",
        "pillow",
        "opencv-python-headless",
    ],
    extras_require={
        "test": ["pytest"],
        "tensorrt": ["tensorrt>=10.0", "cuda-python"],
    },
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/models", glob("models/*")),
        # Node executables: where ros2 launch looks for them, under colcon and pip alike.
        (f"lib/{PACKAGE}", glob("scripts/*")),
    ],
    entry_points={"console_scripts": ["jepa-wm = jepa_wm.cli:main"]},
)
