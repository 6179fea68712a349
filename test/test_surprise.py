"""Surprise flags injected events, not nominal noise, at the rate calibration promises."""

import numpy as np
import pytest

from jepa_wm.core.surprise import (
    SurpriseDetector, calibrate, detect_offline, fit_whitening, frame_spacing_problem, residual_error, surprise_score,
)


def nominal_errors(rng, n):
    # Prediction errors of a good model: positive, right-skewed (chi-square-like).
    return rng.chisquare(8, size=n) / 8 * 0.02


def test_score_is_normalised_mse_per_frame():
    pred = np.zeros((4, 8))
    obs = np.ones((4, 8)) * np.arange(4)[:, None]
    np.testing.assert_allclose(surprise_score(pred, obs, scale=2.0), [0.0, 0.5, 2.0, 4.5])
    assert isinstance(surprise_score(pred[0], obs[1]), float)
    with pytest.raises(ValueError, match="shape"):
        surprise_score(np.zeros(8), np.zeros(7))


def test_calibrated_detector_ignores_nominal_noise_and_catches_events_within_two_frames():
    rng = np.random.default_rng(0)
    cal = calibrate(nominal_errors(rng, 20000), quantile=0.999, margin=1.5, consecutive=2)
    assert 0.8 < cal.scale / 0.02 < 1.1  # the median of the nominal errors
    # Fresh nominal episodes: no stop at all.
    fresh = nominal_errors(rng, 50 * 100) / cal.scale
    assert not detect_offline(fresh, cal.threshold, cal.consecutive, [100] * 50).any()
    # A moderate event (errors x 8 from frame 40) trips on its second frame; a violent one (x 50) on its first.
    episode = nominal_errors(rng, 100)
    moderate, violent = episode.copy(), episode.copy()
    moderate[40:] = np.maximum(moderate[40:], 0.02) * 8
    violent[40:] = np.maximum(violent[40:], 0.02) * 50
    assert detect_offline(moderate / cal.scale, cal.threshold, cal.consecutive).argmax() == 41
    assert detect_offline(violent / cal.scale, cal.threshold, cal.consecutive).argmax() == 40


def test_single_noisy_frame_does_not_trip_but_two_in_a_row_do():
    det = SurpriseDetector(threshold=5.0, consecutive=2, instant=3.0)
    assert [det.update(s) for s in [1, 9, 1, 9, 1]] == [False] * 5
    assert [det.update(s) for s in [9, 9]] == [False, True]
    det.reset()
    assert det.update(9) is False


def test_one_frame_far_beyond_the_threshold_trips_at_once():
    det = SurpriseDetector(threshold=5.0, consecutive=2, instant=3.0)
    assert det.update(14.9) is False
    det.reset()
    assert det.update(15.1) is True


def test_nan_score_trips_at_once():
    # A NaN means a broken frame or model: never nominal.
    assert SurpriseDetector(threshold=5.0, consecutive=2).update(float("nan")) is True


def test_false_trip_rate_matches_the_quantile():
    rng = np.random.default_rng(1)
    cal = calibrate(nominal_errors(rng, 20000), quantile=0.95, margin=1.0, consecutive=1)
    assert 0.04 < cal.false_trip_rate < 0.06
    with pytest.raises(ValueError, match="at least 20"):
        calibrate([0.1] * 5)


def test_whitened_score_sees_a_shift_along_a_quiet_direction():
    # Nominal residuals: large along the first latent direction (an object sliding), tiny along the rest.
    rng = np.random.default_rng(2)
    nominal = rng.normal(size=(4000, 8)) * np.array([1.0] + [0.05] * 7)
    w = fit_whitening(nominal)
    cal_plain = calibrate(residual_error(nominal), quantile=1.0, margin=1.2, consecutive=1)
    cal_white = calibrate(residual_error(nominal, w), quantile=1.0, margin=1.2, consecutive=1, whitening=w)
    assert cal_white.whitening is not None and len(cal_white.whitening) == 8
    jam = np.zeros(8)
    jam[3] = 0.5  # ten nominal standard deviations along a quiet direction
    assert surprise_score(jam, np.zeros(8), cal_plain.scale) < cal_plain.threshold  # lost in the object's noise
    assert surprise_score(jam, np.zeros(8), cal_white.scale, cal_white.whitening) > cal_white.threshold
    with pytest.raises(ValueError, match="at least 16 nominal frames"):
        fit_whitening(nominal[:10])
    with pytest.raises(ValueError, match="latent dimension 7"):
        surprise_score(np.zeros(7), np.zeros(7), 1.0, w)


@pytest.mark.parametrize("hz, matches", [(10, True), (20, True), (30, True), (29.97, True), (5, False), (15, False)])
def test_a_camera_rate_whose_period_does_not_divide_the_step_is_named(hz, matches):
    # Predictions are 0.1 s ahead and must meet a frame within 0.03 s: a 5 or 15 Hz camera never gives one.
    stamps = (np.arange(20) * 1e9 / hz).astype(np.int64)
    problem = frame_spacing_problem(stamps, 0.1, 0.03)
    assert (problem == "") == matches, problem
    if not matches:
        assert f"camera frames come every {1 / hz:.3f} s (median)" in problem and "no prediction can be scored" in problem
    assert frame_spacing_problem(stamps[:4], 0.1, 0.03) == ""  # too few frames to tell
