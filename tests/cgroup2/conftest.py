"""The E2E fixtures (tests/e2e/conftest.py: real Nomad agents, the plugin, leftover checks)
for the cgroup v2 lane's own modules, loaded under another name so both conftests can be in
one pytest session."""
import importlib.util
import os
import sys

_E2E = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "e2e")
sys.path.insert(0, _E2E)
_spec = importlib.util.spec_from_file_location("nde_e2e_conftest", os.path.join(_E2E, "conftest.py"))
_e2e = importlib.util.module_from_spec(_spec)
sys.modules["nde_e2e_conftest"] = _e2e
_spec.loader.exec_module(_e2e)
globals().update({k: v for k, v in vars(_e2e).items() if not k.startswith("__")})
