"""The constant-velocity Kalman filter: hand-computed steps, smoothing, gating, expiry, time,
and the correlated-error state that keeps it calibrated when errors persist along a track."""

from __future__ import annotations

import numpy as np
import pytest

from training.tracking import (
    STATE_VERSION,
    TrackerConfig,
    TrackState,
    adapt_scale,
    average_novelty,
    chi2_2dof_quantile,
    predict,
    process_noise,
    smooth,
    start,
    step,
    track,
    update,
)

EYE2 = np.eye(2)
WHITE = TrackerConfig(error_share=0.0)
"""The plain filter (independent measurement errors): the hand computations below."""


def test_chi2_quantile_matches_known_values() -> None:
    assert chi2_2dof_quantile(0.99) == pytest.approx(9.2103, abs=1e-4)
    assert chi2_2dof_quantile(0.95) == pytest.approx(5.9915, abs=1e-4)
    with pytest.raises(ValueError):
        chi2_2dof_quantile(1.0)


def test_predict_and_update_match_a_hand_computation() -> None:
    config = TrackerConfig(accel_psd=1.0, init_speed_sigma=1.0, error_share=0.0)
    s0 = start(0.0, np.zeros(2), EYE2, config)
    assert np.allclose(s0.cov[:4, :4], np.eye(4)) and np.allclose(s0.mean, 0.0)
    assert np.allclose(s0.cov[4:], 0.0)  # no correlated error: the error state stays 0
    p = predict(s0, 1.0, config)
    # per axis: F P F' = [[2, 1], [1, 1]], Q = [[1/3, 1/2], [1/2, 1]]
    assert p.cov[0, 0] == pytest.approx(7 / 3) and p.cov[0, 2] == pytest.approx(1.5)
    assert p.cov[2, 2] == pytest.approx(2.0) and p.cov[0, 1] == pytest.approx(0.0)
    u = update(p, np.array([1.0, 0.0]), EYE2)
    # S = 7/3 + 1 = 10/3, K = [0.7, 0.45] on the x axis
    assert u.mean == pytest.approx([0.7, 0.0, 0.45, 0.0, 0.0, 0.0])
    assert u.cov[0, 0] == pytest.approx(0.7) and u.cov[0, 2] == pytest.approx(0.45)
    assert u.cov[2, 2] == pytest.approx(2.0 - 0.45 * 1.5)
    assert u.updates == 2 and u.time == 1.0
    r = step(s0, 1.0, [1.0, 0.0], EYE2, config)
    assert r.distance2 == pytest.approx(0.3) and not r.gated
    assert np.allclose(r.state.mean, u.mean) and np.allclose(r.state.cov, u.cov)


def test_process_noise_is_the_white_acceleration_model() -> None:
    q = process_noise(0.5, 2.0)
    assert q[0, 0] == pytest.approx(2.0 * 0.5**3 / 3) and q[1, 3] == pytest.approx(2.0 * 0.125)
    assert np.allclose(q, q.T) and np.all(np.linalg.eigvalsh(q) >= -1e-12)


def _line(n: int, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.arange(n) / 10.0
    truth = np.column_stack([2.0 + 1.2 * t, 3.0 + 0.5 * t])
    noisy = truth + np.random.default_rng(seed).normal(0.0, sigma, truth.shape)
    return t, truth, noisy


def test_straight_line_filtered_error_is_well_below_the_measurement_error() -> None:
    t, truth, noisy = _line(600, 1.0, seed=0)
    out = track(t, noisy, np.repeat(EYE2[None], len(t), axis=0), WHITE)
    burn = 20
    raw = np.linalg.norm(noisy - truth, axis=1)[burn:].mean()
    filtered = np.linalg.norm(out.position - truth, axis=1)[burn:].mean()
    assert filtered < 0.5 * raw, (filtered, raw)
    assert np.allclose(out.velocity[-100:].mean(axis=0), [1.2, 0.5], atol=0.2)
    # a 99 % gate drops about 1 % of measurements that do follow the model
    assert out.gated.mean() < 0.03 and out.reset[0] == "new" and "gated" not in out.reset


def test_filtered_covariance_is_consistent_on_a_constant_velocity_process() -> None:
    # Truth follows the filter's own model: the squared Mahalanobis error averages 2.
    rng = np.random.default_rng(3)
    config = TrackerConfig(accel_psd=0.5, error_share=0.0)
    dt, n = 0.1, 4000
    x = np.zeros(4)
    truth = np.empty((n, 2))
    for i in range(n):
        x = x + np.array([x[2] * dt, x[3] * dt, 0.0, 0.0])
        x[2:] += rng.normal(0.0, np.sqrt(config.accel_psd * dt), 2)
        truth[i] = x[:2]
    noisy = truth + rng.normal(0.0, 0.8, truth.shape)
    out = track(np.arange(n) * dt, noisy, np.repeat(0.64 * EYE2[None], n, axis=0), config)
    err = out.position - truth
    nees = np.einsum("ni,nij,nj->n", err, np.linalg.inv(out.cov), err)[100:]
    assert 1.7 < nees.mean() < 2.3, nees.mean()
    assert 0.82 < np.mean(nees <= 4.0) < 0.91  # 2-sigma: 86.5 %


def test_a_50_m_jump_is_gated_then_the_track_restarts_after_max_gated() -> None:
    config = TrackerConfig(max_gated=3, error_share=0.0)  # the measurements are white
    rng = np.random.default_rng(1)
    state = None
    t = 0.0
    for _ in range(30):
        state = step(state, t, rng.normal(5.0, 0.3, 2), 0.09 * EYE2, config).state
        t += 0.1
    assert state is not None
    before = state.mean[:2].copy()
    for k in range(3):
        r = step(state, t, [55.0, 5.0], 0.09 * EYE2, config)
        assert r.gated and r.reset is None and r.distance2 is not None and r.distance2 > 100
        assert np.linalg.norm(r.state.mean[:2] - before) < 1.0
        assert r.state.gated_run == k + 1
        state, t = r.state, t + 0.1
    r = step(state, t, [55.0, 5.0], 0.09 * EYE2, config)
    assert r.gated and r.reset == "gated"
    assert np.allclose(r.state.mean, [55.0, 5.0, 0, 0, 0, 0]) and r.state.gated_run == 0
    # one good measurement in between ends the gated run
    r2 = step(r.state, t + 0.1, [55.1, 5.0], 0.09 * EYE2, config)
    assert not r2.gated and r2.state.gated_run == 0


def test_expiry_restarts_and_stale_measurements_are_ignored() -> None:
    config = TrackerConfig(expiry_s=10.0)
    s = step(None, 100.0, [1.0, 1.0], EYE2, config).state
    s = step(s, 101.0, [2.0, 1.0], EYE2, config).state
    for t in (101.0, 100.5):
        r = step(s, t, [9.0, 9.0], EYE2, config)
        assert r.stale and not r.gated and r.state is s
    r = step(s, 111.5, [30.0, 1.0], EYE2, config)
    assert r.reset == "expired" and r.state.started == 111.5 and r.state.age_s == 0.0
    assert np.allclose(r.state.mean, [30.0, 1.0, 0, 0, 0, 0])
    assert step(s, 110.9, [2.5, 1.0], EYE2, config).reset is None


def test_state_round_trips_through_json_data() -> None:
    s = step(None, 5.0, [1.0, 2.0], np.diag([0.5, 0.2]), TrackerConfig()).state
    back = TrackState.from_dict(s.to_dict())
    assert np.array_equal(back.mean, s.mean) and np.array_equal(back.cov, s.cov)
    assert (back.time, back.started, back.updates) == (5.0, 5.0, 1)
    assert s.to_dict()["version"] == STATE_VERSION
    with pytest.raises(ValueError, match="malformed"):
        TrackState.from_dict({"version": STATE_VERSION, "mean": [1, 2], "cov": [], "time": 0})
    # a record of the 4-D filter before the error state (no version) is refused cleanly
    old = {"mean": [1, 2, 0, 0], "cov": np.eye(4).tolist(), "time": 5.0, "started": 5.0}
    with pytest.raises(ValueError, match="version None"):
        TrackState.from_dict({**old, "gated_run": 0, "updates": 1})
    # the averaged out-of-site score travels too; records written before it have none
    scored = step(None, 5.0, [1.0, 2.0], EYE2, TrackerConfig(), novelty=0.4).state
    assert TrackState.from_dict(scored.to_dict()).novelty == 0.4
    record = scored.to_dict()
    del record["novelty"]
    assert TrackState.from_dict(record).novelty is None
    for bad in (-1.0, float("nan"), "far"):
        with pytest.raises(ValueError, match="malformed"):
            TrackState.from_dict({**record, "novelty": bad})
    # so does the adaptive noise scale; records written before it read as 1
    scaled = TrackState.from_dict({**record, "scale": 2.5})
    assert scaled.scale == 2.5 and TrackState.from_dict(scaled.to_dict()).scale == 2.5
    assert TrackState.from_dict(record | {"scale": 1.0}).scale == 1.0
    del record["scale"]
    assert TrackState.from_dict(record).scale == 1.0
    for bad in (0.5, float("inf"), "big"):
        with pytest.raises(ValueError, match="malformed"):
            TrackState.from_dict({**record, "scale": bad})


@pytest.mark.parametrize(
    ("z", "r"),
    [
        ([1.0, np.nan], EYE2),
        ([1.0, 2.0, 3.0], EYE2),
        ([1.0, 2.0], np.diag([1.0, -1.0])),
        ([1.0, 2.0], np.zeros((2, 2))),
    ],
)
def test_bad_measurements_are_refused(z: list[float], r: np.ndarray) -> None:
    with pytest.raises(ValueError):
        step(None, 0.0, z, r, TrackerConfig())


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="accel_psd"):
        TrackerConfig(accel_psd=0.0)
    with pytest.raises(ValueError, match="error_share"):
        TrackerConfig(error_share=1.0)
    with pytest.raises(ValueError, match="error_length_m"):
        TrackerConfig(error_length_m=0.0)
    with pytest.raises(ValueError):
        TrackerConfig(gate_probability=1.5)
    assert TrackerConfig().gate == pytest.approx(9.2103, abs=1e-4)
    with pytest.raises(ValueError, match="error_length_spacings"):
        TrackerConfig(error_length_spacings=-1.0)
    with pytest.raises(ValueError, match="novelty_time_s"):
        TrackerConfig(novelty_time_s=-1.0)
    with pytest.raises(ValueError, match="noise_time_s"):
        TrackerConfig(noise_time_s=-1.0)
    with pytest.raises(ValueError, match="noise_scale_max"):
        TrackerConfig(noise_scale_max=0.5)


def test_a_sites_error_length_is_its_label_spacing_times_the_setting() -> None:
    config = TrackerConfig(error_length_m=1.8, error_length_spacings=3.0)
    assert config.for_site(0.25).error_length_m == pytest.approx(0.75)
    assert config.for_site(0.25).error_share == config.error_share  # only the length
    assert config.for_site(None) is config  # a version without a spacing: the setting
    off = TrackerConfig(error_length_spacings=0.0)
    assert off.for_site(0.25).error_length_m == off.error_length_m
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="label spacing"):
            config.for_site(bad)


def test_a_shorter_error_length_lets_a_walking_track_average_more() -> None:
    # errors that decorrelate over 0.5 m: filtered with that length the track gains more
    # over its measurements than with a 5 m one (which takes them as one persistent error)
    t, truth, meas, covs = _walk_with_correlated_errors(seed=3, share=0.85, length=0.5)
    near = track(t, meas, covs, TrackerConfig(error_share=0.85).for_site(0.5 / 3.0))
    far = track(t, meas, covs, TrackerConfig(error_share=0.85, error_length_m=5.0))
    me_near = np.linalg.norm(near.position - truth, axis=1)[50:].mean()
    me_far = np.linalg.norm(far.position - truth, axis=1)[50:].mean()
    assert me_near < 0.95 * me_far, (me_near, me_far)


def test_noise_scale_inflates_the_measurement_covariance() -> None:
    r = np.diag([0.5, 0.2])
    plain = step(None, 0.0, [1.0, 2.0], r, TrackerConfig()).state
    scaled = step(None, 0.0, [1.0, 2.0], r, TrackerConfig(noise_scale=4.0)).state
    assert np.allclose(plain.cov[:2, :2], r) and np.allclose(scaled.cov[:2, :2], 4 * r)


def _walk_with_correlated_errors(
    seed: int, share: float, length: float, n: int = 3000
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A UE walking at 0.6-1.8 m/s with turns and stops (10 Hz), measured with sigmas
    around 1 m (drawn per 10 s leg), whose errors are a white part plus an AR(1) part with
    the correlation of an exponential error field over the distance walked:
    (times, truth, measured, covs)."""
    rng = np.random.default_rng(seed)
    dt = 0.1
    heading, pos, speed, sig = 0.0, np.zeros(2), 1.2, np.ones(2)
    truth, meas, covs = np.empty((n, 2)), np.empty((n, 2)), np.empty((n, 2, 2))
    b = np.zeros(2)
    for i in range(n):
        if i % 100 == 0:
            heading += rng.uniform(-2.0, 2.0)
            speed = 0.0 if rng.random() < 0.2 else rng.uniform(0.6, 1.8)
            sig = np.exp(rng.normal(0.0, 0.3, 2))
        pos = pos + speed * dt * np.array([np.cos(heading), np.sin(heading)])
        r = np.diag(sig**2)
        rho = np.exp(-speed * dt / length)
        # the correlated part keeps unit-scale innovations, scaled by this step's sigma
        b = rho * b + np.sqrt(1.0 - rho**2) * rng.normal(0.0, 1.0, 2)
        white = rng.normal(0.0, 1.0, 2)
        truth[i] = pos
        meas[i] = pos + sig * (np.sqrt(share) * b + np.sqrt(1.0 - share) * white)
        covs[i] = r
    return np.arange(n) * dt, truth, meas, covs


def test_the_error_state_keeps_the_track_calibrated_where_white_noise_is_overconfident() -> None:
    t, truth, meas, covs = _walk_with_correlated_errors(seed=5, share=0.7, length=2.5)
    coloured = track(t, meas, covs, TrackerConfig(error_share=0.7, error_length_m=2.5))
    white = track(t, meas, covs, WHITE)

    def cover(out: object) -> tuple[float, float, float]:
        err = out.position - truth  # type: ignore[attr-defined]
        d2 = np.einsum("ni,nij,nj->n", err, np.linalg.inv(out.cov), err)[50:]  # type: ignore[attr-defined]
        return (
            float(np.mean(d2 <= 1.0)),
            float(np.mean(d2 <= 4.0)),
            float(np.linalg.norm(err, axis=1)[50:].mean()),
        )

    c1, c2, c_me = cover(coloured)
    w1, w2, w_me = cover(white)
    assert abs(c1 - 0.393) < 0.06 and abs(c2 - 0.865) < 0.04, (c1, c2)
    assert w1 < 0.25 and w2 < 0.6, (w1, w2)  # the white-noise filter is over-confident
    assert c_me < 1.1 * w_me  # and calibration costs little error


def test_a_standing_ue_gains_nothing_from_repeating_one_correlated_error() -> None:
    # 50 measurements (5 s) of a standing UE with the same 1 m error: the plain filter
    # claims 0.4 m, the error state keeps the position's sigma near the correlated part.
    config = TrackerConfig(error_share=0.8, init_speed_sigma=0.05)
    t = np.arange(50) * 0.1
    meas = np.tile([1.0, 0.0], (50, 1))
    covs = np.repeat(EYE2[None], 50, axis=0)
    coloured = track(t, meas, covs, config)
    white = track(t, meas, covs, WHITE)
    assert np.sqrt(white.cov[-1, 0, 0]) < 0.45
    assert np.sqrt(coloured.cov[-1, 0, 0]) > 0.85  # sqrt(0.8) = 0.89


def test_the_first_measurement_fixes_only_the_sum_of_position_and_error() -> None:
    r = np.diag([0.5, 0.2])
    s = start(0.0, np.array([1.0, 2.0]), r, TrackerConfig(error_share=0.6))
    assert np.allclose(s.cov[:2, :2], r) and np.allclose(s.cov[4:, 4:], 0.6 * r)
    assert np.allclose(s.cov[:2, 4:], -0.6 * r)
    # the position + error (what is measured) is known to the white part only: 0.4 r
    h = np.array([[1.0, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, 1]])
    assert np.allclose(h @ s.cov @ h.T, 0.4 * r)


def _walk(n: int, seed: int, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 10 Hz walk along a gentle curve: (times, noisy measurements, covariances)."""
    t = np.arange(n) * 0.1
    truth = np.c_[1.2 * t, 2.0 * np.sin(t / 3.0)]
    z = truth + np.random.default_rng(seed).normal(0.0, noise, (n, 2))
    return t, z, np.tile(noise**2 * EYE2, (n, 1, 1))


def test_smoothing_with_lag_0_is_the_filter_and_lag_inf_is_the_batch_solution() -> None:
    """On the linear model (white errors, nothing gated) the whole-track smoother is the
    least-squares solution over every state at once: the check of the RTS recursion."""
    config = TrackerConfig(error_share=0.0, gate_probability=1 - 1e-12, init_speed_sigma=1.5)
    t, z, r = _walk(30, 0)
    assert np.allclose(smooth(t, z, r, 0.0, config).position, track(t, z, r, config).position)
    n, dt = len(t), 0.1
    f = np.eye(4)
    f[0, 2] = f[1, 3] = dt
    q_inv = np.linalg.inv(process_noise(dt, config.accel_psd)[:4, :4])
    a = np.zeros((4 * n, 4 * n))
    b = np.zeros(4 * n)
    h = np.eye(2, 4)
    for k in range(n):
        sk = slice(4 * k, 4 * k + 4)
        ri = np.linalg.inv(r[k])
        a[sk, sk] += h.T @ ri @ h
        b[sk] += h.T @ ri @ z[k]
        if k + 1 < n:  # x_{k+1} - F x_k ~ N(0, Q)
            d = np.zeros((4, 4 * n))
            d[:, 4 * k + 4 : 4 * k + 8] = np.eye(4)
            d[:, sk] = -f
            a += d.T @ q_inv @ d
    a[2:4, 2:4] += np.eye(2) / config.init_speed_sigma**2  # the new track's velocity prior
    batch = np.linalg.solve(a, b).reshape(n, 4)
    smoothed = smooth(t, z, r, np.inf, config)
    assert np.allclose(smoothed.position, batch[:, :2], atol=1e-8)
    assert np.allclose(smoothed.velocity, batch[:, 2:], atol=1e-8)
    cov = np.linalg.inv(a)
    assert np.allclose(smoothed.cov[5], cov[20:22, 20:22], atol=1e-8)


def test_a_lagged_row_never_sees_measurements_beyond_its_lag() -> None:
    t, z, r = _walk(60, 1)
    moved = z.copy()
    moved[40:] += 3.0  # everything from t = 4.0 s on
    a, b = smooth(t, z, r, 1.0), smooth(t, moved, r, 1.0)
    assert np.allclose(a.position[:30], b.position[:30])  # rows up to t = 2.9 s
    assert not np.allclose(a.position[30:40], b.position[30:40])


def test_smoothing_lowers_the_error_and_stops_at_a_restart() -> None:
    t, z, r = _walk(300, 2)
    truth = np.c_[1.2 * t, 2.0 * np.sin(t / 3.0)]
    filtered = np.linalg.norm(track(t, z, r).position - truth, axis=1).mean()
    lagged = np.linalg.norm(smooth(t, z, r, 2.0).position - truth, axis=1).mean()
    assert lagged < 0.8 * filtered
    gap = t.copy()
    gap[150:] += 60.0  # past expiry: the track restarts there
    whole, first = smooth(gap, z, r, np.inf), smooth(gap[:150], z[:150], r[:150], np.inf)
    assert whole.reset[150] == "expired"
    assert np.allclose(whole.position[:150], first.position)
    with pytest.raises(ValueError, match="lag_s"):
        smooth(t, z, r, -1.0)


def test_a_stale_row_repeats_the_smoothed_row_before_it() -> None:
    t, z, r = _walk(20, 3)
    t[10] = t[9]  # a repeat: stale
    out = smooth(t, z, r, 0.5)
    assert out.stale[10] and np.allclose(out.position[10], out.position[9])


def test_a_foreign_measurement_is_white_noise_and_leaves_the_error_field_alone() -> None:
    config = TrackerConfig(error_share=0.6, error_length_m=2.0)
    t, z, r = _walk(30, seed=3)
    state = track(t, z, r, config)  # a settled track; its last state, rebuilt
    s: TrackState | None = None
    for i in range(30):
        s = step(s, float(t[i]), z[i], r[i], config).state
    assert s is not None and np.allclose(s.mean[:2], state.position[-1])
    wide = 100.0 * EYE2  # an out-of-site answer: the site's spread, 10 m
    decayed = predict(s, 3.1, config)  # the error field decays, nothing is added
    foreign = step(s, 3.1, [5.0, 1.0], wide, config, foreign=True)
    assert not foreign.gated and foreign.predicted is not None
    assert np.allclose(foreign.predicted.cov, decayed.cov)
    assert np.trace(foreign.state.cov[4:, 4:]) <= np.trace(s.cov[4:, 4:])
    # taken as part of the error field, the wide answer widens the error state 10x and more
    inside = step(s, 3.1, [5.0, 1.0], wide, config)
    assert np.trace(inside.state.cov[4:, 4:]) > 10 * np.trace(s.cov[4:, 4:])
    # a track that starts out of site has no error field yet
    first = step(None, 0.0, [1.0, 1.0], wide, config, foreign=True).state
    assert np.allclose(first.cov[4:, :], 0.0) and np.allclose(first.cov[:2, :2], wide)


def test_false_alarms_no_longer_drag_the_track_behind_its_measurements() -> None:
    # every 10th measurement is judged out of site (a false alarm): its covariance is
    # widened to 10 m; passed as foreign the track stays close to the unwidened one
    t, truth, meas, covs = _walk_with_correlated_errors(seed=2, share=0.6, length=2.0, n=2000)
    config = TrackerConfig(error_share=0.6, error_length_m=2.0)
    flagged = np.arange(len(t)) % 10 == 7
    wide = covs.copy()
    wide[flagged] = 100.0 * EYE2

    def me(out: object) -> float:
        return float(np.linalg.norm(out.position - truth, axis=1).mean())  # type: ignore[attr-defined]

    clean = me(track(t, meas, covs, config))
    as_foreign = me(track(t, meas, wide, config, flagged))
    as_field = me(track(t, meas, wide, config))
    assert as_foreign < 1.05 * clean, (as_foreign, clean)
    assert as_field > 1.1 * as_foreign, (as_field, as_foreign)
    smoothed = smooth(t, meas, wide, 1.0, config, flagged)
    assert float(np.linalg.norm(smoothed.position - truth, axis=1).mean()) < as_foreign
    with pytest.raises(ValueError, match="foreign"):
        track(t, meas, covs, config, flagged[:-1])


def test_the_ues_out_of_site_score_is_a_geometric_average_over_time() -> None:
    config = TrackerConfig(novelty_time_s=2.0)
    s = step(None, 10.0, [1.0, 1.0], EYE2, config, novelty=0.5).state
    assert s.novelty == 0.5  # a new track starts at its first score
    s = step(s, 11.0, [1.0, 1.0], EYE2, config, novelty=3.0).state
    a = np.exp(-1.0 / 2.0)
    assert s.novelty == pytest.approx(np.exp(a * np.log(0.5) + (1 - a) * np.log(3.0)))
    assert step(s, 10.5, [1.0, 1.0], EYE2, config, novelty=9.0).state.novelty == s.novelty
    # a gated measurement still scores the UE (the gate judges the position, not the site)
    gated = step(s, 11.1, [60.0, 1.0], EYE2, config, novelty=1.0)
    assert gated.gated and gated.state.novelty == pytest.approx(
        average_novelty(s.novelty, 0.1, 1.0, 2.0)
    )
    # no score (a site without detectors): no average; the next score starts afresh
    assert step(s, 12.0, [1.0, 1.0], EYE2, config).state.novelty is None
    latest = TrackerConfig(novelty_time_s=0.0)
    assert step(s, 12.0, [1.0, 1.0], EYE2, latest, novelty=0.7).state.novelty == 0.7
    # a score of 0 counts as the floor in the log, so the average can still rise again
    assert average_novelty(None, 0.0, 0.0, 2.0) == 0.0
    assert (average_novelty(0.0, 10.0, 5.0, 2.0) or 0.0) > 1.0
    with pytest.raises(ValueError, match="novelty"):
        average_novelty(0.5, 0.1, float("nan"), 2.0)


def test_a_run_of_odd_fingerprints_does_not_flip_the_ue_but_a_foreign_ue_is_caught() -> None:
    # 10 Hz for 12 s: in site (0.4), with 1.5 s of fingerprints scored 1.6 (an unusual
    # spot) and one scored 50 (a corrupted frame); then a UE whose every fingerprint
    # scores 1.3 (a similar room: each only a little over the line)
    t = 0.1 * np.arange(120)
    means, covs = np.zeros((120, 2)), np.tile(EYE2, (120, 1, 1))
    own = np.full(120, 0.4)
    own[30:45] = 1.6
    own[80] = 50.0
    config = TrackerConfig(novelty_time_s=10.0)
    averaged = track(t, means, covs, config, novelty=own).novelty
    assert averaged is not None and (averaged <= 1.0).all()
    assert (own > 1.0).sum() == 16  # one fingerprint at a time: 16 alarms
    away = track(t, means, covs, config, novelty=np.full(120, 1.3)).novelty
    assert away is not None and (away > 1.0).all()
    # the default judges the latest fingerprint alone, as the snapshot does
    latest = track(t, means, covs, TrackerConfig(), novelty=own).novelty
    assert latest is not None and np.array_equal(latest > 1.0, own > 1.0)
    assert track(t, means, covs, TrackerConfig()).novelty is None
    with pytest.raises(ValueError, match="novelty"):
        track(t, means, covs, TrackerConfig(), novelty=own[:5])


def _understated_line(sigma: float, claimed: float, n: int = 600) -> tuple[np.ndarray, ...]:
    """A UE walking a straight line at 1 m/s, 10 Hz, measured with white noise of
    ``sigma`` per axis while each measurement claims ``claimed``."""
    rng = np.random.default_rng(3)
    t = np.arange(n) * 0.1
    truth = np.c_[t, np.zeros(n)]
    meas = truth + rng.normal(0.0, sigma, (n, 2))
    return t, truth, meas, np.tile(claimed**2 * EYE2, (n, 1, 1))


def _inside(out: object, truth: np.ndarray) -> tuple[float, float]:
    err = out.position - truth  # type: ignore[attr-defined]
    d2 = np.einsum("ni,nij,nj->n", err, np.linalg.inv(out.cov), err)[100:]  # type: ignore[attr-defined]
    return float(np.mean(d2 <= 1.0)), float(np.mean(d2 <= 4.0))


def test_the_adaptive_scale_learns_understated_noise_and_leaves_stated_noise_alone() -> None:
    adaptive = TrackerConfig(error_share=0.0, noise_time_s=10.0)
    t, truth, meas, covs = _understated_line(sigma=1.0, claimed=0.5)  # errors twice what they claim
    plain, learnt = track(t, meas, covs, WHITE), track(t, meas, covs, adaptive)
    assert plain.scale is not None and np.all(plain.scale == 1.0)  # off by default
    assert learnt.scale is not None and learnt.scale[-1] > 2.0
    assert _inside(learnt, truth)[1] > _inside(plain, truth)[1] + 0.3
    assert (
        np.linalg.norm(learnt.position - truth, axis=1).mean()
        < np.linalg.norm(plain.position - truth, axis=1).mean()
    )  # a track that trusts its measurements less also chases their noise less
    t, truth, meas, covs = _understated_line(sigma=0.5, claimed=0.5)  # honest: it stays near 1
    honest = track(t, meas, covs, adaptive)
    assert honest.scale is not None and honest.scale.max() < 1.3
    assert _inside(honest, truth) == pytest.approx(
        _inside(track(t, meas, covs, WHITE), truth), abs=0.03
    )


def test_the_adaptive_scale_is_bounded_ignores_foreign_fixes_and_restarts_at_1() -> None:
    config = TrackerConfig(error_share=0.0, noise_time_s=10.0, noise_scale_max=4.0)
    assert adapt_scale(1.0, 0.1, 2.0, config) == pytest.approx(1.0)  # d2 as expected
    assert adapt_scale(1.0, 0.1, 0.0, config) == 1.0  # never below the calibration
    assert adapt_scale(3.9, 1e9, 1e9, config) == 4.0  # capped (and d2 at the gate)
    assert adapt_scale(2.0, 0.1, 50.0, TrackerConfig()) == 2.0  # off: unchanged
    state = TrackState(np.zeros(6), np.eye(6), 0.0, 0.0, scale=2.0)
    foreign = step(state, 0.1, [0.1, 0.0], EYE2, config, foreign=True).state
    assert foreign.scale == 2.0
    far = state
    for i in range(1, 6):  # a jump: gated max_gated times, then the track restarts
        far = step(far, 0.1 * i, [60.0, 0.0], 0.01 * EYE2, config).state
    assert far.scale == 1.0 and far.started == pytest.approx(0.4)  # restarted at the 4th
