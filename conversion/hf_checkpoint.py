"""Reading and writing Hugging Face safetensors checkpoints, one shard at a time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from minitron.errors import MinitronError

#: Files that travel with the weights (tokenizer, chat template, generation defaults).
SIDECAR_PATTERNS = ("tokenizer*", "special_tokens_map.json", "chat_template*", "generation_config.json",
                    "vocab.json", "merges.txt", "added_tokens.json")
WEIGHTS_INDEX = "model.safetensors.index.json"


class SafetensorsReader:
    """Index of a checkpoint's tensors (names, shapes, dtypes) read from headers only."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        if not self.dir.is_dir():
            raise MinitronError(f"{self.dir}: not a directory; pass a Hugging Face checkpoint folder")
        self.files = self._shard_files()
        self.meta: dict[str, tuple[Path, tuple[int, ...], torch.dtype]] = {}
        for path in self.files:
            for name, shape, dtype in _read_header(path):
                if name in self.meta:
                    raise MinitronError(f"{path}: tensor {name} also appears in {self.meta[name][0].name}")
                self.meta[name] = (path, shape, dtype)

    def _shard_files(self) -> list[Path]:
        index = self.dir / WEIGHTS_INDEX
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise MinitronError(f"{index}: not a valid safetensors index (needs a 'weight_map')") from None
            files = [self.dir / f for f in sorted(set(weight_map.values()))]
        else:
            files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise MinitronError(f"{self.dir}: no *.safetensors weights found")
        for f in files:
            if not f.is_file():
                raise MinitronError(f"{f}: weight shard listed in {WEIGHTS_INDEX} is missing")
        return files

    def check_shapes(self, expected: dict[str, tuple[int, ...]], config_path: Path) -> None:
        """Fail with one line if the weights are not exactly what the config describes."""
        names = set(self.meta) - {n for n in self.meta if n.endswith("rotary_emb.inv_freq")}
        missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
        if missing:
            raise MinitronError(f"{self.dir}: weights lack {missing[0]} (and {len(missing) - 1} more) "
                                f"that {config_path.name} implies")
        if extra:
            raise MinitronError(f"{self.dir}: unexpected tensor {extra[0]} in {self.meta[extra[0]][0].name} "
                                f"(and {len(extra) - 1} more); does {config_path.name} match the weights?")
        for name, shape in expected.items():
            if self.meta[name][1] != tuple(shape):
                raise MinitronError(
                    f"{self.meta[name][0]}: {name} has shape {list(self.meta[name][1])} but "
                    f"{config_path.name} implies {list(shape)}; the config contradicts the weights")

    def dtype(self) -> torch.dtype:
        dtypes = {d for _, _, d in self.meta.values()}
        if len(dtypes) != 1:
            raise MinitronError(f"{self.dir}: mixed tensor dtypes {sorted(map(str, dtypes))}; expected one")
        return dtypes.pop()

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield every tensor, shard by shard, so at most one shard is in memory."""
        for path in self.files:
            try:
                with safe_open(path, framework="pt") as f:
                    for name in f.keys():
                        yield name, f.get_tensor(name)
            except SafetensorError as e:
                raise MinitronError(f"{path}: corrupt safetensors file ({e})") from None


def _read_header(path: Path):
    try:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                yield name, tuple(sl.get_shape()), _DTYPES[sl.get_dtype()]
    except (SafetensorError, OSError, KeyError) as e:
        raise MinitronError(f"{path}: corrupt or unreadable safetensors file ({e})") from None


_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "I8": torch.int8, "BOOL": torch.bool,
           "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def write_sharded(tensors: Iterable[tuple[str, torch.Tensor]], out_dir: Path,
                  max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """Write tensors as ``model-0000k-of-0000n.safetensors`` (+ index), flushing each full shard."""
    shard: dict[str, torch.Tensor] = {}
    size, total, written, weight_map = 0, 0, [], {}

    def flush():
        nonlocal shard, size
        tmp_name = f"shard-{len(written):05d}.tmp"
        save_file(shard, str(out_dir / tmp_name), metadata={"format": "pt"})
        written.append((tmp_name, list(shard)))
        shard, size = {}, 0

    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if shard and size + nbytes > max_shard_bytes:
            flush()
        shard[name] = t.contiguous()
        size += nbytes
        total += nbytes
    if shard:
        flush()
    n = len(written)
    names = ["model.safetensors"] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    for (tmp_name, keys), final in zip(written, names):
        (out_dir / tmp_name).rename(out_dir / final)
        weight_map.update({k: final for k in keys})
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return names



def copy_sidecars(src: Path, dst: Path) -> list[str]:
    """Copy tokenizer/chat-template/generation files between checkpoint folders."""
    copied = []
    for pattern in SIDECAR_PATTERNS:
        for f in sorted(Path(src).glob(pattern)):
            if f.is_file():
                shutil.copy2(f, Path(dst) / f.name)
                copied.append(f.name)
    return copied
