"""Every bad input: one-line error naming the file, exit code 2, nothing half-written."""

import json
import shutil

import pytest

from conftest import run_minitron, write_tiny_llama
from minitron.conversion.convert import hf_to_nemo, nemo_to_hf
from minitron.errors import MinitronError


def assert_clean_failure(proc, *expected, target=None):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for text in expected:
        assert text in lines[0]
    if target is not None:
        assert not target.exists() or not any(target.iterdir())
        assert not list(target.parent.glob(f".{target.name}.partial-*"))  # no temp left behind


@pytest.fixture
def hf_copy(tmp_path, tiny_hf):
    return shutil.copytree(tiny_hf, tmp_path / "hf")


def test_missing_safetensors(hf_copy, tmp_path):
    (hf_copy / "model.safetensors").unlink()
    proc = run_minitron("convert", "hf-to-nemo", "--input", str(hf_copy), "--output", str(tmp_path / "out"))
    assert_clean_failure(proc, str(hf_copy), "no *.safetensors", target=tmp_path / "out")


def test_corrupt_safetensors(hf_copy, tmp_path):
    path = hf_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    proc = run_minitron("convert", "hf-to-nemo", "--input", str(hf_copy), "--output", str(tmp_path / "out"))
    assert_clean_failure(proc, str(path), "corrupt", target=tmp_path / "out")


def test_index_names_missing_shard(tmp_path):
    hf = write_tiny_llama(tmp_path / "hf", max_shard_size="20KB")
    victim = sorted(hf.glob("model-*.safetensors"))[1]
    victim.unlink()
    proc = run_minitron("convert", "hf-to-nemo", "--input", str(hf), "--output", str(tmp_path / "out"))
    assert_clean_failure(proc, victim.name, "missing", target=tmp_path / "out")


def test_non_llama_architecture(hf_copy, tmp_path):
    cfg = json.loads((hf_copy / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (hf_copy / "config.json").write_text(json.dumps(cfg))
    proc = run_minitron("convert", "hf-to-nemo", "--input", str(hf_copy), "--output", str(tmp_path / "out"))
    assert_clean_failure(proc, "config.json", "not a Llama model", target=tmp_path / "out")


def test_config_contradicts_weights(hf_copy, tmp_path):
    cfg = json.loads((hf_copy / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (hf_copy / "config.json").write_text(json.dumps(cfg))
    proc = run_minitron("convert", "hf-to-nemo", "--input", str(hf_copy), "--output", str(tmp_path / "out"))
    assert_clean_failure(proc, "mlp", "contradicts", target=tmp_path / "out")


def test_fewer_layers_in_config_than_weights(hf_copy):
    cfg = json.loads((hf_copy / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (hf_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MinitronError, match="unexpected tensor model.layers.3"):
        hf_to_nemo(hf_copy, hf_copy.parent / "out")


def test_output_exists_and_is_not_empty(tiny_hf, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    proc = run_minitron("convert", "hf-to-nemo", "--input", str(tiny_hf), "--output", str(out))
    assert_clean_failure(proc, str(out), "not empty")
    assert (out / "precious.txt").read_text() == "keep me"


def test_nemo_with_missing_shard(tiny_nemo, tmp_path):
    broken = shutil.copytree(tiny_nemo, tmp_path / "nemo")
    shard = sorted((broken / "weights").glob("*.distcp"))[0]
    shard.unlink()
    proc = run_minitron("convert", "nemo-to-hf", "--input", str(broken), "--output", str(tmp_path / "hf"))
    assert_clean_failure(proc, shard.name, "missing", target=tmp_path / "hf")


def test_nemo_without_metadata(tiny_nemo, tmp_path):
    broken = shutil.copytree(tiny_nemo, tmp_path / "nemo")
    (broken / "weights/.metadata").unlink()
    with pytest.raises(MinitronError, match=r"\.metadata: missing"):
        nemo_to_hf(broken, tmp_path / "hf")


def test_not_a_nemo_checkpoint(tiny_hf, tmp_path):
    proc = run_minitron("convert", "nemo-to-hf", "--input", str(tiny_hf), "--output", str(tmp_path / "hf"))
    assert_clean_failure(proc, "io.json", "not a NeMo 2 checkpoint", target=tmp_path / "hf")


def test_failure_mid_write_leaves_no_output(tiny_nemo, tmp_path, monkeypatch):
    """An error after writing has started (here: disk full on config.json) leaves nothing."""
    import minitron.conversion.convert as convert

    def disk_full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert, "write_json_atomic", disk_full)
    with pytest.raises(OSError):
        nemo_to_hf(tiny_nemo, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert list(tmp_path.iterdir()) == []
