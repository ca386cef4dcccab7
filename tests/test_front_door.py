"""The front door: ``import drasclr_toolkit as dt`` gives the notebook's names, lazily."""

import subprocess
import sys

import pytest

import drasclr_toolkit as dt


def test_the_import_itself_loads_no_heavy_library():
    code = ("import sys, drasclr_toolkit as dt; "
            "print(sorted(m for m in ('torch', 'monai', 'SimpleITK', 'sklearn', 'pandas') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("name", dt.__all__)
def test_every_front_door_name_is_the_sub_package_object(name):
    obj = getattr(dt, name)
    module = sys.modules[dt._FRONT_DOOR[name]]
    assert obj is getattr(module, name)
    assert name in dir(dt)


def test_an_unknown_name_says_what_the_front_door_offers():
    with pytest.raises(AttributeError, match="front door offers .*Workspace"):
        dt.not_a_name  # noqa: B018
