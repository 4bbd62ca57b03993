"""The shipped coefficients are what a re-fit of ../shared/data gives, and they predict the profiles."""

from dataclasses import fields

import numpy as np
import pytest

from services.sim import cost_fit
from services.sim.cost import CostModel
from services.sim.cost_fitted import FITS
from services.sim.cost_steps import StepFit

pytestmark = pytest.mark.skipif(not cost_fit.PROFILES.exists(), reason="the paper's profiles are not in ../shared/data")


@pytest.fixture(scope="module")
def refit():
    return cost_fit.fit_all()


def test_the_shipped_coefficients_are_a_refit_of_the_profiles(refit):
    assert set(refit) == set(FITS)
    for gpu, by_arch in refit.items():
        assert set(by_arch) == set(FITS[gpu])
        for arch, fit in by_arch.items():
            for f in fields(StepFit):
                if f.name == "decode_batch_table":  # engine profiles only
                    assert FITS[gpu][arch].decode_batch_table == ()
                    continue
                shipped, fitted = getattr(FITS[gpu][arch], f.name), getattr(fit, f.name)
                assert shipped == pytest.approx(fitted, rel=2e-3, abs=1e-15), f"{gpu} {arch} {f.name}"


def test_the_capped_profiles_are_found_from_their_flat_prefills(refit):
    uncapped = {(gpu, arch) for gpu, by in refit.items() for arch, f in by.items() if f.prefill_cap_tokens is None}
    assert uncapped == {("H800", "qwen2.5-7b")}  # its 8192-token batches take twice its 4096-token ones


@pytest.mark.parametrize("gpu", cost_fit.GPUS)
@pytest.mark.parametrize("arch", list(cost_fit.PROFILE_DIRS))
def test_the_shipped_cost_model_predicts_the_measured_points(gpu, arch):
    """Every prefill point (read as the prompts its step computed) and every decode point the
    fit uses: median error <= 8 %, 90 % of points within 15 %, none off by more than 30 %."""
    points = cost_fit.load_points(cost_fit.PROFILES / cost_fit.PROFILE_DIRS[arch] / gpu)
    cap = cost_fit.prefill_cap(points)
    cost = CostModel.for_models(gpu, {"m": arch})
    prefill_err, decode_err = [], []
    for p in points:
        prompts = cost_fit.prefilled_batch(p, cap)
        predicted = cost.prefill_step_s("m", prompts * p.input_tokens, prompts * p.input_tokens**2)
        prefill_err.append(abs(predicted / p.prefill_s - 1))
        if prompts == p.batch and p.decode_s >= cost_fit.EMPTY_DECODE_S:
            predicted = cost.decode_step_s("m", p.batch, p.batch * p.input_tokens)
            decode_err.append(abs(predicted / p.decode_s - 1))
    assert len(prefill_err) >= 89 and len(decode_err) >= 67
    for name, err in (("prefill", prefill_err), ("decode", decode_err)):
        assert np.median(err) <= 0.08, name
        assert np.percentile(err, 90) <= 0.15, name
        assert max(err) <= 0.30, name


def test_the_refit_command_names_a_missing_folder(tmp_path, capsys):
    assert cost_fit.main(["--data", str(tmp_path)]) == 2
    assert f"no profile folder {tmp_path}/qwen2_5_7b/H100" in capsys.readouterr().err
