"""ByG and ImVideoEdit on ComfyUI's own Wan MODEL (real ComfyUI, in its own Python: tests/comfy_scripts/)."""

from __future__ import annotations


def test_byg_prediction_is_the_model_on_the_concatenated_sequence_built_by_hand(comfy, zoo):
    """The patched MODEL's prediction for the noisy tokens equals the unpatched Wan model run on [noisy, source]
    with the source at the same (or offset) temporal positions and the same (or zero) timestep, built by hand."""
    diffs = comfy.run_script("byg_by_hand.py", str(zoo.file("wan21_t2v")))
    assert diffs["latent_shape"] == [1, 16, 3, 6, 8]
    for case in ("same/same", "same/zero", "offset/same", "offset/zero"):
        assert diffs[f"{case}/scale"] > 0.1
        assert diffs[case] == 0.0, (case, diffs)


def test_imvideoedit_adapter_on_the_native_model(comfy, zoo, tmp_path):
    """Untrained (its added paths start at zero): the patched MODEL computes what the unpatched one does. Trained:
    the native patch (comfy.ops layers, ComfyUI's attention) computes what the library's adapter does on the
    diffusers model from the same file, within float error (two implementations of Wan attention)."""
    diffs = comfy.run_script("imvideoedit_check.py", str(zoo.file("wan21_t2v")), str(tmp_path), str(zoo.file("wan21_i2v")))
    print(diffs)
    assert diffs["latent_shape"] == [1, 16, 3, 6, 8]
    assert diffs["untrained_vs_plain"] < 1e-5
    assert diffs["trained_vs_library"] < 1e-4
    assert diffs["trained_vs_plain"] > 100 * diffs["trained_vs_library"]  # the adapter does something
    # an adapter for Wan2.1-T2V on an I2V model: refused with the base it needs and where to load it
    assert diffs["wrong_base"].startswith("ModelFileError: This ImVideoEdit adapter was trained on"), diffs
    assert "Load Diffusion Model" in diffs["wrong_base"]
