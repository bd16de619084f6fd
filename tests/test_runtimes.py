"""`minitron export --all` / `minitron runtimes` (deploy/runtimes.py): every format checked and timed in its
runtime, and the report's Runtimes table."""

import json
import shutil

import pytest

from conftest import write_tiny_llama
from minitron.errors import MinitronError

pytest.importorskip("xllamacpp", reason="llama.cpp check needs xllamacpp (make setup installs it)")
pytest.importorskip("onnxruntime_genai", reason="ONNX Runtime check needs onnxruntime-genai (make setup installs it)")
from minitron.deploy.runtimes import export_all  # noqa: E402

FORMATS = (("gguf", "f32"), ("gguf", "q8_0"), ("onnx", "fp32"))


def test_export_all_checks_and_times_every_format_and_the_report_shows_it(tmp_path):
    from minitron.evaluation.report import _runtimes_table
    from minitron.recipe import load_recipe
    from minitron.run_folder import RunFolder

    hf = write_tiny_llama(tmp_path / "hf", tied=True, rope_scaling=None, rope_theta=10000.0,
                          num_key_value_heads=2, head_dim=16)
    folder = RunFolder(load_recipe(None, [f"output_root={tmp_path / 'runs'}"]))
    out = folder.root / "runtimes" / "teacher-corrected"
    result = export_all(hf, out, formats=FORMATS)
    rows = {(r["format"], r["dtype"]): r for r in result["rows"]}
    assert list(rows) == list(FORMATS)
    for (fmt, dtype), r in rows.items():
        assert (out / r["path"]).exists() and r["bytes"] > 0 and r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0
        if dtype in ("f32", "fp32"):  # fp32 in the runtime: transformers' greedy, log-probs to fp32 rounding
            assert r["greedy_match"] and r["max_abs_dlogprob_generated"] < 1e-4, (fmt, r)
    assert rows[("gguf", "q8_0")]["bytes"] < rows[("gguf", "f32")]["bytes"]
    assert json.loads((out / "runtimes.json").read_text())["rows"] == result["rows"]
    with pytest.raises(MinitronError, match="runtimes.json.*--overwrite"):
        export_all(hf, out, formats=FORMATS)

    # a student that decodes twice as fast in every format, and one format it cannot take
    student = folder.root / "runtimes" / "width-distilled"
    student.mkdir()
    slower = {**result, "rows": [{**r, "decode_tok_s": 2 * r["decode_tok_s"]} for r in result["rows"]]
              + [{"format": "onnx", "dtype": "int4", "path": "onnx-int4", "skipped": "head_dim 24 is not ..."}]}
    (student / "runtimes.json").write_text(json.dumps(slower))
    table = "\n".join(_runtimes_table(folder))
    assert table.count("| teacher-corrected |") == 3 and table.count("| width-distilled |") == 3
    assert "| GGUF f32 |" in table and "| ONNX fp32 |" in table and table.count("2.00×") == 3
    assert "* width-distilled ONNX int4: head_dim 24 is not ..." in table
    shutil.rmtree(folder.root / "runtimes")
    assert "not measured" in _runtimes_table(folder)[0]


def test_a_format_the_model_cannot_take_is_recorded_with_its_reason(tmp_path):
    hf = write_tiny_llama(tmp_path / "hf")  # head_dim 24: ONNX Runtime's CPU attention needs a multiple of 16
    result = export_all(hf, tmp_path / "out", formats=(("onnx", "fp32"),))
    assert result["rows"] == [{"format": "onnx", "dtype": "fp32", "path": "onnx-fp32",
                               "skipped": result["rows"][0]["skipped"]}]
    assert "head_dim 24 is not a multiple of 16" in result["rows"][0]["skipped"]
