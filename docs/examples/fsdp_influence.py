"""Influence of two data domains on a target task for an FSDP2-sharded model.

Run with:  torchrun --nproc_per_node 2 docs/examples/fsdp_influence.py
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import fully_shard

from tikmix.influence import GroupInfluence


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(self.norm(x))


class TinyLM(nn.Module):
    def __init__(self, vocab=64, d=32, n_blocks=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(n_blocks))
        self.head = nn.Linear(d, vocab)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def sequence_loss(model, batch):  # one loss per sequence: [B]
    logits = model(batch[:, :-1])
    ce = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
    return ce.view(batch.shape[0], -1).mean(1)


dist.init_process_group("gloo")  # "nccl" on GPUs
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)  # the same initial model on every rank
model = TinyLM().eval()
for block in model.blocks:
    fully_shard(block)
fully_shard(model)

# every rank passes its own batches (here: a rank-dependent slice of each domain)
g = torch.Generator().manual_seed(rank)
domains = {"web": [torch.randint(0, 32, (4, 17), generator=g) for _ in range(2)],
           "code": [torch.randint(32, 64, (4, 17), generator=g) for _ in range(2)]}
targets = {"qa": [torch.randint(0, 64, (4, 17), generator=g)]}

result = GroupInfluence(model, sequence_loss, k=512, progress=False).compute(domains, targets)
if rank == 0:
    print("S =", result.S.tolist())  # the same on every rank
dist.barrier()  # no rank closes its connections while another still reads from them
dist.destroy_process_group()
