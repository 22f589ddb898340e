"""What ``ros2 launch PACKAGE FILE a:=b ...`` does, for tests: the real launch.LaunchService.

ros2cli cannot be installed from PyPI; this is the part of ``ros2launch`` (launch_a_launch_file)
that matters here: parse ``name:=value`` arguments, include the launch file, run until SIGINT.
Usage: python ros2_launch.py FILE.launch.py [name:=value ...]
"""

from __future__ import annotations

import sys

import launch
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import AnyLaunchDescriptionSource


def main(argv: list[str]) -> int:
    """Run one launch file with ``name:=value`` arguments; the LaunchService's exit code."""
    path, rest = argv[0], argv[1:]
    args = [tuple(a.split(":=", 1)) for a in rest]
    service = launch.LaunchService(argv=rest, noninteractive=True)
    service.include_launch_description(launch.LaunchDescription([
        IncludeLaunchDescription(AnyLaunchDescriptionSource(path), launch_arguments=args),
    ]))
    return service.run()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
