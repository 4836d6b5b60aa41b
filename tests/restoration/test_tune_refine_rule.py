"""The rule scripts/tune_refine.py picks the refinement defaults by."""
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("tune_refine", Path(__file__).parents[2] / "scripts" / "tune_refine.py")
tune_refine = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tune_refine)


def _s(name, wins, change, n=10):
    return {"setting": name, "wins": wins, "n": n, "mean_psnr_change": change}


def test_least_psnr_loss_among_settings_with_enough_wins():
    summary = [_s("most wins", 10, -0.45), _s("enough", 8, -0.2), _s("too few", 7, -0.05), _s("too lossy", 9, -0.6)]
    assert tune_refine.choose(summary, 0.8)["setting"] == "enough"
    assert tune_refine.choose(summary, 0.7)["setting"] == "too few"


def test_none_when_nothing_qualifies():
    assert tune_refine.choose([_s("lossy", 10, -0.51), _s("loses", 5, 0.0)], 0.8) is None
