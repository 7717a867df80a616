from pathlib import Path

import pytest

from lightning_modules.classification.transfer_report import compare, curve_stats, plot


def _hist(values):
    return [{"epoch": i, "val_acc1": v} for i, v in enumerate(values)]


def test_curve_stats_start_slope_asymptote() -> None:
    s = curve_stats(_hist([0.2, 0.4, 0.5, 0.45]), early=3)
    assert s.start == 0.2 and s.asymptote == 0.5 and s.epochs == 4
    assert s.slope == pytest.approx((0.5 - 0.2) / 2)


def test_compare_gives_transfer_minus_scratch(tmp_path: Path) -> None:
    t, s = _hist([0.5, 0.7, 0.8]), _hist([0.2, 0.3, 0.5])
    c = compare(t, s, early=3)
    assert c["gain_start"] == pytest.approx(0.3)
    assert c["gain_asymptote"] == pytest.approx(0.3)
    assert c["gain_slope"] == pytest.approx(0.15 - 0.15)
    out = plot({"transfer": t, "scratch": s}, tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_history_is_an_error() -> None:
    with pytest.raises(ValueError, match="val_acc1"):
        curve_stats([{"epoch": 0, "val_loss": 1.0}])
