"""Stage `verify`: Megatron logits equal HF logits at every configured TP/PP layout, and the
NeMo -> HF export reproduces the original checkpoint bit for bit."""

from __future__ import annotations

from pathlib import Path

from minitron.conversion.convert import nemo_to_hf
from minitron.conversion.verify import megatron_vs_hf, tensor_differences, tokenize
from minitron.errors import MinitronError
from minitron.run_folder import RunFolder
from minitron.runtime.launch import run_module


def run(folder: RunFolder, stage: str, out: Path) -> dict:
    cfg = folder.recipe.verify
    paths = folder.imported_teacher()
    tokens = tokenize(paths["hf"], cfg.text)
    results = []
    for tp, pp in cfg.layouts:
        if tp * pp == 1:
            diff, _ = megatron_vs_hf(paths["nemo"], paths["hf"], tokens)
        else:
            diff = run_module(tp * pp, "minitron.cli", ["verify", "--nemo", str(paths["nemo"]), "--hf", str(paths["hf"]),
                                                        "--tp", str(tp), "--pp", str(pp), "--text", cfg.text]
                              )["max_abs_logit_diff"]
        results.append({"tensor_parallel": tp, "pipeline_parallel": pp, "max_abs_logit_diff": diff})
        print(f"  TP={tp} PP={pp}: max |logit diff| vs HF = {diff:.3g}")
        if diff > cfg.logits_atol:
            raise MinitronError(f"Megatron logits at TP={tp} PP={pp} differ from HF by {diff:.3g} "
                                f"> verify.logits_atol={cfg.logits_atol}")
    export = nemo_to_hf(paths["nemo"], out / "hf_roundtrip")
    diffs = tensor_differences(paths["hf"], out / "hf_roundtrip")
    if diffs:
        raise MinitronError(f"HF -> NeMo -> HF round trip is not exact: {diffs[0]} ({len(diffs)} differences)")
    return {"tokens": int(tokens.numel()), "layouts": results, "roundtrip_identical": True,
            "roundtrip_seconds": export["seconds"]}
