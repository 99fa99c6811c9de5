"""Scenarios of the FSDP2 influence tests (tests/test_influence_fsdp.py), run on every rank of a gloo (or nccl) job.

Each rank wraps a fresh copy of the same tiny LM with ``fully_shard`` (per block + root), takes its own batches (step
``s`` of rank ``r`` is batch ``s·W + r`` of a domain, so ranks run out unevenly), computes influence for every scenario
and saves the results. The test compares them with one unsharded process on the same data: group-mode units are the
ranks' micro-batches of one step concatenated (what FSDP's summed gradient of that step is), per-sample units are
samples. Run as ``python influence_fsdp_worker.py OUT_DIR`` under torchrun, or through :func:`spawn_main`.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Dict, List

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dist_testing import end_worker  # noqa: E402
from influence_testing import TinyLM, lm_loss, make_data  # noqa: E402

D = 5  # d=5: ln.weight has 5 rows (uneven on 2 ranks, an empty shard on 4), fc1.weight 10 rows (uneven on 4)


def scenarios(world: int) -> List[Dict[str, Any]]:
    """Name, GroupInfluence options, FSDP options. Identical on every rank and in the test's reference."""
    out = []
    for mode in ("group", "per_sample"):
        out += [
            dict(name=f"{mode}-exact", gi=dict(mode=mode, k=None)),
            dict(name=f"{mode}-identity", gi=dict(mode=mode, k=64)),
            dict(name=f"{mode}-gauss_newton", gi=dict(mode=mode, k=64, preconditioner="gauss_newton")),
        ]
    out += [
        dict(name="group-adam", gi=dict(mode="group", k=64, preconditioner="adam", factorize=False)),
        dict(name="group-adam-kron", gi=dict(mode="group", k=64, preconditioner="adam", factorize=True)),
        dict(name="group-exact-adam", gi=dict(mode="group", k=None, preconditioner="adam")),
        dict(name="per_sample-adam", gi=dict(mode="per_sample", k=64, preconditioner="adam", factorize=False),
             raises="NotImplementedError"),
        dict(name="group-dense", gi=dict(mode="group", k=64, factorize=False)),
        dict(name="group-keep-shards", gi=dict(mode="group", k=64), fsdp=dict(reshard_after_forward=False)),
        dict(name="group-bf16", gi=dict(mode="group", k=64), fsdp=dict(mixed=True), tol="bf16"),
        dict(name="per_sample-bf16", gi=dict(mode="per_sample", k=64), fsdp=dict(mixed=True), tol="bf16"),
    ]
    # world size 2 runs everything; 1 and 4 a subset that covers their own cases (CI time on 2 shared cores)
    subset = {1: {"group-exact", "group-identity", "group-gauss_newton", "per_sample-exact"},
              4: {"group-exact", "group-adam", "group-gauss_newton", "per_sample-identity", "per_sample-gauss_newton"}}
    if world in subset:
        out = [sc for sc in out if sc["name"] in subset[world]]
    if world == 2:  # blocks compiled before sharding (as torchtitan does), and refusals
        out += [dict(name="group-compiled", gi=dict(mode="group", k=64), fsdp=dict(compile_blocks=True)),
                dict(name="per_sample-compiled", gi=dict(mode="per_sample", k=64), fsdp=dict(compile_blocks=True)),
                dict(name="per_sample-hidden-path", gi=dict(mode="per_sample", k=64), hidden_path=True,
                     raises="do not match autograd's on a sharded model"),
                dict(name="no-sync", gi=dict(mode="group", k=64), no_sync=True,
                     raises="gradient synchronisation disabled")]
    if os.environ.get("TIKMIX_TEST_BACKEND") == "nccl":  # FSDP2's CPU offload needs an accelerator
        out.append(dict(name="group-offload", gi=dict(mode="group", k=64), fsdp=dict(offload=True)))
    if world == 4:
        out += [dict(name="hsdp-exact", gi=dict(mode="group", k=None), fsdp=dict(hsdp=True)),
                dict(name="hsdp-gauss_newton", gi=dict(mode="group", k=64, preconditioner="gauss_newton"),
                     fsdp=dict(hsdp=True)),
                dict(name="hsdp-per_sample", gi=dict(mode="per_sample", k=64), fsdp=dict(hsdp=True))]
    return out


def data():
    """Domains with 3, 4 and 1 batches; targets with 2 and 1 (the last: only rank 0 has a batch)."""
    doms, tgts = make_data(n_domains=3, n_targets=2, n_batches=4)
    doms["d0"] = doms["d0"][:3]
    doms["d2"] = doms["d2"][:1]
    tgts = {"t0": tgts["t0"] + make_data(n_targets=1, seed=7)[1]["t0"], "t1": tgts["t1"]}
    return doms, tgts


def rank_batches(batches: List[torch.Tensor], rank: int, world: int) -> List[torch.Tensor]:
    return batches[rank::world]


def step_batches(batches: List[torch.Tensor], world: int) -> List[torch.Tensor]:
    """One process's equivalent of the lockstep units: the batches of each step concatenated."""
    return [torch.cat(batches[s : s + world]) for s in range(0, len(batches), world)]


def base_model(cls: type = TinyLM) -> TinyLM:
    torch.manual_seed(0)
    return cls(d=D).eval()


def adam_for(model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam after one step on a fixed batch (the same batch on every rank, so FSDP's averaged gradient equals one
    process's and the sharded state is a slice of the unsharded one)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = make_data(n_targets=1, seed=99)[1]["t0"][0]
    lm_loss(model, batch).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def shard(model: torch.nn.Module, world: int, hsdp: bool = False, mixed: bool = False,
          reshard_after_forward: bool = True, offload: bool = False, compile_blocks: bool = False) -> torch.nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mesh = (init_device_mesh(device, (2, world // 2), mesh_dim_names=("replicate", "shard")) if hsdp
            else init_device_mesh(device, (world,)))
    kw: Dict[str, Any] = dict(mesh=mesh, reshard_after_forward=reshard_after_forward)
    if offload:
        kw["offload_policy"] = CPUOffloadPolicy()
    if mixed:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in (model.fc1, model.fc2, model.mix):  # tok/head are tied: they stay in the root's group
        if compile_blocks:
            block.compile()
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return model


class HiddenPath(TinyLM):
    """ln.weight also used outside LayerNorm's forward: a gradient path the per-sample hooks cannot see."""

    def forward(self, idx):
        return super().forward(idx) * (1 + 0.5 * self.ln.weight.mean())  # scales the logits


def compute(model, scenario, doms, tgts, optimizer=None):
    from tikmix.influence import GroupInfluence

    gi = dict(scenario["gi"])
    if gi.get("preconditioner") == "adam":
        gi["optimizer"] = optimizer
    return GroupInfluence(model, lm_loss, seed=3, progress=False, n_bootstrap=50, **gi).compute(doms, tgts)


def _fsdp_settings(model) -> list:
    return [(g.gradient_divide_factor, g.force_sum_reduction_for_comms, g.reduce_grads)
            for m in model.modules() if hasattr(m, "_get_fsdp_state") for g in m._get_fsdp_state()._fsdp_param_groups]


def summary(res) -> Dict[str, Any]:
    return {"S": res.S, "samples": res.domain_samples, "targets": res.target_samples, "scores": res.unit_scores,
            "damping": res.gauss_newton_damping, "low": res.ci_low, "high": res.ci_high}


def run_rank(out_dir: str) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % max(1, torch.cuda.device_count())) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    doms, tgts = data()
    doms = {k: [b.to(device) for b in rank_batches(v, rank, world)] for k, v in doms.items()}
    tgts = {k: [b.to(device) for b in rank_batches(v, rank, world)] for k, v in tgts.items()}
    results: Dict[str, Any] = {}
    for sc in scenarios(world):
        try:
            fs = dict(sc.get("fsdp", {}))
            model = shard(base_model(HiddenPath if sc.get("hidden_path") else TinyLM).to(device), world, **fs)
            opt = adam_for(model) if sc["gi"].get("preconditioner") == "adam" else None
            if sc.get("no_sync"):
                model.set_requires_gradient_sync(False)
            before = _fsdp_settings(model)
            results[sc["name"]] = summary(compute(model, sc, doms, tgts, opt))
            results[sc["name"]]["fsdp_settings_restored"] = _fsdp_settings(model) == before
        except Exception:  # reported by the test with the scenario's name
            results[sc["name"]] = {"error": traceback.format_exc()}
    results["tp-raises"] = tp_raises(device)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def tp_raises(device) -> str:
    """A tensor-parallel placement (Shard(1)) must raise NotImplementedError naming the parameter."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from tikmix.influence import GroupInfluence

    model = base_model().to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    model.fc1.weight = torch.nn.Parameter(distribute_tensor(model.fc1.weight.detach(), mesh, [Shard(1)]))
    try:
        GroupInfluence(model, lm_loss, k=64, params=[model.fc1.weight], progress=False)
    except NotImplementedError as exc:
        return str(exc)
    return "no error"


def reference(scenario: Dict[str, Any], world: int):
    """One unsharded process on the union of all ranks' data (group units: a step's batches concatenated)."""
    doms, tgts = data()
    if scenario["gi"]["mode"] == "group":
        doms = {k: step_batches(v, world) for k, v in doms.items()}
    model = base_model()
    opt = adam_for(model) if scenario["gi"].get("preconditioner") == "adam" else None
    return compute(model, scenario, doms, tgts, opt)


def main() -> None:
    backend = os.environ.get("TIKMIX_TEST_BACKEND", "gloo")
    dist.init_process_group(backend)
    torch.set_num_threads(1)
    run_rank(sys.argv[1])
    end_worker()


if __name__ == "__main__":
    main()
