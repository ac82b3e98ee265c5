"""Machines as cited data: YAML profiles validated into `simulator.hardware.HardwareProfile`.

Each shipped `<name>.yaml` cites the source of every number (REFERENCE.md §2, vendor sheets, or a stated assumption).
"""

from hardware_profiles.schema import list_profiles, load_profile

__all__ = ["list_profiles", "load_profile"]
