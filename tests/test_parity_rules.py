"""The parity rules themselves can fail: token-choice flips, the float64 ratio rule, the HiFT
SNR-vs-float64 rule and the seed sweep's summary, on small synthetic records (no reference run)."""

import numpy as np

from tests.reference import hift_harness, sweep, t3_harness


def _records(ours_p, ref_p, ref_tok, u):
    ours_p, ref_p = np.array([ours_p]), np.array([ref_p])
    tok, margin = t3_harness.own_choice("sample", ours_p[0].astype(np.float64), u, ref_tok)
    ref = {"tokens": np.array([ref_tok]), "probs": ref_p}
    ours = {"tokens": np.array([ref_tok]), "probs": ours_p, "own": np.array([tok]), "margin": np.array([margin]),
            "mode": np.array("sample")}
    return ref, ours


def test_sample_flip_within_float_error_is_accepted():
    # The uniform sits 1e-6 below the first boundary in our CDF and above it in the reference's.
    ref, ours = _records([0.5 + 2e-6, 0.5 - 2e-6], [0.5, 0.5], ref_tok=1, u=0.5 + 1e-6)
    check = t3_harness.token_choice_check(ref, ours, "full", "t", flips_at=set())
    assert ours["own"][0] == 0 and check["ok"], check
    assert check["flips"][0]["margin"] < 2e-6


def test_sample_flip_far_from_the_boundary_fails():
    ref, ours = _records([0.4, 0.6], [0.5, 0.5], ref_tok=0, u=0.45)
    check = t3_harness.token_choice_check(ref, ours, "full", "t", flips_at=set())
    assert not check["ok"] and check["flips"][0]["cause"] == "unexplained"


def test_greedy_margin_is_the_top2_gap():
    tok, margin = t3_harness.own_choice("greedy", np.array([0.3, 0.7]), 0.0, other=0)
    assert tok == 1 and np.isclose(margin, 0.4)


def test_exact_ratio_rule():
    exact = np.linspace(-10, 10, 100)
    ref = exact + 1e-5
    assert t3_harness.exact_check("x", exact, ref, exact + 1.5e-5, ratio=2.0)["ok"]
    assert not t3_harness.exact_check("x", exact, ref, exact + 3e-5, ratio=2.0)["ok"]
    assert t3_harness.exact_check("x", exact, exact, exact + 1e-6, ratio=2.0)["ok"]  # under the 4-ulp floor


def test_hift_wav_must_not_be_worse_than_the_reference_against_float64():
    rng = np.random.default_rng(0)
    exact = {"voiced/wav": 0.5 * rng.standard_normal(1000)}
    ref = {"voiced/wav": exact["voiced/wav"] + 1e-3 * rng.standard_normal(1000)}
    good = {"voiced/wav": exact["voiced/wav"] + 1e-4 * rng.standard_normal(1000)}
    bad = {"voiced/wav": exact["voiced/wav"] + 3e-3 * rng.standard_normal(1000)}
    assert all(c["ok"] for c in hift_harness.exact_checks(ref, good, exact, "h"))
    assert not any(c["ok"] for c in hift_harness.exact_checks(ref, bad, exact, "h"))
    # Downstream of a predicted F0 the waveform is a figure; the F0 itself has the ratio rule.
    exact = {"predicted/wav": exact["voiced/wav"], "predicted/f0": 120 + rng.standard_normal(20)}
    ref = {"predicted/wav": ref["voiced/wav"], "predicted/f0": exact["predicted/f0"] + 1e-4}
    bad = {"predicted/wav": bad["voiced/wav"], "predicted/f0": exact["predicted/f0"] + 3e-4}
    f0, wav = hift_harness.exact_checks(ref, bad, exact, "h")
    assert not f0["ok"] and wav["ok"] and "figure only" in wav["tolerance"], (f0, wav)


def test_sweep_summary_worst_is_direction_aware():
    checks = [{"name": "a", "ok": True, "seed": s, "max_abs_err": e, "snr_db": d}
              for s, e, d in [(0, 1.0, 40.0), (1, 3.0, 30.0), (2, 2.0, 50.0)]]
    checks[1]["ok"] = False
    (row,) = sweep.summarize(checks)
    assert row["max_abs_err"] == {"min": 1.0, "median": 2.0, "worst": 3.0}
    assert row["snr_db"]["worst"] == 30.0 and row["failed_seeds"] == [1]


def test_turbo_cut_swaps_are_accepted_only_in_matching_pairs():
    from tests.reference.turbo_harness import boundary_swaps

    ref = np.array([[0.5, 0.3, 0.2, 0.0]])
    swapped = np.array([[0.5, 0.3, 0.0, 0.2 + 1e-9]])  # the last kept token traded for its near-tie
    assert boundary_swaps(ref, swapped, 2e-5)[:2] == (1, True)
    dropped = np.array([[0.6, 0.4, 0.0, 0.0]])  # one token lost, none gained: not a swap
    assert boundary_swaps(ref, dropped, 2e-5)[:2] == (1, False)
    far = np.array([[0.5, 0.3, 0.0, 0.3]])  # a swap with a token of another probability
    assert boundary_swaps(ref, far, 2e-5)[:2] == (1, False)


def _top_p_case(q0: float):
    """One step, top_p 0.9: the reference dropped token 0 (its ascending mass was <= 0.1) and we
    kept it; `q0` is token 0's mass in our distribution before top-p."""
    pre = np.array([[q0, 0.2, 0.3, 0.5 - q0]])
    ref = np.array([[0.0, 0.2, 0.3, 0.5 - q0]]) / (1 - q0)
    return ref, pre.copy(), pre


def test_top_p_boundary_flip_within_float_error_is_accepted():
    ref, ours, pre = _top_p_case(0.1 + 1e-6)
    check = t3_harness.processed_probs_check("p", ref, ours, 2e-5, min_p=0.05, top_p=0.9, pre_top_p=pre)
    assert check["ok"] and check["top_p_boundary_flips"] == 1, check
    assert check["max_abs_err"] < 1e-12  # compared renormalised over the tokens both kept
    # Without our pre-top-p distribution the same flip cannot be judged, so it fails.
    assert not t3_harness.processed_probs_check("p", ref, ours, 2e-5, min_p=0.05, top_p=0.9)["ok"]


def test_top_p_flip_far_from_the_cut_fails():
    ref, ours, pre = _top_p_case(0.05)
    check = t3_harness.processed_probs_check("p", ref, ours, 2e-5, min_p=0.05, top_p=0.9, pre_top_p=pre)
    assert not check["ok"] and check["support_flips"][0]["cause"] == "unexplained", check
    assert np.isclose(check["support_flips"][0]["top_p_margin"], 0.05)


def test_min_p_boundary_flip_is_accepted_and_renormalised():
    # Token 0 sits on min_p * p_max (0.05 * 0.5) in our distribution; the reference dropped it.
    ours = np.array([[0.025, 0.475, 0.5]])
    ref = np.array([[0.0, 0.475, 0.5]]) / 0.975
    check = t3_harness.processed_probs_check("p", ref, ours, 2e-5, min_p=0.05)
    assert check["ok"] and check["min_p_boundary_flips"] == 1 and check["max_abs_err"] < 1e-12, check
