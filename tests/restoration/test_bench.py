"""The benchmark command: its JSON contract, and that the naive diffusers loop makes the same candidates."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from restoration import bench
from restoration.bench import (
    BenchConfig,
    bench_input,
    main,
    run_bench,
    unet_flops,
)
from restoration.diffusion.candidates import (
    CandidateConfig,
    plan_candidates,
    sample_candidates,
)
from restoration.diffusion.naive import naive_candidates, respaced_betas
from restoration.diffusion.pixel import PixelPriorConfig, build_pixel_unet, pixel_prior_from_unet, save_pixel_prior
from restoration.runtime import cap_gpu_memory, peak_tflops

TINY = PixelPriorConfig(block_out_channels=(16, 32), norm_num_groups=8, pixel_unshuffle=2)
ROOT = Path(__file__).resolve().parents[2]
KEYS = {"device", "size", "candidates", "seconds", "naive_candidates_seconds", "speedup_vs_naive",
        "peak_memory_mb", "naive_max_abs_diff", "threads", "torch"}


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "restoration.bench", *args], cwd=ROOT, env=env, check=False,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_prior():
    torch.manual_seed(0)
    return pixel_prior_from_unet(build_pixel_unet(TINY), TINY, prior_id="pixel:test")


def test_respaced_betas_reproduce_alpha_bar(tiny_prior):
    ts = torch.tensor([25, 50, 75, 100])
    betas = respaced_betas(tiny_prior.alphas_cumprod, ts)
    torch.testing.assert_close(torch.cumprod(1 - betas, 0).float(), tiny_prior.alphas_cumprod[ts])


@pytest.mark.parametrize("method,eta", [("ddim_ladder_inversion", 0.5), ("ddim_inversion", 0.5),
                                        ("forward_noise", 1.0)])
def test_naive_loop_matches_batched_candidates(tiny_prior, method, eta):
    # 0.25 lies between two ladder rungs; the repeated 0.15 shares its inversion and first step when batched
    cfg = CandidateConfig(num_candidates=4, strengths=(0.15, 0.25, 0.4), steps=3, method=method, eta=eta, seed=7)
    metas = plan_candidates(cfg, tiny_prior)
    x = bench_input(32)
    batched = sample_candidates(x, tiny_prior, metas)
    naive = naive_candidates(x, tiny_prior, metas)
    assert naive.shape == batched.shape == (4, 3, 32, 32)
    assert (naive - batched).abs().max() < 1e-4
    assert (batched[0] - batched[2]).abs().max() > 1e-3  # different strengths/seeds really differ
    assert (batched[0] - batched[3]).abs().max() > 1e-3


def test_command_prints_the_json_contract(tmp_path, tiny_prior):
    save_pixel_prior(tmp_path / "prior", tiny_prior.unet, TINY)
    out = _run("--size", "32", "--candidates", "2", "--repeat", "1", "--backbone", "nlm",
               "--prior", str(tmp_path / "prior"), "--threads", "1", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert KEYS <= set(result)
    assert set(result["seconds"]) == {"restore", "candidates", "select", "refine", "round"}
    assert all(v > 0 for v in result["seconds"].values())
    assert result["seconds"]["round"] >= result["seconds"]["candidates"]
    assert (result["size"], result["candidates"], result["threads"]) == (32, 2, 1)
    assert result["naive_max_abs_diff"] < 1e-4 and result["naive_psnr_db"] > 80
    assert (result["precision"], result["channels_last"], result["compile"]) == ("fp32", True, "none")
    assert result["naive_candidates_seconds"] > 0 and result["speedup_vs_naive"] > 0
    assert result["peak_memory_mb"] > 10
    assert result["prior"]["kind"] == "pixel"
    # 2 candidates (strengths 0.05, 0.1): ladder to 0.1 once (2 rungs) + 2 x 3 steps; naive 1 + 2 rungs + 2 x 3
    assert result["unet_samples"] == {"candidates": 8, "refine": 16, "naive_candidates": 9}
    # the candidates' U-Net passes: 8 images of the tiny U-Net's FLOPs at 32 px with its 8 px reflected border
    # (48 px, unshuffled by 2), over the stage's median time
    assert result["unet_tflop"]["candidates"] == pytest.approx(8 * unet_flops(tiny_prior, (12, 24, 24)) / 1e12)
    assert result["unet_tflops"]["candidates"] == pytest.approx(
        result["unet_tflop"]["candidates"] / result["seconds"]["candidates"])
    assert result["peak_tflops"] is None and result["peak_fraction"] is None  # no known peak for a CPU
    assert result["cuda_syncs"] is None  # the sync census runs on CUDA only
    assert result["peak_reserved_mb"] is None and result["gpu_memory_cap_gb"] is None  # CUDA only


def test_large_image_options_tile_and_skip_the_naive_loop(tmp_path, tiny_prior):
    save_pixel_prior(tmp_path / "prior", tiny_prior.unet, TINY)
    config = BenchConfig(size=96, candidates=2, repeat=1, backbone="nlm", prior=str(tmp_path / "prior"),
                         threads=1, tile=48, steps=2, refine_steps=2, warmup=0, naive=False)
    result = run_bench(config)
    assert result["naive_candidates_seconds"] is None and result["speedup_vs_naive"] is None
    assert result["naive_max_abs_diff"] is None and result["tile"] == 48
    # tile 48 with overlap 6 -> 4 rounded to the U-Net multiple: 3 x 3 tiles of a 96 px image per call;
    # candidates: ladder to 0.1 (2 rungs) + 2 steps x 2 rows; refine: 2 + 2 steps of one row
    assert result["unet_samples"] == {"candidates": 9 * (2 + 4), "refine": 9 * 4}
    assert result["candidate_config"]["steps"] == 2 and result["refine_config"]["steps"] == 2


def test_flops_and_device_peaks(tiny_prior):
    small, large = unet_flops(tiny_prior, (12, 16, 16)), unet_flops(tiny_prior, (12, 32, 32))
    assert 4 * small <= large < 5 * small  # convolutions linear in pixels, the little self-attention quadratic
    conv_in = tiny_prior.unet.conv_in  # a lower bound from the first layer alone: 2 * MACs
    assert small > 2 * conv_in.in_channels * conv_in.out_channels * 9 * 16 * 16
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", "fp16") == 756.5
    assert peak_tflops("NVIDIA H200", "fp32") == (494.7 if torch.backends.cudnn.allow_tf32 else 66.9)
    assert peak_tflops("cpu (x86_64)", "bf16") is None


def test_command_errors_clearly(tmp_path, capsys):
    code = main(["--size", "32", "--candidates", "2", "--repeat", "1", "--backbone", "nlm",
                 "--prior", str(tmp_path / "missing"), "--json"])
    err = capsys.readouterr()
    assert code == 2 and "diffusion prior" in err.err and err.out == ""
    with pytest.raises(SystemExit) as exc:
        main(["--size", "8", "--json"])
    assert exc.value.code == 2 and "--size must be in 16..4096" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--compile", "fast", "--json"])
    assert exc.value.code == 2 and "invalid choice: 'fast'" in capsys.readouterr().err


def test_gpu_memory_cap(monkeypatch, capsys):
    assert cap_gpu_memory("cpu", 0) is None  # no cap asked for: nothing set, on any device
    with pytest.raises(ValueError, match="needs a CUDA device"):
        cap_gpu_memory("cpu", 16)
    with pytest.raises(SystemExit) as exc:
        main(["--gpu-memory-cap", "16", "--json"])
    assert exc.value.code == 2 and "--gpu-memory-cap takes a positive number of GiB, with --device cuda" in (
        capsys.readouterr().err)
    # the fraction handed to torch (a CUDA device faked: 139 GiB, like an H200)
    set_to = []
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: type("Props", (), {"total_memory": 139 * 2**30})())
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device: set_to.append(f))
    assert cap_gpu_memory("cuda", 16) == pytest.approx(16 / 139) and set_to == [pytest.approx(16 / 139)]
    with pytest.raises(ValueError, match="does not fit this device's 139.0 GiB"):
        cap_gpu_memory("cuda:0", 200)
    # a round past the cap: a clear error and exit status 3, no JSON
    def over_the_cap(config, log):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(bench, "run_bench", over_the_cap)
    monkeypatch.setattr(bench, "_parse", lambda argv: (BenchConfig(device="cuda", gpu_memory_cap_gb=16), True))
    assert main([]) == 3
    err = capsys.readouterr()
    assert err.out == "" and ("error: the round ran out of GPU memory (--gpu-memory-cap 16 GiB): CUDA out of memory. "
                              "Tried to allocate 2.00 GiB") in err.err and "more detail" not in err.err


def test_bench_table_rewrites_only_its_section(tmp_path):
    seconds = {"restore": 0.1, "candidates": 1.0, "select": 0.2, "refine": 0.5, "round": 1.8}
    result = {"device": "cpu (x86_64)", "size": 64, "candidates": 8, "seconds": seconds, "threads": 2,
              "naive_candidates_seconds": 3.0, "speedup_vs_naive": 3.0, "peak_memory_mb": 900.0,
              "naive_max_abs_diff": 1e-6, "torch": "2.x", "label": "a | b", "backbone": {"name": "nlm"},
              "candidate_config": {"method": "ddim_ladder_inversion"},
              "unet_samples": {"candidates": 36, "refine": 16, "naive_candidates": 72},
              "precision": "bf16", "compile": "default", "unet_tflops": {"candidates": 312.0}, "peak_fraction": 0.3154}
    (tmp_path / "r.json").write_text(json.dumps(result))
    large = {k: v for k, v in result.items() if k not in ("precision", "compile", "unet_tflops", "peak_fraction")}
    large.update(label="big", naive_candidates_seconds=None, speedup_vs_naive=None, naive_max_abs_diff=None,
                 unet_samples={"candidates": 36, "refine": 16})
    (tmp_path / "large.json").write_text(json.dumps(large))
    (tmp_path / "bad.json").write_text(json.dumps({"size": 64}))
    doc = tmp_path / "B.md"
    doc.write_text("intro\n<!-- bench-table:begin x -->\nold\n<!-- bench-table:end -->\noutro\n")
    script = [sys.executable, str(ROOT / "scripts" / "bench_table.py")]
    for _ in range(2):  # idempotent
        done = subprocess.run([*script, str(tmp_path / "r.json"), str(tmp_path / "large.json"), "--write", str(doc)],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "| a \\| b | cpu (x86_64) | 64 | 8 | 2 | nlm | 0.100 | 1.000 |" in text and "3.00x" in text
    assert "| ddim_ladder_inversion | 36 / 72 | bf16 + compile default | 312 (31.5 %) |" in text
    # no naive loop; a result from before the compute columns reads as float32, eager, no TFLOP/s
    assert "| 1.800 | n/a | n/a | n/a | 900 | 2.x | ddim_ladder_inversion | 36 / n/a | fp32 | n/a |" in text
    bad = subprocess.run([*script, str(tmp_path / "bad.json")], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "missing" in bad.stderr and "naive_max_abs_diff" in bad.stderr


def test_bench_table_one_table_per_device(tmp_path):
    """Results of two devices give two tables under two headings, devices in the order of their first result and
    rows in the order given; a column that is n/a on every row of a device's table is left out of that table only;
    --write replaces the marker section alone; a JSON that is not a bench result is named in the error."""
    seconds = {"restore": 0.1, "candidates": 1.0, "select": 0.2, "refine": 0.5, "round": 1.8}
    cpu = {"device": "cpu (x86_64, AMD EPYC)", "size": 256, "candidates": 8, "seconds": seconds, "threads": 2,
           "naive_candidates_seconds": 3.0, "speedup_vs_naive": 3.0, "peak_memory_mb": 1200.0,
           "naive_max_abs_diff": 2e-6, "torch": "2.x", "backbone": {"name": "sipl"},
           "unet_samples": {"candidates": 36, "naive_candidates": 72}, "unet_tflops": {"candidates": 0.09}}
    gpu = {**cpu, "device": "NVIDIA H200", "size": 512, "threads": 16, "label": "gpu row"}
    del gpu["unet_samples"]  # n/a on the GPU's only row: that table leaves the column out
    paths = []
    results = [("a-cpu", {**cpu, "label": "cpu one"}), ("b-gpu", gpu), ("c-cpu", {**cpu, "label": "cpu two"})]
    for name, result in results:
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(result))
    script = [sys.executable, str(ROOT / "scripts" / "bench_table.py"), *map(str, paths)]

    printed = subprocess.run(script, capture_output=True, text=True, check=False)
    assert printed.returncode == 0, printed.stderr
    out = printed.stdout
    assert [line for line in out.splitlines() if line.startswith("#")] == [
        "### cpu (x86_64, AMD EPYC)", "### cuda (NVIDIA H200)"]
    cpu_part, gpu_part = out.split("### cuda (NVIDIA H200)")
    assert cpu_part.count("| run | device |") == 1 and gpu_part.count("| run | device |") == 1
    assert cpu_part.index("| cpu one |") < cpu_part.index("| cpu two |") and "gpu row" not in cpu_part
    assert "| gpu row | NVIDIA H200 | 512 | 8 | 16 | sipl |" in gpu_part and "cpu one" not in gpu_part
    assert "UNet samples (batched / naive)" in cpu_part and "| 36 / 72 |" in cpu_part
    assert "UNet samples" not in gpu_part and "| ? | fp32 | 0.09 |" in gpu_part
    for part in (cpu_part, gpu_part):  # every row as wide as its table's header
        widths = {line.count(" | ") for line in part.splitlines() if line.startswith("| ")}
        assert len(widths) == 1, part

    outside = ("# Doc\n\nintro\n\n### kept heading\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\n"
               "<!-- bench-table:begin x -->\nold table\n<!-- bench-table:end -->\n\n## After\n\noutro | text\n")
    doc = tmp_path / "B.md"
    doc.write_text(outside)
    for _ in range(2):  # idempotent
        done = subprocess.run([*script, "--write", str(doc)], capture_output=True, text=True, check=False)
        assert done.returncode == 0 and done.stdout == "", done.stderr
        text = doc.read_text()
        before, rest = text.split("<!-- bench-table:begin x -->\n")
        section, after = rest.split("<!-- bench-table:end -->")
        assert before == outside.split("<!-- bench-table:begin")[0] and after == "\n\n## After\n\noutro | text\n"
        assert section == out and "old table" not in text

    bad = tmp_path / "not-bench.json"
    bad.write_text(json.dumps({"device": "cpu", "size": 64}))
    failed = subprocess.run([*script, str(bad), "--write", str(doc)], capture_output=True, text=True, check=False)
    assert failed.returncode == 2 and str(bad) in failed.stderr and "missing" in failed.stderr
    assert doc.read_text() == text  # nothing written


def test_sync_census_counts_each_stage_and_restores_the_mode(monkeypatch):
    """count_cuda_syncs' bookkeeping, on a stand-in engine whose stages warn as torch's sync debug mode does."""
    modes = ["default"]
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: modes[-1])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    monkeypatch.setattr(bench, "synchronize", lambda device: None)

    def syncs(n, out=None):
        for _ in range(n):
            warnings.warn("called a synchronizing CUDA operation")
        warnings.warn("an unrelated warning")
        return out

    class Engine:
        def restore(self, x):
            return syncs(0, (x, None))

        def start_round(self, restored, seed, num_candidates):
            return syncs(2, "round")

        def select(self, rnd):
            return syncs(3, "selection")

        def refine(self, rnd, sel):
            assert (rnd, sel) == ("round", "selection")
            return syncs(1)

    class Image:  # stays where it is: this machine may have no GPU to move a tensor to
        def to(self, device):
            return self

        def clone(self):
            return self

    config = bench.BenchConfig(device="cpu")
    assert bench.count_cuda_syncs(Engine(), Image(), config) is None
    counts = bench.count_cuda_syncs(Engine(), Image(), replace(config, device="cuda:0"))
    assert counts == {"restore": 0, "candidates": 2, "select": 3, "refine": 1}
    assert modes == ["default", "warn", "default"]
